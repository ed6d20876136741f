//! Device-to-cloud messages: every message is written durably before the device gets its PUBACK.
//! A single writer thread commits messages in batches (one fsync for all messages waiting at that
//! moment), so many devices publishing at once share commits instead of queueing behind each
//! other's fsyncs. Readers get messages by offset; followers wait on a watch of the last offset.
//!
//! Owns: `Telemetry` — the handle to the writer thread and the watch of the last committed
//! offset (the writer moves it after each commit). Asks of others: the store (`append_messages`
//! on the writer thread; reads and retention through the hub's store), the metrics (commit
//! latency, failed commits), the clock and
//! `telemetry_retention_secs` for pruning, and `authorize` for reads.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_store::{NewMessage, Store, StoreError, StoredMessage};
use tokio::sync::{oneshot, watch};

use crate::auth::{Principal, Right};
use crate::metrics::Metrics;
use crate::{Hub, HubError};

/// At most this many messages go into one commit.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<i64, HubError>>;
/// A message handed to the writer thread: the row, when it was handed over, and who waits.
type Queued = (NewMessage, Instant, Reply);

/// The telemetry part of the hub (see the module comment).
pub(crate) struct Telemetry {
    /// The handle to the writer thread.
    tx: std::sync::Mutex<std_mpsc::Sender<Queued>>,
    /// The last committed offset; followers wait on it.
    last_offset: watch::Sender<i64>,
}

impl Telemetry {
    /// Starts the writer thread, its watch starting at the store's last offset.
    /// `metrics`: where each message's commit latency and the failed commits are counted.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Telemetry, HubError> {
        let (last_offset, _) = watch::channel(store.last_message_offset()?);
        let last = last_offset.clone();
        let (tx, rx) = std_mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("telemetry-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    let mut messages = Vec::with_capacity(batch.len());
                    let mut waiting = Vec::with_capacity(batch.len());
                    for (message, queued_at, reply) in batch {
                        messages.push(message);
                        waiting.push((queued_at, reply));
                    }
                    match append_while_awaited(&*store, &messages, &waiting, &metrics) {
                        Ok(offsets) => {
                            if let Some(max) = offsets.iter().max() {
                                last.send_replace(*max);
                            }
                            for ((queued_at, reply), offset) in waiting.into_iter().zip(offsets) {
                                metrics.telemetry_commit.observe(queued_at.elapsed());
                                let _ = reply.send(Ok(offset));
                            }
                        }
                        Err(e) => {
                            metrics.store_error();
                            tracing::error!(error = %e, "telemetry commit failed");
                            let replies = waiting.into_iter().map(|(_, reply)| reply);
                            for reply in replies {
                                let _ = reply.send(Err(HubError::Internal(format!(
                                    "the message was not stored: {e}"
                                ))));
                            }
                        }
                    }
                }
            })
            .map_err(|e| {
                HubError::Internal(format!("cannot start the telemetry writer thread: {e}"))
            })?;
        Ok(Telemetry {
            tx: std::sync::Mutex::new(tx),
            last_offset,
        })
    }

    /// Queues a message for the writer thread; false when the thread is gone.
    fn send(&self, message: NewMessage, reply: Reply) -> bool {
        match self.tx.lock() {
            Ok(tx) => tx.send((message, Instant::now(), reply)).is_ok(),
            Err(_) => false,
        }
    }
}

