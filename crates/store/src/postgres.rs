//! PostgreSQL implementation of [`Store`], for nodes that share one database and act as one hub.
//!
//! Why it looks the way it does:
//! - The trait is synchronous (SQLite's calls are), and it is called both from blocking threads and
//!   from inside async tasks. So the store owns a small tokio runtime of its own: each call runs
//!   its queries there and the caller waits on a plain channel, which is allowed anywhere (a
//!   synchronous PostgreSQL client would start a runtime inside the caller's and panic).
//! - Orders the hub relies on are kept by one counter row each, updated inside the writing
//!   transaction: the row lock makes writers take turns until commit, so numbers are handed out
//!   in commit order. Etags (hence `ca_changes_since` and the change feed) come from
//!   `etag_counter`; message offsets from `message_counter`; per-partition sequence numbers from
//!   `partition_counter`. A bare sequence would not do: two transactions can commit in the other
//!   order than they drew their numbers, and a reader would skip one.
//! - Migrations are numbered in `schema_version` and run under an advisory lock, so two nodes
//!   starting at once migrate once.
//! - TLS to the database with rustls when the URL asks for it (`sslmode=require`), verifying the
//!   server against `sslrootcert=FILE` (or `PGSSLROOTCERT`); no certificate is taken unverified.
//! - Errors name the database by host and port, never the password.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Transaction};

mod feedback;
mod notify;
mod ops;
mod provisioning;
mod writes;

use crate::{
    AuditEntry, AuditQuery, AuthType, AutoRegistration, C2dAck, C2dRecord, C2dState, CaChanges,
    CaRecord, Change, ChangeFeed, ChangeKind, CodeRecord, CrlRecord, DeviceActivity, DeviceRecord,
    DeviceStatus, Expect, MethodCallRecord, NewAudit, NewMessage, PolicyChange, PolicyRecord,
    Presence, PresenceUpdate, RevocationRecord, Store, StoreError, StoredMessage, Subscriptions,
    TwinRecord,
};

