//! Device commands: `device ...` (the registry), `c2d ...` (cloud-to-device messages), `monitor`
//! (device-to-cloud messages, followed live like `az iot hub monitor-events`) and `connections`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{segment, ApiClient, HubTarget};
use crate::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthKind {
    /// X.509 certificate chaining to a Verified CA, CN = device id.
    Ca,
    /// X.509 certificate with a registered thumbprint.
    SelfSigned,
    /// Symmetric keys (SAS token as MQTT password).
    Sas,
}

impl AuthKind {
    fn azure(self) -> &'static str {
        match self {
            AuthKind::Ca => "certificateAuthority",
            AuthKind::SelfSigned => "selfSigned",
            AuthKind::Sas => "sas",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Register a device.
    Add {
        id: String,
        #[arg(long, value_enum, default_value_t = AuthKind::Ca)]
        auth: AuthKind,
        /// For self-signed: the certificate thumbprint (SHA-1 or SHA-256 hex).
        #[arg(long)]
        thumbprint: Option<String>,
        #[arg(long)]
        secondary_thumbprint: Option<String>,
        /// For sas: the primary key (base64); generated when omitted.
        #[arg(long)]
        primary_key: Option<String>,
        /// Register it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List devices.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        top: u32,
    },
    /// Show one device, with its last connection and last refusal.
    Show { id: String },
    /// Enable a device.
    Enable { id: String },
    /// Disable a device (its session is closed at once).
    Disable {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a device (its session is closed at once).
    Delete { id: String },
    /// Register devices from a JSON array (Azure device objects) or a CSV file with the header
    /// deviceId,authType[,primaryThumbprint,secondaryThumbprint,status].
    Import { file: PathBuf },
    /// Print the connection string of a sas device.
    ConnectionString { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum C2dCommand {
    /// Send a message to a device (delivered when it subscribes; kept until it acknowledges).
    Send {
        id: String,
        body: String,
        /// Application property KEY=VALUE (repeatable).
        #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
        properties: Vec<String>,
        #[arg(long)]
        message_id: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        /// Seconds until the message expires.
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// The messages of a device with their state (queued, delivered, expired).
    List { id: String },
}

#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// Only this device's messages.
    #[arg(long)]
    pub device: Option<String>,
    /// Start at this offset (1: everything retained) [default: new messages only].
    #[arg(long)]
    pub from: Option<i64>,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A field as text output prints it: the hub may be repeating what a device or another client
/// sent (a client id, a refusal reason quoting a username or a certificate name), so control
/// characters are escaped and cannot forge lines or drive the terminal (JSON output escapes them
/// already). Values used as data (PEM, etags, keys) are read with `text`.
fn shown(v: &Value) -> String {
    iothub_hub::peer_text::escaped(&text(v)).into_owned()
}

fn device_path(id: &str) -> String {
    format!("/devices/{}", segment(id))
}

fn device_line(d: &Value) -> String {
    format!(
        "{:<32} {:<9} {:<21} {:<12} {}",
        shown(&d["deviceId"]),
        shown(&d["status"]),
        shown(&d["authentication"]["type"]),
        shown(&d["connectionState"]),
        shown(&d["lastRefusal"])
    )
}

fn put_device(api: &ApiClient, id: &str, body: &Value, etag: Option<&str>) -> Result<Value> {
    api.call(Method::PUT, &device_path(id), etag, Some(body))
}

pub fn device(target: &HubTarget, output: Output, cmd: DeviceCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let show = |v: &Value| -> Result<()> {
        match output {
            Output::Json => print_json(v),
            Output::Text => {
                for key in [
                    "deviceId",
                    "status",
                    "statusReason",
                    "connectionState",
                    "lastActivityTime",
                    "lastConnectedTime",
                    "lastRefusal",
                    "lastRefusalTime",
                    "cloudToDeviceMessageCount",
                    "etag",
                ] {
                    println!("{key}: {}", shown(&v[key]));
                }
                println!("authentication: {}", shown(&v["authentication"]["type"]));
                Ok(())
            }
        }
    };
    match cmd {
        DeviceCommand::Add {
            id,
            auth,
            thumbprint,
            secondary_thumbprint,
            primary_key,
            disabled,
        } => {
            let mut authentication = json!({ "type": auth.azure() });
            match auth {
                AuthKind::SelfSigned => {
                    let Some(t) = thumbprint else {
                        bail!("--auth self-signed needs --thumbprint")
                    };
                    authentication["x509Thumbprint"] = json!({ "primaryThumbprint": t, "secondaryThumbprint": secondary_thumbprint });
                }
                AuthKind::Sas => {
                    authentication["symmetricKey"] = json!({ "primaryKey": primary_key });
                }
                AuthKind::Ca => {}
            }
            let body = json!({ "deviceId": id, "status": if disabled { "disabled" } else { "enabled" }, "authentication": authentication });
            let v = put_device(&api, &id, &body, None)?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!(
                        "{}: registered, {}, authentication {}",
                        id,
                        shown(&v["status"]),
                        shown(&v["authentication"]["type"])
                    );
                    Ok(())
                }
            }
        }
        DeviceCommand::List { top } => {
            let v = api.call(Method::GET, &format!("/devices?top={top}"), None, None)?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    let items = v.as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        println!("no devices");
                    } else {
                        println!(
                            "{:<32} {:<9} {:<21} {:<12} LAST REFUSAL",
                            "DEVICE", "STATUS", "AUTHENTICATION", "CONNECTION"
                        );
                        for d in items {
                            println!("{}", device_line(&d));
                        }
                    }
                    Ok(())
                }
            }
        }
        DeviceCommand::Show { id } => {
            show(&api.call(Method::GET, &device_path(&id), None, None)?)
        }
        DeviceCommand::Enable { id } => set_status(&api, &id, true, None).and_then(|v| show(&v)),
        DeviceCommand::Disable { id, reason } => {
            set_status(&api, &id, false, reason).and_then(|v| show(&v))
        }
        DeviceCommand::Delete { id } => {
            api.call(Method::DELETE, &device_path(&id), Some("*"), None)?;
            match output {
                Output::Json => print_json(&json!({ "deleted": id })),
                Output::Text => {
                    println!("deleted {id}");
                    Ok(())
                }
            }
        }
        DeviceCommand::Import { file } => import(&api, output, &file),
        DeviceCommand::ConnectionString { id } => {
            let v = api.call(Method::GET, &device_path(&id), None, None)?;
            let Some(key) = v["authentication"]["symmetricKey"]["primaryKey"].as_str() else {
                bail!("device '{id}' does not use sas authentication; it has no connection string");
            };
            let host = target.connection()?.host_name;
            let s = format!("HostName={host};DeviceId={id};SharedAccessKey={key}");
            match output {
                Output::Json => print_json(&json!({ "connectionString": s })),
                Output::Text => {
                    println!("{s}");
                    Ok(())
                }
            }
        }
    }
}

