//! Auto-registration from a Verified CA (opt-in per CA): a device whose chain ends at such a CA,
//! and whose certificate's CN is a valid device id equal to its client id, is registered at its
//! first CONNECT, and that first connection is admitted (no dropped first attempt). Each CA's
//! auto-registration has a device limit; once it is reached, unknown devices of that CA are
//! refused with a reason that says how to raise it.
//!
//! Why its own module: the rules of turning it on and off, the view, and the one path an unknown
//! device takes at CONNECT. Owns: the set of CA names with auto-registration on, as an
//! `ArcSwap` read without a lock by CONNECT (reloaded from the store when any node changes it).
//! Asks of others: the store (the quota and the device row in one transaction), the trust part
//! (the chain verdict), the audit log.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use iothub_store::{AuthType, DeviceRecord, DeviceStatus, StoreError};

use crate::admission::Refusal;
use crate::auth::{Principal, Right};
use crate::sessions::{AuthMethod, ConnectRequest};
use crate::{Hub, HubError};

/// The auto-registration part: which CAs have it on.
#[derive(Default)]
pub(crate) struct AutoRegistrations {
    on: ArcSwap<HashSet<String>>,
}

impl AutoRegistrations {
    fn is_on(&self, ca_name: &str) -> bool {
        self.on.load().contains(ca_name)
    }

    fn any(&self) -> bool {
        !self.on.load().is_empty()
    }
}

/// A CA's auto-registration, as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRegistrationView {
    pub ca_name: String,
    pub enabled: bool,
    /// The most devices it may register (when enabled).
    pub device_limit: Option<u64>,
    /// How many it registered (when enabled).
    pub registered: u64,
}

/// The default device limit of a CA's auto-registration.
pub const DEFAULT_AUTO_REGISTER_LIMIT: u64 = 1000;

fn target(name: &str) -> String {
    format!("certificate/{name}")
}

impl Hub {
    /// Reads which CAs have auto-registration on (at start, and when a node changed it).
    pub fn reload_auto_registrations(&self) -> Result<(), HubError> {
        let on = self
            .store()
            .list_auto_registrations()?
            .into_iter()
            .map(|a| a.ca_name)
            .collect();
        self.auto_registrations().on.store(Arc::new(on));
        Ok(())
    }

