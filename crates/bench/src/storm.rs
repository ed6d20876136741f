//! `connect`: the connect storm, full handshakes or resumed, the figure a fleet reconnecting after
//! an outage depends on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::identities::load_identities;
use crate::procfs::cpu_secs;
use crate::target::{percentile, report, Target};
use crate::tls::{connect_once, ClientConfigs};

/// `connect`: C clients connect and disconnect until the time is up.
pub(crate) async fn connect_storm(t: Target) -> Result<()> {
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
            while Instant::now() < deadline && !(t.once && i >= ids.len()) {
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
            "once": t.once,
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
