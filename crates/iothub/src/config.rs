//! `serve` configuration: each setting is a flag, an `IOTHUB_*` environment variable (clap reads
//! both) and a key of an optional TOML file; a flag or variable wins over the file, the file over the
//! default. Values are validated here, once, with errors that name the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The `serve` flags (every one optional, so that the TOML file can supply it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the flags, with '_' for '-').
    #[arg(long, env = "IOTHUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTPS API address [default: 0.0.0.0:8443].
    #[arg(long, env = "IOTHUB_HTTPS", value_name = "ADDR:PORT")]
    pub https: Option<SocketAddr>,
    /// MQTT/TLS address for devices [default: 0.0.0.0:8883].
    #[arg(long, env = "IOTHUB_MQTT", value_name = "ADDR:PORT")]
    pub mqtt: Option<SocketAddr>,
    /// A host name clients use for the hub (repeatable): added to the server certificate and used
    /// in the connection string (the first one).
    #[arg(
        long = "hostname",
        env = "IOTHUB_HOSTNAME",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub hostnames: Vec<String>,
    /// The hub's name [default: iothub].
    #[arg(long, env = "IOTHUB_NAME")]
    pub name: Option<String>,
    /// Lifetime of a verification code: seconds, or a number with s, m or h [default: 1h].
    #[arg(long, env = "IOTHUB_CODE_LIFETIME", value_name = "DURATION")]
    pub code_lifetime: Option<String>,
    /// Maximum number of CA certificates [default: 10000].
    #[arg(long, env = "IOTHUB_CA_LIMIT")]
    pub ca_limit: Option<u64>,
    /// Most entries a CA's uploaded CRL may have [default: 100000].
    #[arg(long, env = "IOTHUB_MAX_CRL_ENTRIES")]
    pub max_crl_entries: Option<usize>,
    /// Honour isVerified=true on upload (skips proof of possession) [default: false].
    #[arg(long, env = "IOTHUB_ALLOW_VERIFY_ON_UPLOAD", num_args = 0..=1, default_missing_value = "true")]
    pub allow_verify_on_upload: Option<bool>,
    /// Largest HTTPS request body, in bytes [default: 262144].
    #[arg(long, env = "IOTHUB_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Largest certificate input, in bytes [default: 65536].
    #[arg(long, env = "IOTHUB_MAX_CERTIFICATE_BYTES")]
    pub max_certificate_bytes: Option<usize>,
    /// Most HTTPS connections served at once, 1 to 10000000 [default: 1024].
    #[arg(long, env = "IOTHUB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most device (MQTT) connections served at once, 1 to 10000000 [default: 10000].
    #[arg(long, env = "IOTHUB_MAX_DEVICE_CONNECTIONS")]
    pub max_device_connections: Option<usize>,
    /// Largest device-to-cloud message payload, in bytes [default: 262144].
    #[arg(long, env = "IOTHUB_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Maximum number of devices [default: 1000000].
    #[arg(long, env = "IOTHUB_DEVICE_LIMIT")]
    pub device_limit: Option<u64>,
    /// Cloud-to-device messages queued per device at most [default: 50].
    #[arg(long, env = "IOTHUB_C2D_MAX_PENDING")]
    pub c2d_max_pending: Option<u32>,
    /// How long a batch of cloud-to-device feedback stays locked for the client that received
    /// it, 5s to 300s [default: 60s].
    #[arg(long, env = "IOTHUB_C2D_FEEDBACK_LOCK", value_name = "DURATION")]
    pub c2d_feedback_lock: Option<String>,
    /// How long a feedback record waits to be received before it is dropped, 1m to 48h
    /// [default: 1h].
    #[arg(long, env = "IOTHUB_C2D_FEEDBACK_TTL", value_name = "DURATION")]
    pub c2d_feedback_ttl: Option<String>,
    /// How many times one feedback record may be received (and abandoned or left to its lock)
    /// before it is dropped, 1 to 100 [default: 10].
    #[arg(long, env = "IOTHUB_C2D_FEEDBACK_MAX_DELIVERIES")]
    pub c2d_feedback_max_deliveries: Option<u32>,
    /// Feedback records in one received batch at most, 1 to 1000 [default: 100].
    #[arg(long, env = "IOTHUB_C2D_FEEDBACK_BATCH")]
    pub c2d_feedback_batch: Option<u32>,
    /// Failed authentications per client address per minute before it is refused with 429
    /// [default: 300].
    #[arg(long, env = "IOTHUB_AUTH_FAILURE_LIMIT")]
    pub auth_failure_limit: Option<u32>,
    /// Refused device (MQTT) connections per client address per minute; past it, that address's
    /// connections are closed unjudged until the minute ends. 0 to 1000000; 0 never closes
    /// them (refusal logging and record writes stay limited) [default: 60].
    #[arg(long, env = "IOTHUB_MQTT_REFUSAL_LIMIT")]
    pub mqtt_refusal_limit: Option<u32>,
    /// Time allowed for a TLS handshake, and then for the first request or CONNECT [default: 10s].
    #[arg(long, env = "IOTHUB_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// The most certificates a device may present in its chain [default: 8].
    #[arg(long, env = "IOTHUB_MAX_CHAIN_LENGTH")]
    pub max_chain_length: Option<usize>,
    /// Cloud-to-device messages in flight (unacknowledged) per device [default: 10].
    #[arg(long, env = "IOTHUB_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// QoS 1 messages from one device being stored at once: their PUBACKs wait for the commit,
    /// and the device's next messages are read meanwhile; beyond this the hub stops reading from
    /// the device until the oldest is stored [default: 64].
    #[arg(long, env = "IOTHUB_MAX_UNACKED_TELEMETRY")]
    pub max_unacked_telemetry: Option<usize>,
    /// The longest MQTT keep-alive a device gets, in seconds, 1 to 65535: a CONNECT asking more
    /// is held to this, and a device silent for 1.5 times its keep-alive is closed [default:
    /// 1177, Azure's].
    #[arg(long, env = "IOTHUB_MAX_KEEP_ALIVE", value_name = "SECONDS")]
    pub max_keep_alive: Option<u32>,
    /// Validated device chains remembered until trust changes, so a reconnecting device skips
    /// the signature checks; 0 validates every chain in full at every CONNECT [default: 100000].
    #[arg(long, env = "IOTHUB_CHAIN_CACHE_ENTRIES")]
    pub chain_cache_entries: Option<usize>,
    /// Devices whose status and authentication are kept in memory (forgotten on every change to
    /// the device), so a CONNECT reads no database; 0 reads the store at every CONNECT
    /// [default: 100000].
    #[arg(long, env = "IOTHUB_DEVICE_CACHE_ENTRIES")]
    pub device_cache_entries: Option<usize>,
    /// The provisioning service's ID scope, 1 to 64 letters and digits [default: one generated
    /// when first needed and kept in the store].
    #[arg(long, env = "IOTHUB_ID_SCOPE")]
    pub id_scope: Option<String>,
    /// How long a provisioning client may stay connected [default: 60s].
    #[arg(long, env = "IOTHUB_PROVISIONING_TIMEOUT", value_name = "DURATION")]
    pub provisioning_timeout: Option<String>,
    /// Requests (register and status polls) one provisioning connection may make, 1 to 1000
    /// [default: 16].
    #[arg(long, env = "IOTHUB_PROVISIONING_REQUESTS")]
    pub provisioning_requests: Option<u32>,
    /// How long a portal login link stays usable [default: 15m].
    #[arg(long, env = "IOTHUB_PORTAL_LINK_LIFETIME", value_name = "DURATION")]
    pub portal_link_lifetime: Option<String>,
    /// How long device-to-cloud messages are kept: seconds, or with s, m, h or d [default: 7d].
    #[arg(long, env = "IOTHUB_TELEMETRY_RETENTION", value_name = "DURATION")]
    pub telemetry_retention: Option<String>,
    /// Plain-HTTP address of /metrics, /healthz and /readyz, or `off` [default: the HTTPS
    /// address's host, port 9883].
    #[arg(long, env = "IOTHUB_METRICS", value_name = "ADDR:PORT|off")]
    pub metrics: Option<String>,
    /// Log lines on stderr: `text`, or `json` (one object per line) [default: text].
    #[arg(long, env = "IOTHUB_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
    /// Where the hub keeps its state: `sqlite` (DATA/iothub.db), or a PostgreSQL URL shared by
    /// the nodes of a cluster, e.g. postgres://iothub@db:5432/iothub (a password is better in
    /// PGPASSWORD than in the URL) [default: sqlite].
    #[arg(long, env = "IOTHUB_STORE", value_name = "sqlite|postgres://...")]
    pub store: Option<String>,
    /// This node's name among the nodes sharing a store: 1 to 64 letters, digits, '-', '.'
    /// or '_' [default: the system host name].
    #[arg(long, env = "IOTHUB_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// The server certificate (PEM, leaf first, then intermediates) to present on HTTPS and
    /// MQTT instead of one from the hub's own CA, e.g. for a load balancer's name; with --tls-key.
    #[arg(long, env = "IOTHUB_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "IOTHUB_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Partitions of the telemetry log, 1 to 32: a device's messages always go to the one its
    /// id hashes to. Fixed when the hub is created; later starts may only repeat it [default: 4].
    #[arg(long, env = "IOTHUB_PARTITIONS")]
    pub partitions: Option<u32>,
    /// AMQP 1.0 over TLS address (the service SDK's cloud-to-device sends, Event Hubs readers),
    /// or `off` [default: the HTTPS address's host, port 5671].
    #[arg(long, env = "IOTHUB_AMQP", value_name = "ADDR:PORT|off")]
    pub amqp: Option<String>,
    /// AMQP connections served at once [default: 1000].
    #[arg(long, env = "IOTHUB_AMQP_MAX_CONNECTIONS")]
    pub amqp_max_connections: Option<usize>,
    /// Sessions one AMQP connection may begin, 1 to 256 [default: 8].
    #[arg(long, env = "IOTHUB_AMQP_MAX_SESSIONS")]
    pub amqp_max_sessions: Option<u16>,
    /// Links one AMQP connection may attach, 1 to 10000 [default: 64].
    #[arg(long, env = "IOTHUB_AMQP_MAX_LINKS")]
    pub amqp_max_links: Option<usize>,
    /// Largest AMQP frame, 512 to 1048576 bytes [default: 65536].
    #[arg(long, env = "IOTHUB_AMQP_MAX_FRAME_BYTES")]
    pub amqp_max_frame_bytes: Option<u32>,
    /// Tokens one AMQP connection may have refused before the hub closes it, 1 to 1000
    /// [default: 10].
    #[arg(long, env = "IOTHUB_AMQP_TOKEN_REFUSALS")]
    pub amqp_token_refusals: Option<u32>,
    /// Messages an AMQP client may send before the hub settles them, 1 to 200 (the AMQP
    /// library's own first grant) [default: 100].
    #[arg(long, env = "IOTHUB_AMQP_CREDIT")]
    pub amqp_credit: Option<u32>,
    /// Consumer groups of the Event Hubs-compatible endpoint besides $Default, 1 to 1000
    /// [default: 20].
    #[arg(long, env = "IOTHUB_CONSUMER_GROUP_LIMIT")]
    pub consumer_group_limit: Option<u64>,
    /// Event Hubs readers without an owner level that may share one partition of one consumer
    /// group, 1 to 100 [default: 5].
    #[arg(long, env = "IOTHUB_READERS_PER_PARTITION")]
    pub readers_per_partition: Option<usize>,
    /// How long an AMQP connection may stay without a valid token [default: 30s].
    #[arg(long, env = "IOTHUB_AMQP_AUTH_TIMEOUT", value_name = "DURATION")]
    pub amqp_auth_timeout: Option<String>,
}

