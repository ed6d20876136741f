//! Device activity (last connected, last activity, last refusal) is a best-effort fact, not
//! acknowledged data: writing it synchronously (an fsync per connect and per disconnect) capped
//! connect storms at about 90 per second (scripts/bench). Updates are merged in memory and written
//! in one transaction every half second (and on shutdown); reads merge what is pending, so the
//! API and portal never show stale facts. A crash loses at most the last half second of them.
//!
//! Owns: `ActivityBuffer` — the facts waiting to be written, and the flusher thread (which
//! holds its own handle to the store). Asks of others: the store for the facts already written
//! (`device_activity` merges them). Sessions record connects, disconnects and refusals here;
//! devices forget a deleted device's pending facts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use iothub_store::{DeviceActivity, Store};

use crate::{Hub, HubError};

const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The activity part of the hub (see the module comment).
#[derive(Default)]
pub(crate) struct ActivityBuffer {
    pending: Mutex<HashMap<String, DeviceActivity>>,
}

fn merge(into: &mut DeviceActivity, update: &DeviceActivity) {
    if update.last_activity.is_some() {
        into.last_activity = update.last_activity;
    }
    if update.last_connected.is_some() {
        into.last_connected = update.last_connected;
    }
    if update.last_refusal.is_some() {
        into.last_refusal = update.last_refusal.clone();
        into.last_refusal_time = update.last_refusal_time;
    }
    if update.certificate_not_after.is_some() {
        into.certificate_not_after = update.certificate_not_after;
    }
}

impl ActivityBuffer {
    /// Starts the flusher thread; it ends when the buffer is dropped (the last Hub is gone).
    pub(crate) fn start(store: Arc<dyn Store>) -> Result<Arc<ActivityBuffer>, HubError> {
        let buffer = Arc::new(ActivityBuffer::default());
        let weak: Weak<ActivityBuffer> = Arc::downgrade(&buffer);
        std::thread::Builder::new()
            .name("activity-flusher".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(buffer) = weak.upgrade() else { return };
                buffer.flush(store.as_ref());
            })
            .map_err(|e| HubError::Internal(format!("cannot start the activity flusher: {e}")))?;
        Ok(buffer)
    }

    fn record(&self, device_id: &str, update: DeviceActivity) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        merge(pending.entry(device_id.to_string()).or_default(), &update);
    }

    fn flush(&self, store: &dyn Store) {
        let batch: Vec<(String, DeviceActivity)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.update_device_activities(&batch) {
            crate::error::STORE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, devices = batch.len(), "device activity not written; kept for the next flush");
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, update) in batch {
                // Newer updates made meanwhile win over the ones being put back.
                let entry = pending.entry(id).or_default();
                let newer = entry.clone();
                *entry = update;
                merge(entry, &newer);
            }
        }
    }

    fn forget(&self, device_id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
    }

    fn pending_for(&self, device_id: &str) -> Option<DeviceActivity> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }
}

impl Hub {
    /// Records connection facts of a device (written within half a second).
    pub(crate) fn record_activity(&self, device_id: &str, update: DeviceActivity) {
        self.activity().record(device_id, update);
    }

    /// The connection facts of a device: stored, merged with what is pending.
    pub(crate) fn device_activity(&self, device_id: &str) -> Result<DeviceActivity, HubError> {
        let mut stored = self.store().get_device_activity(device_id)?;
        if let Some(pending) = self.activity().pending_for(device_id) {
            merge(&mut stored, &pending);
        }
        Ok(stored)
    }

    /// Drops pending facts of a deleted device.
    pub(crate) fn forget_activity(&self, device_id: &str) {
        self.activity().forget(device_id);
    }

    /// Writes pending connection facts now (on shutdown).
    pub fn flush_activity(&self) {
        self.activity().flush(self.store().as_ref());
    }
}
