//! The provisioning service's enrollments, as operators manage them: enrollment groups (any
//! device whose chain ends at the group's Verified CA) and individual enrollments (one device, by
//! its certificate), each with an initial twin and an enabled flag; the registrations made through
//! them; and the hub's ID scope.
//!
//! Why its own module: these are the rules of who may provision, apart from the provisioning
//! exchange itself (`provisioning`). Owns no in-memory state: enrollments and registrations are
//! the store's (read at each registration, so every node of a cluster sees a change at once).
//! Asks of others: the store, the audit log, `twins` (the initial twin's rules).

use iothub_pki::cert::{CertInfo, CommonNameProblem};
use iothub_store::{EnrollmentKind, EnrollmentRecord, Expect, RegistrationRecord, StoreError};
use serde_json::Value;

use crate::auth::{decode_etag, encode_etag, IfMatch, Principal, Right};
use crate::twins::check_initial_twin;
use crate::{Hub, HubError};

/// What an operator writes: the group's CA, or the individual enrollment's certificate (any
/// accepted upload shape: PEM, base64 of DER, DER), with the initial twin and whether it is on.
#[derive(Debug, Clone)]
pub struct PutEnrollment {
    pub attestation: Attestation,
    /// `{"tags": {...}, "properties": {"desired": {...}}}`, or None for an empty twin.
    pub initial_twin: Option<Value>,
    pub enabled: bool,
}

/// How devices of an enrollment prove who they are.
#[derive(Debug, Clone)]
pub enum Attestation {
    /// A chain ending at this Verified CA (root or intermediate), leaf CN = registration id.
    Ca(String),
    /// Exactly this certificate, CN = registration id.
    Certificate(Vec<u8>),
}

/// An enrollment as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentView {
    pub kind: EnrollmentKind,
    pub name: String,
    pub ca_name: Option<String>,
    /// Individual: the enrolled certificate's SHA-256 thumbprint, subject and notAfter.
    pub thumbprint: Option<String>,
    pub subject: Option<String>,
    pub not_after: Option<i64>,
    /// Individual: the enrolled certificate, PEM (public: sent back so that a read-modify-write
    /// of the enrollment carries it).
    pub certificate_pem: Option<String>,
    pub initial_twin: Value,
    pub enabled: bool,
    pub etag: String,
    pub created: i64,
    pub updated: i64,
}

/// A registration as the API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationView {
    pub registration_id: String,
    pub device_id: String,
    pub enrollment_kind: EnrollmentKind,
    pub enrollment_name: String,
    pub etag: String,
    pub created: i64,
    pub updated: i64,
}

/// The setting the generated ID scope is kept under.
const ID_SCOPE_SETTING: &str = "provisioning.id_scope";

/// The words an enrollment kind is named by in messages.
pub(crate) fn kind_name(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Group => "enrollment group",
        EnrollmentKind::Individual => "individual enrollment",
    }
}

fn target(kind: EnrollmentKind, name: &str) -> String {
    match kind {
        EnrollmentKind::Group => format!("enrollmentGroup/{name}"),
        EnrollmentKind::Individual => format!("enrollment/{name}"),
    }
}

/// An ID scope as operators may set one: 1 to 64 ASCII letters and digits (Azure's are `0ne`
/// and 8 hex digits).
pub fn validate_id_scope(scope: &str) -> Result<(), HubError> {
    if (1..=64).contains(&scope.len()) && scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(HubError::InvalidArgument(format!(
            "the ID scope '{}' is not usable: expected 1 to 64 ASCII letters and digits (such as 0ne00A1B2C3)",
            crate::peer_text::escaped(scope)
        )))
    }
}

/// A group name: 1 to 128 characters among ASCII letters, digits and `-._:`.
fn validate_group_name(name: &str) -> Result<(), HubError> {
    if (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        Ok(())
    } else {
        Err(HubError::InvalidArgument(format!(
            "the enrollment group name '{}' is not usable: expected 1 to 128 characters among ASCII letters, digits and -._:",
            crate::peer_text::escaped(name)
        )))
    }
}

