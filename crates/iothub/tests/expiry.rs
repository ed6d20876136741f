//! Expiry made visible: each device's certificate notAfter is recorded at CONNECT and shown by
//! `device show` (and the API's `certificateExpiry`), `device list --expiring 30d` lists the
//! devices whose certificates expire within 30 days, soonest first, and `cert list` shows the days
//! a CA has left, flagged under 30. Runs against PostgreSQL too.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn connect(hub: &TestHub, id: &str) -> RawDevice {
    let (d, code) = RawDevice::connect(
        hub,
        &hub.dir.join(format!("{id}.pem")),
        &hub.dir.join(format!("{id}.key")),
        id,
    )
    .unwrap();
    assert_eq!(code, 0, "{}", latest_refusal(hub, id));
    d
}

#[test]
fn device_and_ca_expiry_are_recorded_listed_and_flagged() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    // A root for 20 days: flagged in `cert list`.
    ok(&hub.cli_in(&dir, &["pki", "ca", "root", "--days", "20", "--force"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    for (id, days) in [("soon", "10"), ("sooner", "3"), ("later", "19")] {
        ok(&hub.cli_in(
            &dir,
            &[
                "pki",
                "device",
                id,
                "--ca-cert",
                "root.pem",
                "--ca-key",
                "root.key",
                "--days",
                days,
            ],
        ));
        ok(&hub.cli(&["device", "add", id]));
    }
    ok(&hub.cli(&["device", "add", "never-connected"]));
    let _devices: Vec<RawDevice> = ["soon", "sooner", "later"]
        .iter()
        .map(|id| connect(&hub, id))
        .collect();
    // Connection facts are written in batches (twice a second).
    let t = Instant::now();
    loop {
        let out = ok(&hub.cli(&["-o", "json", "device", "list", "--expiring", "30d"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v.as_array().unwrap().len() == 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ok(&hub.cli(&["-o", "json", "device", "list", "--expiring", "15d"]));
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sooner", "soon"],
        "soonest first, 'later' is 19 days out"
    );
    let text = ok(&hub.cli(&["device", "list", "--expiring", "30"]));
    assert!(
        text.contains("CERTIFICATE EXPIRY") && text.contains("later"),
        "{text}"
    );
    let shown = ok(&hub.cli(&["device", "show", "sooner"]));
    let expiry = shown
        .lines()
        .find_map(|l| l.strip_prefix("certificateExpiry: "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(expiry.starts_with("20"), "an RFC 3339 time: {shown}");
    let none = ok(&hub.cli(&["device", "show", "never-connected"]));
    assert!(none.contains("certificateExpiry: -"), "{none}");
    let nothing = ok(&hub.cli(&["device", "list", "--expiring", "0d"]));
    assert!(
        nothing.contains("no device certificate expires within 0 days"),
        "{nothing}"
    );
    let bad = hub.cli(&["device", "list", "--expiring", "soon"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a number of days"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let cas = ok(&hub.cli(&["cert", "list"]));
    assert!(cas.contains("DAYS LEFT"), "{cas}");
    let root = cas.lines().find(|l| l.starts_with("root ")).unwrap();
    assert!(root.contains("19 (!)") || root.contains("20 (!)"), "{root}");
}

/// A CA rollover: the old and the new root have the same subject; while both are Verified, the
/// devices of each connect; deleting the old one drops and refuses only its devices.
#[test]
fn a_rollover_keeps_both_generations_until_the_old_root_goes() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    for generation in ["old", "new"] {
        ok(&hub.cli_in(
            &dir,
            &[
                "pki",
                "ca",
                "root",
                "--cn",
                "Contoso Root",
                "--out-dir",
                generation,
                "--force",
            ],
        ));
        let (cert, key) = (
            format!("{generation}/root.pem"),
            format!("{generation}/root.key"),
        );
        let name = format!("root-{generation}");
        ok(&hub.cli_in(&dir, &["cert", "add", &name, &cert]));
        ok(&hub.cli_in(&dir, &["cert", "prove", &name, "--key", &key]));
        let id = format!("device-{generation}");
        ok(&hub.cli_in(
            &dir,
            &["pki", "device", &id, "--ca-cert", &cert, "--ca-key", &key],
        ));
        ok(&hub.cli(&["device", "add", &id]));
    }
    let mut old = connect(&hub, "device-old");
    let mut new = connect(&hub, "device-new");
    ok(&hub.cli(&["cert", "delete", "root-old"]));
    assert!(
        old.recv().is_err(),
        "the old generation's device was dropped"
    );
    new.send(&iothub_mqtt::codec::Packet::PingReq).unwrap();
    assert!(matches!(
        new.recv(),
        Ok(iothub_mqtt::codec::Packet::PingResp)
    ));
    let again = RawDevice::connect(
        &hub,
        &dir.join("device-old.pem"),
        &dir.join("device-old.key"),
        "device-old",
    );
    assert!(!matches!(again, Ok((_, 0))));
    let reason = latest_refusal(&hub, "device-old");
    assert!(
        reason.contains("does not verify against registered CA 'root-new'"),
        "{reason}"
    );
}
