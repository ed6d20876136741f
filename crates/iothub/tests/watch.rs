//! `--metrics` (Prometheus text on plain HTTP, /healthz, /readyz) and `--log-format json`,
//! against the real binary: a refused and an accepted CONNECT and a QoS 1 message must show in
//! the counters.

mod common;

use common::*;

/// The value of the sample named exactly `series` (name and labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `/readyz` until it answers 200: the listeners' tasks start just after the hub prints its
/// addresses, so a probe right then may still see 503 (as a supervisor's first probe may).
fn wait_ready(hub: &TestHub) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = hub.metrics_get("/readyz");
        if status == 200 {
            assert_eq!(body.trim(), "ready");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_connects_refusals_and_telemetry() {
    let hub = TestHub::start(&["--metrics", "127.0.0.1:0"]);
    verified_root_with_devices(&hub, &["dev1"]);
    let dir = hub.dir.clone();

    // Refused: a registered device's certificate under an id nobody registered.
    let (_, code) =
        RawDevice::connect(&hub, &dir.join("dev1.pem"), &dir.join("dev1.key"), "ghost").unwrap();
    assert_ne!(code, 0);
    // Accepted, then one QoS 1 message of 5 bytes and a C2D message queued.
    let (mut device, code) =
        RawDevice::connect(&hub, &dir.join("dev1.pem"), &dir.join("dev1.key"), "dev1").unwrap();
    assert_eq!(code, 0);
    device
        .publish("devices/dev1/messages/events/", b"hello", 1)
        .unwrap();
    ok(&hub.cli(&["c2d", "send", "dev1", "hi", "--message-id", "m1"]));

    let (status, text) = hub.metrics_get("/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for (series, want) in [
        ("iothub_connected_devices", 1.0),
        ("iothub_connects_total{result=\"accepted\"}", 1.0),
        ("iothub_connects_total{result=\"refused\"}", 1.0),
        (
            "iothub_connect_refusals_total{reason=\"unknown_device\"}",
            1.0,
        ),
        (
            "iothub_connect_refusals_total{reason=\"unverified_ca\"}",
            0.0,
        ),
        ("iothub_telemetry_messages_total", 1.0),
        ("iothub_telemetry_bytes_total", 5.0),
        ("iothub_c2d_queued_total", 1.0),
        ("iothub_cas{state=\"verified\"}", 1.0),
        ("iothub_cas{state=\"unverified\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    // One rebuild at start, one per CA change (add, prove).
    assert!(
        sample(&text, "iothub_trust_rebuilds_total").unwrap() >= 3.0,
        "{text}"
    );
    // Counts only: no device id or key is ever served here.
    assert!(!text.contains("dev1") && !text.contains("ghost"), "{text}");

    assert_eq!(hub.metrics_get("/healthz").0, 200);
    wait_ready(&hub);

    // The C2D message delivered and acknowledged: counted once the hub has marked it.
    use iothub_mqtt::codec::{Packet, Subscribe};
    device
        .send(&Packet::Subscribe(Subscribe {
            pkid: 2,
            filters: vec![("devices/dev1/messages/devicebound/#".into(), 1)],
        }))
        .unwrap();
    let delivery = loop {
        match device.recv().unwrap() {
            Packet::Publish(p) => break p,
            Packet::SubAck(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(&delivery.payload[..], b"hi");
    device.send(&Packet::PubAck(delivery.pkid)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, text) = hub.metrics_get("/metrics");
        if sample(&text, "iothub_c2d_delivered_total") == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    device.disconnect();
}

#[test]
fn readyz_says_why_when_the_store_cannot_be_read() {
    let hub = TestHub::start(&["--metrics", "127.0.0.1:0"]);
    wait_ready(&hub);
    // Corrupt the database under the running hub: every page overwritten, the WAL emptied.
    let db = hub.data().join("iothub.db");
    let len = std::fs::metadata(&db).unwrap().len().max(8192) as usize;
    std::fs::write(&db, vec![0x5a; len]).unwrap();
    let _ = std::fs::write(hub.data().join("iothub.db-wal"), b"");
    // The shared-memory WAL index zeroed too, so the next read cannot trust what it remembered.
    let shm = hub.data().join("iothub.db-shm");
    if let Ok(meta) = std::fs::metadata(&shm) {
        std::fs::write(&shm, vec![0; meta.len() as usize]).unwrap();
    }
    let (status, body) = hub.metrics_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    // The process still serves.
    assert_eq!(hub.metrics_get("/healthz").0, 200);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let hub = TestHub::start_logged(&["--log-format", "json"]);
    // A refused request logs something besides the start line.
    let _ = hub
        .client()
        .get(format!("{}/devices", hub.base()))
        .send()
        .unwrap();
    let log = hub.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_object() && v["level"].is_string(), "{line}");
    }
}

#[test]
fn the_default_is_text_and_metrics_off_in_tests() {
    let hub = TestHub::start_logged(&[]);
    assert_eq!(hub.metrics_port, None);
    assert!(!hub
        .first_stdout
        .iter()
        .any(|l| l.contains("metrics listening")));
    assert!(hub.log_text().lines().all(|l| !l.starts_with('{')));
}
