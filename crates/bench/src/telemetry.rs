//! `telemetry`: QoS 1 messages from connected devices, each keeping a window of them in flight:
//! acknowledged messages per second and PUBACK latency. With `--rate` the devices send at a fleet's
//! pace instead (R messages per second each, spread over the second, plus a `--burst` of N at once
//! halfway through), and the PUBACK latency of the steady messages and of the burst is reported.

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
    if !(0.0..=1000.0).contains(&t.rate) || t.burst > 1000 {
        bail!(
            "--rate is {} and --burst {}; expected 0 to 1000 messages per second and 0 to 1000",
            t.rate,
            t.burst
        );
    }
    let clients = connect_all(&t, ca, &ids).await?;
    if t.rate > 0.0 {
        return fleet(t, clients).await;
    }
    let payload = vec![b'x'; t.size];
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

/// Every device connected, one after the other, before any publishes.
async fn connect_all(
    t: &Target,
    ca: Vec<u8>,
    ids: &[crate::identities::Identity],
) -> Result<Vec<(String, MqttClient)>> {
    let mut clients = Vec::new();
    let mut configs = ClientConfigs::new(ca, false, t.tls12);
    for (index, id) in ids.iter().enumerate() {
        clients.push((
            id.id.clone(),
            connect_once(t, &mut configs, index, id).await?,
        ));
    }
    Ok(clients)
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

/// `telemetry --rate R [--burst N]`: every device connected first, then each sends R messages a
/// second, paced, and N at once halfway through.
async fn fleet(t: Target, clients: Vec<(String, MqttClient)>) -> Result<()> {
    let devices = clients.len();
    let payload = bytes::Bytes::from(vec![b'x'; t.size]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(t.seconds);
    let burst_at = started + Duration::from_secs_f64(t.seconds as f64 / 2.0);
    let every = Duration::from_secs_f64(1.0 / t.rate);
    let acked = Arc::new(AtomicU64::new(0));
    let cpu0 = t.server_pid.and_then(cpu_secs);
    let mut tasks = Vec::new();
    for (index, (id, client)) in clients.into_iter().enumerate() {
        // Spread the devices' first messages evenly over one interval.
        let first = started + every.mul_f64(index as f64 / devices.max(1) as f64);
        let plan = Pace {
            topic: format!("devices/{id}/messages/events/"),
            payload: payload.clone(),
            first,
            every,
            burst_at,
            burst: t.burst,
            deadline,
        };
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            publish_paced(client, plan, &acked).await
        }));
    }
    let (mut steady, mut burst) = (Vec::new(), Vec::new());
    for task in tasks {
        let (s, b) = task.await?;
        steady.extend(s);
        burst.extend(b);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, t.server_pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    steady.sort_by(|a, b| a.total_cmp(b));
    burst.sort_by(|a, b| a.total_cmp(b));
    let n = acked.load(Ordering::Relaxed);
    let expected = (t.rate * t.seconds as f64).floor() as usize * devices + t.burst * devices;
    report(
        &t,
        json!({
            "mode": "telemetry-fleet",
            "devices": devices,
            "rate_per_device": t.rate,
            "burst_per_device": t.burst,
            "message_bytes": t.size,
            "seconds": elapsed,
            "acknowledged": n,
            "expected_about": expected,
            "messages_per_second": n as f64 / elapsed,
            "puback_latency_ms": { "p50": percentile(&steady, 0.5), "p99": percentile(&steady, 0.99), "max": steady.last().copied().unwrap_or(0.0) },
            "burst_puback_latency_ms": { "p50": percentile(&burst, 0.5), "p99": percentile(&burst, 0.99), "max": burst.last().copied().unwrap_or(0.0) },
            "server_cpu_seconds": cpu,
        }),
    )
}

/// When and what one device sends at fleet pace.
struct Pace {
    topic: String,
    payload: bytes::Bytes,
    first: Instant,
    every: Duration,
    burst_at: Instant,
    burst: usize,
    deadline: Instant,
}

/// Sends on schedule while reading PUBACKs between sends; returns the PUBACK latencies (ms) of
/// the steady messages and of the burst's.
async fn publish_paced(
    mut client: MqttClient,
    plan: Pace,
    acked: &AtomicU64,
) -> (Vec<f64>, Vec<f64>) {
    let mut sent: std::collections::HashMap<u16, (Instant, bool)> = Default::default();
    let (mut steady, mut burst) = (Vec::new(), Vec::new());
    let mut next = plan.first;
    let mut burst_left = plan.burst > 0;
    loop {
        let now = Instant::now();
        let mut due: Vec<bool> = Vec::new();
        if now >= next && next < plan.deadline {
            due.push(false);
            next += plan.every;
        }
        if burst_left && now >= plan.burst_at {
            burst_left = false;
            due.extend(std::iter::repeat_n(true, plan.burst));
        }
        for in_burst in due {
            let pkid = client.pkid();
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: plan.topic.clone(),
                pkid,
                payload: plan.payload.clone(),
            });
            if client.send(&publish).await.is_err() {
                return (steady, burst);
            }
            sent.insert(pkid, (Instant::now(), in_burst));
        }
        let finished = next >= plan.deadline && !burst_left;
        if finished && sent.is_empty() {
            break;
        }
        let wake = if finished {
            Instant::now() + Duration::from_secs(10)
        } else if burst_left {
            next.min(plan.burst_at)
        } else {
            next
        };
        let wait = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match client.recv(wait).await {
            Ok(Packet::PubAck(pkid)) => {
                if let Some((t0, in_burst)) = sent.remove(&pkid) {
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    if in_burst {
                        burst.push(ms)
                    } else {
                        steady.push(ms)
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            // The wait for the next send ran out: time to send.
            Err(e) if !finished && e.to_string().starts_with("no answer") => {}
            Err(_) => return (steady, burst),
        }
    }
    let _ = client.disconnect().await;
    (steady, burst)
}
