//! The device gateway at its edges, over real TLS against the real `iothub serve`: a second
//! connection replacing the first, keep-alive at one second, the payload limit at its boundary,
//! cloud-to-device redelivery until PUBACK (also to a resumed CleanSession=0 session), the queue
//! limit and expiry, TLS 1.2 and 1.3, SAS and self-signed devices, foreign subscriptions and
//! malformed property bags, and SIGTERM while a device publishes.
//!
//! Every close for cause is checked against the reason the hub records (`GET /connections`).
//! Devices are driven either by mosquitto_pub (an independent client) or by [`Dev`], a small raw
//! MQTT 3.1.1 client over rustls that can withhold PUBACKs, stay silent or present no certificate.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use iothub_mqtt::codec::{self, Connect, Packet, Publish, Subscribe};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// A raw device
// ---------------------------------------------------------------------------------------------

/// How a raw device connects.
struct Opts<'a> {
    client: &'a str,
    /// Certificate chain file and key file, or None for no client certificate.
    cert: Option<(PathBuf, PathBuf)>,
    password: Option<String>,
    keep_alive: u16,
    clean_session: bool,
    /// Restrict TLS to this version (None: 1.2 and 1.3).
    tls: Option<&'static rustls::SupportedProtocolVersion>,
}

impl<'a> Opts<'a> {
    /// A certificate device whose files are `{dir}/{id}.pem` and `{dir}/{id}.key`.
    fn cert(dir: &Path, id: &'a str) -> Opts<'a> {
        Opts {
            client: id,
            cert: Some((dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")))),
            password: None,
            keep_alive: 60,
            clean_session: true,
            tls: None,
        }
    }
}

/// What a read brought.
#[derive(Debug)]
enum Got {
    Packet(Packet),
    /// The hub closed the connection (EOF, close_notify, reset).
    Closed(String),
    /// Nothing within the wait.
    Silent,
}

/// A raw MQTT 3.1.1 device over rustls (blocking).
struct Dev {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: BytesMut,
    /// The CONNACK's session-present flag.
    session_present: bool,
}

fn roots(ca_pem: &Path) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&std::fs::read(ca_pem).unwrap()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

impl Dev {
    /// Connects to the gateway at `port` trusting `ca_pem`; returns the device and the CONNACK code.
    fn connect_to(ca_pem: &Path, port: u16, o: &Opts) -> Result<(Dev, u8), String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match o.tls {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca_pem));
        let config = match &o.cert {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&std::fs::read(cert).unwrap())
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?;
                let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap())
                    .map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .map_err(|e| e.to_string())?;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let mut dev = Dev {
            tls: rustls::StreamOwned::new(conn, tcp),
            buf: BytesMut::new(),
            session_present: false,
        };
        dev.send(&Packet::Connect(Connect {
            protocol_level: 4,
            client_id: o.client.into(),
            clean_session: o.clean_session,
            keep_alive: o.keep_alive,
            username: Some(format!("localhost/{}/?api-version=2021-04-12", o.client)),
            password: o.password.clone().map(String::into_bytes),
            will: None,
        }))?;
        match dev.next(Duration::from_secs(10)) {
            Got::Packet(Packet::ConnAck(a)) => {
                dev.session_present = a.session_present;
                Ok((dev, a.code))
            }
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    fn connect(hub: &TestHub, o: &Opts) -> Result<(Dev, u8), String> {
        Dev::connect_to(&hub.data().join("tls/ca.pem"), hub.mqtt_port, o)
    }

    /// Connects and asserts the CONNACK accepted the device.
    fn admitted(hub: &TestHub, o: &Opts) -> Dev {
        let (d, code) = Dev::connect(hub, o).unwrap_or_else(|e| panic!("{}: {e}", o.client));
        assert_eq!(
            code,
            0,
            "{} was refused: {:?}",
            o.client,
            last_refusal(hub, o.client)
        );
        d
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        codec::encode(packet, &mut out).map_err(|e| e.to_string())?;
        self.tls.write_all(&out).map_err(|e| e.to_string())?;
        self.tls.flush().map_err(|e| e.to_string())
    }

    /// The next packet, the close of the connection, or silence after `wait`.
    fn next(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            match codec::decode(&mut self.buf, 1 << 20) {
                Ok(Some(p)) => return Got::Packet(p),
                Ok(None) => {}
                Err(e) => return Got::Closed(format!("undecodable bytes from the hub: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Silent;
            }
            self.tls.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 8192];
            match self.tls.read(&mut chunk) {
                Ok(0) => return Got::Closed("end of stream".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Silent
                }
                Err(e) => return Got::Closed(e.to_string()),
            }
        }
    }

    /// Waits up to `wait` for the hub to close the connection; how long it took. Acknowledgements
    /// read on the way are skipped; a PUBLISH fails the test.
    fn closed_within(&mut self, wait: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let left = wait.saturating_sub(t.elapsed());
            match self.next(left) {
                Got::Closed(_) => return t.elapsed(),
                Got::Packet(Packet::SubAck(_) | Packet::PubAck(_) | Packet::PingResp) => continue,
                Got::Silent => panic!("the connection is still open after {wait:?}"),
                Got::Packet(p) => panic!("expected the close, got {p:?}"),
            }
        }
    }

    fn publish_qos1(&mut self, topic: &str, payload: &[u8], pkid: u16) -> Result<(), String> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: topic.into(),
            pkid,
            payload: payload.to_vec().into(),
        }))?;
        match self.next(Duration::from_secs(10)) {
            Got::Packet(Packet::PubAck(id)) if id == pkid => Ok(()),
            other => Err(format!("expected PUBACK {pkid}, got {other:?}")),
        }
    }

    fn subscribe_c2d(&mut self, id: &str) {
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 7,
            filters: vec![(format!("devices/{id}/messages/devicebound/#"), 1)],
        }))
        .unwrap();
    }

    /// The next PUBLISH within `wait` (SUBACKs skipped), or None.
    fn next_publish(&mut self, wait: Duration) -> Option<Publish> {
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Packet(Packet::Publish(p)) => return Some(p),
                Got::Packet(Packet::SubAck(_)) => continue,
                Got::Packet(other) => panic!("unexpected {other:?}"),
                Got::Silent => return None,
                Got::Closed(e) => panic!("the hub closed the connection: {e}"),
            }
        }
    }

    fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect);
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// Hub helpers
// ---------------------------------------------------------------------------------------------

