//! Which node holds each device's session, for the nodes sharing a store: one session per device
//! across the cluster, and direct methods routed to the node that can deliver them.
//!
//! Why here and batched: a CONNECT must not wait for a database write, so this node notes its
//! sessions' starts and ends in memory and writes them with its heartbeat on every tick of the
//! change follower (`Hub::cluster_tick`). A start recorded by another node reaches this one as a
//! `Session` change: if this node holds an older session of that device, it closes it, as a
//! second connection to one node replaces the first. Sessions are ordered by (start in Unix
//! milliseconds, node name): the nodes' clocks must agree to well under a second (NTP), which a
//! cluster needs anyway. A node whose heartbeat is older than `HubConfig::node_timeout_ms` is
//! dead: its devices are reported offline to direct methods, and admitted anywhere else at once.
//!
//! Owns: [`Presence`] — this node's sessions (device -> session id, start) and the presence
//! changes not yet written. Only used when `HubConfig::cluster` is set (a hub alone on its store
//! writes no presence: a CONNECT storm must not become a storm of writes).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use iothub_store::PresenceUpdate;

use crate::peer_text::escaped;
use crate::sessions::SessionSignal;
use crate::{Hub, HubError};

/// Unix milliseconds by the system clock: session starts and heartbeats are compared across
/// nodes, so they are wall-clock time, not a test's manual clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Inner {
    /// This node's live sessions: device -> (session id, start in Unix ms).
    local: HashMap<String, (u64, i64)>,
    /// Starts and ends not yet written to the store, oldest first.
    pending: Vec<PresenceUpdate>,
}

/// See the module comment.
#[derive(Default)]
pub(crate) struct Presence {
    inner: Mutex<Inner>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `device_id` began here.
    pub(crate) fn connected(&self, node: &str, device_id: &str, session_id: u64) {
        let since_ms = now_ms();
        let mut inner = self.lock();
        inner
            .local
            .insert(device_id.to_string(), (session_id, since_ms));
        inner.pending.push(PresenceUpdate {
            device_id: device_id.to_string(),
            node: node.to_string(),
            since_ms,
            connected: true,
        });
    }

    /// Session `session_id` of `device_id` ended here (nothing if a newer one replaced it).
    pub(crate) fn disconnected(&self, node: &str, device_id: &str, session_id: u64) {
        let mut inner = self.lock();
        let Some(&(id, since_ms)) = inner.local.get(device_id) else {
            return;
        };
        if id != session_id {
            return;
        }
        inner.local.remove(device_id);
        inner.pending.push(PresenceUpdate {
            device_id: device_id.to_string(),
            node: node.to_string(),
            since_ms,
            connected: false,
        });
    }

    /// This node's session of `device_id`: (session id, start).
    fn local(&self, device_id: &str) -> Option<(u64, i64)> {
        self.lock().local.get(device_id).copied()
    }

    fn take_pending(&self) -> Vec<PresenceUpdate> {
        std::mem::take(&mut self.lock().pending)
    }

    /// Puts back updates a failed write did not land, before any made since.
    fn put_back(&self, mut updates: Vec<PresenceUpdate>) {
        let mut inner = self.lock();
        updates.append(&mut inner.pending);
        inner.pending = updates;
    }
}

impl Hub {
    /// Writes this node's heartbeat and the presence changes made since the last tick.
    pub(crate) fn write_presence(&self) -> Result<(), HubError> {
        let node = &self.config().node_id;
        self.store().heartbeat(node, now_ms())?;
        let updates = self.presence().take_pending();
        if updates.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store().record_presence(&updates) {
            self.presence().put_back(updates);
            return Err(e.into());
        }
        Ok(())
    }

    /// Another node recorded a session of `device_id` that began at `detail` ("NODE SINCE_MS"):
    /// this node's session of it, if older, is closed.
    pub(crate) fn session_began_elsewhere(&self, device_id: &str, detail: &str) {
        let Some((node, since)) = detail.split_once(' ') else {
            return;
        };
        let Ok(since_ms) = since.parse::<i64>() else {
            return;
        };
        let Some((session_id, local_since)) = self.presence().local(device_id) else {
            return;
        };
        let me = self.config().node_id.as_str();
        if (since_ms, node) > (local_since, me) {
            let reason = format!(
                "a new connection of device '{device_id}' on node '{}' replaced this one",
                escaped(node)
            );
            self.sessions()
                .signal_session(device_id, session_id, SessionSignal::Close(reason));
        }
    }
}
