//! SQLite implementation of [`Store`]: one connection behind a mutex, WAL journal with
//! `synchronous=FULL` so that a write is on disk before the call returns (an acknowledged write
//! survives `kill -9` and power loss), and numbered schema migrations.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    AuditEntry, AuditQuery, CaRecord, CodeRecord, Expect, NewAudit, PolicyRecord, Store, StoreError,
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
];

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
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
        })
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

fn next_etag(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row(
        "UPDATE etag_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .map_err(backend)
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
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag FROM ca_certificate WHERE name = ?1",
                [&record.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        match (expect, current) {
            (Expect::Absent { .. }, Some(_)) => return Err(StoreError::AlreadyExists),
            (Expect::Absent { limit }, None) => {
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM ca_certificate", [], |r| r.get(0))
                    .map_err(backend)?;
                if count as u64 >= limit {
                    return Err(StoreError::LimitReached { limit });
                }
            }
            (Expect::Etag(_), None) => return Err(StoreError::NotFound),
            (Expect::Etag(want), Some(have)) if want != have as u64 => {
                return Err(StoreError::EtagMismatch {
                    current: have as u64,
                })
            }
            (Expect::Etag(_), Some(_)) => {}
        }
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
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag FROM ca_certificate WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        match (current, etag) {
            (None, _) => return Err(StoreError::NotFound),
            (Some(have), Some(want)) if have as u64 != want => {
                return Err(StoreError::EtagMismatch {
                    current: have as u64,
                })
            }
            _ => {}
        }
        tx.execute("DELETE FROM ca_certificate WHERE name = ?1", [name])
            .map_err(backend)?;
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
        let rows = stmt
            .query_map([], |r| {
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
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn insert_policy_if_absent(&self, p: &PolicyRecord) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO policy (name, primary_key, secondary_key, rights) VALUES (?1, ?2, ?3, ?4)",
                params![p.name, p.primary_key, p.secondary_key, p.rights.join(",")],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }
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
}
