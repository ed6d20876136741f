//! `iothub`: one binary for the hub (`serve`), its command-line client (`cert`, `policy`, `audit`,
//! `connection-string`, `sas-token`) and test-PKI helpers (`pki`).

mod cli;
mod client;
mod config;
mod demo;
mod device_cli;
mod files;
mod pki_cmd;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "iothub",
    version,
    about = "A self-hosted IoT hub with X.509 device identity"
)]
struct Cli {
    /// Data directory of the hub (the CLI reads the local connection string and hub CA from it).
    #[arg(long, env = "IOTHUB_DATA", global = true, default_value = "./data")]
    data: PathBuf,
    /// Hub connection string (HostName=..;SharedAccessKeyName=..;SharedAccessKey=..).
    #[arg(
        long,
        env = "IOTHUB_CONNECTION_STRING",
        global = true,
        hide_env_values = true
    )]
    hub: Option<String>,
    /// The hub's TLS CA certificate (PEM) to trust [default: DATA/tls/ca.pem].
    #[arg(long, env = "IOTHUB_HUB_CA", global = true)]
    hub_ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: HTTPS API and portal, MQTT/TLS for devices.
    Serve(Box<config::ServeArgs>),
    /// CA certificates and proof of possession.
    #[command(subcommand)]
    Cert(cli::CertCommand),
    /// Devices: register, list, enable/disable, delete, import.
    #[command(subcommand)]
    Device(device_cli::DeviceCommand),
    /// Cloud-to-device messages.
    #[command(subcommand)]
    C2d(device_cli::C2dCommand),
    /// Follow device-to-cloud messages (telemetry).
    Monitor(device_cli::MonitorArgs),
    /// Connected devices and recent connection refusals with their reasons.
    Connections,
    /// Shared access policies: add with chosen rights, list, show, delete, rotate keys.
    #[command(subcommand)]
    Policy(cli::PolicyCommand),
    /// The audit log, newest first.
    Audit(cli::AuditArgs),
    /// Print the owner connection string of the local hub (or of --policy).
    ConnectionString(cli::ConnectionStringArgs),
    /// Print a fresh single-use login link for the web portal.
    PortalLink,
    /// Print a SharedAccessSignature token for a hub policy.
    SasToken(cli::SasTokenArgs),
    /// Run the whole story against a temporary hub, step by step, with the equivalent commands.
    Demo,
    /// Make test certificates: CAs, device certificates, verification certificates.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOTHUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let target = client::HubTarget {
        data: cli.data.clone(),
        connection_string: cli.hub.clone(),
        hub_ca: cli.hub_ca.clone(),
    };
    let result = match cli.command {
        Command::Serve(args) => config::ServeConfig::resolve(Some(&cli.data), args.as_ref())
            .and_then(|config| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(serve::run(config))
            }),
        Command::Cert(cmd) => cli::cert(&target, cli.output, cmd),
        Command::Policy(cmd) => cli::policy(&target, cli.output, cmd),
        Command::Audit(args) => cli::audit(&target, cli.output, args),
        Command::Device(cmd) => device_cli::device(&target, cli.output, cmd),
        Command::C2d(cmd) => device_cli::c2d(&target, cli.output, cmd),
        Command::Monitor(args) => device_cli::monitor(&target, cli.output, args),
        Command::Connections => device_cli::connections(&target, cli.output),
        Command::ConnectionString(args) => cli::connection_string(&target, cli.output, args),
        Command::SasToken(args) => cli::sas_token(&target, cli.output, args),
        Command::PortalLink => cli::portal_link(&target, cli.output),
        Command::Pki(cmd) => pki_cmd::run(cli.output, cmd),
        Command::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
