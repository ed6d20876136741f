//! A verification certificate signed with a CA key that never leaves where it is kept (a
//! PKCS#11 hardware module, a KMS): the certificate is built here and only its to-be-signed bytes
//! go to the signer, which answers with the signature.
//!
//! Why a module of its own: the CA's public key and algorithm come from the CA certificate (the
//! key itself is not here to read them from), and ECDSA signers answer in the raw `r || s` form
//! PKCS#11 defines while X.509 wants DER; both conversions are pure and tested here, the
//! module I/O stays in the CLI.

use ::time::{Duration, OffsetDateTime};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::gen::{generate_key, GenError, Generated, KeyKind};

/// Signs a certificate's to-be-signed bytes with the CA's key wherever it is kept, answering
/// with the signature in X.509's form, or why it could not.
pub type ExternalSigner<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, String>;

/// What an external CA key signs with: what the signer must be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalKeyKind {
    /// ECDSA P-256 with SHA-256: the signer signs the SHA-256 digest (PKCS#11 `CKM_ECDSA`).
    EcP256,
    /// RSA PKCS#1 v1.5 with SHA-256: the signer hashes and signs (`CKM_SHA256_RSA_PKCS`).
    Rsa,
}

/// The kind of the key a CA certificate names (the ones a verification certificate can be
/// signed with externally).
pub fn external_key_kind(ca_der: &[u8]) -> Result<ExternalKeyKind, GenError> {
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| GenError::BadIssuer(format!("the CA certificate cannot be read: {e}")))?;
    let spki = ca.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => Ok(ExternalKeyKind::EcP256),
        ("1.2.840.113549.1.1.1", _) => Ok(ExternalKeyKind::Rsa),
        _ => Err(GenError::BadIssuer(format!(
            "its key ({algorithm}) cannot be used through an external signer; ECDSA P-256 and RSA can"
        ))),
    }
}

/// The DER ECDSA-Sig-Value (`SEQUENCE { r INTEGER, s INTEGER }`) of a raw `r || s` signature
/// of equal halves; None for an empty or odd-length input.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let integer = |v: &[u8]| {
        let v = match v.iter().position(|b| *b != 0) {
            Some(first) => &v[first..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        push_len(&mut out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Some(out)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// The CA's key as rcgen sees it: the public half from the CA certificate, the signing elsewhere.
struct ExternalKey<'a> {
    public: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
    sign: ExternalSigner<'a>,
}

impl PublicKeyData for ExternalKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for ExternalKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        (self.sign)(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A verification certificate (CN = `code`, valid from five minutes ago for `lifetime`) signed
/// by the CA of `ca_der` through `sign`, which gets the to-be-signed bytes and answers with the
/// signature in X.509's form for the CA's key (DER for ECDSA: see [`ecdsa_raw_to_der`]).
pub fn make_verification_cert_external(
    code: &str,
    ca_der: &[u8],
    sign: ExternalSigner<'_>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Generated, GenError> {
    let kind = external_key_kind(ca_der)?;
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| GenError::BadIssuer(format!("the CA certificate cannot be read: {e}")))?;
    let key = ExternalKey {
        public: ca.public_key().subject_public_key.data.to_vec(),
        algorithm: match kind {
            ExternalKeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            ExternalKeyKind::Rsa => &rcgen::PKCS_RSA_SHA256,
        },
        sign,
    };
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), key)
        .map_err(|e| GenError::BadIssuer(e.to_string()))?;
    let subject_key = generate_key(KeyKind::EcP256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, code);
    params.distinguished_name = dn;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + lifetime;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&subject_key, &issuer)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: subject_key.serialize_pem(),
    })
}

/// The to-be-signed bytes of a verification certificate for `code` under the CA of `ca_der`, for
/// a signer that cannot be called from here (a KMS behind its own command line): have it sign
/// them with the CA's key (SHA-256; ECDSA P-256 or RSA PKCS#1 v1.5, as the CA's key is) and give
/// the signature to [`certificate_from_tbs`]. The certificate's own key is thrown away: a
/// verification certificate is judged by the CA's signature over it, never used.
pub fn verification_tbs(
    code: &str,
    ca_der: &[u8],
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Vec<u8>, GenError> {
    let captured = std::cell::RefCell::new(Vec::new());
    let kind = external_key_kind(ca_der)?;
    // rcgen asks for a signature once the TBS is complete: keep the bytes, answer a placeholder
    // of the right shape (the certificate it builds around it is discarded).
    let capture = |msg: &[u8]| -> Result<Vec<u8>, String> {
        *captured.borrow_mut() = msg.to_vec();
        Ok(match kind {
            ExternalKeyKind::EcP256 => ecdsa_raw_to_der(&[1u8; 64]).unwrap_or_default(),
            ExternalKeyKind::Rsa => vec![0u8; 256],
        })
    };
    make_verification_cert_external(code, ca_der, &capture, now, lifetime)?;
    Ok(captured.into_inner())
}

/// Why a certificate cannot be put together from a TBS and a signature.
fn assembly_error(what: &str) -> GenError {
    GenError::BadIssuer(format!(
        "the to-be-signed file and the signature do not make a certificate: {what}"
    ))
}

/// One DER element at the start of `input`: (tag, the whole element's length, its content's
/// offset). None when the header or the length does not fit.
fn der_element(input: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + n,
        )
    };
    let total = header.checked_add(len)?;
    (total <= input.len()).then_some((tag, total, header))
}

