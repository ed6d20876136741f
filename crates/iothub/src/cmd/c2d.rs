//! `iothub c2d ...`: cloud-to-device messages: queue one for a device, list a device's messages
//! with their state. Delivery is the hub's business (when the device subscribes).

use anyhow::{bail, Result};
use iothub_client::{ApiClient, HubTarget};
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
            output.answer(&v, || {
                println!(
                    "queued message {} for {id} (expires {})",
                    shown(&v["messageId"]),
                    shown(&v["expiryTimeUtc"])
                );
            })
        }
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
