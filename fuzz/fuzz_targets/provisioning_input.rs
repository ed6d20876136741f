//! The provisioning dialect on arbitrary text: a CONNECT username, a request topic and a register
//! body (three lines of the input). Typed errors, no panic; a username recognised as a
//! provisioning one parses; a request id that parses can be put in an answer topic that the
//! SDK's own reading (split at `$`, then `&`, then `=`) gives back unchanged.
#![no_main]
use iothub_mqtt::provisioning::{
    is_provisioning_username, parse_register_body, parse_request_topic, parse_username,
    response_topic,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let username = lines.next().unwrap_or_default();
    let topic = lines.next().unwrap_or_default();
    let body = lines.next().unwrap_or_default();
    if is_provisioning_username(username) {
        let parsed = parse_username(username).expect("a recognised username parses");
        assert!(!parsed.registration_id.is_empty() && !parsed.id_scope.is_empty());
    }
    if let Ok(request) = parse_request_topic(topic) {
        let answer = response_topic(429, request.rid(), Some(3));
        let parts: Vec<&str> = answer.split('$').collect();
        assert_eq!(parts.len(), 3, "{answer}");
        let rid = parts[2]
            .split('&')
            .find_map(|kv| kv.strip_prefix("rid="))
            .expect("the rid is in the answer");
        assert_eq!(rid, request.rid());
    }
    let _ = parse_register_body(body.as_bytes());
});
