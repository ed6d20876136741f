//! Errors of the service layer. Each carries a stable numeric code in IoT Hub's style (HTTP status
//! times 1000 plus a number), a stable name, an HTTP status, and a message that says what was
//! expected and what was found. Adapters render them; they never invent their own.

use iothub_pki::input::InputError;
use iothub_pki::pop::{NameError, ProofError, UploadError};
use iothub_pki::sas::SasError;
use iothub_store::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};

/// A stable error identity: numeric code (as Azure's `IH400053`), name, HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub number: u32,
    pub name: &'static str,
    pub status: u16,
}

const fn code(number: u32, name: &'static str) -> ErrorCode {
    ErrorCode {
        number,
        name,
        status: (number / 1000) as u16,
    }
}

/// Defines each code once, as a named constant, and [`ALL_CODES`] from exactly those constants:
/// a code cannot be used without being in the table, and a misspelt name does not compile.
macro_rules! error_codes {
    ($($constant:ident = ($number:literal, $name:literal),)*) => {
        $(pub const $constant: ErrorCode = code($number, $name);)*

        /// Every error code the hub emits, for documentation and tests (docs/error-codes.md lists the
        /// same rows; a test keeps the two in step).
        pub const ALL_CODES: &[ErrorCode] = &[$($constant),*];
    };
}

