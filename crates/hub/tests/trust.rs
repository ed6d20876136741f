//! The live trust snapshot must follow the registry: after any sequence of CA changes, concurrent
//! or not, the snapshot the hub admits devices with is the registry's current state.
//!
//! The race is made deterministic with a store wrapper that can hold one `list_cas` call (the read
//! of a trust rebuild) between its read and its return, while another change lands.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use iothub_hub::HubConfig;
use iothub_pki::device::validate_chain;
use iothub_pki::gen::KeyKind;
use iothub_store::*;

/// Delegates to SQLite; when armed, the next `list_cas` reads, reports that it has read, and waits
/// to be released before returning what it read.
struct GatedStore {
    inner: SqliteStore,
    armed: AtomicBool,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl GatedStore {
    /// Arms the gate; returns (has-read receiver, release sender).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (read_tx, read_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some((read_tx, release_rx));
        self.armed.store(true, Ordering::SeqCst);
        (read_rx, release_tx)
    }
}

impl Store for GatedStore {
    fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError> {
        self.inner.get_ca(name)
    }
    fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        let read = self.inner.list_cas();
        if self.armed.swap(false, Ordering::SeqCst) {
            let (read_tx, release_rx) = self.gate.lock().unwrap().take().expect("armed gate");
            read_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
        read
    }
    fn write_ca(&self, r: &CaRecord, e: Expect, a: &NewAudit) -> Result<CaRecord, StoreError> {
        self.inner.write_ca(r, e, a)
    }
    fn delete_ca(&self, name: &str, etag: Option<u64>, a: &NewAudit) -> Result<(), StoreError> {
        self.inner.delete_ca(name, etag, a)
    }
    fn append_audit(&self, a: &NewAudit) -> Result<(), StoreError> {
        self.inner.append_audit(a)
    }
    fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.list_audit(q)
    }
    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.inner.list_policies()
    }
    fn insert_policy_if_absent(&self, p: &PolicyRecord) -> Result<bool, StoreError> {
        self.inner.insert_policy_if_absent(p)
    }
    fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.get_device(id)
    }
    fn list_devices(&self, after: Option<&str>, l: u32) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.list_devices(after, l)
    }
    fn write_device(
        &self,
        r: &DeviceRecord,
        e: Expect,
        a: &NewAudit,
    ) -> Result<DeviceRecord, StoreError> {
        self.inner.write_device(r, e, a)
    }
    fn delete_device(&self, id: &str, etag: Option<u64>, a: &NewAudit) -> Result<(), StoreError> {
        self.inner.delete_device(id, etag, a)
    }
    fn get_device_activity(&self, id: &str) -> Result<DeviceActivity, StoreError> {
        self.inner.get_device_activity(id)
    }
    fn update_device_activity(&self, id: &str, u: &DeviceActivity) -> Result<(), StoreError> {
        self.inner.update_device_activity(id, u)
    }
    fn update_device_activities(&self, u: &[(String, DeviceActivity)]) -> Result<(), StoreError> {
        self.inner.update_device_activities(u)
    }
    fn append_messages(&self, m: &[NewMessage]) -> Result<Vec<i64>, StoreError> {
        self.inner.append_messages(m)
    }
    fn read_messages(
        &self,
        from: i64,
        id: Option<&str>,
        l: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.read_messages(from, id, l)
    }
    fn last_message_offset(&self) -> Result<i64, StoreError> {
        self.inner.last_message_offset()
    }
    fn prune_messages(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_messages(before)
    }
    fn enqueue_c2d(&self, r: &C2dRecord, max: u32) -> Result<C2dRecord, StoreError> {
        self.inner.enqueue_c2d(r, max)
    }
    fn list_c2d(&self, id: &str, l: u32) -> Result<Vec<C2dRecord>, StoreError> {
        self.inner.list_c2d(id, l)
    }
    fn pending_c2d(&self, id: &str, now: i64) -> Result<Vec<C2dRecord>, StoreError> {
        self.inner.pending_c2d(id, now)
    }
    fn count_pending_c2d(&self, id: &str, now: i64) -> Result<u64, StoreError> {
        self.inner.count_pending_c2d(id, now)
    }
    fn mark_c2d_delivered(&self, id: i64, at: i64) -> Result<(), StoreError> {
        self.inner.mark_c2d_delivered(id, at)
    }
    fn count_c2d_attempt(&self, id: i64) -> Result<(), StoreError> {
        self.inner.count_c2d_attempt(id)
    }
    fn get_twin(&self, id: &str) -> Result<TwinRecord, StoreError> {
        self.inner.get_twin(id)
    }
    fn write_twin(&self, t: &TwinRecord, expected: Option<u64>) -> Result<TwinRecord, StoreError> {
        self.inner.write_twin(t, expected)
    }
}

fn gated_env() -> (Env, Arc<GatedStore>) {
    let store = Arc::new(GatedStore {
        inner: SqliteStore::open_in_memory().unwrap(),
        armed: AtomicBool::new(false),
        gate: Mutex::new(None),
    });
    let env = Env::over(store.clone(), HubConfig::default(), real_now());
    (env, store)
}

/// Verifies `ca` as `name` through the code flow.
fn register_verified(env: &Env, name: &str, ca: &TestCa) {
    env.put(name, &ca.pem);
    let code = env.code(name);
    assert!(
        env.verify(name, &ca.vcert_at(&code, env.time()))
            .unwrap()
            .is_verified
    );
}