/// The TOML file: the same settings, all optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    https: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    hostnames: Option<Vec<String>>,
    name: Option<String>,
    code_lifetime: Option<toml::Value>,
    ca_limit: Option<u64>,
    max_crl_entries: Option<usize>,
    allow_verify_on_upload: Option<bool>,
    max_request_bytes: Option<usize>,
    max_certificate_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_device_connections: Option<usize>,
    max_message_bytes: Option<usize>,
    device_limit: Option<u64>,
    c2d_max_pending: Option<u32>,
    c2d_feedback_lock: Option<String>,
    c2d_feedback_ttl: Option<String>,
    c2d_feedback_max_deliveries: Option<u32>,
    c2d_feedback_batch: Option<u32>,
    telemetry_retention: Option<toml::Value>,
    portal_link_lifetime: Option<String>,
    auth_failure_limit: Option<u32>,
    mqtt_refusal_limit: Option<u32>,
    handshake_timeout: Option<String>,
    max_chain_length: Option<usize>,
    max_inflight: Option<usize>,
    max_unacked_telemetry: Option<usize>,
    max_keep_alive: Option<u32>,
    chain_cache_entries: Option<usize>,
    device_cache_entries: Option<usize>,
    id_scope: Option<String>,
    provisioning_timeout: Option<String>,
    provisioning_requests: Option<u32>,
    metrics: Option<String>,
    log_format: Option<String>,
    store: Option<String>,
    node_id: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    partitions: Option<u32>,
    amqp: Option<String>,
    amqp_max_connections: Option<usize>,
    amqp_max_sessions: Option<u16>,
    amqp_max_links: Option<usize>,
    amqp_max_frame_bytes: Option<u32>,
    amqp_credit: Option<u32>,
    amqp_token_refusals: Option<u32>,
    amqp_auth_timeout: Option<String>,
    consumer_group_limit: Option<u64>,
    readers_per_partition: Option<usize>,
}