error_codes! {
    ARGUMENT_INVALID = (400004, "ArgumentInvalid"),
    CERTIFICATE_NAME_INVALID = (400050, "CertificateNameInvalid"),
    CERTIFICATE_UNPARSABLE = (400051, "CertificateUnparsable"),
    CERTIFICATE_COUNT_INVALID = (400052, "CertificateCountInvalid"),
    PROOF_ISSUER_MISMATCH = (400053, "ProofIssuerMismatch"),
    PROOF_SIGNATURE_INVALID = (400054, "ProofSignatureInvalid"),
    PROOF_COMMON_NAME_MISMATCH = (400055, "ProofCommonNameMismatch"),
    VERIFICATION_CODE_MISSING = (400056, "VerificationCodeMissing"),
    VERIFICATION_CODE_EXPIRED = (400057, "VerificationCodeExpired"),
    PROOF_CERTIFICATE_NOT_VALID_NOW = (400058, "ProofCertificateNotValidNow"),
    CERTIFICATE_NOT_CA = (400059, "CertificateNotCa"),
    VERIFY_ON_UPLOAD_NOT_ALLOWED = (400060, "VerifyOnUploadNotAllowed"),
    CERTIFICATE_KEY_UNSUPPORTED = (400061, "CertificateKeyUnsupported"),
    PROOF_COMMON_NAME_MISSING = (400062, "ProofCommonNameMissing"),
    CERTIFICATE_TOO_LARGE = (400063, "CertificateTooLarge"),
    VERIFICATION_CODE_USED = (400064, "VerificationCodeUsed"),
    CERTIFICATE_EMPTY = (400065, "CertificateEmpty"),
    CERTIFICATE_EXPIRED = (400066, "CertificateExpired"),
    CERTIFICATE_PEM_INVALID = (400067, "CertificatePemInvalid"),
    PROOF_SIGNATURE_ALGORITHM_REFUSED = (400068, "ProofSignatureAlgorithmRefused"),
    PROOF_COMMON_NAME_NOT_TEXT = (400069, "ProofCommonNameNotText"),
    DEVICE_ID_INVALID = (400070, "DeviceIdInvalid"),
    DEVICE_AUTHENTICATION_INVALID = (400071, "DeviceAuthenticationInvalid"),
    MESSAGE_TOO_LARGE = (400072, "MessageTooLarge"),
    TWIN_INVALID = (400073, "TwinInvalid"),
    POLICY_NAME_INVALID = (400074, "PolicyNameInvalid"),
    POLICY_RIGHTS_INVALID = (400075, "PolicyRightsInvalid"),
    CERTIFICATE_SIGNATURE_ALGORITHM_MISMATCH = (400076, "CertificateSignatureAlgorithmMismatch"),
    CERTIFICATE_PRIVATE_KEY_INCLUDED = (400077, "CertificatePrivateKeyIncluded"),
    CRL_INVALID = (400078, "CrlInvalid"),
    CRL_ISSUER_MISMATCH = (400079, "CrlIssuerMismatch"),
    CRL_SIGNATURE_INVALID = (400080, "CrlSignatureInvalid"),
    CRL_NOT_CURRENT = (400081, "CrlNotCurrent"),
    ENROLLMENT_CA_NOT_VERIFIED = (400082, "EnrollmentCaNotVerified"),
    PROVISIONING_REQUEST_INVALID = (400083, "ProvisioningRequestInvalid"),
    CONSUMER_GROUP_INVALID = (400084, "ConsumerGroupInvalid"),
    CRL_NOT_NEWER = (409052, "CrlNotNewer"),
    IOT_HUB_UNAUTHORIZED_ACCESS = (401002, "IotHubUnauthorizedAccess"),
    PROVISIONING_UNAUTHORIZED = (401003, "ProvisioningUnauthorized"),
    IOT_HUB_FORBIDDEN = (403001, "IotHubForbidden"),
    CSRF_REJECTED = (403002, "CsrfRejected"),
    DEVICE_MAXIMUM_QUEUE_DEPTH_EXCEEDED = (403004, "DeviceMaximumQueueDepthExceeded"),
    CERTIFICATE_LIMIT_REACHED = (403050, "CertificateLimitReached"),
    DEVICE_LIMIT_REACHED = (403051, "DeviceLimitReached"),
    POLICY_LIMIT_REACHED = (403052, "PolicyLimitReached"),
    OWNER_POLICY_PROTECTED = (403053, "OwnerPolicyProtected"),
    ENROLLMENT_DISABLED = (403054, "EnrollmentDisabled"),
    ENROLLMENT_LIMIT_REACHED = (403055, "EnrollmentLimitReached"),
    CONSUMER_GROUP_LIMIT_REACHED = (403056, "ConsumerGroupLimitReached"),
    ROUTE_NOT_FOUND = (404000, "RouteNotFound"),
    DEVICE_NOT_FOUND = (404001, "DeviceNotFound"),
    DEVICE_NOT_ONLINE = (404103, "DeviceNotOnline"),
    CERTIFICATE_NOT_FOUND = (404050, "CertificateNotFound"),
    POLICY_NOT_FOUND = (404051, "PolicyNotFound"),
    ENROLLMENT_NOT_FOUND = (404052, "EnrollmentNotFound"),
    REGISTRATION_NOT_FOUND = (404053, "RegistrationNotFound"),
    CONSUMER_GROUP_NOT_FOUND = (404054, "ConsumerGroupNotFound"),
    METHOD_NOT_ALLOWED = (405001, "MethodNotAllowed"),
    DEVICE_ALREADY_EXISTS = (409001, "DeviceAlreadyExists"),
    CERTIFICATE_THUMBPRINT_EXISTS = (409050, "CertificateThumbprintExists"),
    CERTIFICATE_ALREADY_REVOKED = (409051, "CertificateAlreadyRevoked"),
    ENROLLMENT_EXISTS = (409053, "EnrollmentExists"),
    ENROLLMENT_CERTIFICATE_EXISTS = (409054, "EnrollmentCertificateExists"),
    CONSUMER_GROUP_EXISTS = (409055, "ConsumerGroupExists"),
    READER_CONFLICT = (409056, "ReaderConflict"),
    PRECONDITION_FAILED = (412001, "PreconditionFailed"),
    CERTIFICATE_EXISTS = (412002, "CertificateExists"),
    FEEDBACK_LOCK_LOST = (412003, "FeedbackLockLost"),
    REQUEST_TOO_LARGE = (413001, "RequestTooLarge"),
    THROTTLING_EXCEPTION = (429001, "ThrottlingException"),
    SERVER_ERROR = (500001, "ServerError"),
    SERVICE_UNAVAILABLE = (503000, "ServiceUnavailable"),
    GATEWAY_TIMEOUT = (504101, "GatewayTimeout"),
}

