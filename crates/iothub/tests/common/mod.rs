//! Test harness for end-to-end tests: runs the real `iothub` binary (`serve`) on a free loopback
//! port with its own data directory, and talks to it over real HTTPS with the hub's own CA.
//!
//! With `IOTHUB_TEST_STORE=postgres` every hub keeps its state in a fresh database of a private
//! PostgreSQL server (`iothub-testpg`) instead of SQLite, so the same suites run against both
//! stores; a hub restarted on the same directory gets the same database back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_iothub");

/// Under `IOTHUB_TEST_STORE=postgres`, the database of the hub whose directory is `dir`: made on
/// its first start and remembered in `dir/store-url`, so that a restart finds its state.
pub fn postgres_store_for(dir: &Path) -> Option<String> {
    if std::env::var("IOTHUB_TEST_STORE").ok().as_deref() != Some("postgres") {
        return None;
    }
    let remembered = dir.join("store-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return Some(url);
    }
    let url = iothub_testpg::shared().database();
    std::fs::create_dir_all(dir).expect("the hub's directory");
    std::fs::write(&remembered, &url).expect("remember the hub's database");
    Some(url)
}

/// A running hub.
pub struct TestHub {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub port: u16,
    /// The MQTT (device) port.
    pub mqtt_port: u16,
    /// The AMQP port (None with `--amqp off`).
    pub amqp_port: Option<u16>,
    /// The plain-HTTP metrics port, when started with `--metrics` (off otherwise: a fixed port
    /// would collide between tests running in parallel).
    pub metrics_port: Option<u16>,
    pub first_stdout: Vec<String>,
    /// Where the hub's stderr (its log, at `info` or the level asked) goes, when started with [`TestHub::start_logged`].
    pub log: Option<PathBuf>,
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TestHub {
    /// Starts a hub in a fresh temporary directory.
    pub fn start(extra: &[&str]) -> TestHub {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut hub = TestHub::start_in(&dir, extra);
        hub._tmp = Some(tmp);
        hub
    }

    /// Starts a hub in a fresh temporary directory, its log (level `info`) written to
    /// `hub.log` there (see [`TestHub::log_text`]).
    pub fn start_logged(extra: &[&str]) -> TestHub {
        TestHub::start_logged_at("info", extra)
    }

    /// A hub whose data directory is `dir/data`, its log (level `error`) written to `log` rather
    /// than the test's output: for a test whose hub logs errors on purpose.
    pub fn start_in_quiet(dir: &Path, extra: &[&str], log: &Path) -> TestHub {
        TestHub::spawn(dir, extra, Some((log, "error")))
    }

    /// [`TestHub::start_logged`] at another log level (`IOTHUB_LOG`).
    pub fn start_logged_at(level: &str, extra: &[&str]) -> TestHub {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut hub = TestHub::spawn(&dir, extra, Some((&dir.join("hub.log"), level)));
        hub._tmp = Some(tmp);
        hub
    }

    /// What the hub has logged so far (only for [`TestHub::start_logged`]).
    pub fn log_text(&self) -> String {
        let path = self
            .log
            .as_ref()
            .expect("the hub was started with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Starts a hub whose data directory is `dir/data` (reused across restarts).
    pub fn start_in(dir: &Path, extra: &[&str]) -> TestHub {
        TestHub::spawn(dir, extra, None)
    }

    fn spawn(dir: &Path, extra: &[&str], log: Option<(&Path, &str)>) -> TestHub {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data")
            .arg(dir.join("data"))
            .args(["serve", "--https", "127.0.0.1:0"]);
        if !extra.contains(&"--mqtt") {
            cmd.args(["--mqtt", "127.0.0.1:0"]);
        }
        // Functional suites send many refused requests on purpose; the limit has its own test.
        if !extra.contains(&"--auth-failure-limit") {
            cmd.args(["--auth-failure-limit", "1000000"]);
        }
        // Likewise refused device connections from 127.0.0.1.
        if !extra.contains(&"--mqtt-refusal-limit") {
            cmd.args(["--mqtt-refusal-limit", "0"]);
        }
        // The default (port 9883) would collide between parallel tests: ask for 127.0.0.1:0.
        if !extra.contains(&"--metrics") {
            cmd.args(["--metrics", "off"]);
        }
        if !extra.contains(&"--store") {
            if let Some(url) = postgres_store_for(dir) {
                cmd.args(["--store", &url]);
            }
        }
        cmd.args(extra)
            .env("IOTHUB_LOG", "error")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((path, level)) = log {
            cmd.env("IOTHUB_LOG", level)
                .stderr(std::fs::File::create(path).expect("create the hub's log file"));
        }
        let mut child = cmd.spawn().expect("spawn iothub serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading after the address is known: the hub's stdout must stay drained.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let mut mqtt_port = 0;
        let mut amqp_port = None;
        let mut metrics_port = None;
        let port = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(p) = line
                        .strip_prefix("mqtt listening on ")
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        mqtt_port = p;
                    }
                    if let Some(p) = line
                        .strip_prefix("amqp listening on ")
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        amqp_port = Some(p);
                    }
                    if let Some(p) = line
                        .strip_prefix("metrics listening on ")
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        metrics_port = Some(p);
                    }
                    let port = line
                        .strip_prefix("https listening on ")
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    lines.push(line);
                    if let Some(p) = port {
                        break p;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("iothub serve did not report its address; stdout so far: {lines:?}");
                }
            }
        };
        TestHub {
            child: Some(child),
            dir: dir.to_path_buf(),
            _tmp: None,
            port,
            mqtt_port,
            amqp_port,
            metrics_port,
            first_stdout: lines,
            log: log.map(|(path, _)| path.to_path_buf()),
        }
    }

    /// GET `path` from the metrics listener: status and body.
    pub fn metrics_get(&self, path: &str) -> (u16, String) {
        let port = self
            .metrics_port
            .expect("the hub was started with --metrics 127.0.0.1:0");
        let resp = self
            .client()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .expect("metrics listener answers");
        let status = resp.status().as_u16();
        (status, resp.text().unwrap_or_default())
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn connection_string(&self) -> String {
        std::fs::read_to_string(self.data().join("connection-string"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The key of a policy, read through the API with the owner credential.
    pub fn policy_key(&self, policy: &str) -> String {
        let v: serde_json::Value = self
            .client()
            .post(format!("{}/policies/{policy}/listKeys", self.base()))
            .header("Authorization", self.owner_token())
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["primaryKey"].as_str().unwrap().to_string()
    }

    /// A token signed with `key` for `policy`, valid for `ttl` seconds (negative: already expired).
    pub fn token(&self, policy: &str, key: &str, ttl: i64) -> String {
        iothub_pki::sas::build_token(
            &format!("localhost:{}", self.port),
            key,
            Some(policy),
            unix_now() + ttl,
        )
        .unwrap()
    }

    /// GET `path` on the API as the owner, as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        self.client()
            .get(format!("{}{path}", self.base()))
            .header("Authorization", self.owner_token())
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn owner_token(&self) -> String {
        let cs = self.connection_string();
        let key = cs.split("SharedAccessKey=").nth(1).unwrap();
        self.token("iothubowner", key, 3600)
    }

    /// An HTTPS client trusting the hub's CA.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.client_builder().build().unwrap()
    }

    /// An HTTPS client trusting the hub's CA that does not follow redirects (to see Set-Cookie
    /// and Location) and keeps no cookies.
    pub fn client_without_redirects(&self) -> reqwest::blocking::Client {
        self.client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn client_builder(&self) -> reqwest::blocking::ClientBuilder {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(self.data().join("tls/ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
    }

    /// Runs the CLI against this hub (through its data directory).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(&self.dir, args)
    }

    /// Runs the CLI with `cwd` as working directory.
    pub fn cli_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .current_dir(cwd)
            .arg("--data")
            .arg(self.data())
            .args(args)
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env("IOTHUB_LOG", "error")
            .output()
            .expect("run iothub CLI")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the server to exit by itself (after a signal sent elsewhere); its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL (no chance to clean up).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // Child::kill sends SIGKILL on Unix
            let _ = c.wait();
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Asserts a CLI run succeeded and returns its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command (openssl and friends) in `dir`, asserting success.
pub fn sh(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An openssl CA directory laid out like the seed tutorial's `rootca.conf`, signing with
/// `ca_cert`/`ca_key` (files in `dir`). Returns the config file name.
pub fn openssl_ca_config(dir: &Path, ca_cert: &str, ca_key: &str) -> String {
    let ca_dir = dir.join(format!("{ca_cert}.db"));
    std::fs::create_dir_all(ca_dir.join("newcerts")).unwrap();
    std::fs::write(ca_dir.join("index.txt"), "").unwrap();
    std::fs::write(ca_dir.join("serial"), "1000\n").unwrap();
    let conf = format!(
        "[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {db}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = {cert}
private_key = {key}
default_md = sha256
default_days = 30
policy = policy_loose
unique_subject = no
[ policy_loose ]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional
[ client_ext ]
basicConstraints = CA:FALSE
nsCertType = client, email
nsComment = \"OpenSSL Generated Client Certificate\"
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
keyUsage = critical, nonRepudiation, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth, emailProtection
",
        db = ca_dir.display(),
        cert = dir.join(ca_cert).display(),
        key = dir.join(ca_key).display(),
    );
    let name = format!("{ca_cert}.conf");
    std::fs::write(dir.join(&name), conf).unwrap();
    name
}

/// Makes a verification certificate exactly as the seed's steps 8-9: `openssl req -new -key pop.key`
/// with CN = code, then `openssl ca -config ... -extensions client_ext`. Returns the file name.
pub fn openssl_verification_cert(dir: &Path, conf: &str, code: &str, out: &str) -> String {
    let key = format!("{out}.key");
    sh(
        dir,
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ],
    );
    let csr = format!("{out}.csr");
    sh(
        dir,
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={code}"),
        ],
    );
    sh(
        dir,
        "openssl",
        &[
            "ca",
            "-batch",
            "-config",
            conf,
            "-in",
            &csr,
            "-out",
            out,
            "-extensions",
            "client_ext",
        ],
    );
    out.to_string()
}

/// A raw MQTT device over rustls (blocking): presents whatever certificate file it is given, and
/// sends and reads packets with the hub's own codec. For tests that need control a stock client
/// does not give (withholding PUBACKs, presenting weak certificates, churning connections).
pub struct RawDevice {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: bytes::BytesMut,
}

impl RawDevice {
    /// Connects with `cert_pem` (leaf, then chain) and `key_pem` as `client`; returns the device
    /// and the CONNACK code, or the TLS/IO error.
    pub fn connect(
        hub: &TestHub,
        cert_pem: &Path,
        key_pem: &Path,
        client: &str,
    ) -> Result<(RawDevice, u8), String> {
        Self::connect_keep_alive(hub, cert_pem, key_pem, client, 60)
    }

    /// As [`RawDevice::connect`], with the CONNECT's keep-alive in seconds.
    pub fn connect_keep_alive(
        hub: &TestHub,
        cert_pem: &Path,
        key_pem: &Path,
        client: &str,
        keep_alive: u16,
    ) -> Result<(RawDevice, u8), String> {
        let config = client_config(hub, cert_pem, key_pem)?;
        Self::connect_with_config(hub, config, client, keep_alive)
    }

    /// Connects with a prepared TLS configuration: reusing one lets rustls resume the session
    /// with a ticket the hub sent on an earlier connection.
    pub fn connect_with_config(
        hub: &TestHub,
        config: std::sync::Arc<rustls::ClientConfig>,
        client: &str,
        keep_alive: u16,
    ) -> Result<(RawDevice, u8), String> {
        let connect = iothub_mqtt::codec::Connect {
            protocol_level: 4,
            client_id: client.into(),
            clean_session: false,
            keep_alive,
            username: Some(format!("localhost/{client}/?api-version=2021-04-12")),
            password: None,
            will: None,
        };
        Self::connect_packet(hub, config, connect, None)
    }

    /// Sends exactly `connect` (any client id, username, password), from the local address
    /// `local` when given (any 127.x.y.z works on Linux loopback): the hub then sees the
    /// connection coming from that address.
    pub fn connect_packet(
        hub: &TestHub,
        config: std::sync::Arc<rustls::ClientConfig>,
        connect: iothub_mqtt::codec::Connect,
        local: Option<std::net::IpAddr>,
    ) -> Result<(RawDevice, u8), String> {
        use rustls_pki_types::ServerName;
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
                .map_err(|e| e.to_string())?;
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], hub.mqtt_port));
        let tcp = match local {
            None => std::net::TcpStream::connect(server).map_err(|e| e.to_string())?,
            Some(ip) => bind_and_connect(ip, server)?,
        };
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut device = RawDevice {
            tls: rustls::StreamOwned::new(conn, tcp),
            buf: bytes::BytesMut::new(),
        };
        device.send(&iothub_mqtt::codec::Packet::Connect(connect))?;
        match device.recv()? {
            iothub_mqtt::codec::Packet::ConnAck(a) => Ok((device, a.code)),
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    /// Whether this connection's TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.conn.protocol_version()
    }

    pub fn send(&mut self, packet: &iothub_mqtt::codec::Packet) -> Result<(), String> {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        iothub_mqtt::codec::encode(packet, &mut out).map_err(|e| e.to_string())?;
        self.tls.write_all(&out).map_err(|e| e.to_string())
    }

    /// Reads the next packet (errors on close or after the 10 s read timeout).
    pub fn recv(&mut self) -> Result<iothub_mqtt::codec::Packet, String> {
        use std::io::Read;
        loop {
            if let Some(p) =
                iothub_mqtt::codec::decode(&mut self.buf, 1 << 20).map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the hub closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub fn publish(&mut self, topic: &str, payload: &[u8], pkid: u16) -> Result<(), String> {
        self.send(&iothub_mqtt::codec::Packet::Publish(
            iothub_mqtt::codec::Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: topic.into(),
                pkid,
                payload: payload.to_vec().into(),
            },
        ))?;
        match self.recv()? {
            iothub_mqtt::codec::Packet::PubAck(id) if id == pkid => Ok(()),
            other => Err(format!("expected PUBACK {pkid}, got {other:?}")),
        }
    }

    pub fn disconnect(mut self) {
        let _ = self.send(&iothub_mqtt::codec::Packet::Disconnect);
    }
}

/// A blocking TCP connection to `server` from the local address `ip` (std cannot bind before
/// connecting; tokio's `TcpSocket` can).
fn bind_and_connect(
    ip: std::net::IpAddr,
    server: std::net::SocketAddr,
) -> Result<std::net::TcpStream, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| e.to_string())?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        socket.connect(server).await
    });
    let stream = stream
        .and_then(|s| s.into_std())
        .map_err(|e| format!("cannot connect from {ip}: {e}"))?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// The TLS client configuration of a device presenting `cert_pem` (leaf, then chain) with
