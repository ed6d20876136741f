//! The facts of one certificate, read once from DER into plain owned values.
//!
//! Why: the store, the API and the audit log need these facts as data (strings, numbers), not as
//! borrowed parser structures. Everything that needs the parser itself (signature checks) lives in
//! [`crate::pop`].

use aws_lc_rs::digest;
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
    /// Every subject CN value, in encoding order.
    pub common_names: Vec<String>,
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
        let common_names = cert
            .subject()
            .iter_common_name()
            // Decoded as the subject shows it (BMPString and UniversalString too); a CN that is no
            // text at all is kept as hex, which no code or device id can equal.
            .map(|cn| {
                crate::dn::attribute_text(cn).unwrap_or_else(|| hex::encode_upper(cn.as_slice()))
            })
            .collect();
        Ok(CertInfo {
            der: der.to_vec(),
            subject: rfc4514(cert.subject()),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer: rfc4514(cert.issuer()),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            common_names,
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
