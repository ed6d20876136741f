//! The device registry: create, read, list (paged), update, enable/disable, delete, in Azure IoT
//! Hub's model (`deviceId`, `etag`, `status`, `authentication{type, x509Thumbprint, symmetricKey}`).
//!
//! Every change that can affect a connected device (disabled, deleted, authentication changed)
//! is handed to the session registry at once, which closes the sessions it no longer admits.
//!
//! Owns no in-memory state: records are the store's, and what CONNECT keeps of them is the device
//! cache's (`device_cache`). The cross-cutting rule lives here: every device write forgets the
//! device's cache entry once the store call returns, then re-checks that device's session
//! (sessions); a delete also drops its pending activity and its persistent session.

use iothub_pki::device_id::validate_device_id;
use iothub_pki::thumbprint::normalize_thumbprint;
use iothub_store::{AuthType, DeviceActivity, DeviceRecord, DeviceStatus, Expect, StoreError};

use crate::auth::{encode_etag, IfMatch, Principal, Right};
use crate::{Hub, HubError};

/// How a device authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// An X.509 certificate chaining to a Verified CA, with CN = device id.
    CertificateAuthority,
    /// An X.509 certificate whose thumbprint (SHA-1 or SHA-256) is registered.
    SelfSigned {
        primary: String,
        secondary: Option<String>,
    },
    /// A SAS token signed with one of the device's symmetric keys (base64).
    Sas { primary: String, secondary: String },
}

impl DeviceAuth {
    pub fn auth_type(&self) -> AuthType {
        match self {
            DeviceAuth::CertificateAuthority => AuthType::CertificateAuthority,
            DeviceAuth::SelfSigned { .. } => AuthType::SelfSigned,
            DeviceAuth::Sas { .. } => AuthType::Sas,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.auth_type().as_str()
    }
}

/// A create-or-update request, as the Azure device JSON carries it.
#[derive(Debug, Clone, Default)]
pub struct PutDevice {
    /// A [`DeviceStatus`]'s text, as the JSON carries it (default enabled); checked here, so that
    /// an unknown status is refused with the precise reason.
    pub status: Option<String>,
    pub status_reason: Option<String>,
    /// An [`AuthType`]'s text: certificateAuthority, selfSigned or sas (default sas, as Azure);
    /// checked here like `status`.
    pub auth_type: Option<String>,
    pub primary_thumbprint: Option<String>,
    pub secondary_thumbprint: Option<String>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
}

/// What a caller sees of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub record: DeviceRecord,
    pub etag: String,
    pub connected: bool,
    pub activity: DeviceActivity,
    pub c2d_queued: u64,
}

fn target(id: &str) -> String {
    format!("device/{id}")
}

fn validate_key(name: &str, key: &str) -> Result<String, HubError> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| HubError::DeviceAuthInvalid(format!("{name} is not base64")))?;
    if !(16..=64).contains(&raw.len()) {
        return Err(HubError::DeviceAuthInvalid(format!(
            "{name} is {} bytes; expected 16 to 64 bytes, base64-encoded",
            raw.len()
        )));
    }
    Ok(key.trim().to_string())
}

fn new_key() -> Result<String, HubError> {
    iothub_pki::sas::generate_key()
        .map_err(|_| HubError::Internal("the system random source failed".into()))
}

impl PutDevice {
    /// The requested status: enabled (the default) or disabled.
    fn checked_status(&self) -> Result<DeviceStatus, HubError> {
        match &self.status {
            None => Ok(DeviceStatus::Enabled),
            Some(text) => DeviceStatus::parse(text).ok_or_else(|| {
                HubError::InvalidArgument(format!(
                    "status '{text}' is invalid; expected '{}' or '{}'",
                    DeviceStatus::Enabled,
                    DeviceStatus::Disabled
                ))
            }),
        }
    }

