//! `iothub serve`: open the store, make sure the hub has its TLS identity and owner credential,
//! bind the HTTPS listener and serve until SIGINT/SIGTERM.
//!
//! First start creates, under the data directory: `iothub.db` (SQLite, unless `--store` names a
//! PostgreSQL database), `tls/ca.pem` + `tls/ca.key` (the hub's own local CA, which clients trust;
//! kept in the store, so that every node sharing it uses the one CA), `tls/server.pem` + `tls/server.key` (re-issued on
//! every start so that its SANs follow the configuration), and `connection-string` (the owner
//! connection string, mode 0600, rewritten on every start with the current host and port). The
//! names are `iothub_client::layout`'s, which the CLI reads too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use iothub_hub::{Hub, HubConfig, SystemClock};
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use iothub_store::{PostgresStore, SqliteStore, Store};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::config::{ServeConfig, StoreLocation};
use crate::files::{create_private_dir, write_atomic};
use iothub_client::layout;

/// Prints a status line to stdout, ignoring failures: the hub must keep serving (and never panic)
/// when nobody reads its stdout any more, as under a supervisor that closed it.
macro_rules! status {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The system's host name, if it has one.
fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Every name the hub answers to: configured names first, then localhost, loopback IPs and the
/// system host name.
pub fn hub_names(config: &ServeConfig) -> Vec<String> {
    let mut names = config.hostnames.clone();
    for n in ["localhost", "127.0.0.1", "::1"] {
        names.push(n.to_string());
    }
    names.extend(system_hostname());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    names
}

/// The names under which the store keeps the hub's TLS CA, so that every node of a cluster
/// issues its server certificate from the one CA its clients trust.
const TLS_CA_CERT_SETTING: &str = "tls.ca.pem";
const TLS_CA_KEY_SETTING: &str = "tls.ca.key";

/// The hub's TLS CA: the store's; on the first start of a hub, this data directory's (a hub from
/// before the store kept it) or a new one, put into the store unless another node was first.
/// Written to the data directory either way, for the CLI and for clients to trust.
fn hub_tls_ca(store: &dyn Store, data: &Path) -> Result<CaIssuer> {
    let stored = |name: &str| -> Result<Option<String>> {
        store
            .get_setting(name)?
            .map(|v| String::from_utf8(v).context("the stored hub TLS CA is not text"))
            .transpose()
    };
    if stored(TLS_CA_CERT_SETTING)?.is_none() || stored(TLS_CA_KEY_SETTING)?.is_none() {
        let (cert, key) = local_or_new_tls_ca(data)?;
        store.insert_settings_if_absent(&[
            (TLS_CA_CERT_SETTING, cert.as_bytes()),
            (TLS_CA_KEY_SETTING, key.as_bytes()),
        ])?;
    }
    let (Some(cert), Some(key)) = (stored(TLS_CA_CERT_SETTING)?, stored(TLS_CA_KEY_SETTING)?)
    else {
        anyhow::bail!("the store holds only half of the hub TLS CA (certificate or key missing)");
    };
    write_atomic(&data.join(layout::HUB_CA_KEY), key.as_bytes(), 0o600)?;
    write_atomic(&data.join(layout::HUB_CA), cert.as_bytes(), 0o644)?;
    CaIssuer::from_pem(&cert, &key).context("the hub TLS CA in the store is unusable")
}

/// The CA in the data directory's `tls/`, or a new one: (certificate PEM, key PEM).
fn local_or_new_tls_ca(data: &Path) -> Result<(String, String)> {
    let cert_path = data.join(layout::HUB_CA);
    let key_path = data.join(layout::HUB_CA_KEY);
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        CaIssuer::from_pem(&cert, &key).with_context(|| {
            let tls_dir = data.join(layout::TLS_DIR);
            format!("the hub TLS CA in {} is unusable", tls_dir.display())
        })?;
        return Ok((cert, key));
    }
    let now = OffsetDateTime::now_utc();
    let ca = gen::make_ca(
        "iothub local TLS CA",
        KeyKind::EcP256,
        None,
        now - Duration::hours(1),
        now + Duration::days(3650),
    )?;
    Ok((ca.cert_pem, ca.key_pem))
}

/// The hub's TLS identity: the operator's certificate (`--tls-cert`), or a server certificate
/// for `names` from the hub's CA (re-issued at every start, so that its SANs follow the
/// configuration), and its key.
struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn server_identity(
    config: &ServeConfig,
    store: &dyn Store,
    names: &[String],
) -> Result<ServerIdentity> {
    let data = &config.data;
    let ca = hub_tls_ca(store, data)?;
    if let Some((cert, key)) = &config.tls_files {
        return operator_identity(cert, key);
    }
    let now = OffsetDateTime::now_utc();
    let leaf = gen::make_leaf(
        names.first().map(String::as_str).unwrap_or("localhost"),
        KeyKind::EcP256,
        &ca,
        names,
        now - Duration::hours(1),
        now + Duration::days(397),
    )?;
    write_atomic(
        &data.join(layout::SERVER_KEY),
        leaf.key_pem.as_bytes(),
        0o600,
    )?;
    write_atomic(
        &data.join(layout::SERVER_CERT),
        leaf.cert_pem.as_bytes(),
        0o644,
    )?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())?;
    Ok(ServerIdentity { chain, key })
}

