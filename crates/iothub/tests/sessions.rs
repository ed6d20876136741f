//! Device sessions at the edges: a new connection replaces the old one; keep-alive is enforced at
//! 1.5x; the payload limit closes the session with its reason; a C2D message not acknowledged is
//! redelivered on the next connection; SIGTERM shuts down gracefully without losing what was
//! acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Packet, Subscribe};

fn device(hub: &TestHub, id: &str, keep_alive: u16) -> RawDevice {
    let (d, code) = RawDevice::connect_keep_alive(
        hub,
        &hub.dir.join(format!("{id}.pem")),
        &hub.dir.join(format!("{id}.key")),
        id,
        keep_alive,
    )
    .unwrap();
    assert_eq!(code, 0, "{id} refused");
    d
}

fn subscribe_c2d(d: &mut RawDevice, id: &str) {
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![(format!("devices/{id}/messages/devicebound/#"), 1)],
    }))
    .unwrap();
}

fn next_publish(d: &mut RawDevice) -> iothub_mqtt::codec::Publish {
    loop {
        if let Packet::Publish(p) = d.recv().unwrap() {
            return p;
        }
    }
}

#[test]
fn a_new_connection_replaces_the_old_one() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["twice"]);
    let mut first = device(&hub, "twice", 60);
    let mut second = device(&hub, "twice", 60);
    assert!(first.recv().is_err(), "the first connection is closed");
    assert!(
        latest_refusal(&hub, "twice").contains("replaced this one"),
        "{}",
        latest_refusal(&hub, "twice")
    );
    second
        .publish("devices/twice/messages/events/", b"still here", 1)
        .unwrap();
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["quiet", "chatty"]);
    // Keep-alive 2 s and then silence: closed after 3 s (1.5 x 2), not before.
    let mut quiet = device(&hub, "quiet", 2);
    let t = Instant::now();
    assert!(quiet.recv().is_err());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2700) && took < Duration::from_millis(4500),
        "closed after {took:?}"
    );
    assert!(
        latest_refusal(&hub, "quiet").contains("keep-alive expired"),
        "{}",
        latest_refusal(&hub, "quiet")
    );
    // With a PINGREQ every second the session stays open past the limit.
    let mut chatty = device(&hub, "chatty", 2);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        chatty.send(&Packet::PingReq).unwrap();
        assert_eq!(chatty.recv().unwrap(), Packet::PingResp);
    }
}

#[test]
fn the_payload_limit_closes_the_session_with_its_reason() {
    let hub = TestHub::start(&["--max-message-bytes", "1024"]);
    verified_root_with_devices(&hub, &["big"]);
    let mut d = device(&hub, "big", 60);
    d.publish("devices/big/messages/events/", &[b'x'; 1000], 1)
        .unwrap();
    assert!(d
        .publish("devices/big/messages/events/", &[b'x'; 2000], 2)
        .is_err());
    assert!(
        latest_refusal(&hub, "big").contains("at most 1024 bytes"),
        "{}",
        latest_refusal(&hub, "big")
    );
}

#[test]
fn an_unacknowledged_c2d_message_is_redelivered_on_the_next_connection() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["forgetful"]);
    ok(&hub.cli(&[
        "c2d",
        "send",
        "forgetful",
        "once more",
        "--message-id",
        "m-1",
    ]));
    let mut d = device(&hub, "forgetful", 60);
    subscribe_c2d(&mut d, "forgetful");
    let p = next_publish(&mut d);
    assert_eq!(&p.payload[..], b"once more");
    d.disconnect(); // no PUBACK
    std::thread::sleep(Duration::from_millis(300));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", "forgetful"]))).unwrap();
    assert_eq!(v["value"][0]["state"], "queued", "{v}");
    assert!(v["value"][0]["deliveryCount"].as_i64().unwrap() >= 1, "{v}");
    let mut d = device(&hub, "forgetful", 60);
    subscribe_c2d(&mut d, "forgetful");
    let p = next_publish(&mut d);
    assert_eq!(&p.payload[..], b"once more");
    assert!(p.topic.contains("%24.mid=m-1"), "{}", p.topic);
    d.send(&Packet::PubAck(p.pkid)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", "forgetful"])))
                .unwrap();
        if v["value"][0]["state"] == "delivered" {
            assert!(v["value"][0]["deliveryCount"].as_i64().unwrap() >= 2);
            break;
        }
        assert!(Instant::now() < deadline, "never delivered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    verified_root_with_devices(&hub, &["last"]);
    let mut d = device(&hub, "last", 60);
    for i in 0..20u16 {
        d.publish(
            "devices/last/messages/events/",
            format!("m{i}").as_bytes(),
            i + 1,
        )
        .unwrap();
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &hub.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The device's connection is closed, and the process exits by itself, successfully.
    assert!(d.recv().is_err(), "the session is closed on shutdown");
    let exit = hub
        .wait_exit(Duration::from_secs(10))
        .expect("the hub did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    drop(hub);
    let hub = TestHub::start_in(tmp.path(), &[]);
    let v: serde_json::Value = hub
        .client()
        .get(format!(
            "{}/messages?from=1&deviceId=last&limit=100",
            hub.base()
        ))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let bodies: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 20, "{bodies:?}");
}