    /// Resolves the requested authentication, generating SAS keys that were not given.
    fn auth(&self) -> Result<DeviceAuth, HubError> {
        // Azure's default is sas; `none` is a type this hub does not create.
        let text = self.auth_type.as_deref().unwrap_or(AuthType::Sas.as_str());
        match AuthType::parse(text) {
            Some(AuthType::CertificateAuthority) => Ok(DeviceAuth::CertificateAuthority),
            Some(AuthType::SelfSigned) => {
                let primary = self.primary_thumbprint.as_deref().ok_or_else(|| {
                    HubError::DeviceAuthInvalid(
                        "selfSigned authentication needs x509Thumbprint.primaryThumbprint".into(),
                    )
                })?;
                let primary = normalize_thumbprint(primary).map_err(HubError::DeviceAuthInvalid)?;
                let secondary = match self.secondary_thumbprint.as_deref() {
                    Some(s) if !s.is_empty() => {
                        Some(normalize_thumbprint(s).map_err(HubError::DeviceAuthInvalid)?)
                    }
                    _ => None,
                };
                Ok(DeviceAuth::SelfSigned { primary, secondary })
            }
            Some(AuthType::Sas) => {
                let primary = match &self.primary_key {
                    Some(k) if !k.is_empty() => validate_key("symmetricKey.primaryKey", k)?,
                    _ => new_key()?,
                };
                let secondary = match &self.secondary_key {
                    Some(k) if !k.is_empty() => validate_key("symmetricKey.secondaryKey", k)?,
                    _ => new_key()?,
                };
                Ok(DeviceAuth::Sas { primary, secondary })
            }
            Some(AuthType::None) | None => Err(HubError::DeviceAuthInvalid(format!(
                "authentication type '{text}' is not supported; expected {}, {} or {}",
                AuthType::CertificateAuthority,
                AuthType::SelfSigned,
                AuthType::Sas
            ))),
        }
    }
}

/// What a device put writes, decided from the stored record (if any) and If-Match.
struct WritePlan {
    created: bool,
    expect: Expect,
    generation_id: String,
    created_at: i64,
    status_updated: i64,
}

impl WritePlan {
    /// The record to write: the request's status and authentication over what the plan keeps.
    fn record(
        self,
        id: &str,
        status: DeviceStatus,
        status_reason: Option<String>,
        auth: &DeviceAuth,
        now: i64,
    ) -> DeviceRecord {
        let (pt, st, pk, sk) = match auth {
            DeviceAuth::CertificateAuthority => (None, None, None, None),
            DeviceAuth::SelfSigned { primary, secondary } => {
                (Some(primary.clone()), secondary.clone(), None, None)
            }
            DeviceAuth::Sas { primary, secondary } => {
                (None, None, Some(primary.clone()), Some(secondary.clone()))
            }
        };
        DeviceRecord {
            device_id: id.to_string(),
            generation_id: self.generation_id,
            etag: 0,
            status,
            status_reason,
            status_updated: self.status_updated,
            auth_type: auth.auth_type(),
            primary_thumbprint: pt,
            secondary_thumbprint: st,
            primary_key: pk,
            secondary_key: sk,
            created: self.created_at,
            updated: now,
        }
    }
}

/// The authentication of a stored device.
pub fn record_auth(r: &DeviceRecord) -> Option<DeviceAuth> {
    match r.auth_type {
        AuthType::CertificateAuthority => Some(DeviceAuth::CertificateAuthority),
        AuthType::SelfSigned => Some(DeviceAuth::SelfSigned {
            primary: r.primary_thumbprint.clone().unwrap_or_default(),
            secondary: r.secondary_thumbprint.clone(),
        }),
        AuthType::Sas => Some(DeviceAuth::Sas {
            primary: r.primary_key.clone().unwrap_or_default(),
            secondary: r.secondary_key.clone().unwrap_or_default(),
        }),
        AuthType::None => None,
    }
}

impl Hub {
    pub(crate) fn device_view(&self, record: DeviceRecord) -> Result<DeviceView, HubError> {
        let activity = self.device_activity(&record.device_id)?;
        let connected = self.is_connected(&record.device_id);
        let c2d_queued = self
            .store()
            .count_pending_c2d(&record.device_id, self.now())?;
        Ok(DeviceView {
            etag: encode_etag(record.etag),
            record,
            connected,
            activity,
            c2d_queued,
        })
    }

    fn device_store_error(id: &str, e: StoreError, given: Option<&IfMatch>) -> HubError {
        match e {
            StoreError::NotFound => HubError::DeviceNotFound(id.to_string()),
            StoreError::AlreadyExists => HubError::DeviceExists(id.to_string()),
            StoreError::EtagMismatch { current } => HubError::DeviceEtagMismatch {
                name: id.to_string(),
                given: given.map(IfMatch::shown).unwrap_or_default(),
                current: encode_etag(current),
            },
            StoreError::LimitReached { limit } => HubError::DeviceLimitReached(limit),
            other => HubError::from(other),
        }
    }

    /// One device.
    pub fn get_device(&self, who: &Principal, id: &str) -> Result<DeviceView, HubError> {
        self.authorize(who, Right::RegistryRead, "read devices", &target(id))?;
        validate_device_id(id)?;
        let record = self
            .store()
            .get_device(id)?
            .ok_or_else(|| HubError::DeviceNotFound(id.to_string()))?;
        self.device_view(record)
    }

