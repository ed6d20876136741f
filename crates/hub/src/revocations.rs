//! Revoking certificates a registered CA issued, live: a compromised device certificate (or an
//! intermediate) stops working at once, on every node, while the CA's other devices carry on.
//!
//! Why its own module: the rules of a revocation request (the CA exists, the serial is spelt as
//! a serial, the reason is one of RFC 5280's, a serial is revoked once) and the view the adapters
//! show. Owns no state: the revocations are the store's, and the trust part holds them as a set
//! it checks every chain verdict against ([`Hub::reload_revocations`]). Asks of others: the
//! store, the audit log, the trust part, and the sessions re-check that closes what a revocation
//! no longer admits.

use iothub_pki::pop::format_time;
use iothub_pki::revocation::{normalize_serial, RevocationReason, Revoked};
use iothub_store::{RevocationRecord, StoreError};

use crate::auth::{Principal, Right};
use crate::{Hub, HubError};

/// A revocation as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationView {
    pub ca_name: String,
    /// Upper-case hex without leading zeros.
    pub serial: String,
    /// RFC 5280's reason name.
    pub reason: String,
    /// RFC 3339 UTC.
    pub revoked_at: String,
}

impl RevocationView {
    fn of(r: RevocationRecord) -> RevocationView {
        RevocationView {
            revoked_at: format_time(r.revoked_at),
            ca_name: r.ca_name,
            serial: r.serial,
            reason: r.reason,
        }
    }
}

/// The trust part's form of a stored revocation (a reason the store holds that is not RFC 5280's
/// reads as unspecified: the certificate stays revoked).
pub(crate) fn revoked(r: RevocationRecord) -> Revoked {
    Revoked {
        reason: RevocationReason::parse(&r.reason).unwrap_or(RevocationReason::Unspecified),
        since: format_time(r.revoked_at),
        ca_name: r.ca_name,
        serial: r.serial,
    }
}

fn target(name: &str) -> String {
    format!("certificate/{name}")
}

impl Hub {
    /// Revokes the certificate CA `ca_name` issued with `serial` (hex, as `openssl x509 -serial`
    /// prints it), for `reason` (RFC 5280's name; `unspecified` when None). The sessions it
    /// admitted close within the call, here and on every other node within a second.
    pub fn revoke_certificate(
        &self,
        who: &Principal,
        ca_name: &str,
        serial: &str,
        reason: Option<&str>,
    ) -> Result<RevocationView, HubError> {
        const ACTION: &str = "certificate.revoke";
        self.authorize(
            who,
            Right::RegistryWrite,
            "revoke certificates",
            &target(ca_name),
        )?;
        let run = || -> Result<RevocationView, HubError> {
            iothub_pki::pop::validate_ca_name(ca_name)?;
            let serial =
                normalize_serial(serial).map_err(|e| HubError::InvalidArgument(e.to_string()))?;
            let reason = match reason {
                None => RevocationReason::Unspecified,
                Some(text) => RevocationReason::parse(text)
                    .map_err(|e| HubError::InvalidArgument(e.to_string()))?,
            };
            let record = RevocationRecord {
                ca_name: ca_name.to_string(),
                serial: serial.clone(),
                reason: reason.as_str().to_string(),
                revoked_at: self.now(),
            };
            let audit = self.audit_entry(
                who,
                ACTION,
                &target(ca_name),
                &Ok(format!("revoked serial {serial} ({})", reason.as_str())),
            );
            self.store().revoke(&record, &audit).map_err(|e| match e {
                StoreError::NotFound => HubError::NotFound(ca_name.to_string()),
                StoreError::AlreadyExists => HubError::AlreadyRevoked {
                    ca_name: ca_name.to_string(),
                    serial: serial.clone(),
                },
                other => other.into(),
            })?;
            if let Err(e) = self.reload_revocations() {
                // Landed in the store: the periodic re-check and the next reload apply it.
                tracing::error!(error = %e, "could not reload the revocations");
            }
            Ok(RevocationView::of(record))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(ca_name), e))
    }

    /// The certificates CA `ca_name` revoked, oldest first.
    pub fn list_revocations(
        &self,
        who: &Principal,
        ca_name: &str,
    ) -> Result<Vec<RevocationView>, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "list revoked certificates",
            &target(ca_name),
        )?;
        iothub_pki::pop::validate_ca_name(ca_name)?;
        if self.store().get_ca(ca_name)?.is_none() {
            return Err(HubError::NotFound(ca_name.to_string()));
        }
        Ok(self
            .store()
            .list_revocations(Some(ca_name))?
            .into_iter()
            .map(RevocationView::of)
            .collect())
    }
}
