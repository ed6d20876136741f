//! One store test suite, run against both backends: every check here runs on SQLite and on
//! PostgreSQL (a private server this test process starts, `iothub-testpg`), so the two
//! implementations of `Store` keep the same semantics call for call, including the orders the hub
//! relies on under concurrent writers.

mod common;

use std::sync::Arc;

use common::*;
use iothub_store::*;

fn ca(name: &str, thumb: &str) -> CaRecord {
    CaRecord {
        name: name.into(),
        der: vec![1, 2, 3],
        thumbprint: thumb.into(),
        is_verified: false,
        created: 10,
        updated: 10,
        etag: 0,
        code: CodeRecord::None,
    }
}

const NO_LIMIT: Expect = Expect::Absent { limit: 1000 };

/// Runs each check against a fresh SQLite store and a fresh PostgreSQL database.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&super::sqlite_store("local")); })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(&super::postgres_store(&super::pg_database(), "local")); })*
        }
    };
}

fn sqlite_store(node: &str) -> SqliteStore {
    SqliteStore::open_in_memory().unwrap().with_node(node)
}

fn pg_database() -> String {
    iothub_testpg::shared().database()
}

fn postgres_store(url: &str, node: &str) -> PostgresStore {
    PostgresStore::connect(url, node).unwrap_or_else(|e| panic!("{e}"))
}

conformance!(
    cas_keep_etags_thumbprints_limits_and_codes,
    devices_keep_etags_limits_and_deletions,
    a_device_batch_writes_exactly_the_rows_that_pass,
    policies_change_under_their_preconditions,
    twins_are_etag_checked_and_empty_until_written,
    c2d_queue_limit_expiry_and_delivery,
    messages_keep_offsets_and_per_partition_sequences,
    pruning_takes_every_old_message_and_no_newer_one,
    activity_merges_and_skips_deleted_devices,
    devices_whose_certificates_expire_soonest_first,
    audit_reads_newest_first_by_target,
    the_change_feed_leaves_out_the_readers_own_writes,
    presence_keeps_the_latest_session_and_heartbeats,
    a_presence_batch_ends_as_its_updates_in_order_would,
    method_calls_are_answered_once,
    revocations_belong_to_their_ca,
    a_crl_replaces_the_revocations_of_the_one_before,
    auto_registration_counts_against_its_quota,
    enrollments_keep_etags_limits_and_unique_certificates,
    a_registration_creates_its_device_once_and_keeps_it,
    settings_and_persistent_sessions,
    consumer_groups_are_unique_bounded_and_audited,
    outcomes_write_the_feedback_their_messages_asked_for,
    feedback_is_locked_settled_and_dropped_by_the_queue_rules,
);

