//! The Device Provisioning Service's MQTT dialect, as the Azure device SDK's
//! `ProvisioningDeviceClient` speaks it (docs/azure-wire.md, "Provisioning over MQTT"): the
//! CONNECT username that marks a provisioning connection, the two request topics, the response
//! topic, and the register request's JSON body.
//!
//! Why a module of its own: a provisioning connection arrives on the same MQTT listener as device
//! connections and is told apart only by its username, before anyone is authenticated. So the
//! parsing is pure, bounded and total (every input a typed error, fuzz target
//! `provisioning_input`), and the response topic is written so that the SDK's own parser (it
//! splits the topic at `$`) reads back exactly what was meant: a request id that could break it
//! is refused on the way in.

use serde::Deserialize;
use thiserror::Error;

/// The filter a provisioning client subscribes to for its answers.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// The longest request id (`$rid`) or operation id accepted in a topic.
pub const MAX_ID_LEN: usize = 128;

const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/?";
const STATUS_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";

/// The parts of a provisioning CONNECT username:
/// `{idScope}/registrations/{registrationId}/api-version=...&ClientVersion=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningUsername<'a> {
    pub id_scope: &'a str,
    pub registration_id: &'a str,
    /// The `api-version` query parameter, when given.
    pub api_version: Option<&'a str>,
}

/// Whether a CONNECT username is a provisioning client's rather than a device's. A device's is
/// `{host}/{deviceId}/?api-version=...`: its third level starts with `?` (or is absent), so a
/// device whose id is literally `registrations` is still a device.
pub fn is_provisioning_username(username: &str) -> bool {
    parse_username(username).is_ok_and(|u| !u.registration_id.starts_with('?'))
}

/// Why a provisioning username, topic or body is refused; each message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProvisioningError {
    #[error("the provisioning username '{0}' is malformed: expected {{idScope}}/registrations/{{registrationId}}/api-version=...")]
    Username(String),
    #[error("the provisioning topic '{0}' is not a request this service answers: expected $dps/registrations/PUT/iotdps-register/?$rid={{rid}} or $dps/registrations/GET/iotdps-get-operationstatus/?$rid={{rid}}&operationId={{id}}")]
    UnknownTopic(String),
    #[error("the provisioning topic '{topic}' has no {name}")]
    MissingParameter { topic: String, name: &'static str },
    #[error("the {name} in the provisioning topic '{topic}' is not usable: expected 1 to {MAX_ID_LEN} characters among letters, digits and -._:~")]
    BadParameter { topic: String, name: &'static str },
    #[error("the register request body is not the expected JSON object {{\"registrationId\": \"...\", \"payload\": ...}}: {0}")]
    Body(String),
}

/// Parses a provisioning username (see [`ProvisioningUsername`]). The registration id is taken as
/// it stands (the SDK does not encode it); the query parameters are `&`-separated.
pub fn parse_username(username: &str) -> Result<ProvisioningUsername<'_>, ProvisioningError> {
    let bad = || ProvisioningError::Username(username.to_string());
    let mut levels = username.splitn(4, '/');
    let id_scope = levels.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
    if levels.next() != Some("registrations") {
        return Err(bad());
    }
    let registration_id = levels.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
    let query = levels.next().unwrap_or("");
    let query = query.strip_prefix('?').unwrap_or(query);
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="));
    Ok(ProvisioningUsername {
        id_scope,
        registration_id,
        api_version,
    })
}

/// A request a provisioning client publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningRequest<'a> {
    /// `PUT iotdps-register`: register (or re-register) this client.
    Register { rid: &'a str },
    /// `GET iotdps-get-operationstatus`: how the registration `operation_id` stands.
    OperationStatus { rid: &'a str, operation_id: &'a str },
}

impl ProvisioningRequest<'_> {
    /// The request id the answer must carry.
    pub fn rid(&self) -> &str {
        match self {
            ProvisioningRequest::Register { rid } => rid,
            ProvisioningRequest::OperationStatus { rid, .. } => rid,
        }
    }
}

/// An id the answer topic can carry unchanged: the SDK splits that topic at `$`, `&` and `=` and
/// percent-decodes the values, so none of those (nor `%`, `/`, `+`, `#`) may appear in it.
fn usable_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'~'))
}

/// Parses the topic of a request a provisioning client published.
pub fn parse_request_topic(topic: &str) -> Result<ProvisioningRequest<'_>, ProvisioningError> {
    let (query, register) = if let Some(q) = topic.strip_prefix(REGISTER_PREFIX) {
        (q, true)
    } else if let Some(q) = topic.strip_prefix(STATUS_PREFIX) {
        (q, false)
    } else {
        return Err(ProvisioningError::UnknownTopic(topic.to_string()));
    };
    let param = |name: &'static str, key: &str| -> Result<&str, ProvisioningError> {
        let value = query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key))
            .ok_or_else(|| ProvisioningError::MissingParameter {
                topic: topic.to_string(),
                name,
            })?;
        if usable_id(value) {
            Ok(value)
        } else {
            Err(ProvisioningError::BadParameter {
                topic: topic.to_string(),
                name,
            })
        }
    };
    let rid = param("request id ($rid)", "$rid=")?;
    if register {
        Ok(ProvisioningRequest::Register { rid })
    } else {
        let operation_id = param("operation id (operationId)", "operationId=")?;
        Ok(ProvisioningRequest::OperationStatus { rid, operation_id })
    }
}

