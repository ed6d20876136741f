//! Azure IoT Hub's device topic namespace: what a device may publish and subscribe to, and the
//! property bags carried in topic names.
//!
//! Why a module of its own: the topic rules are the device's authorization boundary. A device must
//! never publish under another device's id nor subscribe to another device's messages, and the
//! answer must not depend on the order of string checks scattered through the connection loop.
//! Everything here is pure, so every rule is one tested function.
//!
//! Why ids are compared level by level, as exact strings: Azure device ids may contain
//! `- . + % _ # * ? ! ( ) , = @ $ '`. A `+` or `#` inside an id is a literal character of the topic,
//! never a wildcard, so `devices/+/...` is refused for the device `sensor-1` and allowed for a
//! device whose id is literally `+` (which can only ever be routed its own messages).
//!
//! The property bag format follows the Python SDK (`azure-iot-device`, `mqtt_topic_iothub.py`):
//! `key=value` pairs joined by `&`, percent-encoded like `urllib.parse.quote(s, safe="")`.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;

/// The filters a device may subscribe to, besides its own `devices/{id}/messages/devicebound/`.
const SHARED_NAMESPACES: [&str; 3] = [
    "$iothub/twin/res/",
    "$iothub/twin/PATCH/properties/desired/",
    "$iothub/methods/POST/",
];

const ALLOWED_SUBSCRIPTIONS: &str = "devices/{id}/messages/devicebound/#, $iothub/twin/res/#, \
     $iothub/twin/PATCH/properties/desired/#, $iothub/methods/POST/#";

const KNOWN_PUBLISH_TOPICS: &str = "devices/{id}/messages/events/{properties}, \
     $iothub/twin/GET/?$rid={rid}, $iothub/twin/PATCH/properties/reported/?$rid={rid}, \
     $iothub/methods/res/{status}/?$rid={rid}";

/// Python's `quote(s, safe="")`: everything but ASCII letters, digits and `_.-~` is encoded.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The order in which system properties are written into a cloud-to-device topic; others follow
/// in the order given.
const SYSTEM_ORDER: [&str; 7] = ["$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.exp", "$.to"];

/// Why a topic, a filter or a property bag is refused. Messages name the device, the topic and
/// the rule, so that they can be logged and recorded as they are.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error(
        "device '{device_id}' may not publish to '{topic}': a device publishes only under its own id"
    )]
    PublishForeignDevice { device_id: String, topic: String },
    #[error("device '{device_id}' may not publish to '{topic}': {reason}")]
    PublishRefused {
        device_id: String,
        topic: String,
        reason: String,
    },
    #[error("device '{device_id}' may not subscribe to '{filter}': a device subscribes only under its own id, found '{found}' where its id belongs")]
    SubscribeForeignDevice {
        device_id: String,
        filter: String,
        found: String,
    },
    #[error("device '{device_id}' may not subscribe to '{filter}': {reason}")]
    SubscribeRefused {
        device_id: String,
        filter: String,
        reason: String,
    },
    #[error("invalid device id '{device_id}': expected a non-empty id without '/'")]
    InvalidDeviceId { device_id: String },
    #[error("malformed topic '{topic}': {reason}")]
    MalformedTopic { topic: String, reason: &'static str },
    #[error("property bag of {len} bytes: at most {max} bytes are accepted")]
    BagTooLong { len: usize, max: usize },
    #[error("property bag with {count} properties: at most {max} are accepted")]
    TooManyProperties { count: usize, max: usize },
    #[error("property '{key}' appears more than once in the property bag")]
    DuplicateProperty { key: String },
    #[error("property '{entry}' has an empty name: expected name=value, name= or name")]
    EmptyPropertyName { entry: String },
    #[error("property bag text '{text}' is not UTF-8 once percent-decoded")]
    PropertyNotUtf8 { text: String },
}

/// A PUBLISH topic from a device, as Azure IoT Hub understands it. Values borrow the topic:
/// `bag` and `rid` are raw (still percent-encoded), so that a `$rid` is echoed back byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopic<'a> {
    /// `devices/{id}/messages/events/{bag}` or `devices/{id}/modules/{mid}/messages/events/{bag}`.
    Telemetry {
        device_id: &'a str,
        module_id: Option<&'a str>,
        bag: &'a str,
    },
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet { rid: &'a str },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    TwinPatchReported { rid: &'a str },
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse { status: i32, rid: &'a str },
    /// Anything else.
    Other,
}

