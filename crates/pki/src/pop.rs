//! Proof-of-possession rules: what a CA upload must be, what a verification code is, and the ordered
//! check that turns an Unverified CA into a Verified one.
//!
//! Why pure: these rules decide who may later admit devices. They take the CA's facts, the code
//! state and the clock as arguments, so every branch is unit-tested and fuzzed without a store.
//! The order of [`verify_proof`]'s checks is part of the contract (docs/flows.md lists it): each
//! failure names what was expected and what was found.

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;
use x509_parser::prelude::*;

/// Signature algorithms built on SHA-1, refused by policy (x509-parser would accept some of them):
/// sha1WithRSAEncryption, sha1WithRSA (OIW), ecdsa-with-SHA1, dsa-with-sha1.
const SHA1_SIGNATURE_OIDS: [&str; 4] = [
    "1.2.840.113549.1.1.5",
    "1.3.14.3.2.29",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
];

use crate::cert::{check_signature_algorithms, CertInfo, CommonNameProblem};
use crate::input::{parse_certificate_input, InputError};

/// The default lifetime of a verification code: one hour.
pub const DEFAULT_CODE_LIFETIME_SECS: i64 = 3600;
/// The default maximum number of CA certificates a hub holds.
pub const DEFAULT_CA_LIMIT: u64 = 10_000;

/// The verification-code state of one CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeState {
    /// No code was ever generated (or the certificate content was replaced since).
    None,
    /// A code that a verification certificate may carry until `expires_at` (Unix seconds).
    Live { code: String, expires_at: i64 },
    /// The last code was consumed by a successful verification at `at`.
    Used { at: i64 },
}

/// Generates a verification code: 24 bytes from the operating system's CSPRNG as 48 uppercase hex.
pub fn generate_code() -> Result<String, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(hex::encode_upper(bytes))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Why a certificate name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate name '{shown}' is invalid: expected 1 to 64 characters of letters, digits, '-', '.' and '_' ({problem})")]
pub struct NameError {
    pub shown: String,
    pub problem: String,
}

/// Validates a certificate name against `^[A-Za-z0-9-._]{1,64}$`.
pub fn validate_ca_name(name: &str) -> Result<(), NameError> {
    let shown: String = name.chars().take(80).collect();
    let problem = if name.is_empty() {
        "it is empty".to_string()
    } else if name.chars().count() > 64 {
        format!("it has {} characters", name.chars().count())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        format!("it contains {c:?}")
    } else {
        return Ok(());
    };
    Err(NameError { shown, problem })
}

/// Why a certificate cannot be registered as a CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("certificate '{subject}' is not a CA: expected basicConstraints CA:TRUE, found {found}; upload the root or intermediate CA that issues your device certificates, not a device certificate")]
    NotCa { subject: String, found: String },
    #[error("certificate '{subject}' has {reason}")]
    UnsupportedKey { subject: String, reason: String },
    #[error("certificate '{subject}' expired at {not_after}; upload a CA certificate that is still valid")]
    Expired { subject: String, not_after: String },
    #[error("certificate '{subject}' is malformed: its signatureAlgorithm field says {outer} but the signature algorithm inside its signed part (TBSCertificate) says {signed}; RFC 5280 (4.1.1.2) requires the two to be the same, so re-issue the CA certificate with a standard tool")]
    SignatureAlgorithmMismatch {
        subject: String,
        signed: String,
        outer: String,
    },
}

impl UploadError {
    pub fn kind(&self) -> &'static str {
        match self {
            UploadError::NotCa { .. } => "CertificateNotCa",
            UploadError::UnsupportedKey { .. } => "CertificateKeyUnsupported",
            UploadError::Expired { .. } => "CertificateExpired",
            UploadError::SignatureAlgorithmMismatch { .. } => {
                "CertificateSignatureAlgorithmMismatch"
            }
        }
    }
}

/// Checks that a parsed certificate can be registered as a CA at time `now`: its two signature
/// algorithm fields agree, it is a CA, its key is supported, it has not expired.
pub fn check_ca_upload(info: &CertInfo, now: i64) -> Result<(), UploadError> {
    check_signature_algorithms(&info.der).map_err(|m| UploadError::SignatureAlgorithmMismatch {
        subject: info.subject.clone(),
        signed: m.signed,
        outer: m.outer,
    })?;
    if info.ca.is_none() {
        let found = if info.version < 3 {
            format!(
                "an X.509 v{} certificate, which has no extensions",
                info.version
            )
        } else {
            "no basicConstraints CA:TRUE".to_string()
        };
        return Err(UploadError::NotCa {
            subject: info.subject.clone(),
            found,
        });
    }
    info.key
        .check_supported()
        .map_err(|reason| UploadError::UnsupportedKey {
            subject: info.subject.clone(),
            reason,
        })?;
    if info.not_after < now {
        return Err(UploadError::Expired {
            subject: info.subject.clone(),
            not_after: format_time(info.not_after),
        });
    }
    Ok(())
}

