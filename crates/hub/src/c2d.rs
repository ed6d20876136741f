//! Cloud-to-device messages: queued durably per device (a bounded queue, each message with an
//! expiry), delivered by the gateway when the device subscribes, redelivered after reconnect until
//! the device acknowledges (PUBACK), and visible with their state (`C2dState`).
//!
//! Owns no in-memory state: the queue is the store's (limits from the config). Asks of others:
//! sessions, to wake the device's live session when a message is queued.

use iothub_pki::device_id::validate_device_id;
use iothub_store::{C2dAck, C2dRecord, C2dState, StoreError};

use crate::auth::{Principal, Right};
use crate::{Hub, HubError};

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct C2dSend {
    pub body: Vec<u8>,
    /// Application properties; system properties `messageId`, `correlationId`, `contentType`,
    /// `contentEncoding` travel as `$.mid`, `$.cid`, `$.ct`, `$.ce`.
    pub properties: Vec<(String, String)>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Seconds until the message expires (default: the hub's configured TTL).
    pub ttl_secs: Option<i64>,
    /// The outcomes the sender wants to hear about through the feedback queue (`feedback.rs`);
    /// the device sees it as `iothub-ack`.
    pub ack: C2dAck,
}

/// A cloud-to-device message as the service side sees it, its properties parsed. The store keeps
/// them as one JSON text, `{"system": {...}, "application": {...}}`: written and read only here
/// (`encode_properties`, `C2dView::of`), so no adapter knows that shape.
#[derive(Debug, Clone, PartialEq)]
pub struct C2dView {
    pub id: i64,
    pub device_id: String,
    pub message_id: String,
    /// System properties (`$.cid`, `$.ct`, `$.ce`): a JSON object, null if unreadable.
    pub system_properties: serde_json::Value,
    /// Application properties: a JSON object, null if unreadable.
    pub properties: serde_json::Value,
    pub body: Vec<u8>,
    /// Unix seconds.
    pub created: i64,
    pub expiry: i64,
    pub state: C2dState,
    pub delivered_at: Option<i64>,
    pub delivery_count: i64,
}

impl C2dView {
    fn of(r: C2dRecord) -> C2dView {
        let properties: serde_json::Value = serde_json::from_str(&r.properties).unwrap_or_default();
        C2dView {
            id: r.id,
            device_id: r.device_id,
            message_id: r.message_id,
            system_properties: properties["system"].clone(),
            properties: properties["application"].clone(),
            body: r.body,
            created: r.created,
            expiry: r.expiry,
            state: r.state,
            delivered_at: r.delivered_at,
            delivery_count: r.delivery_count,
        }
    }
}

/// The stored text of a message's properties (read back by [`C2dView::of`]).
fn encode_properties(
    system: serde_json::Map<String, serde_json::Value>,
    application: serde_json::Map<String, serde_json::Value>,
) -> String {
    serde_json::json!({ "system": system, "application": application }).to_string()
}

impl Hub {
    /// Queues a message for a device and wakes its session.
    pub fn send_c2d(
        &self,
        who: &Principal,
        device_id: &str,
        msg: &C2dSend,
    ) -> Result<C2dView, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "send cloud-to-device messages",
            &format!("device/{device_id}"),
        )?;
        validate_device_id(device_id)?;
        let max = self.config().c2d_max_bytes;
        if msg.body.len() > max {
            return Err(HubError::MessageTooLarge {
                size: msg.body.len(),
                max,
            });
        }
        let ttl = msg.ttl_secs.unwrap_or(self.config().c2d_ttl_secs);
        if !(1..=self.config().c2d_max_ttl_secs).contains(&ttl) {
            return Err(HubError::InvalidArgument(format!(
                "the time to live is {ttl} seconds; expected 1 to {}",
                self.config().c2d_max_ttl_secs
            )));
        }
        let mut system = serde_json::Map::new();
        for (key, value) in [
            ("$.cid", &msg.correlation_id),
            ("$.ct", &msg.content_type),
            ("$.ce", &msg.content_encoding),
        ] {
            if let Some(v) = value {
                system.insert(key.to_string(), v.clone().into());
            }
        }
        if msg.ack != C2dAck::None {
            system.insert("iothub-ack".into(), msg.ack.as_str().into());
        }
        let mut custom = serde_json::Map::new();
        for (k, v) in &msg.properties {
            if k.is_empty() || k.starts_with("$.") || k.starts_with("iothub-") {
                return Err(HubError::InvalidArgument(format!(
                    "property name '{k}' is reserved or empty; use messageId, correlationId, contentType, contentEncoding for system properties"
                )));
            }
            custom.insert(k.clone(), v.clone().into());
        }
        let message_id = match &msg.message_id {
            Some(m) if !m.is_empty() => m.clone(),
            _ => iothub_pki::pop::generate_code()
                .map_err(|_| HubError::Internal("the system random source failed".into()))?
                .chars()
                .take(32)
                .collect(),
        };
        let now = self.now();
        let properties = encode_properties(system, custom);
        let record = C2dRecord {
            id: 0,
            device_id: device_id.to_string(),
            message_id,
            properties,
            body: msg.body.clone(),
            created: now,
            expiry: now + ttl,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 0,
            ack: msg.ack,
        };
        let stored = self
            .store()
            .enqueue_c2d(&record, self.config().c2d_max_pending)
            .map_err(|e| match e {
                StoreError::NotFound => HubError::DeviceNotFound(device_id.to_string()),
                StoreError::LimitReached { limit } => HubError::QueueFull {
                    device: device_id.to_string(),
                    limit,
                },
                other => HubError::from(other),
            })?;
        self.metrics().c2d_queued();
        self.wake_device(device_id);
        Ok(C2dView::of(stored))
    }

    /// A device's messages, newest first.
    pub fn list_c2d(
        &self,
        who: &Principal,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<C2dView>, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read cloud-to-device messages",
            &format!("device/{device_id}"),
        )?;
        validate_device_id(device_id)?;
        if self.store().get_device(device_id)?.is_none() {
            return Err(HubError::DeviceNotFound(device_id.to_string()));
        }
        // Expire what is due before showing states.
        self.expire_c2d(device_id)?;
        Ok(self
            .store()
            .list_c2d(device_id, limit.clamp(1, 1000))?
            .into_iter()
            .map(C2dView::of)
            .collect())
    }

    /// Messages waiting for a connected device (oldest first); the gateway publishes them.
    pub fn pending_c2d(&self, device_id: &str) -> Result<Vec<C2dRecord>, HubError> {
        self.expire_c2d(device_id)?;
        Ok(self.store().pending_c2d(device_id, self.now())?)
    }

    /// Marks the device's messages that are past their expiry, and counts them.
    fn expire_c2d(&self, device_id: &str) -> Result<(), HubError> {
        let expired =
            self.store()
                .expire_c2d(Some(device_id), self.now(), &crate::feedback::EXPIRED)?;
        self.metrics().c2d_expired(expired);
        Ok(())
    }

    /// The device acknowledged a message.
    pub fn c2d_delivered(&self, id: i64) -> Result<(), HubError> {
        self.store()
            .mark_c2d_delivered(id, self.now(), &crate::feedback::COMPLETED)?;
        self.metrics().c2d_delivered();
        Ok(())
    }

    /// A delivery attempt was made.
    pub fn c2d_attempted(&self, id: i64) -> Result<(), HubError> {
        Ok(self.store().count_c2d_attempt(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_read_back_as_written() {
        let mut system = serde_json::Map::new();
        system.insert("$.ct".into(), "application/json".into());
        let mut application = serde_json::Map::new();
        application.insert("colour".into(), "blue".into());
        let record = C2dRecord {
            id: 7,
            device_id: "d".into(),
            message_id: "m".into(),
            properties: encode_properties(system.clone(), application.clone()),
            body: b"hi".to_vec(),
            created: 1,
            expiry: 2,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 0,
            ack: C2dAck::None,
        };
        let view = C2dView::of(record.clone());
        assert_eq!(view.system_properties, serde_json::Value::Object(system));
        assert_eq!(view.properties, serde_json::Value::Object(application));
        assert_eq!((view.id, view.body.as_slice()), (7, &b"hi"[..]));
        // Unreadable stored text shows as null properties, as the API always rendered it.
        let view = C2dView::of(C2dRecord {
            properties: "not json".into(),
            ..record
        });
        assert!(view.system_properties.is_null() && view.properties.is_null());
    }
}

/// A queued message as the gateway publishes it to a device: its properties as the name/value
/// pairs of a topic's property bag (a value that is not text has no value), so that the
/// transport never reads the stored JSON nor `serde_json` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dDelivery {
    pub id: i64,
    pub device_id: String,
    pub message_id: String,
    /// `$.cid`, `$.ct`, `$.ce`, in the stored order.
    pub system: Vec<(String, Option<String>)>,
    /// Application properties, in the stored order.
    pub application: Vec<(String, Option<String>)>,
    pub body: Vec<u8>,
    /// Attempts so far: more than 0 means this is a redelivery (MQTT DUP).
    pub delivery_count: i64,
}

impl C2dDelivery {
    fn of(view: C2dView) -> C2dDelivery {
        let pairs = |v: &serde_json::Value| -> Vec<(String, Option<String>)> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
                        .collect()
                })
                .unwrap_or_default()
        };
        C2dDelivery {
            id: view.id,
            system: pairs(&view.system_properties),
            application: pairs(&view.properties),
            device_id: view.device_id,
            message_id: view.message_id,
            body: view.body,
            delivery_count: view.delivery_count,
        }
    }
}

