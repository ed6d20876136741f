//! PostgreSQL restarted under two live nodes: the nodes keep their devices' MQTT sessions, a
//! message published while the database is down gets no PUBACK until it is durable, the API
//! refuses writes with 503 naming the database, and everything resumes on its own when the
//! database returns (PUBACK, API, cross-node C2D). Its own test binary, because it stops the
//! test process's private PostgreSQL server that every test in a binary shares.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Packet, Publish, Subscribe};
use serde_json::Value;

fn publish_no_wait(d: &mut RawDevice, body: &str, pkid: u16) {
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: "devices/steady/messages/events/".into(),
        pkid,
        payload: body.as_bytes().to_vec().into(),
    }))
    .unwrap();
}

/// PINGREQ, and the next packet must be its PINGRESP: the session is alive and nothing else
/// (no PUBACK) was sent before it.
fn ping_answered_first(d: &mut RawDevice) {
    d.send(&Packet::PingReq).unwrap();
    match d.recv() {
        Ok(Packet::PingResp) => {}
        other => panic!("expected PINGRESP first, got {other:?}"),
    }
}

/// PUT a new device through `hub`: the status and the JSON body.
fn add_device(hub: &TestHub, id: &str) -> (u16, Value) {
    let r = hub
        .client()
        .put(format!("{}/devices/{id}", hub.base()))
        .header("Authorization", hub.owner_token())
        .json(&serde_json::json!({ "deviceId": id, "authentication": { "type": "certificateAuthority" } }))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn nodes_ride_out_a_database_restart_and_resume_on_their_own() {
    let pg = iothub_testpg::shared();
    let url = pg.database();
    let tmp = tempfile::tempdir().unwrap();
    let nodes: Vec<TestHub> = (1..=2)
        .map(|i| {
            let node = format!("n{i}");
            TestHub::start_in(
                &tmp.path().join(&node),
                &["--store", &url, "--node-id", &node],
            )
        })
        .collect();
    verified_root_with_devices(&nodes[0], &["steady", "other"]);
    let files = nodes[0].dir.clone();
    let device = |hub: &TestHub, id: &str| {
        let (cert, key) = (
            files.join(format!("{id}.pem")),
            files.join(format!("{id}.key")),
        );
        let t = Instant::now();
        loop {
            if let Ok((d, 0)) = RawDevice::connect(hub, &cert, &key, id) {
                return d;
            }
            assert!(t.elapsed() < Duration::from_secs(3), "{id} not admitted");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut steady = device(&nodes[0], "steady");
    steady
        .send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![("devices/steady/messages/devicebound/#".into(), 1)],
        }))
        .unwrap();
    assert!(matches!(steady.recv().unwrap(), Packet::SubAck(_)));
    let mut other = device(&nodes[1], "other");
    steady
        .publish("devices/steady/messages/events/", b"before", 2)
        .unwrap();

    pg.pg_ctl("stop").unwrap();
    publish_no_wait(&mut steady, "during", 3);
    // Long enough for the writer to have tried and failed more than once.
    std::thread::sleep(Duration::from_millis(1500));
    ping_answered_first(&mut steady);
    ping_answered_first(&mut other);
    let (status, body) = add_device(&nodes[0], "newcomer");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "503000", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("PostgreSQL at 127.0.0.1:{}", pg.port())),
        "the refusal names the database: {message}"
    );
    assert!(!message.contains("iothub-test-password"), "{message}");
    std::thread::sleep(Duration::from_millis(1500));
    ping_answered_first(&mut steady);
    ping_answered_first(&mut other);

    pg.pg_ctl("start").unwrap();
    // The message waiting since the outage is acknowledged once it is durable.
    match steady.recv() {
        Ok(Packet::PubAck(3)) => {}
        other => panic!("expected the PUBACK of the message sent during the outage, got {other:?}"),
    }
    steady
        .publish("devices/steady/messages/events/", b"after", 4)
        .unwrap();
    let t = Instant::now();
    loop {
        let (status, body) = add_device(&nodes[0], "newcomer");
        if (200..300).contains(&status) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the API did not resume: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Telemetry is readable from the other node, in order, each message once.
    let stored: Vec<String> = nodes[1].get_json("/messages?from=1&deviceId=steady&limit=100")
        ["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, ["before", "during", "after"]);
    // Cross-node traffic resumed: C2D sent through n2 reaches the device on n1.
    ok(&nodes[1].cli(&["c2d", "send", "steady", "hello after the restart"]));
    loop {
        match steady.recv().unwrap() {
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"hello after the restart");
                break;
            }
            _ => continue,
        }
    }
    ping_answered_first(&mut other);
}
