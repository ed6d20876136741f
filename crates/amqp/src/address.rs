//! The addresses and filters AMQP clients of a cloud IoT hub send, read into types: which node a
//! link attaches to (the token node `$cbs`, the management node `$management`, the
//! cloud-to-device queue `/messages/devicebound`, the feedback queue
//! `/messages/serviceBound/feedback`, one partition of the event hub), the device a
//! cloud-to-device message is addressed to, and the selector filter that says where an Event Hubs
//! reader starts. Pure and bounded: no I/O, every malformed input a typed error (fuzz target
//! `amqp_address`). Wire facts: docs/azure-wire.md#amqp.

use iothub_hub::StartPosition;

/// The longest address or selector read (clients send tens of bytes).
pub const MAX_ADDRESS_BYTES: usize = 1024;

/// What a link attaches to, from its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// `$cbs`: put-token requests (claims-based security).
    Cbs,
    /// `$management`: the event hub's and partitions' properties.
    Management,
    /// `/messages/devicebound`: cloud-to-device messages.
    DeviceBound,
    /// `/messages/serviceBound/feedback`: feedback on cloud-to-device messages (any case: the
    /// Java SDK writes `servicebound`, the .NET and Node ones `serviceBound`).
    Feedback,
    /// `/{entity}/ConsumerGroups/{group}/Partitions/{id}`: one partition's events.
    Partition(PartitionAddress),
    /// A client's own reply address (the target of its receiver on `$cbs`/`$management`).
    Other(String),
}

/// One partition of an event hub, as a reader's source address names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAddress {
    pub entity: String,
    pub consumer_group: String,
    pub partition: String,
}

/// Why an address or a selector was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    TooLong {
        len: usize,
    },
    /// A cloud-to-device message's `to` is not `/devices/{id}/messages/devicebound`.
    NotDeviceBound,
    /// The selector filter is not one an Event Hubs reader sends.
    Selector(String),
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressError::TooLong { len } => write!(
                f,
                "the address is {len} bytes; at most {MAX_ADDRESS_BYTES} are read"
            ),
            AddressError::NotDeviceBound => f.write_str(
                "the message's 'to' must be '/devices/{deviceId}/messages/devicebound'",
            ),
            AddressError::Selector(why) => write!(
                f,
                "the selector filter is not understood ({why}); expected \
                 amqp.annotation.x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time > or >= 'value'"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

/// The path of an address: `amqps://host[:port]/path` and `/path` both give `path`, without
/// its leading slashes.
fn path_of(address: &str) -> &str {
    let rest = match address.split_once("://") {
        Some((_, after_scheme)) => after_scheme.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    rest.trim_start_matches('/')
}

/// The node an address names.
pub fn node(address: &str) -> Result<Node, AddressError> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(AddressError::TooLong { len: address.len() });
    }
    let path = path_of(address);
    if path == "$cbs" {
        return Ok(Node::Cbs);
    }
    if path == "$management" {
        return Ok(Node::Management);
    }
    if path.eq_ignore_ascii_case("messages/devicebound") {
        return Ok(Node::DeviceBound);
    }
    if path.eq_ignore_ascii_case("messages/servicebound/feedback") {
        return Ok(Node::Feedback);
    }
    let parts: Vec<&str> = path.split('/').collect();
    if let [entity, groups, group, partitions, partition] = parts[..] {
        if groups.eq_ignore_ascii_case("ConsumerGroups")
            && partitions.eq_ignore_ascii_case("Partitions")
            && !entity.is_empty()
            && !group.is_empty()
            && !partition.is_empty()
        {
            return Ok(Node::Partition(PartitionAddress {
                entity: entity.to_string(),
                consumer_group: group.to_string(),
                partition: partition.to_string(),
            }));
        }
    }
    Ok(Node::Other(address.to_string()))
}