/// Where the hub keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite in the data directory (`iothub.db`): one node.
    Sqlite,
    /// A PostgreSQL database, which several nodes may share (the URL as given).
    Postgres(String),
}

/// Never prints a URL's password.
impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite => f.write_str("Sqlite"),
            StoreLocation::Postgres(url) => write!(f, "Postgres({})", without_password(url)),
        }
    }
}

/// `url` with any password (in the user part, or a `password=` parameter) replaced by `***`,
/// for messages and logs.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        _ => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `--store`: `sqlite`, or a `postgres://` / `postgresql://` URL.
fn store_location(text: Option<&str>) -> Result<StoreLocation> {
    match text.map(str::trim) {
        None | Some("sqlite") => Ok(StoreLocation::Sqlite),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(StoreLocation::Postgres(url.to_string()))
        }
        Some(other) => bail!(
            "--store is '{}'; expected sqlite or a PostgreSQL URL (postgres://user@host:5432/db)",
            without_password(other)
        ),
    }
}

/// `--node-id`, or the system host name (or `node` without one); the name goes into the store's
/// records of which node did what, so it is checked like a CA name.
fn node_id(text: Option<&str>) -> Result<String> {
    let name = match text {
        Some(t) => t.trim().to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| iothub_pki::pop::validate_ca_name(h).is_ok())
            .unwrap_or_else(|| "node".into()),
    };
    if iothub_pki::pop::validate_ca_name(&name).is_err() {
        bail!("--node-id '{name}' is invalid: expected 1 to 64 letters, digits, '-', '.' or '_'");
    }
    Ok(name)
}

/// `--tls-cert` and `--tls-key`: both or neither.
/// Where the state is, which node this is, and the TLS identity files to serve with.
type Placement = (StoreLocation, String, Option<(PathBuf, PathBuf)>);

fn placement(args: &ServeArgs, file: &FileConfig) -> Result<Placement> {
    Ok((
        store_location(args.store.as_deref().or(file.store.as_deref()))?,
        node_id(args.node_id.as_deref().or(file.node_id.as_deref()))?,
        tls_files(
            args.tls_cert.clone().or(file.tls_cert.clone()),
            args.tls_key.clone().or(file.tls_key.clone()),
        )?,
    ))
}

fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate it belongs to)"),
    }
}

/// The resolved configuration of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub https: SocketAddr,
    pub mqtt: SocketAddr,
    pub hostnames: Vec<String>,
    pub name: String,
    pub code_lifetime_secs: i64,
    pub ca_limit: u64,
    pub max_crl_entries: usize,
    pub allow_verify_on_upload: bool,
    pub max_request_bytes: usize,
    pub max_certificate_bytes: usize,
    pub max_connections: usize,
    pub max_device_connections: usize,
    pub max_message_bytes: usize,
    pub device_limit: u64,
    pub c2d_max_pending: u32,
    pub c2d_feedback: FeedbackSettings,
    pub telemetry_retention_secs: i64,
    pub portal_link_lifetime_secs: i64,
    pub auth_failure_limit: u32,
    pub mqtt_refusal_limit: u32,
    pub handshake_timeout_secs: i64,
    pub max_chain_length: usize,
    pub max_inflight: usize,
    pub max_unacked_telemetry: usize,
    pub max_keep_alive: u16,
    pub chain_cache_entries: usize,
    pub device_cache_entries: usize,
    /// `None`: the generated one kept in the store.
    pub id_scope: Option<String>,
    pub provisioning_timeout_secs: i64,
    pub provisioning_requests: u32,
    /// Where /metrics, /healthz and /readyz listen; `None`: off.
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub store: StoreLocation,
    pub node_id: String,
    /// The operator's own server certificate and key (`--tls-cert`, `--tls-key`).
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// `--partitions` as given (None: the hub's own, or 4 for a new hub).
    pub partitions: Option<u32>,
    /// Where AMQP listens; `None`: off.
    pub amqp: Option<SocketAddr>,
    pub amqp_limits: iothub_amqp::AmqpLimits,
    pub consumer_group_limit: u64,
    pub readers_per_partition: usize,
}

/// The AMQP port when only the HTTPS address is configured: AMQP over TLS's well-known port, on
/// the HTTPS host, so that several nodes on one machine (each on its own address) do not collide.
pub const DEFAULT_AMQP_PORT: u16 = 5671;

/// `--amqp`: `off`, or an address; absent, the HTTPS listener's host with port 5671 (with any
/// free port when HTTPS asks for one, port 0: several such hubs share one address).
fn amqp_addr(text: Option<&str>, https: SocketAddr) -> Result<Option<SocketAddr>> {
    match text.map(str::trim) {
        None if https.port() == 0 => Ok(Some(https)),
        None => Ok(Some(SocketAddr::new(https.ip(), DEFAULT_AMQP_PORT))),
        Some(t) if t.eq_ignore_ascii_case("off") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("--amqp is '{t}'; expected ADDR:PORT (e.g. 0.0.0.0:5671) or off")
        }),
    }
}

