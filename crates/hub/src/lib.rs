//! The service layer of iothub: the one place where the hub's rules are applied.
//!
//! Why: the HTTPS API, the web portal, the Azure-shaped routes and the MQTT gateway are thin
//! adapters. They authenticate a caller through [`Hub::authenticate`] (a device through
//! [`Hub::admit`]) and then call a method of [`Hub`]; no adapter repeats a rule. Nearly everything
//! here is synchronous and runs on a blocking thread: the store is SQLite, and the rules are pure
//! CPU work from `iothub-pki` (`admit` is async only to judge a cached device in the caller's task).
//!
//! [`Hub`] is the composition of parts, each owning its state privately in its own module, with a
//! small interface the rest of the hub calls:
//!
//! | part | module | owns |
//! |---|---|---|
//! | `Policies` | `policies` | the in-memory policies, their write lock, the change epoch |
//! | `Trust` | `trust` | the trust snapshot, its generation, the anchor memo, rebuild requests, the chain cache, the revocation set |
//! | `DeviceCache` | `device_cache` | what CONNECT needs of each device, and its generation |
//! | `Sessions` | `sessions` | live sessions, persistent subscriptions, recent refusals, the refusal budget |
//! | `Telemetry` | `telemetry` | the group-commit writer thread and the watch of the last offset |
//! | `PendingCalls` | `methods` | direct-method calls waiting for an answer |
//! | `ActivityBuffer` | `activity` | connection facts waiting to be written, and their flusher |
//! | `Metrics` | `metrics` | the counters `/metrics` shows, as atomics |
//! | `AutoRegistrations` | `auto_registration` | the CAs whose unknown devices are registered at first CONNECT |
//! | `Provisioning` | `provisioning` | the ID scope, once read |
//! | `Readers` | `readers` | the Event Hubs readers this node serves, by consumer group and partition, with their owner levels |
//!
//! The store, the config and the clock are shared by all. `admission`, `devices`, `certificates`,
//! `c2d`, `twins`, `auth`, `audit`, `revocations` and `enrollments` own no in-memory state: they apply rules over the store and
//! ask the parts. Each module's opening comment says what it owns and what it asks of others.

pub mod activity;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod auto_registration;
pub mod c2d;
pub mod certificates;
pub mod changes;
pub mod clock;
mod device_cache;
pub mod devices;
pub mod enrollments;
pub mod error;
pub mod eventhub;
pub mod feedback;
pub mod methods;
pub mod metrics;
pub mod overview;
pub mod peer_text;
pub mod policies;
mod presence;
pub mod provisioning;
pub mod readers;
pub mod refusal_budget;
pub mod revocations;
pub mod sessions;
pub mod telemetry;
pub mod trust;
pub mod twins;

use std::sync::Arc;

pub use admission::Refusal;
pub use auth::{Credential, IfMatch, KeySlot, Principal, Right};
pub use c2d::{C2dDelivery, C2dSend, C2dView};
pub use certificates::{CaView, PutCertificate};
pub use clock::{Clock, SystemClock};
pub use devices::{DeviceAuth, DeviceView, PutDevice};
pub use error::{ErrorCode, HubError};
pub use eventhub::{ConsumerGroupView, EventHubInfo, PartitionInfo, StartPosition};
pub use feedback::{C2dAck, FeedbackBatch, FeedbackRecord, FeedbackStatus, FEEDBACK_CONTENT_TYPE};
/// A policy with its keys, as `Hub::policy_keys` hands it out: plain data (name, two keys,
/// rights), re-exported so that adapters take it from the service layer, not the store.
pub use iothub_store::PolicyRecord;
use iothub_store::Store;
pub use readers::ReaderLease;
/// The default of [`HubConfig::max_crl_entries`].
pub const DEFAULT_MAX_CRL_ENTRIES: usize = 100_000;

