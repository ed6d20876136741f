//! What every measuring run takes (`Target`: the broker, the identities, the load) and how its
//! result leaves (`report`: one JSON object on stdout and in `--out`), in one place so that every
//! mode's figures read alike for scripts/bench-report.py.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The broker a run measures, the identities it connects with, the load and where the result goes.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Directory made by `iothub-bench identities`.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// Broker address (HOST:PORT).
    #[arg(long)]
    pub(crate) addr: std::net::SocketAddr,
    /// Name to verify the broker's certificate against.
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
    /// CA file that issued the broker's certificate.
    #[arg(long)]
    pub(crate) broker_ca: PathBuf,
    /// Concurrent clients (connect), devices (telemetry) or connections (idle).
    #[arg(long, default_value_t = 8)]
    pub(crate) clients: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Message size in bytes (telemetry).
    #[arg(long, default_value_t = 256)]
    pub(crate) size: usize,
    /// QoS 1 messages each device keeps in flight (telemetry; 1 = one at a time).
    #[arg(long, default_value_t = 1)]
    pub(crate) inflight: usize,
    /// Telemetry at fleet shape: each device sends this many messages per second, paced (its
    /// first at a random moment of the first second), instead of as fast as its window allows.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Telemetry at fleet shape: halfway through, each device also sends this many messages at
    /// once (a burst); their PUBACK latency is reported apart.
    #[arg(long, default_value_t = 0)]
    pub(crate) burst: usize,
    /// Resume TLS sessions (connect): each identity keeps the tickets the broker sent it.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Connect: every identity connects exactly once, then the run ends (a cold reconnect
    /// storm: no chain the broker has seen before); --seconds is then only a safety limit.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) once: bool,
    /// Offer TLS 1.2 only, as the Azure IoT Python SDK does (TLS 1.2 resumption makes no key
    /// exchange) [default: TLS 1.3, or 1.2 if the broker has nothing newer].
    #[arg(long)]
    pub(crate) tls12: bool,
    /// The broker's process id, to measure its CPU time and memory from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Write the JSON result here too.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// A label for the result (e.g. "iothub", "mosquitto").
    #[arg(long, default_value = "broker")]
    pub(crate) label: String,
    /// Idle: connections held per generator process; the rest are held by helper processes
    /// (this same binary), so the generator's own open-file limit does not cap the run
    /// [default: all in one process].
    #[arg(long)]
    pub(crate) per_process: Option<usize>,
    /// Idle, for helpers: use the identities after the first N.
    #[arg(long, default_value_t = 0, hide = true)]
    pub(crate) skip: usize,
    /// Idle, for helpers: print `ready N` once the connections are open, then hold them until
    /// standard input closes.
    #[arg(long, hide = true)]
    pub(crate) hold: bool,
}

/// The `p` quantile (0 to 1) of sorted samples, 0 when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints a run's result with its label and the machine's core count, and writes it to `--out`.
pub(crate) fn report(t: &Target, mut v: Value) -> Result<()> {
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