fn set_status(api: &ApiClient, id: &str, enabled: bool, reason: Option<String>) -> Result<Value> {
    let mut current = api.call(Method::GET, &device_path(id), None, None)?;
    let etag = text(&current["etag"]);
    current["status"] = json!(if enabled { "enabled" } else { "disabled" });
    if reason.is_some() {
        current["statusReason"] = json!(reason);
    }
    put_device(api, id, &current, Some(&format!("\"{etag}\"")))
}

/// Reads devices to import: a JSON array of device objects, or CSV with a header line.
fn read_import(file: &PathBuf) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: Vec<Value> = serde_json::from_str(trimmed)
            .with_context(|| format!("{} is not a JSON array of devices", file.display()))?;
        return Ok(v);
    }
    // RFC 4180 (quoted fields, commas inside quotes) and Excel's "CSV UTF-8", which starts with a
    // byte order mark.
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: cannot read the CSV header", file.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let id_col = col("deviceId").with_context(|| {
        format!(
            "{}: the CSV header must name a deviceId column",
            file.display()
        )
    })?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: not valid CSV", file.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let get = |c: Option<usize>| {
            c.and_then(|i| record.get(i))
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
        };
        let id = get(Some(id_col))
            .with_context(|| format!("{} line {line}: no deviceId", file.display()))?;
        let auth = get(col("authType")).unwrap_or_else(|| "certificateAuthority".into());
        out.push(json!({
            "deviceId": id,
            "status": get(col("status")).unwrap_or_else(|| "enabled".into()),
            "authentication": {
                "type": auth,
                "x509Thumbprint": { "primaryThumbprint": get(col("primaryThumbprint")), "secondaryThumbprint": get(col("secondaryThumbprint")) },
                "symmetricKey": { "primaryKey": get(col("primaryKey")), "secondaryKey": get(col("secondaryKey")) },
            }
        }));
    }
    Ok(out)
}