fn telemetry(id: &str) -> String {
    format!("devices/{id}/messages/events/")
}

/// The newest recorded refusal (or close for cause) of `client`.
fn last_refusal(hub: &TestHub, client: &str) -> Option<String> {
    hub.get_json("/connections")["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["clientId"] == client)
        .map(|r| r["reason"].as_str().unwrap().to_string())
}

/// Waits (up to 5 s) for a refusal of `client` containing every one of `want`; returns it.
fn refusal_with(hub: &TestHub, client: &str, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all: Vec<String> = hub.get_json("/connections")["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["clientId"] == client)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .collect();
        if let Some(r) = all.iter().find(|r| want.iter().all(|w| r.contains(w))) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{client}: no refusal contains {want:?}; recorded: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn live(hub: &TestHub) -> Vec<String> {
    hub.get_json("/connections")["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["deviceId"].as_str().unwrap().to_string())
        .collect()
}

/// Bodies of the stored telemetry of `id`, oldest first.
fn stored_bodies(hub: &TestHub, id: &str) -> Vec<String> {
    hub.get_json(&format!("/messages?from=1&deviceId={id}&limit=1000"))["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap_or("<binary>").to_string())
        .collect()
}

/// The cloud-to-device messages of `id` (newest first), as `c2d list -o json` shows them.
fn c2d_list(hub: &TestHub, id: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(&hub.cli(&["-o", "json", "c2d", "list", id]))).unwrap();
    v["value"].as_array().unwrap().clone()
}

/// Waits (up to 5 s) for a cloud-to-device message to reach `state`; returns it.
fn wait_for_state(hub: &TestHub, id: &str, message_id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = c2d_state(hub, id, message_id);
        if m["state"] == state {
            return m;
        }
        assert!(Instant::now() < deadline, "never {state}: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn c2d_state(hub: &TestHub, id: &str, message_id: &str) -> Value {
    c2d_list(hub, id)
        .into_iter()
        .find(|m| m["messageId"] == message_id)
        .unwrap_or_else(|| panic!("no message {message_id} for {id}"))
}

/// A hub with a Verified root CA (`root.pem`/`root.key` in its directory) and CA devices `ids`
/// (`{id}.pem`/`{id}.key`), registered.
fn hub_with_devices(extra: &[&str], ids: &[&str]) -> TestHub {
    let hub = TestHub::start(extra);
    ca_devices(&hub.data(), &hub.dir, ids);
    hub
}

/// Runs the CLI on the hub whose data directory is `data`, in `cwd`.
fn cli_at(data: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env("IOTHUB_LOG", "error")
        .output()
        .expect("run iothub CLI")
}

fn ca_devices(data: &Path, dir: &Path, ids: &[&str]) {
    ok(&cli_at(data, dir, &["pki", "ca", "root", "--force"]));
    ok(&cli_at(data, dir, &["cert", "add", "root", "root.pem"]));
    ok(&cli_at(
        data,
        dir,
        &["cert", "prove", "root", "--key", "root.key"],
    ));
    for id in ids {
        ok(&cli_at(
            data,
            dir,
            &[
                "pki",
                "device",
                id,
                "--ca-cert",
                "root.pem",
                "--ca-key",
                "root.key",
                "--force",
            ],
        ));
        ok(&cli_at(data, dir, &["device", "add", id]));
    }
}

/// mosquitto_pub, one QoS 1 message; `extra` carries the credentials and TLS options.
/// Returns (exit code, stderr).
fn mosquitto_pub(hub: &TestHub, client: &str, extra: &[&str], msg: &str) -> (i32, String) {
    let out = Command::new("mosquitto_pub")
        .current_dir(&hub.dir)
        .args(["-h", "localhost", "-p", &hub.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(hub.data().join("tls/ca.pem"))
        .args(["-i", client])
        .args(["-u", &format!("localhost/{client}/?api-version=2021-04-12")])
        .args(extra)
        .args(["-t", &telemetry(client), "-m", msg, "-q", "1"])
        .output()
        .expect("mosquitto_pub (install mosquitto-clients)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused_by_mosquitto(code: i32, err: &str, who: &str) {
    assert_ne!(code, 0, "{who} was admitted");
    assert!(
        err.contains("not authorised") || err.contains("Connection Refused"),
        "{who}: expected CONNACK 5, got: {err}"
    );
}

fn api_post(hub: &TestHub, path: &str, body: &Value) -> (u16, Value) {
    let r = hub
        .client()
        .post(format!("{}{path}", hub.base()))
        .header("Authorization", hub.owner_token())
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_connection_closes_the_first_and_keeps_working() {
    let hub = hub_with_devices(&[], &["twin-a"]);
    let dir = hub.dir.clone();
    ok(&hub.cli(&["c2d", "send", "twin-a", "hand-over", "--message-id", "h1"]));
    let mut first = Dev::admitted(&hub, &Opts::cert(&dir, "twin-a"));
    first
        .publish_qos1(&telemetry("twin-a"), b"from the first", 1)
        .unwrap();
    // The first connection holds a cloud-to-device message in flight (no PUBACK).
    first.subscribe_c2d("twin-a");
    let p = first
        .next_publish(Duration::from_secs(10))
        .expect("delivery to the first connection");
    assert_eq!(&p.payload[..], b"hand-over");
    let mut second = Dev::admitted(&hub, &Opts::cert(&dir, "twin-a"));
    // The first socket is closed by the hub, promptly, with the reason recorded.
    let took = first.closed_within(Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    let reason = refusal_with(&hub, "twin-a", &["replaced"]);
    assert!(reason.contains("twin-a"), "{reason}");
    // The old session's end does not unregister the new one.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(live(&hub), vec!["twin-a".to_string()]);
    second
        .publish_qos1(&telemetry("twin-a"), b"from the second", 1)
        .unwrap();
    second.send(&Packet::PingReq).unwrap();
    assert!(matches!(
        second.next(Duration::from_secs(5)),
        Got::Packet(Packet::PingResp)
    ));
    assert_eq!(
        stored_bodies(&hub, "twin-a"),
        ["from the first", "from the second"]
    );
    // What the first connection left unacknowledged goes to the second, which acknowledges it.
    second.subscribe_c2d("twin-a");
    let p = second
        .next_publish(Duration::from_secs(10))
        .expect("redelivery to the second connection");
    assert_eq!(&p.payload[..], b"hand-over");
    second.send(&Packet::PubAck(p.pkid)).unwrap();
    wait_for_state(&hub, "twin-a", "h1", "delivered");
    second.disconnect();
}

/// Admits `id` asking for `keep_alive` seconds, stays silent, and checks that the hub closes it
/// 1.5 x 1 s after the CONNACK (a little scheduling slack on a loaded machine).
fn closed_after_one_second_keep_alive(hub: &TestHub, id: &str, keep_alive: u16) {
    let mut device = Dev::admitted(
        hub,
        &Opts {
            keep_alive,
            ..Opts::cert(&hub.dir, id)
        },
    );
    let took = device.closed_within(Duration::from_secs(6));
    assert!(
        took >= Duration::from_millis(1400) && took <= Duration::from_millis(2750),
        "closed after {took:?}"
    );
}

/// `--max-keep-alive` holds a device that asks for 60 s to the hub's 1 s.
#[test]
fn the_keep_alive_cap_holds_a_longer_keep_alive_to_it() {
    let hub = hub_with_devices(&["--max-keep-alive", "1"], &["asks-60"]);
    closed_after_one_second_keep_alive(&hub, "asks-60", 60);
    refusal_with(&hub, "asks-60", &["keep-alive expired", "1.5 x 1 s"]);
}

#[test]
fn keep_alive_of_one_second_closes_silent_devices_and_pings_keep_them_open() {
    let hub = hub_with_devices(&[], &["silent", "pinger"]);
    let dir = hub.dir.clone();

    closed_after_one_second_keep_alive(&hub, "silent", 1);
    refusal_with(&hub, "silent", &["keep-alive"]);

    let mut pinger = Dev::admitted(
        &hub,
        &Opts {
            keep_alive: 1,
            ..Opts::cert(&dir, "pinger")
        },
    );
    let start = Instant::now();
    let mut pongs = 0;
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(500));
        pinger.send(&Packet::PingReq).unwrap();
        match pinger.next(Duration::from_secs(2)) {
            Got::Packet(Packet::PingResp) => pongs += 1,
            other => panic!(
                "after {:?}: expected PINGRESP, got {other:?}",
                start.elapsed()
            ),
        }
    }
    assert!(pongs >= 5, "{pongs} PINGRESPs");
    // Still open and serving.
    pinger
        .publish_qos1(&telemetry("pinger"), b"still here", 1)
        .unwrap();
    assert!(live(&hub).contains(&"pinger".to_string()));
    assert!(
        last_refusal(&hub, "pinger").is_none(),
        "{:?}",
        last_refusal(&hub, "pinger")
    );
    pinger.disconnect();
}

#[test]
fn the_payload_limit_acks_up_to_the_limit_and_closes_beyond_it() {
    let hub = hub_with_devices(&["--max-message-bytes", "1024"], &["big"]);
    let dir = hub.dir.clone();
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "big"));
    d.publish_qos1(&telemetry("big"), &[b'a'; 1000], 1).unwrap();
    d.publish_qos1(&telemetry("big"), &[b'b'; 1024], 2).unwrap();
    // 2000 bytes: no PUBACK, the session is closed, and the reason names the limit.
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: telemetry("big"),
        pkid: 3,
        payload: vec![b'c'; 2000].into(),
    }))
    .unwrap();
    match d.next(Duration::from_secs(5)) {
        Got::Closed(_) => {}
        other => panic!("expected the close, got {other:?}"),
    }
    let reason = refusal_with(&hub, "big", &["1024"]);
    assert!(reason.contains("2000"), "{reason}");
    // One byte over, at QoS 0, is refused as well.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "big"));
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: telemetry("big"),
        pkid: 0,
        payload: vec![b'd'; 1025].into(),
    }))
    .unwrap();
    d.closed_within(Duration::from_secs(5));
    refusal_with(&hub, "big", &["1025", "1024"]);
    // Far beyond the limit (beyond the largest packet read at all): closed as well.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "big"));
    let _ = d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: telemetry("big"),
        pkid: 4,
        payload: vec![b'e'; 100_000].into(),
    }));
    d.closed_within(Duration::from_secs(5));
    refusal_with(&hub, "big", &["exceeds"]);
    let bodies = stored_bodies(&hub, "big");
    assert_eq!(
        bodies.len(),
        2,
        "only the two acknowledged messages are stored"
    );
    assert_eq!(bodies[0].len(), 1000);
    assert_eq!(bodies[1].len(), 1024);
}

