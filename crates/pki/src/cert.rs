//! The facts of one certificate, read once from DER into plain owned values.
//!
//! Why: the store, the API and the audit log need these facts as data (strings, numbers), not as
//! borrowed parser structures. Everything that needs the parser itself (signature checks) lives in
//! [`crate::pop`].

use aws_lc_rs::digest;
use x509_parser::der_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::dn::rfc4514;
use crate::input::InputError;

/// The public key algorithm of a certificate, with what iothub needs to decide whether it can
/// verify signatures made with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa {
        bits: u32,
    },
    EcP256,
    EcP384,
    Ed25519,
    /// Anything else: described by its OID (and curve OID for EC keys).
    Other {
        description: String,
    },
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyAlgorithm::EcP256 => f.write_str("ECDSA P-256"),
            KeyAlgorithm::EcP384 => f.write_str("ECDSA P-384"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
            KeyAlgorithm::Other { description } => f.write_str(description),
        }
    }
}

impl KeyAlgorithm {
    /// Whether iothub verifies signatures made by keys of this kind: RSA 2048-4096, P-256, P-384,
    /// Ed25519. Returns the reason when not.
    pub fn check_supported(&self) -> Result<(), String> {
        match self {
            KeyAlgorithm::Rsa { bits } if (2048..=4096).contains(bits) => Ok(()),
            KeyAlgorithm::Rsa { bits } => Err(format!(
                "an RSA key of {bits} bits; iothub accepts RSA keys of 2048 to 4096 bits"
            )),
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::Ed25519 => Ok(()),
            KeyAlgorithm::Other { description } => Err(format!(
                "a {description} key; iothub accepts RSA (2048-4096), ECDSA P-256, ECDSA P-384 and Ed25519 keys"
            )),
        }
    }
}

/// Why a subject does not name exactly one thing by its CN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommonNameProblem {
    /// A CN whose value is not a text string: what it is instead, e.g. `an OCTET STRING`.
    NotText(String),
    Missing,
    /// More than one CN (their number).
    Several(usize),
}

/// The two signature algorithm fields of a certificate when they differ: the one inside the
/// TBSCertificate (covered by the signature) and the outer signatureAlgorithm, each described
/// (name, and parameters when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlgorithmMismatch {
    pub signed: String,
    pub outer: String,
}

/// Compares a certificate's outer signatureAlgorithm with the signature field inside its
/// TBSCertificate, byte for byte (RFC 5280 4.1.1.2 requires them to be the same; only the inner
/// one is signed, so a difference means the outer one was changed or made by a broken tool, and
/// different libraries would check the signature with different algorithms). DER that cannot be
/// walked this far is not a certificate and is refused elsewhere, so it yields `Ok`.
pub fn check_signature_algorithms(der: &[u8]) -> Result<(), AlgorithmMismatch> {
    match algorithm_fields(der) {
        Some((signed, outer)) if signed != outer => Err(AlgorithmMismatch {
            signed: describe_algorithm(signed),
            outer: describe_algorithm(outer),
        }),
        _ => Ok(()),
    }
}

/// The complete TLV at the start of `d`.
fn first_tlv(d: &[u8]) -> Option<&[u8]> {
    let (rest, _) = Any::from_der(d).ok()?;
    d.get(..d.len() - rest.len())
}

/// (signature inside the TBSCertificate, outer signatureAlgorithm), each as its DER TLV.
fn algorithm_fields(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, certificate) = Any::from_der(der).ok()?;
    let (after_tbs, tbs) = Any::from_der(certificate.data).ok()?;
    let outer = first_tlv(after_tbs)?;
    let mut fields = tbs.data;
    // version [0] EXPLICIT is optional (absent in X.509 v1).
    let (rest, first) = Any::from_der(fields).ok()?;
    if first.class() == Class::ContextSpecific && first.tag() == Tag(0) {
        fields = rest;
    }
    let (after_serial, _) = Any::from_der(fields).ok()?;
    Some((first_tlv(after_serial)?, outer))
}

/// An AlgorithmIdentifier as words: its name (or dotted OID), with its parameters in hex if any.
fn describe_algorithm(tlv: &[u8]) -> String {
    let parts = Any::from_der(tlv).ok().and_then(|(_, seq)| {
        let (params, oid) = Any::from_der(seq.data).ok()?;
        Some((oid.as_oid().ok()?.to_owned(), params))
    });
    let Some((oid, params)) = parts else {
        return format!("an unreadable algorithm identifier ({} bytes)", tlv.len());
    };
    let name = x509_parser::objects::oid2sn(&oid, x509_parser::objects::oid_registry())
        .map(str::to_owned)
        .unwrap_or_else(|_| oid.to_id_string());
    if params.is_empty() {
        name
    } else {
        let shown = &params[..params.len().min(32)];
        let more = if params.len() > shown.len() {
            "..."
        } else {
            ""
        };
        format!("{name} with parameters {}{more}", hex::encode(shown))
    }
}

