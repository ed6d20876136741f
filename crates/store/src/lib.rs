//! The store interface of iothub, and its embedded SQLite implementation.
//!
//! Why one narrow trait: the service layer must not know which database it talks to. SQLite serves
//! a single-node hub today; a PostgreSQL implementation for multi-node hubs can implement the same
//! trait later. The trait is shaped so that every rule that needs atomicity (an etag precondition,
//! the CA limit, thumbprint uniqueness, "the audit entry is written with the change") is one call,
//! executed as one transaction by the backend, never a read-then-write race in the caller.

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, LOCAL_NODE};

/// What changed among the CAs since a given etag (see [`Store::ca_changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaChanges {
    /// (name, etag, is_verified) of every CA written with a higher etag, in no particular order.
    pub changed: Vec<(String, u64, bool)>,
    /// How many CAs there are, counted in the same read. Deleted CAs leave no row: a count below
    /// what the reader knew plus the new names it got is how it learns that some were deleted.
    pub total: u64,
}

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

/// A change to the shared access policies, applied by [`Store::change_policy`] in one transaction
/// that checks its precondition and appends the audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// Create `record`: no policy of that name exists and fewer than `limit` policies exist.
    Create { record: PolicyRecord, limit: u64 },
    /// Replace the rights of an existing policy (its keys stay).
    SetRights { name: String, rights: Vec<String> },
    /// Replace one key of an existing policy (`secondary`: the secondary key, else the primary).
    SetKey {
        name: String,
        secondary: bool,
        key: String,
    },
    /// Delete an existing policy.
    Delete { name: String },
}

/// Declares a closed set of values the store keeps in a text column. Each variant's text is
/// written once, in the declaration, and both directions (`as_str`, `parse`) come from that one
/// list, so the store's columns, the hub's rules and the API's JSON cannot drift apart.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text stored and shown (Azure's spelling).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose text is exactly `text` (case matters, as in Azure's JSON).
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// A stored value checked against its documented text (tests); rules match variants.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

text_enum! {
    /// Whether a device may connect.
    pub enum DeviceStatus {
        Enabled = "enabled",
        Disabled = "disabled",
    }
}

text_enum! {
    /// How a device authenticates, as its record names it.
    pub enum AuthType {
        /// An X.509 chain to a Verified CA, leaf CN = device id.
        CertificateAuthority = "certificateAuthority",
        /// An X.509 certificate with a registered thumbprint.
        SelfSigned = "selfSigned",
        /// A SAS token signed with one of the device's keys.
        Sas = "sas",
        /// Azure's type of a device without credentials: it cannot connect, and the hub never
        /// writes it (a record holding it came from elsewhere).
        None = "none",
    }
}

text_enum! {
    /// Where a cloud-to-device message stands.
    pub enum C2dState {
        /// Waiting for the device's PUBACK (re-sent on every new session).
        Queued = "queued",
        /// Acknowledged by the device.
        Delivered = "delivered",
        /// Its time to live passed before the device acknowledged it.
        Expired = "expired",
    }
}

text_enum! {
    /// Which outcomes of a cloud-to-device message the sender asked to hear about
    /// (`iothub-ack`).
    #[derive(Default)]
    pub enum C2dAck {
        /// No feedback (the default).
        #[default]
        None = "none",
        /// Feedback when the device completes the message.
        Positive = "positive",
        /// Feedback when the message expires undelivered.
        Negative = "negative",
        /// Both.
        Full = "full",
    }
}

text_enum! {
    /// The outcome a feedback record reports (Azure's `statusCode`).
    pub enum FeedbackStatus {
        /// The device completed the message.
        Success = "Success",
        /// The message's time to live passed before the device completed it.
        Expired = "Expired",
    }
}