impl Hub {
    /// [`Hub::pending_c2d`] as the gateway delivers them, oldest first.
    pub fn c2d_deliveries(&self, device_id: &str) -> Result<Vec<C2dDelivery>, HubError> {
        Ok(self
            .pending_c2d(device_id)?
            .into_iter()
            .map(|r| C2dDelivery::of(C2dView::of(r)))
            .collect())
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;

    #[test]
    fn a_delivery_carries_the_properties_as_pairs() {
        let mut system = serde_json::Map::new();
        system.insert("$.ct".into(), "application/json".into());
        let mut application = serde_json::Map::new();
        application.insert("n".into(), 3.into());
        application.insert("colour".into(), "blue".into());
        let record = C2dRecord {
            id: 7,
            device_id: "d".into(),
            message_id: "m".into(),
            properties: encode_properties(system, application),
            body: b"hi".to_vec(),
            created: 1,
            expiry: 2,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 2,
            ack: C2dAck::Full,
        };
        let d = C2dDelivery::of(C2dView::of(record.clone()));
        assert_eq!(
            d.system,
            vec![("$.ct".to_string(), Some("application/json".to_string()))]
        );
        // A value that is not text (never written by the hub) travels as a bare name.
        assert_eq!(
            d.application,
            vec![
                ("colour".to_string(), Some("blue".to_string())),
                ("n".to_string(), None)
            ]
        );
        assert_eq!(
            (d.id, d.delivery_count, d.body.as_slice()),
            (7, 2, &b"hi"[..])
        );
        let d = C2dDelivery::of(C2dView::of(C2dRecord {
            properties: "not json".into(),
            ..record
        }));
        assert!(d.system.is_empty() && d.application.is_empty());
    }
}