/// The typed seams of a device record and a cloud-to-device message: spelled once in the store's
/// record types (their text columns), re-exported so adapters render them with `as_str` without
/// depending on the store.
pub use iothub_store::{AuthType, C2dState, DeviceStatus, EnrollmentKind, Subscriptions};
pub use metrics::RefusalClass;
pub use policies::PolicyView;
pub use sessions::{
    Admission, AuthMethod, ConnectRequest, ConnectTicket, RecentRefusal, SessionInfo,
    SessionSignal, SignalReceiver,
};
pub use telemetry::{DeviceMessage, MessageView};

/// The default of [`HubConfig::mqtt_refusal_limit`]: a device retrying every second with a wrong
/// credential, or a few of them behind one NAT address, stays under it; a flood is cut to one
/// judged connection a second.
pub const DEFAULT_MQTT_REFUSAL_LIMIT: u32 = 60;

/// Settings of the service layer (the binary maps flags, environment and TOML onto these).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a verification code stays live, in seconds.
    pub code_lifetime_secs: i64,
    /// How many CA certificates the hub holds at most.
    pub ca_limit: u64,
    /// Whether `isVerified: true` on upload marks a CA Verified without proof of possession.
    pub allow_verify_on_upload: bool,
    /// The largest certificate input accepted, in bytes.
    pub max_certificate_bytes: usize,
    /// Host names (and IP literals) by which clients reach the hub; SAS tokens must name one.
    pub host_names: Vec<String>,
    /// How many devices the hub holds at most.
    pub device_limit: u64,
    /// Cloud-to-device: queued messages per device, default and maximum time to live, body size.
    pub c2d_max_pending: u32,
    pub c2d_ttl_secs: i64,
    pub c2d_max_ttl_secs: i64,
    pub c2d_max_bytes: usize,
    /// The feedback queue (`feedback.rs`): how long a taken batch stays locked, how long a record
    /// waits to be taken before it is dropped, how often one record may be taken, and how many
    /// records one take returns.
    pub feedback_lock_secs: i64,
    pub feedback_ttl_secs: i64,
    pub feedback_max_deliveries: u32,
    pub feedback_batch: u32,
    /// How long device-to-cloud messages are kept, in seconds.
    pub telemetry_retention_secs: i64,
    /// How long the change feed keeps a change for the other nodes (`changes.rs`): a node away
    /// for longer refreshes everything it keeps when it returns.
    pub change_retention_secs: i64,
    /// This node's name among the nodes sharing the store.
    pub node_id: String,
    /// Partitions of the telemetry log (fixed when the hub is created; `serve` reads the
    /// hub's from the store).
    pub partitions: u32,
    /// Other nodes share the store: record presence, route direct methods through the store.
    pub cluster: bool,
    /// A node whose last heartbeat is older than this is dead (`presence.rs`).
    pub node_timeout_ms: i64,
    /// Most entries a CA's uploaded CRL may have.
    pub max_crl_entries: usize,
    /// How many recent connection refusals are kept in memory.
    pub refusals_kept: usize,
    /// Refused device connections per remote address per minute before that address's
    /// connections are dropped unjudged until the minute ends; 0: never dropped (see
    /// `refusal_budget`).
    pub mqtt_refusal_limit: u32,
    /// The hub's name: Azure-shaped management routes answer only for it.
    pub hub_name: String,
    /// The most certificates a device may present in its chain.
    pub max_chain_len: usize,
    /// How many validated device chains are remembered for the current trust snapshot
    /// (0: validate every chain in full at every CONNECT).
    pub chain_cache_entries: usize,
    /// How many devices' connect facts (status, authentication) are kept in memory, so that a
    /// CONNECT reads no database (0: read the store at every CONNECT).
    pub device_cache_entries: usize,
    /// The provisioning service's ID scope (`serve --id-scope`); None: the one generated once
    /// and kept in the store.
    pub id_scope: Option<String>,
    /// Consumer groups of the Event Hubs-compatible endpoint besides `$Default`, at most.
    pub consumer_group_limit: u64,
    /// Readers without an owner level that may share one partition of one consumer group.
    pub readers_per_partition: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            code_lifetime_secs: iothub_pki::pop::DEFAULT_CODE_LIFETIME_SECS,
            ca_limit: iothub_pki::pop::DEFAULT_CA_LIMIT,
            allow_verify_on_upload: false,
            max_certificate_bytes: iothub_pki::DEFAULT_MAX_CERTIFICATE_BYTES,
            host_names: vec!["localhost".into()],
            device_limit: 1_000_000,
            c2d_max_pending: 50,
            c2d_ttl_secs: 3600,
            c2d_max_ttl_secs: 48 * 3600,
            c2d_max_bytes: 64 * 1024,
            feedback_lock_secs: 60,
            feedback_ttl_secs: 3600,
            feedback_max_deliveries: 10,
            feedback_batch: 100,
            telemetry_retention_secs: 7 * 24 * 3600,
            change_retention_secs: 3600,
            node_id: iothub_store::LOCAL_NODE.to_string(),
            partitions: 4,
            cluster: false,
            node_timeout_ms: 3000,
            max_crl_entries: DEFAULT_MAX_CRL_ENTRIES,
            refusals_kept: 1000,
            mqtt_refusal_limit: DEFAULT_MQTT_REFUSAL_LIMIT,
            hub_name: "iothub".into(),
            max_chain_len: iothub_pki::chain::DEFAULT_MAX_CHAIN_LEN,
            chain_cache_entries: 100_000,
            device_cache_entries: 100_000,
            id_scope: None,
            consumer_group_limit: 20,
            readers_per_partition: 5,
        }
    }
}

