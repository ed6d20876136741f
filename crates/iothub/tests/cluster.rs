//! Three real `iothub serve` nodes on one PostgreSQL database (a private server the test starts)
//! act as one hub: one identity (CA file, owner key), a CA proved through one node admits devices
//! on another, C2D, direct methods and desired patches sent through any node reach the device on
//! the node that holds it, a CA deleted through one node drops the device on another within a
//! second, a device's new connection on one node closes its old one on another, a node killed
//! with SIGKILL loses no acknowledged message while its device moves to another node, and two
//! nodes racing to replace one CA are held apart by its etag. (PostgreSQL restarted under the
//! nodes: `database_restart.rs`, a test binary of its own.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Packet, Publish, Subscribe};

/// Three nodes sharing a fresh database, in `dir/n1`..`dir/n3`.
fn three_nodes(dir: &std::path::Path) -> Vec<TestHub> {
    let url = iothub_testpg::shared().database();
    (1..=3)
        .map(|i| {
            let node = format!("n{i}");
            TestHub::start_in(&dir.join(&node), &["--store", &url, "--node-id", &node])
        })
        .collect()
}

/// Connects device `id` (files in `files`) to `hub`, retrying for up to `within` while the node
/// has not yet learnt what another node changed; returns the device and how long it took.
fn connect_within(
    hub: &TestHub,
    files: &std::path::Path,
    id: &str,
    within: Duration,
) -> (RawDevice, Duration) {
    let t = Instant::now();
    loop {
        let (cert, key) = (
            files.join(format!("{id}.pem")),
            files.join(format!("{id}.key")),
        );
        if let Ok((d, 0)) = RawDevice::connect(hub, &cert, &key, id) {
            return (d, t.elapsed());
        }
        assert!(t.elapsed() < within, "{id} not admitted within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscribe(d: &mut RawDevice, filters: &[&str]) {
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: filters.iter().map(|f| (f.to_string(), 1)).collect(),
    }))
    .unwrap();
    assert!(matches!(d.recv().unwrap(), Packet::SubAck(_)));
}

fn next_publish(d: &mut RawDevice) -> Publish {
    loop {
        match d.recv().unwrap() {
            Packet::Publish(p) => return p,
            _ => continue,
        }
    }
}

#[test]
fn three_nodes_act_as_one_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    // One identity: the same CA for clients, the same owner key.
    let ca = |h: &TestHub| std::fs::read_to_string(h.data().join("tls/ca.pem")).unwrap();
    assert_eq!(ca(n1), ca(n3));
    assert_eq!(n1.policy_key("iothubowner"), n2.policy_key("iothubowner"));

    // A CA proved through n1 admits its device on n3 (within about a second).
    verified_root_with_devices(n1, &["cam"]);
    let (mut cam, took) = connect_within(n3, &n1.dir, "cam", Duration::from_secs(2));
    assert!(
        took < Duration::from_millis(1500),
        "admitted on n3 after {took:?}"
    );
    subscribe(
        &mut cam,
        &[
            "devices/cam/messages/devicebound/#",
            "$iothub/methods/POST/#",
            "$iothub/twin/PATCH/properties/desired/#",
        ],
    );
    // Give n3 a tick to write its presence, so n1 knows where the device is.
    std::thread::sleep(Duration::from_millis(600));

    // C2D through n2, received on n3.
    ok(&n2.cli(&["c2d", "send", "cam", "through n2", "--message-id", "c1"]));
    let p = next_publish(&mut cam);
    assert_eq!(&p.payload[..], b"through n2");
    cam.send(&Packet::PubAck(p.pkid)).unwrap();

    // A desired patch through n2, received on n3.
    ok(&n2.cli(&["twin", "update", "cam", "--desired", r#"{"rate":7}"#]));
    let p = next_publish(&mut cam);
    assert!(
        p.topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{}",
        p.topic
    );
    assert!(String::from_utf8_lossy(&p.payload).contains("\"rate\":7"));

    // A direct method through n1, answered by the device on n3.
    let answering = std::thread::spawn(move || {
        let p = next_publish(&mut cam);
        let rid = p.topic.split("$rid=").nth(1).unwrap().to_string();
        cam.send(&Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: format!("$iothub/methods/res/200/?$rid={rid}"),
            pkid: 0,
            payload: br#"{"from":"n3"}"#.to_vec().into(),
        }))
        .unwrap();
        (cam, p.topic)
    });
    let answer: serde_json::Value = serde_json::from_str(&ok(&n1.cli(&[
        "-o",
        "json",
        "method",
        "invoke",
        "cam",
        "ping",
        "--timeout",
        "10",
    ])))
    .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"status": 200, "payload": {"from": "n3"}})
    );
    let (mut cam, topic) = answering.join().unwrap();
    assert!(topic.starts_with("$iothub/methods/POST/ping/"), "{topic}");

    // The CA deleted through n2: the device on n3 is closed within a second.
    let t = Instant::now();
    ok(&n2.cli(&["cert", "delete", "root"]));
    assert!(cam.recv().is_err(), "the session on n3 was closed");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert!(
        latest_refusal(n3, "cam").contains("root"),
        "{}",
        latest_refusal(n3, "cam")
    );
}

