//! What survives closing and reopening the SQLite file: persistent-session subscriptions (and
//! that a device deletion takes them along), and each partition's numbering across batches.
//! The behaviour of every call on both stores is in `conformance.rs`.

mod common;

use common::*;
use iothub_store::{Expect, SqliteStore, Store, Subscriptions};

fn add_device(s: &dyn Store, id: &str) {
    s.write_device(&device(id), Expect::Absent { limit: 100 }, &audit("add"))
        .unwrap();
}

const C2D_ONLY: Subscriptions = Subscriptions {
    c2d: true,
    desired: false,
    methods: false,
};
const ALL: Subscriptions = Subscriptions {
    c2d: true,
    desired: true,
    methods: true,
};

#[test]
fn persistent_sessions_survive_a_reopen_and_go_with_their_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iothub.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        add_device(&s, "a");
        add_device(&s, "b");
        s.write_persistent_session("a", Some(C2D_ONLY)).unwrap();
        s.write_persistent_session("b", Some(C2D_ONLY)).unwrap();
        // A second write replaces the first.
        s.write_persistent_session("b", Some(ALL)).unwrap();
        // No record for a device that does not exist.
        s.write_persistent_session("ghost", Some(ALL)).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.list_persistent_sessions().unwrap(),
        [("a".to_string(), C2D_ONLY), ("b".to_string(), ALL)]
    );
    // Forgetting one (CleanSession=1) and deleting the other device leave nothing.
    s.write_persistent_session("a", None).unwrap();
    s.delete_device("b", None, &audit("delete")).unwrap();
    assert_eq!(s.list_persistent_sessions().unwrap(), []);
    // A device registered again under a deleted id starts without a session.
    add_device(&s, "b");
    assert_eq!(s.list_persistent_sessions().unwrap(), []);
}

#[test]
fn each_partition_numbers_its_messages_without_gaps_across_batches_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iothub.db");
    let message = |partition: u32, body: &str| message(partition, &format!("d{partition}"), body);
    {
        let s = SqliteStore::open(&path).unwrap();
        let offsets = s
            .append_messages(&[message(0, "a"), message(2, "b"), message(0, "c")])
            .unwrap();
        assert_eq!(offsets, [1, 2, 3]);
    }
    let s = SqliteStore::open(&path).unwrap();
    s.append_messages(&[message(2, "d"), message(0, "e")])
        .unwrap();
    let p0: Vec<(i64, i64, String)> = s
        .read_partition(0, 1, 10)
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.sequence,
                m.offset,
                String::from_utf8(m.message.body).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        p0,
        [(1, 1, "a".into()), (2, 3, "c".into()), (3, 5, "e".into())]
    );
    let p2: Vec<i64> = s
        .read_partition(2, 2, 10)
        .unwrap()
        .iter()
        .map(|m| m.sequence)
        .collect();
    assert_eq!(p2, [2], "from sequence 2 on");
    assert!(s.read_partition(1, 1, 10).unwrap().is_empty());
    assert_eq!(s.partition_ends().unwrap(), [(0, 3), (2, 2)]);
    // Reading by offset still sees every partition, in commit order, with its partition.
    let all = s.read_messages(1, None, 10).unwrap();
    assert_eq!(
        all.iter().map(|m| m.message.partition).collect::<Vec<_>>(),
        [0, 2, 0, 2, 0]
    );
}
