//! The store interface of iothub, and its embedded SQLite implementation.
//!
//! Why one narrow trait: the service layer must not know which database it talks to. SQLite serves
//! a single-node hub today; a PostgreSQL implementation for multi-node hubs can implement the same
//! trait later. The trait is shaped so that every rule that needs atomicity (an etag precondition,
//! the CA limit, thumbprint uniqueness, "the audit entry is written with the change") is one call,
//! executed as one transaction by the backend, never a read-then-write race in the caller.

mod sqlite;

pub use sqlite::SqliteStore;

/// A registered CA certificate as stored. Facts derived from the DER (subject, expiry, ...) are
/// recomputed by the service layer; only what is needed to query is stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub name: String,
    pub der: Vec<u8>,
    /// SHA-1 thumbprint, 40 uppercase hex: unique across all CAs.
    pub thumbprint: String,
    pub is_verified: bool,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    /// Changes on every mutation; assigned by the store, unique across the whole store.
    pub etag: u64,
    pub code: CodeRecord,
}

/// The verification-code state of a CA, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CodeRecord {
    #[default]
    None,
    Live {
        code: String,
        expires_at: i64,
    },
    Used {
        at: i64,
    },
}

/// The precondition of a CA write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create: no CA of that name exists, and fewer than `limit` CAs exist.
    Absent { limit: u64 },
    /// Replace: the CA exists and its etag is this one.
    Etag(u64),
}

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub time: i64,
    /// The credential that acted (a policy name), or "system".
    pub actor: String,
    /// e.g. "certificate.create", "certificate.verify".
    pub action: String,
    /// e.g. "certificate/root".
    pub target: String,
    pub success: bool,
    /// The stable error code on failure.
    pub code: Option<String>,
    /// The precise outcome or reason, for people.
    pub detail: String,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub success: bool,
    pub code: Option<String>,
    pub detail: String,
}

/// Which audit entries to list: newest first, at most `limit`, optionally only for one target and
/// only older than entry `before`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    pub target: Option<String>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// A shared access policy: a named pair of keys with rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub name: String,
    pub primary_key: String,
    pub secondary_key: String,
    /// Rights such as "RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect".
    pub rights: Vec<String>,
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("etag mismatch: the current etag is {current}")]
    EtagMismatch { current: u64 },
    #[error("the limit of {limit} records is reached")]
    LimitReached { limit: u64 },
    #[error("the same certificate is registered as '{name}'")]
    DuplicateThumbprint { name: String },
    #[error("storage failure: {0}")]
    Backend(String),
}

/// The one interface between the service layer and storage. Every call is atomic.
pub trait Store: Send + Sync + 'static {
    fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError>;
    /// All CAs, ordered by name.
    fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError>;
    /// Creates or replaces the CA `record.name` under `expect`, assigns it a new etag, and appends
    /// `audit`, all in one transaction. `record.etag` is ignored. Returns the stored record.
    fn write_ca(
        &self,
        record: &CaRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<CaRecord, StoreError>;
    /// Deletes the CA `name` if its etag is `etag` (any etag when None), appending `audit` in the
    /// same transaction.
    fn delete_ca(&self, name: &str, etag: Option<u64>, audit: &NewAudit) -> Result<(), StoreError>;
    /// Appends an audit entry on its own (for refusals, which change nothing else).
    fn append_audit(&self, audit: &NewAudit) -> Result<(), StoreError>;
    fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;
    /// Inserts a policy unless one of that name exists; returns whether it was inserted.
    fn insert_policy_if_absent(&self, policy: &PolicyRecord) -> Result<bool, StoreError>;
}