/// A refusal or failure of the service layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("policy '{policy}' lacks the right {right} needed to {action}")]
    Forbidden {
        policy: String,
        right: &'static str,
        action: String,
    },
    /// Refused to a portal session whatever its rights (keys, login links, policy management).
    #[error("{0}")]
    PortalRefused(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    PolicyName(#[from] iothub_pki::policy::PolicyNameError),
    #[error(transparent)]
    PolicyRights(#[from] iothub_pki::policy::RightsError),
    #[error("the hub already holds its limit of {0} shared access policies; delete one first")]
    PolicyLimitReached(u64),
    #[error("{0}")]
    OwnerPolicyProtected(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("isVerified=true on upload is refused: this hub requires proof of possession (an operator can enable verification on upload with --allow-verify-on-upload)")]
    VerifyOnUploadNotAllowed,
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("certificate '{0}' does not exist")]
    NotFound(String),
    #[error("policy '{0}' does not exist")]
    PolicyNotFound(String),
    #[error("Invalid ETag supplied for certificate '{name}': If-Match is '{given}' but the current etag is '{current}'; read the certificate again and retry with its etag")]
    EtagMismatch {
        name: String,
        given: String,
        current: String,
    },
    #[error("certificate '{0}' already exists; to replace it, send its current etag in If-Match")]
    Exists(String),
    #[error(
        "If-Match was given but certificate '{0}' does not exist, so there is nothing to replace"
    )]
    NothingToReplace(String),
    #[error("this certificate (thumbprint {thumbprint}) is already registered as '{other}'; a certificate is registered under one name only")]
    DuplicateThumbprint { thumbprint: String, other: String },
    #[error(
        "the hub already holds its limit of {0} CA certificates; delete one or raise --ca-limit"
    )]
    LimitReached(u64),
    #[error(transparent)]
    DeviceId(#[from] iothub_pki::device_id::DeviceIdError),
    #[error("{0}")]
    DeviceAuthInvalid(String),
    #[error("device '{0}' is not registered")]
    DeviceNotFound(String),
    #[error("device '{0}' already exists; to update it, send its etag (or \"*\") in If-Match")]
    DeviceExists(String),
    #[error("Invalid ETag supplied for device '{name}': If-Match is '{given}' but the current etag is '{current}'")]
    DeviceEtagMismatch {
        name: String,
        given: String,
        current: String,
    },
    #[error("the hub already holds its limit of {0} devices; delete one or raise --device-limit")]
    DeviceLimitReached(u64),
    #[error("device '{device}' already has {limit} cloud-to-device messages queued; wait for it to receive them or for them to expire")]
    QueueFull { device: String, limit: u64 },
    #[error("the message is {size} bytes; at most {max} bytes are accepted")]
    MessageTooLarge { size: usize, max: usize },
    #[error("{0}")]
    TwinInvalid(String),
    #[error("device '{0}' is not online (not connected, or not subscribed to direct methods)")]
    DeviceNotOnline(String),
    #[error("device '{device}' did not answer method '{method}' within {seconds} s")]
    MethodTimeout {
        device: String,
        method: String,
        seconds: u64,
    },
    #[error(transparent)]
    Crl(#[from] iothub_pki::crl::CrlError),
    #[error("certificate serial {serial} is already revoked by '{ca_name}' (`iothub cert revoked {ca_name}` lists when and why)")]
    AlreadyRevoked { ca_name: String, serial: String },
    #[error("{kind} '{name}' does not exist")]
    EnrollmentNotFound { kind: &'static str, name: String },
    /// No enrollment admits a provisioning client (the reason names what was looked for).
    #[error("{0}")]
    NoEnrollment(String),
    #[error("{kind} '{name}' already exists; to replace it, send its current etag in If-Match")]
    EnrollmentExists { kind: &'static str, name: String },
    #[error("Invalid ETag supplied for {kind} '{name}': If-Match is '{given}' but the current etag is '{current}'; read it again and retry with its etag")]
    EnrollmentEtagMismatch {
        kind: &'static str,
        name: String,
        given: String,
        current: String,
    },
    #[error("this certificate (SHA-256 thumbprint {thumbprint}) is already enrolled as '{other}'; a certificate is enrolled once")]
    EnrollmentCertificateExists { thumbprint: String, other: String },
    #[error("{0}")]
    EnrollmentCaNotVerified(String),
    #[error("the hub already holds its limit of {0} enrollments (groups and individual ones together, --device-limit); delete one first")]
    EnrollmentLimitReached(u64),
    #[error(
        "{kind} '{name}' is disabled: registrations through it are refused until it is enabled"
    )]
    EnrollmentDisabled { kind: &'static str, name: String },
    /// A provisioning client's certificate or chain does not admit it (the precise reason).
    #[error("{0}")]
    RegistrationRefused(String),
    #[error("{0}")]
    ProvisioningRequestInvalid(String),
    #[error("{0}")]
    RegistrationNotFound(String),
    #[error("{0}")]
    ConsumerGroupInvalid(String),
    #[error("consumer group '{0}' does not exist; `iothub consumer-group list` shows them ($Default always exists)")]
    ConsumerGroupNotFound(String),
    #[error("consumer group '{0}' already exists")]
    ConsumerGroupExists(String),
    #[error("the hub already holds its limit of {0} consumer groups besides $Default (--consumer-group-limit); delete one first")]
    ConsumerGroupLimitReached(u64),
    /// An Event Hubs reader refused by the owner-level rule or the readers' limit.
    #[error("{0}")]
    ReaderConflict(String),
    #[error("no feedback is locked under lock token '{0}': it was completed or abandoned already, or its lock ran out (--c2d-feedback-lock) and the records went back to the queue; receive the feedback again")]
    FeedbackLockLost(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The store could not be reached (`StoreError::Unavailable`): a clear, retryable refusal
    /// naming the database, never a half-done change.
    #[error("{0}; nothing was done, retry when it is back")]
    StoreUnavailable(String),
}

impl HubError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HubError::Unauthorized(_) => IOT_HUB_UNAUTHORIZED_ACCESS,
            HubError::Forbidden { .. } => IOT_HUB_FORBIDDEN,
            HubError::PortalRefused(_) => IOT_HUB_FORBIDDEN,
            HubError::InvalidArgument(_) => ARGUMENT_INVALID,
            HubError::PolicyName(_) => POLICY_NAME_INVALID,
            HubError::PolicyRights(_) => POLICY_RIGHTS_INVALID,
            HubError::PolicyLimitReached(_) => POLICY_LIMIT_REACHED,
            HubError::OwnerPolicyProtected(_) => OWNER_POLICY_PROTECTED,
            HubError::Name(_) => CERTIFICATE_NAME_INVALID,
            HubError::Input(e) => input_code(e),
            HubError::Upload(e) => upload_code(e),
            HubError::VerifyOnUploadNotAllowed => VERIFY_ON_UPLOAD_NOT_ALLOWED,
            HubError::Proof(e) => proof_code(e),
            HubError::NotFound(_) => CERTIFICATE_NOT_FOUND,
            HubError::PolicyNotFound(_) => POLICY_NOT_FOUND,
            HubError::EtagMismatch { .. } | HubError::NothingToReplace(_) => PRECONDITION_FAILED,
            HubError::Exists(_) => CERTIFICATE_EXISTS,
            HubError::DuplicateThumbprint { .. } => CERTIFICATE_THUMBPRINT_EXISTS,
            HubError::LimitReached(_) => CERTIFICATE_LIMIT_REACHED,
            HubError::DeviceId(_) => DEVICE_ID_INVALID,
            HubError::DeviceAuthInvalid(_) => DEVICE_AUTHENTICATION_INVALID,
            HubError::DeviceNotFound(_) => DEVICE_NOT_FOUND,
            HubError::DeviceExists(_) => DEVICE_ALREADY_EXISTS,
            HubError::DeviceEtagMismatch { .. } => PRECONDITION_FAILED,
            HubError::DeviceLimitReached(_) => DEVICE_LIMIT_REACHED,
            HubError::QueueFull { .. } => DEVICE_MAXIMUM_QUEUE_DEPTH_EXCEEDED,
            HubError::MessageTooLarge { .. } => MESSAGE_TOO_LARGE,
            HubError::TwinInvalid(_) => TWIN_INVALID,
            HubError::DeviceNotOnline(_) => DEVICE_NOT_ONLINE,
            HubError::MethodTimeout { .. } => GATEWAY_TIMEOUT,
            HubError::AlreadyRevoked { .. } => CERTIFICATE_ALREADY_REVOKED,
            HubError::Crl(e) => crl_code(e),
            HubError::EnrollmentNotFound { .. } | HubError::NoEnrollment(_) => ENROLLMENT_NOT_FOUND,
            HubError::EnrollmentExists { .. } => ENROLLMENT_EXISTS,
            HubError::EnrollmentEtagMismatch { .. } => PRECONDITION_FAILED,
            HubError::EnrollmentCertificateExists { .. } => ENROLLMENT_CERTIFICATE_EXISTS,
            HubError::EnrollmentCaNotVerified(_) => ENROLLMENT_CA_NOT_VERIFIED,
            HubError::EnrollmentLimitReached(_) => ENROLLMENT_LIMIT_REACHED,
            HubError::EnrollmentDisabled { .. } => ENROLLMENT_DISABLED,
            HubError::RegistrationRefused(_) => PROVISIONING_UNAUTHORIZED,
            HubError::ProvisioningRequestInvalid(_) => PROVISIONING_REQUEST_INVALID,
            HubError::RegistrationNotFound(_) => REGISTRATION_NOT_FOUND,
            HubError::ConsumerGroupInvalid(_) => CONSUMER_GROUP_INVALID,
            HubError::ConsumerGroupNotFound(_) => CONSUMER_GROUP_NOT_FOUND,
            HubError::ConsumerGroupExists(_) => CONSUMER_GROUP_EXISTS,
            HubError::ConsumerGroupLimitReached(_) => CONSUMER_GROUP_LIMIT_REACHED,
            HubError::ReaderConflict(_) => READER_CONFLICT,
            HubError::FeedbackLockLost(_) => FEEDBACK_LOCK_LOST,
            HubError::Internal(_) => SERVER_ERROR,
            HubError::StoreUnavailable(_) => SERVICE_UNAVAILABLE,
        }
    }
}

