//! The AMQP endpoint's grammar on arbitrary text: a link address, a cloud-to-device message's `to`
//! and an Event Hubs selector filter (three lines of the input). Typed errors, no panic; a
//! partition address keeps non-empty parts; a device read from `to` goes back into the same `to`
//! when it needs no percent-encoding; a selector that parses round-trips through its canonical form.
#![no_main]
use iothub_amqp::address::{device_of, node, start_position, Node};
use iothub_hub::StartPosition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let address = lines.next().unwrap_or_default();
    let to = lines.next().unwrap_or_default();
    let selector = lines.next().unwrap_or_default();
    if let Ok(Node::Partition(p)) = node(address) {
        assert!(!p.entity.is_empty() && !p.consumer_group.is_empty() && !p.partition.is_empty());
    }
    if let Ok(device) = device_of(to) {
        assert!(!device.is_empty());
        if !to.contains('%') {
            assert_eq!(format!("/devices/{device}/messages/devicebound"), to);
        }
    }
    if let Ok(position) = start_position(selector) {
        let canonical = match position {
            StartPosition::Earliest => "amqp.annotation.x-opt-offset > '-1'".to_string(),
            StartPosition::Latest => "amqp.annotation.x-opt-offset > '@latest'".to_string(),
            StartPosition::Sequence { sequence, inclusive } => format!(
                "amqp.annotation.x-opt-sequence-number {} '{sequence}'",
                if inclusive { ">=" } else { ">" }
            ),
            StartPosition::EnqueuedAt { unix_ms, inclusive } => format!(
                "amqp.annotation.x-opt-enqueued-time {} '{unix_ms}'",
                if inclusive { ">=" } else { ">" }
            ),
        };
        assert_eq!(start_position(&canonical).unwrap(), position, "{canonical}");
    }
});