#[test]
fn a_far_oversized_message_is_refused_naming_the_configured_limit() {
    let hub = hub_with_devices(&["--max-message-bytes", "1024"], &["huge"]);
    let mut d = Dev::admitted(&hub, &Opts::cert(&hub.dir, "huge"));
    let _ = d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: telemetry("huge"),
        pkid: 1,
        payload: vec![b'e'; 100_000].into(),
    }));
    d.closed_within(Duration::from_secs(5));
    let reason = refusal_with(&hub, "huge", &["bytes"]);
    assert!(
        reason.contains("1024"),
        "the reason does not name the configured limit: {reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cloud to device
// ---------------------------------------------------------------------------------------------

#[test]
fn c2d_is_redelivered_until_the_device_acknowledges_it() {
    let hub = hub_with_devices(&[], &["c2d-dev"]);
    let dir = hub.dir.clone();
    ok(&hub.cli(&[
        "c2d",
        "send",
        "c2d-dev",
        "open the valve",
        "--message-id",
        "valve-1",
    ]));
    assert_eq!(c2d_state(&hub, "c2d-dev", "valve-1")["state"], "queued");

    // 1: received, not acknowledged, clean DISCONNECT.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "c2d-dev"));
    d.subscribe_c2d("c2d-dev");
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("first delivery");
    assert_eq!(&p.payload[..], b"open the valve");
    assert_eq!(p.qos, 1);
    assert!(p.topic.contains("%24.mid=valve-1"), "{}", p.topic);
    d.disconnect();
    std::thread::sleep(Duration::from_millis(300));
    let m = c2d_state(&hub, "c2d-dev", "valve-1");
    assert_eq!(m["state"], "queued", "{m}");
    assert!(m["deliveryCount"].as_i64().unwrap() >= 1, "{m}");

    // 2: received again, not acknowledged, the socket simply dropped.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "c2d-dev"));
    d.subscribe_c2d("c2d-dev");
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("second delivery");
    assert_eq!(&p.payload[..], b"open the valve");
    drop(d);
    std::thread::sleep(Duration::from_millis(300));
    let m = c2d_state(&hub, "c2d-dev", "valve-1");
    assert_eq!(m["state"], "queued", "{m}");
    assert!(m["deliveryCount"].as_i64().unwrap() >= 2, "{m}");

    // 3: received and acknowledged: delivered.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "c2d-dev"));
    d.subscribe_c2d("c2d-dev");
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("third delivery");
    assert_eq!(&p.payload[..], b"open the valve");
    d.send(&Packet::PubAck(p.pkid)).unwrap();
    let m = wait_for_state(&hub, "c2d-dev", "valve-1", "delivered");
    assert!(m["deliveredTime"].is_string(), "{m}");
    d.disconnect();

    // 4: nothing is delivered again once acknowledged.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "c2d-dev"));
    d.subscribe_c2d("c2d-dev");
    if let Some(p) = d.next_publish(Duration::from_secs(1)) {
        panic!("an acknowledged message came again: {p:?}");
    }
    d.disconnect();
}

/// Delivers `c2d-p`'s one queued message to a CleanSession=0 connection that does not acknowledge
/// it, disconnects, and reconnects with CleanSession=0: the resumed session (no SUBSCRIBE) gets the
/// message again, which it returns.
fn persistent_redelivery(hub: &TestHub) -> Publish {
    let dir = hub.dir.clone();
    ok(&hub.cli(&["c2d", "send", "c2d-p", "kept", "--message-id", "k1"]));
    let persistent = || Opts {
        clean_session: false,
        ..Opts::cert(&dir, "c2d-p")
    };
    let mut d = Dev::admitted(hub, &persistent());
    d.subscribe_c2d("c2d-p");
    let first = d
        .next_publish(Duration::from_secs(10))
        .expect("first delivery");
    assert_eq!(&first.payload[..], b"kept");
    assert!(!first.dup, "a first delivery is not a duplicate");
    d.disconnect();
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Dev::admitted(hub, &persistent());
    assert!(d.session_present, "CONNACK session present = 1");
    let again = d
        .next_publish(Duration::from_secs(10))
        .expect("redelivery without SUBSCRIBE");
    assert_eq!(&again.payload[..], b"kept");
    d.send(&Packet::PubAck(again.pkid)).unwrap();
    wait_for_state(hub, "c2d-p", "k1", "delivered");
    d.disconnect();
    again
}

#[test]
fn a_persistent_session_gets_unacknowledged_c2d_again_without_subscribing() {
    let hub = hub_with_devices(&[], &["c2d-p"]);
    persistent_redelivery(&hub);
    // A clean session starts without the subscription: nothing arrives until it subscribes.
    ok(&hub.cli(&["c2d", "send", "c2d-p", "later", "--message-id", "k2"]));
    let mut d = Dev::admitted(&hub, &Opts::cert(&hub.dir, "c2d-p"));
    assert!(!d.session_present);
    assert!(d.next_publish(Duration::from_millis(700)).is_none());
    d.subscribe_c2d("c2d-p");
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("after SUBSCRIBE");
    assert_eq!(&p.payload[..], b"later");
    d.send(&Packet::PubAck(p.pkid)).unwrap();
    wait_for_state(&hub, "c2d-p", "k2", "delivered");
    d.disconnect();
}

/// The Azure device SDK subscribes once and then relies on its CleanSession=0 session: a restart
/// of the hub must not forget the subscription, or the device never hears of C2D again.
#[test]
fn a_persistent_session_survives_a_restart_of_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut hub = TestHub::start_in(&dir, &[]);
    ca_devices(&hub.data(), &dir, &["c2d-p"]);
    let persistent = || Opts {
        clean_session: false,
        ..Opts::cert(&dir, "c2d-p")
    };
    let mut d = Dev::admitted(&hub, &persistent());
    d.subscribe_c2d("c2d-p");
    std::thread::sleep(Duration::from_millis(300));
    d.disconnect();
    hub.kill9();
    let hub = TestHub::start_in(&dir, &[]);
    ok(&hub.cli(&[
        "c2d",
        "send",
        "c2d-p",
        "after restart",
        "--message-id",
        "r1",
    ]));
    let mut d = Dev::admitted(&hub, &persistent());
    assert!(
        d.session_present,
        "CONNACK session present = 1 after the restart"
    );
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("delivered to the resumed session without SUBSCRIBE");
    assert_eq!(&p.payload[..], b"after restart");
    d.send(&Packet::PubAck(p.pkid)).unwrap();
    wait_for_state(&hub, "c2d-p", "r1", "delivered");
    d.disconnect();
    // A clean session forgets it, also across a restart.
    let (d, _) = Dev::connect(&hub, &Opts::cert(&dir, "c2d-p")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.disconnect();
    drop(hub);
    let hub = TestHub::start_in(&dir, &[]);
    let d = Dev::admitted(&hub, &persistent());
    assert!(
        !d.session_present,
        "CleanSession=1 forgot the session for good"
    );
    d.disconnect();
}

#[test]
fn a_redelivered_c2d_publish_carries_the_dup_flag() {
    let hub = hub_with_devices(&[], &["c2d-p"]);
    let again = persistent_redelivery(&hub);
    assert!(
        again.dup,
        "re-delivery to the resumed session has DUP=0: {again:?}"
    );
}

#[test]
fn c2d_queue_limit_and_expiry() {
    let hub = hub_with_devices(&["--c2d-max-pending", "3"], &["full", "ttl"]);
    let dir = hub.dir.clone();
    for i in 1..=3 {
        ok(&hub.cli(&["c2d", "send", "full", &format!("m{i}")]));
    }
    let out = hub.cli(&["c2d", "send", "full", "m4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the 4th message was queued");
    assert!(
        err.contains("HTTP 403") && err.contains("403004"),
        "stderr: {err}"
    );
    let (status, body) = api_post(
        &hub,
        "/devices/full/messages/devicebound",
        &serde_json::json!({ "body": "m5" }),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "403004", "{body}");
    assert_eq!(c2d_list(&hub, "full").len(), 3);
    assert_eq!(
        hub.get_json("/devices/full")["cloudToDeviceMessageCount"],
        3
    );
    // Once the device has acknowledged them, the queue has room again.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "full"));
    d.subscribe_c2d("full");
    for _ in 0..3 {
        let p = d
            .next_publish(Duration::from_secs(10))
            .expect("queued message");
        d.send(&Packet::PubAck(p.pkid)).unwrap();
    }
    d.disconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c2d_list(&hub, "full")
        .iter()
        .any(|m| m["state"] != "delivered")
    {
        assert!(Instant::now() < deadline, "{:?}", c2d_list(&hub, "full"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hub.get_json("/devices/full")["cloudToDeviceMessageCount"],
        0
    );
    for i in 4..=6 {
        ok(&hub.cli(&["c2d", "send", "full", &format!("m{i}")]));
    }
    let out = hub.cli(&["c2d", "send", "full", "m7"]);
    assert!(!out.status.success(), "the queue limit applies again");

    // Expiry: messages with a 1 s time to live are expired after 2 s, no longer count against
    // the queue limit, and are never delivered.
    for id in ["short", "short-2", "short-3"] {
        ok(&hub.cli(&[
            "c2d",
            "send",
            "ttl",
            "too late",
            "--ttl",
            "1",
            "--message-id",
            id,
        ]));
    }
    std::thread::sleep(Duration::from_secs(2));
    let m = c2d_state(&hub, "ttl", "short");
    assert_eq!(m["state"], "expired", "{m}");
    ok(&hub.cli(&["c2d", "send", "ttl", "in time", "--message-id", "long"]));
    assert_eq!(c2d_state(&hub, "ttl", "long")["state"], "queued");
    assert_eq!(hub.get_json("/devices/ttl")["cloudToDeviceMessageCount"], 1);
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "ttl"));
    d.subscribe_c2d("ttl");
    let p = d
        .next_publish(Duration::from_secs(10))
        .expect("the live message");
    assert_eq!(&p.payload[..], b"in time");
    d.send(&Packet::PubAck(p.pkid)).unwrap();
    if let Some(p) = d.next_publish(Duration::from_secs(1)) {
        panic!("an expired message was delivered: {p:?}");
    }
    d.disconnect();
    let m = c2d_state(&hub, "ttl", "short");
    assert_eq!(m["state"], "expired", "{m}");
    assert_eq!(m["deliveryCount"], 0, "{m}");
}

#[test]
fn c2d_to_an_unknown_device_is_404001() {
    let hub = TestHub::start(&[]);
    let (status, body) = api_post(
        &hub,
        "/devices/nobody/messages/devicebound",
        &serde_json::json!({ "body": "hello?" }),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "404001", "{body}");
    let out = hub.cli(&["c2d", "send", "nobody", "hello?"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404001"), "stderr: {err}");
    // Listing the messages of an unknown device is the same refusal.
    let r = hub
        .client()
        .get(format!(
            "{}/devices/nobody/messages/devicebound",
            hub.base()
        ))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().unwrap()["code"], "404001");
}

// ---------------------------------------------------------------------------------------------
// TLS and credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_1_2_and_1_3_work_and_a_device_without_credentials_is_refused() {
    let hub = hub_with_devices(&[], &["tls-dev"]);
    let dir = hub.dir.clone();
    let cert = ["--cert", "tls-dev.pem", "--key", "tls-dev.key"];
    for (version, msg) in [("tlsv1.2", "over 1.2"), ("tlsv1.3", "over 1.3")] {
        let mut args = cert.to_vec();
        args.extend(["--tls-version", version]);
        let (code, err) = mosquitto_pub(&hub, "tls-dev", &args, msg);
        assert_eq!(code, 0, "{version}: {err}");
    }
    // The raw client confirms what was negotiated.
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut d = Dev::admitted(
            &hub,
            &Opts {
                tls: Some(version),
                ..Opts::cert(&dir, "tls-dev")
            },
        );
        assert_eq!(d.tls.conn.protocol_version(), Some(want));
        d.publish_qos1(&telemetry("tls-dev"), format!("raw {want:?}").as_bytes(), 1)
            .unwrap();
        d.disconnect();
    }
    assert_eq!(
        stored_bodies(&hub, "tls-dev"),
        ["over 1.2", "over 1.3", "raw TLSv1_2", "raw TLSv1_3"]
    );

    // No client certificate and no password: CONNACK 5 with the reason.
    let (code, err) = mosquitto_pub(&hub, "tls-dev", &[], "anonymous");
    assert_refused_by_mosquitto(code, &err, "tls-dev without credentials");
    refusal_with(&hub, "tls-dev", &["presented no client certificate"]);
    let (d, code) = Dev::connect(
        &hub,
        &Opts {
            cert: None,
            ..Opts::cert(&dir, "tls-dev")
        },
    )
    .unwrap();
    assert_eq!(code, codec::CONNACK_NOT_AUTHORIZED);
    drop(d);
    // ... and for a client id the hub does not know.
    let (code, err) = mosquitto_pub(&hub, "stranger", &[], "anonymous");
    assert_refused_by_mosquitto(code, &err, "stranger");
    refusal_with(&hub, "stranger", &["not registered"]);
    assert_eq!(stored_bodies(&hub, "tls-dev").len(), 4);
}

/// A device SAS token for `id` signed with `key`, expiring at `expiry`.
fn device_token(resource_id: &str, key: &str, expiry: i64) -> String {
    iothub_pki::sas::build_token(
        &format!("localhost/devices/{resource_id}"),
        key,
        None,
        expiry,
    )
    .unwrap()
}

#[test]
fn sas_devices_connect_with_a_token_and_no_certificate() {
    let hub = TestHub::start(&[]);
    ok(&hub.cli(&["device", "add", "sas-1", "--auth", "sas"]));
    ok(&hub.cli(&["device", "add", "sas-2", "--auth", "sas"]));
    let dev = hub.get_json("/devices/sas-1");
    assert_eq!(dev["authentication"]["type"], "sas");
    let primary = dev["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let secondary = dev["authentication"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let now = unix_now();

    // Admitted with a token signed by the primary key, then by the secondary key.
    let token = device_token("sas-1", &primary, now + 3600);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &token], "sas telemetry");
    assert_eq!(code, 0, "{err} / {:?}", last_refusal(&hub, "sas-1"));
    let token2 = device_token("sas-1", &secondary, now + 3600);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &token2], "secondary key");
    assert_eq!(code, 0, "{err} / {:?}", last_refusal(&hub, "sas-1"));
    assert_eq!(
        stored_bodies(&hub, "sas-1"),
        ["sas telemetry", "secondary key"]
    );
    // The raw client, without a certificate, sees the session as sas.
    let mut d = Dev::admitted(
        &hub,
        &Opts {
            client: "sas-1",
            cert: None,
            password: Some(token.clone()),
            keep_alive: 60,
            clean_session: true,
            tls: None,
        },
    );
    let conns = hub.get_json("/connections");
    let session = conns["live"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["deviceId"] == "sas-1")
        .cloned()
        .unwrap_or_else(|| panic!("sas-1 not live: {conns}"));
    assert_eq!(session["authentication"], "sas", "{session}");
    let shown = hub.get_json("/devices/sas-1");
    assert_eq!(shown["connectionState"], "Connected", "{shown}");
    assert_ne!(shown["lastActivityTime"], "0001-01-01T00:00:00Z", "{shown}");
    d.publish_qos1(&telemetry("sas-1"), b"raw sas", 1).unwrap();
    d.disconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.get_json("/devices/sas-1")["connectionState"] != "Disconnected" {
        assert!(Instant::now() < deadline, "sas-1 still shown Connected");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Refusals: expired, signed with another key, for another device, no token at all.
    let expired = device_token("sas-1", &primary, now - 10);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &expired], "x");
    assert_refused_by_mosquitto(code, &err, "an expired token");
    refusal_with(&hub, "sas-1", &["expired"]);

    let other_key = iothub_pki::sas::generate_key().unwrap();
    let forged = device_token("sas-1", &other_key, now + 3600);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &forged], "x");
    assert_refused_by_mosquitto(code, &err, "a token signed with another key");
    refusal_with(&hub, "sas-1", &["signature", "sas-1"]);

    let for_other = device_token("sas-2", &primary, now + 3600);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &for_other], "x");
    assert_refused_by_mosquitto(code, &err, "a token for sas-2");
    refusal_with(&hub, "sas-1", &["localhost/devices/sas-2"]);

    // sas-2's own valid token presented as sas-1 is refused too (its key is not sas-1's).
    let sas2_key = hub.get_json("/devices/sas-2")["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let stolen = device_token("sas-2", &sas2_key, now + 3600);
    let (code, err) = mosquitto_pub(&hub, "sas-1", &["-P", &stolen], "x");
    assert_refused_by_mosquitto(code, &err, "sas-2's token used by sas-1");

    let (code, err) = mosquitto_pub(&hub, "sas-1", &[], "x");
    assert_refused_by_mosquitto(code, &err, "no token");
    refusal_with(&hub, "sas-1", &["sent no SAS token"]);

    assert_eq!(
        stored_bodies(&hub, "sas-1").len(),
        3,
        "refused sends stored nothing"
    );
}