text_enum! {
    /// What a recorded change touched: what the other nodes of a cluster must refresh.
    pub enum ChangeKind {
        /// A CA was created, replaced, verified or deleted (key: its name).
        Ca = "ca",
        /// A device was created, changed or deleted (key: its id).
        Device = "device",
        /// A device twin's desired properties changed (key: the device id).
        Desired = "desired",
        /// A cloud-to-device message was queued (key: the device id).
        C2d = "c2d",
        /// A shared access policy was created, changed or deleted (key: its name).
        Policy = "policy",
        /// A device connected to a node (key: the device id; detail: "NODE SINCE_MS").
        Session = "session",
        /// A direct-method call waits for the node holding the device (key: the device id;
        /// detail: the call's id).
        MethodCall = "method_call",
        /// A CA's revoked certificates changed (key: the CA's name).
        Revocation = "revocation",
        /// A CA's auto-registration was turned on, off or changed (key: the CA's name).
        AutoRegistration = "auto_registration",
        /// A device's persistent-session subscriptions changed (key: the device id; detail:
        /// [`Subscriptions::detail`], none when the session was forgotten).
        Subscriptions = "subscriptions",
    }
}

/// Which node holds a device's session, as [`Store::get_presence`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub node: String,
    /// When the session began, Unix milliseconds (the node's clock).
    pub since_ms: i64,
    /// The holding node's last heartbeat, Unix milliseconds; None if it never sent one.
    pub heartbeat_ms: Option<i64>,
}

/// A change of presence a node records: a session of `device_id` on `node` began (`connected`)
/// or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    pub device_id: String,
    pub node: String,
    pub since_ms: i64,
    pub connected: bool,
}

/// A direct-method call handed from the node that took it to the node holding the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodCallRecord {
    /// Assigned by the store.
    pub id: i64,
    pub device_id: String,
    /// The node that holds the device's session.
    pub target_node: String,
    pub name: String,
    /// The JSON payload, as bytes.
    pub payload: Vec<u8>,
    /// Unix milliseconds; the call is over at `created_ms + timeout_ms`.
    pub created_ms: i64,
    pub timeout_ms: i64,
}

/// One change recorded by a store write, for the other nodes sharing the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Commit-ordered: a reader that saw `seq` saw every change below it.
    pub seq: u64,
    pub kind: ChangeKind,
    pub key: String,
    /// What the other nodes need besides the key: a `Desired` change's patch.
    pub detail: Option<String>,
}

/// The changes other nodes made after a point, as [`Store::changes_since`] reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeFeed {
    /// Oldest first.
    pub changes: Vec<Change>,
    /// False when changes after the point asked for were already pruned: the reader must
    /// refresh everything it keeps, as at start.
    pub complete: bool,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub generation_id: String,
    pub etag: u64,
    pub status: DeviceStatus,
    pub status_reason: Option<String>,
    pub status_updated: i64,
    pub auth_type: AuthType,
    pub primary_thumbprint: Option<String>,
    pub secondary_thumbprint: Option<String>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub created: i64,
    pub updated: i64,
}

/// Connection facts of a device, kept apart from the record so that they never change its etag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceActivity {
    pub last_activity: Option<i64>,
    pub last_connected: Option<i64>,
    pub last_refusal: Option<String>,
    pub last_refusal_time: Option<i64>,
    /// The notAfter of the certificate the device last connected with (Unix seconds).
    pub certificate_not_after: Option<i64>,
}

/// A device-to-cloud message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The partition of the telemetry log it goes to (the hub derives it from the device id).
    pub partition: u32,
    pub device_id: String,
    pub module_id: Option<String>,
    pub enqueued: i64,
    /// JSON object of system properties (`$.mid` etc.), as text.
    pub system_properties: String,
    /// JSON object of application properties, as text.
    pub properties: String,
    pub body: Vec<u8>,
}

/// A stored device-to-cloud message with its offset (monotonic across the whole log, starting
/// at 1) and its sequence number within its partition (starting at 1, without gaps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: i64,
    pub sequence: i64,
    pub message: NewMessage,
}

/// A cloud-to-device message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dRecord {
    pub id: i64,
    pub device_id: String,
    pub message_id: String,
    /// JSON object of properties, as text.
    pub properties: String,
    pub body: Vec<u8>,
    pub created: i64,
    pub expiry: i64,
    pub state: C2dState,
    pub delivered_at: Option<i64>,
    pub delivery_count: i64,
    /// The outcomes the sender asked feedback for.
    pub ack: C2dAck,
}