/// The schema, in numbered steps; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store holds, in one step (this backend started with all of it).
    "CREATE TABLE etag_counter (id INT PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
     INSERT INTO etag_counter VALUES (1, 0);
     CREATE TABLE ca_certificate (
        name TEXT PRIMARY KEY, der BYTEA NOT NULL, thumbprint TEXT NOT NULL UNIQUE,
        is_verified BOOLEAN NOT NULL, created BIGINT NOT NULL, updated BIGINT NOT NULL,
        etag BIGINT NOT NULL, code TEXT, code_expires_at BIGINT, code_used_at BIGINT);
     CREATE INDEX ca_etag ON ca_certificate (etag);
     CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY, time BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, success BOOLEAN NOT NULL, code TEXT, detail TEXT NOT NULL);
     CREATE INDEX audit_target ON audit (target, id);
     CREATE TABLE policy (
        name TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
        rights TEXT NOT NULL);
     CREATE TABLE device (
        device_id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, etag BIGINT NOT NULL,
        status TEXT NOT NULL, status_reason TEXT, status_updated BIGINT NOT NULL,
        auth_type TEXT NOT NULL, primary_thumbprint TEXT, secondary_thumbprint TEXT,
        primary_key TEXT, secondary_key TEXT, created BIGINT NOT NULL, updated BIGINT NOT NULL);
     CREATE TABLE device_activity (
        device_id TEXT PRIMARY KEY, last_activity BIGINT, last_connected BIGINT,
        last_refusal TEXT, last_refusal_time BIGINT);
     CREATE TABLE message_counter (id INT PRIMARY KEY CHECK (id = 1), last BIGINT NOT NULL);
     INSERT INTO message_counter VALUES (1, 0);
     CREATE TABLE partition_counter (partition INT PRIMARY KEY, last BIGINT NOT NULL);
     CREATE TABLE message (
        msg_offset BIGINT PRIMARY KEY, partition INT NOT NULL, sequence BIGINT NOT NULL,
        device_id TEXT NOT NULL, module_id TEXT, enqueued BIGINT NOT NULL,
        system_properties TEXT NOT NULL, properties TEXT NOT NULL, body BYTEA NOT NULL);
     CREATE UNIQUE INDEX message_partition ON message (partition, sequence);
     CREATE INDEX message_enqueued ON message (enqueued);
     CREATE TABLE c2d (
        id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, message_id TEXT NOT NULL,
        properties TEXT NOT NULL, body BYTEA NOT NULL, created BIGINT NOT NULL,
        expiry BIGINT NOT NULL, state TEXT NOT NULL, delivered_at BIGINT,
        delivery_count BIGINT NOT NULL);
     CREATE INDEX c2d_device ON c2d (device_id, state, id);
     CREATE TABLE twin (
        device_id TEXT PRIMARY KEY, etag BIGINT NOT NULL, tags TEXT NOT NULL,
        desired TEXT NOT NULL, desired_metadata TEXT NOT NULL, desired_version BIGINT NOT NULL,
        reported TEXT NOT NULL, reported_metadata TEXT NOT NULL, reported_version BIGINT NOT NULL);
     CREATE TABLE persistent_session (
        device_id TEXT PRIMARY KEY, c2d BOOLEAN NOT NULL, desired BOOLEAN NOT NULL,
        methods BOOLEAN NOT NULL);
     CREATE TABLE change_log (
        seq BIGINT PRIMARY KEY, node TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
        detail TEXT, at BIGINT NOT NULL);
     CREATE TABLE change_pruned (id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
     INSERT INTO change_pruned VALUES (1, 0);
     CREATE TABLE hub_setting (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
     CREATE TABLE presence (device_id TEXT PRIMARY KEY, node TEXT NOT NULL, since_ms BIGINT NOT NULL);
     CREATE TABLE node_heartbeat (node TEXT PRIMARY KEY, at_ms BIGINT NOT NULL);
     CREATE TABLE method_call (
        id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, target_node TEXT NOT NULL,
        name TEXT NOT NULL, payload BYTEA NOT NULL, created_ms BIGINT NOT NULL,
        timeout_ms BIGINT NOT NULL, status INT, response BYTEA);",
    // 2: revoked certificates, by the CA that issued them.
    "CREATE TABLE revocation (
        ca_name TEXT NOT NULL, serial TEXT NOT NULL, reason TEXT NOT NULL,
        revoked_at BIGINT NOT NULL, from_crl BOOLEAN NOT NULL, PRIMARY KEY (ca_name, serial));
     CREATE TABLE crl (
        ca_name TEXT PRIMARY KEY, this_update BIGINT NOT NULL, next_update BIGINT,
        number TEXT, uploaded_at BIGINT NOT NULL);
     ALTER TABLE device_activity ADD COLUMN certificate_not_after BIGINT;
     CREATE TABLE auto_registration (
        ca_name TEXT PRIMARY KEY, device_limit BIGINT NOT NULL, registered BIGINT NOT NULL);
     CREATE INDEX device_certificate_expiry ON device_activity (certificate_not_after);",
    // 3: the provisioning service: enrollments (groups by CA, individual ones by certificate)
    // and the registrations made through them.
    "CREATE TABLE enrollment (
        kind TEXT NOT NULL, name TEXT NOT NULL, ca_name TEXT, certificate BYTEA, thumbprint TEXT,
        initial_twin TEXT, enabled BOOLEAN NOT NULL, etag BIGINT NOT NULL,
        created BIGINT NOT NULL, updated BIGINT NOT NULL, PRIMARY KEY (kind, name));
     CREATE UNIQUE INDEX enrollment_thumbprint ON enrollment (thumbprint) WHERE thumbprint IS NOT NULL;
     CREATE TABLE registration (
        registration_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,
        enrollment_kind TEXT NOT NULL, enrollment_name TEXT NOT NULL, operation_id TEXT NOT NULL,
        etag BIGINT NOT NULL, created BIGINT NOT NULL, updated BIGINT NOT NULL);
     CREATE INDEX registration_device ON registration (device_id);",
    // 4: the Event Hubs-compatible endpoint's consumer groups besides $Default.
    "CREATE TABLE consumer_group (name TEXT PRIMARY KEY, created BIGINT NOT NULL);",
    // 5: feedback on cloud-to-device messages (see the SQLite store's migration 14).
    "ALTER TABLE c2d ADD COLUMN ack TEXT NOT NULL DEFAULT 'none';
     CREATE INDEX c2d_expiry ON c2d (state, expiry);
     CREATE TABLE c2d_feedback (
        id BIGSERIAL PRIMARY KEY,
        original_message_id TEXT NOT NULL, device_id TEXT NOT NULL,
        device_generation_id TEXT NOT NULL, status TEXT NOT NULL, description TEXT NOT NULL,
        enqueued BIGINT NOT NULL, lock_token TEXT, locked_until BIGINT,
        delivery_count BIGINT NOT NULL DEFAULT 0);
     CREATE INDEX c2d_feedback_lock ON c2d_feedback (lock_token) WHERE lock_token IS NOT NULL;",
];

