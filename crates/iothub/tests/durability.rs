//! Durability: an acknowledged write survives `kill -9`. Writers stream certificate creations at a
//! running hub; the hub is killed with SIGKILL in the middle of the stream, restarted on the same
//! data directory, and every write that was acknowledged (HTTP 201) must be there, intact.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    let now = time::OffsetDateTime::now_utc();
    let certs: Vec<String> = (0..300)
        .map(|i| {
            iothub_pki::gen::make_ca(
                &format!("durable-{i}"),
                iothub_pki::gen::KeyKind::EcP256,
                None,
                now - time::Duration::hours(1),
                now + time::Duration::days(30),
            )
            .unwrap()
            .cert_pem
        })
        .collect();
    let certs = Arc::new(certs);
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (certs, acked, stop) = (certs.clone(), acked.clone(), stop.clone());
            let (http, base, auth) = (hub.client(), hub.base(), hub.owner_token());
            std::thread::spawn(move || {
                for i in (w..certs.len()).step_by(2) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = http
                        .put(format!("{base}/certificates/durable-{i}"))
                        .header("Authorization", &auth)
                        .json(&serde_json::json!({ "properties": { "certificate": certs[i] } }))
                        .send();
                    match r {
                        Ok(r) if r.status() == 201 => acked.lock().unwrap().push(i),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server died mid-request: not acknowledged
                    }
                }
            })
        })
        .collect();
    // Kill in the middle of the stream: after some writes were acknowledged, while more are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 40 {
        assert!(std::time::Instant::now() < deadline, "writes were too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40 && acked.len() < certs.len(),
        "kill did not land mid-stream: {}",
        acked.len()
    );

    let hub = TestHub::start_in(tmp.path(), &[]);
    let v = hub.get_json("/certificates");
    let stored: std::collections::HashMap<String, String> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["properties"]["certificate"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for i in &acked {
        let name = format!("durable-{i}");
        let pem = stored
            .get(&name)
            .unwrap_or_else(|| panic!("acknowledged write {name} was lost"));
        assert_eq!(pem, &certs[*i], "{name} is not intact");
    }
    // And the owner credential survived too (the restarted hub accepted the same token source).
    assert!(stored.len() >= acked.len());
}
