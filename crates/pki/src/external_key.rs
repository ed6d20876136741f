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

    /// Proves as the hub would check it, signing "externally" with the CA's key the way a
    /// PKCS#11 module does (raw r||s for ECDSA, converted here).
    fn proved(kind: KeyKind) {
        let now = OffsetDateTime::now_utc();
        let ca = make_ca(
            "Ext Root",
            kind,
            None,
            now - Duration::hours(1),
            now + Duration::days(3),
        )
        .unwrap();
        let ca_der = der_of(&ca.cert_pem);
        let pkcs8 = pkcs8_of(&ca.key_pem);
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
