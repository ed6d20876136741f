//! CA certificates: register, replace, list, delete, generate a verification code, verify.
//!
//! Each operation checks rights, applies the rules of `iothub_pki::pop` in the documented order,
//! writes through one atomic store call (precondition + change + audit entry), and audits refusals
//! too. A refused request changes nothing but the audit log.
//!
//! Owns no state: CAs live in the store. Asks of others: trust, after every change that landed
//! (`trust_changed`: rebuild, then re-check the sessions naming the changed subjects).

use iothub_pki::pop::{self, CodeState};
use iothub_pki::CertInfo;
use iothub_store::{AuditEntry, AuditQuery, CaRecord, CodeRecord, Expect, StoreError};

use crate::auth::{encode_etag, IfMatch, Principal, Right};
use crate::{Hub, HubError};

/// What a caller sees of a CA certificate (the API renders it in Azure's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaView {
    pub name: String,
    pub etag: String,
    pub info: CertInfo,
    pub is_verified: bool,
    pub created: i64,
    pub updated: i64,
    /// When the live verification code expires, if one is live.
    pub verification_code_expiry: Option<i64>,
}

/// A CA expiring within this many days is flagged (the portal's badge, `cert list`, the
/// overview). Days are counted by whoever shows them, from `expiry`: a certificate's description
/// holds no clock-dependent field, so two reads of an unchanged CA are equal.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

impl CaView {
    pub fn status(&self) -> &'static str {
        if self.is_verified {
            "Verified"
        } else {
            "Unverified"
        }
    }
}

/// A create-or-replace request.
#[derive(Debug, Clone, Default)]
pub struct PutCertificate {
    /// The certificate in any accepted shape (PEM, base64 of DER or of PEM).
    pub certificate: String,
    /// `isVerified` as sent, if sent.
    pub is_verified: Option<bool>,
}

fn target(name: &str) -> String {
    format!("certificate/{name}")
}

impl Hub {
    fn view(&self, record: &CaRecord) -> Result<CaView, HubError> {
        let info = CertInfo::from_der(&record.der)
            .map_err(|e| HubError::Internal(format!("stored certificate unreadable: {e}")))?;
        let verification_code_expiry = match &record.code {
            CodeRecord::Live { expires_at, .. } if *expires_at > self.now() => Some(*expires_at),
            _ => None,
        };
        Ok(CaView {
            name: record.name.clone(),
            etag: encode_etag(record.etag),
            info,
            is_verified: record.is_verified,
            created: record.created,
            updated: record.updated,
            verification_code_expiry,
        })
    }

    fn load(&self, name: &str) -> Result<CaRecord, HubError> {
        self.store()
            .get_ca(name)?
            .ok_or_else(|| HubError::NotFound(name.to_string()))
    }

    fn check_if_match(record: &CaRecord, if_match: Option<&IfMatch>) -> Result<(), HubError> {
        match if_match {
            Some(m) if !m.matches(record.etag) => Err(HubError::EtagMismatch {
                name: record.name.clone(),
                given: m.shown(),
                current: encode_etag(record.etag),
            }),
            _ => Ok(()),
        }
    }

    fn store_error(
        name: &str,
        thumbprint: &str,
        e: StoreError,
        given: Option<&IfMatch>,
    ) -> HubError {
        match e {
            StoreError::NotFound => HubError::NotFound(name.to_string()),
            StoreError::AlreadyExists => HubError::Exists(name.to_string()),
            StoreError::EtagMismatch { current } => HubError::EtagMismatch {
                name: name.to_string(),
                given: given.map(IfMatch::shown).unwrap_or_default(),
                current: encode_etag(current),
            },
            StoreError::LimitReached { limit } | StoreError::QuotaReached { limit } => {
                HubError::LimitReached(limit)
            }
            StoreError::DuplicateThumbprint { name: other } => HubError::DuplicateThumbprint {
                thumbprint: thumbprint.to_string(),
                other,
            },
            e @ (StoreError::Backend(_) | StoreError::Unavailable(_)) => HubError::from(e),
        }
    }