/// The advisory lock key under which migrations run (any fixed number; "iothub" in ASCII).
const MIGRATION_LOCK: i64 = 0x696f_7468_7562;

/// Connections kept open at most; calls beyond wait for one.
const POOL_SIZE: usize = 8;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The database: how to connect, the idle connections, and what limits them.
struct Db {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// "host:port" (or the socket directory), for error messages: never the password.
    shown: String,
    idle: Mutex<Vec<Client>>,
    permits: tokio::sync::Semaphore,
    node: String,
    /// Set by another node's notification (`notify.rs`).
    wakeup: notify::Wakeup,
}

/// SQLSTATEs that say the server cannot serve right now rather than that the query was wrong:
/// class 08 (connection exceptions), 57P01-57P03 (shutting down, crash recovery, starting up),
/// 53300 (too many connections).
fn server_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "53300")
}

/// A pooled connection: back to the pool when dropped, unless it broke.
struct Conn<'a> {
    db: &'a Db,
    client: Option<Client>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a live connection")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a live connection")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.db
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client);
            }
        }
    }
}

impl Db {
    /// The store's error for `e`, naming the database. A failure to reach the server (no
    /// connection, a connection that broke, a server shutting down, starting up or out of
    /// connection slots) is `Unavailable`: the call did nothing and may work later. Anything
    /// the server refused for the query's own sake is `Backend`.
    fn error(&self, e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => {
                let text = format!(
                    "PostgreSQL at {}: {}: {}",
                    self.shown,
                    db.severity(),
                    db.message()
                );
                if server_unavailable(db.code().code()) {
                    StoreError::Unavailable(text)
                } else {
                    StoreError::Backend(text)
                }
            }
            // "error connecting to server" alone does not say why: add the cause (refused,
            // timed out, reset...).
            None => {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                StoreError::Unavailable(format!("PostgreSQL at {}: {e}{cause}", self.shown))
            }
        }
    }

    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("the PostgreSQL pool is closed".into()))?;
        // A connection that broke while idle (the server restarted) is dropped here, so the
        // first call after the database returns does not fail on it.
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            db: self,
            client: Some(client),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| self.error(e))?;
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.error(e))?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let e = |e| self.error(e);
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(e)?;
        let result = self.migrate_locked(&mut conn).await;
        conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(e)?;
        result
    }

    async fn migrate_locked(&self, conn: &mut Client) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        conn.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")
            .await
            .map_err(e)?;
        let row = conn
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(e)?;
        let version = match row {
            Some(r) => r.get::<_, i32>(0) as usize,
            None => {
                conn.execute("INSERT INTO schema_version VALUES (0)", &[])
                    .await
                    .map_err(e)?;
                0
            }
        };
        if version > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the PostgreSQL database at {} has schema version {version}, newer than this build knows ({}); use a newer iothub",
                self.shown,
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().await.map_err(e)?;
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute(
                "UPDATE schema_version SET version = $1",
                &[&((i + 1) as i32)],
            )
            .await
            .map_err(e)?;
            tx.commit().await.map_err(e)?;
        }
        Ok(())
    }
}

