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
//! - `cas`: N extra CAs registered in a hub with proof of possession.
//!
//! Results print as one JSON object (and go to `--out`). Progress goes to stderr.

mod cas;
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
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
