//! The service layer of iothub: the one place where the hub's rules are applied.
//!
//! Why: the HTTPS API, the web portal, the Azure-shaped routes and (later) the MQTT gateway are
//! thin adapters. They authenticate a caller through [`Hub::authenticate`] and then call a method
//! of [`Hub`]; no adapter repeats a rule. Everything here is synchronous and runs on a blocking
//! thread: the store is SQLite, and the rules are pure CPU work from `iothub-pki`.

pub mod auth;
pub mod certificates;
pub mod clock;
pub mod error;

use std::sync::{Arc, RwLock};

pub use auth::{IfMatch, Principal, Right};
pub use certificates::{CaView, PutCertificate};
pub use clock::{Clock, SystemClock};
pub use error::{ErrorCode, HubError};
use iothub_store::{PolicyRecord, Store};

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
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            code_lifetime_secs: iothub_pki::pop::DEFAULT_CODE_LIFETIME_SECS,
            ca_limit: iothub_pki::pop::DEFAULT_CA_LIMIT,
            allow_verify_on_upload: false,
            max_certificate_bytes: iothub_pki::DEFAULT_MAX_CERTIFICATE_BYTES,
            host_names: vec!["localhost".into()],
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
}

impl Hub {
    /// Builds the service layer over `store`, loading the shared access policies.
    pub fn new(
        store: Arc<dyn Store>,
        config: HubConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Hub, HubError> {
        let policies = store.list_policies()?;
        Ok(Hub {
            store,
            config: Arc::new(config),
            clock,
            policies: Arc::new(RwLock::new(policies)),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}