impl<'a> DeviceTopic<'a> {
    /// Parses a topic a device published to. Topics outside the IoT Hub namespace are
    /// [`DeviceTopic::Other`]; topics inside it that lack a part (an empty device id, a missing
    /// `$rid`, a non-numeric method status) are [`TopicError::MalformedTopic`].
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let malformed = |reason| TopicError::MalformedTopic {
            topic: topic.to_owned(),
            reason,
        };
        if let Some(rest) = topic.strip_prefix("devices/") {
            let Some((device_id, rest)) = rest.split_once('/') else {
                return Ok(DeviceTopic::Other);
            };
            let (module_id, rest) = match rest.strip_prefix("modules/") {
                Some(after) => match after.split_once('/') {
                    Some((mid, rest)) => (Some(mid), rest),
                    None => return Ok(DeviceTopic::Other),
                },
                None => (None, rest),
            };
            let bag = if rest == "messages/events" {
                ""
            } else if let Some(bag) = rest.strip_prefix("messages/events/") {
                bag
            } else {
                return Ok(DeviceTopic::Other);
            };
            if device_id.is_empty() {
                return Err(malformed("the device id is empty"));
            }
            if module_id == Some("") {
                return Err(malformed("the module id is empty"));
            }
            return Ok(DeviceTopic::Telemetry {
                device_id,
                module_id,
                bag,
            });
        }
        if let Some(query) = topic.strip_prefix("$iothub/twin/GET/") {
            return Ok(DeviceTopic::TwinGet {
                rid: rid(query).map_err(malformed)?,
            });
        }
        if let Some(query) = topic.strip_prefix("$iothub/twin/PATCH/properties/reported/") {
            return Ok(DeviceTopic::TwinPatchReported {
                rid: rid(query).map_err(malformed)?,
            });
        }
        if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
            let Some((status, query)) = rest.split_once('/') else {
                return Err(malformed(
                    "expected $iothub/methods/res/{status}/?$rid={rid}",
                ));
            };
            let status = percent_decode_str(status)
                .decode_utf8()
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .ok_or_else(|| malformed("the method status is not an integer"))?;
            return Ok(DeviceTopic::MethodResponse {
                status,
                rid: rid(query).map_err(malformed)?,
            });
        }
        Ok(DeviceTopic::Other)
    }
}

/// The `$rid` of a `?$rid=...&...` query.
fn rid(query: &str) -> Result<&str, &'static str> {
    let Some(query) = query.strip_prefix('?') else {
        return Err("expected ?$rid={request id} after the last '/'");
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("$rid=") {
            if value.is_empty() {
                return Err("the $rid is empty");
            }
            return Ok(value);
        }
    }
    Err("the $rid is missing: expected ?$rid={request id}")
}

/// Limits on a property bag, checked before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BagLimits {
    pub max_properties: usize,
    pub max_bag_bytes: usize,
}

impl Default for BagLimits {
    fn default() -> Self {
        BagLimits {
            max_properties: 64,
            max_bag_bytes: 8 * 1024,
        }
    }
}

/// A decoded property bag, in the order of the topic. `None` is a key without `=`; `Some("")` is
/// `key=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyBag {
    /// Keys starting with `$.` (`$.mid`, `$.cid`, `$.uid`, `$.ct`, `$.ce`, `$.ifid`, `$.exp`,
    /// `$.on`, ...), kept with their prefix.
    pub system: Vec<(String, Option<String>)>,
    /// Every other key.
    pub custom: Vec<(String, Option<String>)>,
}

/// [`parse_property_bag_with`] with the default [`BagLimits`].
pub fn parse_property_bag(bag: &str) -> Result<PropertyBag, TopicError> {
    parse_property_bag_with(bag, &BagLimits::default())
}

