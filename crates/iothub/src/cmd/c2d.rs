//! `iothub c2d ...`: cloud-to-device messages: queue one for a device, list a device's messages
//! with their state, read the feedback senders asked for. Delivery is the hub's business (when
//! the device subscribes).

use anyhow::{bail, Result};
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::json;

use super::device::device_path;
use crate::output::{items, shown, Output};

#[derive(Debug, clap::Subcommand)]
pub enum C2dCommand {
    /// Send a message to a device (delivered when it subscribes; kept until it acknowledges).
    Send {
        /// The device id.
        id: String,
        /// The message body, as text.
        body: String,
        /// Application property KEY=VALUE (repeatable).
        #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// The message id [default: one the hub makes].
        #[arg(long)]
        message_id: Option<String>,
        /// The correlation id, for the device to answer with.
        #[arg(long)]
        correlation_id: Option<String>,
        /// The content type of the body.
        #[arg(long)]
        content_type: Option<String>,
        /// Seconds until the message expires.
        #[arg(long)]
        ttl: Option<i64>,
        /// Which outcomes to hear about in `iothub c2d feedback`: none, positive (completed),
        /// negative (expired), full [default: none].
        #[arg(long)]
        ack: Option<String>,
    },
    /// The next batch of feedback on messages sent with --ack (completed or expired), then
    /// completed: each record is shown once. Nothing to show: says so.
    Feedback {
        /// Give the batch back after showing it (it is shown again next time).
        #[arg(long)]
        keep: bool,
    },
    /// The messages of a device with their state (queued, delivered, expired).
    List {
        /// The device id.
        id: String,
    },
}

pub fn run(target: &HubTarget, output: Output, cmd: C2dCommand) -> Result<()> {
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
            ack,
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
                "contentType": content_type, "ttlSeconds": ttl, "ack": ack,
            });
            let v = api.call(
                Method::POST,
                &format!("{}/messages/devicebound", device_path(&id)),
                None,
                Some(&req),
            )?;
            output.answer(&v, || {
                println!(
                    "queued message {} for {id} (expires {})",
                    shown(&v["messageId"]),
                    shown(&v["expiryTimeUtc"])
                );
            })
        }
        C2dCommand::Feedback { keep } => feedback(&api, output, keep),
        C2dCommand::List { id } => {
            let v = api.call(
                Method::GET,
                &format!("{}/messages/devicebound", device_path(&id)),
                None,
                None,
            )?;
            output.answer(&v, || {
                for m in items(&v["value"]) {
                    println!(
                        "{:<34} {:<10} {:<29} {}",
                        shown(&m["messageId"]),
                        shown(&m["state"]),
                        shown(&m["created"]),
                        shown(&m["body"])
                    );
                }
            })
        }
    }
}

/// Receives a batch, shows it, then completes it (or abandons it with `keep`).
fn feedback(api: &ApiClient, output: Output, keep: bool) -> Result<()> {
    const PATH: &str = "/messages/serviceBound/feedback";
    let (batch, token) = api.get_with_etag(PATH)?;
    if let Some(token) = &token {
        let settle = if keep {
            (Method::POST, format!("{PATH}/{}/abandon", segment(token)))
        } else {
            (Method::DELETE, format!("{PATH}/{}", segment(token)))
        };
        api.call(settle.0, &settle.1, None, None)?;
    }
    let records = if batch.is_array() { batch } else { json!([]) };
    output.answer(&records, || {
        if items(&records).is_empty() {
            println!("no feedback waiting");
        }
        for r in items(&records) {
            println!(
                "{:<34} {:<20} {:<8} {:<20} {}",
                shown(&r["originalMessageId"]),
                shown(&r["deviceId"]),
                shown(&r["statusCode"]),
                shown(&r["enqueuedTimeUtc"]),
                shown(&r["description"])
            );
        }
    })
}
