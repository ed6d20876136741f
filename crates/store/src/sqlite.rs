//! SQLite implementation of [`Store`]: one connection behind a mutex, WAL journal with
//! `synchronous=FULL` so that a write is on disk before the call returns (an acknowledged write
//! survives `kill -9` and power loss), and numbered schema migrations.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod feedback;
mod provisioning;

use crate::{
    AuditEntry, AuditQuery, AuthType, AutoRegistration, C2dAck, C2dRecord, C2dState, CaChanges,
    CaRecord, Change, ChangeFeed, ChangeKind, CodeRecord, CrlRecord, DeviceActivity, DeviceRecord,
    DeviceStatus, EnrollmentKind, EnrollmentRecord, Expect, FeedbackRecord, FeedbackSettle,
    FeedbackStatus, FeedbackTake, FeedbackWrite, MethodCallRecord, NewAudit, NewMessage,
    PolicyChange, PolicyRecord, Presence, PresenceUpdate, RegistrationRecord, RevocationRecord,
    Store, StoreError, StoredMessage, Subscriptions, TwinRecord,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: certificates, audit, policies, the etag counter.
    "CREATE TABLE etag_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
     INSERT INTO etag_counter (id, value) VALUES (1, 0);
     CREATE TABLE ca_certificate (
        name TEXT PRIMARY KEY NOT NULL,
        der BLOB NOT NULL,
        thumbprint TEXT NOT NULL UNIQUE,
        is_verified INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        etag INTEGER NOT NULL,
        code TEXT,
        code_expires_at INTEGER,
        code_used_at INTEGER
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        success INTEGER NOT NULL,
        code TEXT,
        detail TEXT NOT NULL
     );
     CREATE INDEX audit_target ON audit (target, id);
     CREATE TABLE policy (
        name TEXT PRIMARY KEY NOT NULL,
        primary_key TEXT NOT NULL,
        secondary_key TEXT NOT NULL,
        rights TEXT NOT NULL
     );",
    // 2: devices (record + activity), device-to-cloud messages, cloud-to-device queue.
    "CREATE TABLE device (
        device_id TEXT PRIMARY KEY NOT NULL,
        generation_id TEXT NOT NULL,
        etag INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT,
        status_updated INTEGER NOT NULL,
        auth_type TEXT NOT NULL,
        primary_thumbprint TEXT,
        secondary_thumbprint TEXT,
        primary_key TEXT,
        secondary_key TEXT,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
     );
     CREATE TABLE device_activity (
        device_id TEXT PRIMARY KEY NOT NULL,
        last_activity INTEGER,
        last_connected INTEGER,
        last_refusal TEXT,
        last_refusal_time INTEGER
     );
     CREATE TABLE message (
        offset INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        module_id TEXT,
        enqueued INTEGER NOT NULL,
        system_properties TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL
     );
     CREATE INDEX message_device ON message (device_id, offset);
     CREATE INDEX message_enqueued ON message (enqueued);
     CREATE TABLE c2d (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL,
        created INTEGER NOT NULL,
        expiry INTEGER NOT NULL,
        state TEXT NOT NULL,
        delivered_at INTEGER,
        delivery_count INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX c2d_device ON c2d (device_id, state, id);",
    // 3: device twins.
    "CREATE TABLE twin (
        device_id TEXT PRIMARY KEY NOT NULL,
        etag INTEGER NOT NULL,
        tags TEXT NOT NULL,
        desired TEXT NOT NULL,
        desired_metadata TEXT NOT NULL,
        desired_version INTEGER NOT NULL,
        reported TEXT NOT NULL,
        reported_metadata TEXT NOT NULL,
        reported_version INTEGER NOT NULL
     );",
    // 4: no index on (device_id, offset). Reads go by offset (the rowid) and filter by device on
    // the way, so the planner never used it; but every telemetry commit had to update it at one
    // leaf page per publishing device, which was most of the bytes written per message.
    "DROP INDEX IF EXISTS message_device;",
    // 5: what a trust rebuild reads on a CA change, from indexes alone: the CAs written since the
    // last rebuild (by etag), and, after a delete, the whole list (by name). Through the primary
    // key index the list looked each row up in the table, whose pages hold the certificates:
    // with 10,000 CAs that read most of the registry on every change.
    "CREATE INDEX ca_version ON ca_certificate (name, etag, is_verified);
     CREATE INDEX ca_etag ON ca_certificate (etag, name, is_verified);",
    // 6: the subscriptions of persistent MQTT sessions (CleanSession=0), which a device expects
    // the hub to keep across a restart of the hub, not only across its own reconnects.
    "CREATE TABLE persistent_session (
        device_id TEXT PRIMARY KEY NOT NULL,
        c2d INTEGER NOT NULL,
        desired INTEGER NOT NULL,
        methods INTEGER NOT NULL
     );",
    // 7: the change feed the nodes sharing a store follow (see `Store::changes_since`), and the
    // highest sequence pruned from it (a reader behind it must refresh everything).
    "CREATE TABLE change_log (
        seq INTEGER PRIMARY KEY NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        detail TEXT,
        at INTEGER NOT NULL
     );
     CREATE TABLE change_pruned (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
     INSERT INTO change_pruned (id, seq) VALUES (1, 0);",
    // 8: hub-wide settings every node shares (the hub's TLS CA).
    "CREATE TABLE hub_setting (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);",
    // 9: which node holds each device's session, the nodes' heartbeats, and direct-method calls
    // handed between nodes.
    "CREATE TABLE presence (
        device_id TEXT PRIMARY KEY NOT NULL,
        node TEXT NOT NULL,
        since_ms INTEGER NOT NULL
     );
     CREATE TABLE node_heartbeat (node TEXT PRIMARY KEY NOT NULL, at_ms INTEGER NOT NULL);
     CREATE TABLE method_call (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        target_node TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        timeout_ms INTEGER NOT NULL,
        status INTEGER,
        response BLOB
     );",
    // 10: telemetry as a partitioned log: each message in the partition its device hashes to,
    // numbered within it. Messages from before partitions are partition 0, numbered by offset.
    "ALTER TABLE message ADD COLUMN partition INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE message ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
     UPDATE message SET sequence = offset;
     CREATE UNIQUE INDEX message_partition ON message (partition, sequence);
     CREATE TABLE partition_counter (partition INTEGER PRIMARY KEY NOT NULL, last INTEGER NOT NULL);
     INSERT INTO partition_counter (partition, last) SELECT 0, MAX(offset) FROM message HAVING COUNT(*) > 0;",
    // 11: revoked certificates, by the CA that issued them.
    "CREATE TABLE revocation (
        ca_name TEXT NOT NULL, serial TEXT NOT NULL, reason TEXT NOT NULL,
        revoked_at INTEGER NOT NULL, from_crl INTEGER NOT NULL, PRIMARY KEY (ca_name, serial));
     CREATE TABLE crl (
        ca_name TEXT PRIMARY KEY NOT NULL, this_update INTEGER NOT NULL, next_update INTEGER,
        number TEXT, uploaded_at INTEGER NOT NULL);
     ALTER TABLE device_activity ADD COLUMN certificate_not_after INTEGER;
     CREATE TABLE auto_registration (
        ca_name TEXT PRIMARY KEY NOT NULL, device_limit INTEGER NOT NULL,
        registered INTEGER NOT NULL);
     CREATE INDEX device_certificate_expiry ON device_activity (certificate_not_after);",
    // 12: the provisioning service: enrollments (groups by CA, individual ones by certificate)
    // and the registrations made through them.
    "CREATE TABLE enrollment (
        kind TEXT NOT NULL, name TEXT NOT NULL, ca_name TEXT, certificate BLOB, thumbprint TEXT,
        initial_twin TEXT, enabled INTEGER NOT NULL, etag INTEGER NOT NULL,
        created INTEGER NOT NULL, updated INTEGER NOT NULL, PRIMARY KEY (kind, name));
     CREATE UNIQUE INDEX enrollment_thumbprint ON enrollment (thumbprint) WHERE thumbprint IS NOT NULL;
     CREATE TABLE registration (
        registration_id TEXT PRIMARY KEY NOT NULL, device_id TEXT NOT NULL,
        enrollment_kind TEXT NOT NULL, enrollment_name TEXT NOT NULL, operation_id TEXT NOT NULL,
        etag INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL);
     CREATE INDEX registration_device ON registration (device_id);",
    // 13: the Event Hubs-compatible endpoint's consumer groups besides $Default.
    "CREATE TABLE consumer_group (name TEXT PRIMARY KEY NOT NULL, created INTEGER NOT NULL);",
    // 14: feedback on cloud-to-device messages: what each message's sender asked to hear about,
    // the queue of feedback records service clients take and settle, and an index for the sweep
    // that expires every device's messages (not only those of devices that connect).
    "ALTER TABLE c2d ADD COLUMN ack TEXT NOT NULL DEFAULT 'none';
     CREATE INDEX c2d_expiry ON c2d (state, expiry);
     CREATE TABLE c2d_feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        original_message_id TEXT NOT NULL, device_id TEXT NOT NULL,
        device_generation_id TEXT NOT NULL, status TEXT NOT NULL, description TEXT NOT NULL,
        enqueued INTEGER NOT NULL, lock_token TEXT, locked_until INTEGER,
        delivery_count INTEGER NOT NULL DEFAULT 0);
     CREATE INDEX c2d_feedback_lock ON c2d_feedback (lock_token) WHERE lock_token IS NOT NULL;",
];