/// The AMQP endpoint's limits, each checked against its range.
fn amqp_limits(
    args: &ServeArgs,
    file: &FileConfig,
    handshake_secs: i64,
) -> Result<iothub_amqp::AmqpLimits> {
    let defaults = iothub_amqp::AmqpLimits::default();
    let limits = iothub_amqp::AmqpLimits {
        max_connections: pick(
            args.amqp_max_connections,
            file.amqp_max_connections,
            defaults.max_connections,
        ),
        max_sessions: pick(
            args.amqp_max_sessions,
            file.amqp_max_sessions,
            defaults.max_sessions,
        ),
        max_links: pick(args.amqp_max_links, file.amqp_max_links, defaults.max_links),
        max_frame_bytes: pick(
            args.amqp_max_frame_bytes,
            file.amqp_max_frame_bytes,
            defaults.max_frame_bytes,
        ),
        receive_credit: pick(args.amqp_credit, file.amqp_credit, defaults.receive_credit),
        max_token_refusals: pick(
            args.amqp_token_refusals,
            file.amqp_token_refusals,
            defaults.max_token_refusals,
        ),
        auth_timeout: std::time::Duration::from_secs(text_duration(
            args.amqp_auth_timeout.as_ref(),
            file.amqp_auth_timeout.as_ref(),
            3600,
            defaults.auth_timeout.as_secs() as i64,
            "--amqp-auth-timeout",
        )? as u64),
        handshake_timeout: std::time::Duration::from_secs(handshake_secs as u64),
        ..defaults
    };
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&limits.max_connections) {
        bail!(
            "--amqp-max-connections is {}; expected 1 to {MAX_CONNECTIONS_LIMIT}",
            limits.max_connections
        );
    }
    if !(1..=256).contains(&limits.max_sessions) {
        bail!(
            "--amqp-max-sessions is {}; expected 1 to 256",
            limits.max_sessions
        );
    }
    if !(1..=10_000).contains(&limits.max_links) {
        bail!(
            "--amqp-max-links is {}; expected 1 to 10000",
            limits.max_links
        );
    }
    if !(512..=1024 * 1024).contains(&limits.max_frame_bytes) {
        bail!(
            "--amqp-max-frame-bytes is {}; expected 512 to 1048576",
            limits.max_frame_bytes
        );
    }
    // fe2o3's acceptor grants 200 with the attach before our own flow can set the credit, so a
    // larger credit would be a limit in name only (docs/decisions.md).
    if !(1..=200).contains(&limits.receive_credit) {
        bail!(
            "--amqp-credit is {}; expected 1 to 200",
            limits.receive_credit
        );
    }
    if !(1..=1000).contains(&limits.max_token_refusals) {
        bail!(
            "--amqp-token-refusals is {}; expected 1 to 1000",
            limits.max_token_refusals
        );
    }
    Ok(limits)
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The metrics port when only the HTTPS address is configured: next to the well-known ports
/// (8443, 8883) so a firewall rule can name all three.
pub const DEFAULT_METRICS_PORT: u16 = 9883;

/// `--metrics`: `off`, or an address; absent, the HTTPS listener's host with port 9883.
fn metrics_addr(text: Option<&str>, https: SocketAddr) -> Result<Option<SocketAddr>> {
    match text.map(str::trim) {
        None => Ok(Some(SocketAddr::new(https.ip(), DEFAULT_METRICS_PORT))),
        Some(t) if t.eq_ignore_ascii_case("off") => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("--metrics is '{t}'; expected ADDR:PORT (e.g. 127.0.0.1:9883) or off")
        }),
    }
}

fn log_format(text: Option<&str>) -> Result<LogFormat> {
    match text.map(str::trim) {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => bail!("--log-format is '{other}'; expected text or json"),
    }
}

/// Parses `3600`, `90s`, `30m`, `1h` into seconds (1 second to 30 days).
pub fn parse_duration(text: &str) -> Result<i64> {
    parse_duration_max(text, 30 * 24 * 3600)
}

/// Parses how long telemetry is kept: up to ten years, so days are allowed too.
fn parse_retention(text: &str) -> Result<i64> {
    parse_duration_max(text, 3650 * 86400)
}

/// Parses a duration with units s, m, h or d, from 1 second to `max` seconds.
pub fn parse_duration_max(text: &str, max: i64) -> Result<i64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let n: i64 = number
        .trim()
        .parse()
        .with_context(|| format!("'{text}' is not a duration; expected seconds or a number with s, m or h (e.g. 3600, 90s, 30m, 1h)"))?;
    let secs = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        'd' if max > 30 * 24 * 3600 => n.saturating_mul(86400),
        other => bail!("'{text}' has the unit '{other}'; expected s, m or h"),
    };
    if !(1..=max).contains(&secs) {
        bail!(
            "'{text}' is {secs} seconds; expected 1 second to {} days",
            max / 86400
        );
    }
    Ok(secs)
}

/// The precedence rule of every setting, written once: the flag (clap has already put its
/// `IOTHUB_*` variable there when the flag is absent) over the file over the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// A duration the file may give as a number of seconds or as text (`code_lifetime`,
/// `telemetry_retention`); errors name the flag, or the file's key when the value came from there.
struct FileDuration {
    flag: &'static str,
    key: &'static str,
    parse: fn(&str) -> Result<i64>,
    default_secs: i64,
    /// How the file's value should look, for the error about a value of the wrong type.
    expected: &'static str,
}

impl FileDuration {
    fn resolve(&self, flag: Option<&str>, file: Option<&toml::Value>) -> Result<i64> {
        let parse = self.parse;
        match (flag, file) {
            (Some(flag), _) => parse(flag).context(self.flag),
            (None, Some(toml::Value::Integer(n))) => parse(&n.to_string()).context(self.key),
            (None, Some(toml::Value::String(s))) => parse(s).context(self.key),
            (None, Some(other)) => bail!(
                "{} in the configuration file is {other:?}; expected {}",
                self.key,
                self.expected
            ),
            (None, None) => Ok(self.default_secs),
        }
    }
}

const CODE_LIFETIME: FileDuration = FileDuration {
    flag: "--code-lifetime",
    key: "code_lifetime",
    parse: parse_duration,
    default_secs: iothub_pki::pop::DEFAULT_CODE_LIFETIME_SECS,
    expected: "a number of seconds or a string such as \"1h\"",
};

const TELEMETRY_RETENTION: FileDuration = FileDuration {
    flag: "--telemetry-retention",
    key: "telemetry_retention",
    parse: parse_retention,
    default_secs: 7 * 86400,
    expected: "seconds or a string such as \"7d\"",
};

/// A duration given as text by the flag or the file alike; errors name the flag.
fn text_duration(
    flag: Option<&String>,
    file: Option<&String>,
    max_secs: i64,
    default_secs: i64,
    name: &'static str,
) -> Result<i64> {
    match flag.or(file) {
        Some(text) => parse_duration_max(text, max_secs).context(name),
        None => Ok(default_secs),
    }
}

impl FileConfig {
    /// The `--config` file, or no settings at all without one.
    fn read(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        toml::from_str::<FileConfig>(&text)
            .with_context(|| format!("the configuration file {} is invalid", path.display()))
    }
}

/// The names clients use for the hub: each must be a host name or an IP address, since it goes
/// into the server certificate and the connection string.
fn hostnames(args: &ServeArgs, file: &FileConfig) -> Result<Vec<String>> {
    let hostnames = if !args.hostnames.is_empty() {
        args.hostnames.clone()
    } else {
        file.hostnames.clone().unwrap_or_default()
    };
    for h in &hostnames {
        if h.is_empty()
            || h.len() > 253
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            bail!("--hostname '{h}' is not a host name or IP address");
        }
    }
    Ok(hostnames)
}

/// The settings that are durations, in seconds.
struct Durations {
    code_lifetime_secs: i64,
    telemetry_retention_secs: i64,
    handshake_timeout_secs: i64,
    portal_link_lifetime_secs: i64,
    provisioning_timeout_secs: i64,
}

