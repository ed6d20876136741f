//! Devices over MQTT/TLS with a real, independent client (mosquitto_pub / mosquitto_sub from
//! Debian's mosquitto-clients): telemetry stored byte for byte, cloud-to-device delivery, every
//! refusal with its recorded reason, live trust (a CA deleted under a connected device), topic and
//! QoS violations, durability of acknowledged telemetry across SIGKILL, and the feedback a
//! sender asked for on its cloud-to-device messages (completed by the device, or expired).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Publishes one message as `client` with the certificate `{stem}.pem` and key `{stem}.key`;
/// returns (exit code, stderr).
fn publish(
    hub: &TestHub,
    dir: &Path,
    stem: &str,
    client: &str,
    topic: &str,
    msg: &str,
    qos: &str,
) -> (i32, String) {
    let out = Command::new("mosquitto_pub")
        .current_dir(dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub.mqtt_port.to_string(),
            "--cafile",
        ])
        .arg(hub.data().join("tls/ca.pem"))
        .args([
            "--cert",
            &format!("{stem}.pem"),
            "--key",
            &format!("{stem}.key"),
            "-i",
            client,
        ])
        .args(["-u", &format!("localhost/{client}/?api-version=2021-04-12")])
        .args(["-t", topic, "-m", msg, "-q", qos])
        .output()
        .expect("mosquitto_pub (install mosquitto-clients)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn telemetry_topic(id: &str) -> String {
    format!("devices/{id}/messages/events/")
}

