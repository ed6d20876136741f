//! `iothub device ...`: the device registry (register, list, show, enable/disable, delete, import,
//! a sas device's connection string). The hub decides every rule; this file builds the Azure
//! device objects it is sent and presents its answers.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{items, print_json, shown, text, Output};

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
        /// The device id (for ca authentication, the CN of its certificate).
        id: String,
        /// How the device authenticates.
        #[arg(long, value_enum, default_value_t = AuthKind::Ca)]
        auth: AuthKind,
        /// For self-signed: the certificate thumbprint (SHA-1 or SHA-256 hex).
        #[arg(long)]
        thumbprint: Option<String>,
        /// For self-signed: a second accepted thumbprint (for a certificate rollover).
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
        /// Only the devices whose certificate (the one each last connected with) expires within
        /// this many days, or has expired, soonest first: `30d` or `30`.
        #[arg(long, value_name = "DAYS", value_parser = parse_days)]
        expiring: Option<i64>,
    },
    /// Show one device, with its last connection and last refusal.
    Show {
        /// The device id.
        id: String,
    },
    /// Enable a device.
    Enable {
        /// The device id.
        id: String,
    },
    /// Disable a device (its session is closed at once).
    Disable {
        /// The device id.
        id: String,
        /// Why, kept as the device's statusReason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a device (its session is closed at once).
    Delete {
        /// The device id.
        id: String,
    },
    /// Register devices from a JSON array (Azure device objects) or a CSV file with the header
    /// deviceId,authType[,primaryThumbprint,secondaryThumbprint,status].
    Import {
        /// The JSON or CSV file.
        file: PathBuf,
    },
    /// Print the connection string of a sas device.
    ConnectionString {
        /// The device id.
        id: String,
    },
}

pub fn run(target: &HubTarget, output: Output, cmd: DeviceCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        DeviceCommand::Add {
            id,
            auth,
            thumbprint,
            secondary_thumbprint,
            primary_key,
            disabled,
        } => {
            let authentication =
                authentication(auth, thumbprint, secondary_thumbprint, primary_key)?;
            let body = json!({ "deviceId": id, "status": if disabled { "disabled" } else { "enabled" }, "authentication": authentication });
            let v = put_device(&api, &id, &body, None)?;
            output.answer(&v, || {
                println!(
                    "{}: registered, {}, authentication {}",
                    id,
                    shown(&v["status"]),
                    shown(&v["authentication"]["type"])
                );
            })
        }
        DeviceCommand::List { top, expiring } => list(&api, output, top, expiring),
        DeviceCommand::Show { id } => show(
            output,
            &api.call(Method::GET, &device_path(&id), None, None)?,
        ),
        DeviceCommand::Enable { id } => {
            set_status(&api, &id, true, None).and_then(|v| show(output, &v))
        }
        DeviceCommand::Disable { id, reason } => {
            set_status(&api, &id, false, reason).and_then(|v| show(output, &v))
        }
        DeviceCommand::Delete { id } => {
            api.call(Method::DELETE, &device_path(&id), Some("*"), None)?;
            output.answer(&json!({ "deleted": id }), || println!("deleted {id}"))
        }
        DeviceCommand::Import { file } => import(&api, output, &file),
        DeviceCommand::ConnectionString { id } => connection_string(&api, target, output, &id),
    }
}

