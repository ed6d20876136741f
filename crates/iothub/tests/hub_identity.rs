//! The hub's identity as clients see it: its TLS CA lives in the store (so every node sharing the
//! store presents certificates from the one CA clients trust, and a data directory that lost its
//! `tls/` gets it back), an operator's own certificate with `--tls-cert`/`--tls-key`, and the
//! settings that choose the store and name the node, refused precisely when wrong.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs `iothub serve` with `args` expecting it to refuse to start; returns its stderr.
fn serve_refused(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(dir.join("data"))
        .args(["serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .args(["--metrics", "off"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The certificate the listener at `port` presents, as openssl prints it.
fn presented_certificate(port: u16) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "hub.example", "-showcerts"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

#[test]
fn the_tls_ca_comes_back_from_the_store_when_the_data_directory_loses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut hub = TestHub::start_in(dir, &[]);
    let ca = std::fs::read_to_string(hub.data().join("tls/ca.pem")).unwrap();
    hub.kill9();
    std::fs::remove_file(hub.data().join("tls/ca.pem")).unwrap();
    std::fs::remove_file(hub.data().join("tls/ca.key")).unwrap();
    let hub = TestHub::start_in(dir, &[]);
    assert_eq!(
        std::fs::read_to_string(hub.data().join("tls/ca.pem")).unwrap(),
        ca,
        "the same CA: clients that trusted it still do"
    );
    // And the server certificate comes from it: the harness's client trusts ca.pem.
    assert_eq!(
        hub.client()
            .get(format!("{}/certificates", hub.base()))
            .header("Authorization", hub.owner_token())
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn an_operator_certificate_is_presented_on_both_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = time::OffsetDateTime::now_utc();
    let ca = iothub_pki::gen::make_ca(
        "Operator LB CA",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    )
    .unwrap();
    let issuer = iothub_pki::gen::CaIssuer::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let leaf = iothub_pki::gen::make_leaf(
        "hub.example",
        iothub_pki::gen::KeyKind::EcP256,
        &issuer,
        &["hub.example".to_string(), "127.0.0.1".to_string()],
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    )
    .unwrap();
    std::fs::write(dir.join("lb.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("lb.key"), &leaf.key_pem).unwrap();
    let (cert, key) = (dir.join("lb.pem"), dir.join("lb.key"));
    let hub = TestHub::start_in(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    for port in [hub.port, hub.mqtt_port] {
        let shown = presented_certificate(port);
        assert!(
            shown.contains("CN=hub.example") || shown.contains("CN = hub.example"),
            "{shown}"
        );
        assert!(shown.contains("Operator LB CA"), "{shown}");
    }

    // A key that is not the certificate's, and half a pair: refused with the reason.
    let other = iothub_pki::gen::make_ca(
        "Other",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    )
    .unwrap();
    std::fs::write(dir.join("other.key"), &other.key_pem).unwrap();
    let other_key = dir.join("other.key");
    let refused = tempfile::tempdir().unwrap();
    let err = serve_refused(
        refused.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            other_key.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("is not the key of the first certificate"),
        "{err}"
    );
    let err = serve_refused(refused.path(), &["--tls-cert", cert.to_str().unwrap()]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
}

#[test]
fn the_store_and_node_settings_are_checked_and_never_print_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let err = serve_refused(tmp.path(), &["--store", "mysql://root:hunter2@db/iothub"]);
    assert!(err.contains("expected sqlite or a PostgreSQL URL"), "{err}");
    assert!(!err.contains("hunter2"), "the password was printed: {err}");
    let err = serve_refused(tmp.path(), &["--node-id", "node one"]);
    assert!(err.contains("--node-id 'node one' is invalid"), "{err}");
    // An explicit SQLite store and a node name are accepted.
    let hub = TestHub::start(&["--store", "sqlite", "--node-id", "n1"]);
    assert_eq!(
        hub.get_json("/certificates")["value"],
        serde_json::json!([])
    );
}

#[test]
fn the_telemetry_log_keeps_the_partition_count_it_was_created_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut hub = TestHub::start_in(dir, &["--partitions", "8"]);
    verified_root_with_devices(&hub, &["alpha", "echo"]);
    for id in ["alpha", "echo"] {
        let (mut d, code) = RawDevice::connect(
            &hub,
            &dir.join(format!("{id}.pem")),
            &dir.join(format!("{id}.key")),
            id,
        )
        .unwrap();
        assert_eq!(code, 0);
        for i in 0..3 {
            d.publish(
                &format!("devices/{id}/messages/events/"),
                format!("{i}").as_bytes(),
                i + 1,
            )
            .unwrap();
        }
        d.disconnect();
    }
    let messages = hub.get_json("/messages?from=1");
    let messages = messages["value"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 6);
    for id in ["alpha", "echo"] {
        let partition = iothub_hub::telemetry::partition_of(id, 8);
        let of_device: Vec<&serde_json::Value> =
            messages.iter().filter(|m| m["deviceId"] == id).collect();
        // One partition per device, numbered 1, 2, 3 there (the two ids hash apart: 3 and 4).
        assert!(
            of_device.iter().all(|m| m["partition"] == partition),
            "{of_device:?}"
        );
        let sequences: Vec<i64> = of_device
            .iter()
            .map(|m| m["sequenceNumber"].as_i64().unwrap())
            .collect();
        assert_eq!(sequences, [1, 2, 3], "{id}");
    }
    hub.kill9();
    let refused = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(refused.path()).unwrap();
    let out = Command::new(BIN)
        .arg("--data")
        .arg(dir.join("data"))
        .args(["serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .args(["--metrics", "off", "--partitions", "4"])
        // The same store the harness gave this directory (PostgreSQL under IOTHUB_TEST_STORE).
        .args(
            postgres_store_for(dir)
                .map(|url| vec!["--store".to_string(), url])
                .unwrap_or_default(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--partitions is 4, but this hub's telemetry log has 8 partitions"),
        "{err}"
    );
    // Without the flag the hub keeps its own count.
    let hub = TestHub::start_in(dir, &[]);
    let first = hub.get_json("/messages?from=1")["value"][0]["partition"].as_u64();
    assert_eq!(
        first,
        Some(u64::from(iothub_hub::telemetry::partition_of("alpha", 8)))
    );
    let err = serve_refused(tmp.path(), &["--partitions", "33"]);
    assert!(
        err.contains("--partitions is 33; expected 1 to 32"),
        "{err}"
    );
}