/// The OID of ecdsa-with-SHA256, DER-encoded (1.2.840.10045.4.3.2).
const ECDSA_SHA256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// A certificate (DER) from its to-be-signed bytes (as [`verification_tbs`] made them) and the
/// signature over them: DER for ECDSA (a raw 64-byte `r || s`, as some KMSs answer, is
/// converted), the bytes as they are for RSA. The signature algorithm is the one the TBS names.
pub fn certificate_from_tbs(tbs: &[u8], signature: &[u8]) -> Result<Vec<u8>, GenError> {
    let (tag, total, header) =
        der_element(tbs).ok_or_else(|| assembly_error("the to-be-signed file is not DER"))?;
    if tag != 0x30 || total != tbs.len() {
        return Err(assembly_error(
            "the to-be-signed file is not one DER SEQUENCE (a TBSCertificate)",
        ));
    }
    // TBSCertificate: [0] version (optional), serialNumber, signature AlgorithmIdentifier, ...
    let mut rest = &tbs[header..];
    let mut next = |expect: Option<u8>| -> Result<&[u8], GenError> {
        let (tag, len, _) =
            der_element(rest).ok_or_else(|| assembly_error("the TBSCertificate ends early"))?;
        if expect.is_some_and(|t| t != tag) {
            return Err(assembly_error(
                "the TBSCertificate's fields are not in order",
            ));
        }
        let (element, after) = rest.split_at(len);
        rest = after;
        Ok(element)
    };
    let mut element = next(None)?;
    if element[0] == 0xa0 {
        element = next(Some(0x02))?;
    } else if element[0] != 0x02 {
        return Err(assembly_error("the TBSCertificate has no serial number"));
    }
    let _serial = element;
    let algorithm = next(Some(0x30))?.to_vec();
    let ecdsa = algorithm
        .windows(ECDSA_SHA256_OID.len())
        .any(|w| w == ECDSA_SHA256_OID);
    let signature = if ecdsa && signature.first() != Some(&0x30) {
        if signature.len() != 64 {
            return Err(assembly_error(&format!(
                "an ECDSA P-256 signature is DER or 64 raw bytes (r || s); this one is {} bytes",
                signature.len()
            )));
        }
        ecdsa_raw_to_der(signature).ok_or_else(|| assembly_error("the signature is empty"))?
    } else {
        signature.to_vec()
    };
    if signature.is_empty() {
        return Err(assembly_error("the signature is empty"));
    }
    let mut bits = vec![0x03];
    push_len(&mut bits, signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&signature);
    let body = [tbs, &algorithm, &bits].concat();
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::make_ca;
    use crate::pop::{verify_proof, CodeState};
    use crate::CertInfo;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    };

    fn der_of(pem: &str) -> Vec<u8> {
        crate::parse_certificate_input(pem.as_bytes(), usize::MAX).unwrap()
    }

    fn pkcs8_of(key_pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .unwrap()
            .secret_pkcs8_der()
            .to_vec()
    }

    /// A test CA of `kind`, valid around `now`: its DER and its key as PKCS#8.
    fn test_ca(name: &str, kind: KeyKind, now: OffsetDateTime) -> (Vec<u8>, Vec<u8>) {
        let ca = make_ca(
            name,
            kind,
            None,
            now - Duration::hours(1),
            now + Duration::days(3),
        )
        .unwrap();
        (der_of(&ca.cert_pem), pkcs8_of(&ca.key_pem))
    }

    /// The two-step path (to-be-signed bytes out, a signature in) makes a certificate the hub's
    /// proof check accepts, with DER or raw ECDSA signatures and with RSA.
    fn proved_in_two_steps(kind: KeyKind, raw_ecdsa: bool) {
        let now = OffsetDateTime::now_utc();
        let (ca_der, pkcs8) = test_ca("Kms Root", kind, now);
        let code = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";
        let tbs = verification_tbs(code, &ca_der, now, Duration::hours(1)).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match kind {
            KeyKind::EcP256 if raw_ecdsa => {
                let key =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).unwrap();
                key.sign(&rng, &tbs).unwrap().as_ref().to_vec()
            }
            KeyKind::EcP256 => {
                let key = EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &pkcs8,
                )
                .unwrap();
                key.sign(&rng, &tbs).unwrap().as_ref().to_vec()
            }
            _ => {
                let key = RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, &tbs, &mut sig).unwrap();
                sig
            }
        };
        let der = certificate_from_tbs(&tbs, &signature).unwrap();
        let pem = crate::input::der_to_pem(&der);
        let info = CertInfo::from_der(&ca_der).unwrap();
        let state = CodeState::Live {
            code: code.into(),
            expires_at: now.unix_timestamp() + 60,
        };
        verify_proof(
            "kms",
            &info,
            &state,
            pem.as_bytes(),
            usize::MAX,
            now.unix_timestamp(),
        )
        .unwrap();
        // Someone else's signature is refused by the proof check, not by assembly.
        let mut wrong = signature.clone();
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        if let Ok(der) = certificate_from_tbs(&tbs, &wrong) {
            let pem = crate::input::der_to_pem(&der);
            assert!(verify_proof(
                "kms",
                &info,
                &state,
                pem.as_bytes(),
                usize::MAX,
                now.unix_timestamp()
            )
            .is_err());
        }
    }

    #[test]
    fn two_steps_with_ecdsa_der_raw_and_rsa() {
        proved_in_two_steps(KeyKind::EcP256, false);
        proved_in_two_steps(KeyKind::EcP256, true);
        proved_in_two_steps(KeyKind::Rsa(2048), false);
    }

    #[test]
    fn assembly_refuses_what_is_not_a_tbs_or_a_signature() {
        for tbs in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x02],
            &[0x04, 0x00],
            &[0x30, 0x84, 1, 1, 1, 1],
        ] {
            assert!(certificate_from_tbs(tbs, &[1, 2]).is_err(), "{tbs:?}");
        }
        let now = OffsetDateTime::now_utc();
        let (ca_der, _) = test_ca("Kms Root", KeyKind::EcP256, now);
        let tbs = verification_tbs("ABC", &ca_der, now, Duration::hours(1)).unwrap();
        let err = certificate_from_tbs(&tbs, &[7u8; 10])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DER or 64 raw bytes"), "{err}");
        assert!(certificate_from_tbs(&tbs, &[]).is_err());
    }

    /// Proves as the hub would check it, signing "externally" with the CA's key the way a
    /// PKCS#11 module does (raw r||s for ECDSA, converted here).
    fn proved(kind: KeyKind) {
        let now = OffsetDateTime::now_utc();
        let (ca_der, pkcs8) = test_ca("Ext Root", kind, now);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sign = |msg: &[u8]| -> Result<Vec<u8>, String> {
            match external_key_kind(&ca_der).unwrap() {
                ExternalKeyKind::EcP256 => {
                    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                        .map_err(|e| e.to_string())?;
                    let _ = key.public_key();
                    let raw = key.sign(&rng, msg).map_err(|e| e.to_string())?;
                    ecdsa_raw_to_der(raw.as_ref()).ok_or_else(|| "odd signature".to_string())
                }
                ExternalKeyKind::Rsa => {
                    let key = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| e.to_string())?;
                    let mut sig = vec![0; key.public_modulus_len()];
                    key.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                        .map_err(|e| e.to_string())?;
                    Ok(sig)
                }
            }
        };
        let code = "A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718";
        let v =
            make_verification_cert_external(code, &ca_der, &sign, now, Duration::hours(1)).unwrap();
        let info = CertInfo::from_der(&ca_der).unwrap();
        let state = CodeState::Live {
            code: code.into(),
            expires_at: now.unix_timestamp() + 60,
        };
        verify_proof(
            "root",
            &info,
            &state,
            v.cert_pem.as_bytes(),
            usize::MAX,
            now.unix_timestamp(),
        )
        .unwrap();
    }

    #[test]
    fn an_external_ecdsa_signer_proves_possession() {
        proved(KeyKind::EcP256);
    }

    #[test]
    fn an_external_rsa_signer_proves_possession() {
        proved(KeyKind::Rsa(2048));
    }

    #[test]
    fn a_failing_signer_or_an_unsupported_key_is_a_clear_error() {
        let now = OffsetDateTime::now_utc();
        let ca = make_ca(
            "Ext",
            KeyKind::EcP256,
            None,
            now - Duration::hours(1),
            now + Duration::days(3),
        )
        .unwrap();
        let refuse = |_: &[u8]| -> Result<Vec<u8>, String> { Err("token removed".into()) };
        assert!(make_verification_cert_external(
            "C0DE",
            &der_of(&ca.cert_pem),
            &refuse,
            now,
            Duration::hours(1)
        )
        .is_err());
        let ed = make_ca(
            "Ed",
            KeyKind::Ed25519,
            None,
            now - Duration::hours(1),
            now + Duration::days(3),
        )
        .unwrap();
        let e = external_key_kind(&der_of(&ed.cert_pem)).unwrap_err();
        assert!(e.to_string().contains("ECDSA P-256 and RSA can"), "{e}");
    }

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        assert_eq!(ecdsa_raw_to_der(&[]), None);
        assert_eq!(ecdsa_raw_to_der(&[1, 2, 3]), None);
        // r = 1, s = 0x80 (needs a leading zero), leading zeros stripped.
        assert_eq!(
            ecdsa_raw_to_der(&[0, 1, 0, 0x80]).unwrap(),
            [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80]
        );
        // A zero half is INTEGER 0.
        assert_eq!(
            ecdsa_raw_to_der(&[0, 0, 0, 5]).unwrap(),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x05]
        );
    }
}