/// What a message's outcome writes to the feedback queue, for each message whose `ack` is one of
/// `wanted_by` (the hub decides which acks want which outcome; the store writes the record in
/// the same transaction as the outcome, so a feedback record is never lost nor written twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackWrite<'a> {
    pub wanted_by: &'a [C2dAck],
    pub status: FeedbackStatus,
    pub description: &'a str,
}

impl FeedbackWrite<'static> {
    /// No message wants this outcome reported.
    pub const NONE: FeedbackWrite<'static> = FeedbackWrite {
        wanted_by: &[],
        status: FeedbackStatus::Success,
        description: "",
    };
}

/// One record of the feedback queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRecord {
    pub id: i64,
    pub original_message_id: String,
    pub device_id: String,
    /// The device's generation id when the outcome happened ("" if it was deleted by then).
    pub device_generation_id: String,
    pub status: FeedbackStatus,
    pub description: String,
    /// When the outcome happened (Unix seconds).
    pub enqueued: i64,
    /// How many times a reader has taken it (this take included).
    pub delivery_count: i64,
}

/// The feedback queue's rules for one take: what is too old or taken too often is dropped, the
/// rest up to `max` is locked under `token` until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackTake<'a> {
    pub token: &'a str,
    pub now: i64,
    pub until: i64,
    pub max: u32,
    /// Records enqueued before this are dropped (the queue's time to live).
    pub oldest: i64,
    /// Records taken this many times already are dropped.
    pub max_deliveries: u32,
}

/// How a reader settles the feedback it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackSettle {
    /// Done with: the records are deleted.
    Complete,
    /// Given back: the records can be taken again at once.
    Abandon,
    /// Never handed to the reader (its transport could not deliver them): given back, and this
    /// take is not counted against the records' deliveries.
    Release,
}

/// A device twin: JSON documents stored as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinRecord {
    pub device_id: String,
    pub etag: u64,
    pub tags: String,
    pub desired: String,
    pub desired_metadata: String,
    pub desired_version: i64,
    pub reported: String,
    pub reported_metadata: String,
    pub reported_version: i64,
}

impl TwinRecord {
    /// The twin of a device that has none stored yet.
    pub fn empty(device_id: &str) -> TwinRecord {
        TwinRecord {
            device_id: device_id.to_string(),
            etag: 0,
            tags: "{}".into(),
            desired: "{}".into(),
            desired_metadata: "{}".into(),
            desired_version: 1,
            reported: "{}".into(),
            reported_metadata: "{}".into(),
            reported_version: 1,
        }
    }
}

/// What a device's persistent MQTT session (CleanSession=0) is subscribed to: kept across the
/// device's connections and across restarts of the hub (the Azure device SDK subscribes once and
/// relies on the session to persist).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// `devices/{id}/messages/devicebound/#`
    pub c2d: bool,
    /// `$iothub/twin/PATCH/properties/desired/#`
    pub desired: bool,
    /// `$iothub/methods/POST/#`
    pub methods: bool,
}