#[test]
fn sequential_changes_keep_trust_in_step_with_the_registry() {
    let (env, _) = gated_env();
    let a = root("Step Root A", KeyKind::EcP256);
    let b = root("Step Root B", KeyKind::EcP256);
    assert!(env.hub.trust().is_empty());
    register_verified(&env, "a", &a);
    env.put("b", &b.pem);
    assert_eq!(env.hub.trust().len(), 2);
    assert!(validate_chain(&[a.leaf_der("d")], &env.hub.trust(), env.now()).is_ok());
    env.hub.delete_certificate(&sys(), "a", None).unwrap();
    assert_eq!(env.hub.trust().len(), 1);
    assert!(validate_chain(&[a.leaf_der("d")], &env.hub.trust(), env.now()).is_err());
}

/// A trust rebuild that read the registry before a concurrent delete landed stores its (older)
/// snapshot after the delete's rebuild: the deleted CA stays trusted, and nothing rebuilds the
/// snapshot until the next CA change.
#[test]
fn a_concurrent_rebuild_does_not_resurrect_a_deleted_ca() {
    let (env, store) = gated_env();
    let victim = root("Victim Root", KeyKind::EcP256);
    let other = root("Unrelated Root", KeyKind::EcP256);
    register_verified(&env, "victim", &victim);
    let victim_leaf = victim.leaf_der("device-of-victim");
    assert!(validate_chain(
        std::slice::from_ref(&victim_leaf),
        &env.hub.trust(),
        env.now()
    )
    .is_ok());

    // Thread A: an unrelated upload; its trust rebuild reads {victim, other}, then is held.
    let (has_read, release) = store.arm();
    let hub = env.hub.clone();
    let other_pem = other.pem.clone();
    let upload = std::thread::spawn(move || {
        hub.put_certificate(&sys(), "other", &body(&other_pem), None)
            .map(|(v, _)| v.name)
    });
    has_read.recv().unwrap();

    // Meanwhile the operator deletes the victim; its rebuild reads {other} and lands first.
    env.hub.delete_certificate(&sys(), "victim", None).unwrap();
    assert!(validate_chain(
        std::slice::from_ref(&victim_leaf),
        &env.hub.trust(),
        env.now()
    )
    .is_err());

    // Thread A resumes and stores what it read before the delete.
    release.send(()).unwrap();
    assert_eq!(upload.join().unwrap().unwrap(), "other");

    let registered: Vec<String> = env.all().into_iter().map(|v| v.name).collect();
    assert_eq!(registered, vec!["other".to_string()]);
    assert_eq!(
        env.hub.trust().len(),
        registered.len(),
        "the trust snapshot holds a CA the registry no longer has"
    );
    let verdict = validate_chain(&[victim_leaf], &env.hub.trust(), env.now());
    assert!(
        verdict.is_err(),
        "a device of the deleted CA 'victim' is still admitted: {verdict:?}"
    );
}

/// The same race the other way round: a verification's rebuild is overwritten by an older one, so
/// a CA that is Verified in the registry does not admit its devices.
#[test]
fn a_concurrent_rebuild_does_not_hide_a_verification() {
    let (env, store) = gated_env();
    let ca = root("Newly Verified Root", KeyKind::EcP256);
    let other = root("Unrelated Root 2", KeyKind::EcP256);
    env.put("ca", &ca.pem);
    let code = env.code("ca");
    let vcert = ca.vcert_at(&code, env.time());

    let (has_read, release) = store.arm();
    let hub = env.hub.clone();
    let other_pem = other.pem.clone();
    let upload = std::thread::spawn(move || {
        hub.put_certificate(&sys(), "other", &body(&other_pem), None)
            .map(|(v, _)| v.name)
    });
    has_read.recv().unwrap();
    assert!(env.verify("ca", &vcert).unwrap().is_verified);
    release.send(()).unwrap();
    upload.join().unwrap().unwrap();

    assert!(env.get("ca").is_verified);
    let verdict = validate_chain(&[ca.leaf_der("dev")], &env.hub.trust(), env.now());
    assert!(
        verdict.is_ok(),
        "CA 'ca' is Verified in the registry but its devices are refused: {verdict:?}"
    );
}

/// The cache of validated chains follows trust: a chain admitted once is refused as soon as its
/// CA is deleted, and admitted again once the CA is back and verified; with the cache off the
/// verdicts are the same.
#[test]
fn validated_chains_are_forgotten_when_trust_changes() {
    for entries in [100_000, 0] {
        let store = Arc::new(GatedStore {
            inner: SqliteStore::open_in_memory().unwrap(),
            armed: AtomicBool::new(false),
            gate: Mutex::new(None),
        });
        let config = HubConfig {
            chain_cache_entries: entries,
            ..HubConfig::default()
        };
        let env = Env::over(store, config, real_now());
        let ca = root("Cached Root", KeyKind::EcP256);
        register_verified(&env, "cached", &ca);
        let chain = vec![ca.leaf_der("dev-1")];
        let first = env.hub.validate_device_chain(&chain, env.now()).unwrap();
        assert_eq!(first.ca_name, "cached");
        assert_eq!(first.leaf_common_names, ["dev-1"]);
        // A second look (from the cache when it is on) gives the same verdict.
        assert_eq!(
            env.hub.validate_device_chain(&chain, env.now()).unwrap(),
            first
        );
        env.hub.delete_certificate(&sys(), "cached", None).unwrap();
        let refused = env.hub.validate_device_chain(&chain, env.now());
        assert!(refused.is_err(), "cache {entries}: {refused:?}");
        register_verified(&env, "cached", &ca);
        assert_eq!(
            env.hub.validate_device_chain(&chain, env.now()).unwrap(),
            first,
            "cache {entries}"
        );
        // Outside the chain's validity a cached verdict does not stand.
        let late = first.valid_until + 1;
        assert!(env.hub.validate_device_chain(&chain, late).is_err());
    }
}
