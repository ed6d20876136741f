//! `cluster`: the latencies that make several nodes one hub, measured over real nodes sharing a
//! database: a CA deleted through node 1 until the last session it admitted on nodes 2 and 3 is
//! closed; a device's new connection on node 3 until its old session on node 2 is closed; a
//! direct method invoked through node 1 until the answer of the device on node 3 is back. Each
//! over `--trials` trials, reported as p50/p99/max in milliseconds.
//!
//! Every trial's CA and devices are made here (in memory) and registered through node 1's API
//! with real proof of possession, so no trial reuses a verdict another one warmed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iothub_client::mqtt::{Connected, MqttClient};
use iothub_client::{ApiClient, HubTarget};
use iothub_mqtt::codec::{Packet, Publish};
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use reqwest::Method;
use serde_json::{json, Value};

use crate::target::percentile;

/// What the cluster run needs: three nodes, each by data directory (for its API) and MQTT address.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The data directories of nodes 1, 2 and 3 (their connection strings and TLS CA).
    #[arg(long, num_args = 3, required = true)]
    pub(crate) data: Vec<PathBuf>,
    /// The MQTT addresses of nodes 1, 2 and 3.
    #[arg(long, num_args = 3, required = true)]
    pub(crate) mqtt: Vec<SocketAddr>,
    /// Trials of each measurement.
    #[arg(long, default_value_t = 20)]
    pub(crate) trials: usize,
    /// Write the JSON result here too.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// One device identity made for a trial: its chain and key, PEM.
struct Identity {
    id: String,
    chain: String,
    key: String,
}

/// The nodes and what talking to them takes.
struct Nodes {
    api: Arc<ApiClient>,
    mqtt: Vec<SocketAddr>,
    ca_pem: Vec<u8>,
    run: u32,
}

impl Nodes {
    /// A fresh CA, registered and proved through node 1, and `devices` identities under it,
    /// registered as CA-authenticated devices.
    async fn ca_with_devices(&self, name: &str, devices: usize) -> Result<Vec<Identity>> {
        let now = time::OffsetDateTime::now_utc();
        let (from, to) = (
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        );
        let ca = gen::make_ca(name, KeyKind::EcP256, None, from, to)?;
        let issuer = CaIssuer::from_pem(&ca.cert_pem, &ca.key_pem)?;
        let mut made = Vec::new();
        for i in 0..devices {
            let id = format!("{name}-d{i}");
            let leaf = gen::make_leaf(&id, KeyKind::EcP256, &issuer, &[], from, to)?;
            made.push(Identity {
                id,
                chain: leaf.cert_pem,
                key: leaf.key_pem,
            });
        }
        let (api, name, ids) = (
            self.api.clone(),
            name.to_string(),
            made.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            iothub_client::proof::add_and_prove(&api, &name, &ca.cert_pem, &issuer)?;
            for id in ids {
                let body =
                    json!({ "deviceId": id, "authentication": { "type": "certificateAuthority" } });
                api.call(Method::PUT, &format!("/devices/{id}"), None, Some(&body))?;
            }
            Ok(())
        })
        .await??;
        Ok(made)
    }

    /// Connects `who` to node `node` (0-based), retrying while the node has not yet learnt of
    /// the CA and device (the change feed brings them within a second).
    async fn connect(&self, node: usize, who: &Identity) -> Result<MqttClient> {
        let config =
            MqttClient::tls_config(&self.ca_pem, who.chain.as_bytes(), who.key.as_bytes())?;
        let started = Instant::now();
        loop {
            match MqttClient::connect_with(self.mqtt[node], "localhost", config.clone(), &who.id)
                .await
            {
                Ok(Connected::Accepted(c)) => return Ok(*c),
                Ok(Connected::Refused(_)) | Err(_)
                    if started.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Connected::Refused(code)) => {
                    bail!("{} refused on node {} ({code})", who.id, node + 1)
                }
                Err(e) => return Err(e.context(format!("{} on node {}", who.id, node + 1))),
            }
        }
    }

    /// An API call through node 1 (the blocking client, off the runtime's threads).
    async fn api_call(
        &self,
        method: Method,
        path: String,
        if_match: Option<&'static str>,
        body: Option<Value>,
    ) -> Result<Value> {
        let api = self.api.clone();
        tokio::task::spawn_blocking(move || api.call(method, &path, if_match, body.as_ref()))
            .await?
    }
}

/// Waits until `client`'s connection is closed by the hub; how long that took from `since`.
async fn closed(mut client: MqttClient, since: Instant) -> Result<Duration> {
    loop {
        match client.recv(Duration::from_secs(10)).await {
            Ok(_) => continue,
            Err(e) if since.elapsed() >= Duration::from_secs(10) => {
                return Err(e.context("the session was not closed within 10 s"))
            }
            Err(_) => return Ok(since.elapsed()),
        }
    }
}

