//! Topic authorisation and property bags on arbitrary text: typed errors, no panic, an encoded bag
//! parses again (unless encoding made it longer than the limit), and a device is never allowed to publish or subscribe under another device's id.
#![no_main]
use iothub_mqtt::topics::{
    device_may_publish, device_may_subscribe, encode_property_bag, parse_property_bag, TopicError,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (device, topic) = text.split_once('\n').unwrap_or(("dev-1", &text));
    if let Ok(bag) = parse_property_bag(topic) {
        // Re-encoding may lengthen a bag (a lone '%' read as itself is written as "%25"), so
        // the encoded form may pass the length limit; any other refusal is a bug.
        let encoded = encode_property_bag(&bag.system, &bag.custom);
        match parse_property_bag(&encoded) {
            Ok(_) | Err(TopicError::BagTooLong { .. }) => {}
            Err(e) => panic!("an encoded bag does not parse: {e:?} ({encoded:?})"),
        }
    }
    if device_may_publish(device, topic).is_ok() && topic.starts_with("devices/") {
        assert!(
            topic.starts_with(&format!("devices/{device}/")),
            "{device} published to {topic}"
        );
    }
    if device_may_subscribe(device, topic).is_ok() && topic.starts_with("devices/") {
        assert!(
            topic.starts_with(&format!("devices/{device}/")),
            "{device} subscribed to {topic}"
        );
    }
});
