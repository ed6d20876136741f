//! Two hubs on one store act as one hub: what one node writes reaches the other through the
//! store's change feed (`Hub::follow_changes`, `Hub::cluster_tick`), never through memory they
//! share: trust, devices, policies, C2D, desired patches, which node holds a device (one session
//! per device), and direct methods handed between nodes. Each node here has its own SQLite
//! connection to one database file, as separate processes would.

mod common;

use std::sync::Arc;

use common::*;
use iothub_hub::{AuthMethod, C2dSend, ConnectRequest, HubConfig, PutDevice, SessionSignal};
use iothub_pki::gen::KeyKind;
use iothub_pki::sas::{build_token, generate_key};
use iothub_store::{SqliteStore, Store};
use serde_json::json;

const HOUR: i64 = 3600;

/// Two nodes of a cluster, "a" and "b", over one database file in `dir`.
fn two_nodes(dir: &std::path::Path) -> (Env, Env) {
    two_nodes_with(dir, HubConfig::default())
}

fn two_nodes_with(dir: &std::path::Path, config: HubConfig) -> (Env, Env) {
    let path = dir.join("iothub.db");
    let node = |name: &str| {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap().with_node(name));
        let config = HubConfig {
            node_id: name.into(),
            cluster: true,
            ..config.clone()
        };
        Env::over(store, config, real_now())
    };
    (node("a"), node("b"))
}

fn sas_device(env: &Env, id: &str) -> ConnectRequest {
    let key = generate_key().unwrap();
    let put = PutDevice {
        auth_type: Some("sas".into()),
        primary_key: Some(key.clone()),
        secondary_key: Some(generate_key().unwrap()),
        ..Default::default()
    };
    env.hub.put_device(&sys(), id, &put, None).unwrap();
    let token = build_token(
        &format!("localhost/devices/{id}"),
        &key,
        None,
        env.now() + HOUR,
    )
    .unwrap();
    ConnectRequest {
        client_id: id.into(),
        username: Some(format!("localhost/{id}/?api-version=2021-04-12")),
        password: Some(token.into_bytes()),
        chain: Vec::new(),
        remote: "127.0.0.1:50000".into(),
    }
}

/// Opens `req`'s session on `env`'s node.
fn session(env: &Env, req: &ConnectRequest) -> iothub_hub::Admission {
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(req).expect("admitted");
    env.hub.open_session(req, method, true, ticket)
}

fn next_signal(admission: &mut iothub_hub::Admission) -> SessionSignal {
    admission
        .signals
        .try_recv()
        .expect("the session was signalled")
}

#[test]
fn a_ca_verified_on_one_node_admits_there_and_its_deletion_closes_sessions_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let ca = root("Node Root", KeyKind::EcP256);
    a.put("root", &ca.pem);
    let code = a.code("root");
    a.verify("root", &ca.vcert_at(&code, a.time())).unwrap();
    assert!(b.hub.trust().is_empty(), "nothing crossed yet");
    assert!(b.hub.follow_changes().unwrap() >= 2);
    assert_eq!(b.hub.trust().len(), 1);

    let put = PutDevice {
        auth_type: Some("certificateAuthority".into()),
        ..Default::default()
    };
    a.hub.put_device(&sys(), "cam-1", &put, None).unwrap();
    b.hub.follow_changes().unwrap();
    let req = ConnectRequest {
        client_id: "cam-1".into(),
        username: Some("localhost/cam-1/?api-version=2021-04-12".into()),
        password: None,
        chain: vec![ca.leaf_der("cam-1")],
        remote: "127.0.0.1:50001".into(),
    };
    let mut on_b = session(&b, &req);
    assert!(matches!(on_b.method, AuthMethod::Ca { .. }));

    a.hub.delete_certificate(&sys(), "root", None).unwrap();
    assert!(on_b.signals.try_recv().is_err(), "not before b follows");
    b.hub.follow_changes().unwrap();
    match next_signal(&mut on_b) {
        SessionSignal::Close(reason) => assert!(reason.contains("cam-1"), "{reason}"),
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(b.hub.trust().is_empty());
}