    /// Lists every CA certificate, by name.
    pub fn list_certificates(&self, who: &Principal) -> Result<Vec<CaView>, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "list certificates",
            "certificates",
        )?;
        self.store()
            .list_cas()?
            .iter()
            .map(|r| self.view(r))
            .collect()
    }

    /// One CA certificate.
    pub fn get_certificate(&self, who: &Principal, name: &str) -> Result<CaView, HubError> {
        self.authorize(who, Right::RegistryRead, "read certificates", &target(name))?;
        pop::validate_ca_name(name)?;
        self.view(&self.load(name)?)
    }

    /// Creates (no If-Match) or replaces (If-Match) a CA certificate. Returns the view and whether
    /// it was created. Replacing the content with a different certificate resets it to Unverified.
    pub fn put_certificate(
        &self,
        who: &Principal,
        name: &str,
        request: &PutCertificate,
        if_match: Option<&IfMatch>,
    ) -> Result<(CaView, bool), HubError> {
        const ACTION: &str = "certificate.put";
        self.authorize(
            who,
            Right::RegistryWrite,
            "add or replace certificates",
            &target(name),
        )?;
        let run = || self.put_inner(who, name, request, if_match);
        match run() {
            Ok(done) => Ok(done),
            Err(e) => self.refuse(who, ACTION, &target(name), e),
        }
    }

    fn put_inner(
        &self,
        who: &Principal,
        name: &str,
        request: &PutCertificate,
        if_match: Option<&IfMatch>,
    ) -> Result<(CaView, bool), HubError> {
        pop::validate_ca_name(name)?;
        let der = iothub_pki::parse_certificate_input(
            request.certificate.as_bytes(),
            self.config().max_certificate_bytes,
        )?;
        let info = CertInfo::from_der(&der)?;
        let now = self.now();
        pop::check_ca_upload(&info, now)?;
        if request.is_verified == Some(true) && !self.config().allow_verify_on_upload {
            return Err(HubError::VerifyOnUploadNotAllowed);
        }
        let existing = self.store().get_ca(name)?;
        let (record, expect, created) = match (existing, if_match) {
            (None, Some(_)) => return Err(HubError::NothingToReplace(name.to_string())),
            (None, None) => (
                CaRecord {
                    name: name.to_string(),
                    der,
                    thumbprint: info.thumbprint_sha1.clone(),
                    is_verified: request.is_verified == Some(true),
                    created: now,
                    updated: now,
                    etag: 0,
                    code: CodeRecord::None,
                },
                Expect::Absent {
                    limit: self.config().ca_limit,
                },
                true,
            ),
            (Some(_), None) => return Err(HubError::Exists(name.to_string())),
            (Some(old), Some(m)) => {
                Self::check_if_match(&old, Some(m))?;
                let same_content = old.der == der;
                let is_verified = match request.is_verified {
                    Some(v) => v,
                    None => same_content && old.is_verified,
                };
                let code = if same_content {
                    old.code.clone()
                } else {
                    CodeRecord::None
                };
                (
                    CaRecord {
                        name: name.to_string(),
                        der,
                        thumbprint: info.thumbprint_sha1.clone(),
                        is_verified,
                        created: old.created,
                        updated: now,
                        etag: 0,
                        code,
                    },
                    Expect::Etag(old.etag),
                    false,
                )
            }
        };
        let detail = format!(
            "{} '{}' (thumbprint {}), {}",
            if created { "created" } else { "replaced with" },
            info.subject,
            info.thumbprint_sha1,
            if record.is_verified {
                "Verified (on upload)"
            } else {
                "Unverified"
            }
        );
        let audit = self.audit_entry(who, "certificate.put", &target(name), &Ok(detail));
        let stored = self
            .store()
            .write_ca(&record, expect, &audit)
            .map_err(|e| Self::store_error(name, &info.thumbprint_sha1, e, if_match))?;
        self.trust_changed();
        Ok((self.view(&stored)?, created))
    }

    /// Deletes a CA certificate (If-Match optional here; `*` or the current etag).
    pub fn delete_certificate(
        &self,
        who: &Principal,
        name: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(), HubError> {
        const ACTION: &str = "certificate.delete";
        self.authorize(
            who,
            Right::RegistryWrite,
            "delete certificates",
            &target(name),
        )?;
        let run = || -> Result<(), HubError> {
            pop::validate_ca_name(name)?;
            let record = self.load(name)?;
            Self::check_if_match(&record, if_match)?;
            let audit = self.audit_entry(
                who,
                ACTION,
                &target(name),
                &Ok(format!("deleted (thumbprint {})", record.thumbprint)),
            );
            self.store()
                .delete_ca(name, Some(record.etag), &audit)
                .map_err(|e| Self::store_error(name, &record.thumbprint, e, if_match))?;
            self.trust_changed();
            Ok(())
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// Generates a fresh verification code for a CA, replacing any earlier one. Returns the view,
    /// the code and its expiry.
    pub fn generate_verification_code(
        &self,
        who: &Principal,
        name: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(CaView, String, i64), HubError> {
        const ACTION: &str = "certificate.generateVerificationCode";
        self.authorize(
            who,
            Right::RegistryWrite,
            "generate verification codes",
            &target(name),
        )?;
        let run = || -> Result<(CaView, String, i64), HubError> {
            pop::validate_ca_name(name)?;
            let record = self.load(name)?;
            Self::check_if_match(&record, if_match)?;
            let code = pop::generate_code()
                .map_err(|_| HubError::Internal("the system random source failed".into()))?;
            let now = self.now();
            let expires_at = now + self.config().code_lifetime_secs;
            let updated = CaRecord {
                code: CodeRecord::Live {
                    code: code.clone(),
                    expires_at,
                },
                updated: now,
                ..record.clone()
            };
            // The code itself is not written to the audit log.
            let audit = self.audit_entry(
                who,
                ACTION,
                &target(name),
                &Ok(format!(
                    "verification code generated, live until {}",
                    pop::format_time(expires_at)
                )),
            );
            let stored = self
                .store()
                .write_ca(&updated, Expect::Etag(record.etag), &audit)
                .map_err(|e| Self::store_error(name, &record.thumbprint, e, if_match))?;
            Ok((self.view(&stored)?, code, expires_at))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// Verifies proof of possession with a verification certificate. On success the CA is Verified
    /// and its code consumed.
    pub fn verify_certificate(
        &self,
        who: &Principal,
        name: &str,
        if_match: Option<&IfMatch>,
        verification_certificate: &str,
    ) -> Result<CaView, HubError> {
        const ACTION: &str = "certificate.verify";
        self.authorize(
            who,
            Right::RegistryWrite,
            "verify certificates",
            &target(name),
        )?;
        let run = || -> Result<CaView, HubError> {
            pop::validate_ca_name(name)?;
            let record = self.load(name)?;
            Self::check_if_match(&record, if_match)?;
            let ca = CertInfo::from_der(&record.der)
                .map_err(|e| HubError::Internal(format!("stored certificate unreadable: {e}")))?;
            let code_state = match &record.code {
                CodeRecord::None => CodeState::None,
                CodeRecord::Live { code, expires_at } => CodeState::Live {
                    code: code.clone(),
                    expires_at: *expires_at,
                },
                CodeRecord::Used { at } => CodeState::Used { at: *at },
            };
            let now = self.now();
            let proof = pop::verify_proof(
                name,
                &ca,
                &code_state,
                verification_certificate.as_bytes(),
                self.config().max_certificate_bytes,
                now,
            )?;
            let updated = CaRecord {
                is_verified: true,
                code: CodeRecord::Used { at: now },
                updated: now,
                ..record.clone()
            };
            let audit = self.audit_entry(
                who,
                ACTION,
                &target(name),
                &Ok(format!(
                    "Verified: proof of possession by verification certificate {} (thumbprint {})",
                    proof.subject, proof.thumbprint_sha1
                )),
            );
            let stored = self
                .store()
                .write_ca(&updated, Expect::Etag(record.etag), &audit)
                .map_err(|e| Self::store_error(name, &record.thumbprint, e, if_match))?;
            self.trust_changed();
            self.view(&stored)
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// The audit log, newest first.
    pub fn audit_log(
        &self,
        who: &Principal,
        target: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, HubError> {
        self.authorize(who, Right::RegistryRead, "read the audit log", "audit")?;
        Ok(self.store().list_audit(&AuditQuery {
            target: target.map(str::to_owned),
            before,
            limit: limit.clamp(1, 1000),
        })?)
    }
}