impl Durations {
    fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<Durations> {
        Ok(Durations {
            code_lifetime_secs: CODE_LIFETIME
                .resolve(args.code_lifetime.as_deref(), file.code_lifetime.as_ref())?,
            telemetry_retention_secs: TELEMETRY_RETENTION.resolve(
                args.telemetry_retention.as_deref(),
                file.telemetry_retention.as_ref(),
            )?,
            handshake_timeout_secs: text_duration(
                args.handshake_timeout.as_ref(),
                file.handshake_timeout.as_ref(),
                300,
                10,
                "--handshake-timeout",
            )?,
            portal_link_lifetime_secs: text_duration(
                args.portal_link_lifetime.as_ref(),
                file.portal_link_lifetime.as_ref(),
                24 * 3600,
                15 * 60,
                "--portal-link-lifetime",
            )?,
            provisioning_timeout_secs: text_duration(
                args.provisioning_timeout.as_ref(),
                file.provisioning_timeout.as_ref(),
                3600,
                60,
                "--provisioning-timeout",
            )?,
        })
    }
}

/// The feedback queue of cloud-to-device messages (`--c2d-feedback-*`; Azure's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackSettings {
    pub lock_secs: i64,
    pub ttl_secs: i64,
    pub max_deliveries: u32,
    pub batch: u32,
}

impl FeedbackSettings {
    fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<FeedbackSettings> {
        let settings = FeedbackSettings {
            lock_secs: text_duration(
                args.c2d_feedback_lock.as_ref(),
                file.c2d_feedback_lock.as_ref(),
                300,
                60,
                "--c2d-feedback-lock",
            )?,
            ttl_secs: text_duration(
                args.c2d_feedback_ttl.as_ref(),
                file.c2d_feedback_ttl.as_ref(),
                48 * 3600,
                3600,
                "--c2d-feedback-ttl",
            )?,
            max_deliveries: pick(
                args.c2d_feedback_max_deliveries,
                file.c2d_feedback_max_deliveries,
                10,
            ),
            batch: pick(args.c2d_feedback_batch, file.c2d_feedback_batch, 100),
        };
        if settings.lock_secs < 5 {
            bail!(
                "--c2d-feedback-lock is {}s; expected 5s to 300s",
                settings.lock_secs
            );
        }
        if settings.ttl_secs < 60 {
            bail!(
                "--c2d-feedback-ttl is {}s; expected 1m to 48h",
                settings.ttl_secs
            );
        }
        if !(1..=100).contains(&settings.max_deliveries) {
            bail!(
                "--c2d-feedback-max-deliveries is {}; expected 1 to 100",
                settings.max_deliveries
            );
        }
        if !(1..=1000).contains(&settings.batch) {
            bail!(
                "--c2d-feedback-batch is {}; expected 1 to 1000",
                settings.batch
            );
        }
        Ok(settings)
    }
}

/// MQTT's keep-alive is a 16-bit number of seconds; 0 would mean "never time out".
fn keep_alive(secs: u32) -> Result<u16> {
    match u16::try_from(secs) {
        Ok(secs) if secs >= 1 => Ok(secs),
        _ => bail!("--max-keep-alive is {secs}; expected 1 to 65535 seconds"),
    }
}

/// Where the HTTPS API listens unless told otherwise: every address, port 8443.
const DEFAULT_HTTPS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    8443,
));

impl ServeConfig {
    /// Merges flags/environment, the TOML file and defaults, then checks every value.
    pub fn resolve(data_flag: Option<&Path>, args: &ServeArgs) -> Result<ServeConfig> {
        let file = FileConfig::read(args.config.as_deref())?;
        let durations = Durations::resolve(args, &file)?;
        let hostnames = hostnames(args, &file)?;
        let max_keep_alive = keep_alive(pick(args.max_keep_alive, file.max_keep_alive, 1177))?;
        let https = pick(args.https, file.https, DEFAULT_HTTPS);
        let metrics = metrics_addr(args.metrics.as_deref().or(file.metrics.as_deref()), https)?;
        let log_format = log_format(args.log_format.as_deref().or(file.log_format.as_deref()))?;
        let (store, node_id, tls_files) = placement(args, &file)?;
        let amqp = amqp_addr(args.amqp.as_deref().or(file.amqp.as_deref()), https)?;
        let amqp_limits = amqp_limits(args, &file, durations.handshake_timeout_secs)?;
        let c2d_feedback = FeedbackSettings::resolve(args, &file)?;
        let config = ServeConfig {
            // Listeners and the hub's identity.
            data: pick(data_flag.map(Path::to_path_buf), file.data, "./data".into()),
            https,
            mqtt: pick(args.mqtt, file.mqtt, SocketAddr::from(([0, 0, 0, 0], 8883))),
            hostnames,
            name: pick(args.name.clone(), file.name, "iothub".into()),
            // Certificates and proof of possession.
            code_lifetime_secs: durations.code_lifetime_secs,
            ca_limit: pick(
                args.ca_limit,
                file.ca_limit,
                iothub_pki::pop::DEFAULT_CA_LIMIT,
            ),
            max_crl_entries: pick(
                args.max_crl_entries,
                file.max_crl_entries,
                iothub_hub::DEFAULT_MAX_CRL_ENTRIES,
            ),
            allow_verify_on_upload: pick(
                args.allow_verify_on_upload,
                file.allow_verify_on_upload,
                false,
            ),
            max_certificate_bytes: pick(
                args.max_certificate_bytes,
                file.max_certificate_bytes,
                iothub_pki::DEFAULT_MAX_CERTIFICATE_BYTES,
            ),
            max_chain_length: pick(args.max_chain_length, file.max_chain_length, 8),
            chain_cache_entries: pick(args.chain_cache_entries, file.chain_cache_entries, 100_000),
            // Connections and requests.
            max_request_bytes: pick(args.max_request_bytes, file.max_request_bytes, 256 * 1024),
            max_connections: pick(args.max_connections, file.max_connections, 1024),
            max_device_connections: pick(
                args.max_device_connections,
                file.max_device_connections,
                10_000,
            ),
            max_message_bytes: pick(args.max_message_bytes, file.max_message_bytes, 256 * 1024),
            auth_failure_limit: pick(args.auth_failure_limit, file.auth_failure_limit, 300),
            mqtt_refusal_limit: pick(
                args.mqtt_refusal_limit,
                file.mqtt_refusal_limit,
                iothub_hub::DEFAULT_MQTT_REFUSAL_LIMIT,
            ),
            handshake_timeout_secs: durations.handshake_timeout_secs,
            max_inflight: pick(args.max_inflight, file.max_inflight, 10),
            max_unacked_telemetry: pick(args.max_unacked_telemetry, file.max_unacked_telemetry, 64),
            max_keep_alive,
            // Devices and their messages.
            device_limit: pick(args.device_limit, file.device_limit, 1_000_000),
            c2d_max_pending: pick(args.c2d_max_pending, file.c2d_max_pending, 50),
            c2d_feedback,
            telemetry_retention_secs: durations.telemetry_retention_secs,
            device_cache_entries: pick(
                args.device_cache_entries,
                file.device_cache_entries,
                100_000,
            ),
            // Provisioning.
            id_scope: args.id_scope.clone().or(file.id_scope.clone()),
            provisioning_timeout_secs: durations.provisioning_timeout_secs,
            provisioning_requests: pick(args.provisioning_requests, file.provisioning_requests, 16),
            // The portal; watching it.
            portal_link_lifetime_secs: durations.portal_link_lifetime_secs,
            metrics,
            log_format,
            // Where the state is, and which node this is.
            store,
            node_id,
            tls_files,
            partitions: args.partitions.or(file.partitions),
            // AMQP.
            amqp,
            amqp_limits,
            consumer_group_limit: pick(args.consumer_group_limit, file.consumer_group_limit, 20),
            readers_per_partition: pick(args.readers_per_partition, file.readers_per_partition, 5),
        };
        config.check()?;
        Ok(config)
    }

