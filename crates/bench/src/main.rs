//! `iothub-bench`: a load generator for MQTT over mutual TLS, used against iothub and against
//! other brokers (scripts/bench runs Mosquitto beside it) with the same identities. It is a tool,
//! not part of the product: it lives in its own binary so that the hub's binary does not carry it.
//!
//! - `identities`: a test PKI (root > intermediate > N device leaves, ECDSA P-256 or RSA-2048),
//!   the device files sending leaf + intermediate, and `devices.json` for `iothub device import`;
//! - `connect`: full mutual-TLS handshake + CONNECT/CONNACK as fast as C concurrent clients can,
//!   for D seconds: connects/s, p50/p99 latency, failures, and the server's CPU per connect;
//! - `telemetry`: M connected devices publish QoS 1 messages of S bytes: acknowledged messages/s,
//!   p50/p99 PUBACK latency;
//! - `idle`: K connections held open: the server's resident memory per connection;
//! - `floor`: the crypto floor of one server-side handshake;
//! - `cas`: N extra CAs registered in a hub with proof of possession;
//! - `cluster`: over three nodes sharing a database, the trust-change, takeover and cross-node
//!   direct-method latencies.
//!
//! Results print as one JSON object (and go to `--out`). Progress goes to stderr.

mod cas;
mod cluster;
mod floor;
mod identities;
mod idle;
mod procfs;
mod storm;
mod target;
mod telemetry;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use iothub_client::HubTarget;

use crate::target::Target;

#[derive(Debug, Parser)]
#[command(
    name = "iothub-bench",
    version,
    about = "Load generator for MQTT over mutual TLS: connect storms, telemetry and idle connections, against iothub or another broker"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// The hub `cas` registers into, found as the `iothub` CLI finds it (same options, same
/// environment variables).
#[derive(Debug, clap::Args)]
struct HubArgs {
    /// Data directory of the hub (its connection string and hub CA are read from it).
    #[arg(long, env = "IOTHUB_DATA", default_value = "./data")]
    data: PathBuf,
    /// Hub connection string (HostName=..;SharedAccessKeyName=..;SharedAccessKey=..).
    #[arg(long, env = "IOTHUB_CONNECTION_STRING", hide_env_values = true)]
    hub: Option<String>,
    /// The hub's TLS CA certificate (PEM) to trust [default: DATA/tls/ca.pem].
    #[arg(long, env = "IOTHUB_HUB_CA")]
    hub_ca: Option<PathBuf>,
}

impl HubArgs {
    fn target(self) -> HubTarget {
        HubTarget {
            data: self.data,
            connection_string: self.hub,
            hub_ca: self.hub_ca,
        }
    }
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
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
    /// Three nodes sharing a database: CA deleted on node 1 until its sessions on nodes 2 and 3
    /// close, takeover from node 2 to node 3, direct method through node 1 to a device on
    /// node 3; p50/p99 over the trials.
    Cluster(cluster::ClusterArgs),
    /// Register N extra CAs in the hub (the one `--data`/`--hub` points at), each with real
    /// proof of possession through the HTTPS API: the registry size a connect storm then runs at.
    Cas {
        #[arg(long)]
        count: usize,
        /// Parallel API clients.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        #[command(flatten)]
        hub: HubArgs,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Floor { seconds } => floor::floor(seconds),
        BenchCommand::Cas {
            count,
            parallel,
            hub,
        } => cas::register_cas(&hub.target(), count, parallel),
        BenchCommand::Identities { dir, count, rsa } => identities::identities(&dir, count, rsa),
        BenchCommand::Connect(t) => runtime()?.block_on(storm::connect_storm(t)),
        BenchCommand::Telemetry(t) => runtime()?.block_on(telemetry::telemetry(t)),
        BenchCommand::Idle(t) => runtime()?.block_on(idle::idle(t)),
        BenchCommand::Cluster(args) => runtime()?.block_on(cluster::cluster(args)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> BenchCommand {
        let mut line = vec!["iothub-bench"];
        line.extend_from_slice(args);
        Cli::try_parse_from(line)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn every_mode_takes_the_flags_scripts_bench_passes() {
        let target = [
            "--dir",
            "ids",
            "--broker-ca",
            "ca.pem",
            "--seconds",
            "2",
            "--addr",
            "127.0.0.1:8883",
            "--server-pid",
            "1",
            "--label",
            "x",
            "--out",
            "r.json",
        ];
        let with = |mode: &str, extra: &[&str]| {
            let mut args = vec![mode];
            args.extend_from_slice(&target);
            args.extend_from_slice(extra);
            parse(&args)
        };
        let BenchCommand::Connect(t) = with("connect", &["--clients", "8", "--resume", "--tls12"])
        else {
            panic!("not connect")
        };
        assert!(t.resume && t.tls12 && t.clients == 8);
        let BenchCommand::Telemetry(t) = with("telemetry", &["--inflight", "8", "--size", "256"])
        else {
            panic!("not telemetry")
        };
        assert_eq!((t.inflight, t.size), (8, 256));
        let BenchCommand::Idle(t) = with("idle", &["--clients", "20", "--per-process", "8"]) else {
            panic!("not idle")
        };
        assert_eq!(t.per_process, Some(8));
        assert!(matches!(
            parse(&["floor", "--seconds", "0.1"]),
            BenchCommand::Floor { .. }
        ));
        assert!(matches!(
            parse(&["identities", "--dir", "ids", "--count", "20"]),
            BenchCommand::Identities { count: 20, .. }
        ));
        let BenchCommand::Cas { count, hub, .. } =
            parse(&["cas", "--data", "hub", "--count", "50"])
        else {
            panic!("not cas")
        };
        assert_eq!((count, hub.data), (50, PathBuf::from("hub")));
    }

    /// `idle --per-process` re-spawns this binary: the helper's command line must parse as the
    /// holding part of the same run.
    #[test]
    fn an_idle_helper_command_line_is_an_idle_run_of_this_binary() {
        let BenchCommand::Idle(t) = parse(&[
            "idle",
            "--dir",
            "ids",
            "--broker-ca",
            "ca.pem",
            "--addr",
            "127.0.0.1:8883",
            "--server-name",
            "hub.local",
            "--clients",
            "20",
            "--per-process",
            "8",
            "--tls12",
        ]) else {
            panic!("not idle")
        };
        let line: Vec<String> = idle::helper_args(&t, 8, 8)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        let BenchCommand::Idle(helper) = parse(&line) else {
            panic!("the helper's command line is not idle: {line:?}")
        };
        assert!(helper.hold && helper.tls12);
        assert_eq!((helper.skip, helper.clients), (8, 8));
        assert_eq!(helper.per_process, None);
        assert_eq!((helper.dir, helper.broker_ca), (t.dir, t.broker_ca));
        assert_eq!((helper.addr, helper.server_name), (t.addr, t.server_name));
    }
}