// The pki errors name their kind as text (`kind()`: the pure crate knows no codes). The code of
// each variant is chosen here by an exhaustive match, so a new variant cannot go without one; a
// test checks that each code's name is the variant's `kind()`.

fn crl_code(e: &iothub_pki::crl::CrlError) -> ErrorCode {
    use iothub_pki::crl::CrlError as E;
    match e {
        E::Empty | E::Unparsable(_) | E::TooManyEntries { .. } => CRL_INVALID,
        E::TooLarge { .. } => REQUEST_TOO_LARGE,
        E::WrongIssuer { .. } => CRL_ISSUER_MISMATCH,
        E::NotSignedByCa { .. } => CRL_SIGNATURE_INVALID,
        E::Expired { .. } | E::NotYetValid { .. } => CRL_NOT_CURRENT,
        E::NotNewer { .. } => CRL_NOT_NEWER,
    }
}

fn input_code(e: &InputError) -> ErrorCode {
    match e {
        InputError::Empty => CERTIFICATE_EMPTY,
        InputError::TooLarge { .. } => CERTIFICATE_TOO_LARGE,
        InputError::MultipleCertificates { .. } => CERTIFICATE_COUNT_INVALID,
        InputError::WrongPemLabel { .. } | InputError::BadPem { .. } => CERTIFICATE_PEM_INVALID,
        InputError::NotACertificate { .. } | InputError::TrailingData { .. } => {
            CERTIFICATE_UNPARSABLE
        }
        InputError::PrivateKeyIncluded { .. } => CERTIFICATE_PRIVATE_KEY_INCLUDED,
    }
}

