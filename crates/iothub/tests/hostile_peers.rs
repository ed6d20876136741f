//! What unauthenticated device peers send cannot forge the hub's log, rewrite the operator's
//! terminal, flood a device's record, or name another hub (security review, issue 16,
//! findings 2 to 4).
//!
//! - Control characters in a client id, a username or a certificate's CN are escaped in the log,
//!   in the recorded refusal (`lastRefusal`, `/connections`) and in the CLI's text output.
//! - Past `--mqtt-refusal-limit` refusals in a minute, connections from that address are closed
//!   before any TLS or MQTT work, with one log line; other addresses are unaffected.
//! - The host in the MQTT username must be one of the hub's names.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use iothub_mqtt::codec::Connect;

/// A CONNECT with this client id and username, no password.
fn connect_packet(client: &str, username: &str) -> Connect {
    Connect {
        protocol_level: 4,
        client_id: client.into(),
        clean_session: true,
        keep_alive: 60,
        username: Some(username.into()),
        password: None,
        will: None,
    }
}

/// Connects presenting `{stem}.pem`/`{stem}.key` from the hub's directory; the CONNACK code.
fn connect_as(
    hub: &TestHub,
    stem: &str,
    client: &str,
    username: &str,
    local: Option<IpAddr>,
) -> Result<u8, String> {
    let config = client_config(
        hub,
        &hub.dir.join(format!("{stem}.pem")),
        &hub.dir.join(format!("{stem}.key")),
    )?;
    RawDevice::connect_packet(hub, config, connect_packet(client, username), local)
        .map(|(_, code)| code)
}

/// Polls `check` for up to five seconds.
fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = check();
        match last {
            None => return,
            Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Some(state) => panic!("{what}: {state}"),
        }
    }
}

/// No raw control character, and no line starting with the forged marker.
fn assert_clean(what: &str, text: &str) {
    for line in text.lines() {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "{what} has a raw control character in {line:?}"
        );
        assert!(
            !line.trim_start().starts_with("FORGED"),
            "{what} has a forged line: {line:?}\n{text}"
        );
    }
}

