//! The service layer of iothub: the one place where the hub's rules are applied.
//!
//! Why: the HTTPS API, the web portal, the Azure-shaped routes and (later) the MQTT gateway are
//! thin adapters. They authenticate a caller through [`Hub::authenticate`] and then call a method
//! of [`Hub`]; no adapter repeats a rule. Everything here is synchronous and runs on a blocking
//! thread: the store is SQLite, and the rules are pure CPU work from `iothub-pki`.

pub mod activity;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod c2d;
pub mod certificates;
pub mod clock;
mod device_cache;
pub mod devices;
pub mod error;
pub mod methods;
pub mod peer_text;
pub mod policies;
pub mod refusal_budget;
pub mod sessions;
pub mod telemetry;
pub mod trust;
pub mod twins;

use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use iothub_pki::trust_index::TrustIndex;

pub use admission::Refusal;
pub use auth::{Credential, IfMatch, KeySlot, Principal, Right};
pub use c2d::{C2dDelivery, C2dSend, C2dView};
pub use certificates::{CaView, PutCertificate};
pub use clock::{Clock, SystemClock};
pub use devices::{DeviceAuth, DeviceView, PutDevice};
pub use error::{ErrorCode, HubError};
/// A policy with its keys, as `Hub::policy_keys` hands it out: plain data (name, two keys,
/// rights), re-exported so that adapters take it from the service layer, not the store.
pub use iothub_store::PolicyRecord;
use iothub_store::Store;
pub use policies::PolicyView;
pub use sessions::{
    Admission, AuthMethod, ConnectRequest, ConnectTicket, RecentRefusal, SessionInfo,
    SessionSignal, Subscriptions,
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
    /// How long device-to-cloud messages are kept, in seconds.
    pub telemetry_retention_secs: i64,
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
            telemetry_retention_secs: 7 * 24 * 3600,
            refusals_kept: 1000,
            mqtt_refusal_limit: DEFAULT_MQTT_REFUSAL_LIMIT,
            hub_name: "iothub".into(),
            max_chain_len: iothub_pki::chain::DEFAULT_MAX_CHAIN_LEN,
            chain_cache_entries: 100_000,
            device_cache_entries: 100_000,
        }
    }
}

/// The hub's service layer. Cheap to clone (shared state behind `Arc`).
#[derive(Clone)]
pub struct Hub {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<HubConfig>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Policies are read on every request; they change only through the service layer, which
    /// refreshes this copy.
    pub(crate) policies: Arc<RwLock<Vec<PolicyRecord>>>,
    /// Serialises policy changes, so that the copy above is reloaded in the order of the writes.
    pub(crate) policy_writes: Arc<Mutex<()>>,
    /// Moves on every policy change: live streams re-check their credential (see `policies`).
    pub(crate) policy_epoch: Arc<tokio::sync::watch::Sender<u64>>,
    /// The trust snapshot (registered CAs by subject), swapped on every CA change.
    pub(crate) trust: Arc<ArcSwap<TrustIndex>>,
    /// Moves on every trust snapshot stored: a CONNECT judged across a move is re-checked (see
    /// `Hub::connect_ticket`).
    pub(crate) trust_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Each registered CA parsed, by name, with the etag of the version parsed. Its lock also
    /// makes trust rebuilds run one at a time.
    pub(crate) anchor_memo: Arc<Mutex<trust::AnchorMemo>>,
    /// Trust rebuilds asked for so far: a rebuild that finds its request already covered by one
    /// that read the registry after it returns at once (see `Hub::rebuild_trust`).
    pub(crate) trust_requests: Arc<std::sync::atomic::AtomicU64>,
    /// Device chains validated against the snapshot held beside them (see `trust`).
    pub(crate) chain_cache: Arc<Mutex<(Arc<TrustIndex>, iothub_pki::chain_cache::ChainCache)>>,
    /// What CONNECT needs of each device, forgotten on every device write (see `device_cache`).
    pub(crate) device_cache: Arc<device_cache::DeviceCache>,
    pub(crate) sessions: Arc<Mutex<sessions::Sessions>>,
    pub(crate) telemetry: Arc<telemetry::TelemetryWriter>,
    pub(crate) last_offset: Arc<tokio::sync::watch::Sender<i64>>,
    /// Direct-method calls waiting for their device's answer, by request id.
    pub(crate) methods: Arc<Mutex<methods::PendingCalls>>,
    /// Device connection facts waiting to be written (see `activity`).
    pub(crate) activity: Arc<activity::ActivityBuffer>,
    /// Refusals per device-listener address, and how often they are logged and recorded.
    pub(crate) refusal_budget: Arc<Mutex<refusal_budget::RefusalBudget>>,
}

impl Hub {
    /// Builds the service layer over `store`, loading the shared access policies.
    pub fn new(
        store: Arc<dyn Store>,
        config: HubConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Hub, HubError> {
        let policies = store.list_policies()?;
        let (last_offset, _) = tokio::sync::watch::channel(store.last_message_offset()?);
        let last_offset = Arc::new(last_offset);
        let telemetry = telemetry::TelemetryWriter::start(store.clone(), (*last_offset).clone())?;
        let activity = activity::ActivityBuffer::start(store.clone())?;
        let chain_cache_entries = config.chain_cache_entries;
        let device_cache = device_cache::DeviceCache::new(config.device_cache_entries);
        let refusal_budget = refusal_budget::RefusalBudget::new(config.mqtt_refusal_limit);
        let hub = Hub {
            store,
            config: Arc::new(config),
            clock,
            policies: Arc::new(RwLock::new(policies)),
            policy_writes: Arc::new(Mutex::new(())),
            policy_epoch: Arc::new(tokio::sync::watch::channel(0).0),
            trust: Arc::new(ArcSwap::from_pointee(TrustIndex::default())),
            trust_generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            anchor_memo: Arc::new(Mutex::new(trust::AnchorMemo::default())),
            trust_requests: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            chain_cache: Arc::new(Mutex::new((
                Arc::new(TrustIndex::default()),
                iothub_pki::chain_cache::ChainCache::new(chain_cache_entries),
            ))),
            device_cache: Arc::new(device_cache),
            sessions: Arc::new(Mutex::new(sessions::Sessions::default())),
            telemetry: Arc::new(telemetry),
            last_offset,
            methods: Arc::new(Mutex::new(std::collections::HashMap::new())),
            activity,
            refusal_budget: Arc::new(Mutex::new(refusal_budget)),
        };
        hub.rebuild_trust()?;
        Ok(hub)
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}