/// Everything iothub records about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    /// RFC 4514 subject, e.g. `CN=Contoso Root,O=Contoso`.
    pub subject: String,
    /// DER of the subject name: names are compared by these bytes.
    pub subject_raw: Vec<u8>,
    pub issuer: String,
    pub issuer_raw: Vec<u8>,
    /// The text of every subject CN whose value is a text string, in encoding order.
    pub common_names: Vec<String>,
    /// What every subject CN whose value is not a text string is instead (e.g. `an OCTET
    /// STRING`), in encoding order: such a CN is never read as text (see
    /// [`crate::dn::attribute_value_text`]), and [`CertInfo::single_common_name`] refuses it.
    pub non_text_common_names: Vec<String>,
    /// SHA-1 of the DER, 40 uppercase hex digits (Azure's `thumbprint`).
    pub thumbprint_sha1: String,
    /// SHA-256 of the DER, 64 uppercase hex digits.
    pub thumbprint_sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// X.509 version as written in the certificate (1, 2 or 3).
    pub version: u32,
    /// basicConstraints: `Some(path_len)` when CA:TRUE (path_len None = unconstrained); None when
    /// the extension is absent or CA:FALSE.
    pub ca: Option<Option<u32>>,
    pub key: KeyAlgorithm,
    pub subject_key_id: Option<String>,
    pub authority_key_id: Option<String>,
    pub serial: String,
}

impl CertInfo {
    /// Reads the facts of a DER certificate. The DER must be exactly one certificate (see
    /// [`crate::input::parse_certificate_input`]).
    pub fn from_der(der: &[u8]) -> Result<CertInfo, InputError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| InputError::NotACertificate {
                detail: e.to_string(),
            })?;
        let bad_ext = |e: X509Error| InputError::NotACertificate {
            detail: format!("invalid extension: {e}"),
        };
        let ca = match cert.basic_constraints().map_err(bad_ext)? {
            Some(bc) if bc.value.ca => Some(bc.value.path_len_constraint),
            _ => None,
        };
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(kid) => {
                    subject_key_id = Some(hex::encode_upper(kid.0));
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| hex::encode_upper(k.0));
                }
                _ => {}
            }
        }
        let mut common_names = Vec::new();
        let mut non_text_common_names = Vec::new();
        for cn in cert.subject().iter_common_name() {
            match crate::dn::attribute_value_text(cn) {
                Ok(text) => common_names.push(text),
                Err(what) => non_text_common_names.push(what),
            }
        }
        Ok(CertInfo {
            der: der.to_vec(),
            subject: rfc4514(cert.subject()),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer: rfc4514(cert.issuer()),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            common_names,
            non_text_common_names,
            thumbprint_sha1: hex::encode_upper(
                digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
            ),
            thumbprint_sha256: hex::encode_upper(digest::digest(&digest::SHA256, der).as_ref()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            version: cert.version().0 + 1,
            ca,
            key: key_algorithm(cert.public_key()),
            subject_key_id,
            authority_key_id,
            serial: hex::encode_upper(cert.raw_serial()),
        })
    }

    /// The certificate as PEM text.
    pub fn pem(&self) -> String {
        crate::input::der_to_pem(&self.der)
    }

    /// Whether `now` (Unix seconds) lies inside the validity period, both ends inclusive.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// The one CN of the subject, the name a device or a verification code is matched against.
    /// A CN that is not a text string is refused before anything else (whatever the count), then
    /// there must be exactly one CN. Proof of possession and device CONNECT both apply this rule.
    pub fn single_common_name(&self) -> Result<&str, CommonNameProblem> {
        if let Some(what) = self.non_text_common_names.first() {
            return Err(CommonNameProblem::NotText(what.clone()));
        }
        match self.common_names.as_slice() {
            [one] => Ok(one),
            [] => Err(CommonNameProblem::Missing),
            many => Err(CommonNameProblem::Several(many.len())),
        }
    }

    /// Whether the certificate names itself as its issuer.
    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }
}

pub(crate) fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> KeyAlgorithm {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_modulus_bits(rsa.modulus),
            _ => 0,
        };
        KeyAlgorithm::Rsa { bits }
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => KeyAlgorithm::EcP256,
            Some(c) if c == OID_NIST_EC_P384 => KeyAlgorithm::EcP384,
            Some(c) => KeyAlgorithm::Other {
                description: format!("EC curve {}", c.to_id_string()),
            },
            None => KeyAlgorithm::Other {
                description: "EC (no named curve)".into(),
            },
        }
    } else if *alg == OID_SIG_ED25519 {
        KeyAlgorithm::Ed25519
    } else {
        KeyAlgorithm::Other {
            description: format!("algorithm {}", alg.to_id_string()),
        }
    }
}

fn rsa_modulus_bits(modulus: &[u8]) -> u32 {
    let trimmed: &[u8] = {
        let skip = modulus.iter().take_while(|b| **b == 0).count();
        &modulus[skip..]
    };
    match trimmed.first() {
        None => 0,
        Some(first) => (trimmed.len() as u32 - 1) * 8 + (8 - first.leading_zeros()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits() {
        assert_eq!(rsa_modulus_bits(&[]), 0);
        assert_eq!(rsa_modulus_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_modulus_bits(&[0x01, 0xff]), 9);
        let mut m = vec![0u8];
        m.extend(std::iter::repeat_n(0xffu8, 256));
        assert_eq!(rsa_modulus_bits(&m), 2048);
    }
}
