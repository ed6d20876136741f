//! Pipelined QoS 1 telemetry: a session reads on while earlier messages are being committed, yet
//! every PUBACK still goes out only once its message is durable, and in the order the PUBLISHes
//! came (MQTT-4.6.0-2), also across kinds (a twin request after telemetry is answered after the
//! telemetry's PUBACKs). `--max-unacked-telemetry` bounds the pipeline and is range-checked.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Packet, Publish, Subscribe};

fn device(hub: &TestHub, id: &str) -> RawDevice {
    let (d, code) = RawDevice::connect(
        hub,
        &hub.dir.join(format!("{id}.pem")),
        &hub.dir.join(format!("{id}.key")),
        id,
    )
    .unwrap();
    assert_eq!(code, 0, "{id} refused");
    d
}

/// Sends a QoS 1 PUBLISH without waiting for its PUBACK.
fn publish_nowait(d: &mut RawDevice, topic: &str, payload: &str, pkid: u16) {
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: payload.as_bytes().to_vec().into(),
    }))
    .unwrap_or_else(|e| panic!("PUBLISH {pkid} could not be sent: {e}"));
}

/// Sends telemetry `pkids` (payload `{prefix}{pkid}`) back to back, reading nothing.
fn send_telemetry(d: &mut RawDevice, id: &str, prefix: &str, pkids: std::ops::RangeInclusive<u16>) {
    let topic = format!("devices/{id}/messages/events/");
    for pkid in pkids {
        publish_nowait(d, &topic, &format!("{prefix}{pkid}"), pkid);
    }
}

/// Reads `n` packets, each of which must be a PUBACK; their packet ids in arrival order.
fn read_acks(d: &mut RawDevice, n: usize) -> Vec<u16> {
    let mut acks = Vec::with_capacity(n);
    while acks.len() < n {
        match d.recv() {
            Ok(Packet::PubAck(id)) => acks.push(id),
            Ok(other) => panic!("after {} PUBACKs, got {other:?}", acks.len()),
            Err(e) => panic!("after {} PUBACKs: {e}", acks.len()),
        }
    }
    acks
}

/// A PINGREQ answered by the very next packet: nothing else (no extra PUBACK) was pending.
fn nothing_else_pending(d: &mut RawDevice) {
    d.send(&Packet::PingReq).unwrap();
    assert_eq!(d.recv().unwrap(), Packet::PingResp);
}

/// Every stored message of `id` (body and offset), oldest first, read through the API.
fn stored(hub: &TestHub, id: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let v: serde_json::Value = hub
            .client()
            .get(format!(
                "{}/messages?from={from}&deviceId={id}&limit=1000",
                hub.base()
            ))
            .header("Authorization", hub.owner_token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let page = v["value"].as_array().unwrap();
        if page.is_empty() {
            return out;
        }
        for m in page {
            out.push((
                m["body"].as_str().unwrap_or_default().to_string(),
                m["offset"].as_i64().unwrap(),
            ));
        }
        from = v["nextOffset"].as_i64().unwrap();
    }
}

/// 500 un-waited QoS 1 messages: exactly 500 PUBACKs, in order, then all 500 stored in order.
fn five_hundred_in_order(extra: &[&str]) {
    let hub = TestHub::start(extra);
    verified_root_with_devices(&hub, &["burst"]);
    let mut d = device(&hub, "burst");
    send_telemetry(&mut d, "burst", "m", 1..=500);
    let acks = read_acks(&mut d, 500);
    let expected: Vec<u16> = (1..=500).collect();
    if acks != expected {
        let first_wrong = acks.iter().zip(&expected).position(|(a, e)| a != e);
        panic!("PUBACKs out of order (first difference at index {first_wrong:?}): {acks:?}");
    }
    nothing_else_pending(&mut d);
    d.disconnect();
    let messages = stored(&hub, "burst");
    let bodies: Vec<&str> = messages.iter().map(|(b, _)| b.as_str()).collect();
    let sent: Vec<String> = (1..=500).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, sent, "stored messages");
    assert!(
        messages.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets not increasing"
    );
}

#[test]
fn five_hundred_unwaited_messages_get_their_pubacks_in_order_and_are_all_stored() {
    five_hundred_in_order(&[]);
}

