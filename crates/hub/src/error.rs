//! Errors of the service layer. Each carries a stable numeric code in IoT Hub's style (HTTP status
//! times 1000 plus a number), a stable name, an HTTP status, and a message that says what was
//! expected and what was found. Adapters render them; they never invent their own.

use iothub_pki::input::InputError;
use iothub_pki::pop::{NameError, ProofError, UploadError};
use iothub_pki::sas::SasError;
use iothub_store::StoreError;

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

/// Every error code the hub emits, for documentation and tests.
pub const ALL_CODES: &[ErrorCode] = &[
    code(400004, "ArgumentInvalid"),
    code(400050, "CertificateNameInvalid"),
    code(400051, "CertificateUnparsable"),
    code(400052, "CertificateCountInvalid"),
    code(400053, "ProofIssuerMismatch"),
    code(400054, "ProofSignatureInvalid"),
    code(400055, "ProofCommonNameMismatch"),
    code(400056, "VerificationCodeMissing"),
    code(400057, "VerificationCodeExpired"),
    code(400058, "ProofCertificateNotValidNow"),
    code(400059, "CertificateNotCa"),
    code(400060, "VerifyOnUploadNotAllowed"),
    code(400061, "CertificateKeyUnsupported"),
    code(400062, "ProofCommonNameMissing"),
    code(400063, "CertificateTooLarge"),
    code(400064, "VerificationCodeUsed"),
    code(400065, "CertificateEmpty"),
    code(400066, "CertificateExpired"),
    code(400067, "CertificatePemInvalid"),
    code(400068, "ProofSignatureAlgorithmRefused"),
    code(400069, "ProofCommonNameNotText"),
    code(400070, "DeviceIdInvalid"),
    code(400071, "DeviceAuthenticationInvalid"),
    code(400072, "MessageTooLarge"),
    code(400073, "TwinInvalid"),
    code(400074, "PolicyNameInvalid"),
    code(400075, "PolicyRightsInvalid"),
    code(400076, "CertificateSignatureAlgorithmMismatch"),
    code(400077, "CertificatePrivateKeyIncluded"),
    code(401002, "IotHubUnauthorizedAccess"),
    code(403001, "IotHubForbidden"),
    code(403002, "CsrfRejected"),
    code(403004, "DeviceMaximumQueueDepthExceeded"),
    code(403050, "CertificateLimitReached"),
    code(403051, "DeviceLimitReached"),
    code(403052, "PolicyLimitReached"),
    code(403053, "OwnerPolicyProtected"),
    code(404000, "RouteNotFound"),
    code(404001, "DeviceNotFound"),
    code(404103, "DeviceNotOnline"),
    code(404050, "CertificateNotFound"),
    code(404051, "PolicyNotFound"),
    code(405001, "MethodNotAllowed"),
    code(409001, "DeviceAlreadyExists"),
    code(409050, "CertificateThumbprintExists"),
    code(412001, "PreconditionFailed"),
    code(412002, "CertificateExists"),
    code(413001, "RequestTooLarge"),
    code(429001, "ThrottlingException"),
    code(500001, "ServerError"),
    code(504101, "GatewayTimeout"),
];

/// Looks up a code by name. Every name used by the hub is in [`ALL_CODES`] (a unit test checks it).
pub fn by_name(name: &str) -> ErrorCode {
    ALL_CODES
        .iter()
        .copied()
        .find(|c| c.name == name)
        .unwrap_or(code(500001, "ServerError"))
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
    #[error("internal error: {0}")]
    Internal(String),
}

impl HubError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HubError::Unauthorized(_) => by_name("IotHubUnauthorizedAccess"),
            HubError::Forbidden { .. } => by_name("IotHubForbidden"),
            HubError::PortalRefused(_) => by_name("IotHubForbidden"),
            HubError::InvalidArgument(_) => by_name("ArgumentInvalid"),
            HubError::PolicyName(_) => by_name("PolicyNameInvalid"),
            HubError::PolicyRights(_) => by_name("PolicyRightsInvalid"),
            HubError::PolicyLimitReached(_) => by_name("PolicyLimitReached"),
            HubError::OwnerPolicyProtected(_) => by_name("OwnerPolicyProtected"),
            HubError::Name(_) => by_name("CertificateNameInvalid"),
            HubError::Input(e) => by_name(e.kind()),
            HubError::Upload(e) => by_name(e.kind()),
            HubError::VerifyOnUploadNotAllowed => by_name("VerifyOnUploadNotAllowed"),
            HubError::Proof(e) => by_name(e.kind()),
            HubError::NotFound(_) => by_name("CertificateNotFound"),
            HubError::PolicyNotFound(_) => by_name("PolicyNotFound"),
            HubError::EtagMismatch { .. } | HubError::NothingToReplace(_) => {
                by_name("PreconditionFailed")
            }
            HubError::Exists(_) => by_name("CertificateExists"),
            HubError::DuplicateThumbprint { .. } => by_name("CertificateThumbprintExists"),
            HubError::LimitReached(_) => by_name("CertificateLimitReached"),
            HubError::DeviceId(_) => by_name("DeviceIdInvalid"),
            HubError::DeviceAuthInvalid(_) => by_name("DeviceAuthenticationInvalid"),
            HubError::DeviceNotFound(_) => by_name("DeviceNotFound"),
            HubError::DeviceExists(_) => by_name("DeviceAlreadyExists"),
            HubError::DeviceEtagMismatch { .. } => by_name("PreconditionFailed"),
            HubError::DeviceLimitReached(_) => by_name("DeviceLimitReached"),
            HubError::QueueFull { .. } => by_name("DeviceMaximumQueueDepthExceeded"),
            HubError::MessageTooLarge { .. } => by_name("MessageTooLarge"),
            HubError::TwinInvalid(_) => by_name("TwinInvalid"),
            HubError::DeviceNotOnline(_) => by_name("DeviceNotOnline"),
            HubError::MethodTimeout { .. } => by_name("GatewayTimeout"),
            HubError::Internal(_) => by_name("ServerError"),
        }
    }
}

impl From<SasError> for HubError {
    fn from(e: SasError) -> Self {
        HubError::Unauthorized(e.to_string())
    }
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Internal(e.to_string())
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
        assert_eq!(numbers.len(), ALL_CODES.len());
        for c in ALL_CODES {
            assert_eq!(c.status as u32, c.number / 1000);
        }
    }

    #[test]
    fn every_pki_kind_has_a_code() {
        let kinds = [
            "CertificateEmpty",
            "CertificateTooLarge",
            "CertificateCountInvalid",
            "CertificatePemInvalid",
            "CertificateUnparsable",
            "CertificateNotCa",
            "CertificateKeyUnsupported",
            "CertificateExpired",
            "VerificationCodeMissing",
            "VerificationCodeUsed",
            "VerificationCodeExpired",
            "ProofIssuerMismatch",
            "ProofSignatureAlgorithmRefused",
            "ProofSignatureInvalid",
            "ProofCommonNameMissing",
            "ProofCommonNameMismatch",
            "ProofCertificateNotValidNow",
            "ProofCommonNameNotText",
            "CertificateSignatureAlgorithmMismatch",
            "CertificatePrivateKeyIncluded",
        ];
        for k in kinds {
            assert_eq!(by_name(k).name, k, "{k} has no code");
        }
    }
}