impl Subscriptions {
    /// The subscriptions as a change's detail: the names of those held, space-separated (an
    /// empty text for none), so the other nodes of a cluster learn them without a read.
    pub fn detail(&self) -> String {
        [
            (self.c2d, "c2d"),
            (self.desired, "desired"),
            (self.methods, "methods"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Reads [`Subscriptions::detail`] back; None for a word it does not know.
    pub fn from_detail(detail: &str) -> Option<Subscriptions> {
        let mut s = Subscriptions::default();
        for word in detail.split_whitespace() {
            match word {
                "c2d" => s.c2d = true,
                "desired" => s.desired = true,
                "methods" => s.methods = true,
                _ => return None,
            }
        }
        Some(s)
    }
}

/// A certificate revoked by a registered CA: the one that CA issued with `serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    pub ca_name: String,
    /// Upper-case hex without leading zeros (the service layer normalizes it).
    pub serial: String,
    /// RFC 5280's reason name, e.g. `keyCompromise`.
    pub reason: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// From the CA's uploaded CRL (replaced with the next CRL), not by an operator's revoke.
    pub from_crl: bool,
}

/// A CA whose devices are registered at their first CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRegistration {
    pub ca_name: String,
    /// At most this many devices may be registered through it.
    pub device_limit: u64,
    /// How many it registered so far.
    pub registered: u64,
}

text_enum! {
    /// How a provisioning client is enrolled.
    pub enum EnrollmentKind {
        /// Any device whose chain ends at the group's CA.
        Group = "group",
        /// One device, by its certificate.
        Individual = "individual",
    }
}

/// An enrollment of the provisioning service: who may register through it, and what a device
/// registered through it starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    pub kind: EnrollmentKind,
    /// The group's name, or the individual enrollment's registration id.
    pub name: String,
    /// Group: the CA its devices' chains must end at.
    pub ca_name: Option<String>,
    /// Individual: the enrolled certificate (DER) and its SHA-256 thumbprint (unique among
    /// enrollments).
    pub certificate: Option<Vec<u8>>,
    pub thumbprint: Option<String>,
    /// The twin a device registered through it starts with, as JSON
    /// (`{"tags": {...}, "properties": {"desired": {...}}}`).
    pub initial_twin: Option<String>,
    pub enabled: bool,
    pub etag: u64,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
}

/// A provisioning client's registration: the device it was assigned and through which
/// enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRecord {
    pub registration_id: String,
    pub device_id: String,
    pub enrollment_kind: EnrollmentKind,
    pub enrollment_name: String,
    /// The operation id the client polls with.
    pub operation_id: String,
    pub etag: u64,
    /// Unix seconds: the first registration and the latest.
    pub created: i64,
    pub updated: i64,
}

/// The CRL held for a CA (its revoked serials are [`RevocationRecord`]s with `from_crl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub ca_name: String,
    /// thisUpdate and nextUpdate, Unix seconds.
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// The cRLNumber, hex.
    pub number: Option<String>,
    /// How many certificates it revokes.
    pub entries: u64,
    /// When it was uploaded, Unix seconds.
    pub uploaded_at: i64,
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
    /// A per-CA quota (auto-registration's device limit) is reached.
    #[error("the quota of {limit} is reached")]
    QuotaReached { limit: u64 },
    #[error("the same certificate is registered as '{name}'")]
    DuplicateThumbprint { name: String },
    #[error("storage failure: {0}")]
    Backend(String),
    /// The store cannot be reached (its database is down, restarting or unreachable): nothing
    /// was written, and the same call may succeed once it is back.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// The one interface between the service layer and storage. Every call is atomic.