pub(super) fn device_path(id: &str) -> String {
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

/// The `authentication` object of a new device, from the `device add` flags.
fn authentication(
    auth: AuthKind,
    thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
    primary_key: Option<String>,
) -> Result<Value> {
    let mut authentication = json!({ "type": auth.azure() });
    match auth {
        AuthKind::SelfSigned => {
            let Some(t) = thumbprint else {
                bail!("--auth self-signed needs --thumbprint")
            };
            authentication["x509Thumbprint"] =
                json!({ "primaryThumbprint": t, "secondaryThumbprint": secondary_thumbprint });
        }
        AuthKind::Sas => {
            authentication["symmetricKey"] = json!({ "primaryKey": primary_key });
        }
        AuthKind::Ca => {}
    }
    Ok(authentication)
}

/// One device as `show`, `enable` and `disable` answer with it.
fn show(output: Output, v: &Value) -> Result<()> {
    output.answer(v, || {
        for key in [
            "deviceId",
            "status",
            "statusReason",
            "connectionState",
            "lastActivityTime",
            "lastConnectedTime",
            "lastRefusal",
            "lastRefusalTime",
            "certificateExpiry",
            "cloudToDeviceMessageCount",
            "etag",
        ] {
            println!("{key}: {}", shown(&v[key]));
        }
        println!("authentication: {}", shown(&v["authentication"]["type"]));
    })
}

/// `30d` or `30`: a number of days, 0 to 36500.
fn parse_days(text: &str) -> Result<i64, String> {
    let digits = text.trim().strip_suffix('d').unwrap_or(text.trim());
    match digits.parse::<i64>() {
        Ok(days) if (0..=36_500).contains(&days) => Ok(days),
        _ => Err(format!(
            "'{text}' is not a number of days; expected e.g. 30d or 30 (0 to 36500)"
        )),
    }
}

fn list(api: &ApiClient, output: Output, top: u32, expiring: Option<i64>) -> Result<()> {
    let path = match expiring {
        Some(days) => format!("/devices?top={top}&expiringWithinDays={days}"),
        None => format!("/devices?top={top}"),
    };
    let v = api.call(Method::GET, &path, None, None)?;
    output.answer(&v, || {
        let items = items(&v);
        if items.is_empty() {
            match expiring {
                Some(days) => println!("no device certificate expires within {days} days"),
                None => println!("no devices"),
            }
            return;
        }
        if expiring.is_some() {
            println!(
                "{:<32} {:<9} {:<21} CERTIFICATE EXPIRY",
                "DEVICE", "STATUS", "CONNECTION"
            );
            for d in items {
                println!(
                    "{:<32} {:<9} {:<21} {}",
                    shown(&d["deviceId"]),
                    shown(&d["status"]),
                    shown(&d["connectionState"]),
                    shown(&d["certificateExpiry"])
                );
            }
            return;
        }
        println!(
            "{:<32} {:<9} {:<21} {:<12} LAST REFUSAL",
            "DEVICE", "STATUS", "AUTHENTICATION", "CONNECTION"
        );
        for d in items {
            println!("{}", device_line(&d));
        }
    })
}

/// `device connection-string`: made here from the device's key and the hub's host name.
fn connection_string(api: &ApiClient, target: &HubTarget, output: Output, id: &str) -> Result<()> {
    let v = api.call(Method::GET, &device_path(id), None, None)?;
    let Some(key) = v["authentication"]["symmetricKey"]["primaryKey"].as_str() else {
        bail!("device '{id}' does not use sas authentication; it has no connection string");
    };
    let host = target.connection()?.host_name;
    let s = format!("HostName={host};DeviceId={id};SharedAccessKey={key}");
    output.answer(&json!({ "connectionString": s }), || println!("{s}"))
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
fn read_import(file: &Path) -> Result<Vec<Value>> {
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

/// Devices per `POST /devices` request: the hub's most (`IMPORT_MAX_DEVICES` in the api crate).
const IMPORT_CHUNK: usize = 1000;

fn import(api: &ApiClient, output: Output, file: &Path) -> Result<()> {
    let devices = read_import(file)?;
    let total = devices.len();
    let mut failures = Vec::new();
    let mut progress = Progress::new(total, std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut done = 0;
    for chunk in devices.chunks(IMPORT_CHUNK) {
        match api.call(
            Method::POST,
            "/devices",
            None,
            Some(&Value::from(chunk.to_vec())),
        ) {
            Ok(answer) => {
                let results = answer["results"].as_array().cloned().unwrap_or_default();
                for (i, d) in chunk.iter().enumerate() {
                    let id = d["deviceId"].as_str().unwrap_or_default();
                    let error = match results.get(i) {
                        Some(r) if r["deviceId"].as_str() == Some(id) => {
                            let e = &r["error"];
                            if e.is_null() {
                                continue;
                            }
                            format!(
                                "{} (HTTP {}, code {} {})",
                                text(&e["message"]),
                                e["httpStatus"],
                                text(&e["code"]),
                                text(&e["errorName"])
                            )
                        }
                        // Never guess which rows landed from an answer that does not say.
                        _ => "the hub's answer does not name this row".to_string(),
                    };
                    failures.push(json!({ "deviceId": id, "error": error }));
                }
            }
            // The whole request refused (rights, size, unreachable): no row of it landed.
            Err(e) => {
                let error = format!("{e:#}");
                for d in chunk {
                    let id = d["deviceId"].as_str().unwrap_or_default();
                    failures.push(json!({ "deviceId": id, "error": error }));
                }
            }
        }
        done += chunk.len();
        progress.update(done);
    }
    progress.finish();
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

/// Import progress on stderr (stdout stays clean for scripts): a bar redrawn in place on a
/// terminal; elsewhere (a log file) a line at each 10% passed, so 30,000 devices write at most
/// ten lines, not 30,000 redraws.
struct Progress {
    total: usize,
    terminal: bool,
    /// Tenths already printed (off a terminal).
    tenths: usize,
}

impl Progress {
    fn new(total: usize, terminal: bool) -> Progress {
        Progress {
            total,
            terminal,
            tenths: 0,
        }
    }

    /// The line to write after `done` rows, if any.
    fn line(&mut self, done: usize) -> Option<String> {
        let total = self.total.max(1);
        if self.terminal {
            let width = 30;
            let filled = done * width / total;
            return Some(format!(
                "\r[{}{}] {done}/{}",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.total
            ));
        }
        let tenths = done * 10 / total;
        if tenths > self.tenths {
            self.tenths = tenths;
            return Some(format!("{done}/{} devices sent\n", self.total));
        }
        None
    }

    fn update(&mut self, done: usize) {
        if let Some(line) = self.line(done) {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(line.as_bytes());
            let _ = stderr.flush();
        }
    }

    fn finish(&self) {
        if self.terminal && self.total > 0 {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_off_a_terminal_is_at_most_a_line_per_tenth() {
        let mut p = Progress::new(30_000, false);
        let lines = (1..=30_000).filter_map(|d| p.line(d)).count();
        assert_eq!(lines, 10);
        // Few rows: still a line per tenth passed at most, and the last one says all.
        let mut p = Progress::new(3, false);
        let lines: Vec<String> = (1..=3).filter_map(|d| p.line(d)).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], "3/3 devices sent\n");
        // On a terminal, the bar redraws in place.
        let mut p = Progress::new(10, true);
        assert!(p.line(5).unwrap().starts_with("\r[###############"));
    }

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