fn cas_keep_etags_thumbprints_limits_and_codes(s: &dyn Store) {
    let a = s.write_ca(&ca("a", "T1"), NO_LIMIT, &audit("c")).unwrap();
    assert!(a.etag > 0);
    assert_eq!(
        s.write_ca(&ca("a", "T1"), NO_LIMIT, &audit("c")),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.write_ca(&ca("b", "T1"), NO_LIMIT, &audit("c")),
        Err(StoreError::DuplicateThumbprint { name: "a".into() })
    );
    assert_eq!(
        s.write_ca(&ca("b", "T2"), Expect::Absent { limit: 1 }, &audit("c")),
        Err(StoreError::LimitReached { limit: 1 })
    );
    assert_eq!(
        s.write_ca(&ca("a", "T1"), Expect::Etag(a.etag + 100), &audit("c")),
        Err(StoreError::EtagMismatch { current: a.etag })
    );
    let mut live = ca("a", "T1");
    live.code = CodeRecord::Live {
        code: "C0DE".into(),
        expires_at: 99,
    };
    let a2 = s
        .write_ca(&live, Expect::Etag(a.etag), &audit("u"))
        .unwrap();
    assert!(a2.etag > a.etag);
    assert_eq!(s.get_ca("a").unwrap().unwrap().code, live.code);
    s.write_ca(&ca("b", "T2"), NO_LIMIT, &audit("c")).unwrap();
    let changes = s.ca_changes_since(a2.etag).unwrap();
    assert_eq!(changes.total, 2);
    assert_eq!(
        changes
            .changed
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(s.list_cas().unwrap().len(), 2);
    assert_eq!(
        s.delete_ca("a", Some(1), &audit("d")),
        Err(StoreError::EtagMismatch { current: a2.etag })
    );
    s.delete_ca("a", Some(a2.etag), &audit("d")).unwrap();
    assert_eq!(s.get_ca("a").unwrap(), None);
    assert_eq!(
        s.delete_ca("a", None, &audit("d")),
        Err(StoreError::NotFound)
    );
    assert_eq!(s.list_ca_versions().unwrap().len(), 1);
}

fn devices_keep_etags_limits_and_deletions(s: &dyn Store) {
    let d = s
        .write_device(&device("d1"), Expect::Absent { limit: 1 }, &audit("c"))
        .unwrap();
    assert_eq!(
        s.write_device(&device("d2"), Expect::Absent { limit: 1 }, &audit("c")),
        Err(StoreError::LimitReached { limit: 1 })
    );
    let mut disabled = device("d1");
    disabled.status = DeviceStatus::Disabled;
    let d2 = s
        .write_device(&disabled, Expect::Etag(d.etag), &audit("u"))
        .unwrap();
    assert_eq!(
        s.get_device("d1").unwrap().unwrap().status,
        DeviceStatus::Disabled
    );
    assert_eq!(s.count_devices().unwrap(), (1, 0));
    s.write_device(&device("d0"), NO_LIMIT, &audit("c"))
        .unwrap();
    let listed: Vec<String> = s
        .list_devices(None, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, ["d0", "d1"]);
    assert_eq!(s.list_devices(Some("d0"), 10).unwrap().len(), 1);
    assert_eq!(
        s.delete_device("d1", Some(d.etag), &audit("d")),
        Err(StoreError::EtagMismatch { current: d2.etag })
    );
    s.delete_device("d1", Some(d2.etag), &audit("d")).unwrap();
    assert_eq!(s.get_device("d1").unwrap(), None);
}

fn a_device_batch_writes_exactly_the_rows_that_pass(s: &dyn Store) {
    s.write_device(&device("taken"), NO_LIMIT, &audit("c"))
        .unwrap();
    let rows: Vec<(DeviceRecord, NewAudit)> = ["n1", "taken", "n2", "n1", "n3"]
        .iter()
        .map(|id| (device(id), audit("import")))
        .collect();
    let answers = s.create_devices(&rows, 3).unwrap();
    let kinds: Vec<Result<(), StoreError>> = answers.into_iter().map(|a| a.map(|_| ())).collect();
    assert_eq!(
        kinds,
        [
            Ok(()),
            Err(StoreError::AlreadyExists),
            Ok(()),
            Err(StoreError::AlreadyExists),
            Err(StoreError::LimitReached { limit: 3 }),
        ]
    );
    assert_eq!(s.count_devices().unwrap().0, 3);
}

fn policies_change_under_their_preconditions(s: &dyn Store) {
    let p = PolicyRecord {
        name: "svc".into(),
        primary_key: "p".into(),
        secondary_key: "s".into(),
        rights: vec!["ServiceConnect".into()],
    };
    assert!(s.insert_policy_if_absent(&p).unwrap());
    assert!(!s.insert_policy_if_absent(&p).unwrap());
    let create = PolicyChange::Create {
        record: PolicyRecord {
            name: "reader".into(),
            ..p.clone()
        },
        limit: 2,
    };
    let made = s.change_policy(&create, &audit("p")).unwrap().unwrap();
    assert_eq!(made.rights, ["ServiceConnect"]);
    assert_eq!(
        s.change_policy(&create, &audit("p")),
        Err(StoreError::AlreadyExists)
    );
    let third = PolicyChange::Create {
        record: PolicyRecord {
            name: "third".into(),
            ..p.clone()
        },
        limit: 2,
    };
    assert_eq!(
        s.change_policy(&third, &audit("p")),
        Err(StoreError::LimitReached { limit: 2 })
    );
    let rights = PolicyChange::SetRights {
        name: "reader".into(),
        rights: vec!["RegistryRead".into(), "ServiceConnect".into()],
    };
    assert_eq!(
        s.change_policy(&rights, &audit("p"))
            .unwrap()
            .unwrap()
            .rights,
        ["RegistryRead", "ServiceConnect"]
    );
    let key = PolicyChange::SetKey {
        name: "reader".into(),
        secondary: true,
        key: "new".into(),
    };
    assert_eq!(
        s.change_policy(&key, &audit("p"))
            .unwrap()
            .unwrap()
            .secondary_key,
        "new"
    );
    let delete = PolicyChange::Delete {
        name: "reader".into(),
    };
    assert_eq!(s.change_policy(&delete, &audit("p")).unwrap(), None);
    assert_eq!(
        s.change_policy(&delete, &audit("p")),
        Err(StoreError::NotFound)
    );
    assert_eq!(s.list_policies().unwrap().len(), 1);
}

fn twins_are_etag_checked_and_empty_until_written(s: &dyn Store) {
    assert_eq!(s.get_twin("nobody"), Err(StoreError::NotFound));
    s.write_device(&device("t"), NO_LIMIT, &audit("c")).unwrap();
    let empty = s.get_twin("t").unwrap();
    assert_eq!(empty, TwinRecord::empty("t"));
    let mut twin = empty.clone();
    twin.desired = r#"{"a":1}"#.into();
    twin.desired_version = 2;
    let written = s.write_twin(&twin, Some(0), Some(r#"{"a":1}"#)).unwrap();
    assert!(written.etag > 0);
    assert_eq!(
        s.write_twin(&twin, Some(0), None),
        Err(StoreError::EtagMismatch {
            current: written.etag
        })
    );
    assert_eq!(s.get_twin("t").unwrap().desired, r#"{"a":1}"#);
    assert_eq!(
        s.write_twin(&TwinRecord::empty("ghost"), None, None),
        Err(StoreError::NotFound)
    );
}

fn c2d_queue_limit_expiry_and_delivery(s: &dyn Store) {
    let c2d = |expiry| C2dRecord {
        id: 0,
        device_id: "d".into(),
        message_id: "m".into(),
        properties: "{}".into(),
        body: b"x".to_vec(),
        created: 100,
        expiry,
        state: C2dState::Queued,
        delivered_at: None,
        delivery_count: 0,
        ack: C2dAck::None,
    };
    assert_eq!(s.enqueue_c2d(&c2d(200), 2), Err(StoreError::NotFound));
    s.write_device(&device("d"), NO_LIMIT, &audit("c")).unwrap();
    let a = s.enqueue_c2d(&c2d(200), 2).unwrap();
    let b = s.enqueue_c2d(&c2d(150), 2).unwrap();
    assert_eq!(
        s.enqueue_c2d(&c2d(300), 2),
        Err(StoreError::LimitReached { limit: 2 })
    );
    assert_eq!(s.count_pending_c2d("d", 100).unwrap(), 2);
    let pending: Vec<i64> = s
        .pending_c2d("d", 160)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(pending, [a.id]);
    let none = &FeedbackWrite::NONE;
    assert_eq!(s.expire_c2d(Some("d"), 160, none).unwrap(), 1);
    assert_eq!(s.expire_c2d(Some("d"), 160, none).unwrap(), 0);
    s.count_c2d_attempt(a.id).unwrap();
    s.mark_c2d_delivered(a.id, 170, none).unwrap();
    let list = s.list_c2d("d", 10).unwrap();
    let get = |id| list.iter().find(|m| m.id == id).unwrap().clone();
    assert_eq!(
        (get(a.id).state, get(a.id).delivery_count),
        (C2dState::Delivered, 1)
    );
    assert_eq!(get(b.id).state, C2dState::Expired);
    s.delete_device("d", None, &audit("d")).unwrap();
    assert!(s.list_c2d("d", 10).unwrap().is_empty());
}

fn messages_keep_offsets_and_per_partition_sequences(s: &dyn Store) {
    assert_eq!(s.last_message_offset().unwrap(), 0);
    let first = s
        .append_messages(&[
            message(0, "a", "1"),
            message(2, "b", "2"),
            message(0, "a", "3"),
        ])
        .unwrap();
    assert_eq!(first, [1, 2, 3]);
    s.append_messages(&[message(2, "b", "4")]).unwrap();
    assert_eq!(s.last_message_offset().unwrap(), 4);
    let p0: Vec<(i64, i64)> = s
        .read_partition(0, 1, 10)
        .unwrap()
        .iter()
        .map(|m| (m.sequence, m.offset))
        .collect();
    assert_eq!(p0, [(1, 1), (2, 3)]);
    let p2: Vec<i64> = s
        .read_partition(2, 1, 10)
        .unwrap()
        .iter()
        .map(|m| m.sequence)
        .collect();
    assert_eq!(p2, [1, 2]);
    assert_eq!(s.partition_ends().unwrap(), [(0, 2), (2, 2)]);
    let of_b: Vec<i64> = s
        .read_messages(1, Some("b"), 10)
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(of_b, [2, 4]);
    assert_eq!(s.read_messages(3, None, 1).unwrap()[0].message.body, b"3");
    // Pruning never makes an offset come back.
    assert_eq!(s.prune_messages(101).unwrap(), 4);
    assert_eq!(s.append_messages(&[message(0, "a", "5")]).unwrap(), [5]);
}

fn pruning_takes_every_old_message_and_no_newer_one(s: &dyn Store) {
    // More than one of PostgreSQL's delete batches (10,000 rows).
    let at = |enqueued, n: usize| -> Vec<NewMessage> {
        (0..n)
            .map(|i| NewMessage {
                enqueued,
                ..message((i % 4) as u32, "p", "x")
            })
            .collect()
    };
    for _ in 0..5 {
        s.append_messages(&at(100, 5_000)).unwrap();
    }
    s.append_messages(&at(200, 3)).unwrap();
    assert_eq!(s.prune_messages(150).unwrap(), 25_000);
    assert_eq!(s.read_messages(1, None, 10).unwrap().len(), 3);
    assert_eq!(s.prune_messages(150).unwrap(), 0);
}

fn activity_merges_and_skips_deleted_devices(s: &dyn Store) {
    s.write_device(&device("act"), NO_LIMIT, &audit("c"))
        .unwrap();
    s.update_device_activity(
        "act",
        &DeviceActivity {
            last_connected: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    let refusal = DeviceActivity {
        last_refusal: Some("no".into()),
        last_refusal_time: Some(6),
        ..Default::default()
    };
    s.update_device_activities(&[
        ("act".into(), refusal),
        ("gone".into(), DeviceActivity::default()),
    ])
    .unwrap();
    let a = s.get_device_activity("act").unwrap();
    assert_eq!(
        (a.last_connected, a.last_refusal.as_deref()),
        (Some(5), Some("no"))
    );
    assert_eq!(
        s.get_device_activity("gone").unwrap(),
        DeviceActivity::default()
    );
}

fn devices_whose_certificates_expire_soonest_first(s: &dyn Store) {
    for (id, not_after) in [
        ("e1", Some(300)),
        ("e2", Some(100)),
        ("e3", None),
        ("e4", Some(900)),
    ] {
        s.write_device(&device(id), NO_LIMIT, &audit("c")).unwrap();
        s.update_device_activity(
            id,
            &DeviceActivity {
                last_connected: Some(1),
                certificate_not_after: not_after,
                ..Default::default()
            },
        )
        .unwrap();
    }
    // A later update without a certificate keeps the one recorded.
    s.update_device_activity(
        "e1",
        &DeviceActivity {
            last_activity: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        s.list_expiring_devices(500, 10).unwrap(),
        [("e2".to_string(), 100), ("e1".to_string(), 300)]
    );
    assert_eq!(s.list_expiring_devices(500, 1).unwrap().len(), 1);
    s.delete_device("e2", None, &audit("d")).unwrap();
    assert_eq!(
        s.list_expiring_devices(500, 10).unwrap(),
        [("e1".to_string(), 300)]
    );
}

fn audit_reads_newest_first_by_target(s: &dyn Store) {
    for i in 0..3 {
        let mut a = audit("x");
        a.target = format!("t/{}", i % 2);
        s.append_audit(&a).unwrap();
    }
    let all = s
        .list_audit(&AuditQuery {
            target: None,
            before: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].id > all[1].id);
    let t0 = s
        .list_audit(&AuditQuery {
            target: Some("t/0".into()),
            before: Some(all[0].id),
            limit: 10,
        })
        .unwrap();
    assert_eq!(t0.len(), 1);
}

fn the_change_feed_leaves_out_the_readers_own_writes(s: &dyn Store) {
    // `s` is node "local": its own writes are not in its feed.
    s.write_ca(&ca("mine", "M"), NO_LIMIT, &audit("c")).unwrap();
    assert!(s.changes_since(0, 10).unwrap().changes.is_empty());
    assert!(s.last_change().unwrap() > 0);
    assert!(s.changes_since(0, 10).unwrap().complete);
}

fn presence_keeps_the_latest_session_and_heartbeats(s: &dyn Store) {
    let update = |node: &str, since, connected| PresenceUpdate {
        device_id: "p".into(),
        node: node.into(),
        since_ms: since,
        connected,
    };
    s.record_presence(&[update("a", 100, true)]).unwrap();
    // An older session's news never replaces a newer one, nor does its end remove it.
    s.record_presence(&[update("b", 50, true), update("b", 50, false)])
        .unwrap();
    s.heartbeat("a", 1_000).unwrap();
    s.heartbeat("a", 900).unwrap();
    let p = s.get_presence("p").unwrap().unwrap();
    assert_eq!(
        (p.node.as_str(), p.since_ms, p.heartbeat_ms),
        ("a", 100, Some(1_000))
    );
    s.record_presence(&[update("a", 100, false)]).unwrap();
    assert_eq!(s.get_presence("p").unwrap(), None);
}

fn a_presence_batch_ends_as_its_updates_in_order_would(s: &dyn Store) {
    let update = |id: &str, since, connected| PresenceUpdate {
        device_id: id.into(),
        node: "a".into(),
        since_ms: since,
        connected,
    };
    // One tick of a reconnect storm: q comes, goes and comes again; r comes and goes; an old
    // session of t ends after its newer one began.
    s.record_presence(&[update("t", 1, true)]).unwrap();
    s.record_presence(&[
        update("q", 1, true),
        update("q", 1, false),
        update("q", 2, true),
        update("r", 5, true),
        update("r", 5, false),
        update("t", 3, true),
        update("t", 1, false),
    ])
    .unwrap();
    let since = |id: &str| s.get_presence(id).unwrap().map(|p| p.since_ms);
    assert_eq!(since("q"), Some(2));
    assert_eq!(since("r"), None);
    assert_eq!(since("t"), Some(3));
}

fn revocations_belong_to_their_ca(s: &dyn Store) {
    let r = |ca: &str, serial: &str, at| RevocationRecord {
        ca_name: ca.into(),
        serial: serial.into(),
        reason: "keyCompromise".into(),
        revoked_at: at,
        from_crl: false,
    };
    assert_eq!(
        s.revoke(&r("nope", "1A", 1), &audit("r")),
        Err(StoreError::NotFound)
    );
    s.write_ca(&ca("rv", "RVT"), NO_LIMIT, &audit("c")).unwrap();
    s.write_ca(&ca("rw", "RWT"), NO_LIMIT, &audit("c")).unwrap();
    s.revoke(&r("rv", "1A", 5), &audit("r")).unwrap();
    s.revoke(&r("rv", "B", 3), &audit("r")).unwrap();
    s.revoke(&r("rw", "1A", 4), &audit("r")).unwrap();
    assert_eq!(
        s.revoke(&r("rv", "1A", 9), &audit("r")),
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        s.list_revocations(Some("rv")).unwrap(),
        [r("rv", "B", 3), r("rv", "1A", 5)]
    );
    assert_eq!(s.list_revocations(None).unwrap().len(), 3);
    // Deleting a CA deletes its revocations: a CA added again under its name starts clean.
    s.delete_ca("rv", None, &audit("d")).unwrap();
    assert_eq!(s.list_revocations(None).unwrap(), [r("rw", "1A", 4)]);
}

fn a_crl_replaces_the_revocations_of_the_one_before(s: &dyn Store) {
    let entry = |serial: &str| RevocationRecord {
        ca_name: "cr".into(),
        serial: serial.into(),
        reason: "superseded".into(),
        revoked_at: 5,
        from_crl: true,
    };
    let crl = |this_update| CrlRecord {
        ca_name: "cr".into(),
        this_update,
        next_update: Some(this_update + 100),
        number: Some("7".into()),
        entries: 0,
        uploaded_at: 1,
    };
    assert_eq!(
        s.replace_crl(&crl(10), &[entry("1")], &audit("l")),
        Err(StoreError::NotFound)
    );
    s.write_ca(&ca("cr", "CRT"), NO_LIMIT, &audit("c")).unwrap();
    s.replace_crl(&crl(10), &[entry("1"), entry("2")], &audit("l"))
        .unwrap();
    // The operator revokes 2 (the CRL's already) and 3.
    let mine = |serial: &str| RevocationRecord {
        reason: "keyCompromise".into(),
        from_crl: false,
        ..entry(serial)
    };
    s.revoke(&mine("2"), &audit("r")).unwrap();
    s.revoke(&mine("3"), &audit("r")).unwrap();
    assert_eq!(
        s.revoke(&mine("3"), &audit("r")),
        Err(StoreError::AlreadyExists)
    );
    // An older or the same CRL is refused and changes nothing.
    assert_eq!(
        s.replace_crl(&crl(10), &[], &audit("l")),
        Err(StoreError::EtagMismatch { current: 10 })
    );
    // A newer CRL without 1 and 2: 1 is no longer revoked; the operator's 2 and 3 stay.
    s.replace_crl(&crl(20), &[entry("4")], &audit("l")).unwrap();
    let held: Vec<(String, bool)> = s
        .list_revocations(Some("cr"))
        .unwrap()
        .into_iter()
        .map(|r| (r.serial, r.from_crl))
        .collect();
    let mut held = held;
    held.sort();
    assert_eq!(
        held,
        [
            ("2".to_string(), false),
            ("3".to_string(), false),
            ("4".to_string(), true)
        ]
    );
    let got = s.get_crl("cr").unwrap().unwrap();
    assert_eq!((got.this_update, got.entries), (20, 1));
    // Deleting the CA deletes its CRL.
    s.delete_ca("cr", None, &audit("d")).unwrap();
    assert_eq!(s.get_crl("cr").unwrap(), None);
}

fn enrollment(kind: EnrollmentKind, name: &str, thumbprint: Option<&str>) -> EnrollmentRecord {
    EnrollmentRecord {
        kind,
        name: name.into(),
        ca_name: thumbprint.is_none().then(|| "root".into()),
        certificate: thumbprint.map(|_| vec![1, 2]),
        thumbprint: thumbprint.map(String::from),
        initial_twin: Some(r#"{"tags":{"a":1}}"#.into()),
        enabled: true,
        etag: 0,
        created: 5,
        updated: 5,
    }
}

fn enrollments_keep_etags_limits_and_unique_certificates(s: &dyn Store) {
    use EnrollmentKind::{Group, Individual};
    let g = s
        .write_enrollment(&enrollment(Group, "line-1", None), NO_LIMIT, &audit("g"))
        .unwrap();
    assert_eq!(
        s.write_enrollment(&enrollment(Group, "line-1", None), NO_LIMIT, &audit("g")),
        Err(StoreError::AlreadyExists)
    );
    // A group and an individual enrollment may share a name: they are different kinds.
    s.write_enrollment(
        &enrollment(Individual, "line-1", Some("T1")),
        NO_LIMIT,
        &audit("i"),
    )
    .unwrap();
    assert_eq!(
        s.write_enrollment(
            &enrollment(Individual, "dev-2", Some("T1")),
            NO_LIMIT,
            &audit("i")
        ),
        Err(StoreError::DuplicateThumbprint {
            name: "line-1".into()
        })
    );
    assert_eq!(
        s.write_enrollment(
            &enrollment(Individual, "dev-2", Some("T2")),
            Expect::Absent { limit: 2 },
            &audit("i")
        ),
        Err(StoreError::LimitReached { limit: 2 })
    );
    let mut disabled = g.clone();
    disabled.enabled = false;
    assert_eq!(
        s.write_enrollment(&disabled, Expect::Etag(g.etag + 100), &audit("g")),
        Err(StoreError::EtagMismatch { current: g.etag })
    );
    let d = s
        .write_enrollment(&disabled, Expect::Etag(g.etag), &audit("g"))
        .unwrap();
    assert!(d.etag > g.etag);
    assert_eq!(s.get_enrollment(Group, "line-1").unwrap(), Some(d.clone()));
    assert_eq!(s.list_enrollments(Group).unwrap(), std::slice::from_ref(&d));
    assert_eq!(s.list_enrollments(Individual).unwrap().len(), 1);
    assert_eq!(
        s.delete_enrollment(Group, "line-1", Some(g.etag), &audit("d")),
        Err(StoreError::EtagMismatch { current: d.etag })
    );
    s.delete_enrollment(Group, "line-1", Some(d.etag), &audit("d"))
        .unwrap();
    assert_eq!(s.get_enrollment(Group, "line-1").unwrap(), None);
    assert_eq!(
        s.delete_enrollment(Group, "line-1", None, &audit("d")),
        Err(StoreError::NotFound)
    );
}

fn a_registration_creates_its_device_once_and_keeps_it(s: &dyn Store) {
    let registration = |op: &str, at: i64| RegistrationRecord {
        registration_id: "p-1".into(),
        device_id: "p-1".into(),
        enrollment_kind: EnrollmentKind::Group,
        enrollment_name: "line-1".into(),
        operation_id: op.into(),
        etag: 0,
        created: at,
        updated: at,
    };
    let mut twin = TwinRecord::empty("p-1");
    twin.tags = r#"{"line":1}"#.into();
    assert_eq!(
        s.provision_device(
            &registration("o1", 10),
            &device("p-1"),
            Some(&twin),
            0,
            &audit("p")
        ),
        Err(StoreError::LimitReached { limit: 0 })
    );
    assert!(
        s.get_device("p-1").unwrap().is_none(),
        "a refusal writes nothing"
    );
    assert!(s.get_registration("p-1").unwrap().is_none());
    let (first, created) = s
        .provision_device(
            &registration("o1", 10),
            &device("p-1"),
            Some(&twin),
            10,
            &audit("p"),
        )
        .unwrap();
    assert!(created);
    assert_eq!(s.get_twin("p-1").unwrap().tags, twin.tags);
    assert_eq!(s.get_registration("p-1").unwrap(), Some(first.clone()));
    // Again: the device and its twin as they are now, the first registration time kept.
    let mut changed = twin.clone();
    changed.tags = r#"{"line":2}"#.into();
    s.write_twin(&changed, None, None).unwrap();
    let (again, created) = s
        .provision_device(
            &registration("o2", 20),
            &device("p-1"),
            Some(&twin),
            10,
            &audit("p"),
        )
        .unwrap();
    assert!(!created);
    assert_eq!((again.created, again.updated), (10, 20));
    assert_eq!(again.operation_id, "o2");
    assert!(again.etag > first.etag);
    assert_eq!(
        s.get_twin("p-1").unwrap().tags,
        changed.tags,
        "the twin is kept"
    );
    assert_eq!(s.list_registrations().unwrap(), [again]);
    // Deleting the device deletes its registration.
    s.delete_device("p-1", None, &audit("d")).unwrap();
    assert!(s.list_registrations().unwrap().is_empty());
}

fn auto_registration_counts_against_its_quota(s: &dyn Store) {
    assert_eq!(
        s.set_auto_registration("ar", Some(2), &audit("a")),
        Err(StoreError::NotFound)
    );
    s.write_ca(&ca("ar", "ART"), NO_LIMIT, &audit("c")).unwrap();
    assert_eq!(
        s.auto_register_device("ar", &device("a1"), 1000, &audit("r")),
        Err(StoreError::NotFound),
        "off: nothing is registered through it"
    );
    s.set_auto_registration("ar", Some(2), &audit("a")).unwrap();
    s.auto_register_device("ar", &device("a1"), 1000, &audit("r"))
        .unwrap();
    assert_eq!(
        s.auto_register_device("ar", &device("a1"), 1000, &audit("r")),
        Err(StoreError::AlreadyExists)
    );
    // The hub's own device limit still holds.
    let hub_limit = s.auto_register_device("ar", &device("a2"), 1, &audit("r"));
    assert_eq!(hub_limit, Err(StoreError::LimitReached { limit: 1 }));
    s.auto_register_device("ar", &device("a2"), 1000, &audit("r"))
        .unwrap();
    assert_eq!(
        s.auto_register_device("ar", &device("a3"), 1000, &audit("r")),
        Err(StoreError::QuotaReached { limit: 2 })
    );
    assert!(
        s.get_device("a3").unwrap().is_none(),
        "a refusal writes nothing"
    );
    // Raising the limit keeps the count.
    s.set_auto_registration("ar", Some(3), &audit("a")).unwrap();
    let listed = s.list_auto_registrations().unwrap();
    assert_eq!(
        listed,
        [AutoRegistration {
            ca_name: "ar".into(),
            device_limit: 3,
            registered: 2
        }]
    );
    s.set_auto_registration("ar", None, &audit("a")).unwrap();
    assert!(s.list_auto_registrations().unwrap().is_empty());
}

fn method_calls_are_answered_once(s: &dyn Store) {
    let call = MethodCallRecord {
        id: 0,
        device_id: "m".into(),
        target_node: "b".into(),
        name: "reboot".into(),
        payload: b"{}".to_vec(),
        created_ms: 10,
        timeout_ms: 5_000,
    };
    let id = s.put_method_call(&call).unwrap();
    assert_eq!(s.get_method_call(id).unwrap().unwrap().name, "reboot");
    assert_eq!(s.get_method_answer(id).unwrap(), None);
    s.answer_method_call(id, 200, b"ok").unwrap();
    s.answer_method_call(id, 500, b"late").unwrap();
    assert_eq!(
        s.get_method_answer(id).unwrap(),
        Some((200, b"ok".to_vec()))
    );
    assert_eq!(s.prune_method_calls(11).unwrap(), 1);
    assert_eq!(s.get_method_call(id).unwrap(), None);
}

fn settings_and_persistent_sessions(s: &dyn Store) {
    assert!(s
        .insert_settings_if_absent(&[("x", b"1"), ("y", b"2")])
        .unwrap());
    assert!(!s
        .insert_settings_if_absent(&[("z", b"3"), ("x", b"9")])
        .unwrap());
    assert_eq!(s.get_setting("x").unwrap().unwrap(), b"1");
    assert_eq!(s.get_setting("z").unwrap(), None);
    let subs = Subscriptions {
        c2d: true,
        desired: false,
        methods: true,
    };
    s.write_persistent_session("nobody", Some(subs)).unwrap();
    assert!(s.list_persistent_sessions().unwrap().is_empty());
    s.write_device(&device("ps"), NO_LIMIT, &audit("c"))
        .unwrap();
    s.write_persistent_session("ps", Some(subs)).unwrap();
    assert_eq!(
        s.list_persistent_sessions().unwrap(),
        [("ps".to_string(), subs)]
    );
    s.delete_device("ps", None, &audit("d")).unwrap();
    assert!(s.list_persistent_sessions().unwrap().is_empty());
}

fn consumer_groups_are_unique_bounded_and_audited(s: &dyn Store) {
    assert!(s.list_consumer_groups().unwrap().is_empty());
    s.insert_consumer_group("b", 5, 2, &audit("add b")).unwrap();
    s.insert_consumer_group("a", 6, 2, &audit("add a")).unwrap();
    assert!(matches!(
        s.insert_consumer_group("a", 7, 5, &audit("again")),
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        s.insert_consumer_group("c", 7, 2, &audit("third")),
        Err(StoreError::LimitReached { limit: 2 })
    ));
    assert_eq!(
        s.list_consumer_groups().unwrap(),
        [("a".to_string(), 6), ("b".to_string(), 5)]
    );
    s.delete_consumer_group("b", &audit("delete b")).unwrap();
    assert!(matches!(
        s.delete_consumer_group("b", &audit("again")),
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.list_consumer_groups().unwrap(), [("a".to_string(), 6)]);
    // Only the writes that landed are on record.
    let actions: Vec<String> = s
        .list_audit(&AuditQuery {
            target: None,
            before: None,
            limit: 10,
        })
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"add b".to_string()) && actions.contains(&"delete b".to_string()));
    assert!(
        !actions.iter().any(|a| a == "again" || a == "third"),
        "{actions:?}"
    );
}

const SUCCESS: FeedbackWrite<'static> = FeedbackWrite {
    wanted_by: &[C2dAck::Positive, C2dAck::Full],
    status: FeedbackStatus::Success,
    description: "Success",
};

const EXPIRED: FeedbackWrite<'static> = FeedbackWrite {
    wanted_by: &[C2dAck::Negative, C2dAck::Full],
    status: FeedbackStatus::Expired,
    description: "Message expired",
};

fn c2d_with_ack(device: &str, message_id: &str, expiry: i64, ack: C2dAck) -> C2dRecord {
    C2dRecord {
        id: 0,
        device_id: device.into(),
        message_id: message_id.into(),
        properties: "{}".into(),
        body: b"x".to_vec(),
        created: 100,
        expiry,
        state: C2dState::Queued,
        delivered_at: None,
        delivery_count: 0,
        ack,
    }
}

/// Takes every record there is at `now` under `token` (lock for 60 s, no limit that bites).
fn take_all(s: &dyn Store, token: &str, now: i64) -> Vec<FeedbackRecord> {
    s.take_feedback(&FeedbackTake {
        token,
        now,
        until: now + 60,
        max: 100,
        oldest: 0,
        max_deliveries: 10,
    })
    .unwrap()
}

fn outcomes_write_the_feedback_their_messages_asked_for(s: &dyn Store) {
    s.write_device(&device("d"), NO_LIMIT, &audit("c")).unwrap();
    s.write_device(&device("e"), NO_LIMIT, &audit("c")).unwrap();
    let q = |dev, id, expiry, ack| {
        s.enqueue_c2d(&c2d_with_ack(dev, id, expiry, ack), 50)
            .unwrap()
    };
    assert_eq!(q("d", "none", 900, C2dAck::None).ack, C2dAck::None);
    let positive = q("d", "positive", 900, C2dAck::Positive);
    let negative = q("d", "negative", 900, C2dAck::Negative);
    let full = q("d", "full", 900, C2dAck::Full);
    assert_eq!(s.list_c2d("d", 10).unwrap()[0].ack, C2dAck::Full);
    for m in s.pending_c2d("d", 200).unwrap() {
        s.mark_c2d_delivered(m.id, 200, &SUCCESS).unwrap();
    }
    // A second acknowledgement of a delivered message writes nothing more.
    s.mark_c2d_delivered(full.id, 210, &SUCCESS).unwrap();
    let got = take_all(s, "t1", 300);
    let ids: Vec<(&str, FeedbackStatus)> = got
        .iter()
        .map(|r| (r.original_message_id.as_str(), r.status))
        .collect();
    assert_eq!(
        ids,
        [
            ("positive", FeedbackStatus::Success),
            ("full", FeedbackStatus::Success)
        ]
    );
    assert_eq!(
        (
            got[0].device_id.as_str(),
            got[0].description.as_str(),
            got[0].enqueued
        ),
        ("d", "Success", 200)
    );
    assert_eq!(got[0].device_generation_id, device("d").generation_id);
    assert_eq!(got[0].delivery_count, 1);
    assert_eq!(
        s.settle_feedback("t1", 300, FeedbackSettle::Complete)
            .unwrap(),
        2
    );
    let _ = (positive, negative);

    // Expiry, for one device or for all: only negative and full write, each message once.
    q("d", "d-none", 400, C2dAck::None);
    q("d", "d-neg", 400, C2dAck::Negative);
    q("e", "e-full", 450, C2dAck::Full);
    q("e", "e-pos", 450, C2dAck::Positive);
    q("e", "e-later", 9_000, C2dAck::Full);
    assert_eq!(s.expire_c2d(Some("d"), 500, &EXPIRED).unwrap(), 2);
    assert_eq!(s.expire_c2d(None, 500, &EXPIRED).unwrap(), 2);
    assert_eq!(s.expire_c2d(None, 500, &EXPIRED).unwrap(), 0);
    let got = take_all(s, "t2", 600);
    let ids: Vec<(&str, &str, FeedbackStatus, i64)> = got
        .iter()
        .map(|r| {
            (
                r.original_message_id.as_str(),
                r.device_id.as_str(),
                r.status,
                r.enqueued,
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("d-neg", "d", FeedbackStatus::Expired, 500),
            ("e-full", "e", FeedbackStatus::Expired, 500)
        ]
    );
    assert_eq!(got[0].description, "Message expired");
    // A feedback record outlives its device (the generation id it had stays on it).
    s.settle_feedback("t2", 600, FeedbackSettle::Abandon)
        .unwrap();
    s.delete_device("e", None, &audit("d")).unwrap();
    assert_eq!(take_all(s, "t3", 700).len(), 2);
}

fn feedback_is_locked_settled_and_dropped_by_the_queue_rules(s: &dyn Store) {
    assert!(take_all(s, "empty", 100).is_empty());
    s.write_device(&device("d"), NO_LIMIT, &audit("c")).unwrap();
    for i in 0..5 {
        let m = s
            .enqueue_c2d(&c2d_with_ack("d", &format!("m{i}"), 900, C2dAck::Full), 50)
            .unwrap();
        s.mark_c2d_delivered(m.id, 100 + i, &SUCCESS).unwrap();
    }
    let take = |token, now, max| {
        s.take_feedback(&FeedbackTake {
            token,
            now,
            until: now + 60,
            max,
            oldest: 0,
            max_deliveries: 3,
        })
        .unwrap()
        .into_iter()
        .map(|r| r.original_message_id)
        .collect::<Vec<_>>()
    };
    // Oldest first, at most `max`; locked records are not handed out again.
    assert_eq!(take("a", 200, 2), ["m0", "m1"]);
    assert_eq!(take("b", 200, 2), ["m2", "m3"]);
    assert_eq!(take("c", 200, 10), ["m4"]);
    assert!(take("d", 210, 10).is_empty());
    // Complete deletes, abandon gives back at once; a token settles only its own records.
    assert_eq!(
        s.settle_feedback("a", 220, FeedbackSettle::Complete)
            .unwrap(),
        2
    );
    assert_eq!(
        s.settle_feedback("a", 220, FeedbackSettle::Complete)
            .unwrap(),
        0
    );
    assert_eq!(
        s.settle_feedback("b", 220, FeedbackSettle::Abandon)
            .unwrap(),
        2
    );
    assert_eq!(
        s.settle_feedback("nope", 220, FeedbackSettle::Abandon)
            .unwrap(),
        0
    );
    assert_eq!(take("e", 230, 10), ["m2", "m3"]);
    // A lock that ran out settles nothing, and its records can be taken again.
    assert_eq!(
        s.settle_feedback("c", 260, FeedbackSettle::Complete)
            .unwrap(),
        0
    );
    assert_eq!(take("f", 260, 10), ["m4"]);
    // m4 was taken twice, m2 and m3 twice: a third take is allowed, a fourth is not.
    assert_eq!(
        s.settle_feedback("e", 280, FeedbackSettle::Abandon)
            .unwrap(),
        2
    );
    assert_eq!(
        s.settle_feedback("f", 280, FeedbackSettle::Abandon)
            .unwrap(),
        1
    );
    assert_eq!(take("g", 300, 10), ["m2", "m3", "m4"]);
    assert_eq!(
        s.settle_feedback("g", 300, FeedbackSettle::Abandon)
            .unwrap(),
        3
    );
    assert!(take("h", 300, 10).is_empty());
    // Released (never delivered): back at once, and the take does not count.
    let m = s
        .enqueue_c2d(&c2d_with_ack("d", "again", 900, C2dAck::Positive), 50)
        .unwrap();
    s.mark_c2d_delivered(m.id, 300, &SUCCESS).unwrap();
    for round in ["r0", "r1", "r2", "r3", "r4"] {
        assert_eq!(take(round, 310, 10), ["again"]);
        assert_eq!(
            s.settle_feedback(round, 310, FeedbackSettle::Release)
                .unwrap(),
            1
        );
    }
    let got = take_all(s, "counted", 320);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_count, 1);
    s.settle_feedback("counted", 320, FeedbackSettle::Complete)
        .unwrap();
    // Past the time to live: dropped.
    let m = s
        .enqueue_c2d(&c2d_with_ack("d", "old", 900, C2dAck::Positive), 50)
        .unwrap();
    s.mark_c2d_delivered(m.id, 400, &SUCCESS).unwrap();
    let take_after = |oldest| {
        s.take_feedback(&FeedbackTake {
            token: "i",
            now: 500,
            until: 560,
            max: 10,
            oldest,
            max_deliveries: 3,
        })
        .unwrap()
        .len()
    };
    assert_eq!(take_after(401), 0);
    assert_eq!(take_after(0), 0);
}

// ----- what only a shared store shows: two nodes, concurrent writers -----------------------------

#[test]
fn postgres_nodes_see_each_others_changes_in_commit_order() {
    let url = pg_database();
    let a = postgres_store(&url, "a");
    let b = postgres_store(&url, "b");
    a.write_ca(&ca("from-a", "A1"), NO_LIMIT, &audit("c"))
        .unwrap();
    b.write_device(&device("from-b"), NO_LIMIT, &audit("c"))
        .unwrap();
    let seen_by_b = b.changes_since(0, 10).unwrap();
    assert_eq!(
        seen_by_b
            .changes
            .iter()
            .map(|c| (c.kind, c.key.as_str()))
            .collect::<Vec<_>>(),
        [(ChangeKind::Ca, "from-a")]
    );
    let seen_by_a = a.changes_since(0, 10).unwrap();
    assert_eq!(seen_by_a.changes[0].key, "from-b");
}

#[test]
fn postgres_migrations_run_once_when_nodes_start_together() {
    let url = pg_database();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || postgres_store(&url, &format!("n{i}")))
        })
        .collect();
    let stores: Vec<PostgresStore> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    stores[0]
        .write_ca(&ca("x", "X"), NO_LIMIT, &audit("c"))
        .unwrap();
    assert_eq!(stores[3].list_cas().unwrap().len(), 1);
}

/// Many writers at once: a reader that saw etag (or offset) N has seen every lower one, so
/// following "everything above what I saw" never skips a change or a message.
#[test]
fn postgres_numbers_follow_commit_order_under_concurrent_writers() {
    let url = pg_database();
    let stores: Vec<Arc<PostgresStore>> = (0..4)
        .map(|i| Arc::new(postgres_store(&url, &format!("w{i}"))))
        .collect();
    let reader = postgres_store(&url, "reader");
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    s.append_messages(&[message((i % 2) as u32, &format!("d{w}"), "m")])
                        .unwrap();
                    s.write_device(&device(&format!("w{w}-{i}")), NO_LIMIT, &audit("c"))
                        .unwrap();
                }
            })
        })
        .collect();
    // Follow while they write: each read continues above the highest number seen.
    let (mut seen_offset, mut offsets) = (0, Vec::new());
    let (mut seen_change, mut changes) = (0, 0);
    let mut rounds = 0;
    while offsets.len() < 100 || changes < 100 {
        for m in reader.read_messages(seen_offset + 1, None, 1000).unwrap() {
            offsets.push(m.offset);
            seen_offset = m.offset;
        }
        let feed = reader.changes_since(seen_change, 1000).unwrap();
        for c in feed.changes {
            changes += 1;
            seen_change = c.seq;
        }
        rounds += 1;
        assert!(
            rounds < 10_000,
            "{} messages, {changes} changes",
            offsets.len()
        );
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(
        offsets,
        (1..=100).collect::<Vec<i64>>(),
        "no offset skipped"
    );
    assert_eq!(changes, 100, "no change skipped");
    // Every partition numbered from 1 without gaps: each writer sent 13 to partition 0 and 12
    // to partition 1.
    for (p, total) in [(0, 52), (1, 48)] {
        let seq: Vec<i64> = reader
            .read_partition(p, 1, 1000)
            .unwrap()
            .iter()
            .map(|m| m.sequence)
            .collect();
        assert_eq!(seq, (1..=total).collect::<Vec<i64>>(), "partition {p}");
    }
}