/// Decodes a property bag: split on `&`, then on the first `=`, keys and values percent-decoded.
/// Empty entries (`a=1&&b=2`, a trailing `&`) are skipped; an empty name, a duplicate name or
/// text that is not UTF-8 once decoded is an error.
pub fn parse_property_bag_with(bag: &str, limits: &BagLimits) -> Result<PropertyBag, TopicError> {
    if bag.len() > limits.max_bag_bytes {
        return Err(TopicError::BagTooLong {
            len: bag.len(),
            max: limits.max_bag_bytes,
        });
    }
    let entries = || bag.split('&').filter(|e| !e.is_empty());
    let count = entries().count();
    if count > limits.max_properties {
        return Err(TopicError::TooManyProperties {
            count,
            max: limits.max_properties,
        });
    }
    let mut parsed = PropertyBag::default();
    let mut seen: Vec<String> = Vec::with_capacity(count);
    for entry in entries() {
        let (raw_key, raw_value) = match entry.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (entry, None),
        };
        if raw_key.is_empty() {
            return Err(TopicError::EmptyPropertyName {
                entry: entry.to_owned(),
            });
        }
        let key = unquote(raw_key)?;
        let value = raw_value.map(unquote).transpose()?;
        if seen.contains(&key) {
            return Err(TopicError::DuplicateProperty { key });
        }
        seen.push(key.clone());
        if key.starts_with("$.") {
            parsed.system.push((key, value));
        } else {
            parsed.custom.push((key, value));
        }
    }
    Ok(parsed)
}

fn unquote(text: &str) -> Result<String, TopicError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| TopicError::PropertyNotUtf8 {
            text: text.to_owned(),
        })
}

/// Encodes a property bag for a cloud-to-device topic: system properties first (`$.mid, $.cid,
/// $.uid, $.ct, $.ce, $.exp, $.to`, then any others in the order given), then custom properties
/// sorted by key; keys and values percent-encoded like Python's `quote(s, safe="")`.
pub fn encode_property_bag(
    system: &[(String, Option<String>)],
    custom: &[(String, Option<String>)],
) -> String {
    encode_bag_entries(system.iter().collect(), custom)
}

/// [`encode_property_bag`] over borrowed system entries, so that a caller adding entries of its
/// own (`c2d_delivery_topic`) copies none of the others.
fn encode_bag_entries(
    mut system: Vec<&(String, Option<String>)>,
    custom: &[(String, Option<String>)],
) -> String {
    let rank = |key: &str| {
        SYSTEM_ORDER
            .iter()
            .position(|known| *known == key)
            .unwrap_or(SYSTEM_ORDER.len())
    };
    system.sort_by_key(|(key, _)| rank(key));
    let mut custom: Vec<_> = custom.iter().collect();
    custom.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (key, value) in system.into_iter().chain(custom) {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(key, QUOTE));
        if let Some(value) = value {
            out.push('=');
            out.extend(utf8_percent_encode(value, QUOTE));
        }
    }
    out
}

/// The topic on which a device receives a cloud-to-device message.
pub fn c2d_topic(device_id: &str, bag: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/{bag}")
}

/// The topic of one cloud-to-device delivery: the message id as `$.mid` and the device's
/// devicebound address as `$.to` (the Azure SDKs read both from the bag), then the message's own
/// system and application properties, encoded by [`encode_property_bag`].
pub fn c2d_delivery_topic(
    device_id: &str,
    message_id: &str,
    system: &[(String, Option<String>)],
    custom: &[(String, Option<String>)],
) -> String {
    let mid = ("$.mid".to_string(), Some(message_id.to_string()));
    let to = (
        "$.to".to_string(),
        Some(format!("/devices/{device_id}/messages/deviceBound")),
    );
    let entries = [&mid, &to].into_iter().chain(system).collect();
    c2d_topic(device_id, &encode_bag_entries(entries, custom))
}

/// The answer to a twin request (`$iothub/twin/GET`, or a refused reported patch): the status,
/// with the device's `$rid` echoed as it sent it (still percent-encoded).
pub fn twin_response_topic(status: u16, rid: &str) -> String {
    format!("$iothub/twin/res/{status}/?$rid={rid}")
}

/// The answer to an accepted reported-properties patch: 204 with the twin's new reported version.
pub fn twin_patched_topic(rid: &str, version: i64) -> String {
    format!("$iothub/twin/res/204/?$rid={rid}&$version={version}")
}

/// Where a desired-properties patch is published to a subscribed device.
pub fn desired_patch_topic(version: i64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// Where a direct-method call is published to a subscribed device; the device answers on
/// `$iothub/methods/res/{status}/?$rid={rid}` with the same `rid`.
pub fn method_request_topic(name: &str, rid: u64) -> String {
    format!("$iothub/methods/POST/{name}/?$rid={rid}")
}

/// Which of a device's deliveries a subscription filter names: what a session starts (SUBSCRIBE)
/// or stops (UNSUBSCRIBE) sending. Twin responses need no subscription state: they answer requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `devices/{id}/messages/devicebound/#`.
    CloudToDevice,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    DesiredProperties,
    /// `$iothub/methods/POST/#`.
    Methods,
}