/// The hub's service layer: the composition of its parts. Cheap to clone (each part behind an
/// `Arc`).
///
/// Each part owns its state, private to its module, and offers a small interface; the rest of
/// the hub reaches a part only through the accessors below (a test checks that no other file
/// names these fields). `Hub` itself keeps the rules that need several parts: a device write
/// forgets the device cache entry, then re-checks that device's session (`devices`); a CA change
/// rebuilds trust, then re-checks the sessions naming the changed subjects
/// ([`Hub::rebuild_trust`]); a CONNECT's ticket reads the device cache's and trust's generations
/// (`sessions`, `admission`).
#[derive(Clone)]
pub struct Hub {
    /// The source of truth every part reads and writes through.
    store: Arc<dyn Store>,
    config: Arc<HubConfig>,
    clock: Arc<dyn Clock>,
    /// `policies.rs`: the in-memory policies, their write lock and change epoch.
    policies: Arc<policies::Policies>,
    /// `trust.rs`: the trust snapshot, its generation, the anchor memo, rebuild requests and the
    /// cache of validated chains.
    trust: Arc<trust::Trust>,
    /// `device_cache.rs`: what CONNECT needs of each device, forgotten on every device write.
    device_cache: Arc<device_cache::DeviceCache>,
    /// `sessions.rs`: live sessions, persistent subscriptions, recent refusals, refusal budget.
    sessions: Arc<sessions::Sessions>,
    /// `telemetry.rs`: the group-commit writer and the watch of the last offset.
    telemetry: Arc<telemetry::Telemetry>,
    /// `methods.rs`: direct-method calls waiting for their device's answer.
    methods: Arc<methods::PendingCalls>,
    /// `activity.rs`: device connection facts waiting to be written.
    activity: Arc<activity::ActivityBuffer>,
    /// `metrics.rs`: the counters `/metrics` shows (atomics only).
    metrics: Arc<metrics::Metrics>,
    /// `changes.rs`: how far this node has applied the other nodes' changes.
    follower: Arc<changes::Follower>,
    /// `presence.rs`: this node's sessions as the other nodes must learn of them.
    presence: Arc<presence::Presence>,
    /// `auto_registration.rs`: the CAs whose unknown devices are registered at first CONNECT.
    auto_registrations: Arc<auto_registration::AutoRegistrations>,
    /// `provisioning.rs`: the ID scope, once read.
    provisioning: Arc<provisioning::Provisioning>,
    /// `readers.rs`: the Event Hubs readers this node serves and their owner levels.
    readers: Arc<readers::Readers>,
}