/// p50/p99/max (ms) of `samples`.
fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({
        "trials": samples.len(),
        "p50_ms": percentile(&samples, 0.5),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(0.0),
        "samples_ms": samples,
    })
}

/// CA deleted through node 1 → the last of its sessions on nodes 2 and 3 closed.
async fn trust_change(nodes: &Nodes, trial: usize) -> Result<f64> {
    let name = format!("bc{}-trust{trial}", nodes.run);
    let ids = nodes.ca_with_devices(&name, 2).await?;
    let on2 = nodes.connect(1, &ids[0]).await?;
    let on3 = nodes.connect(2, &ids[1]).await?;
    let t0 = Instant::now();
    nodes
        .api_call(
            Method::DELETE,
            format!("/certificates/{name}"),
            Some("*"),
            None,
        )
        .await?;
    let (a, b) = tokio::try_join!(closed(on2, t0), closed(on3, t0))?;
    Ok(a.max(b).as_secs_f64() * 1000.0)
}

/// The same device connecting on node 3 → its session on node 2 closed (from the new CONNACK).
async fn takeover(nodes: &Nodes, who: &Identity) -> Result<f64> {
    let old = nodes.connect(1, who).await?;
    let new = nodes.connect(2, who).await?;
    let t0 = Instant::now();
    let took = closed(old, t0).await?;
    drop(new);
    Ok(took.as_secs_f64() * 1000.0)
}

/// The device on node 3 answers every method request with 200 until the task is dropped.
async fn answer_methods(mut device: MqttClient) -> Result<()> {
    device.subscribe("$iothub/methods/POST/#").await?;
    loop {
        let request: Publish = device.next_message(Duration::from_secs(3600)).await?;
        let rid = request
            .topic
            .split("$rid=")
            .nth(1)
            .context("a method request without $rid")?
            .to_string();
        device
            .send(&Packet::Publish(Publish {
                dup: false,
                qos: 0,
                retain: false,
                topic: format!("$iothub/methods/res/200/?$rid={rid}"),
                pkid: 0,
                payload: br#"{"ok":true}"#.to_vec().into(),
            }))
            .await?;
    }
}

pub(crate) async fn cluster(args: ClusterArgs) -> Result<()> {
    if args.trials == 0 || args.trials > 1000 {
        bail!("--trials is {}; expected 1 to 1000", args.trials);
    }
    let target = HubTarget {
        data: args.data[0].clone(),
        connection_string: None,
        hub_ca: None,
    };
    let nodes = Nodes {
        api: Arc::new(tokio::task::spawn_blocking(move || ApiClient::connect(&target)).await??),
        mqtt: args.mqtt.clone(),
        ca_pem: std::fs::read(args.data[0].join("tls").join("ca.pem"))
            .context("node 1's tls/ca.pem")?,
        run: std::process::id(),
    };
    let mut trust = Vec::new();
    for trial in 0..args.trials {
        trust.push(trust_change(&nodes, trial).await?);
        eprint!("\rcluster: trust change {}/{}", trial + 1, args.trials);
    }
    let movers = nodes
        .ca_with_devices(&format!("bc{}-move", nodes.run), 1)
        .await?;
    let mut moves = Vec::new();
    for trial in 0..args.trials {
        moves.push(takeover(&nodes, &movers[0]).await?);
        eprint!("\rcluster: takeover {}/{}    ", trial + 1, args.trials);
    }
    let answering = nodes
        .ca_with_devices(&format!("bc{}-method", nodes.run), 1)
        .await?;
    let device = nodes.connect(2, &answering[0]).await?;
    let answerer = tokio::spawn(answer_methods(device));
    // Node 1 learns where the device is from its presence row (within a heartbeat).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let path = format!("/twins/{}/methods", answering[0].id);
    let body = json!({ "methodName": "ping", "responseTimeoutInSeconds": 5, "payload": {} });
    let mut methods = Vec::new();
    for trial in 0..args.trials {
        let t0 = Instant::now();
        let answer = nodes
            .api_call(Method::POST, path.clone(), None, Some(body.clone()))
            .await?;
        methods.push(t0.elapsed().as_secs_f64() * 1000.0);
        if answer["status"] != 200 {
            bail!("the method answered {answer}");
        }
        eprint!("\rcluster: direct method {}/{}", trial + 1, args.trials);
    }
    answerer.abort();
    eprintln!();
    let result = json!({
        "trust_change": summary(trust),
        "takeover": summary(moves),
        "direct_method": summary(methods),
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}