/// The newest recorded refusal reason for `client`.
fn refusal(hub: &TestHub, client: &str) -> String {
    let v = hub.get_json("/connections");
    v["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["clientId"] == client)
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no refusal recorded for {client}: {v}"))
}

fn live(hub: &TestHub) -> Vec<String> {
    hub.get_json("/connections")["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["deviceId"].as_str().unwrap().to_string())
        .collect()
}

/// A hub with a Verified root CA "root" (root.pem/root.key in the hub's directory).
fn hub_with_verified_root() -> TestHub {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    hub
}

fn device_cert(hub: &TestHub, id: &str, ca: &str) {
    ok(&hub.cli_in(
        &hub.dir,
        &[
            "pki",
            "device",
            id,
            "--ca-cert",
            &format!("{ca}.pem"),
            "--ca-key",
            &format!("{ca}.key"),
            "--force",
        ],
    ));
}

#[test]
fn telemetry_and_cloud_to_device_round_trip() {
    let hub = hub_with_verified_root();
    let dir = hub.dir.clone();
    device_cert(&hub, "sensor-1", "root");
    ok(&hub.cli(&["device", "add", "sensor-1", "--auth", "ca"]));
    let topic = "devices/sensor-1/messages/events/%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&a%20b=x%26y&alert=hot%2Fcold";
    let body = r#"{"t":21.5,"note":"é ✓"}"#;
    let (code, err) = publish(&hub, &dir, "sensor-1", "sensor-1", topic, body, "1");
    assert_eq!(code, 0, "{err}");
    let (code, err) = publish(
        &hub,
        &dir,
        "sensor-1",
        "sensor-1",
        &telemetry_topic("sensor-1"),
        "qos0",
        "0",
    );
    assert_eq!(code, 0, "{err}");

    let out = ok(&hub.cli(&[
        "-o",
        "json",
        "monitor",
        "--from",
        "1",
        "--count",
        "2",
        "--timeout",
        "10",
    ]));
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    let first = &events[0];
    assert_eq!(first["deviceId"], "sensor-1");
    assert_eq!(first["body"], body);
    assert_eq!(first["properties"]["a b"], "x&y");
    assert_eq!(first["properties"]["alert"], "hot/cold");
    assert_eq!(first["systemProperties"]["$.mid"], "m1");
    assert_eq!(first["systemProperties"]["$.ct"], "application/json");
    assert_eq!(first["systemProperties"]["$.ce"], "utf-8");
    assert_eq!(events[1]["body"], "qos0");
    assert!(events[1]["offset"].as_i64().unwrap() > first["offset"].as_i64().unwrap());

    // Cloud to device: queued, delivered on subscribe with its properties, then marked delivered.
    ok(&hub.cli(&[
        "c2d",
        "send",
        "sensor-1",
        "reboot at 3",
        "-p",
        "color=red/blue",
        "--message-id",
        "c2d-1",
        "--correlation-id",
        "corr",
    ]));
    let out = take_c2d(&hub, &dir, "sensor-1", 1);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line.starts_with("devices/sensor-1/messages/devicebound/"),
        "{line}"
    );
    assert!(line.contains("%24.mid=c2d-1"), "{line}");
    assert!(line.contains("%24.cid=corr"), "{line}");
    assert!(line.contains("color=red%2Fblue"), "{line}");
    assert!(line.trim_end().ends_with(" reboot at 3"), "{line}");
    // The PUBACK is processed asynchronously after mosquitto_sub exits: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Value =
            serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", "sensor-1"])))
                .unwrap();
        if v["value"][0]["state"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "not marked delivered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let d: Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "device", "show", "sensor-1"]))).unwrap();
    assert_ne!(d["lastActivityTime"], "0001-01-01T00:00:00Z");
}

/// The feedback route's answer to the owner: status, ETag (the lock token), body.
fn feedback_get(hub: &TestHub) -> (u16, Option<String>, String, Option<String>) {
    let resp = hub
        .client()
        .get(format!(
            "{}/messages/serviceBound/feedback?api-version=2021-04-12",
            hub.base()
        ))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (etag, content_type) = (header("etag"), header("content-type"));
    (
        resp.status().as_u16(),
        etag,
        resp.text().unwrap(),
        content_type,
    )
}

fn feedback_settle(hub: &TestHub, token: &str, abandon: bool) -> (u16, Value) {
    let url = format!("{}/messages/serviceBound/feedback/{token}", hub.base());
    let req = if abandon {
        hub.client().post(format!("{url}/abandon"))
    } else {
        hub.client().delete(url)
    };
    let resp = req
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn feedback_reports_what_each_sender_asked_for() {
    let hub = hub_with_verified_root();
    let dir = hub.dir.clone();
    device_cert(&hub, "valve", "root");
    ok(&hub.cli(&["device", "add", "valve", "--auth", "ca"]));
    assert_eq!(feedback_get(&hub).0, 204, "nothing yet");
    for (id, ack) in [
        ("fb-full", "full"),
        ("fb-none", "none"),
        ("fb-neg", "negative"),
    ] {
        ok(&hub.cli(&["c2d", "send", "valve", id, "--message-id", id, "--ack", ack]));
    }
    let refused = hub.cli(&["c2d", "send", "valve", "x", "--ack", "always"]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        err.contains("ack 'always' is not one of none, positive, negative, full"),
        "{err}"
    );

    // The device takes all three; it sees the ack it was sent with.
    let out = take_c2d(&hub, &dir, "valve", 3);
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{lines}");
    assert!(lines.contains("iothub-ack=full"), "{lines}");
    wait_until("three deliveries", Duration::from_secs(5), || {
        let v: Value =
            serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", "valve"]))).unwrap();
        items_in(&v["value"])
            .iter()
            .all(|m| m["state"] == "delivered")
    });

    // Expired undelivered (the device is gone): only negative and full senders hear of it.
    for (id, ack) in [("late-pos", "positive"), ("late-full", "full")] {
        ok(&hub.cli(&[
            "c2d",
            "send",
            "valve",
            id,
            "--message-id",
            id,
            "--ack",
            ack,
            "--ttl",
            "1",
        ]));
    }
    std::thread::sleep(Duration::from_millis(2100));

    let (status, etag, body, content_type) = feedback_get(&hub);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/vnd.microsoft.iothub.feedback.json")
    );
    let records: Vec<Value> = serde_json::from_str(&body).unwrap();
    let seen: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["originalMessageId"].as_str().unwrap(),
                r["statusCode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("fb-full", "Success"), ("late-full", "Expired")],
        "{body}"
    );
    assert_eq!(records[0]["deviceId"], "valve");
    assert_eq!(records[0]["description"], "Success");
    assert_eq!(records[1]["description"], "Message expired");
    assert!(records[0]["deviceGenerationId"]
        .as_str()
        .is_some_and(|g| !g.is_empty()));
    assert!(records[0]["enqueuedTimeUtc"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let token = etag.unwrap().trim_matches('"').to_string();

    // Locked: not handed out again; abandoned: handed out again; completed: gone.
    assert_eq!(feedback_get(&hub).0, 204);
    assert_eq!(feedback_settle(&hub, &token, true).0, 204);
    let (status, again, _, _) = feedback_get(&hub);
    assert_eq!(status, 200);
    let again = again.unwrap();
    assert_ne!(again.trim_matches('"'), token);
    // The token goes back as the client got it, quotes and all (percent-encoded in the path).
    assert_eq!(
        feedback_settle(&hub, &again.replace('"', "%22"), false).0,
        204
    );
    assert_eq!(feedback_get(&hub).0, 204);
    let (status, refusal) = feedback_settle(&hub, &token, false);
    assert_eq!(status, 412, "{refusal}");
    assert_eq!(refusal["code"], "412003", "{refusal}");
    assert_eq!(refusal["errorName"], "FeedbackLockLost", "{refusal}");

    // The CLI: shown once, then completed.
    ok(&hub.cli(&[
        "c2d",
        "send",
        "valve",
        "last",
        "--message-id",
        "last",
        "--ack",
        "negative",
        "--ttl",
        "1",
    ]));
    std::thread::sleep(Duration::from_millis(1100));
    let kept = ok(&hub.cli(&["c2d", "feedback", "--keep"]));
    assert!(kept.contains("last") && kept.contains("Expired"), "{kept}");
    let shown = ok(&hub.cli(&["-o", "json", "c2d", "feedback"]));
    let v: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v[0]["originalMessageId"], "last", "{shown}");
    assert!(ok(&hub.cli(&["c2d", "feedback"])).contains("no feedback waiting"));
}

fn items_in(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn every_refusal_is_recorded_with_its_reason() {
    let hub = hub_with_verified_root();
    let dir = hub.dir.clone();
    let cli = |args: &[&str]| ok(&hub.cli_in(&dir, args));
    let refused = |cert: &str, client: &str, want: &str| {
        let (code, err) = publish(&hub, &dir, cert, client, &telemetry_topic(client), "x", "1");
        assert_ne!(code, 0, "{client} was admitted");
        assert!(
            err.contains("not authorised"),
            "expected CONNACK 5, got: {err}"
        );
        let reason = refusal(&hub, client);
        assert!(
            reason.contains(want),
            "{client}: expected '{want}' in '{reason}'"
        );
    };

    // Not registered at all.
    device_cert(&hub, "ghost", "root");
    refused("ghost", "ghost", "device 'ghost' is not registered");

    // A CA the hub does not know.
    cli(&["pki", "ca", "stranger"]);
    device_cert(&hub, "d-stranger", "stranger");
    cli(&["device", "add", "d-stranger"]);
    refused(
        "d-stranger",
        "d-stranger",
        "no registered CA issued 'CN=stranger'",
    );

    // A registered but Unverified CA.
    cli(&["pki", "ca", "unver"]);
    cli(&["cert", "add", "unver", "unver.pem"]);
    device_cert(&hub, "d-unver", "unver");
    cli(&["device", "add", "d-unver"]);
    refused(
        "d-unver",
        "d-unver",
        "chain ends at 'CN=unver' (certificate 'unver') which is Unverified",
    );

    // Leaf CN differs from the client id.
    device_cert(&hub, "sensor-l", "root");
    cli(&["device", "add", "sensor-1"]);
    refused(
        "sensor-l",
        "sensor-1",
        "leaf CN 'sensor-l' is not the client id 'sensor-1'",
    );

    // Registered with another authentication type.
    device_cert(&hub, "d-sas", "root");
    cli(&["device", "add", "d-sas", "--auth", "sas"]);
    refused(
        "d-sas",
        "d-sas",
        "authenticates with sas but sent no SAS token",
    );

    // Disabled.
    device_cert(&hub, "d-off", "root");
    cli(&["device", "add", "d-off", "--disabled"]);
    refused("d-off", "d-off", "device 'd-off' is disabled");

    // Expired leaf (made in-process: validity entirely in the past).
    let issuer = iothub_pki::gen::CaIssuer::from_pem(
        &std::fs::read_to_string(dir.join("root.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("root.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = iothub_pki::gen::make_leaf(
        "d-old",
        iothub_pki::gen::KeyKind::EcP256,
        &issuer,
        &[],
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    std::fs::write(dir.join("d-old.pem"), &old.cert_pem).unwrap();
    std::fs::write(dir.join("d-old.key"), &old.key_pem).unwrap();
    cli(&["device", "add", "d-old"]);
    refused("d-old", "d-old", "expired");

    // Chain missing its intermediate: root is registered, the device is signed by an intermediate.
    cli(&["pki", "ca", "inter", "--parent", "root"]);
    device_cert(&hub, "d-inter", "inter");
    cli(&["device", "add", "d-inter"]);
    let full = std::fs::read_to_string(dir.join("d-inter.pem")).unwrap();
    let leaf_only: String = full
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("d-inter-leaf.pem"), leaf_only).unwrap();
    std::fs::copy(dir.join("d-inter.key"), dir.join("d-inter-leaf.key")).unwrap();
    refused("d-inter-leaf", "d-inter", "no registered CA issued 'CN=inter'; if 'CN=inter' is an intermediate CA, send it in the chain");
    // ... and with the intermediate in the chain it is admitted.
    let (code, err) = publish(
        &hub,
        &dir,
        "d-inter",
        "d-inter",
        &telemetry_topic("d-inter"),
        "x",
        "1",
    );
    assert_eq!(code, 0, "{err}");

    // A CA whose subject copies the verified root's subject, with another key.
    std::fs::create_dir_all(dir.join("fake")).unwrap();
    cli(&["pki", "ca", "root", "--out-dir", "fake"]);
    cli(&[
        "pki",
        "device",
        "d-fake",
        "--ca-cert",
        "fake/root.pem",
        "--ca-key",
        "fake/root.key",
    ]);
    cli(&["device", "add", "d-fake"]);
    refused("d-fake", "d-fake", "was not signed with its key");

    // Publishing under another device's id, and QoS 2, close the session with the reason.
    device_cert(&hub, "good", "root");
    cli(&["device", "add", "good"]);
    let (_, _) = publish(
        &hub,
        &dir,
        "good",
        "good",
        &telemetry_topic("other"),
        "x",
        "1",
    );
    let reason = refusal(&hub, "good");
    assert!(
        reason.contains("may not publish") || reason.contains("own id"),
        "{reason}"
    );
    let (_, _) = publish(
        &hub,
        &dir,
        "good",
        "good",
        &telemetry_topic("good"),
        "x",
        "2",
    );
    let reason = refusal(&hub, "good");
    assert!(reason.contains("QoS 2"), "{reason}");

    // The device record shows its last refusal.
    let d: Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "device", "show", "d-off"]))).unwrap();
    assert!(
        d["lastRefusal"].as_str().unwrap().contains("disabled"),
        "{d}"
    );
}

/// mosquitto_sub connected as device `id` (certificate `{id}.pem` in `dir`), subscribed to its
/// cloud-to-device messages at QoS 1.
fn c2d_subscriber(hub: &TestHub, dir: &Path, id: &str) -> Command {
    let mut command = Command::new("mosquitto_sub");
    command
        .current_dir(dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub.mqtt_port.to_string(),
            "--cafile",
        ])
        .arg(hub.data().join("tls/ca.pem"))
        .args([
            "--cert",
            &format!("{id}.pem"),
            "--key",
            &format!("{id}.key"),
        ])
        .args([
            "-i",
            id,
            "-u",
            &format!("localhost/{id}/?api-version=2021-04-12"),
        ])
        .args([
            "-t",
            &format!("devices/{id}/messages/devicebound/#"),
            "-q",
            "1",
        ]);
    command
}

/// Takes `count` cloud-to-device messages as device `id` (acknowledging each), prints them with
/// their topics, and exits.
fn take_c2d(hub: &TestHub, dir: &Path, id: &str, count: u32) -> std::process::Output {
    c2d_subscriber(hub, dir, id)
        .args(["-C", &count.to_string(), "-v", "-W", "10"])
        .output()
        .unwrap()
}

/// Starts mosquitto_sub as a long-lived connected device; returns the child.
fn subscriber(hub: &TestHub, dir: &Path, id: &str) -> std::process::Child {
    c2d_subscriber(hub, dir, id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn trust_and_device_changes_close_live_sessions_within_a_second() {
    let hub = hub_with_verified_root();
    let dir = hub.dir.clone();
    device_cert(&hub, "live-1", "root");
    device_cert(&hub, "live-2", "root");
    ok(&hub.cli(&["device", "add", "live-1"]));
    ok(&hub.cli(&["device", "add", "live-2"]));

    // Disabling a device closes its session.
    let mut sub = subscriber(&hub, &dir, "live-2");
    wait_until("live-2 connects", Duration::from_secs(10), || {
        live(&hub).contains(&"live-2".to_string())
    });
    let t = Instant::now();
    ok(&hub.cli(&["device", "disable", "live-2"]));
    wait_until("live-2 is closed", Duration::from_secs(1), || {
        !live(&hub).contains(&"live-2".to_string())
    });
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(refusal(&hub, "live-2").contains("disabled"));
    let _ = sub.kill();
    let _ = sub.wait();

    // Deleting the CA closes the session, and the next connection is refused.
    let mut sub = subscriber(&hub, &dir, "live-1");
    wait_until("live-1 connects", Duration::from_secs(10), || {
        live(&hub).contains(&"live-1".to_string())
    });
    let t = Instant::now();
    ok(&hub.cli(&["cert", "delete", "root"]));
    let took = wait_until("live-1 is closed", Duration::from_secs(1), || {
        !live(&hub).contains(&"live-1".to_string())
    });
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed after {took:?}"
    );
    let _ = sub.kill();
    let _ = sub.wait();
    let (code, _) = publish(
        &hub,
        &dir,
        "live-1",
        "live-1",
        &telemetry_topic("live-1"),
        "x",
        "1",
    );
    assert_ne!(code, 0);
    assert!(refusal(&hub, "live-1").contains("no registered CA issued 'CN=root'"));
}

#[test]
fn acknowledged_telemetry_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    let dir = tmp.path().to_path_buf();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "device",
            "streamer",
            "--ca-cert",
            "root.pem",
            "--ca-key",
            "root.key",
        ],
    ));
    ok(&hub.cli_in(&dir, &["device", "add", "streamer"]));

    // One connection publishing lines from stdin at QoS 1; -d prints each PUBACK's message id,
    // which mosquitto assigns in order (mid k carries line k).
    let mut publisher = Command::new("mosquitto_pub")
        .current_dir(&dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub.mqtt_port.to_string(),
            "--cafile",
        ])
        .arg(hub.data().join("tls/ca.pem"))
        .args([
            "--cert",
            "streamer.pem",
            "--key",
            "streamer.key",
            "-i",
            "streamer",
        ])
        .args(["-u", "localhost/streamer/?api-version=2021-04-12"])
        .args([
            "-t",
            "devices/streamer/messages/events/",
            "-q",
            "1",
            "-l",
            "-d",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    let stdout = publisher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("received PUBACK (Mid: ").nth(1) {
                if let Ok(mid) = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
                    .parse::<u32>()
                {
                    let _ = tx.send(mid);
                }
            }
        }
    });
    let writer = std::thread::spawn(move || {
        for i in 1..=5000u32 {
            if writeln!(stdin, "msg-{i}").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "too few PUBACKs: {}",
            acked.len()
        );
        if let Ok(mid) = rx.recv_timeout(Duration::from_secs(1)) {
            acked.push(mid);
        }
    }
    hub.kill9();
    // Collect PUBACKs that arrived before the kill took effect.
    while let Ok(mid) = rx.recv_timeout(Duration::from_millis(300)) {
        acked.push(mid);
    }
    let _ = publisher.kill();
    let _ = publisher.wait();
    let _ = writer.join();

    let hub = TestHub::start_in(tmp.path(), &[]);
    let mut stored = std::collections::HashSet::new();
    let mut from = 1;
    loop {
        let v = hub.get_json(&format!("/messages?from={from}&limit=1000"));
        let batch = v["value"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            stored.insert(m["body"].as_str().unwrap().to_string());
        }
        from = v["nextOffset"].as_i64().unwrap();
    }
    for mid in &acked {
        assert!(
            stored.contains(&format!("msg-{mid}")),
            "PUBACKed msg-{mid} was lost ({} acked, {} stored)",
            acked.len(),
            stored.len()
        );
    }
}