/// The first wait before writing a batch again while the store is unavailable, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Appends `messages`, and while the store is unavailable (its database restarting, say) tries
/// again with growing pauses for as long as a device still waits for one of them: the devices
/// keep their sessions and get their PUBACKs once the messages are durable. When every waiting
/// session has ended, the batch is given up: none was acknowledged, so each device sends its
/// messages again when it reconnects (QoS 1 is at least once). A write that failed for another
/// reason (a full disk) is answered at once.
fn append_while_awaited(
    store: &dyn Store,
    messages: &[NewMessage],
    waiting: &[(Instant, Reply)],
    metrics: &Metrics,
) -> Result<Vec<i64>, StoreError> {
    let mut pause = RETRY_FIRST;
    let mut warned = false;
    loop {
        match store.append_messages(messages) {
            Err(StoreError::Unavailable(e)) if waiting.iter().any(|(_, r)| !r.is_closed()) => {
                metrics.store_error();
                if !warned {
                    tracing::warn!(error = %e, messages = messages.len(), "telemetry waits for the store: no PUBACK until it is back");
                    warned = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
            result => {
                if warned && result.is_ok() {
                    tracing::info!(
                        messages = messages.len(),
                        "the store is back: waiting telemetry stored"
                    );
                }
                return result;
            }
        }
    }
}

/// The partition of the telemetry log that `device_id`'s messages go to, of `partitions`: FNV-1a
/// of the id's bytes, so that every node (and every later version) puts a device's messages in
/// the same partition, which keeps them in order for readers.
pub fn partition_of(device_id: &str, partitions: u32) -> u32 {
    let hash = device_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

/// A device-to-cloud message as readers see it: its property bags parsed from the stored JSON
/// text here, once, so that no adapter knows how they are stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageView {
    /// Monotonic, starting at 1, never reused.
    pub offset: i64,
    /// The partition of the log it is in (its device's).
    pub partition: u32,
    /// Its number within its partition: 1, 2, 3... without gaps.
    pub sequence: i64,
    pub device_id: String,
    pub module_id: Option<String>,
    /// Unix seconds.
    pub enqueued: i64,
    /// System properties (`$.mid`...); empty if the stored text is not a JSON object.
    pub system_properties: serde_json::Map<String, serde_json::Value>,
    /// Application properties (a JSON object; null if the stored text is not JSON).
    pub properties: serde_json::Value,
    pub body: Vec<u8>,
}

impl MessageView {
    pub(crate) fn of(stored: StoredMessage) -> MessageView {
        let m = stored.message;
        MessageView {
            offset: stored.offset,
            partition: m.partition,
            sequence: stored.sequence,
            system_properties: serde_json::from_str(&m.system_properties).unwrap_or_default(),
            properties: serde_json::from_str(&m.properties).unwrap_or_default(),
            device_id: m.device_id,
            module_id: m.module_id,
            enqueued: m.enqueued,
            body: m.body,
        }
    }
}

impl Hub {
    /// Queues a message for the durable write, into the partition its device hashes to; the
    /// receiver yields its offset once committed.
    pub fn store_telemetry(
        &self,
        mut message: NewMessage,
    ) -> oneshot::Receiver<Result<i64, HubError>> {
        message.partition = partition_of(&message.device_id, self.config().partitions);
        let (reply, rx) = oneshot::channel();
        if !self.telemetry().send(message, reply) {
            let (reply, rx) = oneshot::channel();
            let _ = reply.send(Err(HubError::Internal(
                "the telemetry writer stopped".into(),
            )));
            return rx;
        }
        rx
    }

    /// Messages from `from` on (offsets start at 1), optionally of one device.
    pub fn read_messages(
        &self,
        who: &Principal,
        from: i64,
        device_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageView>, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read device-to-cloud messages",
            "messages",
        )?;
        Ok(self
            .store()
            .read_messages(from.max(1), device_id, limit.clamp(1, 1000))?
            .into_iter()
            .map(MessageView::of)
            .collect())
    }

    /// A watch of the last committed offset, for followers.
    pub fn watch_messages(&self) -> watch::Receiver<i64> {
        self.telemetry().last_offset.subscribe()
    }

    /// The last committed offset.
    pub fn last_message_offset(&self) -> i64 {
        *self.telemetry().last_offset.borrow()
    }

    /// Deletes messages older than the retention period; returns how many.
    pub fn prune_telemetry(&self) -> Result<u64, HubError> {
        let before = self.now() - self.config().telemetry_retention_secs;
        Ok(self.store().prune_messages(before)?)
    }
}

/// A message as a device published it, handed over by the gateway: the topic's property bag
/// already decoded (`mqtt::topics::PropertyBag`'s two halves, in topic order), the payload as
/// sent. The hub, not the transport, decides how it is stored and stamps it with its own clock.
/// The bag is taken by value: its strings move into the stored row uncopied.
#[derive(Debug, Clone)]
pub struct DeviceMessage<'a> {
    pub device_id: &'a str,
    /// `$.`-prefixed properties (`$.mid`, `$.ct`...); `None` is a name without `=`.
    pub system: Vec<(String, Option<String>)>,
    /// Application properties.
    pub custom: Vec<(String, Option<String>)>,
    pub body: &'a [u8],
    /// The PUBLISH had RETAIN set: kept as the application property `mqtt-retain`.
    pub retain: bool,
    /// The connection's Will, sent because the session did not end cleanly: marked with
    /// `iothub-MessageType: Will`, as Azure does.
    pub will: bool,
}

