//! Cloud-to-device messages: queued durably per device (a bounded queue, each message with an
//! expiry), delivered by the gateway when the device subscribes, redelivered after reconnect until
//! the device acknowledges (PUBACK), and visible with their state (queued, delivered, expired).

use iothub_pki::device_id::validate_device_id;
use iothub_store::{C2dRecord, StoreError};

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
}

impl Hub {
    /// Queues a message for a device and wakes its session.
    pub fn send_c2d(
        &self,
        who: &Principal,
        device_id: &str,
        msg: &C2dSend,
    ) -> Result<C2dRecord, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "send cloud-to-device messages",
            &format!("device/{device_id}"),
        )?;
        validate_device_id(device_id)?;
        let max = self.config.c2d_max_bytes;
        if msg.body.len() > max {
            return Err(HubError::MessageTooLarge {
                size: msg.body.len(),
                max,
            });
        }
        let ttl = msg.ttl_secs.unwrap_or(self.config.c2d_ttl_secs);
        if !(1..=self.config.c2d_max_ttl_secs).contains(&ttl) {
            return Err(HubError::InvalidArgument(format!(
                "the time to live is {ttl} seconds; expected 1 to {}",
                self.config.c2d_max_ttl_secs
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
        let properties = serde_json::json!({ "system": system, "application": custom }).to_string();
        let record = C2dRecord {
            id: 0,
            device_id: device_id.to_string(),
            message_id,
            properties,
            body: msg.body.clone(),
            created: now,
            expiry: now + ttl,
            state: "queued".into(),
            delivered_at: None,
            delivery_count: 0,
        };
        let stored = self
            .store
            .enqueue_c2d(&record, self.config.c2d_max_pending)
            .map_err(|e| match e {
                StoreError::NotFound => HubError::DeviceNotFound(device_id.to_string()),
                StoreError::LimitReached { limit } => HubError::QueueFull {
                    device: device_id.to_string(),
                    limit,
                },
                other => HubError::Internal(other.to_string()),
            })?;
        self.wake_device(device_id);
        Ok(stored)
    }

    /// A device's messages, newest first.
    pub fn list_c2d(
        &self,
        who: &Principal,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<C2dRecord>, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read cloud-to-device messages",
            &format!("device/{device_id}"),
        )?;
        validate_device_id(device_id)?;
        if self.store.get_device(device_id)?.is_none() {
            return Err(HubError::DeviceNotFound(device_id.to_string()));
        }
        // Expire what is due before showing states.
        self.store.pending_c2d(device_id, self.now())?;
        Ok(self.store.list_c2d(device_id, limit.clamp(1, 1000))?)
    }

    /// Messages waiting for a connected device (oldest first); the gateway publishes them.
    pub fn pending_c2d(&self, device_id: &str) -> Result<Vec<C2dRecord>, HubError> {
        Ok(self.store.pending_c2d(device_id, self.now())?)
    }

    /// The device acknowledged a message.
    pub fn c2d_delivered(&self, id: i64) -> Result<(), HubError> {
        Ok(self.store.mark_c2d_delivered(id, self.now())?)
    }

    /// A delivery attempt was made.
    pub fn c2d_attempted(&self, id: i64) -> Result<(), HubError> {
        Ok(self.store.count_c2d_attempt(id)?)
    }
}
