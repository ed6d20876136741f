//! TLS session resumption on the device port. The hub hands out stateless TLS 1.3 tickets, so a
//! reconnecting device may skip presenting its chain; these tests hold that nothing is decided
//! by the ticket: the chain it carries is judged at CONNECT against the trust set and the device
//! record of that moment, exactly as after a full handshake, and the cache of validated chains
//! never keeps a verdict across a trust change (CA deleted, replaced, proved).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn files(hub: &TestHub, id: &str) -> (PathBuf, PathBuf) {
    (
        hub.dir.join(format!("{id}.pem")),
        hub.dir.join(format!("{id}.key")),
    )
}

/// The device's TLS configuration: reusing the returned `Arc` lets rustls resume.
fn device_config(hub: &TestHub, id: &str) -> Arc<rustls::ClientConfig> {
    let (cert, key) = files(hub, id);
    client_config(hub, &cert, &key).unwrap()
}

/// Connects as `id` with `config`; returns the CONNACK code and whether TLS resumed. An admitted
/// session is closed cleanly (DISCONNECT); reading the CONNACK has let rustls store the tickets
/// the hub sent right after the handshake.
fn attempt(hub: &TestHub, config: &Arc<rustls::ClientConfig>, id: &str) -> (u8, bool) {
    let (device, code) = RawDevice::connect_with_config(hub, config.clone(), id, 60)
        .unwrap_or_else(|e| panic!("{id} could not connect: {e}"));
    let resumed = device.resumed();
    if code == 0 {
        device.disconnect();
    }
    (code, resumed)
}

/// Waits for a refusal of `client` newer than the `before` already recorded; returns it. (The
/// hub records the refusal just after it has sent the CONNACK.)
fn next_refusal(hub: &TestHub, client: &str, before: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = refusals(hub, client);
        if all.len() > before {
            return all[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no new refusal of {client} recorded; all: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects twice with the same configuration: admitted with a full handshake, then admitted
/// again with a resumed one.
fn admitted_then_resumed(hub: &TestHub, id: &str) -> Arc<rustls::ClientConfig> {
    let config = device_config(hub, id);
    assert_eq!(attempt(hub, &config, id), (0, false), "first connection");
    assert_eq!(
        attempt(hub, &config, id),
        (0, true),
        "second connection: (CONNACK code, resumed)"
    );
    config
}

#[test]
fn a_reconnecting_device_resumes_its_tls_session_and_is_admitted() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["again"]);
    let config = admitted_then_resumed(&hub, "again");
    // And once more, with the ticket the resumed connection brought.
    assert_eq!(attempt(&hub, &config, "again"), (0, true));
    // A configuration without tickets makes a full handshake (so `resumed` can tell them apart).
    assert_eq!(
        attempt(&hub, &device_config(&hub, "again"), "again"),
        (0, false)
    );
    // The resumed session works as any other.
    let (mut d, code) = RawDevice::connect_with_config(&hub, config, "again", 60).unwrap();
    assert_eq!(code, 0);
    assert!(d.resumed());
    d.publish("devices/again/messages/events/", b"resumed", 1)
        .unwrap();
    d.disconnect();
    assert!(
        refusals(&hub, "again").is_empty(),
        "{:?}",
        refusals(&hub, "again")
    );
}

#[test]
fn a_resumed_session_of_a_deleted_ca_is_refused_at_connect() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["orphan"]);
    let config = admitted_then_resumed(&hub, "orphan");
    refused_resumed_once_root_is_deleted(&hub, &config, "orphan");
}

/// Deletes CA `root`, then resumes `id`'s session: refused at CONNECT (code 5) for its CA.
fn refused_resumed_once_root_is_deleted(
    hub: &TestHub,
    config: &Arc<rustls::ClientConfig>,
    id: &str,
) {
    ok(&hub.cli(&["cert", "delete", "root"]));
    let before = refusals(hub, id).len();
    assert_eq!(
        attempt(hub, config, id),
        (5, true),
        "after the CA was deleted: (CONNACK code, resumed)"
    );
    let reason = next_refusal(hub, id, before);
    assert!(
        reason.contains("no registered CA issued 'CN=root'"),
        "refusal: {reason}"
    );
}

/// TLS 1.2 (the Azure IoT Python SDK's only version) resumes without any key exchange; the
/// session's chain is judged at CONNECT all the same.
#[test]
fn a_resumed_tls12_session_is_judged_at_connect_as_well() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["old-tls"]);
    let (cert, key) = files(&hub, "old-tls");
    let config = client_config_for(&hub, &cert, &key, &[&rustls::version::TLS12]).unwrap();
    assert_eq!(attempt(&hub, &config, "old-tls"), (0, false), "first");
    assert_eq!(attempt(&hub, &config, "old-tls"), (0, true), "resumed");
    let (device, _) = RawDevice::connect_with_config(&hub, config.clone(), "old-tls", 60).unwrap();
    assert_eq!(
        device.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    device.disconnect();
    refused_resumed_once_root_is_deleted(&hub, &config, "old-tls");
}

#[test]
fn a_resumed_session_of_a_disabled_device_is_refused_at_connect() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["sleepy"]);
    let config = admitted_then_resumed(&hub, "sleepy");
    ok(&hub.cli(&["device", "disable", "sleepy"]));
    let before = refusals(&hub, "sleepy").len();
    assert_eq!(
        attempt(&hub, &config, "sleepy"),
        (5, true),
        "after the device was disabled: (CONNACK code, resumed)"
    );
    let reason = next_refusal(&hub, "sleepy", before);
    assert!(
        reason.contains("device 'sleepy' is disabled"),
        "refusal: {reason}"
    );
    // Enabled again, the same ticket chain admits it again.
    ok(&hub.cli(&["device", "enable", "sleepy"]));
    assert_eq!(attempt(&hub, &config, "sleepy"), (0, true));
}