/// Why a verification (proof-of-possession) attempt failed. Variants are listed in check order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no verification code has been generated for certificate '{ca}'; generate one, then make the verification certificate with it")]
    NoCode { ca: String },
    #[error("the verification code of certificate '{ca}' was already used by a successful verification at {at}; generate a new code to verify again")]
    CodeUsed { ca: String, at: String },
    #[error("the verification code of certificate '{ca}' expired at {expired_at}; generate a new code and a new verification certificate")]
    CodeExpired { ca: String, expired_at: String },
    #[error("the verification certificate is invalid: {0}")]
    Input(InputError),
    #[error("Proof-Of-Possession failed: the verification certificate was signed by another CA: expected issuer '{expected}', found '{found}'")]
    IssuerMismatch { expected: String, found: String },
    #[error("Proof-Of-Possession failed: the verification certificate is malformed: its signatureAlgorithm field says {outer} but the signature algorithm inside its signed part (TBSCertificate) says {signed}; RFC 5280 (4.1.1.2) requires the two to be the same, so make the certificate with a standard tool")]
    SignatureAlgorithmMismatch { signed: String, outer: String },
    #[error("Proof-Of-Possession failed: the verification certificate is signed with {algorithm}, which iothub refuses; sign it with SHA-256 or stronger")]
    WeakSignature { algorithm: String },
    #[error("Proof-Of-Possession failed: the verification certificate is not signed by the key of certificate '{ca}'")]
    BadSignature { ca: String },
    #[error("Proof-Of-Possession failed: the verification certificate's CN is {found}, not a text string; its CN must be the verification code as text (a UTF8String or PrintableString)")]
    CnNotText { found: String },
    #[error("Proof-Of-Possession failed: the verification certificate's subject must hold exactly one CN, the verification code; found {found}")]
    CnCount { found: String },
    /// `found` is the CN as shown (at most 96 characters), or None when it holds any 8
    /// consecutive characters of the live code: no part of a live code is ever shown, and a near
    /// miss would otherwise copy most of it into the response and the audit log.
    #[error("Proof-Of-Possession failed: {}", cn_mismatch_text(.found))]
    CnMismatch { found: Option<String> },
    #[error("the verification certificate is not valid now ({now}): it is valid from {not_before} to {not_after}")]
    OutsideValidity {
        now: String,
        not_before: String,
        not_after: String,
    },
}

impl ProofError {
    /// The stable name of this error, used in API error codes and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            ProofError::NoCode { .. } => "VerificationCodeMissing",
            ProofError::CodeUsed { .. } => "VerificationCodeUsed",
            ProofError::CodeExpired { .. } => "VerificationCodeExpired",
            ProofError::Input(e) => e.kind(),
            ProofError::IssuerMismatch { .. } => "ProofIssuerMismatch",
            ProofError::SignatureAlgorithmMismatch { .. } => {
                "CertificateSignatureAlgorithmMismatch"
            }
            ProofError::WeakSignature { .. } => "ProofSignatureAlgorithmRefused",
            ProofError::BadSignature { .. } => "ProofSignatureInvalid",
            ProofError::CnNotText { .. } => "ProofCommonNameNotText",
            ProofError::CnCount { .. } => "ProofCommonNameMissing",
            ProofError::CnMismatch { .. } => "ProofCommonNameMismatch",
            ProofError::OutsideValidity { .. } => "ProofCertificateNotValidNow",
        }
    }
}