/// The CA list a trust rebuild reads after a delete (see migration 5).
const CA_VERSIONS_QUERY: &str = "SELECT name, etag, is_verified FROM ca_certificate ORDER BY name";
/// The CAs written since an etag, which a trust rebuild reads on every CA change.
const CA_CHANGES_QUERY: &str = "SELECT name, etag, is_verified FROM ca_certificate WHERE etag > ?1";

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The node its writes are recorded under in the change feed.
    node: String,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the database has schema version {version}, newer than this build knows ({}); use a newer iothub",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(backend)?;
            tx.execute_batch(sql).map_err(backend)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            node: LOCAL_NODE.to_string(),
        })
    }

    /// The same store, recording its writes in the change feed as node `node` (several hub
    /// processes on one database file: tests of what crosses between nodes).
    pub fn with_node(mut self, node: &str) -> SqliteStore {
        self.node = node.to_string();
        self
    }

    /// SQLite's own consistency check of the whole database: `["ok"]` when sound.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(backend)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Backend("the store lock is poisoned".into()))
    }
}

const CA_COLUMNS: &str =
    "name, der, thumbprint, is_verified, created, updated, etag, code, code_expires_at, code_used_at";

fn ca_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CaRecord> {
    let code: Option<String> = row.get(7)?;
    let expires: Option<i64> = row.get(8)?;
    let used: Option<i64> = row.get(9)?;
    let code = match (code, expires, used) {
        (Some(code), Some(expires_at), _) => CodeRecord::Live { code, expires_at },
        (_, _, Some(at)) => CodeRecord::Used { at },
        _ => CodeRecord::None,
    };
    Ok(CaRecord {
        name: row.get(0)?,
        der: row.get(1)?,
        thumbprint: row.get(2)?,
        is_verified: row.get(3)?,
        created: row.get(4)?,
        updated: row.get(5)?,
        etag: row.get::<_, i64>(6)? as u64,
        code,
    })
}

fn insert_audit(conn: &Connection, a: &NewAudit) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (time, actor, action, target, success, code, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![a.time, a.actor, a.action, a.target, a.success, a.code, a.detail],
    )
    .map_err(backend)?;
    Ok(())
}

/// The node name of a store handle that was given none.
pub const LOCAL_NODE: &str = "local";

/// Records a change for the other nodes, in the transaction of the write it describes. `seq` is
/// an etag taken in that transaction, so the feed is in commit order.
fn record_change(
    tx: &Connection,
    node: &str,
    kind: ChangeKind,
    key: &str,
    seq: u64,
) -> Result<(), StoreError> {
    record_change_with(tx, node, kind, key, None, seq)
}

/// [`record_change`] with a detail (a desired patch).
fn record_change_with(
    tx: &Connection,
    node: &str,
    kind: ChangeKind,
    key: &str,
    detail: Option<&str>,
    seq: u64,
) -> Result<(), StoreError> {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    tx.prepare_cached(
        "INSERT INTO change_log (seq, node, kind, key, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![seq as i64, node, kind, key, detail, at]))
    .map_err(backend)?;
    Ok(())
}

fn next_etag(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row(
        "UPDATE etag_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .map_err(backend)
}

/// The text columns of [`DeviceStatus`], [`AuthType`] and [`C2dState`]: written with `as_str` and
/// read with `parse` (their one spelling, in `lib.rs`); a text that is none of their values is a
/// read error naming it, never a guess.
macro_rules! text_column {
    ($($name:ident),+) => {$(
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("'{text}' is not a {}", stringify!($name)).into(),
                    )
                })
            }
        }
    )+};
}

text_column!(
    DeviceStatus,
    AuthType,
    C2dState,
    C2dAck,
    FeedbackStatus,
    ChangeKind,
    EnrollmentKind
);

const DEVICE_COLUMNS: &str = "device_id, generation_id, etag, status, status_reason, status_updated, auth_type, primary_thumbprint, secondary_thumbprint, primary_key, secondary_key, created, updated";

fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_id: row.get(0)?,
        generation_id: row.get(1)?,
        etag: row.get::<_, i64>(2)? as u64,
        status: row.get(3)?,
        status_reason: row.get(4)?,
        status_updated: row.get(5)?,
        auth_type: row.get(6)?,
        primary_thumbprint: row.get(7)?,
        secondary_thumbprint: row.get(8)?,
        primary_key: row.get(9)?,
        secondary_key: row.get(10)?,
        created: row.get(11)?,
        updated: row.get(12)?,
    })
}

const C2D_COLUMNS: &str =
    "id, device_id, message_id, properties, body, created, expiry, state, delivered_at, delivery_count, ack";

fn c2d_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<C2dRecord> {
    Ok(C2dRecord {
        id: row.get(0)?,
        device_id: row.get(1)?,
        message_id: row.get(2)?,
        properties: row.get(3)?,
        body: row.get(4)?,
        created: row.get(5)?,
        expiry: row.get(6)?,
        state: row.get(7)?,
        delivered_at: row.get(8)?,
        delivery_count: row.get(9)?,
        ack: row.get(10)?,
    })
}

/// The etag of the row `key` of `table` (keyed by `column`), if it exists.
fn current_etag(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    column: &str,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    tx.query_row(
        &format!("SELECT etag FROM {table} WHERE {column} = ?1"),
        [key],
        |r| r.get(0),
    )
    .optional()
    .map_err(backend)
}

