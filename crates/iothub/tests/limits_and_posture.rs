//! Limits and TLS posture, each tested against a running hub: failed-authentication rate limit,
//! TLS handshake and CONNECT timeouts (slowloris), the device connection limit, the chain-length
//! limit, C2D messages in flight per device; TLS 1.2/1.3 with AEAD suites only on both listeners
//! (checked with `openssl s_client`); and no secret in the logs of a full run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take()); // EOF: s_client ends after the handshake
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[test]
fn tls_posture_on_both_listeners() {
    let hub = TestHub::start(&[]);
    for port in [hub.port, hub.mqtt_port] {
        let (ok, text) = s_client(port, &["-tls1_3"]);
        assert!(ok, "TLS 1.3 on {port}: {text}");
        assert!(text.contains("TLSv1.3"), "{text}");
        let (ok, text) = s_client(port, &["-tls1_2"]);
        assert!(ok, "TLS 1.2 on {port}: {text}");
        assert!(
            text.contains("GCM") || text.contains("CHACHA20"),
            "an AEAD suite: {text}"
        );
        // Older protocols and non-AEAD (CBC) suites are refused.
        for args in [
            vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
            vec!["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
            vec![
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:AES128-SHA",
            ],
        ] {
            let (ok, text) = s_client(port, &args);
            assert!(!ok, "{args:?} on {port} was accepted: {text}");
        }
    }
    // Key files are owner-only.
    for f in [
        "tls/ca.key",
        "tls/server.key",
        "tls",
        "connection-string",
        "iothub.db",
    ] {
        // On the PostgreSQL store (IOTHUB_TEST_STORE=postgres) there is no database file.
        if f == "iothub.db" && std::env::var("IOTHUB_TEST_STORE").as_deref() == Ok("postgres") {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(hub.data().join(f)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
}

#[test]
fn failed_authentications_are_rate_limited_per_address() {
    let hub = TestHub::start(&["--auth-failure-limit", "5"]);
    let http = hub.client();
    let url = format!("{}/certificates", hub.base());
    for _ in 0..5 {
        assert_eq!(
            http.get(&url)
                .header(
                    "Authorization",
                    "SharedAccessSignature sr=x&sig=AA==&se=1&skn=iothubowner"
                )
                .send()
                .unwrap()
                .status(),
            401
        );
    }
    // Over the limit: 429 with Retry-After, even with a valid token, until the minute ends.
    let r = http
        .get(&url)
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: serde_json::Value = r.json().unwrap();
    assert_eq!(e["code"], "429001");
    // Portal login links count too.
    let r = http
        .get(format!("{}/portal/login?token=00", hub.base()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[test]
fn slow_clients_are_cut_off_by_the_handshake_timeout() {
    let hub = TestHub::start(&["--handshake-timeout", "1"]);
    for port in [hub.port, hub.mqtt_port] {
        // Slowloris: a TCP connection that never starts TLS is closed after the timeout.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        let n = s.read(&mut [0u8; 16]).unwrap_or(0);
        assert_eq!(n, 0, "the server closed the connection");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(4),
            "closed after {took:?}"
        );
    }
    // TLS done but no CONNECT: the MQTT session is closed after the timeout, and recorded.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", hub.mqtt_port),
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut child = out;
    let _stdin = child.stdin.take(); // kept open: the client stays silent
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "the silent client was not cut off"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = status;
    let v = hub.get_json("/connections");
    let reasons: Vec<String> = v["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no CONNECT within the timeout")),
        "{reasons:?}"
    );
}

#[test]
fn device_connection_and_chain_length_limits() {
    let hub = TestHub::start(&["--max-device-connections", "2", "--max-chain-length", "2"]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    // A chain of three (leaf + two intermediates) exceeds --max-chain-length 2.
    ok(&hub.cli_in(&dir, &["pki", "ca", "i1", "--parent", "root"]));
    ok(&hub.cli_in(&dir, &["pki", "ca", "i2", "--parent", "i1"]));
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "device",
            "deep",
            "--ca-cert",
            "i2.pem",
            "--ca-key",
            "i2.key",
        ],
    ));
    ok(&hub.cli(&["device", "add", "deep"]));
    let out = Command::new("mosquitto_pub")
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
            "deep.pem",
            "--key",
            "deep.key",
            "-i",
            "deep",
            "-u",
            "localhost/deep/?api-version=2021-04-12",
        ])
        .args(["-t", "devices/deep/messages/events/", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v = hub.get_json("/connections");
    assert!(v.to_string().contains("at most 2 are accepted"), "{v}");
    // Two idle TCP connections fill the gateway; a third is closed at once.
    let _a = TcpStream::connect(("127.0.0.1", hub.mqtt_port)).unwrap();
    let _b = TcpStream::connect(("127.0.0.1", hub.mqtt_port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(("127.0.0.1", hub.mqtt_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c.write_all(&[0x16, 0x03, 0x01]);
    assert_eq!(
        c.read(&mut [0u8; 8]).unwrap_or(0),
        0,
        "the third connection is refused"
    );
}

#[test]
fn no_secret_reaches_the_logs() {
    // A full run with debug logging: owner key, tokens, verification code, device key, portal
    // link token must not appear in what the hub logs (stderr).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = std::fs::File::create(dir.join("hub.log")).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args([
            "--data",
            "data",
            "serve",
            "--https",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--metrics",
            "off",
        ])
        .env("IOTHUB_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut printed = Vec::new();
    let mut mqtt_port = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("mqtt listening on ") {
            mqtt_port = a.rsplit(':').next().unwrap().to_string();
        }
        let done = line.starts_with("https listening on");
        printed.push(line);
        if done {
            break;
        }
    }
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .current_dir(dir)
            .arg("--data")
            .arg("data")
            .args(args)
            .env("IOTHUB_LOG", "debug")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["pki", "ca", "root"]);
    cli(&["cert", "add", "root", "root.pem"]);
    let code = cli(&["cert", "code", "root"]).trim().to_string();
    cli(&["cert", "prove", "root", "--key", "root.key"]);
    cli(&["device", "add", "sas-1", "--auth", "sas"]);
    let device: serde_json::Value =
        serde_json::from_str(&cli(&["-o", "json", "device", "show", "sas-1"])).unwrap();
    let _ = device;
    let cs = cli(&["device", "connection-string", "sas-1"]);
    let device_key = cs
        .trim()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_string();
    let token = iothub_pki::sas::build_token(
        "localhost/devices/sas-1",
        &device_key,
        None,
        unix_now() + 600,
    )
    .unwrap();
    let pubs = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &mqtt_port, "--cafile"])
        .arg(dir.join("data/tls/ca.pem"))
        .args([
            "-i",
            "sas-1",
            "-u",
            "localhost/sas-1/?api-version=2021-04-12",
            "-P",
            &token,
        ])
        .args([
            "-t",
            "devices/sas-1/messages/events/",
            "-m",
            "hello",
            "-q",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        pubs.status.success(),
        "{}",
        String::from_utf8_lossy(&pubs.stderr)
    );
    // A refused attempt with a wrong password too.
    let _ = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &mqtt_port, "--cafile"])
        .arg(dir.join("data/tls/ca.pem"))
        .args(["-i", "sas-1", "-u", "localhost/sas-1/?api-version=2021-04-12", "-P", "SharedAccessSignature sr=localhost%2Fdevices%2Fsas-1&sig=c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw%3D%3D&se=99999999999"])
        .args(["-t", "devices/sas-1/messages/events/", "-m", "x", "-q", "1"])
        .output();
    let link = cli(&["portal-link"]).trim().to_string();
    let sas = cli(&["sas-token"]).trim().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(dir.join("hub.log")).unwrap();
    assert!(
        logs.contains("device connected"),
        "debug logging ran: {logs}"
    );
    let owner_key = std::fs::read_to_string(dir.join("data/connection-string"))
        .unwrap()
        .trim()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_string();
    let secrets = [
        ("owner key", owner_key),
        ("device key", device_key),
        (
            "device token signature",
            token
                .split("sig=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_string(),
        ),
        (
            "refused password",
            "c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw".to_string(),
        ),
        (
            "owner token signature",
            sas.split("sig=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_string(),
        ),
        ("verification code", code),
        (
            "portal link token",
            link.split("token=").nth(1).unwrap().to_string(),
        ),
    ];
    // What serve printed to its stdout (not a terminal here) is a log too, under a supervisor.
    let stdout = printed.join("\n");
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        assert!(!logs.contains(&secret), "the {what} appears in the logs");
        assert!(!stdout.contains(&secret), "the {what} appears on stdout");
    }
    assert!(
        !stdout.contains("token=") && !stdout.contains("SharedAccessKey"),
        "serve printed a login link or a key off a terminal: {stdout}"
    );
    assert!(
        stdout.contains("owner connection string written to")
            && stdout.contains("'iothub portal-link'"),
        "serve says where the connection string is and how to sign in: {stdout}"
    );
}

/// `serve` on a terminal (a pseudo-terminal made by script(1)) prints a login link for the
/// operator watching it, and still never the owner key.
#[test]
fn serve_prints_a_login_link_only_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let command = format!(
        "exec {BIN} --data {} serve --https 127.0.0.1:0 --mqtt 127.0.0.1:0",
        dir.join("data").display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("IOTHUB_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let stdout = child.stdout.take().unwrap();
    let mut printed = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        let done = line.contains("https listening on");
        printed.push(line);
        if done {
            break;
        }
    }
    let owner_key = std::fs::read_to_string(dir.join("data/connection-string"))
        .unwrap()
        .trim()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_string();
    drop(child.stdin.take()); // script ends, and its terminal's hang-up ends the hub
    let _ = child.kill();
    let _ = child.wait();
    let screen = printed.join("\n");
    assert!(
        screen.contains("/portal/login?token="),
        "a login link for the operator at the terminal: {screen}"
    );
    assert!(
        !screen.contains(&owner_key),
        "the owner key on the terminal"
    );
}

#[test]
fn every_https_response_carries_hsts_and_nosniff() {
    let hub = TestHub::start(&[]);
    let http = hub.client();
    let anonymous = http
        .get(format!("{}/certificates", hub.base()))
        .send()
        .unwrap();
    let owner = http
        .get(format!("{}/certificates", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    let missing = http
        .get(format!("{}/no-such-route", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    for (what, r, status) in [
        ("a 401", anonymous, 401),
        ("a JSON 200", owner, 200),
        ("a 404", missing, 404),
    ] {
        assert_eq!(r.status(), status, "{what}");
        let h = r.headers();
        assert_eq!(
            h.get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000"),
            "{what}: {h:?}"
        );
        assert_eq!(
            h.get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{what}: {h:?}"
        );
    }
}

#[test]
fn cloud_to_device_messages_in_flight_are_bounded_per_device() {
    let hub = TestHub::start(&["--max-inflight", "2"]);
    let dir = hub.dir.clone();
    ok(&hub.cli_in(&dir, &["pki", "ca", "root"]));
    ok(&hub.cli_in(&dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(&dir, &["cert", "prove", "root", "--key", "root.key"]));
    ok(&hub.cli_in(
        &dir,
        &[
            "pki",
            "device",
            "slow",
            "--ca-cert",
            "root.pem",
            "--ca-key",
            "root.key",
        ],
    ));
    ok(&hub.cli(&["device", "add", "slow"]));
    for i in 0..5 {
        ok(&hub.cli(&["c2d", "send", "slow", &format!("m{i}")]));
    }
    let (mut d, code) =
        RawDevice::connect(&hub, &dir.join("slow.pem"), &dir.join("slow.key"), "slow").unwrap();
    assert_eq!(code, 0);
    d.send(&iothub_mqtt::codec::Packet::Subscribe(
        iothub_mqtt::codec::Subscribe {
            pkid: 1,
            filters: vec![("devices/slow/messages/devicebound/#".into(), 1)],
        },
    ))
    .unwrap();
    // Without acknowledging, the device receives exactly two messages.
    let mut got = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) && got.len() < 5 {
        match d.recv() {
            Ok(iothub_mqtt::codec::Packet::Publish(p)) => got.push(p),
            Ok(_) => {}
            Err(_) => break,
        }
        if got.len() == 2 {
            // Give the hub a moment to (wrongly) send a third.
            std::thread::sleep(Duration::from_millis(500));
            break;
        }
    }
    assert_eq!(got.len(), 2, "two in flight at most");
    // Each acknowledgement lets one more through, until all five arrived.
    let mut bodies: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let mut pending: Vec<u16> = got.iter().map(|p| p.pkid).collect();
    while bodies.len() < 5 {
        let pkid = pending.remove(0);
        d.send(&iothub_mqtt::codec::Packet::PubAck(pkid)).unwrap();
        loop {
            match d.recv().unwrap() {
                iothub_mqtt::codec::Packet::Publish(p) => {
                    bodies.push(String::from_utf8_lossy(&p.payload).into_owned());
                    pending.push(p.pkid);
                    break;
                }
                _ => continue,
            }
        }
    }
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
}