/// `--tls-cert` and `--tls-key` read and checked: at least one certificate, a key, and the key
/// the certificate's.
fn operator_identity(cert: &Path, key: &Path) -> Result<ServerIdentity> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("--tls-cert: cannot read {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tls-cert: {} is not PEM certificates", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--tls-cert: {} holds no certificate", cert.display());
    }
    let key_pem =
        std::fs::read(key).with_context(|| format!("--tls-key: cannot read {}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("--tls-key: {} holds no PEM private key", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .with_context(|| format!("--tls-key: {} is not a usable key", key.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .with_context(|| {
            format!(
                "--tls-key: {} is not the key of the first certificate in {}",
                key.display(),
                cert.display()
            )
        })?;
    Ok(ServerIdentity {
        chain,
        key: key_der,
    })
}

/// The HTTPS API's rustls configuration.
fn api_tls(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The AMQP endpoint's rustls configuration: the server certificate only (AMQP clients prove
/// who they are with a token), no ALPN (Azure's AMQP clients send none).
fn amqp_tls(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The host part a client should use for `addr` when no host name is configured.
fn connect_host(config: &ServeConfig) -> String {
    config
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into())
}

pub fn connection_string(host: &str, port: u16, policy: &str, key: &str) -> String {
    let host_port = if port == 443 {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    format!("HostName={host_port};SharedAccessKeyName={policy};SharedAccessKey={key}")
}

pub async fn run(config: ServeConfig) -> Result<()> {
    let names = hub_names(&config);
    let store = open_store(&config)?;
    let partitions = telemetry_partitions(store.as_ref(), config.partitions)?;
    let (hub, new_owner) = open_hub(&config, store.clone(), &names, partitions)?;
    let identity = server_identity(&config, store.as_ref(), &names)?;
    if matches!(config.store, StoreLocation::Postgres(_)) {
        // Other nodes write to the same store: follow what they change.
        hub.start_following(FOLLOW_EVERY)?;
    }
    let tls = api_tls(&identity)?;
    let amqp_tls = amqp_tls(&identity)?;
    let device_tls =
        iothub_gateway::server_config(identity.chain.clone(), identity.key.clone_key())?;
    let listeners = Listeners::bind(&config).await?;
    let metrics_listener = match config.metrics {
        Some(addr) => {
            let listener = crate::watch::bind(addr).await?;
            // Before the https line, which tells a supervisor (and the tests) that all is bound.
            status!("metrics listening on {}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let portal = announce(&config, &hub, &listeners, new_owner)?;

    // One shutdown signal for every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watch = crate::watch::Watch::new(hub.clone());
    let watcher = metrics_listener.map(|listener| {
        tokio::spawn(crate::watch::serve(
            listener,
            watch.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    let gateway = tokio::spawn(iothub_gateway::serve(
        listeners.mqtt,
        device_tls,
        hub.clone(),
        gateway_limits(&config),
        stopped(stop_rx.clone()),
    ));
    let amqp = listeners.amqp.map(|listener| {
        tokio::spawn(iothub_amqp::serve(
            listener,
            amqp_tls.clone(),
            hub.clone(),
            config.amqp_limits.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    let pruner = spawn_pruner(hub.clone());
    let flush_hub = hub.clone();
    let router = iothub_api::router(
        hub,
        iothub_api::ApiLimits {
            max_request_bytes: config.max_request_bytes,
            auth_failures_per_minute: config.auth_failure_limit,
        },
        portal,
    );
    let api = tokio::spawn(iothub_api::serve_tls(
        listeners.https,
        tls,
        router,
        iothub_api::ServerLimits {
            max_connections: config.max_connections,
            handshake_timeout: std::time::Duration::from_secs(config.handshake_timeout_secs as u64),
        },
        stopped(stop_rx),
    ));
    // Both listeners are bound and their tasks run: ready as far as listeners go.
    watch
        .listeners_up
        .store(true, std::sync::atomic::Ordering::Release);
    shutdown_signal().await;
    status!("iothub stopping: no new connections; closing sessions");
    watch
        .listeners_up
        .store(false, std::sync::atomic::Ordering::Release);
    let _ = stop_tx.send(true);
    pruner.abort();
    let _ = api.await;
    let _ = gateway.await;
    if let Some(amqp) = amqp {
        let _ = amqp.await;
    }
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    // Connection facts still pending (last activity, last refusal) are written before exit.
    flush_hub.flush_activity();
    status!("iothub stopped");
    Ok(())
}

/// How often a node of a cluster writes its heartbeat and presence and reads the other nodes'
/// changes: a change made anywhere is in force everywhere within about twice this (one tick to
/// write, one to read), inside the second the cluster promises.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Creates the data directory (owner-only) and opens the store `config.store` names, as node
/// `config.node_id`.
fn open_store(config: &ServeConfig) -> Result<Arc<dyn Store>> {
    let data = &config.data;
    create_private_dir(data)?;
    // Owner-only, like the data directory: it holds the hub CA's and the server's keys.
    create_private_dir(&data.join(layout::TLS_DIR))?;
    match &config.store {
        StoreLocation::Sqlite => {
            // The database holds policy keys: create it owner-only before SQLite opens it
            // (SQLite gives its -wal and -shm files the database file's mode).
            let db_path = data.join(layout::DATABASE);
            if !db_path.exists() {
                write_atomic(&db_path, b"", 0o600)?;
            }
            std::fs::set_permissions(
                &db_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            let store = SqliteStore::open(&db_path)
                .with_context(|| format!("cannot open the database in {}", data.display()))?;
            Ok(Arc::new(store.with_node(&config.node_id)))
        }
        StoreLocation::Postgres(url) => {
            let store = PostgresStore::connect(url, &config.node_id).with_context(|| {
                format!(
                    "cannot use the store {} (--store)",
                    crate::config::without_password(url)
                )
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// The setting that holds the number of partitions of the telemetry log.
const PARTITIONS_SETTING: &str = "telemetry.partitions";

/// The hub's partition count: the store's, set when the hub was created (from `requested`, or 4)
/// by whichever node started first; a later `--partitions` must agree, since a device's
/// partition follows from the count.
fn telemetry_partitions(store: &dyn Store, requested: Option<u32>) -> Result<u32> {
    let stored = || -> Result<Option<u32>> {
        store
            .get_setting(PARTITIONS_SETTING)?
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .parse::<u32>()
                    .context("the stored partition count is not a number")
            })
            .transpose()
    };
    if stored()?.is_none() {
        let n = requested.unwrap_or(4).to_string();
        store.insert_settings_if_absent(&[(PARTITIONS_SETTING, n.as_bytes())])?;
    }
    let Some(count) = stored()? else {
        anyhow::bail!("the store holds no partition count");
    };
    match requested {
        Some(r) if r != count => anyhow::bail!(
            "--partitions is {r}, but this hub's telemetry log has {count} partitions, fixed when it was created"
        ),
        _ => Ok(count),
    }
}

/// The hub over `store`, answering to `names`, its telemetry log in `partitions`; true when
/// this start created the owner policy.
fn open_hub(
    config: &ServeConfig,
    store: Arc<dyn Store>,
    names: &[String],
    partitions: u32,
) -> Result<(Hub, bool)> {
    let hub = Hub::new(
        store,
        HubConfig {
            code_lifetime_secs: config.code_lifetime_secs,
            ca_limit: config.ca_limit,
            max_crl_entries: config.max_crl_entries,
            allow_verify_on_upload: config.allow_verify_on_upload,
            max_certificate_bytes: config.max_certificate_bytes,
            host_names: names.to_vec(),
            device_limit: config.device_limit,
            c2d_max_pending: config.c2d_max_pending,
            feedback_lock_secs: config.c2d_feedback.lock_secs,
            feedback_ttl_secs: config.c2d_feedback.ttl_secs,
            feedback_max_deliveries: config.c2d_feedback.max_deliveries,
            feedback_batch: config.c2d_feedback.batch,
            telemetry_retention_secs: config.telemetry_retention_secs,
            hub_name: config.name.clone(),
            max_chain_len: config.max_chain_length,
            chain_cache_entries: config.chain_cache_entries,
            device_cache_entries: config.device_cache_entries,
            id_scope: config.id_scope.clone(),
            consumer_group_limit: config.consumer_group_limit,
            readers_per_partition: config.readers_per_partition,
            mqtt_refusal_limit: config.mqtt_refusal_limit,
            node_id: config.node_id.clone(),
            partitions,
            cluster: matches!(config.store, StoreLocation::Postgres(_)),
            ..HubConfig::default()
        },
        Arc::new(SystemClock),
    )?;
    let new_owner = hub.ensure_default_policies()?.is_some();
    Ok((hub, new_owner))
}

/// The two listening sockets, bound before anything is announced so that the printed addresses
/// (port 0 resolved) are the real ones.
struct Listeners {
    https: tokio::net::TcpListener,
    https_addr: SocketAddr,
    mqtt: tokio::net::TcpListener,
    mqtt_addr: SocketAddr,
    /// None: `--amqp off`.
    amqp: Option<tokio::net::TcpListener>,
}

impl Listeners {
    async fn bind(config: &ServeConfig) -> Result<Listeners> {
        let https = tokio::net::TcpListener::bind(config.https)
            .await
            .with_context(|| format!("cannot listen on {} (--https)", config.https))?;
        let https_addr = https.local_addr()?;
        let mqtt = tokio::net::TcpListener::bind(config.mqtt)
            .await
            .with_context(|| format!("cannot listen on {} (--mqtt)", config.mqtt))?;
        let mqtt_addr = mqtt.local_addr()?;
        let amqp = match config.amqp {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (--amqp; 'off' turns it off)")
            })?),
            None => None,
        };
        Ok(Listeners {
            https,
            https_addr,
            mqtt,
            mqtt_addr,
            amqp,
        })
    }
}

/// Writes the owner connection string for the bound port and tells the operator where things
/// are; the portal's memory is made here because a terminal gets a first login link from it.
fn announce(
    config: &ServeConfig,
    hub: &Hub,
    listeners: &Listeners,
    new_owner: bool,
) -> Result<Arc<iothub_api::PortalState>> {
    let data = &config.data;
    let (https_addr, mqtt_addr) = (listeners.https_addr, listeners.mqtt_addr);
    let owner = hub.owner_policy()?;
    let conn_str = connection_string(
        &connect_host(config),
        https_addr.port(),
        &owner.name,
        &owner.primary_key,
    );
    write_atomic(
        &data.join(layout::CONNECTION_STRING),
        format!("{conn_str}\n").as_bytes(),
        0o600,
    )?;
    // Nothing secret goes to stdout by default: stdout usually ends up in a log (journal,
    // container logs), and whoever reads a login link or the owner key there holds the hub.
    if new_owner {
        status!(
            "owner connection string written to {} (mode 0600; 'iothub connection-string' prints it)",
            data.join(layout::CONNECTION_STRING).display()
        );
    }
    status!(
        "hub TLS CA certificate: {}",
        data.join(layout::HUB_CA).display()
    );
    let portal = Arc::new(iothub_api::PortalState::new(iothub_api::PortalLimits {
        link_lifetime: std::time::Duration::from_secs(config.portal_link_lifetime_secs as u64),
        ..Default::default()
    }));
    let port_part = if https_addr.port() == 443 {
        String::new()
    } else {
        format!(":{}", https_addr.port())
    };
    let portal_url = format!("https://{}{port_part}/portal", connect_host(config));
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // An operator watching the terminal gets a link to click; it is single use.
        status!(
            "portal (single-use login link, valid {} s; 'iothub portal-link' makes another):\n  {portal_url}/login?token={}",
            config.portal_link_lifetime_secs,
            portal.new_link_token()
        );
    } else {
        status!("portal: {portal_url} (sign in with a link from 'iothub portal-link')");
    }
    status!("mqtt listening on {mqtt_addr}");
    if let Some(amqp) = &listeners.amqp {
        status!("amqp listening on {}", amqp.local_addr()?);
    }
    status!("https listening on {https_addr}");
    tracing::info!(%https_addr, %mqtt_addr, hub = %config.name, "iothub serving");
    Ok(portal)
}

/// Resolves when the shutdown signal is raised.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn gateway_limits(config: &ServeConfig) -> iothub_gateway::GatewayLimits {
    iothub_gateway::GatewayLimits {
        max_connections: config.max_device_connections,
        max_message_bytes: config.max_message_bytes,
        max_inflight: config.max_inflight,
        max_unacked_telemetry: config.max_unacked_telemetry,
        max_keep_alive: config.max_keep_alive,
        handshake_timeout: std::time::Duration::from_secs(config.handshake_timeout_secs as u64),
        provisioning_timeout: std::time::Duration::from_secs(
            config.provisioning_timeout_secs as u64,
        ),
        provisioning_requests: config.provisioning_requests,
        ..Default::default()
    }
}

/// Deletes telemetry and recorded changes past their retention, and expires the cloud-to-device
/// messages that are due (writing their senders' feedback), once a minute on a blocking thread
/// (they are store writes).
fn spawn_pruner(hub: Hub) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            let pruning = hub.clone();
            match tokio::task::spawn_blocking(move || pruning.prune_telemetry()).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(pruned = n, "telemetry past retention deleted")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "telemetry pruning failed"),
                _ => {}
            }
            let pruning = hub.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || pruning.prune_changes()).await {
                tracing::warn!(error = %e, "change feed pruning failed");
            }
            let expiring = hub.clone();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || expiring.expire_c2d_everywhere()).await
            {
                tracing::warn!(error = %e, "cloud-to-device expiry failed");
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