/// Makes a self-signed P-256 certificate `{stem}.pem`/`{stem}.key` with CN `cn` in `dir`;
/// returns (SHA-256 fingerprint as openssl prints it, SHA-1 hex upper-case without colons).
fn self_signed(dir: &Path, stem: &str, cn: &str) -> (String, String) {
    sh(
        dir,
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.pem"),
        ],
    );
    let fingerprint = |alg: &str| {
        let out = sh(
            dir,
            "openssl",
            &[
                "x509",
                "-noout",
                "-fingerprint",
                alg,
                "-in",
                &format!("{stem}.pem"),
            ],
        );
        out.trim().split_once('=').unwrap().1.to_string()
    };
    let sha256 = fingerprint("-sha256");
    assert_eq!(sha256.len(), 95, "colon-separated SHA-256: {sha256}");
    (sha256, fingerprint("-sha1").replace(':', ""))
}

#[test]
fn self_signed_devices_are_admitted_by_thumbprint_only() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    let (ss1_sha256, _) = self_signed(&dir, "ss-1", "ss-1");
    let (_, ss2_sha1) = self_signed(&dir, "ss-2", "ss-2");
    let (_, other_sha1) = self_signed(&dir, "ss-other", "ss-1");
    // SHA-256 with colons, as openssl prints it; SHA-1 in lower case.
    ok(&hub.cli(&[
        "device",
        "add",
        "ss-1",
        "--auth",
        "self-signed",
        "--thumbprint",
        &ss1_sha256,
    ]));
    ok(&hub.cli(&[
        "device",
        "add",
        "ss-2",
        "--auth",
        "self-signed",
        "--thumbprint",
        &ss2_sha1.to_lowercase(),
    ]));
    let shown = hub.get_json("/devices/ss-1");
    assert_eq!(
        shown["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        ss1_sha256.replace(':', "").to_uppercase()
    );

    let (code, err) = mosquitto_pub(
        &hub,
        "ss-1",
        &["--cert", "ss-1.pem", "--key", "ss-1.key"],
        "self-signed 1",
    );
    assert_eq!(code, 0, "{err} / {:?}", last_refusal(&hub, "ss-1"));
    let (code, err) = mosquitto_pub(
        &hub,
        "ss-2",
        &["--cert", "ss-2.pem", "--key", "ss-2.key"],
        "self-signed 2",
    );
    assert_eq!(code, 0, "{err} / {:?}", last_refusal(&hub, "ss-2"));
    assert_eq!(stored_bodies(&hub, "ss-1"), ["self-signed 1"]);
    assert_eq!(stored_bodies(&hub, "ss-2"), ["self-signed 2"]);

    // Another self-signed certificate with the same CN: refused, the reason names its thumbprint.
    let (code, err) = mosquitto_pub(
        &hub,
        "ss-1",
        &["--cert", "ss-other.pem", "--key", "ss-other.key"],
        "impostor",
    );
    assert_refused_by_mosquitto(code, &err, "ss-1 with another certificate");
    let reason = refusal_with(&hub, "ss-1", &["thumbprint"]);
    assert!(reason.contains(&other_sha1), "{reason} lacks {other_sha1}");
    // ss-2's certificate is not ss-1's either.
    let (code, err) = mosquitto_pub(
        &hub,
        "ss-1",
        &["--cert", "ss-2.pem", "--key", "ss-2.key"],
        "impostor",
    );
    assert_refused_by_mosquitto(code, &err, "ss-1 with ss-2's certificate");
    refusal_with(&hub, "ss-1", &[&ss2_sha1]);
    // No certificate at all.
    let (code, err) = mosquitto_pub(&hub, "ss-1", &[], "impostor");
    assert_refused_by_mosquitto(code, &err, "ss-1 without a certificate");
    refusal_with(&hub, "ss-1", &["selfSigned", "no client certificate"]);
    assert_eq!(stored_bodies(&hub, "ss-1"), ["self-signed 1"]);

    // The secondary thumbprint admits as well.
    let (ss3_sha256, _) = self_signed(&dir, "ss-3", "ss-3");
    ok(&hub.cli(&[
        "device",
        "add",
        "ss-3",
        "--auth",
        "self-signed",
        "--thumbprint",
        &"0".repeat(64),
        "--secondary-thumbprint",
        &ss3_sha256,
    ]));
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "ss-3"));
    d.publish_qos1(&telemetry("ss-3"), b"secondary", 1).unwrap();
    d.disconnect();

    // A registered thumbprint does not admit a certificate outside its validity.
    let now = time::OffsetDateTime::now_utc();
    let old = iothub_pki::gen::make_ca(
        "ss-old",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    std::fs::write(dir.join("ss-old.pem"), &old.cert_pem).unwrap();
    std::fs::write(dir.join("ss-old.key"), &old.key_pem).unwrap();
    let old_sha256 = sh(
        &dir,
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            "ss-old.pem",
        ],
    );
    let old_sha256 = old_sha256.trim().split_once('=').unwrap().1.to_string();
    ok(&hub.cli(&[
        "device",
        "add",
        "ss-old",
        "--auth",
        "self-signed",
        "--thumbprint",
        &old_sha256,
    ]));
    let (_, code) = Dev::connect(&hub, &Opts::cert(&dir, "ss-old")).unwrap();
    assert_eq!(code, codec::CONNACK_NOT_AUTHORIZED);
    refusal_with(&hub, "ss-old", &["not now"]);
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

