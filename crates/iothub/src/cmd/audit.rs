//! `iothub audit`: the hub's audit log, newest first, read through the API like every other
//! client command.

use anyhow::Result;
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::Value;

use crate::output::{items, shown, Output};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only entries about this certificate.
    #[arg(long, conflicts_with = "device")]
    pub certificate: Option<String>,
    /// Only entries about this device (its registration, auto-registration, changes).
    #[arg(long)]
    pub device: Option<String>,
    /// At most this many entries (1 to 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

pub fn run(target: &HubTarget, output: Output, args: AuditArgs) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let mut path = format!("/audit?limit={}", args.limit);
    if let Some(c) = &args.certificate {
        path.push_str(&format!("&target={}", segment(&format!("certificate/{c}"))));
    }
    if let Some(d) = &args.device {
        path.push_str(&format!("&target={}", segment(&format!("device/{d}"))));
    }
    let v = api.call(Method::GET, &path, None, None)?;
    output.answer(&v, || {
        for e in items(&v["value"]) {
            let code = match &e["code"] {
                Value::String(c) => format!(" [{c}]"),
                _ => String::new(),
            };
            println!(
                "{}  {:<12} {:<38} {:<24} {}{}: {}",
                shown(&e["time"]),
                shown(&e["actor"]),
                shown(&e["action"]),
                shown(&e["target"]),
                shown(&e["outcome"]),
                code,
                shown(&e["detail"])
            );
        }
    })
}
