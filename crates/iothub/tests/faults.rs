//! Faults: SIGKILL at a random moment during mixed load (certificate changes, device changes,
//! QoS 1 telemetry, cloud-to-device sends), then restart: every acknowledged write is there and
//! SQLite's integrity check is clean. And a full disk: writes fail with a clear error, nothing
//! crashes, and the hub recovers when space returns.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn sigkill_during_mixed_load_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // SQLite: the test opens the database file afterwards.
    let mut hub = TestHub::start_in(&dir, &["--store", "sqlite"]);
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
    let now = time::OffsetDateTime::now_utc();
    let cas: Vec<String> = (0..200)
        .map(|i| {
            iothub_pki::gen::make_ca(
                &format!("ca-{i}"),
                iothub_pki::gen::KeyKind::EcP256,
                None,
                now - time::Duration::hours(1),
                now + time::Duration::days(3),
            )
            .unwrap()
            .cert_pem
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let (base, auth) = (hub.base(), hub.owner_token());
    let mut workers = Vec::new();
    // Certificates created, then (every third) replaced.
    {
        let (http, base, auth, stop, acked, cas) = (
            hub.client(),
            base.clone(),
            auth.clone(),
            stop.clone(),
            acked.clone(),
            cas.clone(),
        );
        workers.push(std::thread::spawn(move || {
            for (i, pem) in cas.iter().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match http
                    .put(format!("{base}/certificates/ca-{i}"))
                    .header("Authorization", &auth)
                    .json(&json!({ "properties": { "certificate": pem } }))
                    .send()
                {
                    Ok(r) if r.status() == 201 => {
                        acked.lock().unwrap().push(format!("cert ca-{i}"))
                    }
                    _ => break,
                }
            }
        }));
    }
    // Devices created and some disabled.
    {
        let (http, base, auth, stop, acked) = (
            hub.client(),
            base.clone(),
            auth.clone(),
            stop.clone(),
            acked.clone(),
        );
        workers.push(std::thread::spawn(move || {
            for i in 0..1000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let status = if i % 2 == 0 { "enabled" } else { "disabled" };
                let body = json!({ "deviceId": format!("d-{i}"), "status": status, "authentication": { "type": "certificateAuthority" } });
                match http.put(format!("{base}/devices/d-{i}")).header("Authorization", &auth).json(&body).send() {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(format!("device d-{i} {status}")),
                    _ => break,
                }
            }
        }));
    }
    // Cloud-to-device sends to the streamer (queue limit raised by deleting nothing: 50 max).
    {
        let (http, base, auth, stop, acked) = (
            hub.client(),
            base.clone(),
            auth.clone(),
            stop.clone(),
            acked.clone(),
        );
        workers.push(std::thread::spawn(move || {
            for i in 0..40 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match http
                    .post(format!("{base}/devices/streamer/messages/devicebound"))
                    .header("Authorization", &auth)
                    .json(&json!({ "body": format!("c2d-{i}") }))
                    .send()
                {
                    Ok(r) if r.status() == 201 => {
                        acked.lock().unwrap().push(format!("c2d c2d-{i}"))
                    }
                    _ => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // QoS 1 telemetry: mosquitto_pub -l -d reports each PUBACK's message id (line k = mid k).
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
            "-u",
            "localhost/streamer/?api-version=2021-04-12",
        ])
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
    let telemetry_acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    {
        let telemetry_acked = telemetry_acked.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("received PUBACK (Mid: ").nth(1) {
                    if let Ok(mid) = rest
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("")
                        .parse::<u32>()
                    {
                        telemetry_acked.lock().unwrap().push(mid);
                    }
                }
            }
        });
    }
    let feeder = std::thread::spawn(move || {
        for i in 1..=100_000u32 {
            if writeln!(stdin, "t-{i}").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // The load must be under way before the kill (a loaded machine can take a while to start
    // the publisher): wait for the first acknowledged write of each kind.
    let started = std::time::Instant::now();
    while (acked.lock().unwrap().is_empty() || telemetry_acked.lock().unwrap().is_empty())
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Then kill at a random moment between 0.5 s and 2 s later.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 1500;
    std::thread::sleep(Duration::from_millis(500 + jitter));
    hub.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let _ = publisher.kill();
    let _ = publisher.wait();
    let _ = feeder.join();
    std::thread::sleep(Duration::from_millis(200));
    let acked = acked.lock().unwrap().clone();
    let telemetry = telemetry_acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty() && !telemetry.is_empty(),
        "the kill came before any write ({jitter} ms)"
    );

    // The database is sound before the hub even starts again.
    {
        let store = iothub_store::SqliteStore::open(&dir.join("data/iothub.db")).unwrap();
        assert_eq!(store.integrity_check().unwrap(), ["ok"]);
    }
    let hub = TestHub::start_in(&dir, &["--store", "sqlite"]);
    let certs: Vec<String> = hub.get_json("/certificates")["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let c2d: Vec<String> = hub.get_json("/devices/streamer/messages/devicebound")["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    let mut bodies = std::collections::HashSet::new();
    let mut from = 1;
    loop {
        let v = hub.get_json(&format!("/messages?from={from}&limit=1000"));
        let batch = v["value"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        bodies.extend(
            batch
                .iter()
                .map(|m| m["body"].as_str().unwrap().to_string()),
        );
        from = v["nextOffset"].as_i64().unwrap();
    }
    for a in &acked {
        let parts: Vec<&str> = a.split(' ').collect();
        match parts[0] {
            "cert" => assert!(
                certs.contains(&parts[1].to_string()),
                "acknowledged {a} lost"
            ),
            "device" => {
                let d = hub.get_json(&format!("/devices/{}", parts[1]));
                assert_eq!(d["status"], parts[2], "acknowledged {a}: {d}");
            }
            "c2d" => assert!(c2d.contains(&parts[1].to_string()), "acknowledged {a} lost"),
            _ => unreachable!(),
        }
    }
    for mid in &telemetry {
        assert!(
            bodies.contains(&format!("t-{mid}")),
            "PUBACKed t-{mid} lost"
        );
    }
    eprintln!(
        "killed after {} ms: {} API writes and {} messages acknowledged, all present",
        500 + jitter,
        acked.len(),
        telemetry.len()
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "this test mounts a small tmpfs and needs root"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());
    // The hub's "database or disk is full" errors are what this test causes: they go to a log
    // file (off the small disk), not into the test run's output where they would read as failures.
    let log = tmp.path().join("hub.log");
    let hub = TestHub::start_in_quiet(
        &mount,
        &["--metrics", "127.0.0.1:0", "--store", "sqlite"],
        &log,
    );
    let http = hub.client();
    let auth = hub.owner_token();
    let store_errors = || {
        let (_, text) = hub.metrics_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("iothub_store_errors_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no iothub_store_errors_total in\n{text}"))
    };
    assert_eq!(store_errors(), 0);
    // Fill the disk with a file, leaving little room for the database.
    let filler = mount.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let now = time::OffsetDateTime::now_utc();
    let mut refused = None;
    for i in 0..400 {
        let pem = iothub_pki::gen::make_ca(
            &format!("full-{i}"),
            iothub_pki::gen::KeyKind::EcP256,
            None,
            now - time::Duration::hours(1),
            now + time::Duration::days(3),
        )
        .unwrap()
        .cert_pem;
        let r = http
            .put(format!("{}/certificates/full-{i}", hub.base()))
            .header("Authorization", &auth)
            .json(&json!({ "properties": { "certificate": pem } }))
            .send()
            .unwrap();
        if r.status() != 201 {
            refused = Some((
                r.status().as_u16(),
                r.json::<Value>().unwrap_or(Value::Null),
            ));
            break;
        }
    }
    let (status, body) = refused.expect("the disk never filled up");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["code"], "500001");
    assert!(
        body["message"].as_str().unwrap().contains("full"),
        "the error says the disk is full: {body}"
    );
    // Counted where an operator's alert looks, and logged.
    assert!(store_errors() >= 1);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("full"), "{logged}");
    // The hub is still up and reads still work.
    assert_eq!(
        http.get(format!("{}/certificates", hub.base()))
            .header("Authorization", &auth)
            .send()
            .unwrap()
            .status(),
        200
    );
    // Space returns: writes succeed again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let pem = iothub_pki::gen::make_ca(
        "after",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::hours(1),
        now + time::Duration::days(3),
    )
    .unwrap()
    .cert_pem;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http
            .put(format!("{}/certificates/after", hub.base()))
            .header("Authorization", &auth)
            .json(&json!({ "properties": { "certificate": pem } }))
            .send()
            .unwrap();
        if r.status() == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {}",
            r.text().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let store = iothub_store::SqliteStore::open(&mount.join("data/iothub.db")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), ["ok"]);
}