#[test]
fn a_new_connection_on_one_node_closes_the_old_one_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    let (n1, n2) = (&nodes[0], &nodes[1]);
    verified_root_with_devices(n1, &["roamer"]);
    let (mut first, _) = connect_within(n1, &n1.dir, "roamer", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(400));
    let (_second, _) = connect_within(n2, &n1.dir, "roamer", Duration::from_secs(2));
    let t = Instant::now();
    assert!(first.recv().is_err(), "the old session on n1 was closed");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "after {:?}",
        t.elapsed()
    );
    assert!(
        latest_refusal(n1, "roamer").contains("on node 'n2' replaced this one"),
        "{}",
        latest_refusal(n1, "roamer")
    );
}

#[test]
fn a_node_that_cannot_reach_its_database_exits_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args([
            "serve",
            "--https",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--metrics",
            "off",
        ])
        .args(["--store", "postgres://iothub:secret@127.0.0.1:1/iothub"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the store postgres://iothub:***@127.0.0.1:1/iothub"),
        "{err}"
    );
    assert!(err.contains("PostgreSQL at 127.0.0.1:1"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// SIGKILL a node while its device publishes: every message the device saw acknowledged is in
/// the shared log, readable through another node, and the device connects to that node at once.
#[test]
fn a_killed_node_loses_no_acknowledged_message_and_its_device_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(tmp.path());
    verified_root_with_devices(&nodes[0], &["mover"]);
    let files = nodes[0].dir.clone();
    let (mut d, _) = connect_within(&nodes[0], &files, "mover", Duration::from_secs(2));
    let mut acked = Vec::new();
    for i in 0..30u16 {
        d.publish(
            "devices/mover/messages/events/",
            format!("m{i}").as_bytes(),
            i + 1,
        )
        .unwrap();
        acked.push(format!("m{i}"));
    }
    // A message in flight when the node dies: it may or may not have landed.
    let _ = d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: "devices/mover/messages/events/".into(),
        pkid: 31,
        payload: b"in flight".to_vec().into(),
    }));
    nodes[0].kill9();
    assert!(d.recv().is_err(), "the connection died with its node");
    let (_d, took) = connect_within(&nodes[1], &files, "mover", Duration::from_secs(2));
    assert!(
        took < Duration::from_secs(1),
        "admitted on n2 after {took:?}"
    );
    let stored: Vec<String> = nodes[2].get_json("/messages?from=1&deviceId=mover&limit=100")
        ["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert!(
        stored.starts_with(&acked) && stored.len() <= acked.len() + 1,
        "acknowledged {acked:?}, stored {stored:?}"
    );
}