#[test]
fn a_pipeline_of_one_still_works_in_order() {
    five_hundred_in_order(&["--max-unacked-telemetry", "1"]);
}

#[test]
fn a_twin_request_after_telemetry_is_answered_after_every_telemetry_puback() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["twinned"]);
    let mut d = device(&hub, "twinned");
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1000,
        filters: vec![("$iothub/twin/res/#".into(), 0)],
    }))
    .unwrap();
    match d.recv().unwrap() {
        Packet::SubAck(a) => assert_eq!(a.pkid, 1000, "{a:?}"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // QoS 1 twin GET (pkid 101) after telemetry 1..=100; then QoS 0 (rid 2) after 102..=201.
    for (qos, rid, first) in [(1u8, 1, 1u16), (0, 2, 102)] {
        let last = first + 99;
        send_telemetry(&mut d, "twinned", "t", first..=last);
        d.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: format!("$iothub/twin/GET/?$rid={rid}"),
            pkid: if qos == 1 { last + 1 } else { 0 },
            payload: Vec::new().into(),
        }))
        .unwrap();
        let mut seen = Vec::new();
        let response = loop {
            match d.recv() {
                Ok(Packet::PubAck(id)) => seen.push(id),
                Ok(Packet::Publish(p)) if p.topic.starts_with("$iothub/twin/res/") => break p,
                Ok(other) => panic!("unexpected {other:?} after PUBACKs {seen:?}"),
                Err(e) => panic!("{e} after PUBACKs {seen:?}"),
            }
        };
        assert_eq!(
            response.topic,
            format!("$iothub/twin/res/200/?$rid={rid}"),
            "twin response"
        );
        let mut expected: Vec<u16> = (first..=last).collect();
        if qos == 1 {
            expected.push(last + 1); // the twin GET's own PUBACK, after the telemetry's
        }
        assert_eq!(
            seen, expected,
            "PUBACKs before the twin response (QoS {qos} GET)"
        );
        nothing_else_pending(&mut d);
    }
    d.disconnect();
    assert_eq!(stored(&hub, "twinned").len(), 200);
}

/// Runs `iothub serve` with `args` (and `env`) and expects it to exit with a failure quickly;
/// returns its stderr.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args(["serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .args(["--metrics", "off"])
        .args(args)
        .envs(env.iter().copied())
        .env("IOTHUB_LOG", "error")
        .env_remove("IOTHUB_CONNECTION_STRING")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iothub serve {args:?} {env:?} did not exit: it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{args:?} {env:?}: {status:?}\n{stderr}");
    stderr
}

#[test]
fn the_pipeline_bound_is_range_checked_at_startup() {
    for bad in ["0", "10001"] {
        let stderr = serve_fails(&["--max-unacked-telemetry", bad], &[]);
        assert!(
            stderr.contains("--max-unacked-telemetry")
                && stderr.contains(bad)
                && stderr.contains("1 to 10000"),
            "--max-unacked-telemetry {bad}: {stderr}"
        );
    }
    let stderr = serve_fails(&[], &[("IOTHUB_MAX_UNACKED_TELEMETRY", "0")]);
    assert!(
        stderr.contains("--max-unacked-telemetry") && stderr.contains("1 to 10000"),
        "IOTHUB_MAX_UNACKED_TELEMETRY=0: {stderr}"
    );
    // The bounds themselves are accepted.
    let hub = TestHub::start(&["--max-unacked-telemetry", "10000"]);
    verified_root_with_devices(&hub, &["edge"]);
    let mut d = device(&hub, "edge");
    send_telemetry(&mut d, "edge", "e", 1..=10);
    assert_eq!(read_acks(&mut d, 10), (1..=10).collect::<Vec<u16>>());
}