impl Delivery {
    /// The delivery a filter names, judged by its prefix alone: whether the device may subscribe
    /// to it is [`device_may_subscribe`]'s question, and an UNSUBSCRIBE is not checked.
    pub fn of_filter(filter: &str) -> Option<Delivery> {
        if filter.starts_with("devices/") {
            Some(Delivery::CloudToDevice)
        } else if filter.starts_with("$iothub/twin/PATCH/properties/desired") {
            Some(Delivery::DesiredProperties)
        } else if filter.starts_with("$iothub/methods/POST") {
            Some(Delivery::Methods)
        } else {
            None
        }
    }
}

/// Whether the topic name `topic` matches the filter `filter` (MQTT 3.1.1 §4.7).
///
/// A level is a wildcard only where the specification allows one: `+` as a whole level, `#` as the
/// whole last level (which also matches the parent: `a/#` matches `a`). Anywhere else `+` and `#`
/// are literal characters, as they are inside device ids. Topics starting with `$` are not matched
/// by a filter starting with a wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if filter.is_empty() || topic.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    if topic.starts_with('$') && matches!(levels.peek(), Some(&"+") | Some(&"#")) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    loop {
        match (levels.next(), topic_levels.next()) {
            (Some("#"), _) if levels.peek().is_none() => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn check_device_id(device_id: &str) -> Result<(), TopicError> {
    if device_id.is_empty() || device_id.contains('/') {
        return Err(TopicError::InvalidDeviceId {
            device_id: device_id.to_owned(),
        });
    }
    Ok(())
}

/// Whether the device `device_id` may subscribe to `filter`. Allowed: its own
/// `devices/{id}/messages/devicebound/` and anything under it, `$iothub/twin/res/`,
/// `$iothub/twin/PATCH/properties/desired/` and `$iothub/methods/POST/` and anything under them.
pub fn device_may_subscribe(device_id: &str, filter: &str) -> Result<(), TopicError> {
    check_device_id(device_id)?;
    if SHARED_NAMESPACES.iter().any(|ns| filter.starts_with(ns)) {
        return Ok(());
    }
    let refuse = |reason: String| TopicError::SubscribeRefused {
        device_id: device_id.to_owned(),
        filter: filter.to_owned(),
        reason,
    };
    if let Some(rest) = filter.strip_prefix("devices/") {
        let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if id != device_id {
            return Err(TopicError::SubscribeForeignDevice {
                device_id: device_id.to_owned(),
                filter: filter.to_owned(),
                found: id.to_owned(),
            });
        }
        if rest.starts_with("messages/devicebound/") {
            return Ok(());
        }
        return Err(refuse(format!(
            "under devices/{device_id}/ a device may subscribe only to messages/devicebound/#"
        )));
    }
    let first = filter.split('/').next().unwrap_or_default();
    let reason = if first == "#" || first == "+" {
        format!("a wildcard may not stand for the namespace; the allowed filters are {ALLOWED_SUBSCRIPTIONS}")
    } else {
        format!("not an IoT Hub device topic; the allowed filters are {ALLOWED_SUBSCRIPTIONS}")
    };
    Err(refuse(reason))
}

/// Whether the device `device_id` may publish to `topic`, and what the topic means.
///
/// Refused: another device's id, a malformed IoT Hub topic, and any topic outside the namespace.
/// Module telemetry (`devices/{id}/modules/{mid}/...`) is returned with its `module_id`; whether the
/// connection speaks for that module is the caller's decision.
pub fn device_may_publish<'a>(
    device_id: &str,
    topic: &'a str,
) -> Result<DeviceTopic<'a>, TopicError> {
    check_device_id(device_id)?;
    if let Some(rest) = topic.strip_prefix("devices/") {
        let id = rest.split_once('/').map_or(rest, |(id, _)| id);
        if id != device_id {
            return Err(TopicError::PublishForeignDevice {
                device_id: device_id.to_owned(),
                topic: topic.to_owned(),
            });
        }
    }
    match DeviceTopic::parse(topic)? {
        DeviceTopic::Other => Err(TopicError::PublishRefused {
            device_id: device_id.to_owned(),
            topic: topic.to_owned(),
            reason: format!(
                "not an IoT Hub device topic; the known topics are {KNOWN_PUBLISH_TOPICS}"
            ),
        }),
        parsed => Ok(parsed),
    }
}

#[cfg(test)]
mod tests;
