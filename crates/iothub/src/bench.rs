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

use crate::mqtt_client::{Connected, MqttClient};

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
    /// The broker's process id, to measure its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON result here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A label for the result (e.g. "iothub", "mosquitto").
    #[arg(long, default_value = "broker")]
    label: String,
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

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
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

async fn connect_once(t: &Target, ca: &[u8], id: &Identity) -> Result<MqttClient> {
    match MqttClient::connect(t.addr, &t.server_name, ca, &id.chain, &id.key, &id.id).await? {
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
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu0 = t.server_pid.and_then(cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..t.clients {
        let (t, ca, ids, done, failed) = (
            t.clone(),
            ca.clone(),
            ids.clone(),
            done.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let id = &ids[i % ids.len()];
                i += t.clients;
                let t0 = Instant::now();
                match connect_once(&t, &ca, id).await {
                    Ok(client) => {
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                        done.fetch_add(1, Ordering::Relaxed);
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
    let payload = vec![b'x'; t.size];
    let mut clients = Vec::new();
    for id in &ids {
        clients.push((id.id.clone(), connect_once(&t, &ca, id).await?));
    }
    let deadline = Instant::now() + Duration::from_secs(t.seconds);
    let acked = Arc::new(AtomicU64::new(0));
    let cpu0 = t.server_pid.and_then(cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut client) in clients {
        let (payload, acked) = (payload.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let topic = format!("devices/{id}/messages/events/");
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if client.publish(&topic, &payload).await.is_err() {
                    break;
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.disconnect().await;
            lat
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
            "message_bytes": t.size,
            "seconds": elapsed,
            "acknowledged": n,
            "messages_per_second": n as f64 / elapsed,
            "puback_latency_ms": { "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99) },
            "server_cpu_seconds": cpu,
        }),
    )
}

async fn idle(t: Target) -> Result<()> {
    let Some(pid) = t.server_pid else {
        bail!("idle needs --server-pid to read the server's memory")
    };
    let ca = std::fs::read(&t.broker_ca)?;
    let ids = load_identities(&t.dir, t.clients)?;
    if ids.len() < t.clients {
        bail!(
            "{} identities for {} connections: make more with bench identities",
            ids.len(),
            t.clients
        );
    }
    let rss0 = rss_kib(pid).unwrap_or(0);
    let mut held = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        held.push(connect_once(&t, &ca, id).await?);
        if i % 500 == 499 {
            eprint!("\ropen: {}", i + 1);
        }
    }
    eprintln!("\ropen: {}", held.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid).unwrap_or(0);
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / held.len().max(1) as f64;
    report(
        &t,
        json!({
            "mode": "idle",
            "connections": held.len(),
            "server_rss_kib_before": rss0,
            "server_rss_kib_after": rss1,
            "server_bytes_per_connection": per,
        }),
    )
}