fn policy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRecord> {
    let rights: String = r.get(3)?;
    Ok(PolicyRecord {
        name: r.get(0)?,
        primary_key: r.get(1)?,
        secondary_key: r.get(2)?,
        rights: rights
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn read_policy(conn: &Connection, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
    conn.query_row(
        "SELECT name, primary_key, secondary_key, rights FROM policy WHERE name = ?1",
        [name],
        policy_from_row,
    )
    .optional()
    .map_err(backend)
}

/// The precondition of a delete: the row exists and, when given, its etag is `want`.
fn check_delete(current: Option<i64>, want: Option<u64>) -> Result<(), StoreError> {
    match (current, want) {
        (None, _) => Err(StoreError::NotFound),
        (Some(have), Some(want)) if have as u64 != want => Err(StoreError::EtagMismatch {
            current: have as u64,
        }),
        _ => Ok(()),
    }
}

/// Checks a write precondition against the current etag of a row (None: no row).
fn check_expect(
    tx: &rusqlite::Transaction<'_>,
    expect: Expect,
    current: Option<i64>,
    count_sql: &str,
) -> Result<(), StoreError> {
    match (expect, current) {
        (Expect::Absent { .. }, Some(_)) => Err(StoreError::AlreadyExists),
        (Expect::Absent { limit }, None) => {
            let count: i64 = tx.query_row(count_sql, [], |r| r.get(0)).map_err(backend)?;
            if count as u64 >= limit {
                Err(StoreError::LimitReached { limit })
            } else {
                Ok(())
            }
        }
        (Expect::Etag(_), None) => Err(StoreError::NotFound),
        (Expect::Etag(want), Some(have)) if want != have as u64 => Err(StoreError::EtagMismatch {
            current: have as u64,
        }),
        (Expect::Etag(_), Some(_)) => Ok(()),
    }
}

impl Store for SqliteStore {
    fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            &format!("SELECT {CA_COLUMNS} FROM ca_certificate WHERE name = ?1"),
            [name],
            ca_from_row,
        )
        .optional()
        .map_err(backend)
    }

    fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {CA_COLUMNS} FROM ca_certificate ORDER BY name"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map([], ca_from_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn list_ca_versions(&self) -> Result<Vec<(String, u64, bool)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(CA_VERSIONS_QUERY).map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn ca_changes_since(&self, since: u64) -> Result<CaChanges, StoreError> {
        // One lock, one connection: no write lands between the two reads.
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(CA_CHANGES_QUERY).map_err(backend)?;
        let rows = stmt
            .query_map([since as i64], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .map_err(backend)?;
        let changed = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
        let total: i64 = conn
            .query_row("SELECT COUNT(*) FROM ca_certificate", [], |r| r.get(0))
            .map_err(backend)?;
        Ok(CaChanges {
            changed,
            total: total as u64,
        })
    }

    fn write_ca(
        &self,
        record: &CaRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<CaRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_etag(&tx, "ca_certificate", "name", &record.name)?;
        check_expect(&tx, expect, current, "SELECT COUNT(*) FROM ca_certificate")?;
        let other: Option<String> = tx
            .query_row(
                "SELECT name FROM ca_certificate WHERE thumbprint = ?1 AND name <> ?2",
                [&record.thumbprint, &record.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if let Some(name) = other {
            return Err(StoreError::DuplicateThumbprint { name });
        }
        let etag = next_etag(&tx)?;
        let (code, expires, used) = match &record.code {
            CodeRecord::None => (None, None, None),
            CodeRecord::Live { code, expires_at } => (Some(code.as_str()), Some(*expires_at), None),
            CodeRecord::Used { at } => (None, None, Some(*at)),
        };
        tx.execute(
            &format!("INSERT OR REPLACE INTO ca_certificate ({CA_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                record.name,
                record.der,
                record.thumbprint,
                record.is_verified,
                record.created,
                record.updated,
                etag as i64,
                code,
                expires,
                used
            ],
        )
        .map_err(backend)?;
        record_change(&tx, &self.node, ChangeKind::Ca, &record.name, etag)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(CaRecord {
            etag,
            ..record.clone()
        })
    }

    fn delete_ca(&self, name: &str, etag: Option<u64>, audit: &NewAudit) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_etag(&tx, "ca_certificate", "name", name)?;
        check_delete(current, etag)?;
        tx.execute("DELETE FROM ca_certificate WHERE name = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM revocation WHERE ca_name = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM crl WHERE ca_name = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM auto_registration WHERE ca_name = ?1", [name])
            .map_err(backend)?;
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::Ca, name, seq)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn append_audit(&self, audit: &NewAudit) -> Result<(), StoreError> {
        let conn = self.lock()?;
        insert_audit(&conn, audit)
    }

    fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, time, actor, action, target, success, code, detail FROM audit
                 WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![query.target, query.before, query.limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    success: r.get(5)?,
                    code: r.get(6)?,
                    detail: r.get(7)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, primary_key, secondary_key, rights FROM policy ORDER BY name",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([], policy_from_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn insert_policy_if_absent(&self, p: &PolicyRecord) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO policy (name, primary_key, secondary_key, rights) VALUES (?1, ?2, ?3, ?4)",
                params![p.name, p.primary_key, p.secondary_key, p.rights.join(",")],
            )
            .map_err(backend)?;
        if n == 1 {
            let seq = next_etag(&tx)?;
            record_change(&tx, &self.node, ChangeKind::Policy, &p.name, seq)?;
        }
        tx.commit().map_err(backend)?;
        Ok(n == 1)
    }
    fn change_policy(
        &self,
        change: &PolicyChange,
        audit: &NewAudit,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let name = match change {
            PolicyChange::Create { record, .. } => &record.name,
            PolicyChange::SetRights { name, .. }
            | PolicyChange::SetKey { name, .. }
            | PolicyChange::Delete { name } => name,
        };
        let exists = read_policy(&tx, name)?.is_some();
        match change {
            PolicyChange::Create { record, limit } => {
                if exists {
                    return Err(StoreError::AlreadyExists);
                }
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM policy", [], |r| r.get(0))
                    .map_err(backend)?;
                if count as u64 >= *limit {
                    return Err(StoreError::LimitReached { limit: *limit });
                }
                tx.execute(
                    "INSERT INTO policy (name, primary_key, secondary_key, rights) VALUES (?1, ?2, ?3, ?4)",
                    params![record.name, record.primary_key, record.secondary_key, record.rights.join(",")],
                )
                .map_err(backend)?;
            }
            _ if !exists => return Err(StoreError::NotFound),
            PolicyChange::SetRights { name, rights } => {
                tx.execute(
                    "UPDATE policy SET rights = ?2 WHERE name = ?1",
                    params![name, rights.join(",")],
                )
                .map_err(backend)?;
            }
            PolicyChange::SetKey {
                name,
                secondary,
                key,
            } => {
                let sql = if *secondary {
                    "UPDATE policy SET secondary_key = ?2 WHERE name = ?1"
                } else {
                    "UPDATE policy SET primary_key = ?2 WHERE name = ?1"
                };
                tx.execute(sql, params![name, key]).map_err(backend)?;
            }
            PolicyChange::Delete { name } => {
                tx.execute("DELETE FROM policy WHERE name = ?1", [name])
                    .map_err(backend)?;
            }
        }
        let after = read_policy(&tx, name)?;
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::Policy, name, seq)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(after)
    }

    fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let conn = self.lock()?;
        // On every device CONNECT: a cached statement (parsing it cost more than the lookup).
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM device WHERE device_id = ?1"
            ))
            .map_err(backend)?;
        let device = stmt
            .query_row([device_id], device_from_row)
            .optional()
            .map_err(backend);
        // The statement borrows the connection guard: it goes back to the cache first.
        drop(stmt);
        device
    }

    fn count_devices(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = ?1) FROM device",
            [DeviceStatus::Enabled],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .map_err(backend)
    }

    fn list_devices(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM device WHERE (?1 IS NULL OR device_id > ?1) ORDER BY device_id LIMIT ?2"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![after, limit], device_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn write_device(
        &self,
        record: &DeviceRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_etag(&tx, "device", "device_id", &record.device_id)?;
        check_expect(&tx, expect, current, "SELECT COUNT(*) FROM device")?;
        let etag = next_etag(&tx)?;
        let etag_value = etag as i64;
        tx.execute(
            &format!("INSERT OR REPLACE INTO device ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            device_row(record, &etag_value),
        )
        .map_err(backend)?;
        record_change(&tx, &self.node, ChangeKind::Device, &record.device_id, etag)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(DeviceRecord {
            etag,
            ..record.clone()
        })
    }

    fn create_devices(
        &self,
        rows: &[(DeviceRecord, NewAudit)],
        limit: u64,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        // Counted once and kept current here: a COUNT(*) per row would make a batch quadratic.
        let mut count: u64 = tx
            .query_row("SELECT COUNT(*) FROM device", [], |r| r.get::<_, i64>(0))
            .map_err(backend)? as u64;
        let mut answers = Vec::with_capacity(rows.len());
        {
            let mut insert = tx
                .prepare_cached(&format!("INSERT INTO device ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"))
                .map_err(backend)?;
            for (record, audit) in rows {
                if current_etag(&tx, "device", "device_id", &record.device_id)?.is_some() {
                    answers.push(Err(StoreError::AlreadyExists));
                    continue;
                }
                if count >= limit {
                    answers.push(Err(StoreError::LimitReached { limit }));
                    continue;
                }
                let etag = next_etag(&tx)?;
                insert
                    .execute(device_row(record, &(etag as i64)))
                    .map_err(backend)?;
                record_change(&tx, &self.node, ChangeKind::Device, &record.device_id, etag)?;
                insert_audit(&tx, audit)?;
                count += 1;
                answers.push(Ok(DeviceRecord {
                    etag,
                    ..record.clone()
                }));
            }
        }
        tx.commit().map_err(backend)?;
        Ok(answers)
    }

    fn delete_device(
        &self,
        device_id: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_etag(&tx, "device", "device_id", device_id)?;
        check_delete(current, etag)?;
        tx.execute("DELETE FROM device WHERE device_id = ?1", [device_id])
            .map_err(backend)?;
        tx.execute(
            "DELETE FROM device_activity WHERE device_id = ?1",
            [device_id],
        )
        .map_err(backend)?;
        tx.execute("DELETE FROM c2d WHERE device_id = ?1", [device_id])
            .map_err(backend)?;
        tx.execute("DELETE FROM twin WHERE device_id = ?1", [device_id])
            .map_err(backend)?;
        tx.execute(
            "DELETE FROM persistent_session WHERE device_id = ?1",
            [device_id],
        )
        .map_err(backend)?;
        tx.execute("DELETE FROM presence WHERE device_id = ?1", [device_id])
            .map_err(backend)?;
        tx.execute("DELETE FROM registration WHERE device_id = ?1", [device_id])
            .map_err(backend)?;
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::Device, device_id, seq)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn list_expiring_devices(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT a.device_id, a.certificate_not_after FROM device_activity a
                 JOIN device d ON d.device_id = a.device_id
                 WHERE a.certificate_not_after < ?1
                 ORDER BY a.certificate_not_after, a.device_id LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn get_device_activity(&self, device_id: &str) -> Result<DeviceActivity, StoreError> {
        let conn = self.lock()?;
        Ok(conn
            .query_row(
                "SELECT last_activity, last_connected, last_refusal, last_refusal_time, certificate_not_after FROM device_activity WHERE device_id = ?1",
                [device_id],
                |r| {
                    Ok(DeviceActivity {
                        last_activity: r.get(0)?,
                        last_connected: r.get(1)?,
                        last_refusal: r.get(2)?,
                        last_refusal_time: r.get(3)?,
                        certificate_not_after: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(backend)?
            .unwrap_or_default())
    }

    fn update_device_activity(
        &self,
        device_id: &str,
        u: &DeviceActivity,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO device_activity (device_id, last_activity, last_connected, last_refusal, last_refusal_time, certificate_not_after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(device_id) DO UPDATE SET
               last_activity = COALESCE(excluded.last_activity, last_activity),
               last_connected = COALESCE(excluded.last_connected, last_connected),
               last_refusal = COALESCE(excluded.last_refusal, last_refusal),
               last_refusal_time = COALESCE(excluded.last_refusal_time, last_refusal_time),
               certificate_not_after = COALESCE(excluded.certificate_not_after, certificate_not_after)",
            params![device_id, u.last_activity, u.last_connected, u.last_refusal, u.last_refusal_time, u.certificate_not_after],
        )
        .map_err(backend)?;
        Ok(())
    }

    fn update_device_activities(
        &self,
        updates: &[(String, DeviceActivity)],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO device_activity (device_id, last_activity, last_connected, last_refusal, last_refusal_time, certificate_not_after)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM device WHERE device_id = ?1)
                     ON CONFLICT(device_id) DO UPDATE SET
                       last_activity = COALESCE(excluded.last_activity, last_activity),
                       last_connected = COALESCE(excluded.last_connected, last_connected),
                       last_refusal = COALESCE(excluded.last_refusal, last_refusal),
                       last_refusal_time = COALESCE(excluded.last_refusal_time, last_refusal_time),
                       certificate_not_after = COALESCE(excluded.certificate_not_after, certificate_not_after)",
                )
                .map_err(backend)?;
            for (id, u) in updates {
                stmt.execute(params![
                    id,
                    u.last_activity,
                    u.last_connected,
                    u.last_refusal,
                    u.last_refusal_time,
                    u.certificate_not_after
                ])
                .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn append_messages(&self, messages: &[NewMessage]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut offsets = Vec::with_capacity(messages.len());
        // Each partition's next sequence number, read once per batch and written back once.
        let mut next: std::collections::HashMap<u32, i64> = std::collections::HashMap::new();
        {
            let mut last = tx
                .prepare_cached("SELECT last FROM partition_counter WHERE partition = ?1")
                .map_err(backend)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO message (device_id, module_id, enqueued, system_properties, properties, body, partition, sequence)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(backend)?;
            for m in messages {
                let sequence = match next.get_mut(&m.partition) {
                    Some(n) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        let stored: Option<i64> = last
                            .query_row([m.partition], |r| r.get(0))
                            .optional()
                            .map_err(backend)?;
                        let n = stored.unwrap_or(0) + 1;
                        next.insert(m.partition, n);
                        n
                    }
                };
                stmt.execute(params![
                    m.device_id,
                    m.module_id,
                    m.enqueued,
                    m.system_properties,
                    m.properties,
                    m.body,
                    m.partition,
                    sequence
                ])
                .map_err(backend)?;
                offsets.push(tx.last_insert_rowid());
            }
            let mut write = tx
                .prepare_cached(
                    "INSERT INTO partition_counter (partition, last) VALUES (?1, ?2)
                     ON CONFLICT (partition) DO UPDATE SET last = excluded.last",
                )
                .map_err(backend)?;
            for (partition, last) in &next {
                write.execute(params![partition, last]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(offsets)
    }

    fn read_messages(
        &self,
        from: i64,
        device_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM message
                 WHERE offset >= ?1 AND (?2 IS NULL OR device_id = ?2) ORDER BY offset LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![from, device_id, limit], message_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn read_partition(
        &self,
        partition: u32,
        from: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM message
                 WHERE partition = ?1 AND sequence >= ?2 ORDER BY sequence LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![partition, from, limit], message_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn partition_ends(&self) -> Result<Vec<(u32, i64)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT partition, last FROM partition_counter ORDER BY partition")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn check_readable(&self) -> Result<(), StoreError> {
        // A read may be answered from the connection's page cache even when the file under it
        // was overwritten, so the file's own header is read too: a database file that is gone or
        // no longer a SQLite database fails readiness at once, not at the next cache miss.
        let path = self.lock()?.path().unwrap_or_default().to_string();
        if !path.is_empty() {
            let mut header = [0u8; 16];
            std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
                .map_err(|e| {
                    StoreError::Backend(format!("cannot read the database file {path}: {e}"))
                })?;
            if &header != b"SQLite format 3\0" {
                return Err(StoreError::Backend(format!(
                    "the database file {path} is not a SQLite database any more (its header is not \"SQLite format 3\")"
                )));
            }
        }
        self.last_message_offset().map(|_| ())
    }

    fn last_message_offset(&self) -> Result<i64, StoreError> {
        let conn = self.lock()?;
        // AUTOINCREMENT keeps offsets monotonic even after pruning: read the sequence.
        conn.query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'message'), 0)",
            [],
            |r| r.get(0),
        )
        .map_err(backend)
    }

    fn prune_messages(&self, before: i64) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        conn.execute("DELETE FROM message WHERE enqueued < ?1", [before])
            .map(|n| n as u64)
            .map_err(backend)
    }

    fn enqueue_c2d(&self, record: &C2dRecord, max_pending: u32) -> Result<C2dRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM device WHERE device_id = ?1",
                [&record.device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let pending: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM c2d WHERE device_id = ?1 AND state = ?3 AND expiry > ?2",
                params![record.device_id, record.created, C2dState::Queued],
                |r| r.get(0),
            )
            .map_err(backend)?;
        if pending as u64 >= max_pending as u64 {
            return Err(StoreError::LimitReached {
                limit: max_pending as u64,
            });
        }
        tx.execute(
            "INSERT INTO c2d (device_id, message_id, properties, body, created, expiry, state, delivered_at, delivery_count, ack)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, 0, ?8)",
            params![record.device_id, record.message_id, record.properties, record.body, record.created, record.expiry, C2dState::Queued, record.ack],
        )
        .map_err(backend)?;
        let id = tx.last_insert_rowid();
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::C2d, &record.device_id, seq)?;
        tx.commit().map_err(backend)?;
        Ok(C2dRecord {
            id,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 0,
            ..record.clone()
        })
    }

    fn list_c2d(&self, device_id: &str, limit: u32) -> Result<Vec<C2dRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {C2D_COLUMNS} FROM c2d WHERE device_id = ?1 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![device_id, limit], c2d_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn pending_c2d(&self, device_id: &str, now: i64) -> Result<Vec<C2dRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {C2D_COLUMNS} FROM c2d WHERE device_id = ?1 AND state = ?2 AND expiry > ?3 ORDER BY id"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![device_id, C2dState::Queued, now], c2d_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn expire_c2d(
        &self,
        device_id: Option<&str>,
        now: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<u64, StoreError> {
        self.expire_c2d_sql(device_id, now, feedback)
    }

    fn count_pending_c2d(&self, device_id: &str, now: i64) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT COUNT(*) FROM c2d WHERE device_id = ?1 AND state = ?3 AND expiry > ?2",
            params![device_id, now, C2dState::Queued],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(backend)
    }

    fn mark_c2d_delivered(
        &self,
        id: i64,
        at: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<(), StoreError> {
        self.mark_c2d_delivered_sql(id, at, feedback)
    }

    fn take_feedback(&self, take: &FeedbackTake<'_>) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.take_feedback_sql(take)
    }

    fn settle_feedback(
        &self,
        token: &str,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError> {
        self.settle_feedback_sql(token, now, settle)
    }

    fn count_c2d_attempt(&self, id: i64) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "UPDATE c2d SET delivery_count = delivery_count + 1 WHERE id = ?1",
            [id],
        )
        .map_err(backend)?;
        Ok(())
    }

    fn get_twin(&self, device_id: &str) -> Result<TwinRecord, StoreError> {
        let conn = self.lock()?;
        let exists: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM device WHERE device_id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        Ok(conn
            .query_row(
                "SELECT etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version
                 FROM twin WHERE device_id = ?1",
                [device_id],
                |r| {
                    Ok(TwinRecord {
                        device_id: device_id.to_string(),
                        etag: r.get::<_, i64>(0)? as u64,
                        tags: r.get(1)?,
                        desired: r.get(2)?,
                        desired_metadata: r.get(3)?,
                        desired_version: r.get(4)?,
                        reported: r.get(5)?,
                        reported_metadata: r.get(6)?,
                        reported_version: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(backend)?
            .unwrap_or_else(|| TwinRecord::empty(device_id)))
    }

    fn write_twin(
        &self,
        t: &TwinRecord,
        expected: Option<u64>,
        desired_patch: Option<&str>,
    ) -> Result<TwinRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM device WHERE device_id = ?1",
                [&t.device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let current: u64 = tx
            .query_row(
                "SELECT etag FROM twin WHERE device_id = ?1",
                [&t.device_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(backend)?
            .unwrap_or(0) as u64;
        if let Some(want) = expected {
            if want != current {
                return Err(StoreError::EtagMismatch { current });
            }
        }
        let etag = next_etag(&tx)?;
        tx.execute(
            "INSERT OR REPLACE INTO twin (device_id, etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                t.device_id,
                etag as i64,
                t.tags,
                t.desired,
                t.desired_metadata,
                t.desired_version,
                t.reported,
                t.reported_metadata,
                t.reported_version
            ],
        )
        .map_err(backend)?;
        if let Some(patch) = desired_patch {
            let (node, id) = (&self.node, &t.device_id);
            record_change_with(&tx, node, ChangeKind::Desired, id, Some(patch), etag)?;
        }
        tx.commit().map_err(backend)?;
        Ok(TwinRecord { etag, ..t.clone() })
    }

    fn list_persistent_sessions(&self) -> Result<Vec<(String, Subscriptions)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT device_id, c2d, desired, methods FROM persistent_session ORDER BY device_id")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Subscriptions {
                        c2d: r.get(1)?,
                        desired: r.get(2)?,
                        methods: r.get(3)?,
                    },
                ))
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn revoke(&self, record: &RevocationRecord, audit: &NewAudit) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if current_etag(&tx, "ca_certificate", "name", &record.ca_name)?.is_none() {
            return Err(StoreError::NotFound);
        }
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO revocation (ca_name, serial, reason, revoked_at, from_crl) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.ca_name, record.serial, record.reason, record.revoked_at, record.from_crl],
            )
            .map_err(backend)?;
        if inserted == 0 {
            // Revoked by the CRL already: the operator's revocation takes its place (it stays
            // when a later CRL no longer lists the serial).
            let taken = tx
                .execute(
                    "UPDATE revocation SET reason = ?3, revoked_at = ?4, from_crl = 0
                     WHERE ca_name = ?1 AND serial = ?2 AND from_crl = 1",
                    params![
                        record.ca_name,
                        record.serial,
                        record.reason,
                        record.revoked_at
                    ],
                )
                .map_err(backend)?;
            if taken == 0 {
                return Err(StoreError::AlreadyExists);
            }
        }
        let seq = next_etag(&tx)?;
        record_change(
            &tx,
            &self.node,
            ChangeKind::Revocation,
            &record.ca_name,
            seq,
        )?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn list_revocations(&self, ca_name: Option<&str>) -> Result<Vec<RevocationRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT ca_name, serial, reason, revoked_at, from_crl FROM revocation
                 WHERE (?1 IS NULL OR ca_name = ?1) ORDER BY ca_name, revoked_at, serial",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([ca_name], |r| {
                Ok(RevocationRecord {
                    ca_name: r.get(0)?,
                    serial: r.get(1)?,
                    reason: r.get(2)?,
                    revoked_at: r.get(3)?,
                    from_crl: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn replace_crl(
        &self,
        crl: &CrlRecord,
        entries: &[RevocationRecord],
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if current_etag(&tx, "ca_certificate", "name", &crl.ca_name)?.is_none() {
            return Err(StoreError::NotFound);
        }
        let held: Option<i64> = tx
            .query_row(
                "SELECT this_update FROM crl WHERE ca_name = ?1",
                [&crl.ca_name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if let Some(held) = held.filter(|held| *held >= crl.this_update) {
            return Err(StoreError::EtagMismatch {
                current: held as u64,
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO crl (ca_name, this_update, next_update, number, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![crl.ca_name, crl.this_update, crl.next_update, crl.number, crl.uploaded_at],
        )
        .map_err(backend)?;
        tx.execute(
            "DELETE FROM revocation WHERE ca_name = ?1 AND from_crl = 1",
            [&crl.ca_name],
        )
        .map_err(backend)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO revocation (ca_name, serial, reason, revoked_at, from_crl) VALUES (?1, ?2, ?3, ?4, 1)",
                )
                .map_err(backend)?;
            for e in entries {
                insert
                    .execute(params![crl.ca_name, e.serial, e.reason, e.revoked_at])
                    .map_err(backend)?;
            }
        }
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::Revocation, &crl.ca_name, seq)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn set_auto_registration(
        &self,
        ca_name: &str,
        device_limit: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if current_etag(&tx, "ca_certificate", "name", ca_name)?.is_none() {
            return Err(StoreError::NotFound);
        }
        match device_limit {
            Some(limit) => tx.execute(
                "INSERT INTO auto_registration (ca_name, device_limit, registered) VALUES (?1, ?2, 0)
                 ON CONFLICT(ca_name) DO UPDATE SET device_limit = excluded.device_limit",
                params![ca_name, limit as i64],
            ),
            None => tx.execute("DELETE FROM auto_registration WHERE ca_name = ?1", [ca_name]),
        }
        .map_err(backend)?;
        let seq = next_etag(&tx)?;
        record_change(&tx, &self.node, ChangeKind::AutoRegistration, ca_name, seq)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn list_auto_registrations(&self) -> Result<Vec<AutoRegistration>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT ca_name, device_limit, registered FROM auto_registration ORDER BY ca_name",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AutoRegistration {
                    ca_name: r.get(0)?,
                    device_limit: r.get::<_, i64>(1)? as u64,
                    registered: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn auto_register_device(
        &self,
        ca_name: &str,
        record: &DeviceRecord,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let quota: Option<(i64, i64)> = tx
            .query_row(
                "SELECT device_limit, registered FROM auto_registration WHERE ca_name = ?1",
                [ca_name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let Some((limit, registered)) = quota else {
            return Err(StoreError::NotFound);
        };
        if registered >= limit {
            return Err(StoreError::QuotaReached {
                limit: limit as u64,
            });
        }
        let current = current_etag(&tx, "device", "device_id", &record.device_id)?;
        check_expect(
            &tx,
            Expect::Absent {
                limit: device_limit,
            },
            current,
            "SELECT COUNT(*) FROM device",
        )?;
        let etag = next_etag(&tx)?;
        tx.execute(
            &format!("INSERT INTO device ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            device_row(record, &(etag as i64)),
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE auto_registration SET registered = registered + 1 WHERE ca_name = ?1",
            [ca_name],
        )
        .map_err(backend)?;
        record_change(&tx, &self.node, ChangeKind::Device, &record.device_id, etag)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(DeviceRecord {
            etag,
            ..record.clone()
        })
    }

    fn get_crl(&self, ca_name: &str) -> Result<Option<CrlRecord>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT c.this_update, c.next_update, c.number, c.uploaded_at,
                    (SELECT COUNT(*) FROM revocation r WHERE r.ca_name = c.ca_name AND r.from_crl = 1)
             FROM crl c WHERE c.ca_name = ?1",
            [ca_name],
            |r| {
                Ok(CrlRecord {
                    ca_name: ca_name.to_string(),
                    this_update: r.get(0)?,
                    next_update: r.get(1)?,
                    number: r.get(2)?,
                    uploaded_at: r.get(3)?,
                    entries: r.get::<_, i64>(4)? as u64,
                })
            },
        )
        .optional()
        .map_err(backend)
    }

    fn write_enrollment(
        &self,
        record: &EnrollmentRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<EnrollmentRecord, StoreError> {
        self.write_enrollment_sql(record, expect, audit)
    }

    fn get_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.get_enrollment_sql(kind, name)
    }

    fn list_enrollments(&self, kind: EnrollmentKind) -> Result<Vec<EnrollmentRecord>, StoreError> {
        self.list_enrollments_sql(kind)
    }

    fn delete_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.delete_enrollment_sql(kind, name, etag, audit)
    }

    fn provision_device(
        &self,
        registration: &RegistrationRecord,
        device: &DeviceRecord,
        twin: Option<&TwinRecord>,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<(RegistrationRecord, bool), StoreError> {
        self.provision_device_sql(registration, device, twin, device_limit, audit)
    }

    fn get_registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        self.get_registration_sql(registration_id)
    }

    fn list_registrations(&self) -> Result<Vec<RegistrationRecord>, StoreError> {
        self.list_registrations_sql()
    }

    fn write_persistent_session(
        &self,
        device_id: &str,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(backend)?;
        let written = match subscriptions {
            None => tx.execute(
                "DELETE FROM persistent_session WHERE device_id = ?1",
                [device_id],
            ),
            // Only for a device that exists: a write racing the device's deletion must not
            // leave a row behind for an id that may later be registered afresh.
            Some(s) => tx.execute(
                "INSERT OR REPLACE INTO persistent_session (device_id, c2d, desired, methods)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM device WHERE device_id = ?1)",
                params![device_id, s.c2d, s.desired, s.methods],
            ),
        }
        .map_err(backend)?;
        if written > 0 {
            let seq = next_etag(&tx)?;
            let detail = subscriptions.unwrap_or_default().detail();
            record_change_with(
                &tx,
                &self.node,
                ChangeKind::Subscriptions,
                device_id,
                Some(&detail),
                seq,
            )?;
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        for u in updates {
            if u.connected {
                let n = tx
                    .execute(
                        "INSERT INTO presence (device_id, node, since_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (device_id) DO UPDATE SET node = excluded.node, since_ms = excluded.since_ms
                         WHERE excluded.since_ms >= presence.since_ms",
                        params![u.device_id, u.node, u.since_ms],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    let seq = next_etag(&tx)?;
                    let detail = format!("{} {}", u.node, u.since_ms);
                    let (node, id) = (&self.node, &u.device_id);
                    record_change_with(&tx, node, ChangeKind::Session, id, Some(&detail), seq)?;
                }
            } else {
                tx.execute(
                    "DELETE FROM presence WHERE device_id = ?1 AND node = ?2 AND since_ms = ?3",
                    params![u.device_id, u.node, u.since_ms],
                )
                .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn get_presence(&self, device_id: &str) -> Result<Option<Presence>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT p.node, p.since_ms, h.at_ms FROM presence p
             LEFT JOIN node_heartbeat h ON h.node = p.node WHERE p.device_id = ?1",
            [device_id],
            |r| {
                Ok(Presence {
                    node: r.get(0)?,
                    since_ms: r.get(1)?,
                    heartbeat_ms: r.get(2)?,
                })
            },
        )
        .optional()
        .map_err(backend)
    }

    fn heartbeat(&self, node: &str, now_ms: i64) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO node_heartbeat (node, at_ms) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET at_ms = MAX(at_ms, excluded.at_ms)",
            params![node, now_ms],
        )
        .map_err(backend)?;
        Ok(())
    }

    fn put_method_call(&self, call: &MethodCallRecord) -> Result<i64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute(
            "INSERT INTO method_call (device_id, target_node, name, payload, created_ms, timeout_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                call.device_id,
                call.target_node,
                call.name,
                call.payload,
                call.created_ms,
                call.timeout_ms
            ],
        )
        .map_err(backend)?;
        let id = tx.last_insert_rowid();
        let seq = next_etag(&tx)?;
        let (node, device) = (&self.node, &call.device_id);
        let detail = id.to_string();
        record_change_with(
            &tx,
            node,
            ChangeKind::MethodCall,
            device,
            Some(&detail),
            seq,
        )?;
        tx.commit().map_err(backend)?;
        Ok(id)
    }

    fn get_method_call(&self, id: i64) -> Result<Option<MethodCallRecord>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT id, device_id, target_node, name, payload, created_ms, timeout_ms FROM method_call WHERE id = ?1",
            [id],
            |r| {
                Ok(MethodCallRecord {
                    id: r.get(0)?,
                    device_id: r.get(1)?,
                    target_node: r.get(2)?,
                    name: r.get(3)?,
                    payload: r.get(4)?,
                    created_ms: r.get(5)?,
                    timeout_ms: r.get(6)?,
                })
            },
        )
        .optional()
        .map_err(backend)
    }

    fn answer_method_call(&self, id: i64, status: i32, payload: &[u8]) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "UPDATE method_call SET status = ?2, response = ?3 WHERE id = ?1 AND status IS NULL",
            params![id, status, payload],
        )
        .map_err(backend)?;
        Ok(())
    }

    fn get_method_answer(&self, id: i64) -> Result<Option<(i32, Vec<u8>)>, StoreError> {
        let conn = self.lock()?;
        let answer: Option<(Option<i32>, Option<Vec<u8>>)> = conn
            .query_row(
                "SELECT status, response FROM method_call WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        Ok(match answer {
            Some((Some(status), response)) => Some((status, response.unwrap_or_default())),
            _ => None,
        })
    }

    fn prune_method_calls(&self, before_ms: i64) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        conn.execute("DELETE FROM method_call WHERE created_ms < ?1", [before_ms])
            .map(|n| n as u64)
            .map_err(backend)
    }

    fn list_consumer_groups(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT name, created FROM consumer_group ORDER BY name")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn insert_consumer_group(
        &self,
        name: &str,
        created: i64,
        limit: u64,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let count: i64 = tx
            .query_row("SELECT COUNT(*) FROM consumer_group", [], |r| r.get(0))
            .map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO consumer_group (name, created) VALUES (?1, ?2)",
                params![name, created],
            )
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        if count as u64 >= limit {
            return Err(StoreError::LimitReached { limit });
        }
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn delete_consumer_group(&self, name: &str, audit: &NewAudit) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let deleted = tx
            .execute("DELETE FROM consumer_group WHERE name = ?1", [name])
            .map_err(backend)?;
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT value FROM hub_setting WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)
    }

    fn insert_settings_if_absent(&self, settings: &[(&str, &[u8])]) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        for (name, value) in settings {
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO hub_setting (name, value) VALUES (?1, ?2)",
                    params![name, value],
                )
                .map_err(backend)?;
            if inserted == 0 {
                // Dropping the transaction rolls back the ones inserted before.
                return Ok(false);
            }
        }
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn changes_since(&self, since: u64, limit: u32) -> Result<ChangeFeed, StoreError> {
        let conn = self.lock()?;
        let pruned: i64 = conn
            .query_row("SELECT seq FROM change_pruned WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, kind, key, detail FROM change_log WHERE seq > ?1 AND node <> ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![since as i64, self.node, limit], |r| {
                Ok(Change {
                    seq: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    key: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(backend)?;
        Ok(ChangeFeed {
            changes: rows.collect::<Result<_, _>>().map_err(backend)?,
            complete: since >= pruned as u64,
        })
    }

    fn last_change(&self) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM change_log), 0), (SELECT seq FROM change_pruned WHERE id = 1))",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)
        .map_err(backend)
    }

    fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let newest: Option<i64> = tx
            .query_row(
                "SELECT MAX(seq) FROM change_log WHERE at < ?1",
                [before],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let Some(newest) = newest else {
            return Ok(0);
        };
        let n = tx
            .execute("DELETE FROM change_log WHERE seq <= ?1", [newest])
            .map_err(backend)?;
        tx.execute(
            "UPDATE change_pruned SET seq = MAX(seq, ?1) WHERE id = 1",
            [newest],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(n as u64)
    }
}

