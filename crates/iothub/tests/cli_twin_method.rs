//! The CLI covers twins, direct methods and a bounded monitor: `twin show/update` round trip with
//! a stale `--etag` refused (412), `method invoke` answered by a real MQTT device (and Azure's
//! 404103 for one that is offline), `monitor --timeout` ending on time while messages flow.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::{Packet, Publish, Subscribe};
use serde_json::{json, Value};

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

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn twin_show_and_update_round_trip_with_etag() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["thermo"]);

    let twin: Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "twin", "show", "thermo"]))).unwrap();
    assert_eq!(twin["deviceId"], "thermo");
    let etag = twin["etag"].as_str().unwrap().to_string();

    let updated: Value = serde_json::from_str(&ok(&hub.cli(&[
        "-o",
        "json",
        "twin",
        "update",
        "thermo",
        "--desired",
        r#"{"fan":2}"#,
        "--tags",
        r#"{"site":"lab"}"#,
        "--etag",
        &etag,
    ])))
    .unwrap();
    assert_eq!(updated["properties"]["desired"]["fan"], 2, "{updated}");
    assert_eq!(updated["tags"]["site"], "lab", "{updated}");
    assert_ne!(updated["etag"], json!(etag), "{updated}");

    // The etag read before the update is stale now: refused, nothing changed.
    let err = failed(&hub.cli(&[
        "twin",
        "update",
        "thermo",
        "--desired",
        r#"{"fan":3}"#,
        "--etag",
        &etag,
    ]));
    assert!(err.contains("HTTP 412"), "{err}");
    let text = ok(&hub.cli(&["twin", "show", "thermo"]));
    assert!(text.contains("\"fan\": 2"), "{text}");
    assert!(text.contains("\"site\": \"lab\""), "{text}");
    assert!(!text.contains("$metadata"), "{text}");

    // Without --etag the update is unconditional.
    let again: Value = serde_json::from_str(&ok(&hub.cli(&[
        "-o",
        "json",
        "twin",
        "update",
        "thermo",
        "--desired",
        r#"{"fan":null}"#,
    ])))
    .unwrap();
    assert!(
        again["properties"]["desired"].get("fan").is_none(),
        "{again}"
    );

    // Bad JSON is refused before any request, naming the flag.
    let err = failed(&hub.cli(&["twin", "update", "thermo", "--desired", "{fan:1}"]));
    assert!(err.contains("--desired is not valid JSON"), "{err}");
    let err = failed(&hub.cli(&["twin", "update", "thermo", "--tags", "[1]"]));
    assert!(err.contains("--tags must be a JSON object"), "{err}");
}

#[test]
fn method_invoke_is_answered_by_the_device() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["pump", "asleep"]);
    let mut d = device(&hub, "pump");
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("$iothub/methods/POST/#".into(), 0)],
    }))
    .unwrap();
    assert!(matches!(d.recv().unwrap(), Packet::SubAck(_)));

    // The device answers two calls: each request's payload comes back with status 200.
    let answering = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let Packet::Publish(p) = d.recv().unwrap() else {
                continue;
            };
            let rid = p.topic.split("$rid=").nth(1).unwrap().to_string();
            seen.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
            let answer = r#"{"done":true,"note":"line1\nline2"}"#.to_string();
            d.send(&Packet::Publish(Publish {
                dup: false,
                qos: 0,
                retain: false,
                topic: format!("$iothub/methods/res/200/?$rid={rid}"),
                pkid: 0,
                payload: answer.into_bytes().into(),
            }))
            .unwrap();
        }
        (d, seen)
    });

    let v: Value = serde_json::from_str(&ok(&hub.cli(&[
        "-o",
        "json",
        "method",
        "invoke",
        "pump",
        "reboot",
        "--payload",
        r#"{"delay":1}"#,
        "--timeout",
        "10",
    ])))
    .unwrap();
    assert_eq!(
        v,
        json!({"status": 200, "payload": {"done": true, "note": "line1\nline2"}})
    );

    let text = ok(&hub.cli(&["method", "invoke", "pump", "ping"]));
    assert!(text.contains("status:  200"), "{text}");
    assert!(text.contains("\"done\": true"), "{text}");
    let (d, seen) = answering.join().unwrap();
    assert!(
        seen[0].0.starts_with("$iothub/methods/POST/reboot/"),
        "{seen:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].1).unwrap(),
        json!({"delay": 1})
    );
    assert!(
        seen[1].0.starts_with("$iothub/methods/POST/ping/"),
        "{seen:?}"
    );
    d.disconnect();

    // A registered device that is not connected: Azure's DeviceNotOnline.
    let err = failed(&hub.cli(&["method", "invoke", "asleep", "reboot", "--timeout", "5"]));
    assert!(err.contains("404103"), "{err}");
    let err = failed(&hub.cli(&["method", "invoke", "pump", "reboot", "--payload", "{x"]));
    assert!(err.contains("--payload is not valid JSON"), "{err}");
}

#[test]
fn monitor_timeout_is_a_deadline_while_messages_flow() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["chatty"]);
    let mut d = device(&hub, "chatty");
    // Messages every 200 ms keep the stream busy: an idle read timeout would never fire.
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut pkid = 1u16;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                d.publish("devices/chatty/messages/events/", b"tick", pkid)
                    .unwrap();
                pkid = pkid % 60000 + 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            d.disconnect();
        })
    };
    let started = Instant::now();
    let out = hub.cli(&["-o", "json", "monitor", "--timeout", "2"]);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sending.join().unwrap();
    let printed = ok(&out);
    assert!(took >= Duration::from_millis(1900), "ended early: {took:?}");
    assert!(took < Duration::from_secs(15), "not a deadline: {took:?}");
    assert!(printed.lines().count() > 0, "no message arrived: {printed}");
}