#[test]
fn a_device_disabled_on_one_node_is_closed_and_refused_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "pump");
    b.hub.follow_changes().unwrap();
    // Judged on b, and remembered in b's device cache.
    let mut on_b = session(&b, &req);
    a.hub
        .set_device_status(&sys(), "pump", false, Some("stolen".into()))
        .unwrap();
    b.hub.follow_changes().unwrap();
    assert_eq!(
        next_signal(&mut on_b),
        SessionSignal::Close("device 'pump' was disabled".into())
    );
    // b's cache forgot the record: the next CONNECT is refused without a stale verdict.
    assert!(b.hub.authenticate_device(&req).is_err());
}

#[test]
fn c2d_and_desired_patches_sent_through_one_node_reach_the_session_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "valve");
    b.hub.follow_changes().unwrap();
    let mut on_b = session(&b, &req);

    let msg = C2dSend {
        body: b"open".to_vec(),
        properties: Vec::new(),
        message_id: Some("m1".into()),
        correlation_id: None,
        content_type: None,
        content_encoding: None,
        ttl_secs: None,
        ack: Default::default(),
    };
    a.hub.send_c2d(&sys(), "valve", &msg).unwrap();
    a.hub
        .update_twin(
            &sys(),
            "valve",
            &json!({"properties": {"desired": {"rate": 5}}}),
            None,
            false,
        )
        .unwrap();
    assert_eq!(b.hub.follow_changes().unwrap(), 2);
    let signals = [next_signal(&mut on_b), next_signal(&mut on_b)];
    assert!(
        signals.contains(&SessionSignal::C2dAvailable),
        "{signals:?}"
    );
    let patch = signals
        .iter()
        .find_map(|s| match s {
            SessionSignal::DesiredPatch(p) => Some(p),
            _ => None,
        })
        .expect("the desired patch");
    let v: serde_json::Value = serde_json::from_str(patch).unwrap();
    assert_eq!(v, json!({"rate": 5, "$version": 2}));
    // The queued message itself is read from the shared store.
    let pending = b.hub.pending_c2d("valve").unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, b"open");
}

#[test]
fn a_policy_made_on_one_node_signs_in_on_the_other_and_a_node_never_replays_its_own_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let owner_key = a.hub.owner_policy().unwrap().primary_key;
    let owner = a
        .hub
        .authenticate(Some(
            &build_token("localhost", &owner_key, Some("iothubowner"), a.now() + HOUR).unwrap(),
        ))
        .unwrap();
    a.hub.put_policy(&owner, "reader", "RegistryRead").unwrap();
    let key = a.hub.policy_keys(&owner, "reader").unwrap().primary_key;
    let token = build_token("localhost", &key, Some("reader"), b.now() + HOUR).unwrap();
    assert!(
        b.hub.authenticate(Some(&token)).is_err(),
        "not before b follows"
    );
    b.hub.follow_changes().unwrap();
    assert_eq!(
        b.hub.authenticate(Some(&token)).unwrap().rights,
        ["RegistryRead"]
    );
    // a made every change itself: there is nothing for it to apply.
    assert_eq!(a.hub.follow_changes().unwrap(), 0);
    assert_eq!(b.hub.follow_changes().unwrap(), 0, "applied once");
}

#[test]
fn a_node_behind_a_pruned_feed_refreshes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "late");
    b.hub.follow_changes().unwrap();
    let mut on_b = session(&b, &req);
    let ca = root("Pruned Root", KeyKind::EcP256);
    a.put("root", &ca.pem);
    a.hub.delete_device(&sys(), "late", None).unwrap();
    // Within the retention (an hour by default) nothing is pruned; past it, every change so far
    // goes before b read them.
    assert_eq!(a.hub.prune_changes().unwrap(), 0);
    a.clock
        .advance(HubConfig::default().change_retention_secs + 10);
    assert!(a.hub.prune_changes().unwrap() >= 2);
    let store = SqliteStore::open(&tmp.path().join("iothub.db")).unwrap();
    assert!(!store.changes_since(0, 10).unwrap().complete);
    b.hub.follow_changes().unwrap();
    assert_eq!(b.hub.trust().len(), 1, "trust read again");
    assert_eq!(
        next_signal(&mut on_b),
        SessionSignal::Close("device 'late' was deleted".into())
    );
    // And b follows on from there.
    a.put("second", &root("Second Root", KeyKind::EcP256).pem);
    assert_eq!(b.hub.follow_changes().unwrap(), 1);
    assert_eq!(b.hub.trust().len(), 2);
}