/// The columns `message_from_row` reads, in its order.
const MESSAGE_COLUMNS: &str =
    "offset, device_id, module_id, enqueued, system_properties, properties, body, partition, sequence";

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        offset: r.get(0)?,
        sequence: r.get(8)?,
        message: NewMessage {
            partition: r.get(7)?,
            device_id: r.get(1)?,
            module_id: r.get(2)?,
            enqueued: r.get(3)?,
            system_properties: r.get(4)?,
            properties: r.get(5)?,
            body: r.get(6)?,
        },
    })
}

/// A device record as the parameters of an INSERT in `DEVICE_COLUMNS` order, with its new etag.
fn device_row<'a>(record: &'a DeviceRecord, etag: &'a i64) -> [&'a dyn rusqlite::ToSql; 13] {
    [
        &record.device_id,
        &record.generation_id,
        etag,
        &record.status,
        &record.status_reason,
        &record.status_updated,
        &record.auth_type,
        &record.primary_thumbprint,
        &record.secondary_thumbprint,
        &record.primary_key,
        &record.secondary_key,
        &record.created,
        &record.updated,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(action: &str) -> NewAudit {
        NewAudit {
            time: 1,
            actor: "t".into(),
            action: action.into(),
            target: "certificate/a".into(),
            success: true,
            code: None,
            detail: String::new(),
        }
    }

    fn rec(name: &str, thumb: &str) -> CaRecord {
        CaRecord {
            name: name.into(),
            der: vec![1, 2, 3],
            thumbprint: thumb.into(),
            is_verified: false,
            created: 10,
            updated: 10,
            etag: 0,
            code: CodeRecord::None,
        }
    }

    #[test]
    fn ca_changes_since_an_etag_are_the_later_writes_and_the_count() {
        let s = SqliteStore::open_in_memory().unwrap();
        let changes = |since: u64| {
            let mut c = s.ca_changes_since(since).unwrap();
            c.changed.sort();
            (c.changed, c.total)
        };
        let absent = Expect::Absent { limit: 10 };
        let a = s.write_ca(&rec("a", "T1"), absent, &audit("c")).unwrap();
        let b = s.write_ca(&rec("b", "T2"), absent, &audit("c")).unwrap();
        assert_eq!(
            changes(0),
            (
                vec![("a".into(), a.etag, false), ("b".into(), b.etag, false)],
                2
            )
        );
        assert_eq!(changes(b.etag), (vec![], 2));
        let verified = CaRecord {
            is_verified: true,
            ..rec("a", "T1")
        };
        let a2 = s
            .write_ca(&verified, Expect::Etag(a.etag), &audit("v"))
            .unwrap();
        assert_eq!(changes(b.etag), (vec![("a".into(), a2.etag, true)], 2));
        // A delete leaves no row: only the count tells.
        s.delete_ca("b", None, &audit("d")).unwrap();
        assert_eq!(changes(a2.etag), (vec![], 1));
        // The same as filtering the full list (the trait's default answer).
        let full = |since| {
            let all = s.list_ca_versions().unwrap();
            let total = all.len() as u64;
            let mut changed: Vec<_> = all.into_iter().filter(|(_, e, _)| *e > since).collect();
            changed.sort();
            (changed, total)
        };
        for since in [0, a.etag, b.etag, a2.etag] {
            assert_eq!(changes(since), full(since), "since {since}");
        }
    }

    #[test]
    fn preconditions_are_enforced_atomically() {
        let s = SqliteStore::open_in_memory().unwrap();
        let a = s
            .write_ca(&rec("a", "T1"), Expect::Absent { limit: 2 }, &audit("c"))
            .unwrap();
        assert_eq!(
            s.write_ca(&rec("a", "T9"), Expect::Absent { limit: 2 }, &audit("c")),
            Err(StoreError::AlreadyExists)
        );
        assert_eq!(
            s.write_ca(&rec("b", "T1"), Expect::Absent { limit: 2 }, &audit("c")),
            Err(StoreError::DuplicateThumbprint { name: "a".into() })
        );
        s.write_ca(&rec("b", "T2"), Expect::Absent { limit: 2 }, &audit("c"))
            .unwrap();
        assert_eq!(
            s.write_ca(&rec("c", "T3"), Expect::Absent { limit: 2 }, &audit("c")),
            Err(StoreError::LimitReached { limit: 2 })
        );
        assert_eq!(
            s.write_ca(&rec("a", "T1"), Expect::Etag(a.etag + 100), &audit("r")),
            Err(StoreError::EtagMismatch { current: a.etag })
        );
        let mut replaced = rec("a", "T1");
        replaced.code = CodeRecord::Live {
            code: "C0DE".into(),
            expires_at: 99,
        };
        let a2 = s
            .write_ca(&replaced, Expect::Etag(a.etag), &audit("r"))
            .unwrap();
        assert_ne!(a2.etag, a.etag);
        assert_eq!(s.get_ca("a").unwrap().unwrap(), a2);
        assert_eq!(
            s.delete_ca("a", Some(a.etag), &audit("d")),
            Err(StoreError::EtagMismatch { current: a2.etag })
        );
        s.delete_ca("a", Some(a2.etag), &audit("d")).unwrap();
        assert_eq!(
            s.delete_ca("a", None, &audit("d")),
            Err(StoreError::NotFound)
        );
        // Failed calls appended nothing: 2 creates + 1 replace + 1 delete.
        let log = s
            .list_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(log.len(), 4);
        assert_eq!(log[0].action, "d");
    }

    #[test]
    fn a_database_file_overwritten_under_the_store_fails_readiness_even_with_pages_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let s = SqliteStore::open(&path).unwrap();
        s.check_readable().unwrap();
        assert!(SqliteStore::open_in_memory()
            .unwrap()
            .check_readable()
            .is_ok());
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![0x5a; len]).unwrap();
        let e = s.check_readable().unwrap_err().to_string();
        assert!(e.contains("is not a SQLite database any more"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = s.check_readable().unwrap_err().to_string();
        assert!(e.contains("cannot read the database file"), "{e}");
    }

    #[test]
    fn code_states_round_trip_and_file_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            let mut r = rec("u", "T1");
            r.code = CodeRecord::Used { at: 5 };
            s.write_ca(&r, Expect::Absent { limit: 10 }, &audit("c"))
                .unwrap();
            assert!(s
                .insert_policy_if_absent(&PolicyRecord {
                    name: "p".into(),
                    primary_key: "k1".into(),
                    secondary_key: "k2".into(),
                    rights: vec!["RegistryRead".into(), "RegistryWrite".into()],
                })
                .unwrap());
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.get_ca("u").unwrap().unwrap().code,
            CodeRecord::Used { at: 5 }
        );
        let p = s.list_policies().unwrap();
        assert_eq!(p[0].rights, ["RegistryRead", "RegistryWrite"]);
        assert!(!s
            .insert_policy_if_absent(&PolicyRecord {
                name: "p".into(),
                primary_key: "x".into(),
                secondary_key: "y".into(),
                rights: vec![],
            })
            .unwrap());
    }

    #[test]
    fn policy_changes_check_their_precondition_and_audit_in_the_same_transaction() {
        let s = SqliteStore::open_in_memory().unwrap();
        let p = |name: &str| PolicyRecord {
            name: name.into(),
            primary_key: "k1".into(),
            secondary_key: "k2".into(),
            rights: vec!["RegistryRead".into()],
        };
        let count = |s: &SqliteStore| {
            s.list_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .len()
        };
        let create = |name: &str, limit| PolicyChange::Create {
            record: p(name),
            limit,
        };
        assert_eq!(
            s.change_policy(&create("a", 2), &audit("policy.add"))
                .unwrap(),
            Some(p("a"))
        );
        // Refusals change nothing and write no audit entry here (the service layer audits them).
        assert_eq!(
            s.change_policy(&create("a", 2), &audit("x")),
            Err(StoreError::AlreadyExists)
        );
        s.change_policy(&create("b", 2), &audit("policy.add"))
            .unwrap();
        assert_eq!(
            s.change_policy(&create("c", 2), &audit("x")),
            Err(StoreError::LimitReached { limit: 2 })
        );
        for missing in [
            PolicyChange::SetRights {
                name: "zz".into(),
                rights: vec![],
            },
            PolicyChange::SetKey {
                name: "zz".into(),
                secondary: false,
                key: "n".into(),
            },
            PolicyChange::Delete { name: "zz".into() },
        ] {
            assert_eq!(
                s.change_policy(&missing, &audit("x")),
                Err(StoreError::NotFound)
            );
        }
        assert_eq!(count(&s), 2);
        let rotated = s
            .change_policy(
                &PolicyChange::SetKey {
                    name: "a".into(),
                    secondary: true,
                    key: "new".into(),
                },
                &audit("policy.rotateKey"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (rotated.primary_key.as_str(), rotated.secondary_key.as_str()),
            ("k1", "new")
        );
        let changed = s
            .change_policy(
                &PolicyChange::SetRights {
                    name: "a".into(),
                    rights: vec!["RegistryRead".into(), "ServiceConnect".into()],
                },
                &audit("policy.update"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(changed.rights, ["RegistryRead", "ServiceConnect"]);
        assert_eq!(changed.secondary_key, "new");
        assert_eq!(
            s.change_policy(
                &PolicyChange::Delete { name: "a".into() },
                &audit("policy.delete")
            )
            .unwrap(),
            None
        );
        assert_eq!(s.list_policies().unwrap(), vec![p("b")]);
        assert_eq!(count(&s), 5);
    }

    #[test]
    fn audit_paging_and_filter() {
        let s = SqliteStore::open_in_memory().unwrap();
        for i in 0..5 {
            let mut a = audit("x");
            a.target = format!("certificate/{}", i % 2);
            s.append_audit(&a).unwrap();
        }
        let page = s
            .list_audit(&AuditQuery {
                target: Some("certificate/0".into()),
                before: None,
                limit: 2,
            })
            .unwrap();
        assert_eq!(page.len(), 2);
        let rest = s
            .list_audit(&AuditQuery {
                target: Some("certificate/0".into()),
                before: Some(page[1].id),
                limit: 10,
            })
            .unwrap();
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn text_columns_read_back_as_written_and_refuse_other_text() {
        let s = SqliteStore::open_in_memory().unwrap();
        let conn = s.lock().unwrap();
        for status in DeviceStatus::ALL {
            let back: DeviceStatus = conn.query_row("SELECT ?1", [status], |r| r.get(0)).unwrap();
            assert_eq!(back, *status);
        }
        for auth in AuthType::ALL {
            let back: AuthType = conn.query_row("SELECT ?1", [auth], |r| r.get(0)).unwrap();
            assert_eq!(back, *auth);
        }
        for state in C2dState::ALL {
            let back: C2dState = conn.query_row("SELECT ?1", [state], |r| r.get(0)).unwrap();
            assert_eq!(back, *state);
        }
        let unknown = conn.query_row("SELECT 'Enabled'", [], |r| r.get::<_, DeviceStatus>(0));
        assert!(unknown.is_err(), "the text is compared exactly");
    }

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: id.into(),
            generation_id: "g".into(),
            etag: 0,
            status: DeviceStatus::Enabled,
            status_reason: None,
            status_updated: 1,
            auth_type: AuthType::CertificateAuthority,
            primary_thumbprint: None,
            secondary_thumbprint: None,
            primary_key: None,
            secondary_key: None,
            created: 1,
            updated: 1,
        }
    }

    #[test]
    fn a_device_batch_writes_exactly_the_rows_that_pass_in_one_transaction() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.write_device(&device("old"), Expect::Absent { limit: 10 }, &audit("put"))
            .unwrap();
        let audits_before = s
            .list_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .len();
        // An existing id, a duplicate inside the batch, and rows past the limit (4 devices).
        let rows: Vec<(DeviceRecord, NewAudit)> = ["a", "old", "b", "a", "c", "d"]
            .iter()
            .map(|id| (device(id), audit("import")))
            .collect();
        let answers = s.create_devices(&rows, 4).unwrap();
        let landed: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().map(|r| r.device_id.as_str()))
            .collect();
        assert_eq!(landed, ["a", "b", "c"]);
        assert!(matches!(answers[1], Err(StoreError::AlreadyExists)));
        assert!(matches!(answers[3], Err(StoreError::AlreadyExists)));
        assert!(matches!(
            answers[5],
            Err(StoreError::LimitReached { limit: 4 })
        ));
        // Each row written whole: its own etag, and one audit entry per row that landed only.
        let etags: Vec<u64> = answers.iter().flatten().map(|r| r.etag).collect();
        assert!(etags.windows(2).all(|w| w[0] < w[1]), "{etags:?}");
        assert_eq!(s.get_device("c").unwrap().unwrap().etag, etags[2]);
        assert!(s.get_device("d").unwrap().is_none());
        let audits = s
            .list_audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .len();
        assert_eq!(audits, audits_before + 3);
        // A full registry: every row refused, nothing written.
        let answers = s
            .create_devices(&[(device("e"), audit("import"))], 4)
            .unwrap();
        assert!(matches!(
            answers[0],
            Err(StoreError::LimitReached { limit: 4 })
        ));
        assert!(s.get_device("e").unwrap().is_none());
    }

    fn msg(device: &str, enqueued: i64) -> NewMessage {
        NewMessage {
            partition: 0,
            device_id: device.into(),
            module_id: None,
            enqueued,
            system_properties: "{}".into(),
            properties: "{}".into(),
            body: b"x".to_vec(),
        }
    }

    #[test]
    fn message_offsets_stay_monotonic_across_pruning() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert_eq!(s.last_message_offset().unwrap(), 0);
        let first = s
            .append_messages(&[msg("a", 10), msg("b", 20), msg("a", 30)])
            .unwrap();
        assert_eq!(first, [1, 2, 3]);
        assert_eq!(s.read_messages(1, Some("a"), 10).unwrap().len(), 2);
        assert_eq!(s.read_messages(3, None, 10).unwrap()[0].offset, 3);
        assert_eq!(s.prune_messages(25).unwrap(), 2);
        assert_eq!(s.read_messages(1, None, 10).unwrap().len(), 1);
        // Pruning everything must not let offsets restart: consumers hold offsets.
        assert_eq!(s.prune_messages(100).unwrap(), 1);
        assert_eq!(s.last_message_offset().unwrap(), 3);
        assert_eq!(s.append_messages(&[msg("a", 40)]).unwrap(), [4]);
    }

    #[test]
    fn c2d_queue_limit_expiry_and_delivery() {
        let s = SqliteStore::open_in_memory().unwrap();
        let c2d = |expiry: i64| C2dRecord {
            id: 0,
            device_id: "d".into(),
            message_id: "m".into(),
            properties: "{}".into(),
            body: vec![],
            created: 100,
            expiry,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 0,
            ack: C2dAck::None,
        };
        assert_eq!(s.enqueue_c2d(&c2d(200), 2), Err(StoreError::NotFound));
        s.write_device(&device("d"), Expect::Absent { limit: 10 }, &audit("c"))
            .unwrap();
        let a = s.enqueue_c2d(&c2d(200), 2).unwrap();
        let b = s.enqueue_c2d(&c2d(150), 2).unwrap();
        assert_eq!(
            s.enqueue_c2d(&c2d(300), 2),
            Err(StoreError::LimitReached { limit: 2 })
        );
        assert_eq!(s.count_pending_c2d("d", 100).unwrap(), 2);
        // At 160, b has expired: no longer pending (nor counted), and marked so.
        let pending = s.pending_c2d("d", 160).unwrap();
        assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), [a.id]);
        assert_eq!(s.count_pending_c2d("d", 160).unwrap(), 1);
        assert_eq!(
            s.expire_c2d(Some("d"), 160, &FeedbackWrite::NONE).unwrap(),
            1
        );
        s.count_c2d_attempt(a.id).unwrap();
        s.mark_c2d_delivered(a.id, 170, &FeedbackWrite::NONE)
            .unwrap();
        let list = s.list_c2d("d", 10).unwrap();
        let state = |id| list.iter().find(|m| m.id == id).unwrap().clone();
        assert_eq!(state(a.id).state, "delivered");
        assert_eq!(state(a.id).delivery_count, 1);
        assert_eq!(state(b.id).state, "expired");
        // Deleting the device removes its queue and activity.
        s.update_device_activity(
            "d",
            &DeviceActivity {
                last_refusal: Some("r".into()),
                ..Default::default()
            },
        )
        .unwrap();
        s.delete_device("d", None, &audit("d")).unwrap();
        assert!(s.list_c2d("d", 10).unwrap().is_empty());
        assert_eq!(
            s.get_device_activity("d").unwrap(),
            DeviceActivity::default()
        );
    }

    #[test]
    fn device_activity_updates_merge() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.update_device_activity(
            "d",
            &DeviceActivity {
                last_connected: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        s.update_device_activity(
            "d",
            &DeviceActivity {
                last_refusal: Some("why".into()),
                last_refusal_time: Some(6),
                ..Default::default()
            },
        )
        .unwrap();
        let a = s.get_device_activity("d").unwrap();
        assert_eq!(a.last_connected, Some(5));
        assert_eq!(a.last_refusal.as_deref(), Some("why"));
        let page = {
            for id in ["b", "a", "c"] {
                s.write_device(&device(id), Expect::Absent { limit: 10 }, &audit("c"))
                    .unwrap();
            }
            s.list_devices(Some("a"), 1).unwrap()
        };
        assert_eq!(page[0].device_id, "b");
    }

    #[test]
    fn the_ca_reads_of_a_trust_rebuild_use_indexes_alone() {
        let s = SqliteStore::open_in_memory().unwrap();
        let conn = s.lock().unwrap();
        let plan = |query: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                .unwrap()
                .query_map(params, |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            plan(CA_VERSIONS_QUERY, &[]),
            vec!["SCAN ca_certificate USING COVERING INDEX ca_version"]
        );
        assert_eq!(
            plan(CA_CHANGES_QUERY, &[&0i64]),
            vec!["SEARCH ca_certificate USING COVERING INDEX ca_etag (etag>?)"]
        );
    }

    #[test]
    fn a_version_3_database_loses_only_the_unused_message_index() {
        let dir = std::env::temp_dir().join(format!("iothub-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v3.db");
        {
            // The database as the previous release left it: migrations 1 to 3, with messages.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO message (device_id, module_id, enqueued, system_properties, properties, body)
                 VALUES ('old', NULL, 1, '{}', '{}', x'01')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let conn = s.lock().unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'message'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // message_partition came with the partitioned log (migration 10).
        assert_eq!(indexes, ["message_enqueued", "message_partition"]);
        drop(conn);
        // Reads by device still work (they never used the index), and offsets go on.
        let offsets = s
            .append_messages(&[msg("a", 2), msg("b", 3), msg("a", 4)])
            .unwrap();
        assert_eq!(offsets, vec![2, 3, 4]);
        let of_a: Vec<i64> = s
            .read_messages(1, Some("a"), 10)
            .unwrap()
            .iter()
            .map(|m| m.offset)
            .collect();
        assert_eq!(of_a, vec![2, 4]);
        assert_eq!(s.read_messages(1, Some("old"), 10).unwrap().len(), 1);
        assert_eq!(s.read_messages(1, None, 10).unwrap().len(), 4);
        // The message from before partitions is partition 0's first; new ones follow it.
        let p0: Vec<(i64, i64)> = s
            .read_partition(0, 1, 10)
            .unwrap()
            .iter()
            .map(|m| (m.sequence, m.offset))
            .collect();
        assert_eq!(p0, [(1, 1), (2, 2), (3, 3), (4, 4)]);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