pub trait Store: Send + Sync + 'static {
    fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError>;
    /// All CAs, ordered by name.
    fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError>;
    /// (name, etag, is_verified) of every CA, ordered by name: what a trust rebuild reads to find
    /// what changed without loading every certificate.
    fn list_ca_versions(&self) -> Result<Vec<(String, u64, bool)>, StoreError> {
        Ok(self
            .list_cas()?
            .into_iter()
            .map(|r| (r.name, r.etag, r.is_verified))
            .collect())
    }
    /// The CAs written since etag `since`, and how many CAs there are, from one consistent read:
    /// what a trust rebuild reads to learn what changed without listing every CA. It relies on
    /// etags being assigned in commit order (SQLite has one writer at a time), so that a read
    /// that saw etag E also saw every write below E.
    fn ca_changes_since(&self, since: u64) -> Result<CaChanges, StoreError> {
        let all = self.list_ca_versions()?;
        Ok(CaChanges {
            total: all.len() as u64,
            changed: all
                .into_iter()
                .filter(|(_, etag, _)| *etag > since)
                .collect(),
        })
    }
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
    /// Applies `change` and appends `audit` in one transaction: `AlreadyExists` or `LimitReached`
    /// for a create, `NotFound` when the policy to change is missing. Returns the policy as
    /// stored afterwards (None after a delete).
    fn change_policy(
        &self,
        change: &PolicyChange,
        audit: &NewAudit,
    ) -> Result<Option<PolicyRecord>, StoreError>;

    fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// How many devices are registered, and how many of them are enabled.
    fn count_devices(&self) -> Result<(u64, u64), StoreError>;
    /// Devices ordered by id, after `after` (exclusive), at most `limit`.
    fn list_devices(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError>;
    /// The devices whose last certificate (`DeviceActivity::certificate_not_after`) expires
    /// before `before` (Unix seconds), soonest first, at most `limit`: (device id, notAfter).
    fn list_expiring_devices(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// Creates or replaces a device under `expect`, assigning a new etag, with `audit`.
    fn write_device(
        &self,
        record: &DeviceRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError>;
    /// Creates new devices in ONE transaction (bulk import). Each row is checked as `write_device`
    /// with `Expect::Absent { limit }` (not existing, fewer than `limit` devices counting the rows
    /// written before it) and written with its audit entry; a row that fails its check is skipped
    /// and answered with its reason, the others commit together. A row is never partly written,
    /// and an error of the call itself (`Err`) means no row landed.
    fn create_devices(
        &self,
        rows: &[(DeviceRecord, NewAudit)],
        limit: u64,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError>;
    /// Deletes a device (and its queued cloud-to-device messages) if its etag matches.
    fn delete_device(
        &self,
        device_id: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    fn get_device_activity(&self, device_id: &str) -> Result<DeviceActivity, StoreError>;
    /// Records connection facts; a None field is left as it is.
    fn update_device_activity(
        &self,
        device_id: &str,
        update: &DeviceActivity,
    ) -> Result<(), StoreError>;
    /// Records the connection facts of many devices in one transaction; devices that no longer
    /// exist are skipped.
    fn update_device_activities(
        &self,
        updates: &[(String, DeviceActivity)],
    ) -> Result<(), StoreError>;

    /// Appends messages in one transaction (durable when it returns); returns their offsets.
    fn append_messages(&self, messages: &[NewMessage]) -> Result<Vec<i64>, StoreError>;
    /// Messages with offset >= `from`, optionally of one device, at most `limit`.
    fn read_messages(
        &self,
        from: i64,
        device_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Messages of one partition with sequence number >= `from`, in order, at most `limit`.
    fn read_partition(
        &self,
        partition: u32,
        from: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The last sequence number given in each partition that has one: (partition, sequence).
    fn partition_ends(&self) -> Result<Vec<(u32, i64)>, StoreError>;
    /// The highest offset stored (0 when none).
    fn last_message_offset(&self) -> Result<i64, StoreError>;
    /// Whether the store serves reads now (the hub's readiness): by default, one read.
    fn check_readable(&self) -> Result<(), StoreError> {
        self.last_message_offset().map(|_| ())
    }
    /// Deletes messages enqueued before `before`; returns how many.
    fn prune_messages(&self, before: i64) -> Result<u64, StoreError>;

    /// Queues a cloud-to-device message unless the device has `max_pending` queued already.
    fn enqueue_c2d(&self, record: &C2dRecord, max_pending: u32) -> Result<C2dRecord, StoreError>;
    /// Messages of a device, newest first, at most `limit`.
    fn list_c2d(&self, device_id: &str, limit: u32) -> Result<Vec<C2dRecord>, StoreError>;
    /// Queued messages of a device not expired at `now`, oldest first (read-only).
    fn pending_c2d(&self, device_id: &str, now: i64) -> Result<Vec<C2dRecord>, StoreError>;
    /// Marks the queued messages whose expiry is at or before `now` "expired" (of one device, or
    /// of every device when `device_id` is None), writing `feedback` for those that want it;
    /// returns how many it marked.
    fn expire_c2d(
        &self,
        device_id: Option<&str>,
        now: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<u64, StoreError>;
    /// How many messages of a device are queued and not expired at `now` (read-only).
    fn count_pending_c2d(&self, device_id: &str, now: i64) -> Result<u64, StoreError>;
    /// Marks a queued message delivered (the device acknowledged it), writing `feedback` if the
    /// message wants it; a message not queued (delivered or expired before) is left alone.
    fn mark_c2d_delivered(
        &self,
        id: i64,
        at: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<(), StoreError>;
    /// Takes feedback records by the rules of `take` (oldest first); none when the queue is empty.
    fn take_feedback(&self, take: &FeedbackTake<'_>) -> Result<Vec<FeedbackRecord>, StoreError>;
    /// Completes or abandons the records locked under `token` whose lock has not run out at
    /// `now`; returns how many (0: the token is unknown or its lock ran out).
    fn settle_feedback(
        &self,
        token: &str,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError>;
    /// Counts a delivery attempt.
    fn count_c2d_attempt(&self, id: i64) -> Result<(), StoreError>;

    /// The twin of a device (an empty one if none was written); NotFound if the device does not exist.
    fn get_twin(&self, device_id: &str) -> Result<TwinRecord, StoreError>;
    /// Writes a twin if its current etag is `expected` (any when None); assigns a new etag.
    /// `desired_patch`: when the desired properties changed, the patch their device must receive
    /// wherever it is connected (recorded in the change feed with the write).
    fn write_twin(
        &self,
        twin: &TwinRecord,
        expected: Option<u64>,
        desired_patch: Option<&str>,
    ) -> Result<TwinRecord, StoreError>;

    /// The changes made by other nodes (every node but the one this store handle is for) with
    /// `seq` above `since`, oldest first, at most `limit`.
    fn changes_since(&self, since: u64, limit: u32) -> Result<ChangeFeed, StoreError>;
    /// The highest change sequence so far (0 when none): where a node starts following.
    fn last_change(&self) -> Result<u64, StoreError>;
    /// Drops recorded changes older than `before` (Unix seconds); returns how many.
    fn prune_changes(&self, before: i64) -> Result<u64, StoreError>;
    /// Waits until another node may have recorded a change, or `timeout`; true when a
    /// notification woke it. A store without notifications (SQLite: one node) just waits; the
    /// caller reads the feed either way, so a lost notification costs only the timeout.
    fn wait_for_changes(&self, timeout: std::time::Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }

    /// Records presence changes in one transaction: a connect replaces the device's presence if
    /// it began later than the one stored (and is recorded in the change feed, so the node that
    /// held the device closes its session); a disconnect removes it only if it is still that
    /// session's (same node and start).
    fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError>;
    /// Which node holds `device_id`'s session, with that node's last heartbeat.
    fn get_presence(&self, device_id: &str) -> Result<Option<Presence>, StoreError>;
    /// Records that `node` is alive at `now_ms`.
    fn heartbeat(&self, node: &str, now_ms: i64) -> Result<(), StoreError>;
    /// Stores a method call for its target node (recorded in the change feed); returns its id.
    fn put_method_call(&self, call: &MethodCallRecord) -> Result<i64, StoreError>;
    fn get_method_call(&self, id: i64) -> Result<Option<MethodCallRecord>, StoreError>;
    /// Records the device's answer to call `id` (status and payload bytes); the first answer
    /// stands.
    fn answer_method_call(&self, id: i64, status: i32, payload: &[u8]) -> Result<(), StoreError>;
    /// The answer to call `id`, once there is one.
    fn get_method_answer(&self, id: i64) -> Result<Option<(i32, Vec<u8>)>, StoreError>;
    /// Deletes method calls created before `before_ms`; returns how many.
    fn prune_method_calls(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// The consumer groups of the Event Hubs-compatible endpoint besides `$Default`: (name,
    /// created Unix seconds), ordered by name.
    fn list_consumer_groups(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Adds a consumer group and appends `audit`, in one transaction: `AlreadyExists`, or
    /// `LimitReached` when `limit` groups exist already.
    fn insert_consumer_group(
        &self,
        name: &str,
        created: i64,
        limit: u64,
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    /// Deletes a consumer group and appends `audit`, in one transaction: `NotFound` if absent.
    fn delete_consumer_group(&self, name: &str, audit: &NewAudit) -> Result<(), StoreError>;
    /// The hub-wide setting `name` (the hub's TLS CA, its ID scope...), if set.
    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets every one of `settings` in one transaction if none of them is set yet; returns
    /// whether it did (false: another node set them first, read theirs).
    fn insert_settings_if_absent(&self, settings: &[(&str, &[u8])]) -> Result<bool, StoreError>;

    /// Records a revocation, with a change for the other nodes and its audit entry, in one
    /// transaction. NotFound when the CA does not exist; AlreadyExists when that serial is
    /// already revoked by it. Deleting a CA deletes its revocations.
    fn revoke(&self, record: &RevocationRecord, audit: &NewAudit) -> Result<(), StoreError>;
    /// Replaces CA `crl.ca_name`'s CRL and the revocations the previous one brought with
    /// `entries` (an operator's own revocations stay; a serial revoked both ways keeps the
    /// operator's), with a change and its audit entry, in one transaction. NotFound without the
    /// CA; `EtagMismatch { current: held thisUpdate }` when the CRL held is as new or newer.
    fn replace_crl(
        &self,
        crl: &CrlRecord,
        entries: &[RevocationRecord],
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    /// Turns auto-registration through CA `ca_name` on with `device_limit` (Some; the count of
    /// devices it registered is kept) or off (None), with a change and its audit entry.
    /// NotFound without the CA. Deleting the CA turns it off.
    fn set_auto_registration(
        &self,
        ca_name: &str,
        device_limit: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    /// Every CA with auto-registration on, by name.
    fn list_auto_registrations(&self) -> Result<Vec<AutoRegistration>, StoreError>;
    /// Registers `record` (a new certificateAuthority device) through CA `ca_name`'s
    /// auto-registration, in one transaction with its count, a change and `audit`. NotFound when
    /// the CA's auto-registration is off; `QuotaReached` at its device limit; `LimitReached` at
    /// the hub's `device_limit`; AlreadyExists when the device exists (registered meanwhile).
    fn auto_register_device(
        &self,
        ca_name: &str,
        record: &DeviceRecord,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError>;
    /// The CRL held for `ca_name`, if any.
    fn get_crl(&self, ca_name: &str) -> Result<Option<CrlRecord>, StoreError>;
    /// The revocations of `ca_name` (every CA's when None), by CA name, then oldest first.
    fn list_revocations(&self, ca_name: Option<&str>) -> Result<Vec<RevocationRecord>, StoreError>;

    /// Creates (`Expect::Absent { limit }`: fewer than `limit` enrollments of any kind exist)
    /// or replaces (`Expect::Etag`) an enrollment, with its audit entry, in one transaction,
    /// assigning a new etag. `DuplicateThumbprint` when another enrollment holds its certificate.
    fn write_enrollment(
        &self,
        record: &EnrollmentRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<EnrollmentRecord, StoreError>;
    fn get_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError>;
    /// The enrollments of one kind, by name.
    fn list_enrollments(&self, kind: EnrollmentKind) -> Result<Vec<EnrollmentRecord>, StoreError>;
    /// Deletes an enrollment if its etag matches (any when None), with its audit entry. Its
    /// registrations and devices stay.
    fn delete_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    /// Records a registration, in one transaction with `audit`: when `device` does not exist it
    /// is created (counting against `device_limit`: `LimitReached`) with `twin` and a change for
    /// the other nodes; when it exists it is kept as it is (a re-registration keeps the device
    /// and its twin). The registration keeps its first `created`. Returns the stored
    /// registration and whether the device was created.
    fn provision_device(
        &self,
        registration: &RegistrationRecord,
        device: &DeviceRecord,
        twin: Option<&TwinRecord>,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<(RegistrationRecord, bool), StoreError>;
    fn get_registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError>;
    /// Every registration, by registration id. Deleting a device deletes its registrations.
    fn list_registrations(&self) -> Result<Vec<RegistrationRecord>, StoreError>;

    /// Every persistent session's subscriptions, ordered by device id.
    fn list_persistent_sessions(&self) -> Result<Vec<(String, Subscriptions)>, StoreError>;
    /// Records (Some) or forgets (None) a device's persistent-session subscriptions, with a
    /// change for the other nodes (a device that moves to another node resumes its session
    /// there). A record for a device that does not exist is not written; deleting a device
    /// forgets its session.
    fn write_persistent_session(
        &self,
        device_id: &str,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), StoreError>;
}