    /// Devices by id, after `after`, at most `limit` (1 to 1000).
    /// The devices whose last certificate (recorded at each CONNECT) expires within
    /// `within_secs` from now (or has expired), soonest first, at most `limit` (1-1000).
    pub fn list_expiring_devices(
        &self,
        who: &Principal,
        within_secs: i64,
        limit: u32,
    ) -> Result<Vec<DeviceView>, HubError> {
        self.authorize(who, Right::RegistryRead, "list devices", "devices")?;
        if !(0..=100 * 365 * 86_400).contains(&within_secs) {
            return Err(HubError::InvalidArgument(format!(
                "expiring within {within_secs} s: expected 0 to 100 years"
            )));
        }
        let before = self.now().saturating_add(within_secs);
        let expiring = self
            .store()
            .list_expiring_devices(before, limit.clamp(1, 1000))?;
        let mut views = Vec::with_capacity(expiring.len());
        for (id, _) in expiring {
            // Deleted since the read: left out.
            if let Some(record) = self.store().get_device(&id)? {
                views.push(self.device_view(record)?);
            }
        }
        Ok(views)
    }

    pub fn list_devices(
        &self,
        who: &Principal,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceView>, HubError> {
        self.authorize(who, Right::RegistryRead, "list devices", "devices")?;
        self.store()
            .list_devices(after, limit.clamp(1, 1000))?
            .into_iter()
            .map(|r| self.device_view(r))
            .collect()
    }

    /// Decides whether a put creates or updates, against what the store holds now: the store
    /// precondition for the write, and what a new record keeps of the old one.
    fn write_plan(
        &self,
        id: &str,
        existing: Option<&DeviceRecord>,
        if_match: Option<&IfMatch>,
        status: DeviceStatus,
        now: i64,
    ) -> Result<WritePlan, HubError> {
        match (existing, if_match) {
            (None, Some(_)) => Err(HubError::DeviceNotFound(id.to_string())),
            (None, None) => {
                let generation_id: String = iothub_pki::pop::generate_code()
                    .map_err(|_| HubError::Internal("the system random source failed".into()))?
                    .chars()
                    .take(18)
                    .collect();
                Ok(WritePlan {
                    created: true,
                    expect: Expect::Absent {
                        limit: self.config().device_limit,
                    },
                    generation_id,
                    created_at: now,
                    status_updated: now,
                })
            }
            (Some(_), None) => Err(HubError::DeviceExists(id.to_string())),
            (Some(old), Some(m)) => {
                if !m.matches(old.etag) {
                    return Err(HubError::DeviceEtagMismatch {
                        name: id.to_string(),
                        given: m.shown(),
                        current: encode_etag(old.etag),
                    });
                }
                Ok(WritePlan {
                    created: false,
                    expect: Expect::Etag(old.etag),
                    generation_id: old.generation_id.clone(),
                    created_at: old.created,
                    status_updated: if old.status == status {
                        old.status_updated
                    } else {
                        now
                    },
                })
            }
        }
    }

    /// Creates (no If-Match) or updates (If-Match: etag or `*`) a device. Returns the view and
    /// whether it was created.
    pub fn put_device(
        &self,
        who: &Principal,
        id: &str,
        request: &PutDevice,
        if_match: Option<&IfMatch>,
    ) -> Result<(DeviceView, bool), HubError> {
        const ACTION: &str = "device.put";
        self.authorize(
            who,
            Right::RegistryWrite,
            "add or update devices",
            &target(id),
        )?;
        let run = || -> Result<(DeviceView, bool), HubError> {
            validate_device_id(id)?;
            let status = request.checked_status()?;
            let auth = request.auth()?;
            let now = self.now();
            let existing = self.store().get_device(id)?;
            let plan = self.write_plan(id, existing.as_ref(), if_match, status, now)?;
            let created = plan.created;
            let expect = plan.expect;
            let record = plan.record(id, status, request.status_reason.clone(), &auth, now);
            // Keys and thumbprints are not written to the audit log.
            let detail = format!(
                "{} device, {}, authentication {}",
                if created { "created" } else { "updated" },
                status,
                auth.type_name()
            );
            let audit = self.audit_entry(who, ACTION, &target(id), &Ok(detail));
            let written = self.store().write_device(&record, expect, &audit);
            // Whatever the store answered (an error may follow a commit), CONNECT re-reads it.
            self.device_cache().forget(id);
            let stored = written.map_err(|e| Self::device_store_error(id, e, if_match))?;
            if !created {
                self.revalidate_device_sessions(id);
            }
            Ok((self.device_view(stored)?, created))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(id), e))
    }