fn import(api: &ApiClient, output: Output, file: &PathBuf) -> Result<()> {
    let devices = read_import(file)?;
    let total = devices.len();
    let mut failures = Vec::new();
    let mut stderr = std::io::stderr();
    for (i, d) in devices.iter().enumerate() {
        let id = d["deviceId"].as_str().unwrap_or_default().to_string();
        if let Err(e) = put_device(api, &id, d, None) {
            failures.push(json!({ "deviceId": id, "error": format!("{e:#}") }));
        }
        // A progress bar on stderr (stdout stays clean for scripts).
        let done = i + 1;
        let width = 30;
        let filled = done * width / total.max(1);
        let _ = write!(
            stderr,
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        let _ = stderr.flush();
    }
    if total > 0 {
        let _ = writeln!(stderr);
    }
    let summary = json!({ "total": total, "imported": total - failures.len(), "failed": failures });
    match output {
        Output::Json => print_json(&summary)?,
        Output::Text => {
            println!("imported {} of {total} devices", total - failures.len());
            for f in &failures {
                println!("  {}: {}", shown(&f["deviceId"]), shown(&f["error"]));
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} of {total} devices were not imported", failures.len());
    }
    Ok(())
}

pub fn c2d(target: &HubTarget, output: Output, cmd: C2dCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        C2dCommand::Send {
            id,
            body,
            properties,
            message_id,
            correlation_id,
            content_type,
            ttl,
        } => {
            let mut props = serde_json::Map::new();
            for p in properties {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("--property '{p}' is not KEY=VALUE")
                };
                props.insert(k.to_string(), v.into());
            }
            let req = json!({
                "body": body, "properties": props, "messageId": message_id, "correlationId": correlation_id,
                "contentType": content_type, "ttlSeconds": ttl,
            });
            let v = api.call(
                Method::POST,
                &format!("{}/messages/devicebound", device_path(&id)),
                None,
                Some(&req),
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!(
                        "queued message {} for {id} (expires {})",
                        shown(&v["messageId"]),
                        shown(&v["expiryTimeUtc"])
                    );
                    Ok(())
                }
            }
        }
        C2dCommand::List { id } => {
            let v = api.call(
                Method::GET,
                &format!("{}/messages/devicebound", device_path(&id)),
                None,
                None,
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    for m in v["value"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "{:<34} {:<10} {:<29} {}",
                            shown(&m["messageId"]),
                            shown(&m["state"]),
                            shown(&m["created"]),
                            shown(&m["body"])
                        );
                    }
                    Ok(())
                }
            }
        }
    }
}

pub fn monitor(target: &HubTarget, output: Output, args: MonitorArgs) -> Result<()> {
    let api =
        ApiClient::connect_with_timeout(target, args.timeout.map(std::time::Duration::from_secs))?;
    let mut path = "/messages/stream?".to_string();
    if let Some(d) = &args.device {
        path.push_str(&format!("deviceId={}&", segment(d)));
    }
    if let Some(f) = args.from {
        path.push_str(&format!("from={f}&"));
    }
    let resp = api.open_stream(path.trim_end_matches(['?', '&']))?;
    if output == Output::Text {
        eprintln!("Monitoring telemetry (Ctrl-C to stop)...");
    }
    let mut seen = 0u64;
    for line in BufReader::new(resp).lines() {
        let line = match line {
            Ok(l) => l,
            // A timeout (--timeout) ends the stream; that is the requested end, not an error.
            Err(_) if args.timeout.is_some() => break,
            Err(e) => return Err(e).context("the stream from the hub broke"),
        };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let m: Value =
            serde_json::from_str(data.trim()).context("the hub sent an unreadable event")?;
        match output {
            Output::Json => println!("{}", serde_json::to_string(&m)?),
            Output::Text => {
                let payload = match &m["body"] {
                    Value::String(s) => {
                        serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone()))
                    }
                    _ => json!({ "base64": m["bodyBase64"] }),
                };
                let event = json!({
                    "event": {
                        "origin": m["deviceId"],
                        "offset": m["offset"],
                        "enqueuedTime": m["enqueuedTime"],
                        "properties": { "application": m["properties"], "system": m["systemProperties"] },
                        "payload": payload,
                    }
                });
                println!("{}", serde_json::to_string_pretty(&event)?);
            }
        }
        let _ = std::io::stdout().flush();
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

pub fn connections(target: &HubTarget, output: Output) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let v = api.call(Method::GET, "/connections", None, None)?;
    match output {
        Output::Json => print_json(&v),
        Output::Text => {
            let live = v["live"].as_array().cloned().unwrap_or_default();
            println!("connected devices: {}", live.len());
            for s in live {
                println!(
                    "  {:<32} {:<22} since {}  {}",
                    shown(&s["deviceId"]),
                    shown(&s["remote"]),
                    shown(&s["since"]),
                    shown(&s["authentication"])
                );
            }
            let refusals = v["refusals"].as_array().cloned().unwrap_or_default();
            println!("recent refusals: {}", refusals.len());
            for r in refusals {
                println!(
                    "  {}  {:<24} {:<22} {}",
                    shown(&r["time"]),
                    shown(&r["clientId"]),
                    shown(&r["remote"]),
                    shown(&r["reason"])
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_escapes_what_peers_sent() {
        // A record written before the hub escaped refusal reasons, or by another hub.
        let d = json!({
            "deviceId": "dev1",
            "lastRefusal": "username names 'x\nFORGED line\u{1b}[2J'",
        });
        let line = device_line(&d);
        assert!(
            line.ends_with("username names 'x\\nFORGED line\\u{1b}[2J'"),
            "{line}"
        );
        assert_eq!(shown(&Value::Null), "-");
        // Data read back as data is not altered.
        assert_eq!(text(&json!("a\nb")), "a\nb");
    }
}
