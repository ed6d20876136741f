//! The telemetry log as an Event Hubs reader sees it: partitions by id, their state, and every
//! start position a reader may ask for, over a log written through the telemetry writer.

mod common;

use common::*;
use iothub_hub::telemetry::partition_of;
use iothub_hub::{HubConfig, HubError, StartPosition};
use iothub_store::NewMessage;

fn publish(env: &Env, device: &str, body: &str) -> i64 {
    let rx = env.hub.store_telemetry(NewMessage {
        partition: 0,
        device_id: device.into(),
        module_id: None,
        enqueued: env.now(),
        system_properties: "{}".into(),
        properties: "{}".into(),
        body: body.as_bytes().to_vec(),
    });
    rx.blocking_recv().expect("writer").expect("stored")
}

/// Two devices in the same partition of 2, written at three instants 10 s apart.
fn log() -> (Env, u32, &'static str, &'static str) {
    let env = Env::with(HubConfig {
        partitions: 2,
        ..HubConfig::default()
    });
    let (a, b) = ("sensor-1", "pump");
    let p = partition_of(a, 2);
    assert_eq!(partition_of(b, 2), p, "both devices share a partition");
    publish(&env, a, "a1");
    env.clock.advance(10);
    publish(&env, b, "b1");
    publish(&env, a, "a2");
    env.clock.advance(10);
    publish(&env, a, "a3");
    (env, p, a, b)
}

fn bodies(env: &Env, p: u32, from: i64) -> Vec<String> {
    env.hub
        .read_partition(&sys(), p, from, 100)
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.body).unwrap())
        .collect()
}

#[test]
fn the_event_hub_has_the_hubs_name_and_one_id_per_partition_and_keeps_its_creation_time() {
    let (env, _, _, _) = log();
    let info = env.hub.eventhub_info(&sys()).unwrap();
    assert_eq!(info.name, "iothub");
    assert_eq!(info.partition_ids, ["0", "1"]);
    env.clock.advance(100);
    assert_eq!(
        env.hub.eventhub_info(&sys()).unwrap().created_ms,
        info.created_ms
    );
    assert!(info.created_ms > 0);
}

#[test]
fn partition_ids_are_checked_with_a_precise_error() {
    let (env, _, _, _) = log();
    assert_eq!(env.hub.partition_by_id("1").unwrap(), 1);
    for bad in ["2", "-1", "01", "+1", "", "x", "4294967296"] {
        let err = env.hub.partition_by_id(bad).unwrap_err();
        assert!(
            matches!(&err, HubError::InvalidArgument(m) if m.contains("partitions are 0 to 1")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_partition_reports_its_first_and_last_event() {
    let (env, p, _, _) = log();
    let info = env.hub.partition_info(&sys(), p).unwrap();
    assert_eq!((info.begin_sequence, info.last_sequence), (1, 4));
    assert_eq!(info.last_enqueued_ms, env.now() * 1000);
    assert!(!info.is_empty);
    let other = env.hub.partition_info(&sys(), 1 - p).unwrap();
    assert!(other.is_empty);
    assert_eq!((other.begin_sequence, other.last_sequence), (1, 0));
    assert_eq!(bodies(&env, p, 1), ["a1", "b1", "a2", "a3"]);
}

#[test]
fn every_start_position_names_the_sequence_number_read_first() {
    let (env, p, _, _) = log();
    let start = |pos| env.hub.partition_start(&sys(), p, pos).unwrap();
    let t0 = (env.now() - 20) * 1000;
    assert_eq!(start(StartPosition::Earliest), 1);
    assert_eq!(start(StartPosition::Latest), 5);
    for (sequence, inclusive, first) in [(2, false, 3), (2, true, 2), (0, false, 1), (9, true, 5)] {
        assert_eq!(
            start(StartPosition::Sequence {
                sequence,
                inclusive
            }),
            first,
            "{sequence} {inclusive}"
        );
    }
    for (unix_ms, inclusive, first) in [
        (t0 - 1, false, 1),
        (t0, true, 1),
        (t0, false, 2),
        (t0 + 10_000, true, 2),
        (t0 + 10_000, false, 4),
        (t0 + 15_000, false, 4),
        (t0 + 20_000, false, 5),
    ] {
        assert_eq!(
            start(StartPosition::EnqueuedAt { unix_ms, inclusive }),
            first,
            "{unix_ms} {inclusive}"
        );
    }
    assert_eq!(bodies(&env, p, 4), ["a3"]);
}

#[test]
fn a_policy_without_service_connect_reads_nothing() {
    let (env, p, _, _) = log();
    let reader = principal_of(&env, "registryRead");
    for refused in [
        env.hub.eventhub_info(&reader).map(|_| ()),
        env.hub.partition_info(&reader, p).map(|_| ()),
        env.hub.read_partition(&reader, p, 1, 10).map(|_| ()),
        env.hub
            .partition_start(&reader, p, StartPosition::Earliest)
            .map(|_| ()),
    ] {
        assert!(
            matches!(refused, Err(HubError::Forbidden { right, .. }) if right == "ServiceConnect"),
            "{refused:?}"
        );
    }
}

#[test]
fn consumer_groups_are_added_listed_checked_and_deleted_with_registry_write() {
    let env = Env::with(HubConfig {
        consumer_group_limit: 2,
        ..HubConfig::default()
    });
    let names = |env: &Env| -> Vec<String> {
        env.hub
            .consumer_groups(&sys())
            .unwrap()
            .into_iter()
            .map(|g| g.name)
            .collect()
    };
    assert_eq!(names(&env), ["$Default"]);
    env.hub.check_consumer_group("$Default").unwrap();
    env.hub.check_consumer_group("$default").unwrap();
    env.hub.add_consumer_group(&sys(), "analytics").unwrap();
    env.hub.add_consumer_group(&sys(), "archive.v2").unwrap();
    assert_eq!(names(&env), ["$Default", "analytics", "archive.v2"]);
    env.hub.check_consumer_group("analytics").unwrap();
    for (name, code) in [
        ("analytics", 409055),
        ("$Default", 409055),
        ("third", 403056),
        ("", 400084),
        ("bad name", 400084),
        (&"x".repeat(51), 400084),
    ] {
        let err = env.hub.add_consumer_group(&sys(), name).unwrap_err();
        assert_eq!(err.code().number, code, "{name}: {err}");
    }
    let err = env.hub.check_consumer_group("nobody").unwrap_err();
    assert_eq!(err.code().number, 404054);
    assert!(err.to_string().contains("'nobody'"), "{err}");
    // Changing them needs RegistryWrite; reading them ServiceConnect.
    let service = principal_of(&env, "service");
    assert!(env.hub.consumer_groups(&service).is_ok());
    let err = env.hub.add_consumer_group(&service, "more").unwrap_err();
    assert_eq!(err.code().number, 403001, "{err}");
    let err = env
        .hub
        .delete_consumer_group(&service, "analytics")
        .unwrap_err();
    assert_eq!(err.code().number, 403001, "{err}");
    let err = env
        .hub
        .delete_consumer_group(&sys(), "$Default")
        .unwrap_err();
    assert_eq!(err.code().number, 400084, "{err}");
    env.hub.delete_consumer_group(&sys(), "analytics").unwrap();
    assert_eq!(
        env.hub
            .delete_consumer_group(&sys(), "analytics")
            .unwrap_err()
            .code()
            .number,
        404054
    );
    assert_eq!(names(&env), ["$Default", "archive.v2"]);
}
