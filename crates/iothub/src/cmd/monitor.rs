//! What devices are doing now: `monitor` follows device-to-cloud messages live (like
//! `az iot hub monitor-events`), `connections` shows the live sessions and recent refusals.

use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

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
    /// Stop after this many seconds (a deadline: the command ends then, even while the
    /// stream is busy).
    #[arg(long)]
    pub timeout: Option<u64>,
}

pub fn monitor(target: &HubTarget, output: Output, args: MonitorArgs) -> Result<()> {
    // `--timeout` is a deadline for the whole command. A read timeout on the connection would
    // not be one: the stream's keep-alives (and any telemetry) reset it, so it could run forever.
    // The stream is therefore read on its own thread and this one waits at most until the
    // deadline; the reader is left behind when the command returns (the process ends).
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let api = ApiClient::connect_with_timeout(target, None)?;
    let mut path = "/messages/stream?".to_string();
    if let Some(d) = &args.device {
        path.push_str(&format!("deviceId={}&", segment(d)));
    }
    if let Some(f) = args.from {
        path.push_str(&format!("from={f}&"));
    }
    let path = path.trim_end_matches(['?', '&']).to_string();
    let (tx, rx) = mpsc::sync_channel::<Result<Event>>(64);
    std::thread::spawn(move || read_stream(&api, &path, &tx));
    let mut announced = false;
    let mut seen = 0u64;
    loop {
        let next = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let m = match next {
            Ok(Ok(Event::Opened)) => {
                if output == Output::Text && !announced {
                    eprintln!("Monitoring telemetry (Ctrl-C to stop)...");
                    announced = true;
                }
                continue;
            }
            Ok(Ok(Event::Message(m))) => m,
            Ok(Err(e)) => return Err(e),
            // The deadline is the requested end, not an error.
            Err(RecvTimeoutError::Timeout) => break,
            // The hub ended the stream.
            Err(RecvTimeoutError::Disconnected) => break,
        };
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

/// What the stream's reader hands to the command: the stream is open, or one message.
enum Event {
    Opened,
    Message(Value),
}

/// Opens the stream and sends each message until the stream ends, fails, or nobody listens.
fn read_stream(api: &ApiClient, path: &str, tx: &SyncSender<Result<Event>>) {
    let resp = match api.open_stream(path) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    if tx.send(Ok(Event::Opened)).is_err() {
        return;
    }
    for line in BufReader::new(resp).lines() {
        let item = match line {
            Err(e) => Err(anyhow::Error::from(e).context("the stream from the hub broke")),
            Ok(line) => match line.strip_prefix("data:") {
                // Keep-alives (comments) and event names carry no message.
                None => continue,
                Some(data) => serde_json::from_str(data.trim())
                    .map(Event::Message)
                    .context("the hub sent an unreadable event"),
            },
        };
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
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
            "partition": m["partition"],
            "sequenceNumber": m["sequenceNumber"],
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
