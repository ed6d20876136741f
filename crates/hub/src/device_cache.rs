//! What CONNECT needs to know about a registered device (enabled or not, how it authenticates),
//! kept in memory so that admitting a reconnecting device reads no database.
//!
//! Why: the store read was the one blocking step left on the connect path; it cost a hand-off to
//! a blocking thread and back on every CONNECT, which on a connect storm was a fifth of the
//! hub's CPU. Correctness rests on two rules:
//! - every device write in the service layer calls [`DeviceCache::forget`] once the store call
//!   returns (whatever it returned), so the next CONNECT reads the store again;
//! - a record read from the store is remembered only if no device was forgotten since the read
//!   began ([`DeviceCache::generation`] before the read, [`DeviceCache::remember`] after), so a
//!   read that raced with a write can never put the old record back.
//!
//! Only successful lookups are kept (an unknown device reads the store each time), and at most
//! `capacity` of them: when full it starts over, which costs store reads, never a wrong verdict.
//! This is the one place that must change for a multi-node hub, where another node's write has
//! to reach `forget` too.
//!
//! Owns: [`DeviceCache`] — the records and the generation, behind its own lock. Asks nothing of
//! others; `devices` forgets, `admission` gets and remembers, the CONNECT ticket reads the
//! generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use iothub_store::{AuthType, DeviceRecord, DeviceStatus};

use crate::devices::{record_auth, DeviceAuth};

/// The parts of a device record that decide a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectRecord {
    pub enabled: bool,
    /// None: an authentication type that cannot connect (named in `auth_type`).
    pub auth: Option<DeviceAuth>,
    pub auth_type: AuthType,
}

impl ConnectRecord {
    pub(crate) fn from_record(record: &DeviceRecord) -> ConnectRecord {
        ConnectRecord {
            enabled: record.status == DeviceStatus::Enabled,
            auth: record_auth(record),
            auth_type: record.auth_type,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every `forget`.
    generation: u64,
    devices: HashMap<String, Arc<ConnectRecord>>,
}

/// See the module comment.
#[derive(Debug, Default)]
pub(crate) struct DeviceCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl DeviceCache {
    pub(crate) fn new(capacity: usize) -> DeviceCache {
        DeviceCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, device_id: &str) -> Option<Arc<ConnectRecord>> {
        self.lock().devices.get(device_id).cloned()
    }

    /// Take this before reading a device from the store, and hand it to `remember`.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `record`, read from the store after `generation` was taken, unless a device was
    /// forgotten meanwhile (the read may then predate that write).
    pub(crate) fn remember(&self, generation: u64, record: &DeviceRecord) -> Arc<ConnectRecord> {
        let entry = Arc::new(ConnectRecord::from_record(record));
        if self.capacity == 0 {
            return entry;
        }
        let mut inner = self.lock();
        if inner.generation == generation {
            if inner.devices.len() >= self.capacity
                && !inner.devices.contains_key(&record.device_id)
            {
                inner.devices.clear();
            }
            inner
                .devices
                .insert(record.device_id.clone(), entry.clone());
        }
        entry
    }

    /// The device changed or was deleted in the store: its next CONNECT reads the store.
    pub(crate) fn forget(&self, device_id: &str) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.devices.remove(device_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str, auth_type: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: id.into(),
            generation_id: "g".into(),
            etag: 1,
            status: DeviceStatus::parse(status).unwrap(),
            status_reason: None,
            status_updated: 0,
            auth_type: AuthType::parse(auth_type).unwrap(),
            primary_thumbprint: None,
            secondary_thumbprint: None,
            primary_key: Some("cHJpbWFyeQ==".into()),
            secondary_key: Some("c2Vjb25kYXJ5".into()),
            created: 0,
            updated: 0,
        }
    }

    #[test]
    fn a_remembered_device_is_served_until_forgotten() {
        let cache = DeviceCache::new(10);
        let g = cache.generation();
        let kept = cache.remember(g, &record("d1", "enabled", "certificateAuthority"));
        assert!(kept.enabled);
        assert_eq!(kept.auth, Some(DeviceAuth::CertificateAuthority));
        assert_eq!(cache.get("d1"), Some(kept));
        cache.forget("d1");
        assert_eq!(cache.get("d1"), None);
    }

    #[test]
    fn a_read_that_raced_with_a_write_is_not_kept() {
        let cache = DeviceCache::new(10);
        let before_read = cache.generation();
        // A writer disables the device (any device) while the old record is being read.
        cache.forget("d1");
        let stale = cache.remember(before_read, &record("d1", "enabled", "sas"));
        // The caller still gets what it read, but nobody else will.
        assert!(stale.enabled);
        assert_eq!(cache.get("d1"), None);
        // The next read, begun after the write, is kept.
        let g = cache.generation();
        cache.remember(g, &record("d1", "disabled", "sas"));
        assert!(!cache.get("d1").unwrap().enabled);
    }

    #[test]
    fn status_and_auth_are_read_from_the_record() {
        let cache = DeviceCache::new(10);
        let g = cache.generation();
        let sas = cache.remember(g, &record("s", "disabled", "sas"));
        assert!(!sas.enabled);
        assert_eq!(
            sas.auth,
            Some(DeviceAuth::Sas {
                primary: "cHJpbWFyeQ==".into(),
                secondary: "c2Vjb25kYXJ5".into()
            })
        );
        let none = cache.remember(g, &record("n", "enabled", "none"));
        assert_eq!((none.auth.clone(), none.auth_type.as_str()), (None, "none"));
    }

    #[test]
    fn a_full_cache_starts_over_and_capacity_zero_keeps_nothing() {
        let cache = DeviceCache::new(2);
        for id in ["a", "b", "c"] {
            let g = cache.generation();
            cache.remember(g, &record(id, "enabled", "certificateAuthority"));
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.get("c").is_some());
        // Re-remembering a present device never empties the cache.
        let g = cache.generation();
        cache.remember(g, &record("d", "enabled", "certificateAuthority"));
        cache.remember(g, &record("d", "disabled", "certificateAuthority"));
        assert_eq!(cache.len(), 2);
        assert!(!cache.get("d").unwrap().enabled);

        let off = DeviceCache::new(0);
        let g = off.generation();
        assert!(off.remember(g, &record("a", "enabled", "sas")).enabled);
        assert_eq!(off.get("a"), None);
    }
}
