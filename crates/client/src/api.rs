//! The HTTPS API client, shared by the CLI and the tools so that both find and trust the hub the
//! same way: it finds the hub (connection string from `--hub`, `IOTHUB_CONNECTION_STRING` or
//! `DATA/connection-string`), trusts the hub's CA (`--hub-ca`, `IOTHUB_HUB_CA` or
//! `DATA/tls/ca.pem`), signs a short-lived SAS token and calls the API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use crate::layout;

/// The parts of a hub connection string.
#[derive(Debug, Clone)]
pub struct ConnectionString {
    pub host_name: String,
    pub policy: String,
    pub key: String,
}

impl ConnectionString {
    /// Parses `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` (keys case-sensitive, split
    /// on ';' then the first '='; duplicates and unknown keys refused, as the Azure SDK does).
    pub fn parse(text: &str) -> Result<ConnectionString> {
        let (mut host, mut policy, mut key) = (None, None, None);
        for part in text.trim().split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                anyhow!(
                    "connection string part '{k}' has no '='",
                    k = part.chars().take(20).collect::<String>()
                )
            })?;
            let slot = match k {
                "HostName" => &mut host,
                "SharedAccessKeyName" => &mut policy,
                "SharedAccessKey" => &mut key,
                other => bail!("connection string has the unknown key '{other}'; expected HostName, SharedAccessKeyName, SharedAccessKey"),
            };
            if slot.replace(v.to_string()).is_some() {
                bail!("connection string has '{k}' twice");
            }
        }
        Ok(ConnectionString {
            host_name: host.ok_or_else(|| anyhow!("connection string lacks HostName"))?,
            policy: policy.ok_or_else(|| anyhow!("connection string lacks SharedAccessKeyName"))?,
            key: key.ok_or_else(|| anyhow!("connection string lacks SharedAccessKey"))?,
        })
    }

    /// A SAS token for this hub valid for `ttl` seconds.
    pub fn token(&self, ttl: i64) -> Result<String> {
        let expiry = unix_now() + ttl;
        iothub_pki::sas::build_token(&self.host_name, &self.key, Some(&self.policy), expiry)
            .map_err(|e| anyhow!("the connection string's SharedAccessKey is not base64: {e}"))
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where the CLI finds its hub.
#[derive(Debug, Clone)]
pub struct HubTarget {
    pub data: PathBuf,
    pub connection_string: Option<String>,
    pub hub_ca: Option<PathBuf>,
}

impl HubTarget {
    pub fn connection(&self) -> Result<ConnectionString> {
        match &self.connection_string {
            Some(s) => ConnectionString::parse(s).context("--hub / IOTHUB_CONNECTION_STRING"),
            None => {
                let path = self.data.join(layout::CONNECTION_STRING);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "no hub to talk to: pass --hub or set IOTHUB_CONNECTION_STRING, or run the CLI where 'iothub serve' keeps its data ({} not readable; see --data)",
                        path.display()
                    )
                })?;
                ConnectionString::parse(&text).with_context(|| path.display().to_string())
            }
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.hub_ca
            .clone()
            .unwrap_or_else(|| self.data.join(layout::HUB_CA))
    }
}

/// An API refusal, with the hub's stable code.
#[derive(Debug)]
pub struct ApiRefusal {
    pub status: u16,
    pub code: String,
    pub name: String,
    pub message: String,
}

impl std::fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (HTTP {}, code {} {})",
            self.message, self.status, self.code, self.name
        )
    }
}

impl std::error::Error for ApiRefusal {}

/// A connected API client.
pub struct ApiClient {
    http: Client,
    base: String,
    token: String,
}

fn tls_config(ca_path: &Path) -> Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca_path).with_context(|| {
        format!(
            "cannot read the hub's CA certificate {} (pass --hub-ca or set IOTHUB_HUB_CA)",
            ca_path.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.with_context(|| format!("{} is not PEM", ca_path.display()))?)
            .with_context(|| format!("{} holds an unusable certificate", ca_path.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca_path.display());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ApiClient {
    pub fn connect(target: &HubTarget) -> Result<ApiClient> {
        Self::connect_with_timeout(target, Some(std::time::Duration::from_secs(60)))
    }

    /// A client whose requests may last `timeout` (None: no limit, for following a stream).
    pub fn connect_with_timeout(
        target: &HubTarget,
        timeout: Option<std::time::Duration>,
    ) -> Result<ApiClient> {
        let conn = target.connection()?;
        let mut builder =
            Client::builder().tls_backend_preconfigured(tls_config(&target.ca_path())?);
        builder = match timeout {
            Some(t) => builder.timeout(t),
            None => builder.timeout(None),
        };
        let http = builder
            .connect_timeout(std::time::Duration::from_secs(15))
            .build()
            .context("cannot build the HTTPS client")?;
        Ok(ApiClient {
            http,
            base: format!("https://{}", conn.host_name),
            token: conn.token(3600)?,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", &self.token)
    }

    /// Opens a streaming GET (server-sent events); refusals are returned as errors.
    pub fn open_stream(&self, path: &str) -> Result<reqwest::blocking::Response> {
        let resp = self
            .request(Method::GET, path)
            .header("Accept", "text/event-stream")
            .send()
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let json: Value = resp.json().unwrap_or(Value::Null);
        Err(ApiRefusal::from_answer(status, &json).into())
    }

    /// Sends a request and returns the JSON body (Null for an empty one), or the refusal.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self.request(method, path);
        if let Some(etag) = if_match {
            req = req.header("If-Match", etag);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.answer(req)?.0)
    }

    /// A GET whose answer's `ETag` matters (a feedback batch's lock token): the JSON body and
    /// the ETag without its quotes.
    pub fn get_with_etag(&self, path: &str) -> Result<(Value, Option<String>)> {
        self.answer(self.request(Method::GET, path))
    }

    fn answer(&self, req: reqwest::blocking::RequestBuilder) -> Result<(Value, Option<String>)> {
        let resp = req
            .send()
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string());
        let text = resp.text().context("the hub's answer was cut off")?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok((json, etag));
        }
        Err(ApiRefusal::from_answer(status, &json).into())
    }
}

impl ApiRefusal {
    /// The refusal an error answer carries (Azure's error body), or, for a body without a
    /// message, one that names the HTTP status.
    fn from_answer(status: reqwest::StatusCode, json: &Value) -> ApiRefusal {
        let field = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        ApiRefusal {
            status: status.as_u16(),
            code: field("code"),
            name: field("errorName"),
            message: match json.get("message").and_then(Value::as_str) {
                Some(m) => m.to_string(),
                None => format!("the hub answered {status}"),
            },
        }
    }
}

/// Percent-encodes a path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