    /// Turns auto-registration through CA `ca_name` on (`Some(limit)`, at most `limit` devices;
    /// the count so far is kept) or off (None).
    pub fn set_auto_registration(
        &self,
        who: &Principal,
        ca_name: &str,
        device_limit: Option<u64>,
    ) -> Result<AutoRegistrationView, HubError> {
        const ACTION: &str = "certificate.autoRegistration";
        self.authorize(
            who,
            Right::RegistryWrite,
            "change auto-registration",
            &target(ca_name),
        )?;
        let run = || -> Result<AutoRegistrationView, HubError> {
            iothub_pki::pop::validate_ca_name(ca_name)?;
            if let Some(limit) = device_limit {
                if !(1..=self.config().device_limit).contains(&limit) {
                    return Err(HubError::InvalidArgument(format!(
                        "the auto-registration limit is {limit}; expected 1 to the hub's device limit ({})",
                        self.config().device_limit
                    )));
                }
            }
            let detail = match device_limit {
                Some(limit) => format!("auto-registration on, at most {limit} devices"),
                None => "auto-registration off".to_string(),
            };
            let audit = self.audit_entry(who, ACTION, &target(ca_name), &Ok(detail));
            self.store()
                .set_auto_registration(ca_name, device_limit, &audit)
                .map_err(|e| match e {
                    StoreError::NotFound => HubError::NotFound(ca_name.to_string()),
                    other => other.into(),
                })?;
            self.reload_auto_registrations()?;
            self.auto_registration_view(ca_name)
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(ca_name), e))
    }

    /// CA `ca_name`'s auto-registration.
    pub fn get_auto_registration(
        &self,
        who: &Principal,
        ca_name: &str,
    ) -> Result<AutoRegistrationView, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read auto-registration",
            &target(ca_name),
        )?;
        iothub_pki::pop::validate_ca_name(ca_name)?;
        if self.store().get_ca(ca_name)?.is_none() {
            return Err(HubError::NotFound(ca_name.to_string()));
        }
        self.auto_registration_view(ca_name)
    }

    fn auto_registration_view(&self, ca_name: &str) -> Result<AutoRegistrationView, HubError> {
        let held = self
            .store()
            .list_auto_registrations()?
            .into_iter()
            .find(|a| a.ca_name == ca_name);
        Ok(AutoRegistrationView {
            ca_name: ca_name.to_string(),
            enabled: held.is_some(),
            device_limit: held.as_ref().map(|a| a.device_limit),
            registered: held.map_or(0, |a| a.registered),
        })
    }

    /// The CONNECT of a device that is not registered: admitted, and registered, when its chain
    /// ends at a Verified CA with auto-registration on and its certificate names it; otherwise
    /// refused as not registered. A chain that does not verify, or names another device, is
    /// refused with that reason rather than "not registered" only when the CA would have
    /// registered it (so an unknown device learns nothing else about the hub's CAs).
    pub(crate) fn admit_unregistered(&self, req: &ConnectRequest) -> Result<AuthMethod, Refusal> {
        let id = req.client_id.as_str();
        let not_registered = || Refusal::NotRegistered {
            device_id: id.to_string(),
        };
        if !self.auto_registrations().any() || req.chain.is_empty() {
            return Err(not_registered());
        }
        let now = self.now();
        let Ok(verdict) = self.validate_device_chain(&req.chain, now) else {
            return Err(not_registered());
        };
        if !self.auto_registrations().is_on(&verdict.ca_name) {
            return Err(not_registered());
        }
        // The same rule as any certificateAuthority device: the leaf's only CN is the client id.
        let method = self.judge_ca_chain(req, now)?;
        let AuthMethod::Ca { ca_name, .. } = &method else {
            return Err(not_registered());
        };
        let record = new_device_record(id, AuthType::CertificateAuthority, None, now)
            .map_err(Refusal::RegistryUnavailable)?;
        let audit = self.audit_entry(
            &Principal::system(),
            "device.autoRegister",
            &format!("device/{id}"),
            &Ok(format!(
                "registered at its first CONNECT through CA '{ca_name}'"
            )),
        );
        match self.store().auto_register_device(
            ca_name,
            &record,
            self.config().device_limit,
            &audit,
        ) {
            Ok(_) | Err(StoreError::AlreadyExists) => {
                // Registered now (or by a CONNECT racing this one): a change was recorded.
                self.device_cache().forget(id);
                Ok(method)
            }
            Err(StoreError::QuotaReached { limit }) => Err(Refusal::AutoRegisterLimit {
                ca_name: ca_name.clone(),
                limit,
                device_id: id.to_string(),
            }),
            Err(StoreError::LimitReached { limit }) => Err(Refusal::AutoRegisterLimit {
                ca_name: "the hub (--device-limit)".into(),
                limit,
                device_id: id.to_string(),
            }),
            // Turned off meanwhile.
            Err(StoreError::NotFound) => Err(not_registered()),
            Err(e) => Err(Refusal::RegistryUnavailable(e.to_string())),
        }
    }
}

/// A new, enabled device record authenticated by certificate: `CertificateAuthority`, or
/// `SelfSigned` with `thumbprint` (a provisioned individual enrollment).
pub(crate) fn new_device_record(
    id: &str,
    auth_type: AuthType,
    thumbprint: Option<String>,
    now: i64,
) -> Result<DeviceRecord, String> {
    let generation_id: String = iothub_pki::pop::generate_code()
        .map_err(|_| "the system random source failed".to_string())?
        .chars()
        .take(18)
        .collect();
    Ok(DeviceRecord {
        device_id: id.to_string(),
        generation_id,
        etag: 0,
        status: DeviceStatus::Enabled,
        status_reason: None,
        status_updated: now,
        auth_type,
        primary_thumbprint: thumbprint,
        secondary_thumbprint: None,
        primary_key: None,
        secondary_key: None,
        created: now,
        updated: now,
    })
}