#[test]
fn a_connect_on_one_node_closes_the_older_session_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "roamer");
    b.hub.cluster_tick().unwrap();
    let mut on_b = session(&b, &req);
    b.hub.cluster_tick().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut on_a = session(&a, &req);
    a.hub.cluster_tick().unwrap();
    assert!(on_b.signals.try_recv().is_err(), "not before b reads it");
    b.hub.cluster_tick().unwrap();
    match next_signal(&mut on_b) {
        SessionSignal::Close(reason) => assert_eq!(
            reason,
            "a new connection of device 'roamer' on node 'a' replaced this one"
        ),
        other => panic!("expected a close, got {other:?}"),
    }
    // b's own connect, older, does not close a's newer session.
    a.hub.cluster_tick().unwrap();
    assert!(on_a.signals.try_recv().is_err());
}

/// Device `id`'s session on `env`'s node, subscribed to direct methods, written as presence.
fn method_ready(env: &Env, id: &str, req: &ConnectRequest) -> iothub_hub::Admission {
    let on = session(env, req);
    let subs = iothub_hub::Subscriptions {
        methods: true,
        ..Default::default()
    };
    env.hub
        .remember_subscriptions(id, on.session_id, subs, false);
    env.hub.cluster_tick().unwrap();
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_method_taken_by_one_node_is_answered_by_the_device_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "pump");
    b.hub.cluster_tick().unwrap();
    let mut on_b = method_ready(&b, "pump", &req);
    let timeout = std::time::Duration::from_secs(10);
    let (_, answer) = a
        .hub
        .invoke_method(&sys(), "pump", "reboot", &json!({"delay": 1}), timeout)
        .unwrap();
    b.hub.cluster_tick().unwrap();
    let SessionSignal::MethodRequest(call) = next_signal(&mut on_b) else {
        panic!("expected the method request");
    };
    let iothub_hub::sessions::MethodRequest { rid, name, payload } = call;
    assert_eq!(name, "reboot");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
        json!({"delay": 1})
    );
    b.hub.method_response("pump", rid, 200, br#"{"done":true}"#);
    let (status, value) = tokio::time::timeout(timeout, answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, value), (200, json!({"done": true})));

    // The device left b after the hand-over: b answers that it is not online, and a's caller
    // sees the sender dropped (the API's DeviceNotOnline).
    let (_, answer) = a
        .hub
        .invoke_method(&sys(), "pump", "reboot", &json!(null), timeout)
        .unwrap();
    b.hub.close_session("pump", on_b.session_id, "gone");
    b.hub.cluster_tick().unwrap();
    assert!(tokio::time::timeout(timeout, answer)
        .await
        .unwrap()
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_dead_node_is_offline_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = HubConfig {
        node_timeout_ms: 300,
        ..HubConfig::default()
    };
    let (a, b) = two_nodes_with(tmp.path(), config);
    let req = sas_device(&a, "far");
    b.hub.cluster_tick().unwrap();
    let _on_b = method_ready(&b, "far", &req);
    // b stops ticking (dead); past the timeout a does not hand the call over.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let refused = a.hub.invoke_method(
        &sys(),
        "far",
        "reboot",
        &json!(null),
        std::time::Duration::from_secs(5),
    );
    assert!(
        matches!(refused, Err(iothub_hub::HubError::DeviceNotOnline(_))),
        "{refused:?}"
    );
}

/// Opens `req`'s session on `env`'s node with CleanSession `clean`.
fn session_with(env: &Env, req: &ConnectRequest, clean: bool) -> iothub_hub::Admission {
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(req).expect("admitted");
    env.hub.open_session(req, method, clean, ticket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_follows_its_device_to_the_other_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let req = sas_device(&a, "roamer");
    b.hub.follow_changes().unwrap();
    let on_a = session_with(&a, &req, false);
    let subs = iothub_hub::Subscriptions {
        c2d: true,
        desired: true,
        methods: false,
    };
    a.hub
        .remember_subscriptions("roamer", on_a.session_id, subs, true);
    // The device moves to b with CleanSession=0: it resumes what it subscribed to on a.
    b.hub.follow_changes().unwrap();
    let on_b = session_with(&b, &req, false);
    assert_eq!(on_b.resumed, Some(subs));
    // A clean session on b forgets it (written off the connect path), on a as well.
    let _clean = session_with(&b, &req, true);
    let waited = std::time::Instant::now();
    while a.hub.follow_changes().unwrap() == 0 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let back_on_a = session_with(&a, &req, false);
    assert_eq!(back_on_a.resumed, None);
}