#[test]
fn postgres_calls_work_from_inside_an_async_runtime() {
    let url = pg_database();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let s = postgres_store(&url, "async");
        s.write_device(&device("in-async"), NO_LIMIT, &audit("c"))
            .unwrap();
        assert!(s.get_device("in-async").unwrap().is_some());
        drop(s);
    });
}

#[test]
fn postgres_refuses_a_bad_url_or_an_unreachable_server_with_the_reason() {
    let err = PostgresStore::connect("postgres://u:secret@127.0.0.1:1/db", "n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("PostgreSQL at 127.0.0.1:1"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let err = PostgresStore::connect("postgres://db/x?sslmode=require", "n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("needs the database server's CA"), "{err}");
    let err = PostgresStore::connect("postgres://db/x?sslmode=sometimes", "n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sslmode=sometimes is not supported"), "{err}");
}

#[test]
fn postgres_a_write_on_one_node_wakes_the_others_waiting_for_changes() {
    let url = pg_database();
    let a = postgres_store(&url, "a");
    let b = Arc::new(postgres_store(&url, "b"));
    // Once listening, the store wakes its waiter (a change may have landed meanwhile).
    assert!(b.wait_for_changes(std::time::Duration::from_secs(30)));
    // Its own writes do not wake it.
    b.write_ca(&ca("own", "O"), NO_LIMIT, &audit("c")).unwrap();
    assert!(!b.wait_for_changes(std::time::Duration::from_millis(300)));
    // Another node's write does, long before the minute the waiter would give up after.
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || b.wait_for_changes(std::time::Duration::from_secs(60)))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    a.write_ca(&ca("from-a", "A"), NO_LIMIT, &audit("c"))
        .unwrap();
    assert!(waiter.join().unwrap(), "woken by a's notification");
    assert_eq!(b.changes_since(0, 10).unwrap().changes[0].key, "from-a");
}
