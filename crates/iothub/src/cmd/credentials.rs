//! The credential commands: `connection-string`, `sas-token` and `portal-link` each hand the
//! operator something that opens the hub (a connection string, a token, a login link), made from a
//! policy's key locally or by the hub.

use anyhow::{bail, Result};
use iothub_client::{segment, unix_now, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::json;

use crate::output::{text, Output};

#[derive(Debug, clap::Args)]
pub struct ConnectionStringArgs {
    /// A policy other than the connection string's own (its keys are read from the hub).
    #[arg(long)]
    pub policy: Option<String>,
    /// The Event Hubs-compatible form, for telemetry readers (azure-eventhub and other Event
    /// Hubs clients): Endpoint=sb://HOST/;...;EntityPath=HUB. They connect on AMQP's port 5671.
    #[arg(long)]
    pub eventhub: bool,
}

#[derive(Debug, clap::Args)]
pub struct SasTokenArgs {
    /// The policy to sign with [default: the connection string's policy].
    #[arg(long)]
    pub policy: Option<String>,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
}

/// The primary key of another policy, read from the hub (owner credential required).
fn policy_key(target: &HubTarget, policy: &str) -> Result<String> {
    let api = ApiClient::connect(target)?;
    let v = api.call(
        Method::POST,
        &format!("/policies/{}/listKeys", segment(policy)),
        None,
        None,
    )?;
    Ok(text(&v["primaryKey"]))
}

pub fn connection_string(
    target: &HubTarget,
    output: Output,
    args: ConnectionStringArgs,
) -> Result<()> {
    let conn = target.connection()?;
    let (policy, key) = match args.policy {
        Some(p) if p != conn.policy => {
            let key = policy_key(target, &p)?;
            (p, key)
        }
        _ => (conn.policy.clone(), conn.key.clone()),
    };
    let s = if args.eventhub {
        // The hub's name, which readers give as the entity, comes from the hub.
        let api = ApiClient::connect(target)?;
        let name = text(&api.call(Method::GET, "/eventHub", None, None)?["name"]);
        format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={policy};SharedAccessKey={key};EntityPath={name}",
            host_without_port(&conn.host_name)
        )
    } else {
        format!(
            "HostName={};SharedAccessKeyName={policy};SharedAccessKey={key}",
            conn.host_name
        )
    };
    output.answer(&json!({ "connectionString": s }), || println!("{s}"))
}

/// `host:8443` -> `host`, `[::1]:8443` -> `[::1]`: Event Hubs clients take the AMQP port (5671)
/// from the scheme, not from the HTTPS port the hub's own connection string carries.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

pub fn sas_token(target: &HubTarget, output: Output, args: SasTokenArgs) -> Result<()> {
    if !(1..=365 * 24 * 3600).contains(&args.ttl) {
        bail!("--ttl is {} seconds; expected 1 to 31536000", args.ttl);
    }
    let mut conn = target.connection()?;
    if let Some(p) = args.policy {
        if p != conn.policy {
            conn.key = policy_key(target, &p)?;
            conn.policy = p;
        }
    }
    let token = conn.token(args.ttl)?;
    output.answer(
        &json!({ "sas": token, "expiry": unix_now() + args.ttl }),
        || println!("{token}"),
    )
}

/// `portal-link`: asks the hub for a single-use login link (owner credential required).
pub fn portal_link(target: &HubTarget, output: Output) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let v = api.call(Method::POST, "/portal-links", None, None)?;
    let host = target.connection()?.host_name;
    let url = format!("https://{host}{}", text(&v["path"]));
    output.answer(
        &json!({ "url": url, "expiresInSeconds": v["expiresInSeconds"] }),
        || {
            println!("{url}");
            eprintln!("single use, valid for {} s", text(&v["expiresInSeconds"]));
        },
    )
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn the_event_hubs_endpoint_drops_the_https_port() {
        assert_eq!(host_without_port("hub.local:8443"), "hub.local");
        assert_eq!(host_without_port("hub.local"), "hub.local");
        assert_eq!(host_without_port("127.0.0.9:8443"), "127.0.0.9");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
    }
}
