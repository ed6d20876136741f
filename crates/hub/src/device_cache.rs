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
//! `capacity` of them (`--device-cache-entries`), so memory does not grow with the registry: when
//! full, the entry to drop is chosen by the clock ("second chance") rule, an approximation of
//! least-recently-used that needs no list reordering on a hit: each entry has a bit set when it is
//! read; the hand passes over entries in insertion order, clearing set bits and dropping the first
//! entry whose bit is clear. Dropping costs a store read later, never a wrong verdict. Another
//! node's write reaches `forget` through the change feed (`changes.rs`).
//!
//! Owns: [`DeviceCache`] — the records, their clock, the generation and the hit/miss counts,
//! behind its own lock. Asks nothing of others; `devices` and `changes` forget, `admission` gets
//! and remembers, the CONNECT ticket reads the generation, `metrics` reads the counts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

#[derive(Debug)]
struct Entry {
    record: Arc<ConnectRecord>,
    /// Read since the clock hand last passed it.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every `forget`.
    generation: u64,
    devices: HashMap<String, Entry>,
    /// The clock: device ids in insertion order, the hand at the front. May hold ids no longer
    /// in `devices` (forgotten); they are skipped when the hand reaches them.
    hand: VecDeque<String>,
}

impl Inner {
    /// Drops one entry by the clock rule (see the module comment).
    fn evict_one(&mut self) {
        while let Some(id) = self.hand.pop_front() {
            match self.devices.get_mut(&id) {
                None => continue,
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    self.hand.push_back(id);
                }
                Some(_) => {
                    self.devices.remove(&id);
                    return;
                }
            }
        }
    }
}

/// See the module comment.
#[derive(Debug, Default)]
pub(crate) struct DeviceCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl DeviceCache {
    pub(crate) fn new(capacity: usize) -> DeviceCache {
        DeviceCache {
            capacity,
            ..DeviceCache::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, device_id: &str) -> Option<Arc<ConnectRecord>> {
        let mut inner = self.lock();
        let entry = inner.devices.get_mut(device_id)?;
        entry.referenced = true;
        Some(entry.record.clone())
    }

    /// [`DeviceCache::get`], counted as a hit or a miss: the lookup a CONNECT makes first.
    pub(crate) fn lookup(&self, device_id: &str) -> Option<Arc<ConnectRecord>> {
        let found = self.get(device_id);
        match found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        found
    }

    /// (hits, misses, entries held): for `/metrics`.
    pub(crate) fn stats(&self) -> (u64, u64, usize) {
        let entries = self.lock().devices.len();
        (self.hits.load(Relaxed), self.misses.load(Relaxed), entries)
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
            let present = inner.devices.contains_key(&record.device_id);
            if !present {
                if inner.devices.len() >= self.capacity {
                    inner.evict_one();
                }
                inner.hand.push_back(record.device_id.clone());
            }
            let kept = Entry {
                record: entry.clone(),
                referenced: false,
            };
            inner.devices.insert(record.device_id.clone(), kept);
        }
        entry
    }

    /// The device changed or was deleted in the store: its next CONNECT reads the store.
    pub(crate) fn forget(&self, device_id: &str) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.devices.remove(device_id);
        // Its id stays in the clock until the hand skips it; past twice the capacity the clock
        // is rebuilt, so forgotten ids cannot pile up.
        if inner.hand.len() > 2 * self.capacity.max(1) {
            let Inner { devices, hand, .. } = &mut *inner;
            hand.retain(|id| devices.contains_key(id));
        }
    }

    /// Every device may have changed (another node's changes were missed): all forgotten.
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.devices.clear();
        inner.hand.clear();
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

    fn keep(cache: &DeviceCache, id: &str) {
        let g = cache.generation();
        cache.remember(g, &record(id, "enabled", "certificateAuthority"));
    }

    #[test]
    fn a_full_cache_drops_one_entry_giving_read_ones_a_second_chance() {
        let cache = DeviceCache::new(3);
        for id in ["a", "b", "c"] {
            keep(&cache, id);
        }
        // "a" was read since it was kept: the hand spares it once and drops "b".
        assert!(cache.get("a").is_some());
        keep(&cache, "d");
        assert_eq!(cache.len(), 3);
        assert!(cache.get("b").is_none());
        for id in ["a", "c", "d"] {
            assert!(cache.get(id).is_some(), "{id}");
        }
        // Re-remembering a present device replaces it without dropping another.
        let g = cache.generation();
        cache.remember(g, &record("d", "disabled", "certificateAuthority"));
        assert_eq!(cache.len(), 3);
        assert!(!cache.get("d").unwrap().enabled);
    }

    #[test]
    fn the_cap_holds_however_many_devices_pass_and_hits_are_counted() {
        let cache = DeviceCache::new(100);
        for i in 0..10_000 {
            keep(&cache, &format!("dev-{i}"));
            if i % 3 == 0 {
                cache.forget(&format!("dev-{}", i / 2));
            }
            assert!(cache.len() <= 100);
        }
        assert!(
            cache.lock().hand.len() <= 201,
            "forgotten ids do not pile up"
        );
        assert!(cache.lookup("dev-9999").is_some());
        assert!(cache.lookup("dev-0").is_none());
        assert_eq!(cache.stats(), (1, 1, cache.len()));
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let off = DeviceCache::new(0);
        let g = off.generation();
        assert!(off.remember(g, &record("a", "enabled", "sas")).enabled);
        assert_eq!(off.get("a"), None);
    }
}