/// Two nodes replacing one CA at the same moment with the same etag: one wins, the other is
/// refused with 412 (the etag moved), every time; the CA holds the winner's certificate.
#[test]
fn two_nodes_racing_on_one_ca_are_held_apart_by_its_etag() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    let dir = nodes[0].dir.clone();
    for name in ["race", "by-n1", "by-n2"] {
        ok(&nodes[0].cli_in(&dir, &["pki", "ca", name, "--force"]));
    }
    ok(&nodes[0].cli_in(&dir, &["cert", "add", "race", "race.pem"]));
    let pem = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    for round in 0..5 {
        let etag = nodes[0].get_json("/certificates/race")["etag"]
            .as_str()
            .unwrap()
            .to_string();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let answers: Vec<(usize, u16)> = std::thread::scope(|scope| {
            let racers: Vec<_> = [(0, "by-n1"), (1, "by-n2")]
                .into_iter()
                .map(|(i, name)| {
                    let (hub, barrier, etag, body) =
                        (&nodes[i], barrier.clone(), etag.clone(), pem(name));
                    scope.spawn(move || {
                        let request = hub
                            .client()
                            .put(format!("{}/certificates/race", hub.base()))
                            .header("Authorization", hub.owner_token())
                            .header("If-Match", etag)
                            .json(&serde_json::json!({ "properties": { "certificate": body } }));
                        barrier.wait();
                        (i, request.send().unwrap().status().as_u16())
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mut statuses: Vec<u16> = answers.iter().map(|(_, s)| *s).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "round {round}: {answers:?}");
        let winner = answers.iter().find(|(_, s)| *s == 200).unwrap().0;
        let held = nodes[2].get_json("/certificates/race")["properties"]["certificate"]
            .as_str()
            .unwrap()
            .to_string();
        let expected = pem(["by-n1", "by-n2"][winner]);
        assert_eq!(held.trim(), expected.trim(), "round {round}");
    }
}

/// A certificate revoked through one node drops its device on another within a second, and the
/// device is refused there with the reason; a sibling of the same CA stays connected.
#[test]
fn a_revocation_through_one_node_drops_the_device_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    verified_root_with_devices(&nodes[0], &["stolen", "kept"]);
    let files = nodes[0].dir.clone();
    let (mut stolen, _) = connect_within(&nodes[2], &files, "stolen", Duration::from_secs(2));
    let (mut kept, _) = connect_within(&nodes[1], &files, "kept", Duration::from_secs(2));
    let serial = sh(
        &files,
        "openssl",
        &["x509", "-noout", "-serial", "-in", "stolen.pem"],
    );
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    ok(&nodes[0].cli(&[
        "cert",
        "revoke",
        "root",
        "--serial",
        &serial,
        "--reason",
        "keyCompromise",
    ]));
    let revoked = Instant::now();
    assert!(stolen.recv().is_err(), "the session on n3 ended");
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "dropped after {took:?}");
    kept.send(&Packet::PingReq).unwrap();
    assert!(matches!(kept.recv(), Ok(Packet::PingResp)));
    let again = RawDevice::connect(
        &nodes[2],
        &files.join("stolen.pem"),
        &files.join("stolen.key"),
        "stolen",
    );
    assert!(!matches!(again, Ok((_, 0))));
    let reason = latest_refusal(&nodes[2], "stolen");
    assert!(
        reason.contains("revoked by 'root' (keyCompromise"),
        "{reason}"
    );
}

/// Auto-registration turned on through one node registers an unknown device at its first
/// CONNECT on another; the device is then known to every node.
#[test]
fn auto_registration_on_one_node_registers_a_device_connecting_to_another() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(tmp.path());
    verified_root_with_devices(&nodes[0], &[]);
    let files = nodes[0].dir.clone();
    ok(&nodes[0].cli_in(
        &files,
        &[
            "pki",
            "device",
            "newcomer",
            "--ca-cert",
            "root.pem",
            "--ca-key",
            "root.key",
        ],
    ));
    ok(&nodes[0].cli(&["cert", "update", "root", "--auto-register", "on"]));
    let (_d, took) = connect_within(&nodes[2], &files, "newcomer", Duration::from_secs(2));
    assert!(
        took < Duration::from_secs(1),
        "admitted on n3 after {took:?}"
    );
    assert_eq!(
        nodes[1].get_json("/devices/newcomer")["authentication"]["type"],
        "certificateAuthority"
    );
}
