//! `iothub bench`: a load generator for MQTT over mutual TLS, used against iothub and against
//! other brokers (scripts/bench runs Mosquitto beside it) with the same identities.
//!
//! - `identities`: a test PKI (root > intermediate > N device leaves, ECDSA P-256 or RSA-2048),
//!   the device files sending leaf + intermediate, and `devices.json` for `iothub device import`;
//! - `connect`: full mutual-TLS handshake + CONNECT/CONNACK as fast as C concurrent clients can,
//!   for D seconds: connects/s, p50/p99 latency, failures, and the server's CPU per connect;
//! - `telemetry`: M connected devices publish QoS 1 messages of S bytes: acknowledged messages/s,
//!   p50/p99 PUBACK latency;
//! - `idle`: K connections held open: the server's resident memory per connection.
//!
//! Results print as one JSON object (and go to `--out`). Progress goes to stderr.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use iothub_client::mqtt::{Connected, MqttClient};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Make the test PKI and N device identities in DIR.
    Identities {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// RSA-2048 keys instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// Connect storm: handshake + CONNECT/CONNACK, repeatedly, with C concurrent clients.
    Connect(Target),
    /// QoS 1 telemetry from M connected devices.
    Telemetry(Target),
    /// Hold K connections open and report the server's memory per connection.
    Idle(Target),
    /// The crypto floor of one server-side mutual-TLS 1.3 handshake with the provider iothub
    /// ships (aws-lc-rs): 1 ECDSA P-256 sign + 3 verifies + 1 X25519 key exchange.
    Floor {
        /// Seconds to spend on each primitive.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Register N extra CAs in the hub (the one `--data`/`--hub` points at), each with real
    /// proof of possession through the HTTPS API: the registry size a connect storm then runs at.
    Cas {
        #[arg(long)]
        count: usize,
        /// Parallel API clients.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Directory made by `bench identities`.
    #[arg(long)]
    dir: PathBuf,
    /// Broker address (HOST:PORT).
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// Name to verify the broker's certificate against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA file that issued the broker's certificate.
    #[arg(long)]
    broker_ca: PathBuf,
    /// Concurrent clients (connect), devices (telemetry) or connections (idle).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Message size in bytes (telemetry).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// QoS 1 messages each device keeps in flight (telemetry; 1 = one at a time).
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Resume TLS sessions (connect): each identity keeps the tickets the broker sent it.
    #[arg(long)]
    resume: bool,
    /// Offer TLS 1.2 only, as the Azure IoT Python SDK does (TLS 1.2 resumption makes no key
    /// exchange) [default: TLS 1.3, or 1.2 if the broker has nothing newer].
    #[arg(long)]
    tls12: bool,
    /// The broker's process id, to measure its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON result here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A label for the result (e.g. "iothub", "mosquitto").
    #[arg(long, default_value = "broker")]
    label: String,
    /// Idle: connections held per generator process; the rest are held by helper processes
    /// (this same binary), so the generator's own open-file limit does not cap the run
    /// [default: all in one process].
    #[arg(long)]
    per_process: Option<usize>,
    /// Idle, for helpers: use the identities after the first N.
    #[arg(long, default_value_t = 0, hide = true)]
    skip: usize,
    /// Idle, for helpers: print `ready N` once the connections are open, then hold them until
    /// standard input closes.
    #[arg(long, hide = true)]
    hold: bool,
}

struct Identity {
    id: String,
    chain: Vec<u8>,
    key: Vec<u8>,
}

fn load_identities(dir: &Path, n: usize) -> Result<Vec<Identity>> {
    let list: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("devices.json"))
            .context("devices.json (run bench identities)")?,
    )?;
    list.iter()
        .take(n)
        .map(|d| {
            let id = d["deviceId"].as_str().unwrap_or_default().to_string();
            Ok(Identity {
                chain: std::fs::read(dir.join(format!("devices/{id}.pem")))?,
                key: std::fs::read(dir.join(format!("devices/{id}.key")))?,
                id,
            })
        })
        .collect()
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(t: &Target, mut v: Value) -> Result<()> {
    v["label"] = json!(t.label);
    v["machine"] =
        json!({ "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) });
    let text = serde_json::to_string_pretty(&v)?;
    println!("{text}");
    if let Some(out) = &t.out {
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

pub fn run(cmd: BenchCommand, hub: &crate::client::HubTarget) -> Result<()> {
    match cmd {
        BenchCommand::Floor { seconds } => floor(seconds),
        BenchCommand::Cas { count, parallel } => register_cas(hub, count, parallel),
        BenchCommand::Identities { dir, count, rsa } => identities(&dir, count, rsa),
        BenchCommand::Connect(t) => runtime()?.block_on(connect_storm(t)),
        BenchCommand::Telemetry(t) => runtime()?.block_on(telemetry(t)),
        BenchCommand::Idle(t) => runtime()?.block_on(idle(t)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn identities(dir: &Path, count: usize, rsa: bool) -> Result<()> {
    use iothub_pki::gen::{self, CaIssuer, KeyKind};
    if count == 0 || count > 200_000 {
        bail!("--count is {count}; expected 1 to 200000");
    }
    let kind = if rsa {
        KeyKind::Rsa(2048)
    } else {
        KeyKind::EcP256
    };
    std::fs::create_dir_all(dir.join("devices"))?;
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    );
    let root = gen::make_ca("bench-root", kind, None, from, to)?;
    let root_issuer = CaIssuer::from_pem(&root.cert_pem, &root.key_pem)?;
    let inter = gen::make_ca("bench-intermediate", kind, Some(&root_issuer), from, to)?;
    let inter_issuer = CaIssuer::from_pem(&inter.cert_pem, &inter.key_pem)?;
    std::fs::write(dir.join("root.pem"), &root.cert_pem)?;
    std::fs::write(dir.join("root.key"), &root.key_pem)?;
    std::fs::write(dir.join("intermediate.pem"), &inter.cert_pem)?;
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("bench-{i:06}");
        let leaf = gen::make_leaf(&id, kind, &inter_issuer, &[], from, to)?;
        // Leaf then intermediate: what a device sends (the root is the broker's trust anchor).
        let chain: String = leaf
            .cert_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .take(2)
            .collect();
        std::fs::write(dir.join(format!("devices/{id}.pem")), chain)?;
        std::fs::write(dir.join(format!("devices/{id}.key")), &leaf.key_pem)?;
        devices.push(json!({ "deviceId": id, "status": "enabled", "authentication": { "type": "certificateAuthority" } }));
        if i % 1000 == 999 {
            eprint!("\ridentities: {}/{count}", i + 1);
        }
    }
    eprintln!("\ridentities: {count}/{count}");
    std::fs::write(dir.join("devices.json"), serde_json::to_string(&devices)?)?;
    println!(
        "{}",
        json!({ "dir": dir.display().to_string(), "devices": count, "key": if rsa { "RSA-2048" } else { "ECDSA P-256" } })
    );
    Ok(())
}

/// TLS client configurations, one per identity, built once: building one parses PEM and keys,
/// which would otherwise load the generator, not the broker.
struct ClientConfigs {
    ca: Vec<u8>,
    resume: bool,
    tls12: bool,
    built: std::collections::HashMap<usize, Arc<rustls::ClientConfig>>,
}

impl ClientConfigs {
    fn new(ca: Vec<u8>, resume: bool, tls12: bool) -> ClientConfigs {
        ClientConfigs {
            ca,
            resume,
            tls12,
            built: Default::default(),
        }
    }

    fn get(&mut self, index: usize, id: &Identity) -> Result<Arc<rustls::ClientConfig>> {
        if let Some(c) = self.built.get(&index) {
            return Ok(c.clone());
        }
        // Key exchange as the OpenSSL 3.0 based devices and SDKs do it (X25519, then P-256; no
        // post-quantum hybrid), the same offer to every broker.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![
            rustls::crypto::aws_lc_rs::kx_group::X25519,
            rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
        ];
        let versions: &[&'static rustls::SupportedProtocolVersion] = if self.tls12 {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut config =
            MqttClient::tls_config_with(&self.ca, &id.chain, &id.key, provider, versions)?;
        if !self.resume {
            // A full handshake every time, as a device that never saw this broker.
            Arc::get_mut(&mut config)
                .context("a fresh TLS configuration is shared")?
                .resumption = rustls::client::Resumption::disabled();
        }
        self.built.insert(index, config.clone());
        Ok(config)
    }
}

async fn connect_once(
    t: &Target,
    configs: &mut ClientConfigs,
    index: usize,
    id: &Identity,
) -> Result<MqttClient> {
    let config = configs.get(index, id)?;
    match MqttClient::connect_with(t.addr, &t.server_name, config, &id.id).await? {
        Connected::Accepted(c) => Ok(*c),
        Connected::Refused(code) => bail!("CONNACK {code}"),
    }
}

async fn connect_storm(t: Target) -> Result<()> {
    let ca = std::fs::read(&t.broker_ca)?;
    let ids = Arc::new(load_identities(&t.dir, 100_000)?);
    if ids.is_empty() {
        bail!("no identities in {}", t.dir.display());
    }
    let deadline = Instant::now() + Duration::from_secs(t.seconds);
    let (done, failed, resumed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let cpu0 = t.server_pid.and_then(cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..t.clients {
        let (t, ids, done, failed, resumed) = (
            t.clone(),
            ids.clone(),
            done.clone(),
            failed.clone(),
            resumed.clone(),
        );
        let mut configs = ClientConfigs::new(ca.clone(), t.resume, t.tls12);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let index = i % ids.len();
                i += t.clients;
                let t0 = Instant::now();
                match connect_once(&t, &mut configs, index, &ids[index]).await {
                    Ok(client) => {
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                        done.fetch_add(1, Ordering::Relaxed);
                        if client.resumed() {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = client.disconnect().await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let progress = tokio::spawn({
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprint!("\rconnects: {}", done.load(Ordering::Relaxed));
            }
        }
    });
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    progress.abort();
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, t.server_pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    lat.sort_by(|a, b| a.total_cmp(b));
    let n = done.load(Ordering::Relaxed);
    report(
        &t,
        json!({
            "mode": "connect",
            "resume": t.resume,
            "tls": if t.tls12 { "1.2" } else { "1.3" },
            "resumed": resumed.load(Ordering::Relaxed),
            "clients": t.clients,
            "seconds": elapsed,
            "connects": n,
            "connects_per_second": n as f64 / elapsed,
            "failures": failed.load(Ordering::Relaxed),
            "latency_ms": { "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99) },
            "server_cpu_seconds": cpu,
            "server_cpu_ms_per_connect": cpu.map(|c| c * 1000.0 / n.max(1) as f64),
        }),
    )
}

async fn telemetry(t: Target) -> Result<()> {
    let ca = std::fs::read(&t.broker_ca)?;
    let ids = load_identities(&t.dir, t.clients)?;
    if t.inflight == 0 || t.inflight > 1000 {
        bail!("--inflight is {}; expected 1 to 1000", t.inflight);
    }
    let payload = vec![b'x'; t.size];
    let mut clients = Vec::new();
    let mut configs = ClientConfigs::new(ca, false, t.tls12);
    for (index, id) in ids.iter().enumerate() {
        clients.push((
            id.id.clone(),
            connect_once(&t, &mut configs, index, id).await?,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(t.seconds);
    let acked = Arc::new(AtomicU64::new(0));
    let cpu0 = t.server_pid.and_then(cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, client) in clients {
        let (payload, acked, window) = (payload.clone(), acked.clone(), t.inflight);
        tasks.push(tokio::spawn(async move {
            let topic = format!("devices/{id}/messages/events/");
            publish_window(client, &topic, &payload, window, deadline, &acked).await
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, t.server_pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    lat.sort_by(|a, b| a.total_cmp(b));
    let n = acked.load(Ordering::Relaxed);
    report(
        &t,
        json!({
            "mode": "telemetry",
            "devices": t.clients,
            "inflight": t.inflight,
            "message_bytes": t.size,
            "seconds": elapsed,
            "acknowledged": n,
            "messages_per_second": n as f64 / elapsed,
            "puback_latency_ms": { "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99) },
            "server_cpu_seconds": cpu,
        }),
    )
}

/// Opens connections from identities `skip..skip + count`, one after another.
async fn open_idle(t: &Target, skip: usize, count: usize) -> Result<Vec<MqttClient>> {
    let ca = std::fs::read(&t.broker_ca)?;
    let ids = load_identities(&t.dir, skip + count)?;
    if ids.len() < skip + count {
        bail!(
            "{} identities for {} connections: make more with bench identities",
            ids.len(),
            skip + count
        );
    }
    let mut held = Vec::with_capacity(count);
    let mut configs = ClientConfigs::new(ca, false, t.tls12);
    for (i, id) in ids.iter().enumerate().skip(skip) {
        held.push(connect_once(t, &mut configs, i, id).await?);
        // Only the connections are kept, not one TLS configuration per connection.
        configs.built.clear();
        if !t.hold && held.len() % 500 == 0 {
            eprint!("\ropen: {}", held.len());
        }
    }
    Ok(held)
}

/// A helper process holding part of the idle connections.
struct IdleHelper {
    child: std::process::Child,
    count: usize,
}

impl IdleHelper {
    fn start(t: &Target, skip: usize, count: usize) -> Result<IdleHelper> {
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().context("the generator's own path")?;
        let child = Command::new(exe)
            .args(["bench", "idle", "--dir"])
            .arg(&t.dir)
            .args([
                "--addr",
                &t.addr.to_string(),
                "--server-name",
                &t.server_name,
            ])
            .arg("--broker-ca")
            .arg(&t.broker_ca)
            .args([
                "--clients",
                &count.to_string(),
                "--skip",
                &skip.to_string(),
                "--hold",
            ])
            .args(t.tls12.then_some("--tls12"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start an idle helper process")?;
        Ok(IdleHelper { child, count })
    }

    /// Waits for the helper's `ready N` line.
    fn wait_ready(&mut self) -> Result<()> {
        use std::io::Read;
        // Byte by byte up to the newline, so nothing after it is buffered away from `finish`.
        let stdout = self
            .child
            .stdout
            .as_mut()
            .context("helper without stdout")?;
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        if line.trim() != format!("ready {}", self.count) {
            bail!(
                "an idle helper did not open its {} connections (it said {:?})",
                self.count,
                line.trim()
            );
        }
        Ok(())
    }

    /// Closes the helper's standard input (it then checks and lets go of its connections) and
    /// waits; returns how many of them were still open.
    fn finish(mut self) -> Result<usize> {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut said = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut said)?;
        }
        let _ = self.child.wait();
        said.trim()
            .strip_prefix("alive ")
            .and_then(|n| n.parse().ok())
            .with_context(|| {
                format!(
                    "an idle helper did not report its connections (it said {:?})",
                    said.trim()
                )
            })
    }
}

/// How many of `held` still answer a PINGREQ: a connection the broker dropped (keep-alive, a
/// limit) must not count in a per-connection figure.
async fn still_open(held: &mut [MqttClient]) -> usize {
    let mut alive = 0;
    for client in held.iter_mut() {
        if client.ping().await.is_ok() {
            alive += 1;
        }
    }
    alive
}

async fn idle(t: Target) -> Result<()> {
    if t.hold {
        // A helper: open, say so, hold until the parent closes our standard input, then say how
        // many are still open.
        let mut held = open_idle(&t, t.skip, t.clients).await?;
        println!("ready {}", held.len());
        tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await?;
        println!("alive {}", still_open(&mut held).await);
        drop(held);
        return Ok(());
    }
    let Some(pid) = t.server_pid else {
        bail!("idle needs --server-pid to read the server's memory")
    };
    let per = t.per_process.unwrap_or(t.clients).max(1);
    let rss0 = rss_kib(pid).unwrap_or(0);
    let mut helpers = Vec::new();
    let mut start = per.min(t.clients);
    while start < t.clients {
        let count = per.min(t.clients - start);
        helpers.push(IdleHelper::start(&t, start, count)?);
        start += count;
    }
    let own = per.min(t.clients);
    let mut held = match open_idle(&t, 0, own).await {
        Ok(held) => held,
        Err(e) => {
            helpers.into_iter().for_each(|h| drop(h.finish()));
            return Err(e);
        }
    };
    let ready = tokio::task::spawn_blocking(move || {
        let result = helpers.iter_mut().try_for_each(IdleHelper::wait_ready);
        (helpers, result)
    });
    let (helpers, result) = ready.await?;
    if let Err(e) = result {
        helpers.into_iter().for_each(|h| drop(h.finish()));
        return Err(e);
    }
    let total = held.len() + helpers.iter().map(|h| h.count).sum::<usize>();
    eprintln!(
        "\ropen: {total} ({} generator processes)",
        helpers.len() + 1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid).unwrap_or(0);
    // Every connection must still be open after the reading, or the figure would divide the
    // memory of fewer connections by the number opened.
    let mut alive = still_open(&mut held).await;
    drop(held);
    let helpers = tokio::task::spawn_blocking(move || {
        helpers
            .into_iter()
            .map(IdleHelper::finish)
            .collect::<Result<Vec<usize>>>()
    });
    alive += helpers.await??.iter().sum::<usize>();
    if alive != total {
        bail!("{} of {total} idle connections were closed before the server's memory was read (keep-alive or a connection limit?)", total - alive);
    }
    let per_connection = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / total.max(1) as f64;
    report(
        &t,
        json!({
            "mode": "idle",
            "connections": total,
            "generator_processes": total.div_ceil(per),
            "server_rss_kib_before": rss0,
            "server_rss_kib_after": rss1,
            "server_bytes_per_connection": per_connection,
        }),
    )
}

/// Publishes QoS 1 messages keeping `window` unacknowledged until `deadline`, then waits for the
/// rest: returns the PUBACK latency of each message (ms).
async fn publish_window(
    mut client: MqttClient,
    topic: &str,
    payload: &[u8],
    window: usize,
    deadline: Instant,
    acked: &AtomicU64,
) -> Vec<f64> {
    use iothub_mqtt::codec::{Packet, Publish};
    let payload = bytes::Bytes::copy_from_slice(payload);
    let mut sent: std::collections::HashMap<u16, Instant> = Default::default();
    let mut lat = Vec::new();
    loop {
        while sent.len() < window && Instant::now() < deadline {
            let pkid = client.pkid();
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: topic.into(),
                pkid,
                payload: payload.clone(),
            });
            if client.send(&publish).await.is_err() {
                return lat;
            }
            sent.insert(pkid, Instant::now());
        }
        if sent.is_empty() {
            break;
        }
        match client.recv(Duration::from_secs(10)).await {
            Ok(Packet::PubAck(pkid)) => {
                if let Some(t0) = sent.remove(&pkid) {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => return lat,
        }
    }
    let _ = client.disconnect().await;
    lat
}

/// Median seconds per call of `f`, over batches run for about `seconds`.
fn time_per_call(seconds: f64, mut f: impl FnMut()) -> f64 {
    let mut per_call = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t0 = Instant::now();
        for _ in 0..100 {
            f();
        }
        per_call.push(t0.elapsed().as_secs_f64() / 100.0);
    }
    per_call.sort_by(|a, b| a.total_cmp(b));
    per_call[per_call.len() / 2]
}

fn floor(seconds: f64) -> Result<()> {
    use aws_lc_rs::{agreement, rand, signature};
    use signature::KeyPair;
    if !(0.05..=60.0).contains(&seconds) {
        bail!("--seconds is {seconds}; expected 0.05 to 60");
    }
    let rng = rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
    let key = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
    )
    .map_err(|_| anyhow::anyhow!("cannot load the P-256 key"))?;
    // What TLS 1.3 signs: 64 spaces, a context string, a zero byte, a SHA-256 transcript hash.
    let message = [0x20u8; 130];
    let sig = key
        .sign(&rng, &message)
        .map_err(|_| anyhow::anyhow!("cannot sign"))?;
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    public
        .verify(&message, sig.as_ref())
        .map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
    let sign = time_per_call(seconds, || {
        let _ = std::hint::black_box(key.sign(&rng, &message));
    });
    let verify = time_per_call(seconds, || {
        let _ = std::hint::black_box(public.verify(&message, sig.as_ref()));
    });
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .and_then(|k| k.compute_public_key())
        .map_err(|_| anyhow::anyhow!("cannot make an X25519 key"))?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer.as_ref().to_vec());
    // The server's part of the key exchange: a fresh key pair, its public half, the agreement.
    let x25519 = time_per_call(seconds, || {
        let Ok(own) = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng) else {
            return;
        };
        let _ = std::hint::black_box(own.compute_public_key());
        let _ = agreement::agree_ephemeral(own, &peer, (), |secret| {
            std::hint::black_box(secret.len());
            Ok(())
        });
    });
    let floor = sign + 3.0 * verify + x25519;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "provider": "aws-lc-rs",
            "sign_us": sign * 1e6,
            "verify_us": verify * 1e6,
            "x25519_us": x25519 * 1e6,
            "floor_ms": floor * 1000.0,
            "handshakes_per_core_second": 1.0 / floor,
            "what": "1 ECDSA P-256 sign (CertificateVerify) + 3 verifies (leaf, intermediate, client CertificateVerify) + 1 X25519 key exchange",
        }))?
    );
    Ok(())
}

/// Registers `count` CAs through the API, each proven with its key (the same steps as
/// `cert add` + `cert prove`), `parallel` at a time.
fn register_cas(hub: &crate::client::HubTarget, count: usize, parallel: usize) -> Result<()> {
    use iothub_pki::gen::{self, CaIssuer, KeyKind};
    if count == 0 || count > 100_000 {
        bail!("--count is {count}; expected 1 to 100000");
    }
    if parallel == 0 || parallel > 64 {
        bail!("--parallel is {parallel}; expected 1 to 64");
    }
    let api = Arc::new(crate::client::ApiClient::connect(hub)?);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = std::process::id();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (api, next) = (api.clone(), next.clone());
            std::thread::spawn(move || -> Result<()> {
                let now = time::OffsetDateTime::now_utc();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        return Ok(());
                    }
                    let name = format!("bench-ca-{run}-{i:06}");
                    let ca = gen::make_ca(
                        &name,
                        KeyKind::EcP256,
                        None,
                        now - time::Duration::hours(1),
                        now + time::Duration::days(30),
                    )?;
                    let issuer = CaIssuer::from_pem(&ca.cert_pem, &ca.key_pem)?;
                    iothub_client::proof::add_and_prove(&api, &name, &ca.cert_pem, &issuer)
                        .with_context(|| format!("registering {name}"))?;
                    if i % 500 == 499 {
                        eprint!("\rcas: {}/{count}", i + 1);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a registration thread panicked"))??;
    }
    eprintln!("\rcas: {count}/{count}");
    println!(
        "{}",
        json!({ "registered": count, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}
