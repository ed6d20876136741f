//! Revocation by serial, live, against a real `iothub serve`: `cert revoke` closes the revoked
//! device's session at once and refuses its next CONNECT with the precise reason (also in the
//! device's `lastRefusal` and `connections`), leaves a sibling of the same CA connected, refuses
//! bad input without writing anything, survives a restart, and revokes an intermediate's whole
//! branch. Runs against PostgreSQL too (`IOTHUB_TEST_STORE=postgres`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::Packet;

/// The serial of the first certificate of `file` in `dir`, as openssl prints it (hex).
fn serial(dir: &std::path::Path, file: &str) -> String {
    let out = sh(dir, "openssl", &["x509", "-noout", "-serial", "-in", file]);
    out.trim()
        .strip_prefix("serial=")
        .expect("openssl prints serial=HEX")
        .to_string()
}

/// The CLI's stderr and failure, for a refused command.
fn refused(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn connect(hub: &TestHub, id: &str) -> Result<(RawDevice, u8), String> {
    RawDevice::connect(
        hub,
        &hub.dir.join(format!("{id}.pem")),
        &hub.dir.join(format!("{id}.key")),
        id,
    )
}

fn alive(d: &mut RawDevice) {
    d.send(&Packet::PingReq).unwrap();
    assert!(matches!(d.recv(), Ok(Packet::PingResp)));
}

fn refused_with(hub: &TestHub, id: &str, expected: &str) {
    let admitted = matches!(connect(hub, id), Ok((_, 0)));
    assert!(!admitted, "{id} was admitted");
    let reason = latest_refusal(hub, id);
    assert!(reason.contains(expected), "{reason}");
    // Connection facts are written in batches (twice a second).
    let t = Instant::now();
    loop {
        let shown = hub.get_json(&format!("/devices/{id}"));
        let last = shown["lastRefusal"].as_str().unwrap_or_default();
        if last.contains(expected) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "lastRefusal: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_revoked_device_is_dropped_at_once_and_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    verified_root_with_devices(&hub, &["victim", "sibling"]);
    let dir = hub.dir.clone();
    let (mut victim, code) = connect(&hub, "victim").unwrap();
    assert_eq!(code, 0);
    let (mut sibling, _) = connect(&hub, "sibling").unwrap();
    let hex = serial(&dir, "victim.pem");
    // As openssl prints it, with colons and a leading zero: the hub keeps one spelling.
    let spelt = format!("00:{hex}");
    let out = ok(&hub.cli(&[
        "cert",
        "revoke",
        "root",
        "--serial",
        &spelt,
        "--reason",
        "keyCompromise",
    ]));
    let shown = hex.trim_start_matches('0').to_uppercase();
    assert!(
        out.contains(&format!("revoked serial {shown} of root (keyCompromise")),
        "{out}"
    );
    let revoked_at = Instant::now();
    assert!(victim.recv().is_err(), "the revoked device's session ended");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    alive(&mut sibling);
    let expected = format!("certificate serial {shown} revoked by 'root' (keyCompromise, since ");
    refused_with(&hub, "victim", &expected);
    let listed = ok(&hub.cli(&["-o", "json", "cert", "revoked", "root"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["value"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["value"][0]["serial"], shown.as_str());

    // Bad input: a precise refusal, and nothing written.
    let again = refused(&hub.cli(&["cert", "revoke", "root", "--serial", &hex]));
    assert!(again.contains("already revoked by 'root'"), "{again}");
    let not_hex = refused(&hub.cli(&["cert", "revoke", "root", "--serial", "12G4"]));
    assert!(not_hex.contains("is not hex"), "{not_hex}");
    let reason = refused(&hub.cli(&[
        "cert", "revoke", "root", "--serial", "1A", "--reason", "stolen",
    ]));
    assert!(
        reason.contains("'stolen' is not a revocation reason"),
        "{reason}"
    );
    let nobody = refused(&hub.cli(&["cert", "revoke", "nobody", "--serial", "1A"]));
    assert!(nobody.contains("'nobody' does not exist"), "{nobody}");
    let listed = ok(&hub.cli(&["-o", "json", "cert", "revoked", "root"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed).unwrap()["value"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A restart keeps it.
    drop((victim, sibling));
    hub.kill9();
    let hub = TestHub::start_in(tmp.path(), &[]);
    refused_with(&hub, "victim", &expected);
    let (_sibling, code) = connect(&hub, "sibling").unwrap();
    assert_eq!(code, 0);
}

#[test]
fn revoking_an_intermediate_drops_every_device_below_it_and_no_other() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["direct"]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "inter", "--parent", "root", "--force"]));
    add_ca_device(&hub, "below", "inter");
    let (mut below, code) = connect(&hub, "below").unwrap();
    assert_eq!(code, 0, "{}", latest_refusal(&hub, "below"));
    let (mut direct, _) = connect(&hub, "direct").unwrap();
    let hex = serial(&dir, "inter.pem");
    ok(&hub.cli(&["cert", "revoke", "root", "--serial", &hex]));
    assert!(
        below.recv().is_err(),
        "the session below the intermediate ended"
    );
    alive(&mut direct);
    refused_with(
        &hub,
        "below",
        &format!(
            "certificate serial {} revoked by 'root' (unspecified, since ",
            hex.trim_start_matches('0').to_uppercase()
        ),
    );
}

/// The seed tutorial's tools end to end: `openssl ca -revoke` + `-gencrl`, uploaded with
/// `cert crl`: the revoked device drops at once and is refused with the CRL's reason, its sibling
/// stays; the same CRL again, another CA's CRL and a certificate are refused; a newer CRL that no
/// longer lists the device lets it in again.
#[test]
fn a_crl_from_openssl_ca_revokes_live_and_a_newer_one_lifts_it() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["crl-victim", "crl-sibling"]);
    let dir = hub.dir.clone();
    let conf = openssl_ca_config(&dir, "root.pem", "root.key");
    let (mut victim, _) = connect(&hub, "crl-victim").unwrap();
    let (mut sibling, _) = connect(&hub, "crl-sibling").unwrap();
    let ca = |args: &[&str]| {
        sh(
            &dir,
            "openssl",
            &[&["ca", "-config", &conf][..], args].concat(),
        )
    };
    ca(&["-revoke", "crl-victim.pem", "-crl_reason", "keyCompromise"]);
    ca(&["-gencrl", "-crldays", "1", "-out", "root.crl"]);
    let out = ok(&hub.cli(&["cert", "crl", "root", "root.crl"]));
    assert!(out.contains("1 revoked"), "{out}");
    let uploaded = Instant::now();
    assert!(victim.recv().is_err(), "the revoked device's session ended");
    assert!(uploaded.elapsed() < Duration::from_secs(1));
    alive(&mut sibling);
    refused_with(
        &hub,
        "crl-victim",
        "revoked by 'root' (keyCompromise, since ",
    );
    let listed = ok(&hub.cli(&["cert", "revoked", "root"]));
    assert!(listed.contains("crl"), "{listed}");

    let again = refused(&hub.cli(&["cert", "crl", "root", "root.crl"]));
    assert!(again.contains("not newer than the one held"), "{again}");
    ok(&hub.cli_in(&dir, &["pki", "ca", "other", "--force"]));
    let other_conf = openssl_ca_config(&dir, "other.pem", "other.key");
    sh(
        &dir,
        "openssl",
        &[
            "ca",
            "-config",
            &other_conf,
            "-gencrl",
            "-crldays",
            "1",
            "-out",
            "other.crl",
        ],
    );
    let foreign = refused(&hub.cli(&["cert", "crl", "root", "other.crl"]));
    assert!(foreign.contains("was issued by 'CN=other'"), "{foreign}");
    let not_crl = refused(&hub.cli(&["cert", "crl", "root", "root.pem"]));
    assert!(not_crl.contains("not labelled X509 CRL"), "{not_crl}");
    let held = ok(&hub.cli(&["cert", "crl", "root"]));
    assert!(held.contains("1 revoked"), "{held}");

    // A newer CRL (thisUpdate has one-second resolution) that no longer lists the device.
    std::thread::sleep(Duration::from_millis(1100));
    let conf = openssl_ca_config(&dir, "root.pem", "root.key");
    sh(
        &dir,
        "openssl",
        &[
            "ca",
            "-config",
            &conf,
            "-gencrl",
            "-crldays",
            "1",
            "-out",
            "root2.crl",
        ],
    );
    let out = ok(&hub.cli(&["cert", "crl", "root", "root2.crl"]));
    assert!(out.contains("0 revoked"), "{out}");
    let (_victim, code) = connect(&hub, "crl-victim").unwrap();
    assert_eq!(code, 0, "{}", latest_refusal(&hub, "crl-victim"));
}
