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
        // Neither device was in memory yet; the admitted one is now.
        ("iothub_device_cache_lookups_total{result=\"miss\"}", 2.0),
        ("iothub_device_cache_lookups_total{result=\"hit\"}", 0.0),
        ("iothub_device_cache_entries", 1.0),
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

/// Polls `/metrics` until `series` reads `want` (counters the hub bumps after answering).
fn wait_for_sample(hub: &TestHub, series: &str, want: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, text) = hub.metrics_get("/metrics");
        if sample(&text, series) == Some(want) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_tls_failures_methods_twins_expiry_and_commit_latency() {
    use iothub_mqtt::codec::{Packet, Publish, Subscribe};
    use std::io::Write;
    let hub = TestHub::start(&["--metrics", "127.0.0.1:0"]);
    verified_root_with_devices(&hub, &["pump"]);
    let dir = hub.dir.clone();

    // Not TLS at all: a failed handshake.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", hub.mqtt_port)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    wait_for_sample(&hub, "iothub_tls_handshake_failures_total", 1.0);

    // A direct method to a device with no session: not online.
    assert!(!hub
        .cli(&["method", "invoke", "pump", "reboot", "--timeout", "5"])
        .status
        .success());
    let (mut d, code) =
        RawDevice::connect(&hub, &dir.join("pump.pem"), &dir.join("pump.key"), "pump").unwrap();
    assert_eq!(code, 0);
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("$iothub/methods/POST/#".into(), 0)],
    }))
    .unwrap();
    assert!(matches!(d.recv().unwrap(), Packet::SubAck(_)));
    // Answered once, then left unanswered until the call times out (5 s, the hub's least).
    let answering = std::thread::spawn(move || {
        let Packet::Publish(p) = d.recv().unwrap() else {
            panic!("expected the method request");
        };
        let rid = p.topic.split("$rid=").nth(1).unwrap().to_string();
        d.send(&Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: format!("$iothub/methods/res/200/?$rid={rid}"),
            pkid: 0,
            payload: b"{}".to_vec().into(),
        }))
        .unwrap();
        d
    });
    ok(&hub.cli(&["method", "invoke", "pump", "ping", "--timeout", "10"]));
    let mut d = answering.join().unwrap();
    assert!(!hub
        .cli(&["method", "invoke", "pump", "ping", "--timeout", "5"])
        .status
        .success());
    // The unanswered request, read off the connection.
    assert!(matches!(d.recv().unwrap(), Packet::Publish(_)));
    let text = wait_for_sample(&hub, "iothub_method_calls_total{result=\"timed_out\"}", 1.0);
    for (series, want) in [
        ("iothub_method_calls_total{result=\"answered\"}", 1.0),
        ("iothub_method_calls_total{result=\"not_online\"}", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }

    // One desired update through the API, one reported patch from the device.
    ok(&hub.cli(&["twin", "update", "pump", "--desired", r#"{"rate":5}"#]));
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: "$iothub/twin/PATCH/properties/reported/?$rid=7".into(),
        pkid: 0,
        payload: br#"{"rate":5}"#.to_vec().into(),
    }))
    .unwrap();
    match d.recv().unwrap() {
        Packet::Publish(p) => assert!(p.topic.starts_with("$iothub/twin/res/204/"), "{p:?}"),
        other => panic!("expected the twin response, got {other:?}"),
    }
    wait_for_sample(&hub, "iothub_twin_updates_total{side=\"reported\"}", 1.0);
    // A QoS 1 message: one commit observed.
    d.publish("devices/pump/messages/events/", b"x", 1).unwrap();
    // A C2D message that expires before anyone takes it.
    ok(&hub.cli(&["c2d", "send", "pump", "late", "--ttl", "1"]));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    ok(&hub.cli(&["c2d", "list", "pump"]));
    let text = wait_for_sample(&hub, "iothub_c2d_expired_total", 1.0);
    for (series, want) in [
        ("iothub_twin_updates_total{side=\"desired\"}", 1.0),
        ("iothub_telemetry_commit_seconds_count", 1.0),
        ("iothub_telemetry_commit_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("iothub_store_errors_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(sample(&text, "iothub_trust_rebuild_seconds_count").unwrap() >= 3.0);
    // The test root is valid for years: its expiry is days away, not past.
    let left = sample(&text, "iothub_ca_expiry_seconds").expect("ca expiry");
    assert!(left > 86_400.0 * 30.0, "{left}");
    d.disconnect();
}

#[test]
fn readyz_says_why_when_the_store_cannot_be_read() {
    // SQLite's file is what this test breaks, whatever store the other suites run on.
    let hub = TestHub::start(&["--metrics", "127.0.0.1:0", "--store", "sqlite"]);
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

/// Every metric the Grafana dashboard (docs/grafana-dashboard.json) queries is one the hub
/// exports, with the suffixes its type gives it, after real activity: the dashboard cannot drift
/// from the code. Each panel's queries are read from the JSON, not listed here.
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_hub_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let hub = TestHub::start(&["--metrics", "127.0.0.1:0"]);
    verified_root_with_devices(&hub, &["dash"]);
    let dir = hub.dir.clone();
    let (mut d, code) =
        RawDevice::connect(&hub, &dir.join("dash.pem"), &dir.join("dash.key"), "dash").unwrap();
    assert_eq!(code, 0);
    d.publish("devices/dash/messages/events/", b"x", 1).unwrap();
    let (_, text) = hub.metrics_get("/metrics");
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut queried = 0;
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("iothub_"))
                .collect();
            assert!(
                !names.is_empty(),
                "panel {} queries no iothub metric: {expr}",
                panel["title"]
            );
            for name in names {
                queried += 1;
                assert!(
                    exported.contains(name),
                    "panel {} queries {name}, which /metrics does not export:\n{text}",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried} metric references");
    d.disconnect();
}