fn upload_code(e: &UploadError) -> ErrorCode {
    match e {
        UploadError::NotCa { .. } => CERTIFICATE_NOT_CA,
        UploadError::UnsupportedKey { .. } => CERTIFICATE_KEY_UNSUPPORTED,
        UploadError::Expired { .. } => CERTIFICATE_EXPIRED,
        UploadError::SignatureAlgorithmMismatch { .. } => CERTIFICATE_SIGNATURE_ALGORITHM_MISMATCH,
    }
}

fn proof_code(e: &ProofError) -> ErrorCode {
    match e {
        ProofError::NoCode { .. } => VERIFICATION_CODE_MISSING,
        ProofError::CodeUsed { .. } => VERIFICATION_CODE_USED,
        ProofError::CodeExpired { .. } => VERIFICATION_CODE_EXPIRED,
        ProofError::Input(e) => input_code(e),
        ProofError::IssuerMismatch { .. } => PROOF_ISSUER_MISMATCH,
        ProofError::SignatureAlgorithmMismatch { .. } => CERTIFICATE_SIGNATURE_ALGORITHM_MISMATCH,
        ProofError::WeakSignature { .. } => PROOF_SIGNATURE_ALGORITHM_REFUSED,
        ProofError::BadSignature { .. } => PROOF_SIGNATURE_INVALID,
        ProofError::CnNotText { .. } => PROOF_COMMON_NAME_NOT_TEXT,
        ProofError::CnCount { .. } => PROOF_COMMON_NAME_MISSING,
        ProofError::CnMismatch { .. } => PROOF_COMMON_NAME_MISMATCH,
        ProofError::OutsideValidity { .. } => PROOF_CERTIFICATE_NOT_VALID_NOW,
    }
}

impl From<SasError> for HubError {
    fn from(e: SasError) -> Self {
        HubError::Unauthorized(e.to_string())
    }
}