/// `key_pem`, trusting the hub's CA.
pub fn client_config(
    hub: &TestHub,
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    client_config_for(hub, cert_pem, key_pem, rustls::DEFAULT_VERSIONS)
}

/// `client_config` offering only these TLS versions.
pub fn client_config_for(
    hub: &TestHub,
    cert_pem: &Path,
    key_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca = std::fs::read(hub.data().join("tls/ca.pem")).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&std::fs::read(cert_pem).map_err(|e| e.to_string())?)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key_pem).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| format!("client cannot use its key: {e}"))?;
    Ok(std::sync::Arc::new(config))
}

/// A Verified root CA "root" (root.pem/root.key in the hub's directory) and, for each id, a
/// device certificate signed by it (`{id}.pem`/`{id}.key`) and the registered device.
pub fn verified_root_with_devices(hub: &TestHub, ids: &[&str]) {
    let dir = &hub.dir;
    ok(&hub.cli_in(dir, &["pki", "ca", "root", "--force"]));
    ok(&hub.cli_in(dir, &["cert", "add", "root", "root.pem"]));
    ok(&hub.cli_in(dir, &["cert", "prove", "root", "--key", "root.key"]));
    for id in ids {
        add_ca_device(hub, id, "root");
    }
}

/// Makes `{id}.pem`/`{id}.key` signed by the CA files `{ca}.pem`/`{ca}.key` in the hub's
/// directory (the device is not registered).
pub fn device_files(hub: &TestHub, id: &str, ca: &str) {
    let (cert, key) = (format!("{ca}.pem"), format!("{ca}.key"));
    ok(&hub.cli_in(
        &hub.dir,
        &["pki", "device", id, "--ca-cert", &cert, "--ca-key", &key],
    ));
}

/// [`device_files`], and the device registered (certificateAuthority authentication).
pub fn add_ca_device(hub: &TestHub, id: &str, ca: &str) {
    device_files(hub, id, ca);
    ok(&hub.cli(&["device", "add", id]));
}

/// Every connection refusal recorded for `client` (GET /connections), newest first.
pub fn refusals(hub: &TestHub, client: &str) -> Vec<String> {
    let v = hub.get_json("/connections");
    v["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["clientId"] == client)
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The newest refusal recorded for `client` ("" if none).
pub fn latest_refusal(hub: &TestHub, client: &str) -> String {
    refusals(hub, client).into_iter().next().unwrap_or_default()
}