/// The topic an answer is published on: `$dps/registrations/res/{status}/?$rid={rid}`, with
/// `&retry-after={seconds}` when the client should ask again. `rid` comes from
/// [`parse_request_topic`], so it needs no encoding.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(s) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={s}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

/// The body of a register request: `{"registrationId": "...", "payload": ...}` (the SDK sends
/// `"payload": null` unless the device set a provisioning payload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    pub registration_id: String,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

/// Parses a register request's body. Unknown fields are ignored (newer SDKs add some).
pub fn parse_register_body(body: &[u8]) -> Result<RegisterBody, ProvisioningError> {
    serde_json::from_slice(body).map_err(|e| ProvisioningError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK's reading of an answer topic (`mqtt_topic_provisioning.py`): the status is the
    /// fourth level of the part before the first `$`; the properties follow the second `$`.
    fn as_the_sdk_reads(topic: &str) -> (String, Vec<(String, String)>) {
        let parts: Vec<&str> = topic.split('$').collect();
        assert_eq!(parts.len(), 3, "exactly two '$' in {topic}");
        let status = parts[1].split('/').nth(3).unwrap().to_string();
        let props = parts[2]
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        (status, props)
    }

    #[test]
    fn the_sdks_username_is_recognised_and_parsed() {
        let u = "0ne00A1B2C3/registrations/sensor-7/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-devicesdk%2F2.14.0";
        assert!(is_provisioning_username(u));
        let p = parse_username(u).unwrap();
        assert_eq!(p.id_scope, "0ne00A1B2C3");
        assert_eq!(p.registration_id, "sensor-7");
        assert_eq!(p.api_version, Some("2019-03-31"));
    }

    #[test]
    fn device_usernames_are_not_provisioning_ones() {
        for u in [
            "hub.local/dev-1/?api-version=2021-04-12",
            "hub.local/registrations/?api-version=2021-04-12",
            "hub.local/registrations/",
            "hub.local/registrations",
            "registrations",
            "",
            // Found by the fuzz target: an empty level is not a registration id.
            "x/registrations//",
            "/registrations/x",
        ] {
            assert!(!is_provisioning_username(u), "{u}");
        }
    }

    #[test]
    fn malformed_usernames_are_refused_by_name() {
        for u in [
            "/registrations/x/",
            "scope/devices/x/",
            "scope/registrations//",
        ] {
            assert!(
                matches!(parse_username(u), Err(ProvisioningError::Username(_))),
                "{u}"
            );
        }
        // No query at all is still a username (the api version is then unknown).
        assert_eq!(
            parse_username("s/registrations/r").unwrap().api_version,
            None
        );
    }

    #[test]
    fn both_request_topics_parse() {
        let rid = "5e6f37c6-7d7f-4e8b-9b31-38e1f0a6a1c2";
        assert_eq!(
            parse_request_topic(&format!("{REGISTER_PREFIX}$rid={rid}")).unwrap(),
            ProvisioningRequest::Register { rid }
        );
        let t = format!("{STATUS_PREFIX}$rid={rid}&operationId=4.abc.def");
        assert_eq!(
            parse_request_topic(&t).unwrap(),
            ProvisioningRequest::OperationStatus {
                rid,
                operation_id: "4.abc.def"
            }
        );
    }

    #[test]
    fn bad_request_topics_are_refused_with_the_reason() {
        assert!(matches!(
            parse_request_topic("devices/x/messages/events/"),
            Err(ProvisioningError::UnknownTopic(_))
        ));
        assert!(matches!(
            parse_request_topic(REGISTER_PREFIX),
            Err(ProvisioningError::MissingParameter { .. })
        ));
        assert!(matches!(
            parse_request_topic(&format!("{STATUS_PREFIX}$rid=1")),
            Err(ProvisioningError::MissingParameter { name, .. }) if name.contains("operationId")
        ));
        for rid in ["a$b", "a%24b", "a/b", "", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(
                matches!(
                    parse_request_topic(&format!("{REGISTER_PREFIX}$rid={rid}")),
                    Err(ProvisioningError::BadParameter { .. })
                ),
                "{rid}"
            );
        }
    }

    #[test]
    fn the_answer_topic_reads_back_as_the_sdk_reads_it() {
        let (status, props) = as_the_sdk_reads(&response_topic(202, "r-1", Some(3)));
        assert_eq!(status, "202");
        assert_eq!(
            props,
            vec![
                ("rid".to_string(), "r-1".to_string()),
                ("retry-after".to_string(), "3".to_string())
            ]
        );
        let (status, props) = as_the_sdk_reads(&response_topic(200, "r-1", None));
        assert_eq!((status.as_str(), props.len()), ("200", 1));
    }

    #[test]
    fn register_bodies() {
        let b = parse_register_body(br#"{"payload": null, "registrationId": "sensor-7"}"#).unwrap();
        assert_eq!(b.registration_id, "sensor-7");
        assert_eq!(b.payload, None);
        let b = parse_register_body(br#"{"registrationId":"r","payload":{"a":1},"x":2}"#).unwrap();
        assert_eq!(b.payload, Some(serde_json::json!({"a": 1})));
        for bad in [&b" "[..], b"{}", b"[]", b"{\"registrationId\": 5}", b"\xff"] {
            assert!(matches!(
                parse_register_body(bad),
                Err(ProvisioningError::Body(_))
            ));
        }
    }
}