    /// Bulk import: creates new devices (never updates one), each row refused for the same
    /// precise reasons as a `put_device` create. The rows that pass the hub's checks go to the
    /// store in one transaction; a row the store refuses (it exists, the limit) is skipped and the
    /// others commit (a bad row does not fail its chunk, so one typo does not cost a thousand
    /// devices). The answer has one result per row, in order: exactly the `Ok` rows landed.
    pub fn import_devices(
        &self,
        who: &Principal,
        rows: &[(String, PutDevice)],
    ) -> Result<Vec<Result<DeviceView, HubError>>, HubError> {
        const ACTION: &str = "device.put";
        self.authorize(
            who,
            Right::RegistryWrite,
            "add or update devices",
            "devices",
        )?;
        let now = self.now();
        let mut results: Vec<Option<Result<DeviceView, HubError>>> = Vec::with_capacity(rows.len());
        let mut batch = Vec::new();
        let mut batch_rows = Vec::new();
        for (i, (id, request)) in rows.iter().enumerate() {
            let checked = (|| -> Result<DeviceRecord, HubError> {
                validate_device_id(id)?;
                let status = request.checked_status()?;
                let auth = request.auth()?;
                let plan = self.write_plan(id, None, None, status, now)?;
                Ok(plan.record(id, status, request.status_reason.clone(), &auth, now))
            })();
            match checked {
                Ok(record) => {
                    // Keys and thumbprints are not written to the audit log.
                    let detail = format!(
                        "created device, {}, authentication {} (import)",
                        record.status,
                        record.auth_type.as_str()
                    );
                    let audit = self.audit_entry(who, ACTION, &target(id), &Ok(detail));
                    batch.push((record, audit));
                    batch_rows.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(self.refuse(who, ACTION, &target(id), e))),
            }
        }
        if !batch.is_empty() {
            let written = self
                .store()
                .create_devices(&batch, self.config().device_limit);
            // Whatever the store answered (an error may follow a commit), CONNECT re-reads them.
            for (record, _) in &batch {
                self.device_cache().forget(&record.device_id);
            }
            let written = written.map_err(HubError::from)?;
            for ((record, _), (row, answer)) in batch.iter().zip(batch_rows.iter().zip(written)) {
                let id = &record.device_id;
                results[*row] = Some(match answer {
                    Ok(stored) => self.device_view(stored),
                    Err(e) => self.refuse(
                        who,
                        ACTION,
                        &target(id),
                        Self::device_store_error(id, e, None),
                    ),
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(HubError::Internal("row not answered".into()))))
            .collect())
    }

    /// Sets a device's status (enable or disable), keeping everything else.
    pub fn set_device_status(
        &self,
        who: &Principal,
        id: &str,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<DeviceView, HubError> {
        let current = self.get_device(who, id)?;
        let r = &current.record;
        let request = PutDevice {
            status: Some(
                if enabled {
                    DeviceStatus::Enabled
                } else {
                    DeviceStatus::Disabled
                }
                .as_str()
                .to_string(),
            ),
            status_reason: reason.or_else(|| r.status_reason.clone()),
            auth_type: Some(r.auth_type.as_str().to_string()),
            primary_thumbprint: r.primary_thumbprint.clone(),
            secondary_thumbprint: r.secondary_thumbprint.clone(),
            primary_key: r.primary_key.clone(),
            secondary_key: r.secondary_key.clone(),
        };
        let etag = IfMatch::Etag(current.etag.clone());
        Ok(self.put_device(who, id, &request, Some(&etag))?.0)
    }

    /// Deletes a device; its sessions are closed at once.
    pub fn delete_device(
        &self,
        who: &Principal,
        id: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(), HubError> {
        const ACTION: &str = "device.delete";
        self.authorize(who, Right::RegistryWrite, "delete devices", &target(id))?;
        let run = || -> Result<(), HubError> {
            validate_device_id(id)?;
            let record = self
                .store()
                .get_device(id)?
                .ok_or_else(|| HubError::DeviceNotFound(id.to_string()))?;
            if let Some(m) = if_match {
                if !m.matches(record.etag) {
                    return Err(HubError::DeviceEtagMismatch {
                        name: id.to_string(),
                        given: m.shown(),
                        current: encode_etag(record.etag),
                    });
                }
            }
            let audit = self.audit_entry(who, ACTION, &target(id), &Ok("deleted device".into()));
            let deleted = self.store().delete_device(id, Some(record.etag), &audit);
            self.device_cache().forget(id);
            deleted.map_err(|e| Self::device_store_error(id, e, if_match))?;
            self.forget_activity(id);
            // Its persistent session and any held refusal reason: a device made again with the
            // same id must not inherit them.
            self.sessions().forget_device(id);
            self.revalidate_device_sessions(id);
            Ok(())
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(id), e))
    }
}