/// The PostgreSQL store (see the module comment).
pub struct PostgresStore {
    runtime: Option<tokio::runtime::Runtime>,
    db: Arc<Db>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Not `drop`: dropping a runtime inside another one's task panics.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The TLS configuration `url` asks for: None for `sslmode=disable` (or no sslmode); rustls
/// trusting `sslrootcert` (or `PGSSLROOTCERT`) for `require`, `verify-ca` and `verify-full`.
fn tls_for(url: &str) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    let param = |name: &str| {
        url.split_once('?').and_then(|(_, q)| {
            q.split('&')
                .find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_string))
        })
    };
    let mode = param("sslmode").unwrap_or_else(|| "disable".into());
    match mode.as_str() {
        "disable" => Ok(None),
        "require" | "verify-ca" | "verify-full" => {
            let root = param("sslrootcert")
                .or_else(|| std::env::var("PGSSLROOTCERT").ok())
                .ok_or_else(|| {
                    StoreError::Backend(format!(
                        "sslmode={mode} needs the database server's CA: sslrootcert=FILE in the URL, or PGSSLROOTCERT"
                    ))
                })?;
            let pem = std::fs::read(&root).map_err(|e| {
                StoreError::Backend(format!("cannot read the database CA {root}: {e}"))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Backend(format!("the database CA {root} is not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Backend(format!("the database CA {root} is unusable: {e}"))
                })?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| StoreError::Backend(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
        }
        other => Err(StoreError::Backend(format!(
            "sslmode={other} is not supported; expected disable, require, verify-ca or verify-full"
        ))),
    }
}

/// `url` without the parameters tokio-postgres does not know (ours: sslrootcert), and with
/// sslmode mapped to its values.
fn driver_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let kept: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslrootcert="))
        .map(|p| match p {
            "sslmode=verify-ca" | "sslmode=verify-full" => "sslmode=require".to_string(),
            other => other.to_string(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        StoreError::Backend(format!(
            "the PostgreSQL URL is invalid ({e}); expected postgres://USER@HOST:PORT/DATABASE"
        ))
    })
}

fn shown_host(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`, password in the URL
    /// or `PGPASSWORD`), migrates it, and records this store's writes as node `node`.
    pub fn connect(url: &str, node: &str) -> Result<PostgresStore, StoreError> {
        let tls = tls_for(url)?;
        let mut config = driver_config(url)?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        config.application_name("iothub");
        config.connect_timeout(std::time::Duration::from_secs(10));
        // A database that vanished without closing its connections (a network partition, a
        // host gone) is noticed within about half a minute rather than at the kernel's default.
        config.keepalives(true);
        config.keepalives_idle(std::time::Duration::from_secs(10));
        config.keepalives_interval(std::time::Duration::from_secs(5));
        config.keepalives_retries(3);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("iothub-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        let db = Arc::new(Db {
            shown: shown_host(&config),
            tls,
            config,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(POOL_SIZE),
            node: node.to_string(),
            wakeup: notify::Wakeup::default(),
        });
        let store = PostgresStore {
            runtime: Some(runtime),
            db,
        };
        store.call(|db| Box::pin(async move { db.migrate().await }))?;
        if let Some(rt) = &store.runtime {
            rt.spawn(store.db.clone().listen());
        }
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it (see the module comment).
    fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a Db) -> Boxed<'a, T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let db = self.db.clone();
        let Some(rt) = &self.runtime else {
            return Err(StoreError::Backend("the PostgreSQL store is closed".into()));
        };
        rt.spawn(async move {
            let _ = tx.send(f(&db).await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("the PostgreSQL task stopped".into()))?
    }
}

// ----- row mapping -------------------------------------------------------------------------------

fn text_value<T>(text: &str, parse: fn(&str) -> Option<T>, what: &str) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::Backend(format!("'{text}' is not a {what}")))
}

const CA_COLUMNS: &str = "name, der, thumbprint, is_verified, created, updated, etag, code, code_expires_at, code_used_at";

fn ca_from_row(r: &Row) -> CaRecord {
    let code = match (
        r.get::<_, Option<String>>(7),
        r.get::<_, Option<i64>>(8),
        r.get::<_, Option<i64>>(9),
    ) {
        (Some(code), Some(expires_at), _) => CodeRecord::Live { code, expires_at },
        (_, _, Some(at)) => CodeRecord::Used { at },
        _ => CodeRecord::None,
    };
    CaRecord {
        name: r.get(0),
        der: r.get(1),
        thumbprint: r.get(2),
        is_verified: r.get(3),
        created: r.get(4),
        updated: r.get(5),
        etag: r.get::<_, i64>(6) as u64,
        code,
    }
}

const DEVICE_COLUMNS: &str = "device_id, generation_id, etag, status, status_reason, status_updated, auth_type, primary_thumbprint, secondary_thumbprint, primary_key, secondary_key, created, updated";

fn device_from_row(r: &Row) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        device_id: r.get(0),
        generation_id: r.get(1),
        etag: r.get::<_, i64>(2) as u64,
        status: text_value(r.get(3), DeviceStatus::parse, "device status")?,
        status_reason: r.get(4),
        status_updated: r.get(5),
        auth_type: text_value(r.get(6), AuthType::parse, "authentication type")?,
        primary_thumbprint: r.get(7),
        secondary_thumbprint: r.get(8),
        primary_key: r.get(9),
        secondary_key: r.get(10),
        created: r.get(11),
        updated: r.get(12),
    })
}

const C2D_COLUMNS: &str =
    "id, device_id, message_id, properties, body, created, expiry, state, delivered_at, delivery_count, ack";

fn c2d_from_row(r: &Row) -> Result<C2dRecord, StoreError> {
    Ok(C2dRecord {
        id: r.get(0),
        device_id: r.get(1),
        message_id: r.get(2),
        properties: r.get(3),
        body: r.get(4),
        created: r.get(5),
        expiry: r.get(6),
        state: text_value(r.get(7), C2dState::parse, "C2D state")?,
        delivered_at: r.get(8),
        delivery_count: r.get(9),
        ack: text_value(r.get(10), C2dAck::parse, "C2D ack")?,
    })
}

const MESSAGE_COLUMNS: &str =
    "msg_offset, sequence, partition, device_id, module_id, enqueued, system_properties, properties, body";

fn message_from_row(r: &Row) -> StoredMessage {
    StoredMessage {
        offset: r.get(0),
        sequence: r.get(1),
        message: NewMessage {
            partition: r.get::<_, i32>(2) as u32,
            device_id: r.get(3),
            module_id: r.get(4),
            enqueued: r.get(5),
            system_properties: r.get(6),
            properties: r.get(7),
            body: r.get(8),
        },
    }
}

fn policy_from_row(r: &Row) -> PolicyRecord {
    let rights: String = r.get(3);
    PolicyRecord {
        name: r.get(0),
        primary_key: r.get(1),
        secondary_key: r.get(2),
        rights: rights
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

// ----- helpers inside a transaction ---------------------------------------------------------------

impl Db {
    async fn next_etag(&self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        let row = tx
            .query_one(
                "UPDATE etag_counter SET value = value + 1 WHERE id = 1 RETURNING value",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn record_change(
        &self,
        tx: &Transaction<'_>,
        kind: ChangeKind,
        key: &str,
        detail: Option<&str>,
        seq: u64,
    ) -> Result<(), StoreError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT INTO change_log (seq, node, kind, key, detail, at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&(seq as i64), &self.node, &kind.as_str(), &key, &detail, &at],
        )
        .await
        .map_err(|e| self.error(e))?;
        // Delivered at commit (PostgreSQL folds the same notice within a transaction into one).
        tx.execute(
            &format!("SELECT pg_notify('{}', $1)", notify::CHANNEL),
            &[&self.node],
        )
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn insert_audit(&self, tx: &Transaction<'_>, a: &NewAudit) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO audit (time, actor, action, target, success, code, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&a.time, &a.actor, &a.action, &a.target, &a.success, &a.code, &a.detail],
        )
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The etag of `key` in `table` (locked for the rest of the transaction), if it exists.
    async fn current_etag(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        column: &str,
        key: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = tx
            .query_opt(
                &format!("SELECT etag FROM {table} WHERE {column} = $1 FOR UPDATE"),
                &[&key],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn check_expect(
        &self,
        tx: &Transaction<'_>,
        expect: Expect,
        current: Option<i64>,
        table: &str,
    ) -> Result<(), StoreError> {
        match (expect, current) {
            (Expect::Absent { .. }, Some(_)) => Err(StoreError::AlreadyExists),
            (Expect::Absent { limit }, None) => {
                let count: i64 = tx
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                    .await
                    .map_err(|e| self.error(e))?
                    .get(0);
                if count as u64 >= limit {
                    Err(StoreError::LimitReached { limit })
                } else {
                    Ok(())
                }
            }
            (Expect::Etag(_), None) => Err(StoreError::NotFound),
            (Expect::Etag(want), Some(have)) if want != have as u64 => {
                Err(StoreError::EtagMismatch {
                    current: have as u64,
                })
            }
            (Expect::Etag(_), Some(_)) => Ok(()),
        }
    }

    async fn device_exists(&self, tx: &Transaction<'_>, id: &str) -> Result<bool, StoreError> {
        Ok(tx
            .query_opt("SELECT 1 FROM device WHERE device_id = $1", &[&id])
            .await
            .map_err(|e| self.error(e))?
            .is_some())
    }

    async fn read_policy(
        &self,
        tx: &Transaction<'_>,
        name: &str,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        Ok(tx
            .query_opt(
                "SELECT name, primary_key, secondary_key, rights FROM policy WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.error(e))?
            .map(|r| policy_from_row(&r)))
    }
}

fn check_delete(current: Option<i64>, want: Option<u64>) -> Result<(), StoreError> {
    match (current, want) {
        (None, _) => Err(StoreError::NotFound),
        (Some(have), Some(want)) if have as u64 != want => Err(StoreError::EtagMismatch {
            current: have as u64,
        }),
        _ => Ok(()),
    }
}

/// A device record as the parameters of an INSERT in `DEVICE_COLUMNS` order, with its etag.
fn device_params<'a>(
    r: &'a DeviceRecord,
    etag: &'a i64,
    status: &'a &'a str,
    auth: &'a &'a str,
) -> [&'a (dyn ToSql + Sync); 13] {
    [
        &r.device_id,
        &r.generation_id,
        etag,
        status,
        &r.status_reason,
        &r.status_updated,
        auth,
        &r.primary_thumbprint,
        &r.secondary_thumbprint,
        &r.primary_key,
        &r.secondary_key,
        &r.created,
        &r.updated,
    ]
}

const INSERT_DEVICE: &str = "INSERT INTO device (device_id, generation_id, etag, status, status_reason, status_updated, auth_type, primary_thumbprint, secondary_thumbprint, primary_key, secondary_key, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