#[test]
fn foreign_subscriptions_and_malformed_property_bags_close_the_session() {
    let hub = hub_with_devices(&[], &["nosy", "victim"]);
    let dir = hub.dir.clone();

    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "nosy"));
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("devices/victim/messages/devicebound/#".into(), 1)],
    }))
    .unwrap();
    match d.next(Duration::from_secs(5)) {
        Got::Closed(_) => {}
        other => panic!("expected the close, got {other:?}"),
    }
    let reason = refusal_with(&hub, "nosy", &["victim"]);
    assert!(reason.contains("subscri"), "{reason}");

    // A message queued for the victim stays queued (nothing leaked to nosy).
    ok(&hub.cli(&["c2d", "send", "victim", "private", "--message-id", "p1"]));
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "nosy"));
    d.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("devices/+/messages/devicebound/#".into(), 1)],
    }))
    .unwrap();
    match d.next(Duration::from_secs(5)) {
        Got::Closed(_) => {}
        other => panic!("a wildcard device subscription was not refused: {other:?}"),
    }
    assert_eq!(c2d_state(&hub, "victim", "p1")["deliveryCount"], 0);

    // Duplicate keys in the property bag of a QoS 1 message: no PUBACK, closed, reason recorded.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "nosy"));
    d.publish_qos1(&telemetry("nosy"), b"fine", 1).unwrap();
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: format!("{}a=1&a=2", telemetry("nosy")),
        pkid: 2,
        payload: b"bad bag".to_vec().into(),
    }))
    .unwrap();
    match d.next(Duration::from_secs(5)) {
        Got::Closed(_) => {}
        other => panic!("expected the close, got {other:?}"),
    }
    refusal_with(&hub, "nosy", &["property bag", "'a'", "more than once"]);
    // An empty property name is malformed as well.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "nosy"));
    d.send(&Packet::Publish(Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: format!("{}=x", telemetry("nosy")),
        pkid: 3,
        payload: b"bad bag 2".to_vec().into(),
    }))
    .unwrap();
    d.closed_within(Duration::from_secs(5));
    refusal_with(&hub, "nosy", &["property bag", "empty name"]);
    assert_eq!(stored_bodies(&hub, "nosy"), ["fine"]);
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