/// Re-uploads CA `root` with its very bytes but `isVerified: false` (through the API: the CLI's
/// `--replace` keeps a Verified status when the content is the same).
fn mark_unverified(hub: &TestHub) {
    let url = format!("{}/certificates/root", hub.base());
    let current: serde_json::Value = hub
        .client()
        .get(&url)
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let pem = std::fs::read_to_string(hub.dir.join("root.pem")).unwrap();
    let response = hub
        .client()
        .put(&url)
        .header("Authorization", hub.owner_token())
        .header("If-Match", current["etag"].as_str().unwrap())
        .json(&serde_json::json!({
            "properties": { "certificate": pem, "isVerified": false }
        }))
        .send()
        .unwrap();
    let status = response.status();
    let v: serde_json::Value = response.json().unwrap();
    assert!(status.is_success(), "{status}: {v}");
    assert_eq!(v["properties"]["isVerified"], false, "{v}");
}

/// Re-issues `root.pem` with the same key and subject (a renewed CA: other bytes, same issuer
/// for the devices) and registers it in place of the old one, which makes it Unverified.
fn renew_ca(hub: &TestHub) {
    sh(
        &hub.dir,
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "root.key",
            "-subj",
            "/CN=root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root-renewed.pem",
        ],
    );
    let out = ok(&hub.cli_in(
        &hub.dir,
        &[
            "-o",
            "json",
            "cert",
            "add",
            "root",
            "root-renewed.pem",
            "--replace",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["properties"]["isVerified"], false, "{v}");
}

/// A device admitted (its chain's verdict cached) whose CA then turns Unverified: refused on a
/// resumed connection with the reason, then admitted again once the CA is proved.
fn unverified_then_proved(hub: &TestHub, id: &str, make_unverified: fn(&TestHub)) {
    verified_root_with_devices(hub, &[id]);
    let config = admitted_then_resumed(hub, id);
    make_unverified(hub);
    let before = refusals(hub, id).len();
    assert_eq!(
        attempt(hub, &config, id),
        (5, true),
        "after the CA turned Unverified: (CONNACK code, resumed)"
    );
    let reason = next_refusal(hub, id, before);
    assert!(
        reason.contains("(certificate 'root') which is Unverified"),
        "refusal: {reason}"
    );
    // Proved again: admitted again (no refusal is remembered either).
    ok(&hub.cli_in(&hub.dir, &["cert", "prove", "root", "--key", "root.key"]));
    assert_eq!(
        attempt(hub, &config, id),
        (0, true),
        "after the CA was proved again: (CONNACK code, resumed)"
    );
}

#[test]
fn a_ca_marked_unverified_admits_no_resumed_session_until_it_is_proved_again() {
    let hub = TestHub::start(&[]);
    unverified_then_proved(&hub, "demoted", mark_unverified);
}

#[test]
fn a_renewed_ca_admits_no_resumed_session_until_it_is_proved() {
    let hub = TestHub::start(&[]);
    unverified_then_proved(&hub, "renewed", renew_ca);
}

#[test]
fn a_device_of_an_unverified_ca_is_refused_resumed_or_not_until_the_ca_is_proved() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &[]);
    ok(&hub.cli_in(&hub.dir, &["pki", "ca", "newca", "--force"]));
    ok(&hub.cli_in(&hub.dir, &["cert", "add", "newca", "newca.pem"]));
    add_ca_device(&hub, "newbie", "newca");
    let config = device_config(&hub, "newbie");
    // Refused after a full handshake, which still hands out tickets...
    let before = refusals(&hub, "newbie").len();
    assert_eq!(attempt(&hub, &config, "newbie"), (5, false));
    let reason = next_refusal(&hub, "newbie", before);
    assert!(
        reason.contains("(certificate 'newca') which is Unverified"),
        "refusal: {reason}"
    );
    // ...and refused again after a resumed one.
    assert_eq!(
        attempt(&hub, &config, "newbie"),
        (5, true),
        "resumed while the CA is Unverified: (CONNACK code, resumed)"
    );
    let reason = next_refusal(&hub, "newbie", before + 1);
    assert!(
        reason.contains("(certificate 'newca') which is Unverified"),
        "refusal: {reason}"
    );
    // Proved: the next resumed connection is admitted.
    ok(&hub.cli_in(&hub.dir, &["cert", "prove", "newca", "--key", "newca.key"]));
    assert_eq!(
        attempt(&hub, &config, "newbie"),
        (0, true),
        "after the CA was proved: (CONNACK code, resumed)"
    );
}

#[test]
fn tickets_do_not_outlive_the_hub_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start_in(tmp.path(), &[]);
    verified_root_with_devices(&hub, &["survivor"]);
    let config = admitted_then_resumed(&hub, "survivor");
    hub.kill9();
    drop(hub);
    let hub = TestHub::start_in(tmp.path(), &[]);
    // The ticket key died with the process: the old ticket is declined, the handshake is full,
    // and the device is admitted as usual.
    assert_eq!(attempt(&hub, &config, "survivor"), (0, false));
    assert_eq!(attempt(&hub, &config, "survivor"), (0, true));
}