    /// Every check of a merged configuration, each refusal naming the setting it refuses.
    fn check(&self) -> Result<()> {
        self.check_certificate_limits()?;
        self.check_connection_limits()?;
        self.check_device_limits()?;
        self.check_provisioning()?;
        self.check_name()
    }

    fn check_certificate_limits(&self) -> Result<()> {
        if self.ca_limit == 0 {
            bail!("--ca-limit must be at least 1");
        }
        if !(1..=10_000_000).contains(&self.max_crl_entries) {
            bail!(
                "--max-crl-entries is {}; expected 1 to 10000000",
                self.max_crl_entries
            );
        }
        if self.max_certificate_bytes < 1024 || self.max_certificate_bytes > 16 * 1024 * 1024 {
            bail!(
                "--max-certificate-bytes is {}; expected 1024 to 16777216",
                self.max_certificate_bytes
            );
        }
        // A certificate arrives inside a request body.
        if self.max_request_bytes < self.max_certificate_bytes {
            bail!(
                "--max-request-bytes ({}) must be at least --max-certificate-bytes ({})",
                self.max_request_bytes,
                self.max_certificate_bytes
            );
        }
        Ok(())
    }

    fn check_provisioning(&self) -> Result<()> {
        if !(1..=100).contains(&self.readers_per_partition) {
            bail!(
                "--readers-per-partition is {}; expected 1 to 100",
                self.readers_per_partition
            );
        }
        if !(1..=1000).contains(&self.consumer_group_limit) {
            bail!(
                "--consumer-group-limit is {}; expected 1 to 1000",
                self.consumer_group_limit
            );
        }
        if let Some(scope) = &self.id_scope {
            iothub_hub::enrollments::validate_id_scope(scope)
                .map_err(|e| anyhow::anyhow!("--id-scope: {e}"))?;
        }
        if !(1..=1000).contains(&self.provisioning_requests) {
            bail!(
                "--provisioning-requests is {}; expected 1 to 1000",
                self.provisioning_requests
            );
        }
        Ok(())
    }

    fn check_connection_limits(&self) -> Result<()> {
        // Upper bounds: a connection needs a file descriptor, so far more than a million is a
        // typo; and the connection semaphores cannot count past u32 permits.
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            bail!(
                "--max-connections is {}; expected 1 to {MAX_CONNECTIONS_LIMIT}",
                self.max_connections
            );
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_device_connections) {
            bail!(
                "--max-device-connections is {}; expected 1 to {MAX_CONNECTIONS_LIMIT}",
                self.max_device_connections
            );
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            bail!(
                "--max-message-bytes is {}; expected 1 to 16777216",
                self.max_message_bytes
            );
        }
        if self.auth_failure_limit == 0 {
            bail!("--auth-failure-limit must be at least 1");
        }
        if self.mqtt_refusal_limit > MAX_REFUSAL_LIMIT {
            bail!(
                "--mqtt-refusal-limit is {}; expected 0 (never close) to {MAX_REFUSAL_LIMIT}",
                self.mqtt_refusal_limit
            );
        }
        Ok(())
    }

    fn check_device_limits(&self) -> Result<()> {
        if let Some(n) = self.partitions {
            if !(1..=MAX_PARTITIONS).contains(&n) {
                bail!("--partitions is {n}; expected 1 to {MAX_PARTITIONS}");
            }
        }
        if !(1..=32).contains(&self.max_chain_length) {
            bail!(
                "--max-chain-length is {}; expected 1 to 32",
                self.max_chain_length
            );
        }
        if !(1..=1000).contains(&self.max_inflight) {
            bail!(
                "--max-inflight is {}; expected 1 to 1000",
                self.max_inflight
            );
        }
        if !(1..=10_000).contains(&self.max_unacked_telemetry) {
            bail!(
                "--max-unacked-telemetry is {}; expected 1 to 10000",
                self.max_unacked_telemetry
            );
        }
        if self.chain_cache_entries > 10_000_000 {
            bail!(
                "--chain-cache-entries is {}; expected 0 to 10000000",
                self.chain_cache_entries
            );
        }
        if self.device_cache_entries > 10_000_000 {
            bail!(
                "--device-cache-entries is {}; expected 0 to 10000000",
                self.device_cache_entries
            );
        }
        if self.device_limit == 0 {
            bail!("--device-limit must be at least 1");
        }
        if !(1..=10_000).contains(&self.c2d_max_pending) {
            bail!(
                "--c2d-max-pending is {}; expected 1 to 10000",
                self.c2d_max_pending
            );
        }

        Ok(())
    }

    /// The hub's name is used as a resource name (ARM routes), so it follows the same rule as
    /// certificate names.
    fn check_name(&self) -> Result<()> {
        if iothub_pki::pop::validate_ca_name(&self.name).is_err() {
            bail!(
                "--name '{}' is invalid: expected 1 to 64 letters, digits, '-', '.' or '_'",
                self.name
            );
        }
        Ok(())
    }
}

/// The largest `--mqtt-refusal-limit`: beyond a million refusals a minute from one address the
/// limit protects nothing (use 0 to turn it off).
const MAX_REFUSAL_LIMIT: u32 = 1_000_000;

/// Most partitions of the telemetry log (Azure's largest hubs have 32).
pub const MAX_PARTITIONS: u32 = 32;