#[test]
fn every_acknowledged_message_survives_a_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    verified_root_with_devices(&hub, &["crashy"]);
    let mut d = device(&hub, "crashy");
    // About 1 KiB each, so that commits take a while and the kill lands mid-stream.
    let pad = "x".repeat(1000);
    for pkid in 1..=300u16 {
        publish_nowait(
            &mut d,
            "devices/crashy/messages/events/",
            &format!("k{pkid} {pad}"),
            pkid,
        );
    }
    // Collect PUBACKs for a while (not necessarily all), then kill the hub outright.
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while acks.len() < 150 && Instant::now() < deadline {
        match d.recv() {
            Ok(Packet::PubAck(id)) => acks.push(id),
            Ok(other) => panic!("after {} PUBACKs, got {other:?}", acks.len()),
            Err(e) => panic!("after {} PUBACKs: {e}", acks.len()),
        }
    }
    hub.kill9();
    drop(hub);
    assert!(!acks.is_empty(), "no PUBACK within 5 s");
    let in_order: Vec<u16> = (1..=acks.len() as u16).collect();
    assert_eq!(acks, in_order, "PUBACKs out of order");
    let hub = TestHub::start_in(tmp.path(), &[]);
    let bodies: Vec<String> = stored(&hub, "crashy")
        .into_iter()
        .map(|(b, _)| b.split(' ').next().unwrap_or_default().to_string())
        .collect();
    for pkid in &acks {
        assert!(
            bodies.contains(&format!("k{pkid}")),
            "message {pkid} was acknowledged before the kill but is not stored; stored: {bodies:?}"
        );
    }
    // What is stored is what was sent, in order, from the first message on (a crash can only
    // cut off a tail of the unacknowledged ones).
    let sent: Vec<String> = (1..=bodies.len()).map(|i| format!("k{i}")).collect();
    assert_eq!(bodies, sent, "stored after the restart");
    eprintln!(
        "acknowledged before the kill: {}; stored after the restart: {}",
        acks.len(),
        bodies.len()
    );
}

/// Every stored message of `id` as the API renders it, oldest first.
fn stored_json(hub: &TestHub, id: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = hub
        .client()
        .get(format!(
            "{}/messages?from=1&deviceId={id}&limit=1000",
            hub.base()
        ))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["value"].as_array().unwrap().clone()
}

/// Connects `id` with a Will on its own telemetry topic.
fn device_with_will(hub: &TestHub, id: &str, will_payload: &str) -> RawDevice {
    let config = client_config(
        hub,
        &hub.dir.join(format!("{id}.pem")),
        &hub.dir.join(format!("{id}.key")),
    )
    .unwrap();
    let connect = iothub_mqtt::codec::Connect {
        protocol_level: 4,
        client_id: id.into(),
        clean_session: true,
        keep_alive: 60,
        username: Some(format!("localhost/{id}/?api-version=2021-04-12")),
        password: None,
        will: Some(iothub_mqtt::codec::Will {
            topic: format!("devices/{id}/messages/events/%24.ct=text%2Fplain&kind=last%20words"),
            payload: will_payload.as_bytes().to_vec().into(),
            qos: 0,
            retain: true,
        }),
    };
    let (d, code) = RawDevice::connect_packet(hub, config, connect, None).unwrap();
    assert_eq!(code, 0, "{id} refused");
    d
}

/// The Will is stored as telemetry (its bag, `mqtt-retain`, `iothub-MessageType: Will`) when a
/// session ends for cause, and not when the device disconnects cleanly.
#[test]
fn a_will_is_stored_only_when_the_session_ends_for_cause() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["willing"]);

    let mut d = device_with_will(&hub, "willing", "clean");
    d.send(&Packet::Disconnect).unwrap();
    assert!(d.recv().is_err(), "the hub closes after DISCONNECT");

    let mut d = device_with_will(&hub, "willing", "bye");
    // QoS 2 is refused: the session ends for cause.
    d.send(&Packet::PubRel(1)).unwrap();
    assert!(d.recv().is_err(), "the hub closes after a QoS 2 packet");
    let deadline = Instant::now() + Duration::from_secs(5);
    let messages = loop {
        let messages = stored_json(&hub, "willing");
        if !messages.is_empty() || Instant::now() > deadline {
            break messages;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(messages.len(), 1, "{messages:?}");
    let will = &messages[0];
    assert_eq!(will["body"], "bye");
    assert_eq!(
        will["properties"],
        serde_json::json!({"kind": "last words", "mqtt-retain": "true", "iothub-MessageType": "Will"})
    );
    assert_eq!(will["systemProperties"]["$.ct"], "text/plain");
    // Stamped by the hub's clock.
    let enqueued = will["systemProperties"]["iothub-enqueuedtime"]
        .as_str()
        .unwrap();
    assert!(!enqueued.is_empty());
}
