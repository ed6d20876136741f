//! What devices are doing now: `monitor` follows device-to-cloud messages live (like
//! `az iot hub monitor-events`), `connections` shows the live sessions and recent refusals.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result};
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{items, shown, Output};

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
            Output::Text => println!("{}", serde_json::to_string_pretty(&event(&m))?),
        }
        let _ = std::io::stdout().flush();
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// A message as `az iot hub monitor-events` shows it: a JSON body as JSON, other text as a
/// string, binary as base64.
fn event(m: &Value) -> Value {
    let payload = match &m["body"] {
        Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone())),
        _ => json!({ "base64": m["bodyBase64"] }),
    };
    json!({
        "event": {
            "origin": m["deviceId"],
            "offset": m["offset"],
            "enqueuedTime": m["enqueuedTime"],
            "properties": { "application": m["properties"], "system": m["systemProperties"] },
            "payload": payload,
        }
    })
}

pub fn connections(target: &HubTarget, output: Output) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let v = api.call(Method::GET, "/connections", None, None)?;
    output.answer(&v, || {
        let live = items(&v["live"]);
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
        let refusals = items(&v["refusals"]);
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
    })
}