#[test]
fn hostile_client_id_and_username_are_escaped_in_log_records_and_cli() {
    let hub = TestHub::start_logged(&[]);
    verified_root_with_devices(&hub, &["dev1"]);

    // A client id that is no device id, carrying a fake log line and a terminal escape.
    let evil_id = "evil\nFORGED INFO device connected device=admin\u{1b}]0;owned\u{7}\u{9b}2J";
    let code = connect_as(
        &hub,
        "dev1",
        evil_id,
        "localhost/evil/?api-version=2021-04-12",
        None,
    )
    .unwrap();
    assert_eq!(code, 5);
    // dev1's own id, with a username naming another "device" that holds the forgery.
    let evil_user = "localhost/dev1\r\nFORGED WARN all devices disabled\u{1b}[2J/?api-version=1";
    let code = connect_as(&hub, "dev1", "dev1", evil_user, None).unwrap();
    assert_eq!(code, 5);

    // The stored reason (device record) is escaped.
    eventually("dev1's lastRefusal is escaped", || {
        let d = hub.get_json("/devices/dev1");
        let reason = d["lastRefusal"].as_str().unwrap_or_default().to_string();
        (!(reason.contains("dev1\\r\\nFORGED WARN") && reason.contains("\\u{1b}[2J")))
            .then_some(reason)
    });
    // The in-memory refusals: client id and reason escaped.
    let connections = hub.get_json("/connections");
    let listed = serde_json::to_string(&connections["refusals"]).unwrap();
    assert!(
        listed.contains(r#""clientId":"evil\\nFORGED INFO device connected device=admin\\u{1b}]0;owned\\u{7}\\u{9b}2J""#),
        "{listed}"
    );
    for r in connections["refusals"].as_array().unwrap() {
        for key in ["clientId", "reason"] {
            let text = r[key].as_str().unwrap();
            assert!(!text.chars().any(char::is_control), "{key}: {text:?}");
        }
    }

    // CLI text output.
    let show = ok(&hub.cli(&["device", "show", "dev1"]));
    assert_clean("device show", &show);
    assert!(show.contains("dev1\\r\\nFORGED WARN"), "{show}");
    let list = ok(&hub.cli(&["connections"]));
    assert_clean("connections", &list);
    assert!(list.contains("evil\\nFORGED INFO"), "{list}");

    // The hub's log.
    let log = hub.log_text();
    assert_clean("the hub's log", &log);
    assert!(log.contains("evil\\nFORGED INFO"), "{log}");
}

/// Makes `{stem}.pem`/`{stem}.key` in the hub's directory: a leaf with this CN signed by the
/// hub's test root (`root.pem`/`root.key`).
fn leaf_with_cn(dir: &Path, stem: &str, cn: &str) -> PathBuf {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = iothub_pki::gen::CaIssuer::from_pem(&read("root.pem"), &read("root.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let leaf = iothub_pki::gen::make_leaf(
        cn,
        iothub_pki::gen::KeyKind::EcP256,
        &ca,
        &[],
        now - time::Duration::minutes(5),
        now + time::Duration::days(1),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), leaf.key_pem).unwrap();
    dir.join(format!("{stem}.pem"))
}

#[test]
fn hostile_certificate_names_are_escaped() {
    let hub = TestHub::start_logged(&[]);
    verified_root_with_devices(&hub, &["dev2"]);
    leaf_with_cn(
        &hub.dir,
        "hostile",
        "dev2\nFORGED INFO device connected\u{1b}[31m\u{85}",
    );
    let code = connect_as(
        &hub,
        "hostile",
        "dev2",
        "localhost/dev2/?api-version=2021-04-12",
        None,
    )
    .unwrap();
    assert_eq!(code, 5);
    eventually("dev2's lastRefusal names the escaped CN", || {
        let d = hub.get_json("/devices/dev2");
        let reason = d["lastRefusal"].as_str().unwrap_or_default().to_string();
        (!reason.contains("dev2\\nFORGED INFO device connected\\u{1b}[31m\\u{85}"))
            .then_some(reason)
    });
    let show = ok(&hub.cli(&["device", "show", "dev2"]));
    assert_clean("device show", &show);
    let list = ok(&hub.cli(&["connections"]));
    assert_clean("connections", &list);
    let log = hub.log_text();
    assert_clean("the hub's log", &log);
    assert!(log.contains("dev2\\nFORGED INFO"), "{log}");
}

#[test]
fn refusals_past_the_limit_from_one_address_are_dropped_unjudged() {
    let limit = 5;
    let hub = TestHub::start_logged(&["--mqtt-refusal-limit", &limit.to_string()]);
    verified_root_with_devices(&hub, &["dev1"]);
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    // Each refusal names dev1 (its own id) with a different wrong username.
    for i in 0..limit {
        let user = format!("localhost/other-{i}/?api-version=2021-04-12");
        let code = connect_as(&hub, "dev1", "dev1", &user, Some(loopback)).unwrap();
        assert_eq!(code, 5, "refusal {i}");
    }
    // The next one is closed before any judgement: no CONNACK at all.
    for _ in 0..3 {
        let user = "localhost/other-x/?api-version=2021-04-12";
        let outcome = connect_as(&hub, "dev1", "dev1", user, Some(loopback));
        assert!(outcome.is_err(), "expected no CONNACK, got {outcome:?}");
    }
    // The device itself, from another address, still connects.
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let code = connect_as(
        &hub,
        "dev1",
        "dev1",
        "localhost/dev1/?api-version=2021-04-12",
        Some(elsewhere),
    )
    .unwrap();
    assert_eq!(code, 0);

    // The newest judged refusal is what the record shows; the dropped ones changed nothing.
    eventually("dev1's lastRefusal is the newest judged refusal", || {
        let d = hub.get_json("/devices/dev1");
        let reason = d["lastRefusal"].as_str().unwrap_or_default().to_string();
        (!reason.contains(&format!("other-{}", limit - 1))).then_some(reason)
    });
    let reasons = refusals(&hub, "dev1");
    assert_eq!(reasons.len(), limit, "{reasons:?}");

    // One line for the trip; the refusals themselves are not logged one by one.
    let log = hub.log_text();
    let trips = log
        .lines()
        .filter(|l| l.contains("connections from 127.0.0.1 are dropped"))
        .count();
    assert_eq!(trips, 1, "{log}");
    let refused_lines = log
        .lines()
        .filter(|l| l.contains("device refused") && l.contains("127.0.0.1"))
        .count();
    assert!(
        refused_lines < limit,
        "{refused_lines} refusal lines:\n{log}"
    );
}

#[test]
fn a_username_naming_another_host_is_refused() {
    // The first name is the one the CLI's connection string uses.
    let hub = TestHub::start(&["--hostname", "localhost", "--hostname", "hub.example.net"]);
    verified_root_with_devices(&hub, &["dev1"]);
    let user = "otherhub.example.com/dev1/?api-version=2021-04-12";
    assert_eq!(connect_as(&hub, "dev1", "dev1", user, None).unwrap(), 5);
    let reason = latest_refusal(&hub, "dev1");
    assert!(
        reason.contains("the username names host 'otherhub.example.com', which is not this hub"),
        "{reason}"
    );
    assert!(reason.contains("hub.example.net"), "{reason}");
    // Every name of the hub is accepted, with or without a port, in any case.
    let port = hub.mqtt_port;
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        "127.0.0.1".to_string(),
        "hub.example.net:8883".to_string(),
        "[::1]:8883".to_string(),
    ] {
        let user = format!("{host}/dev1/?api-version=2021-04-12");
        assert_eq!(
            connect_as(&hub, "dev1", "dev1", &user, None).unwrap(),
            0,
            "{user}"
        );
    }
    // An empty host is no host of the hub.
    let code = connect_as(&hub, "dev1", "dev1", "/dev1/?api-version=2021-04-12", None).unwrap();
    assert_eq!(code, 5);
}

#[test]
fn a_hostile_token_policy_name_is_escaped_in_the_log() {
    // A refused token's precise cause (naming its skn) is logged at debug level only.
    let hub = TestHub::start_logged_at("debug", &[]);
    // skn is percent-decoded: %0A is a newline, %1B an ESC.
    let token = "SharedAccessSignature sr=localhost&sig=AAAA&se=99999999999\
                 &skn=x%0AFORGED%20INFO%20request%20ok%1B%5B2J";
    let status = hub
        .client()
        .get(format!("{}/devices", hub.base()))
        .header("Authorization", token)
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
    eventually("the refusal is logged", || {
        let log = hub.log_text();
        (!log.contains("request refused: unauthorized")).then_some(log)
    });
    let log = hub.log_text();
    assert_clean("the hub's log", &log);
    assert!(
        log.contains("x\\nFORGED INFO request ok\\u{1b}[2J"),
        "{log}"
    );
}