/// The device a cloud-to-device message's `to` names (`/devices/{id}/messages/devicebound`;
/// the id percent-decoded, as the service SDK may encode it).
pub fn device_of(to: &str) -> Result<String, AddressError> {
    if to.len() > MAX_ADDRESS_BYTES {
        return Err(AddressError::TooLong { len: to.len() });
    }
    let id = to
        .strip_prefix("/devices/")
        .and_then(|rest| rest.strip_suffix("/messages/devicebound"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or(AddressError::NotDeviceBound)?;
    Ok(percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| AddressError::NotDeviceBound)?
        .into_owned())
}

/// The start position an Event Hubs selector filter names, e.g.
/// `amqp.annotation.x-opt-offset > '-1'` (from the start), `... > '@latest'`, an offset or a
/// sequence number, or `amqp.annotation.x-opt-enqueued-time >= '1700000000000'` (Unix ms).
pub fn start_position(selector: &str) -> Result<StartPosition, AddressError> {
    if selector.len() > MAX_ADDRESS_BYTES {
        return Err(AddressError::TooLong {
            len: selector.len(),
        });
    }
    let bad = |why: &str| AddressError::Selector(why.to_string());
    let rest = selector
        .trim()
        .strip_prefix("amqp.annotation.")
        .ok_or_else(|| bad("it does not start with amqp.annotation."))?;
    let (field, rest) = rest
        .split_once(|c: char| c.is_ascii_whitespace() || c == '>' || c == '=')
        .map(|(f, _)| (f, &rest[f.len()..]))
        .ok_or_else(|| bad("no comparison"))?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (true, r)
    } else {
        return Err(bad("the comparison is not >, >= or ="));
    };
    let value = rest.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let number = |v: &str| -> Result<i64, AddressError> {
        v.parse::<i64>()
            .map_err(|_| bad("the value is not a whole number"))
    };
    match field {
        "x-opt-offset" => match value {
            "-1" => Ok(StartPosition::Earliest),
            "@latest" => Ok(StartPosition::Latest),
            v => Ok(StartPosition::Sequence {
                sequence: number(v)?,
                inclusive,
            }),
        },
        "x-opt-sequence-number" => Ok(StartPosition::Sequence {
            sequence: number(value)?,
            inclusive,
        }),
        "x-opt-enqueued-time" => Ok(StartPosition::EnqueuedAt {
            unix_ms: number(value)?,
            inclusive,
        }),
        _ => Err(bad(
            "the annotation is not x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nodes_are_read_with_or_without_scheme_and_host() {
        assert_eq!(node("$cbs").unwrap(), Node::Cbs);
        assert_eq!(node("amqps://hub.local:5671/$cbs").unwrap(), Node::Cbs);
        assert_eq!(node("$management").unwrap(), Node::Management);
        assert_eq!(
            node("amqps://127.0.0.1:8443/messages/devicebound").unwrap(),
            Node::DeviceBound
        );
        assert_eq!(node("/messages/devicebound").unwrap(), Node::DeviceBound);
        for feedback in [
            "/messages/serviceBound/feedback",
            "/messages/servicebound/feedback",
            "amqps://hub.local/messages/serviceBound/feedback",
        ] {
            assert_eq!(node(feedback).unwrap(), Node::Feedback, "{feedback}");
        }
        let partition = Node::Partition(PartitionAddress {
            entity: "iothub".into(),
            consumer_group: "$Default".into(),
            partition: "3".into(),
        });
        assert_eq!(
            node("amqps://hub.local/iothub/ConsumerGroups/$Default/Partitions/3").unwrap(),
            partition
        );
        assert_eq!(
            node("iothub/consumergroups/$Default/partitions/3").unwrap(),
            partition
        );
        assert_eq!(
            node("cbs-reply-1").unwrap(),
            Node::Other("cbs-reply-1".into())
        );
        assert_eq!(
            node("iothub/ConsumerGroups//Partitions/3").unwrap(),
            Node::Other("iothub/ConsumerGroups//Partitions/3".into())
        );
        assert!(matches!(
            node(&"a".repeat(MAX_ADDRESS_BYTES + 1)),
            Err(AddressError::TooLong { .. })
        ));
    }

    #[test]
    fn the_device_is_read_from_to() {
        assert_eq!(
            device_of("/devices/sensor-1/messages/devicebound").unwrap(),
            "sensor-1"
        );
        assert_eq!(
            device_of("/devices/a%20b/messages/devicebound").unwrap(),
            "a b"
        );
        for bad in [
            "",
            "/devices//messages/devicebound",
            "/devices/a/b/messages/devicebound",
            "/devices/a/messages/events",
            "devices/a/messages/devicebound",
            "/devices/%ff/messages/devicebound",
        ] {
            assert_eq!(device_of(bad), Err(AddressError::NotDeviceBound), "{bad}");
        }
    }

    #[test]
    fn every_start_position_a_reader_sends_is_read() {
        use StartPosition::*;
        for (selector, position) in [
            ("amqp.annotation.x-opt-offset > '-1'", Earliest),
            ("amqp.annotation.x-opt-offset > '@latest'", Latest),
            (
                "amqp.annotation.x-opt-offset > '17'",
                Sequence {
                    sequence: 17,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-offset >= '17'",
                Sequence {
                    sequence: 17,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '5'",
                Sequence {
                    sequence: 5,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number>=5",
                Sequence {
                    sequence: 5,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
                EnqueuedAt {
                    unix_ms: 1_700_000_000_000,
                    inclusive: false,
                },
            ),
        ] {
            assert_eq!(start_position(selector).unwrap(), position, "{selector}");
        }
        for bad in [
            "",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-partition-key > '1'",
            "amqp.annotation.x-opt-offset",
            "amqp.annotation.x-opt-enqueued-time > '99999999999999999999'",
        ] {
            assert!(
                matches!(start_position(bad), Err(AddressError::Selector(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        /// No input panics, and none longer than the limit is read.
        #[test]
        fn any_input_is_answered(s in ".{0,80}") {
            let _ = node(&s);
            let _ = device_of(&s);
            let _ = start_position(&s);
        }

        #[test]
        fn any_sequence_number_round_trips(n in any::<i64>(), inclusive in any::<bool>()) {
            let op = if inclusive { ">=" } else { ">" };
            prop_assert_eq!(
                start_position(&format!("amqp.annotation.x-opt-sequence-number {op} '{n}'")).unwrap(),
                StartPosition::Sequence { sequence: n, inclusive }
            );
        }
    }
}