fn registration_view(r: RegistrationRecord) -> RegistrationView {
    RegistrationView {
        registration_id: r.registration_id,
        device_id: r.device_id,
        enrollment_kind: r.enrollment_kind,
        enrollment_name: r.enrollment_name,
        etag: encode_etag(r.etag),
        created: r.created,
        updated: r.updated,
    }
}

impl Hub {
    /// The hub's ID scope: `serve --id-scope` when set, else the one generated when first asked
    /// for and kept in the store (the same on every node sharing it).
    pub fn id_scope(&self) -> Result<String, HubError> {
        if let Some(scope) = &self.config().id_scope {
            return Ok(scope.clone());
        }
        if let Some(held) = self.store().get_setting(ID_SCOPE_SETTING)? {
            return Ok(String::from_utf8_lossy(&held).into_owned());
        }
        let code = iothub_pki::pop::generate_code()
            .map_err(|_| HubError::Internal("the system random source failed".into()))?;
        let scope = format!("0ne{}", &code[..8]);
        // Another node may have generated one first: then that one is the hub's.
        self.store()
            .insert_settings_if_absent(&[(ID_SCOPE_SETTING, scope.as_bytes())])?;
        let held = self
            .store()
            .get_setting(ID_SCOPE_SETTING)?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&held).into_owned())
    }

    /// The hub's ID scope, for a caller with RegistryRead.
    pub fn get_id_scope(&self, who: &Principal) -> Result<String, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read the ID scope",
            "provisioning",
        )?;
        self.id_scope()
    }

    /// The enrollments of one kind, by name.
    pub fn list_enrollments(
        &self,
        who: &Principal,
        kind: EnrollmentKind,
    ) -> Result<Vec<EnrollmentView>, HubError> {
        self.authorize(who, Right::RegistryRead, "read enrollments", "enrollments")?;
        self.store()
            .list_enrollments(kind)?
            .into_iter()
            .map(enrollment_view)
            .collect()
    }

    pub fn get_enrollment(
        &self,
        who: &Principal,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<EnrollmentView, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read enrollments",
            &target(kind, name),
        )?;
        let record = self.store().get_enrollment(kind, name)?;
        record
            .map(enrollment_view)
            .unwrap_or_else(|| Err(not_found(kind, name)))
    }

    /// Creates an enrollment (no If-Match) or replaces it (If-Match: its etag, or `*`). A group's
    /// CA must exist and be Verified; an individual enrollment's certificate must name the
    /// registration id as its only CN. Returns the view and whether it was created.
    pub fn put_enrollment(
        &self,
        who: &Principal,
        kind: EnrollmentKind,
        name: &str,
        request: &PutEnrollment,
        if_match: Option<&IfMatch>,
    ) -> Result<(EnrollmentView, bool), HubError> {
        let action = match kind {
            EnrollmentKind::Group => "enrollmentGroup.put",
            EnrollmentKind::Individual => "enrollment.put",
        };
        self.authorize(
            who,
            Right::RegistryWrite,
            "add or change enrollments",
            &target(kind, name),
        )?;
        let run = || -> Result<(EnrollmentView, bool), HubError> {
            let mut record = self.enrollment_record(kind, name, request)?;
            let existing = self.store().get_enrollment(kind, name)?;
            let expect = enrollment_expect(kind, name, existing.as_ref(), if_match, self)?;
            if let Some(old) = &existing {
                record.created = old.created;
            }
            let detail = format!(
                "{} {} '{name}' ({}, {})",
                if existing.is_some() {
                    "replaced"
                } else {
                    "created"
                },
                kind_name(kind),
                match &record.ca_name {
                    Some(ca) => format!("CA '{ca}'"),
                    None => format!(
                        "certificate {}",
                        record.thumbprint.as_deref().unwrap_or_default()
                    ),
                },
                if record.enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            );
            let audit = self.audit_entry(who, action, &target(kind, name), &Ok(detail));
            let stored = self
                .store()
                .write_enrollment(&record, expect, &audit)
                .map_err(|e| {
                    enrollment_store_error(kind, name, record.thumbprint.as_deref(), e, if_match)
                })?;
            Ok((enrollment_view(stored)?, existing.is_none()))
        };
        run().or_else(|e| self.refuse(who, action, &target(kind, name), e))
    }

    /// Deletes an enrollment (If-Match optional). Devices registered through it stay, as do
    /// their registrations.
    pub fn delete_enrollment(
        &self,
        who: &Principal,
        kind: EnrollmentKind,
        name: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(), HubError> {
        let action = match kind {
            EnrollmentKind::Group => "enrollmentGroup.delete",
            EnrollmentKind::Individual => "enrollment.delete",
        };
        self.authorize(
            who,
            Right::RegistryWrite,
            "delete enrollments",
            &target(kind, name),
        )?;
        let run = || -> Result<(), HubError> {
            let etag = match if_match {
                Some(IfMatch::Etag(given)) => Some(decode_etag(given).unwrap_or(u64::MAX)),
                _ => None,
            };
            let audit = self.audit_entry(
                who,
                action,
                &target(kind, name),
                &Ok(format!("deleted {} '{name}'", kind_name(kind))),
            );
            self.store()
                .delete_enrollment(kind, name, etag, &audit)
                .map_err(|e| enrollment_store_error(kind, name, None, e, if_match))
        };
        run().or_else(|e| self.refuse(who, action, &target(kind, name), e))
    }

    /// Every registration, by registration id.
    pub fn list_registrations(&self, who: &Principal) -> Result<Vec<RegistrationView>, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read registrations",
            "registrations",
        )?;
        Ok(self
            .store()
            .list_registrations()?
            .into_iter()
            .map(registration_view)
            .collect())
    }

    pub fn get_registration(
        &self,
        who: &Principal,
        registration_id: &str,
    ) -> Result<RegistrationView, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read registrations",
            &format!("registration/{registration_id}"),
        )?;
        self.store()
            .get_registration(registration_id)?
            .map(registration_view)
            .ok_or_else(|| {
                HubError::RegistrationNotFound(format!(
                    "registration '{}' does not exist",
                    crate::peer_text::escaped(registration_id)
                ))
            })
    }

    /// The record an operator's request makes, checked: name, attestation, initial twin.
    fn enrollment_record(
        &self,
        kind: EnrollmentKind,
        name: &str,
        request: &PutEnrollment,
    ) -> Result<EnrollmentRecord, HubError> {
        let now = self.now();
        let initial_twin = match &request.initial_twin {
            Some(twin) => Some(check_initial_twin(twin)?.to_string()),
            None => None,
        };
        let mut record = EnrollmentRecord {
            kind,
            name: name.to_string(),
            ca_name: None,
            certificate: None,
            thumbprint: None,
            initial_twin,
            enabled: request.enabled,
            etag: 0,
            created: now,
            updated: now,
        };
        match (kind, &request.attestation) {
            (EnrollmentKind::Group, Attestation::Ca(ca_name)) => {
                validate_group_name(name)?;
                self.check_group_ca(ca_name)?;
                record.ca_name = Some(ca_name.clone());
            }
            (EnrollmentKind::Individual, Attestation::Certificate(input)) => {
                iothub_pki::device_id::validate_device_id(name)?;
                let der = iothub_pki::input::parse_certificate_input(
                    input,
                    self.config().max_certificate_bytes,
                )?;
                let info = CertInfo::from_der(&der)?;
                match info.single_common_name() {
                    Ok(cn) if cn == name => {}
                    Ok(cn) => {
                        return Err(HubError::InvalidArgument(format!(
                            "the certificate's CN is '{}'; an individual enrollment's registration id ('{name}') must equal it, as the device's CONNECT will",
                            crate::peer_text::escaped(cn)
                        )))
                    }
                    Err(problem) => {
                        let why = match problem {
                            CommonNameProblem::NotText(what) => format!("its CN is {what}, not text"),
                            CommonNameProblem::Missing => "it has no CN".to_string(),
                            CommonNameProblem::Several(n) => format!("it has {n} CNs"),
                        };
                        return Err(HubError::InvalidArgument(format!(
                            "the certificate cannot be enrolled as '{name}': {why}; its one CN must be the registration id"
                        )));
                    }
                }
                record.thumbprint = Some(info.thumbprint_sha256.clone());
                record.certificate = Some(der);
            }
            (EnrollmentKind::Group, Attestation::Certificate(_)) => {
                return Err(HubError::InvalidArgument(
                    "an enrollment group is bound to a CA (caName), not to one certificate".into(),
                ))
            }
            (EnrollmentKind::Individual, Attestation::Ca(_)) => {
                return Err(HubError::InvalidArgument(
                    "an individual enrollment names its device's certificate, not a CA".into(),
                ))
            }
        }
        Ok(record)
    }

    /// A group's CA exists and is Verified (an Unverified one is refused with the reason).
    fn check_group_ca(&self, ca_name: &str) -> Result<(), HubError> {
        iothub_pki::pop::validate_ca_name(ca_name)?;
        let ca = self
            .store()
            .get_ca(ca_name)?
            .ok_or_else(|| HubError::NotFound(ca_name.to_string()))?;
        if ca.is_verified {
            Ok(())
        } else {
            Err(HubError::EnrollmentCaNotVerified(format!(
                "certificate '{ca_name}' is Unverified: an enrollment group needs a Verified CA; prove possession of its key first (iothub cert prove {ca_name} ...)"
            )))
        }
    }
}

