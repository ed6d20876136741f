//! The live trust snapshot must follow the registry: after any sequence of CA changes, concurrent
//! or not, the snapshot the hub admits devices with is the registry's current state.
//!
//! The race is made deterministic with a store wrapper that can hold one `list_cas` call (the read
//! of a trust rebuild) between its read and its return, while another change lands in the store.
//! Rebuilds run one at a time, so the other change's own rebuild waits for the held one and reads
//! after it: the snapshot it stores last holds that change.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use iothub_hub::{ConnectRequest, HubConfig, PutDevice, SessionSignal};
use iothub_pki::chain::validate_chain;
use iothub_pki::gen::KeyKind;
use iothub_store::*;

/// Delegates to SQLite; when armed, the next `list_cas` reads, reports that it has read, and waits
/// to be released before returning what it read. A rebuild's reads (`ca_changes_since`, then
/// `list_ca_versions` after a delete) go through `list_cas` by the trait's defaults.
struct GatedStore {
    inner: SqliteStore,
    armed: AtomicBool,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    /// When non-zero, the `get_device` call that brings it to zero is held like `list_cas`.
    device_reads_to_gate: Mutex<usize>,
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

    /// Arms the gate on the `nth` next `get_device` instead; returns as [`GatedStore::arm`].
    fn arm_device_read(&self, nth: usize) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (read_tx, read_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some((read_tx, release_rx));
        *self.device_reads_to_gate.lock().unwrap() = nth;
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
    fn change_policy(
        &self,
        c: &iothub_store::PolicyChange,
        a: &NewAudit,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        self.inner.change_policy(c, a)
    }
    fn count_devices(&self) -> Result<(u64, u64), StoreError> {
        self.inner.count_devices()
    }
    fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let read = self.inner.get_device(id);
        let held = {
            let mut left = self.device_reads_to_gate.lock().unwrap();
            *left > 0 && {
                *left -= 1;
                *left == 0
            }
        };
        if held {
            let (read_tx, release_rx) = self.gate.lock().unwrap().take().expect("armed gate");
            read_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
        read
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
    fn create_devices(
        &self,
        rows: &[(DeviceRecord, NewAudit)],
        limit: u64,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError> {
        self.inner.create_devices(rows, limit)
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
    fn read_partition(&self, p: u32, from: i64, l: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.read_partition(p, from, l)
    }
    fn partition_ends(&self) -> Result<Vec<(u32, i64)>, StoreError> {
        self.inner.partition_ends()
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
    fn expire_c2d(
        &self,
        id: Option<&str>,
        now: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<u64, StoreError> {
        self.inner.expire_c2d(id, now, feedback)
    }
    fn count_pending_c2d(&self, id: &str, now: i64) -> Result<u64, StoreError> {
        self.inner.count_pending_c2d(id, now)
    }
    fn mark_c2d_delivered(
        &self,
        id: i64,
        at: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<(), StoreError> {
        self.inner.mark_c2d_delivered(id, at, feedback)
    }
    fn take_feedback(&self, take: &FeedbackTake<'_>) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.inner.take_feedback(take)
    }
    fn settle_feedback(
        &self,
        token: &str,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError> {
        self.inner.settle_feedback(token, now, settle)
    }
    fn count_c2d_attempt(&self, id: i64) -> Result<(), StoreError> {
        self.inner.count_c2d_attempt(id)
    }
    fn get_twin(&self, id: &str) -> Result<TwinRecord, StoreError> {
        self.inner.get_twin(id)
    }
    fn write_twin(
        &self,
        t: &TwinRecord,
        expected: Option<u64>,
        patch: Option<&str>,
    ) -> Result<TwinRecord, StoreError> {
        self.inner.write_twin(t, expected, patch)
    }
    fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        self.inner.record_presence(updates)
    }
    fn get_presence(&self, id: &str) -> Result<Option<Presence>, StoreError> {
        self.inner.get_presence(id)
    }
    fn heartbeat(&self, node: &str, now_ms: i64) -> Result<(), StoreError> {
        self.inner.heartbeat(node, now_ms)
    }
    fn put_method_call(&self, call: &MethodCallRecord) -> Result<i64, StoreError> {
        self.inner.put_method_call(call)
    }
    fn get_method_call(&self, id: i64) -> Result<Option<MethodCallRecord>, StoreError> {
        self.inner.get_method_call(id)
    }
    fn answer_method_call(&self, id: i64, status: i32, payload: &[u8]) -> Result<(), StoreError> {
        self.inner.answer_method_call(id, status, payload)
    }
    fn get_method_answer(&self, id: i64) -> Result<Option<(i32, Vec<u8>)>, StoreError> {
        self.inner.get_method_answer(id)
    }
    fn prune_method_calls(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_method_calls(before_ms)
    }
    fn list_consumer_groups(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.inner.list_consumer_groups()
    }
    fn insert_consumer_group(
        &self,
        name: &str,
        created: i64,
        limit: u64,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.inner
            .insert_consumer_group(name, created, limit, audit)
    }
    fn delete_consumer_group(&self, name: &str, audit: &NewAudit) -> Result<(), StoreError> {
        self.inner.delete_consumer_group(name, audit)
    }
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_setting(name)
    }
    fn insert_settings_if_absent(&self, settings: &[(&str, &[u8])]) -> Result<bool, StoreError> {
        self.inner.insert_settings_if_absent(settings)
    }
    fn changes_since(&self, since: u64, limit: u32) -> Result<ChangeFeed, StoreError> {
        self.inner.changes_since(since, limit)
    }
    fn last_change(&self) -> Result<u64, StoreError> {
        self.inner.last_change()
    }
    fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_changes(before)
    }
    fn list_persistent_sessions(&self) -> Result<Vec<(String, Subscriptions)>, StoreError> {
        self.inner.list_persistent_sessions()
    }
    fn write_persistent_session(
        &self,
        id: &str,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), StoreError> {
        self.inner.write_persistent_session(id, subscriptions)
    }
    fn revoke(
        &self,
        record: &iothub_store::RevocationRecord,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.inner.revoke(record, audit)
    }
    fn list_revocations(
        &self,
        ca_name: Option<&str>,
    ) -> Result<Vec<iothub_store::RevocationRecord>, StoreError> {
        self.inner.list_revocations(ca_name)
    }
    fn replace_crl(
        &self,
        crl: &iothub_store::CrlRecord,
        entries: &[iothub_store::RevocationRecord],
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.inner.replace_crl(crl, entries, audit)
    }
    fn get_crl(&self, ca_name: &str) -> Result<Option<iothub_store::CrlRecord>, StoreError> {
        self.inner.get_crl(ca_name)
    }
    fn set_auto_registration(
        &self,
        ca_name: &str,
        device_limit: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.inner
            .set_auto_registration(ca_name, device_limit, audit)
    }
    fn write_enrollment(
        &self,
        record: &iothub_store::EnrollmentRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<iothub_store::EnrollmentRecord, StoreError> {
        self.inner.write_enrollment(record, expect, audit)
    }
    fn get_enrollment(
        &self,
        kind: iothub_store::EnrollmentKind,
        name: &str,
    ) -> Result<Option<iothub_store::EnrollmentRecord>, StoreError> {
        self.inner.get_enrollment(kind, name)
    }
    fn list_enrollments(
        &self,
        kind: iothub_store::EnrollmentKind,
    ) -> Result<Vec<iothub_store::EnrollmentRecord>, StoreError> {
        self.inner.list_enrollments(kind)
    }
    fn delete_enrollment(
        &self,
        kind: iothub_store::EnrollmentKind,
        name: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.inner.delete_enrollment(kind, name, etag, audit)
    }
    fn provision_device(
        &self,
        registration: &iothub_store::RegistrationRecord,
        device: &iothub_store::DeviceRecord,
        twin: Option<&TwinRecord>,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<(iothub_store::RegistrationRecord, bool), StoreError> {
        self.inner
            .provision_device(registration, device, twin, device_limit, audit)
    }
    fn get_registration(
        &self,
        id: &str,
    ) -> Result<Option<iothub_store::RegistrationRecord>, StoreError> {
        self.inner.get_registration(id)
    }
    fn list_registrations(&self) -> Result<Vec<iothub_store::RegistrationRecord>, StoreError> {
        self.inner.list_registrations()
    }
    fn list_auto_registrations(&self) -> Result<Vec<iothub_store::AutoRegistration>, StoreError> {
        self.inner.list_auto_registrations()
    }
    fn auto_register_device(
        &self,
        ca_name: &str,
        record: &iothub_store::DeviceRecord,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<iothub_store::DeviceRecord, StoreError> {
        self.inner
            .auto_register_device(ca_name, record, device_limit, audit)
    }
    fn list_expiring_devices(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.inner.list_expiring_devices(before, limit)
    }
}

fn gated_env() -> (Env, Arc<GatedStore>) {
    let store = Arc::new(GatedStore {
        inner: SqliteStore::open_in_memory().unwrap(),
        armed: AtomicBool::new(false),
        gate: Mutex::new(None),
        device_reads_to_gate: Mutex::new(0),
    });
    let env = Env::over(store.clone(), HubConfig::default(), real_now());
    (env, store)
}

/// Waits (at most 10 s) for `done`.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
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

/// A rebuild reads only the CAs written since the last one, plus the count that reveals deletes:
/// changes that reach the store between two rebuilds (a delete and an add that leave the count
/// as it was, a replacement) are all in the next snapshot.
#[test]
fn a_rebuild_picks_up_every_change_since_the_last_one() {
    let (env, store) = gated_env();
    let (a, b, c) = (
        root("Since Root A", KeyKind::EcP256),
        root("Since Root B", KeyKind::EcP256),
        root("Since Root C", KeyKind::EcP256),
    );
    register_verified(&env, "a", &a);
    register_verified(&env, "b", &b);
    let admits = |ca: &TestCa| {
        validate_chain(&[ca.leaf_der("dev")], &env.hub.trust(), env.now()).map(|ok| ok.ca_name)
    };
    assert_eq!(admits(&a).unwrap(), "a");
    let note = NewAudit {
        time: env.now(),
        actor: "test".into(),
        action: "direct".into(),
        target: "certificate".into(),
        success: true,
        code: None,
        detail: String::new(),
    };
    let record = |name: &str, ca: &TestCa, verified: bool| CaRecord {
        name: name.into(),
        der: der_of(&ca.pem),
        thumbprint: format!("THUMB-{name}-{}", ca.cn),
        is_verified: verified,
        created: env.now(),
        updated: env.now(),
        etag: 0,
        code: CodeRecord::None,
    };

    // Behind the hub's back: "a" deleted, "c" added (two CAs, as before).
    store.inner.delete_ca("a", None, &note).unwrap();
    let absent = Expect::Absent { limit: 100 };
    store
        .inner
        .write_ca(&record("c", &c, true), absent, &note)
        .unwrap();
    env.hub.rebuild_trust().unwrap();
    assert_eq!(env.hub.trust().len(), 2);
    assert!(matches!(admits(&a), Err(e) if e.to_string().contains("no registered CA")));
    assert_eq!(admits(&c).unwrap(), "c");

    // "b" replaced by an Unverified version: no delete, only the change is read.
    let etag = store.inner.get_ca("b").unwrap().unwrap().etag;
    let unverified = record("b", &b, false);
    store
        .inner
        .write_ca(&unverified, Expect::Etag(etag), &note)
        .unwrap();
    env.hub.rebuild_trust().unwrap();
    assert!(matches!(admits(&b), Err(e) if e.to_string().contains("Unverified")));
    assert_eq!(admits(&c).unwrap(), "c");
    assert_eq!(env.hub.trust().len(), 2);
}

/// A trust rebuild that read the registry before a concurrent delete landed must not leave its
/// (older) snapshot in place: the deleted CA would stay trusted until the next CA change.
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

    // Meanwhile the operator deletes the victim. Once the delete is in the store, thread A
    // resumes with what it read before it.
    let hub = env.hub.clone();
    let delete = std::thread::spawn(move || hub.delete_certificate(&sys(), "victim", None));
    wait_until(|| store.inner.get_ca("victim").unwrap().is_none());
    release.send(()).unwrap();
    assert_eq!(upload.join().unwrap().unwrap(), "other");
    delete.join().unwrap().unwrap();

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
    let hub = env.hub.clone();
    let verify = std::thread::spawn(move || {
        hub.verify_certificate(&sys(), "ca", None, &vcert)
            .map(|v| v.is_verified)
    });
    wait_until(|| store.inner.get_ca("ca").unwrap().unwrap().is_verified);
    release.send(()).unwrap();
    upload.join().unwrap().unwrap();
    assert!(verify.join().unwrap().unwrap());

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
            device_reads_to_gate: Mutex::new(0),
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

/// Registers a certificateAuthority device; returns its CONNECT presenting `chain`.
fn ca_device(env: &Env, id: &str, chain: Vec<Vec<u8>>) -> ConnectRequest {
    let device = PutDevice {
        status: Some("enabled".into()),
        auth_type: Some("certificateAuthority".into()),
        ..Default::default()
    };
    env.hub.put_device(&sys(), id, &device, None).unwrap();
    ConnectRequest {
        client_id: id.into(),
        username: Some(format!("localhost/{id}/?api-version=2021-04-12")),
        password: None,
        chain,
        remote: "127.0.0.1:50000".into(),
    }
}

/// Opens a session the way the gateway does.
fn connected(env: &Env, req: &ConnectRequest) -> iothub_hub::Admission {
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(req).unwrap();
    let admission = env.hub.open_session(req, method, true, ticket);
    assert!(!admission.recheck);
    admission
}

fn closed(admission: &mut iothub_hub::Admission) -> Option<String> {
    match admission.signals.try_recv() {
        Ok(SessionSignal::Close(reason)) => Some(reason),
        _ => None,
    }
}

/// A CA change re-checks only the sessions whose chain names that CA's subject, and the cache of
/// validated chains keeps every other verdict: with thousands of CAs and sessions, one CA change
/// must not cost them all.
#[test]
fn a_ca_change_rechecks_only_the_sessions_that_name_it() {
    let (env, _) = gated_env();
    let root_a = root("Targeted Root A", KeyKind::EcP256);
    let inter_a = intermediate("Targeted Intermediate A", KeyKind::EcP256, &root_a);
    let root_b = root("Targeted Root B", KeyKind::EcP256);
    register_verified(&env, "a", &root_a);
    register_verified(&env, "b", &root_b);
    let req_a = ca_device(
        &env,
        "dev-a",
        vec![inter_a.leaf_der("dev-a"), der_of(&inter_a.pem)],
    );
    let req_b = ca_device(&env, "dev-b", vec![root_b.leaf_der("dev-b")]);
    let mut session_a = connected(&env, &req_a);
    let mut session_b = connected(&env, &req_b);
    assert_eq!(env.hub.cached_chains(), 2);
    assert_eq!(env.hub.known_intermediates(), 1, "A's intermediate");

    // An unrelated CA: nothing is closed and both verdicts stay cached.
    env.put("c", &root("Targeted Root C", KeyKind::EcP256).pem);
    assert_eq!(
        (closed(&mut session_a), closed(&mut session_b)),
        (None, None)
    );
    assert_eq!(env.hub.cached_chains(), 2);

    // Deleting B closes B's device only, with the reason; A's verdict stays cached.
    env.hub.delete_certificate(&sys(), "b", None).unwrap();
    assert_eq!(closed(&mut session_a), None);
    let reason = closed(&mut session_b).expect("dev-b's session is closed");
    assert!(
        reason.starts_with("device 'dev-b' is no longer admitted: "),
        "{reason}"
    );
    assert_eq!(env.hub.cached_chains(), 1);
    assert_eq!(env.hub.known_intermediates(), 1);

    // Deleting A's root reaches the session that names it two links up, and forgets its
    // intermediate: a second device under it is refused, with the reason.
    env.hub.delete_certificate(&sys(), "a", None).unwrap();
    assert!(closed(&mut session_a).is_some());
    assert_eq!(env.hub.cached_chains(), 0);
    assert_eq!(env.hub.known_intermediates(), 0);
    let second = ca_device(
        &env,
        "dev-a2",
        vec![inter_a.leaf_der("dev-a2"), der_of(&inter_a.pem)],
    );
    let refused = env
        .hub
        .authenticate_device(&second)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("Targeted"), "{refused}");
}

/// A fleet under one intermediate: after its first device, the others are admitted through the
/// remembered intermediate (one signature each), with the same verdict a full validation gives,
/// and a device whose leaf the intermediate did not sign is still refused with its reason.
#[test]
fn a_fleets_intermediate_is_verified_once_per_snapshot() {
    let (env, _) = gated_env();
    let root_f = root("Fleet Root", KeyKind::EcP256);
    let inter_f = intermediate("Fleet Intermediate", KeyKind::EcP256, &root_f);
    register_verified(&env, "fleet", &root_f);
    assert_eq!(env.hub.known_intermediates(), 0);
    for i in 0..5 {
        let id = format!("fleet-{i}");
        let req = ca_device(&env, &id, vec![inter_f.leaf_der(&id), der_of(&inter_f.pem)]);
        env.hub.authenticate_device(&req).unwrap();
        assert_eq!(env.hub.known_intermediates(), 1);
    }
    assert_eq!(env.hub.cached_chains(), 5);
    // Same subject and issuer names, other keys: the remembered intermediate did not sign it.
    let other_root = root("Fleet Root", KeyKind::EcP256);
    let other = intermediate("Fleet Intermediate", KeyKind::EcP256, &other_root);
    let forged = ca_device(
        &env,
        "fleet-x",
        vec![other.leaf_der("fleet-x"), der_of(&inter_f.pem)],
    );
    let refused = env
        .hub
        .authenticate_device(&forged)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("was not signed with its key"), "{refused}");
}

/// A CA deleted after a CONNECT was judged and before its session exists: the delete's re-check
/// cannot see that session, so registering it asks for a re-check, which closes it.
#[test]
fn a_ca_deleted_while_a_connect_is_judged_is_closed_once_registered() {
    let (env, _) = gated_env();
    let ca = root("Racing Root", KeyKind::EcP256);
    register_verified(&env, "racing", &ca);
    let req = ca_device(&env, "dev-r", vec![ca.leaf_der("dev-r")]);

    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(&req).unwrap();
    env.hub.delete_certificate(&sys(), "racing", None).unwrap();
    let mut racing = env.hub.open_session(&req, method, true, ticket);
    assert!(racing.recheck, "the session must ask for a re-check");
    assert_eq!(closed(&mut racing), None, "nothing closed it yet");
    env.hub.revalidate_device_sessions("dev-r");
    let reason = closed(&mut racing).expect("the re-check closes it");
    assert!(
        reason.starts_with("device 'dev-r' is no longer admitted: "),
        "{reason}"
    );
}

/// A device change's re-check judges the session it read; if that session is replaced while the
/// re-check reads the registry, the verdict must not close the replacement, which was judged on
/// its own (here: the old session authenticated by SAS, the new one by a certificate, after the
/// device's authentication changed from one to the other).
#[test]
fn a_recheck_closes_only_the_session_it_judged() {
    let (env, store) = gated_env();
    let ca = root("Replacement Root", KeyKind::EcP256);
    register_verified(&env, "replacement", &ca);
    let key = iothub_pki::sas::generate_key().unwrap();
    let sas = PutDevice {
        status: Some("enabled".into()),
        auth_type: Some("sas".into()),
        primary_key: Some(key.clone()),
        ..Default::default()
    };
    env.hub.put_device(&sys(), "dev-swap", &sas, None).unwrap();
    let token =
        iothub_pki::sas::build_token("localhost/devices/dev-swap", &key, None, env.now() + 3600)
            .unwrap();
    let by_sas = ConnectRequest {
        client_id: "dev-swap".into(),
        username: Some("localhost/dev-swap/?api-version=2021-04-12".into()),
        password: Some(token.into_bytes()),
        chain: Vec::new(),
        remote: "127.0.0.1:50000".into(),
    };
    let mut old = connected(&env, &by_sas);

    // The device moves to certificate authentication. The put reads the device (1st read), writes,
    // then re-checks the live session: its read of the registry (2nd) is held.
    let (has_read, release) = store.arm_device_read(2);
    let to_ca = PutDevice {
        status: Some("enabled".into()),
        auth_type: Some("certificateAuthority".into()),
        ..Default::default()
    };
    let hub = env.hub.clone();
    let put = std::thread::spawn(move || {
        hub.put_device(&sys(), "dev-swap", &to_ca, Some(&iothub_hub::IfMatch::Any))
            .map(|_| ())
    });
    has_read.recv().unwrap();
    // Meanwhile the device reconnects with its certificate: admitted, it replaces the old session.
    let by_cert = ConnectRequest {
        chain: vec![ca.leaf_der("dev-swap")],
        password: None,
        ..by_sas.clone()
    };
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(&by_cert).unwrap();
    let mut new = env.hub.open_session(&by_cert, method, true, ticket);
    release.send(()).unwrap();
    put.join().unwrap().unwrap();

    let replaced = closed(&mut old).expect("the old session is replaced");
    assert!(replaced.contains("replaced this one"), "{replaced}");
    assert_eq!(
        closed(&mut new),
        None,
        "the re-check of the old session closed its replacement"
    );
}

/// Security review, issue 16, finding 7: a leaf from a Verified CA whose CN is not a text string
/// (bytes DE AD used to read as device "DEAD") or whose outer signatureAlgorithm differs from
/// the signed one is refused at CONNECT, with a reason that says so.
#[test]
fn a_leaf_with_a_non_text_cn_or_mismatched_algorithm_fields_is_refused_at_connect() {
    let (env, _) = gated_env();
    let ca = root("Finding Root", KeyKind::EcP256);
    register_verified(&env, "finding", &ca);
    let template = ca.leaf_der("DEAD");

    let octet = resigned(
        &template,
        &ca.key_pem,
        Some(cn_name(0x04, &[0xde, 0xad])),
        ALG_ECDSA_SHA256,
    );
    let req = ca_device(&env, "DEAD", vec![octet]);
    let reason = env.hub.authenticate_device(&req).unwrap_err().to_string();
    assert!(
        reason.contains("the leaf certificate's CN is an OCTET STRING, not a text string"),
        "{reason}"
    );

    let mismatch = resigned(&template, &ca.key_pem, None, ALG_ECDSA_SHA384);
    let req = ca_device(&env, "DEAD-2", vec![mismatch]);
    let reason = env.hub.authenticate_device(&req).unwrap_err().to_string();
    assert!(
        reason.contains("signature algorithm") && reason.contains("RFC 5280"),
        "{reason}"
    );

    // The control: the same leaf re-signed unchanged connects as DEAD.
    let same = resigned(&template, &ca.key_pem, None, ALG_ECDSA_SHA256);
    let req = ca_device(&env, "DEAD-3", vec![same.clone()]);
    assert!(
        env.hub.authenticate_device(&req).is_err(),
        "CN DEAD is not DEAD-3"
    );
    let req = ConnectRequest {
        client_id: "DEAD".into(),
        username: Some("localhost/DEAD/?api-version=2021-04-12".into()),
        password: None,
        chain: vec![same],
        remote: "127.0.0.1:50000".into(),
    };
    env.hub
        .authenticate_device(&req)
        .expect("a text CN equal to the id");
}