/// A hub process started by this test (not the harness), so that its whole stdout is seen.
struct OwnHub {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    mqtt_port: u16,
}

impl OwnHub {
    fn start(dir: &Path) -> OwnHub {
        // The store the harness would give this directory (PostgreSQL under IOTHUB_TEST_STORE).
        let store: Vec<String> = postgres_store_for(dir)
            .map(|url| vec!["--store".to_string(), url])
            .unwrap_or_default();
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(dir.join("data"))
            .args([
                "serve",
                "--https",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--auth-failure-limit",
                "1000000",
                "--metrics",
                "off",
            ])
            .args(&store)
            .env("IOTHUB_LOG", "error")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn iothub serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut mqtt_port = 0;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("iothub serve did not report its addresses");
            if let Some(p) = line
                .strip_prefix("mqtt listening on ")
                .and_then(|a| a.rsplit(':').next())
            {
                mqtt_port = p.parse().unwrap();
            }
            if line.starts_with("https listening on ") {
                break;
            }
        }
        assert_ne!(mqtt_port, 0);
        OwnHub {
            child,
            lines: rx,
            mqtt_port,
        }
    }
}

impl Drop for OwnHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_closes_devices_exits_zero_and_keeps_every_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    let mut own = OwnHub::start(&dir);
    ca_devices(&data, &dir, &["busy", "idle"]);
    let ca = data.join("tls/ca.pem");
    let (mut busy, code) = Dev::connect_to(&ca, own.mqtt_port, &Opts::cert(&dir, "busy")).unwrap();
    assert_eq!(code, 0);
    let (mut idle, code) = Dev::connect_to(&ca, own.mqtt_port, &Opts::cert(&dir, "idle")).unwrap();
    assert_eq!(code, 0);
    idle.subscribe_c2d("idle");

    // One device publishes QoS 1 messages back to back while the signal arrives; every message
    // it saw acknowledged must survive.
    let (tx, acks) = std::sync::mpsc::channel::<String>();
    let publisher = std::thread::spawn(move || {
        for i in 1..=60_000u32 {
            let body = format!("m{i}");
            match busy.publish_qos1(&telemetry("busy"), body.as_bytes(), i as u16) {
                Ok(()) => {
                    if tx.send(body).is_err() {
                        break;
                    }
                }
                // Closed by the shutdown: the message in flight was not acknowledged.
                Err(e) => return e,
            }
        }
        "the publisher ran out of messages before the shutdown".to_string()
    });
    let mut acked = Vec::new();
    while acked.len() < 50 {
        acked.push(
            acks.recv_timeout(Duration::from_secs(10))
                .expect("PUBACKs stopped before the shutdown"),
        );
    }
    let t = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &own.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The publishing device is cut off (its next PUBACK never comes), and so is the idle one.
    let ended = publisher.join().unwrap();
    assert!(ended.contains("PUBACK"), "{ended}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the publisher was cut off after {:?}",
        t.elapsed()
    );
    acked.extend(acks.try_iter());
    idle.closed_within(Duration::from_secs(10));
    let exit = loop {
        if let Some(s) = own.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the hub did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    // The reader thread ends at the end of stdout, which closes the channel.
    let mut rest = Vec::new();
    while let Ok(line) = own.lines.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.contains("iothub stopped")),
        "stdout after SIGTERM: {rest:?}"
    );
    // The listener is gone.
    assert!(Dev::connect_to(&ca, own.mqtt_port, &Opts::cert(&dir, "busy")).is_err());
    drop(own);

    let hub = TestHub::start_in(&dir, &[]);
    let stored = stored_bodies(&hub, "busy");
    // Everything acknowledged, in order; at most the one message in flight beyond it.
    assert!(
        stored.len() >= acked.len() && stored.len() <= acked.len() + 1,
        "{} acknowledged, {} stored",
        acked.len(),
        stored.len()
    );
    assert_eq!(stored[..acked.len()], acked[..]);
    // The devices connect again to the restarted hub.
    let mut d = Dev::admitted(&hub, &Opts::cert(&dir, "busy"));
    d.publish_qos1(&telemetry("busy"), b"after restart", 1)
        .unwrap();
    d.disconnect();
    assert_eq!(stored_bodies(&hub, "busy").last().unwrap(), "after restart");
}