fn not_found(kind: EnrollmentKind, name: &str) -> HubError {
    HubError::EnrollmentNotFound {
        kind: kind_name(kind),
        name: crate::peer_text::escaped(name).into_owned(),
    }
}

/// The precondition of an enrollment write: create without If-Match, replace with it.
fn enrollment_expect(
    kind: EnrollmentKind,
    name: &str,
    existing: Option<&EnrollmentRecord>,
    if_match: Option<&IfMatch>,
    hub: &Hub,
) -> Result<Expect, HubError> {
    match (existing, if_match) {
        (_, None) => Ok(Expect::Absent {
            limit: hub.config().device_limit,
        }),
        (None, Some(_)) => Err(not_found(kind, name)),
        (Some(old), Some(IfMatch::Any)) => Ok(Expect::Etag(old.etag)),
        (Some(old), Some(IfMatch::Etag(given))) => match decode_etag(given) {
            Some(etag) => Ok(Expect::Etag(etag)),
            None => Err(HubError::EnrollmentEtagMismatch {
                kind: kind_name(kind),
                name: name.to_string(),
                given: given.clone(),
                current: encode_etag(old.etag),
            }),
        },
    }
}

/// A store refusal of an enrollment write or delete, as the hub words it (`thumbprint`: the
/// certificate being enrolled, if any).
fn enrollment_store_error(
    kind: EnrollmentKind,
    name: &str,
    thumbprint: Option<&str>,
    e: StoreError,
    if_match: Option<&IfMatch>,
) -> HubError {
    match e {
        StoreError::AlreadyExists => HubError::EnrollmentExists {
            kind: kind_name(kind),
            name: name.to_string(),
        },
        StoreError::NotFound => not_found(kind, name),
        StoreError::EtagMismatch { current } => HubError::EnrollmentEtagMismatch {
            kind: kind_name(kind),
            name: name.to_string(),
            given: if_match.map(IfMatch::shown).unwrap_or_default(),
            current: encode_etag(current),
        },
        StoreError::LimitReached { limit } => HubError::EnrollmentLimitReached(limit),
        StoreError::DuplicateThumbprint { name: other } => HubError::EnrollmentCertificateExists {
            thumbprint: thumbprint.unwrap_or_default().to_string(),
            other,
        },
        other => other.into(),
    }
}

fn enrollment_view(r: EnrollmentRecord) -> Result<EnrollmentView, HubError> {
    let info = match &r.certificate {
        Some(der) => Some(CertInfo::from_der(der)?),
        None => None,
    };
    let initial_twin = match &r.initial_twin {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| HubError::Internal(format!("a stored initial twin is not JSON: {e}")))?,
        None => serde_json::json!({ "tags": {}, "properties": { "desired": {} } }),
    };
    Ok(EnrollmentView {
        kind: r.kind,
        name: r.name,
        ca_name: r.ca_name,
        thumbprint: r.thumbprint,
        subject: info.as_ref().map(|i| i.subject.clone()),
        not_after: info.as_ref().map(|i| i.not_after),
        certificate_pem: r.certificate.as_deref().map(iothub_pki::input::der_to_pem),
        initial_twin,
        enabled: r.enabled,
        etag: encode_etag(r.etag),
        created: r.created,
        updated: r.updated,
    })
}