impl DeviceMessage<'_> {
    /// The stored row: property bags as JSON objects (a name without a value is null).
    fn row(self, enqueued: i64) -> NewMessage {
        let object = |pairs: Vec<(String, Option<String>)>| {
            let mut map = serde_json::Map::new();
            for (k, v) in pairs {
                map.insert(k, v.map(Into::into).unwrap_or(serde_json::Value::Null));
            }
            map
        };
        let system = object(self.system);
        let mut custom = object(self.custom);
        if self.retain {
            custom.insert("mqtt-retain".into(), "true".into());
        }
        if self.will {
            custom.insert("iothub-MessageType".into(), "Will".into());
        }
        NewMessage {
            // Set by `Hub::store_telemetry`, which knows the hub's partition count.
            partition: 0,
            device_id: self.device_id.to_string(),
            module_id: None,
            enqueued,
            system_properties: serde_json::Value::Object(system).to_string(),
            properties: serde_json::Value::Object(custom).to_string(),
            body: self.body.to_vec(),
        }
    }
}

impl Hub {
    /// Queues a device's message for the durable write ([`Hub::store_telemetry`]), stamped now by
    /// the hub's clock; the receiver yields its offset once committed.
    pub fn store_device_message(
        &self,
        message: DeviceMessage<'_>,
    ) -> oneshot::Receiver<Result<i64, HubError>> {
        self.metrics().telemetry(message.body.len());
        self.store_telemetry(message.row(self.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's partition must never move between versions or nodes: pinned values. FNV-1a of
    /// no bytes is its offset basis, 0xcbf29ce484222325, which leaves 1 mod 4 and 5 mod 32.
    #[test]
    fn a_device_partition_is_fixed_by_its_id() {
        for (id, of_4, of_32) in [
            ("", 1, 5),
            ("sensor-1", 1, 9),
            ("sensor-2", 0, 16),
            ("pump", 3, 11),
            ("valve-17", 0, 8),
        ] {
            assert_eq!(partition_of(id, 4), of_4, "{id}");
            assert_eq!(partition_of(id, 32), of_32, "{id}");
        }
        assert_eq!(partition_of("anything", 1), 0);
        // Spread: 4,000 ids over 4 partitions, none far from a quarter.
        let mut counts = [0; 4];
        for i in 0..4000 {
            counts[partition_of(&format!("device-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
    }

    fn pairs(p: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn a_device_message_is_stored_as_the_gateway_stored_it() {
        let system = pairs(&[("$.mid", Some("m1")), ("$.ct", Some("application/json"))]);
        let custom = pairs(&[("b", Some("x&y")), ("a", None), ("e", Some(""))]);
        let message = DeviceMessage {
            device_id: "dev1",
            system,
            custom,
            body: b"{}",
            retain: false,
            will: false,
        };
        let row = message.clone().row(1_700_000_000);
        assert_eq!(
            (row.device_id.as_str(), row.module_id, row.enqueued),
            ("dev1", None, 1_700_000_000)
        );
        assert_eq!(
            row.system_properties,
            r#"{"$.ct":"application/json","$.mid":"m1"}"#
        );
        assert_eq!(row.properties, r#"{"a":null,"b":"x&y","e":""}"#);
        assert_eq!(row.body, b"{}");
        // A retained Will carries both marks; an empty bag is an empty object.
        let row = DeviceMessage {
            system: Vec::new(),
            custom: Vec::new(),
            retain: true,
            will: true,
            ..message
        }
        .row(0);
        assert_eq!(row.system_properties, "{}");
        assert_eq!(
            row.properties,
            r#"{"iothub-MessageType":"Will","mqtt-retain":"true"}"#
        );
    }
}
