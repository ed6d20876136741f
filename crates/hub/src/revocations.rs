//! Revoking certificates a registered CA issued (by serial, or by uploading its CRL), live: a compromised device certificate (or an
//! intermediate) stops working at once, on every node, while the CA's other devices carry on.
//!
//! Why its own module: the rules of a revocation request (the CA exists, the serial is spelt as
//! a serial, the reason is one of RFC 5280's, a serial is revoked once) and the view the adapters
//! show. Owns no state: the revocations are the store's, and the trust part holds them as a set
//! it checks every chain verdict against ([`Hub::reload_revocations`]). Asks of others: the
//! store, the audit log, the trust part, and the sessions re-check that closes what a revocation
//! no longer admits.

use iothub_pki::crl::{check_crl, read_crl, CrlError};
use iothub_pki::pop::format_time;
use iothub_pki::revocation::{normalize_serial, RevocationReason, Revoked};
use iothub_store::{CrlRecord, RevocationRecord, StoreError};

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
    /// From the CA's uploaded CRL rather than an operator's revoke.
    pub from_crl: bool,
}

/// The CRL held for a CA, as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlView {
    pub ca_name: String,
    /// thisUpdate and nextUpdate, RFC 3339 UTC.
    pub this_update: String,
    pub next_update: Option<String>,
    /// The cRLNumber, hex.
    pub number: Option<String>,
    /// How many certificates it revokes.
    pub revoked: u64,
}

impl CrlView {
    fn of(r: CrlRecord) -> CrlView {
        CrlView {
            this_update: format_time(r.this_update),
            next_update: r.next_update.map(format_time),
            number: r.number,
            revoked: r.entries,
            ca_name: r.ca_name,
        }
    }
}

impl RevocationView {
    fn of(r: RevocationRecord) -> RevocationView {
        RevocationView {
            revoked_at: format_time(r.revoked_at),
            from_crl: r.from_crl,
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
                from_crl: false,
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

    /// Takes CA `ca_name`'s certificate revocation list (`input`: PEM or DER): it must name the
    /// CA's subject as its issuer, be signed with the CA's key, be current, and be newer than the
    /// CRL held. Its entries replace the previous CRL's (an operator's own revocations stay), and
    /// the sessions of newly revoked certificates close at once, on every node.
    pub fn upload_crl(
        &self,
        who: &Principal,
        ca_name: &str,
        input: &[u8],
        max_bytes: usize,
    ) -> Result<CrlView, HubError> {
        const ACTION: &str = "certificate.uploadCrl";
        self.authorize(who, Right::RegistryWrite, "upload CRLs", &target(ca_name))?;
        let run = || -> Result<CrlView, HubError> {
            iothub_pki::pop::validate_ca_name(ca_name)?;
            let der = read_crl(input, max_bytes)?;
            let ca = self
                .store()
                .get_ca(ca_name)?
                .ok_or_else(|| HubError::NotFound(ca_name.to_string()))?;
            let held = self.store().get_crl(ca_name)?;
            let facts = check_crl(
                &der,
                ca_name,
                &ca.der,
                self.now(),
                held.as_ref().map(|h| h.this_update),
                self.config().max_crl_entries,
            )?;
            let entries: Vec<RevocationRecord> = facts
                .entries
                .iter()
                .map(|e| RevocationRecord {
                    ca_name: ca_name.to_string(),
                    serial: e.serial.clone(),
                    reason: e.reason.as_str().to_string(),
                    revoked_at: e.revoked_at,
                    from_crl: true,
                })
                .collect();
            let record = CrlRecord {
                ca_name: ca_name.to_string(),
                this_update: facts.this_update,
                next_update: facts.next_update,
                number: facts.number.clone(),
                entries: entries.len() as u64,
                uploaded_at: self.now(),
            };
            let audit = self.audit_entry(
                who,
                ACTION,
                &target(ca_name),
                &Ok(format!(
                    "CRL of {} (number {}) revokes {} certificates",
                    format_time(facts.this_update),
                    facts.number.as_deref().unwrap_or("none"),
                    entries.len()
                )),
            );
            self.store()
                .replace_crl(&record, &entries, &audit)
                .map_err(|e| match e {
                    StoreError::NotFound => HubError::NotFound(ca_name.to_string()),
                    // Another upload landed a newer CRL meanwhile.
                    StoreError::EtagMismatch { current } => HubError::Crl(CrlError::NotNewer {
                        this_update: format_time(facts.this_update),
                        held: format_time(current as i64),
                    }),
                    other => other.into(),
                })?;
            if let Err(e) = self.reload_revocations() {
                tracing::error!(error = %e, "could not reload the revocations");
            }
            Ok(CrlView::of(record))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(ca_name), e))
    }

    /// The CRL held for CA `ca_name`, if one was uploaded.
    pub fn get_crl(&self, who: &Principal, ca_name: &str) -> Result<Option<CrlView>, HubError> {
        self.authorize(who, Right::RegistryRead, "read CRLs", &target(ca_name))?;
        iothub_pki::pop::validate_ca_name(ca_name)?;
        if self.store().get_ca(ca_name)?.is_none() {
            return Err(HubError::NotFound(ca_name.to_string()));
        }
        Ok(self.store().get_crl(ca_name)?.map(CrlView::of))
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
