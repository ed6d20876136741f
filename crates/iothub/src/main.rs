//! `iothub`: one binary for the hub (`serve`), its command-line client (`cert`, `device`, `policy`,
//! `audit`, ...), test-PKI helpers (`pki`) and a guided `demo`. This file only parses the command
//! line and hands each command to the module that runs it.

mod cmd;
mod config;
mod demo;
mod files;
mod output;
mod serve;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use iothub_client::HubTarget;

use crate::cmd::{
    audit, c2d, cert, credentials, device, dps, eventhub, monitor, pki, policy, twin,
};
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "iothub",
    version,
    about = "A self-hosted IoT hub with X.509 device identity"
)]
// `--hub` and `--hub-ca` before the command name (`iothub --hub ... cert list`) keep working as
// they always did; they are listed only by the commands that talk to a hub (`HubArgs`).
#[command(arg(legacy_hub_arg("hub", "hub", "IOTHUB_CONNECTION_STRING")))]
#[command(arg(legacy_hub_arg("hub_ca", "hub-ca", "IOTHUB_HUB_CA").value_parser(clap::value_parser!(PathBuf))))]
struct Cli {
    /// Data directory of the hub (the CLI reads the local connection string and hub CA from it).
    #[arg(long, env = "IOTHUB_DATA", global = true, default_value = "./data")]
    data: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// A hidden `--hub`/`--hub-ca` of the top level: given there, clap hands its value to the
/// command's own `HubArgs` (same id), which is what the commands read.
fn legacy_hub_arg(id: &'static str, long: &'static str, env: &'static str) -> clap::Arg {
    clap::Arg::new(id)
        .long(long)
        .env(env)
        .hide_env_values(true)
        .global(true)
        .hide(true)
}

/// Where the hub is: only the commands that talk to one take these.
#[derive(Debug, Clone, Args)]
struct HubArgs {
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
}

impl HubArgs {
    fn target(self, data: PathBuf) -> HubTarget {
        HubTarget {
            data,
            connection_string: self.hub,
            hub_ca: self.hub_ca,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: HTTPS API and portal, MQTT/TLS for devices.
    Serve(Box<config::ServeArgs>),
    /// CA certificates and proof of possession.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Devices: register, list, enable/disable, delete, import.
    Device {
        #[command(subcommand)]
        command: device::DeviceCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Cloud-to-device messages.
    C2d {
        #[command(subcommand)]
        command: c2d::C2dCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Device twins: show, update desired properties and tags.
    Twin {
        #[command(subcommand)]
        command: twin::TwinCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Direct methods: invoke one on a connected device.
    Method {
        #[command(subcommand)]
        command: twin::MethodCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Follow device-to-cloud messages (telemetry).
    Monitor {
        #[command(flatten)]
        args: monitor::MonitorArgs,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Connected devices and recent connection refusals with their reasons.
    Connections {
        #[command(flatten)]
        hub: HubArgs,
    },
    /// The provisioning service: ID scope, enrollment groups, individual enrollments,
    /// registrations (devices register with the SDK's ProvisioningDeviceClient).
    Dps {
        #[command(subcommand)]
        command: dps::DpsCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Consumer groups of the Event Hubs-compatible endpoint (AMQP): add, list, delete.
    ConsumerGroup {
        #[command(subcommand)]
        command: eventhub::ConsumerGroupCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Shared access policies: add with chosen rights, list, show, delete, rotate keys.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// The audit log, newest first.
    Audit {
        #[command(flatten)]
        args: audit::AuditArgs,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Print the owner connection string of the local hub (or of --policy).
    ConnectionString {
        #[command(flatten)]
        args: credentials::ConnectionStringArgs,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Print a fresh single-use login link for the web portal.
    PortalLink {
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Print a SharedAccessSignature token for a hub policy.
    SasToken {
        #[command(flatten)]
        args: credentials::SasTokenArgs,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Run the whole story against a temporary hub, step by step, with the equivalent commands.
    Demo,
    /// Make test certificates: CAs, device certificates, verification certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
}

/// Log lines go to stderr, as text (coloured on a terminal) or one JSON object per line for a
/// log collector.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOTHUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only `serve` can ask for JSON lines, and its configuration is resolved before any log line.
    let serve_config = match &cli.command {
        Command::Serve(args) => Some(config::ServeConfig::resolve(Some(&cli.data), args.as_ref())),
        _ => None,
    };
    let json = matches!(&serve_config, Some(Ok(c)) if c.log_format == config::LogFormat::Json);
    init_logging(json);
    let (data, output) = (cli.data, cli.output);
    let result = match cli.command {
        Command::Serve(_) => {
            let resolved = serve_config.expect("resolved above for serve");
            resolved.and_then(|config| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(serve::run(config))
            })
        }
        Command::Cert { command, hub } => cert::run(&hub.target(data), output, command),
        Command::Policy { command, hub } => policy::run(&hub.target(data), output, command),
        Command::ConsumerGroup { command, hub } => {
            eventhub::run(&hub.target(data), output, command)
        }
        Command::Dps { command, hub } => dps::run(&hub.target(data), output, command),
        Command::Audit { args, hub } => audit::run(&hub.target(data), output, args),
        Command::Device { command, hub } => device::run(&hub.target(data), output, command),
        Command::C2d { command, hub } => c2d::run(&hub.target(data), output, command),
        Command::Twin { command, hub } => twin::run(&hub.target(data), output, command),
        Command::Method { command, hub } => twin::method(&hub.target(data), output, command),
        Command::Monitor { args, hub } => monitor::monitor(&hub.target(data), output, args),
        Command::Connections { hub } => monitor::connections(&hub.target(data), output),
        Command::ConnectionString { args, hub } => {
            credentials::connection_string(&hub.target(data), output, args)
        }
        Command::SasToken { args, hub } => credentials::sas_token(&hub.target(data), output, args),
        Command::PortalLink { hub } => credentials::portal_link(&hub.target(data), output),
        Command::Pki(command) => pki::run(output, command),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// What `iothub ARGS --help` prints.
    fn help(args: &[&str]) -> String {
        let argv = std::iter::once("iothub").chain(args.iter().copied());
        let err = Cli::try_parse_from(argv.chain(["--help"])).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        err.to_string()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_commands_that_talk_to_a_hub_list_hub_options() {
        for talks_to_none in [
            &["serve"][..],
            &["demo"],
            &["pki"],
            &["pki", "ca"],
            &["pki", "device"],
            &["pki", "verification-cert"],
        ] {
            let text = help(talks_to_none);
            assert!(!text.contains("--hub"), "{talks_to_none:?}:\n{text}");
        }
        for talks in [
            &["cert"][..],
            &["cert", "add"],
            &["device", "list"],
            &["c2d", "send"],
            &["twin", "update"],
            &["method", "invoke"],
            &["monitor"],
            &["connections"],
            &["policy", "rotate"],
            &["dps", "group", "add"],
            &["dps", "registrations"],
            &["audit"],
            &["connection-string"],
            &["portal-link"],
            &["sas-token"],
        ] {
            let text = help(talks);
            assert!(
                text.contains("--hub <HUB>") && text.contains("--hub-ca <HUB_CA>"),
                "{talks:?}:\n{text}"
            );
        }
    }

    #[test]
    fn hub_options_are_taken_before_or_after_the_command() {
        let conn = "HostName=h;SharedAccessKeyName=p;SharedAccessKey=aGk=";
        for argv in [
            &[
                "iothub", "--hub", conn, "--hub-ca", "ca.pem", "cert", "list",
            ][..],
            &[
                "iothub", "cert", "--hub", conn, "--hub-ca", "ca.pem", "list",
            ],
            &[
                "iothub", "cert", "list", "--hub", conn, "--hub-ca", "ca.pem",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Cert { hub, .. } = cli.command else {
                panic!("{argv:?} is not cert")
            };
            assert_eq!(hub.hub.as_deref(), Some(conn), "{argv:?}");
            assert_eq!(hub.hub_ca, Some(PathBuf::from("ca.pem")), "{argv:?}");
        }
    }

    /// Every argument a user can see says what it is, positional ones included.
    #[test]
    fn every_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "iothub", &mut missing);
        assert!(missing.is_empty(), "no help: {missing:?}");
        let add = help(&["cert", "add"]);
        assert!(
            add.contains("<NAME>  The name the hub keeps the certificate under"),
            "{add}"
        );
    }
}