/// Store calls that failed for a storage reason, in this process (`iothub_store_errors_total`).
/// Process-wide rather than per hub because the conversion below is where every service-layer
/// store failure passes, and it has no hub at hand; a process serves one hub.
pub(crate) static STORE_ERRORS: AtomicU64 = AtomicU64::new(0);

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                STORE_ERRORS.fetch_add(1, Ordering::Relaxed);
                HubError::StoreUnavailable(e.to_string())
            }
            StoreError::Backend(_) => {
                STORE_ERRORS.fetch_add(1, Ordering::Relaxed);
                HubError::Internal(e.to_string())
            }
            other => HubError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_consistent() {
        let mut numbers: Vec<u32> = ALL_CODES.iter().map(|c| c.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALL_CODES.len(), "a number is used twice");
        let mut names: Vec<&str> = ALL_CODES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_CODES.len(), "a name is used twice");
        for c in ALL_CODES {
            assert_eq!(c.status as u32, c.number / 1000);
        }
    }

    #[test]
    fn every_pki_error_has_the_code_of_its_kind() {
        let s = String::new;
        let inputs = [
            InputError::Empty,
            InputError::TooLarge { len: 2, max: 1 },
            InputError::MultipleCertificates { count: 2 },
            InputError::WrongPemLabel { label: s() },
            InputError::BadPem { detail: s() },
            InputError::NotACertificate { detail: s() },
            InputError::TrailingData { extra: 1 },
            InputError::PrivateKeyIncluded { what: s() },
        ];
        let uploads = [
            UploadError::NotCa {
                subject: s(),
                found: s(),
            },
            UploadError::UnsupportedKey {
                subject: s(),
                reason: s(),
            },
            UploadError::Expired {
                subject: s(),
                not_after: s(),
            },
            UploadError::SignatureAlgorithmMismatch {
                subject: s(),
                signed: s(),
                outer: s(),
            },
        ];
        let mut proofs = vec![
            ProofError::NoCode { ca: s() },
            ProofError::CodeUsed { ca: s(), at: s() },
            ProofError::CodeExpired {
                ca: s(),
                expired_at: s(),
            },
            ProofError::IssuerMismatch {
                expected: s(),
                found: s(),
            },
            ProofError::SignatureAlgorithmMismatch {
                signed: s(),
                outer: s(),
            },
            ProofError::WeakSignature { algorithm: s() },
            ProofError::BadSignature { ca: s() },
            ProofError::CnNotText { found: s() },
            ProofError::CnCount { found: s() },
            ProofError::CnMismatch { found: None },
            ProofError::OutsideValidity {
                now: s(),
                not_before: s(),
                not_after: s(),
            },
        ];
        proofs.extend(inputs.iter().cloned().map(ProofError::Input));
        let errors = inputs
            .into_iter()
            .map(|e| (e.kind(), HubError::Input(e)))
            .chain(uploads.into_iter().map(|e| (e.kind(), HubError::Upload(e))))
            .chain(proofs.into_iter().map(|e| (e.kind(), HubError::Proof(e))));
        for (kind, e) in errors {
            assert_eq!(e.code().name, kind, "{e:?}");
            assert!(ALL_CODES.contains(&e.code()), "{e:?}");
        }
    }

    /// docs/error-codes.md is what operators and client authors read: it must list exactly these
    /// codes, with these names and statuses.
    #[test]
    fn the_error_code_doc_lists_exactly_the_code_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/error-codes.md");
        let section = std::fs::read_to_string(path).expect("docs/error-codes.md");
        let mut rows = Vec::new();
        for line in section.lines() {
            // `| 400004 | ArgumentInvalid (what it means) | 400 |`: cells 1, 2 and 3.
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Some(number) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
                continue;
            };
            let name = cells[2].split_whitespace().next().unwrap_or_default();
            let status = cells.get(3).and_then(|c| c.parse::<u16>().ok());
            rows.push((number, name.to_string(), status));
        }
        for c in ALL_CODES {
            assert!(
                rows.iter().any(|(number, name, status)| {
                    *number == c.number && name == c.name && *status == Some(c.status)
                }),
                "docs/error-codes.md has no row `| {} | {} ... | {} |`",
                c.number,
                c.name,
                c.status
            );
        }
        for (number, name, status) in &rows {
            assert!(
                ALL_CODES.iter().any(|c| {
                    c.number == *number && c.name == name && Some(c.status) == *status
                }),
                "docs/error-codes.md lists {number} {name} ({status:?}), which is not in ALL_CODES"
            );
        }
        assert_eq!(
            rows.len(),
            ALL_CODES.len(),
            "docs/error-codes.md lists a code twice"
        );
    }
}
