//! `telemetry`: QoS 1 messages from connected devices, each keeping a window of them in flight:
//! acknowledged messages per second and PUBACK latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use iothub_client::mqtt::MqttClient;
use iothub_mqtt::codec::{Packet, Publish};
use serde_json::json;

use crate::identities::load_identities;
use crate::procfs::cpu_secs;
use crate::target::{percentile, report, Target};
use crate::tls::{connect_once, ClientConfigs};

/// `telemetry`: M devices connect, then publish for the time given.
pub(crate) async fn telemetry(t: Target) -> Result<()> {
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