/// Most HTTPS or device connections that may be configured.
const MAX_CONNECTIONS_LIMIT: usize = 10_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_is_shown_without_its_password() {
        for (url, shown) in [
            (
                "postgres://iothub:s3cret@db:5432/iothub",
                "postgres://iothub:***@db:5432/iothub",
            ),
            ("postgres://iothub@db/iothub", "postgres://iothub@db/iothub"),
            ("postgresql://a:b:c@h", "postgresql://a:***@h"),
            (
                "postgres://db/x?sslmode=require&password=pw",
                "postgres://db/x?sslmode=require&password=***",
            ),
            ("sqlite", "sqlite"),
        ] {
            assert_eq!(without_password(url), shown);
        }
        let location = store_location(Some("postgres://u:pw@h/d")).unwrap();
        assert_eq!(format!("{location:?}"), "Postgres(postgres://u:***@h/d)");
    }

    /// A configuration that must be accepted.
    fn resolved(args: ServeArgs) -> ServeConfig {
        ServeConfig::resolve(None, &args).unwrap()
    }

    /// The error text of a configuration that must be refused.
    fn refusal(args: ServeArgs) -> String {
        format!("{:#}", ServeConfig::resolve(None, &args).unwrap_err())
    }

    #[test]
    fn metrics_and_log_format() {
        // Default: the HTTPS host, port 9883; text logs.
        let c = resolved(ServeArgs {
            https: Some("127.0.0.1:1443".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(c.metrics, Some("127.0.0.1:9883".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Text);
        let c = resolved(ServeArgs {
            metrics: Some("off".into()),
            log_format: Some("json".into()),
            ..Default::default()
        });
        assert_eq!((c.metrics, c.log_format), (None, LogFormat::Json));
        let c = resolved(ServeArgs {
            metrics: Some("127.0.0.1:0".into()),
            ..Default::default()
        });
        assert_eq!(c.metrics, Some("127.0.0.1:0".parse().unwrap()));
        for bad in ["127.0.0.1:70000", "9883", "localhost:9883", "on", ""] {
            let e = refusal(ServeArgs {
                metrics: Some(bad.into()),
                ..Default::default()
            });
            assert!(e.contains("--metrics"), "{bad}: {e}");
        }
        for bad in ["JSON", "xml", ""] {
            let e = refusal(ServeArgs {
                log_format: Some(bad.into()),
                ..Default::default()
            });
            assert!(e.contains("--log-format"), "{bad}: {e}");
        }
        // The file's keys, below the flags.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iothub.toml");
        std::fs::write(&path, "metrics = \"off\"\nlog_format = \"json\"\n").unwrap();
        let c = resolved(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        });
        assert_eq!((c.metrics, c.log_format), (None, LogFormat::Json));
        let c = resolved(ServeArgs {
            config: Some(path),
            metrics: Some("127.0.0.1:1".into()),
            log_format: Some("text".into()),
            ..Default::default()
        });
        assert_eq!(
            (c.metrics, c.log_format),
            (Some("127.0.0.1:1".parse().unwrap()), LogFormat::Text)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        for bad in ["", "0", "-5", "1d", "abc", "31000000"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iothub.toml");
        std::fs::write(
            &path,
            "ca_limit = 7\ncode_lifetime = \"2m\"\nhostnames = [\"hub.example\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ca_limit: Some(9),
            ..Default::default()
        };
        let c = ServeConfig::resolve(None, &args).unwrap();
        assert_eq!(c.ca_limit, 9);
        assert_eq!(c.code_lifetime_secs, 120);
        assert_eq!(c.hostnames, ["hub.example"]);
        assert_eq!(c.https.port(), 8443);
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let err = ServeConfig::resolve(None, &args).unwrap_err();
        assert!(format!("{err:#}").contains("no_such_key"), "{err:#}");
    }

    #[test]
    fn pipeline_and_chain_cache_limits_are_checked() {
        let c = resolved(ServeArgs::default());
        assert_eq!(
            (c.max_unacked_telemetry, c.chain_cache_entries),
            (64, 100_000)
        );
        for bad in [0, 10_001] {
            let err = refusal(ServeArgs {
                max_unacked_telemetry: Some(bad),
                ..Default::default()
            });
            assert!(err.contains("--max-unacked-telemetry is"), "{err}");
        }
        let err = refusal(ServeArgs {
            chain_cache_entries: Some(10_000_001),
            ..Default::default()
        });
        assert!(err.contains("--chain-cache-entries is"), "{err}");
        let c = resolved(ServeArgs {
            chain_cache_entries: Some(0),
            max_unacked_telemetry: Some(1),
            ..Default::default()
        });
        assert_eq!((c.max_unacked_telemetry, c.chain_cache_entries), (1, 0));
    }

    #[test]
    fn amqp_settings_follow_https_and_are_checked() {
        let c = resolved(ServeArgs {
            https: Some("127.0.0.7:8443".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(c.amqp, Some("127.0.0.7:5671".parse().unwrap()));
        assert_eq!(c.consumer_group_limit, 20);
        let c = resolved(ServeArgs {
            https: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(
            c.amqp,
            Some("127.0.0.1:0".parse().unwrap()),
            "any free port, like HTTPS"
        );
        let c = resolved(ServeArgs {
            amqp: Some("off".into()),
            amqp_auth_timeout: Some("5s".into()),
            amqp_max_links: Some(3),
            ..Default::default()
        });
        assert_eq!(c.amqp, None);
        assert_eq!(c.amqp_limits.auth_timeout.as_secs(), 5);
        assert_eq!(c.amqp_limits.max_links, 3);
        for (args, flag) in [
            (
                ServeArgs {
                    amqp: Some("nowhere".into()),
                    ..Default::default()
                },
                "--amqp is 'nowhere'",
            ),
            (
                ServeArgs {
                    amqp_max_sessions: Some(0),
                    ..Default::default()
                },
                "--amqp-max-sessions is 0",
            ),
            (
                ServeArgs {
                    amqp_max_links: Some(10_001),
                    ..Default::default()
                },
                "--amqp-max-links is 10001",
            ),
            (
                ServeArgs {
                    amqp_max_frame_bytes: Some(511),
                    ..Default::default()
                },
                "--amqp-max-frame-bytes is 511",
            ),
            (
                ServeArgs {
                    amqp_credit: Some(0),
                    ..Default::default()
                },
                "--amqp-credit is 0",
            ),
            (
                ServeArgs {
                    amqp_credit: Some(201),
                    ..Default::default()
                },
                "--amqp-credit is 201; expected 1 to 200",
            ),
            (
                ServeArgs {
                    amqp_token_refusals: Some(0),
                    ..Default::default()
                },
                "--amqp-token-refusals is 0; expected 1 to 1000",
            ),
            (
                ServeArgs {
                    amqp_max_connections: Some(0),
                    ..Default::default()
                },
                "--amqp-max-connections is 0",
            ),
            (
                ServeArgs {
                    amqp_auth_timeout: Some("2h".into()),
                    ..Default::default()
                },
                "--amqp-auth-timeout",
            ),
            (
                ServeArgs {
                    consumer_group_limit: Some(0),
                    ..Default::default()
                },
                "--consumer-group-limit is 0",
            ),
        ] {
            let err = refusal(args);
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn keep_alive_cap_is_checked() {
        assert_eq!(resolved(ServeArgs::default()).max_keep_alive, 1177);
        for bad in [0, 65_536, u32::MAX] {
            let err = refusal(ServeArgs {
                max_keep_alive: Some(bad),
                ..Default::default()
            });
            assert_eq!(
                err,
                format!("--max-keep-alive is {bad}; expected 1 to 65535 seconds")
            );
        }
        for ok in [1, 65_535] {
            let c = resolved(ServeArgs {
                max_keep_alive: Some(ok),
                ..Default::default()
            });
            assert_eq!(u32::from(c.max_keep_alive), ok);
        }
    }

    #[test]
    fn provisioning_settings_are_checked() {
        let c = resolved(ServeArgs::default());
        assert_eq!(
            (
                c.id_scope,
                c.provisioning_timeout_secs,
                c.provisioning_requests
            ),
            (None, 60, 16)
        );
        let err = refusal(ServeArgs {
            id_scope: Some("0ne/1".into()),
            ..Default::default()
        });
        assert!(
            err.contains("--id-scope: the ID scope '0ne/1' is not usable"),
            "{err}"
        );
        let err = refusal(ServeArgs {
            provisioning_requests: Some(0),
            ..Default::default()
        });
        assert!(
            err.contains("--provisioning-requests is 0; expected 1 to 1000"),
            "{err}"
        );
        let err = refusal(ServeArgs {
            provisioning_timeout: Some("2h".into()),
            ..Default::default()
        });
        assert!(err.contains("--provisioning-timeout"), "{err}");
        let c = resolved(ServeArgs {
            id_scope: Some("0ne00ABC123".into()),
            provisioning_timeout: Some("5s".into()),
            provisioning_requests: Some(3),
            ..Default::default()
        });
        assert_eq!(
            (
                c.id_scope.as_deref(),
                c.provisioning_timeout_secs,
                c.provisioning_requests
            ),
            (Some("0ne00ABC123"), 5, 3)
        );
    }

    #[test]
    fn device_cache_limit_is_checked() {
        assert_eq!(resolved(ServeArgs::default()).device_cache_entries, 100_000);
        let err = refusal(ServeArgs {
            device_cache_entries: Some(10_000_001),
            ..Default::default()
        });
        assert!(
            err.contains("--device-cache-entries is 10000001; expected 0 to 10000000"),
            "{err}"
        );
        let off = resolved(ServeArgs {
            device_cache_entries: Some(0),
            ..Default::default()
        });
        assert_eq!(off.device_cache_entries, 0);
    }

    #[test]
    fn c2d_feedback_settings_are_checked() {
        let c = resolved(ServeArgs::default());
        let expected = FeedbackSettings {
            lock_secs: 60,
            ttl_secs: 3600,
            max_deliveries: 10,
            batch: 100,
        };
        assert_eq!(c.c2d_feedback, expected);
        let c = resolved(ServeArgs {
            c2d_feedback_lock: Some("5s".into()),
            c2d_feedback_ttl: Some("48h".into()),
            c2d_feedback_max_deliveries: Some(100),
            c2d_feedback_batch: Some(1),
            ..Default::default()
        });
        let expected = FeedbackSettings {
            lock_secs: 5,
            ttl_secs: 48 * 3600,
            max_deliveries: 100,
            batch: 1,
        };
        assert_eq!(c.c2d_feedback, expected);
        for (args, expected) in [
            (
                ServeArgs {
                    c2d_feedback_lock: Some("4s".into()),
                    ..Default::default()
                },
                "--c2d-feedback-lock is 4s; expected 5s to 300s",
            ),
            (
                ServeArgs {
                    c2d_feedback_lock: Some("301s".into()),
                    ..Default::default()
                },
                "--c2d-feedback-lock",
            ),
            (
                ServeArgs {
                    c2d_feedback_ttl: Some("59s".into()),
                    ..Default::default()
                },
                "--c2d-feedback-ttl is 59s; expected 1m to 48h",
            ),
            (
                ServeArgs {
                    c2d_feedback_ttl: Some("49h".into()),
                    ..Default::default()
                },
                "--c2d-feedback-ttl",
            ),
            (
                ServeArgs {
                    c2d_feedback_max_deliveries: Some(0),
                    ..Default::default()
                },
                "--c2d-feedback-max-deliveries is 0; expected 1 to 100",
            ),
            (
                ServeArgs {
                    c2d_feedback_batch: Some(1001),
                    ..Default::default()
                },
                "--c2d-feedback-batch is 1001; expected 1 to 1000",
            ),
        ] {
            let err = refusal(args);
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn mqtt_refusal_limit_is_checked() {
        assert_eq!(resolved(ServeArgs::default()).mqtt_refusal_limit, 60);
        for ok in [0, 1, 1_000_000] {
            let c = resolved(ServeArgs {
                mqtt_refusal_limit: Some(ok),
                ..Default::default()
            });
            assert_eq!(c.mqtt_refusal_limit, ok);
        }
        for bad in [1_000_001, u32::MAX] {
            let err = refusal(ServeArgs {
                mqtt_refusal_limit: Some(bad),
                ..Default::default()
            });
            assert_eq!(
                err,
                format!("--mqtt-refusal-limit is {bad}; expected 0 (never close) to 1000000")
            );
        }
        // The configuration file key.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iothub.toml");
        std::fs::write(&path, "mqtt_refusal_limit = 7\n").unwrap();
        let c = resolved(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        });
        assert_eq!(c.mqtt_refusal_limit, 7);
        std::fs::write(&path, "mqtt_refusal_limit = 2000000\n").unwrap();
        let err = refusal(ServeArgs {
            config: Some(path),
            ..Default::default()
        });
        assert!(err.contains("--mqtt-refusal-limit is 2000000"), "{err}");
    }

    #[test]
    fn connection_limits_are_checked() {
        for bad in [0, 10_000_001, usize::MAX] {
            let err = refusal(ServeArgs {
                max_device_connections: Some(bad),
                ..Default::default()
            });
            assert!(
                err.contains(&format!(
                    "--max-device-connections is {bad}; expected 1 to 10000000"
                )),
                "{err}"
            );
            let err = refusal(ServeArgs {
                max_connections: Some(bad),
                ..Default::default()
            });
            assert!(err.contains("--max-connections is"), "{err}");
        }
        let c = resolved(ServeArgs {
            max_device_connections: Some(10_000_000),
            ..Default::default()
        });
        assert_eq!(c.max_device_connections, 10_000_000);
    }
}
