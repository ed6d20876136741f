//! CONNECT judged from the in-memory device cache: the gateway asks
//! `authenticate_device_from_memory` first and reads the store only when that says "not in
//! memory". Every device change made through the service layer must be seen by the very next
//! CONNECT, and a device whose record is in memory must be judged without the store.

mod common;

use std::sync::Arc;

use common::*;
use iothub_hub::{AuthMethod, ConnectRequest, HubConfig, IfMatch, PutDevice};
use iothub_pki::sas::{build_token, generate_key};
use iothub_store::{SqliteStore, Store};

const HOUR: i64 = 3600;

fn sas_device(key: &str) -> PutDevice {
    PutDevice {
        status: Some("enabled".into()),
        auth_type: Some("sas".into()),
        primary_key: Some(key.into()),
        secondary_key: Some(generate_key().unwrap()),
        ..Default::default()
    }
}

fn connect(env: &Env, id: &str, key: &str) -> ConnectRequest {
    let token = build_token(
        &format!("localhost/devices/{id}"),
        key,
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

/// A hub over an in-memory SQLite store, with the store kept so a test can go behind the hub.
fn env_with_store(config: HubConfig) -> (Env, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let env = Env::over(store.clone() as Arc<dyn Store>, config, real_now());
    (env, store)
}

/// Registers SAS device `id`; returns a CONNECT signed with its primary key.
fn registered(env: &Env, id: &str) -> ConnectRequest {
    let key = generate_key().unwrap();
    env.hub
        .put_device(&sys(), id, &sas_device(&key), None)
        .unwrap();
    connect(env, id, &key)
}

#[test]
fn a_device_is_judged_from_memory_once_read_and_never_from_a_stale_record() {
    let (env, _) = env_with_store(HubConfig::default());
    let req = registered(&env, "d1");

    // Not read yet: the gateway must go to the store (on a blocking thread).
    assert!(env.hub.authenticate_device_from_memory(&req).is_none());
    assert_eq!(env.hub.authenticate_device(&req), Ok(AuthMethod::Sas));
    assert_eq!(
        env.hub.authenticate_device_from_memory(&req),
        Some(Ok(AuthMethod::Sas))
    );

    // Disabled: the next CONNECT (from memory or not) is refused for that reason.
    env.hub
        .set_device_status(&sys(), "d1", false, Some("stolen".into()))
        .unwrap();
    assert!(env.hub.authenticate_device_from_memory(&req).is_none());
    let refused = env.hub.authenticate_device(&req).unwrap_err();
    assert_eq!(refused.to_string(), "device 'd1' is disabled");
    assert_eq!(
        env.hub.authenticate_device_from_memory(&req),
        Some(Err(refused))
    );

    // Enabled again with new keys: the old token no longer admits it, a new one does.
    let new_key = generate_key().unwrap();
    let current = env.hub.get_device(&sys(), "d1").unwrap();
    env.hub
        .put_device(
            &sys(),
            "d1",
            &sas_device(&new_key),
            Some(&IfMatch::Etag(current.etag)),
        )
        .unwrap();
    let old = env.hub.authenticate_device(&req).unwrap_err().to_string();
    assert!(old.contains("signature"), "{old}");
    let fresh = connect(&env, "d1", &new_key);
    assert_eq!(
        env.hub.authenticate_device_from_memory(&fresh),
        Some(Ok(AuthMethod::Sas))
    );

    // Switched to certificate authentication: a SAS token is no longer a way in.
    let current = env.hub.get_device(&sys(), "d1").unwrap();
    let ca = PutDevice {
        auth_type: Some("certificateAuthority".into()),
        ..Default::default()
    };
    env.hub
        .put_device(&sys(), "d1", &ca, Some(&IfMatch::Etag(current.etag)))
        .unwrap();
    let switched = env.hub.authenticate_device(&fresh).unwrap_err().to_string();
    assert!(
        switched.contains("certificateAuthority but presented no client certificate"),
        "{switched}"
    );

    // Deleted: not registered, at once.
    env.hub.delete_device(&sys(), "d1", None).unwrap();
    assert!(env.hub.authenticate_device_from_memory(&fresh).is_none());
    assert_eq!(
        env.hub.authenticate_device(&fresh).unwrap_err().to_string(),
        "device 'd1' is not registered"
    );
    // An unknown device is not remembered: each CONNECT asks the store.
    assert!(env.hub.authenticate_device_from_memory(&fresh).is_none());
}

#[test]
fn a_remembered_device_needs_no_store_read() {
    let (env, store) = env_with_store(HubConfig::default());
    let req = registered(&env, "d2");
    assert_eq!(env.hub.authenticate_device(&req), Ok(AuthMethod::Sas));

    // Behind the hub's back (never done in production: every device write goes through the
    // service layer), the row disappears. The verdict from memory shows the store was not read.
    let etag = store.get_device("d2").unwrap().unwrap().etag;
    let audit = iothub_store::NewAudit {
        time: env.now(),
        actor: "test".into(),
        action: "device.delete".into(),
        target: "device/d2".into(),
        success: true,
        code: None,
        detail: String::new(),
    };
    store.delete_device("d2", Some(etag), &audit).unwrap();
    assert_eq!(
        env.hub.authenticate_device_from_memory(&req),
        Some(Ok(AuthMethod::Sas))
    );
}

#[test]
fn names_are_judged_before_any_record_and_capacity_zero_always_reads_the_store() {
    let (env, _) = env_with_store(HubConfig {
        device_cache_entries: 0,
        ..Default::default()
    });
    let req = registered(&env, "d3");
    assert_eq!(env.hub.authenticate_device(&req), Ok(AuthMethod::Sas));
    assert!(env.hub.authenticate_device_from_memory(&req).is_none());

    // A wrong username is refused without any record, from memory.
    let mut wrong = req.clone();
    wrong.username = Some("localhost/other/?api-version=2021-04-12".into());
    let verdict = env.hub.authenticate_device_from_memory(&wrong);
    assert!(
        matches!(&verdict, Some(Err(r)) if r.to_string().contains("names device 'other' but the client id is 'd3'")),
        "{verdict:?}"
    );
    // So is a username naming another hub; a port or another case of a hub name is fine.
    wrong.username = Some("otherhub.example.com/d3/?api-version=2021-04-12".into());
    let verdict = env.hub.authenticate_device_from_memory(&wrong);
    assert!(
        matches!(&verdict, Some(Err(r)) if r.to_string().starts_with("the username names host 'otherhub.example.com', which is not this hub (expected one of: localhost)")),
        "{verdict:?}"
    );
    wrong.username = Some("LOCALHOST:8883/d3/?api-version=2021-04-12".into());
    assert_eq!(env.hub.authenticate_device(&wrong), Ok(AuthMethod::Sas));
}

#[test]
fn a_device_disabled_while_its_connect_is_judged_is_closed_once_registered() {
    let (env, _) = env_with_store(HubConfig::default());
    let req = registered(&env, "d4");

    // Nothing changes in between: no re-check is asked for.
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(&req).unwrap();
    let quiet = env.hub.open_session(&req, method, true, ticket);
    assert!(!quiet.recheck);

    // The device is disabled after its CONNECT was judged and before its session exists: the
    // disable's own re-check finds only the old session (closed), not the new one.
    let ticket = env.hub.connect_ticket();
    let method = env.hub.authenticate_device(&req).unwrap();
    env.hub
        .set_device_status(&sys(), "d4", false, Some("stolen".into()))
        .unwrap();
    let mut racing = env.hub.open_session(&req, method, true, ticket);
    assert!(racing.recheck, "the session must ask for a re-check");
    assert!(racing.signals.try_recv().is_err(), "nothing closed it yet");
    env.hub.revalidate_device_sessions("d4");
    match racing.signals.try_recv() {
        Ok(iothub_hub::SessionSignal::Close(reason)) => {
            assert_eq!(reason, "device 'd4' was disabled")
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn an_import_needs_registry_write_names_each_refused_row_and_forgets_the_cache() {
    let (env, _) = env_with_store(HubConfig {
        device_limit: 4,
        ..HubConfig::default()
    });
    let req = registered(&env, "d1");
    // d1's record now in memory: an import naming d1 must not leave a stale copy behind.
    env.hub.authenticate_device(&req).unwrap();
    assert!(env.hub.authenticate_device_from_memory(&req).is_some());

    let key = generate_key().unwrap();
    let rows: Vec<(String, PutDevice)> = [
        ("d2", sas_device(&key)),
        ("bad id", sas_device(&key)),
        ("d1", sas_device(&key)),
        (
            "d3",
            PutDevice {
                auth_type: Some("selfSigned".into()),
                ..Default::default()
            },
        ),
        ("d4", sas_device(&key)),
        ("d5", sas_device(&key)),
        ("d6", sas_device(&key)),
    ]
    .into_iter()
    .map(|(id, p)| (id.to_string(), p))
    .collect();

    // Rights: a registryRead token is refused the whole import, and nothing is written.
    let read_key = env
        .hub
        .policy_keys(&sys(), "registryRead")
        .unwrap()
        .primary_key;
    let t = build_token(
        "localhost",
        &read_key,
        Some("registryRead"),
        env.now() + HOUR,
    )
    .unwrap();
    let reader = env.hub.authenticate(Some(&t)).unwrap();
    let refused = env.hub.import_devices(&reader, &rows).unwrap_err();
    assert_eq!(refused.code().number, 403001, "{refused}");
    assert!(env.hub.get_device(&sys(), "d2").is_err());

    let results = env.hub.import_devices(&sys(), &rows).unwrap();
    let codes: Vec<Option<u32>> = results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.code().number))
        .collect();
    // The same reasons as put_device: invalid id, exists, a self-signed device without a
    // thumbprint, then the limit (4: d1, d2, d4, d5).
    assert_eq!(
        codes,
        [
            None,
            Some(400070),
            Some(409001),
            Some(400071),
            None,
            None,
            Some(403051)
        ]
    );
    for id in ["d2", "d4", "d5"] {
        env.hub.get_device(&sys(), id).unwrap();
    }
    for id in ["bad id", "d3", "d6"] {
        assert!(env.hub.get_device(&sys(), id).is_err(), "{id}");
    }
    assert!(env.hub.authenticate_device_from_memory(&req).is_none());
    // A new device is admitted by the very next CONNECT.
    assert_eq!(
        env.hub.authenticate_device(&connect(&env, "d2", &key)),
        Ok(AuthMethod::Sas)
    );
}