/// Checks a proof of possession of the private key of the CA `ca` (registered as `ca_name`).
///
/// In order: a live code exists; `verification` is exactly one certificate (at most `max_len`
/// bytes, no private key); its issuer DN equals the CA's subject DN (DER bytes); its two signature
/// algorithm fields agree; its signature algorithm is not SHA-1; its signature verifies with the
/// CA's public key; its subject's CNs are text strings, and there is exactly one, equal to the
/// code (hex, compared without regard to case, in constant time); it is valid at `now`.
/// Returns the facts of the verification certificate on success.
pub fn verify_proof(
    ca_name: &str,
    ca: &CertInfo,
    code: &CodeState,
    verification: &[u8],
    max_len: usize,
    now: i64,
) -> Result<CertInfo, ProofError> {
    let live_code = live_code(ca_name, code, now)?;

    let der = parse_certificate_input(verification, max_len).map_err(ProofError::Input)?;
    let info = CertInfo::from_der(&der).map_err(ProofError::Input)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| {
        ProofError::Input(InputError::NotACertificate {
            detail: e.to_string(),
        })
    })?;

    if info.issuer_raw != ca.subject_raw {
        return Err(ProofError::IssuerMismatch {
            expected: ca.subject.clone(),
            found: info.issuer.clone(),
        });
    }

    check_signature_algorithms(&der).map_err(|m| ProofError::SignatureAlgorithmMismatch {
        signed: m.signed,
        outer: m.outer,
    })?;

    let sig_alg = cert.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURE_OIDS.contains(&sig_alg.as_str()) {
        return Err(ProofError::WeakSignature {
            algorithm: "SHA-1".into(),
        });
    }

    let (_, ca_cert) =
        X509Certificate::from_der(&ca.der).map_err(|_| ProofError::BadSignature {
            ca: ca_name.to_string(),
        })?;
    // Any failure here, including "unsupported algorithm" (an ECDSA signature checked with an RSA
    // key), means the same thing to the operator: this CA's key did not make this signature.
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Err(ProofError::BadSignature {
            ca: ca_name.to_string(),
        });
    }

    let cn = match info.single_common_name() {
        Ok(one) => one,
        Err(CommonNameProblem::NotText(found)) => return Err(ProofError::CnNotText { found }),
        Err(CommonNameProblem::Missing) => {
            return Err(ProofError::CnCount {
                found: "no CN".into(),
            })
        }
        Err(CommonNameProblem::Several(n)) => {
            return Err(ProofError::CnCount {
                found: format!("{n} CNs"),
            })
        }
    };
    // Hex compared without regard to case: both sides upper-cased, whatever the stored code's case.
    if !constant_time_eq(
        cn.to_ascii_uppercase().as_bytes(),
        live_code.to_ascii_uppercase().as_bytes(),
    ) {
        let shown: String = cn.chars().take(96).collect();
        let found = (!holds_part_of(&shown, live_code)).then_some(shown);
        return Err(ProofError::CnMismatch { found });
    }

    if !info.is_valid_at(now) {
        return Err(ProofError::OutsideValidity {
            now: format_time(now),
            not_before: format_time(info.not_before),
            not_after: format_time(info.not_after),
        });
    }
    Ok(info)
}

/// The code a verification certificate must carry at `now`, or why there is none: the first check
/// of a proof, made before the upload is even parsed.
fn live_code<'c>(ca_name: &str, code: &'c CodeState, now: i64) -> Result<&'c str, ProofError> {
    match code {
        CodeState::None => Err(ProofError::NoCode {
            ca: ca_name.to_string(),
        }),
        CodeState::Used { at } => Err(ProofError::CodeUsed {
            ca: ca_name.to_string(),
            at: format_time(*at),
        }),
        CodeState::Live { expires_at, .. } if *expires_at <= now => Err(ProofError::CodeExpired {
            ca: ca_name.to_string(),
            expired_at: format_time(*expires_at),
        }),
        CodeState::Live { code, .. } => Ok(code),
    }
}

fn cn_mismatch_text(found: &Option<String>) -> String {
    let tail = "does not equal the current verification code (hex, compared without regard to case); make the verification certificate with the code generated last";
    match found {
        Some(cn) => format!("CN is '{cn}' but it {tail}"),
        None => {
            format!("the CN {tail} (the CN is not shown because it holds part of the current code)")
        }
    }
}

/// How many consecutive characters of a live code a message may never show.
const CODE_WINDOW: usize = 8;

/// Whether `shown` holds any [`CODE_WINDOW`] consecutive characters of `code`, without regard to
/// case. Every window pair is compared in constant time, so the time taken depends only on the
/// two lengths, never on the code.
fn holds_part_of(shown: &str, code: &str) -> bool {
    let shown = shown.to_ascii_uppercase();
    let code = code.to_ascii_uppercase();
    let (s, c) = (shown.as_bytes(), code.as_bytes());
    // A code shorter than the window (never one iothub makes) is a window of its own.
    let window = CODE_WINDOW.min(c.len());
    if window == 0 || s.len() < window {
        return false;
    }
    let mut found = 0u8;
    for a in s.windows(window) {
        for b in c.windows(window) {
            found |= u8::from(constant_time_eq(a, b));
        }
    }
    std::hint::black_box(found) != 0
}

/// Formats Unix seconds as RFC 3339 UTC (out-of-range values as the number itself).
pub fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_48_uppercase_hex_and_distinct() {
        let a = generate_code().unwrap();
        let b = generate_code().unwrap();
        assert_eq!(a.len(), 48);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn names() {
        for ok in ["root", "a", "A-b.c_d", &"x".repeat(64), "0.9"] {
            assert!(validate_ca_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "bad name", "x/y", "é", "a!", "tab\t"] {
            let e = validate_ca_name(bad).unwrap_err();
            assert!(e.to_string().contains("expected 1 to 64"), "{e}");
        }
    }

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