impl Hub {
    /// Builds the service layer over `store`, loading the shared access policies.
    pub fn new(
        store: Arc<dyn Store>,
        config: HubConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Hub, HubError> {
        // Read before anything is loaded: a change made while loading is applied again, never
        // missed.
        let follower = changes::Follower::new(store.last_change()?);
        let policies = policies::Policies::new(store.list_policies()?);
        let metrics = Arc::<metrics::Metrics>::default();
        let telemetry = telemetry::Telemetry::start(store.clone(), metrics.clone())?;
        let activity = activity::ActivityBuffer::start(store.clone())?;
        let trust = trust::Trust::new(config.chain_cache_entries, config.max_chain_len);
        let device_cache = device_cache::DeviceCache::new(config.device_cache_entries);
        let sessions = sessions::Sessions::new(
            config.refusals_kept,
            config.mqtt_refusal_limit,
            store.list_persistent_sessions()?,
        );
        let hub = Hub {
            store,
            config: Arc::new(config),
            clock,
            policies: Arc::new(policies),
            trust: Arc::new(trust),
            device_cache: Arc::new(device_cache),
            sessions: Arc::new(sessions),
            telemetry: Arc::new(telemetry),
            methods: Arc::new(methods::PendingCalls::default()),
            activity,
            metrics,
            follower: Arc::new(follower),
            presence: Arc::default(),
            auto_registrations: Arc::default(),
            provisioning: Arc::default(),
            readers: Arc::default(),
        };
        hub.rebuild_trust()?;
        hub.reload_revocations()?;
        hub.reload_auto_registrations()?;
        Ok(hub)
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    // The parts, as the other modules reach them.

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn policies(&self) -> &policies::Policies {
        &self.policies
    }

    /// The trust part (`trust()` is the public snapshot).
    pub(crate) fn trust_set(&self) -> &trust::Trust {
        &self.trust
    }

    pub(crate) fn device_cache(&self) -> &device_cache::DeviceCache {
        &self.device_cache
    }

    pub(crate) fn sessions(&self) -> &sessions::Sessions {
        &self.sessions
    }

    pub(crate) fn telemetry(&self) -> &telemetry::Telemetry {
        &self.telemetry
    }

    pub(crate) fn methods(&self) -> &methods::PendingCalls {
        &self.methods
    }

    pub(crate) fn activity(&self) -> &activity::ActivityBuffer {
        &self.activity
    }

    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    pub(crate) fn follower(&self) -> &changes::Follower {
        &self.follower
    }

    pub(crate) fn presence(&self) -> &presence::Presence {
        &self.presence
    }

    pub(crate) fn auto_registrations(&self) -> &auto_registration::AutoRegistrations {
        &self.auto_registrations
    }

    pub(crate) fn provisioning_part(&self) -> &provisioning::Provisioning {
        &self.provisioning
    }

    pub(crate) fn readers(&self) -> &Arc<readers::Readers> {
        &self.readers
    }
}

#[cfg(test)]
mod tests {
    /// The parts' fields on `Hub` are named only in this file: every other module goes through
    /// the accessors, so what a module touches is either its own part's state (declared in that
    /// module) or another part's interface.
    #[test]
    fn no_module_names_a_field_of_hub() {
        const FIELDS: [&str; 14] = [
            "readers",
            "auto_registrations",
            "provisioning",
            "store",
            "config",
            "clock",
            "policies",
            "trust",
            "device_cache",
            "sessions",
            "telemetry",
            "methods",
            "activity",
            "metrics",
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "lib.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // `self.field` or `self` at a line's end and `.field` opening the next.
            let joined = text.replace("self\n", "self").replace(' ', "");
            for field in FIELDS {
                let field_access = format!("self.{field}");
                for (at, _) in joined.match_indices(&field_access) {
                    let next = joined[at + field_access.len()..].chars().next();
                    assert!(
                        next.is_some_and(|c| c == '(' || c == '_' || c.is_alphanumeric()),
                        "{} names Hub's field `{field}`; use its accessor",
                        path.display()
                    );
                }
            }
        }
    }
}
