//! Certificate and key generation: test PKIs (`iothub pki ...`), the hub's own TLS certificates,
//! and the verification certificate of the one-step `cert prove`.
//!
//! Why here: generation is pure computation (keys come from the OS CSPRNG through aws-lc-rs), and
//! `cert prove` must produce exactly what [`crate::pop::verify_proof`] accepts, so both live side by
//! side and are tested against each other and against `openssl verify`.

use ::time::{Duration, OffsetDateTime};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    Ed25519,
    Rsa(u32),
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("RSA keys are 2048, 3072 or 4096 bits; {0} was asked for")]
    RsaSize(u32),
    #[error("the private key cannot be read: {0}; expected an unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM key")]
    BadKey(String),
    #[error("the CA certificate cannot be used as an issuer: {0}")]
    BadIssuer(String),
    #[error("the private key does not belong to the CA certificate (its public key differs)")]
    KeyMismatch,
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the system random source failed")]
    Random,
}

/// A generated certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a key of the given kind.
pub fn generate_key(kind: KeyKind) -> Result<KeyPair, GenError> {
    Ok(match kind {
        KeyKind::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyKind::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
        KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        KeyKind::Rsa(bits) => {
            let size = match bits {
                2048 => rcgen::RsaKeySize::_2048,
                3072 => rcgen::RsaKeySize::_3072,
                4096 => rcgen::RsaKeySize::_4096,
                other => return Err(GenError::RsaSize(other)),
            };
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)?
        }
    })
}

/// Reads an unencrypted private key in PKCS#8, PKCS#1 or SEC1 PEM.
pub fn parse_private_key_pem(pem: &str) -> Result<KeyPair, GenError> {
    KeyPair::from_pem(pem).map_err(|e| GenError::BadKey(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, GenError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| GenError::Random)?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, GenError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// An issuer made from an existing CA certificate (PEM) and its private key.
pub struct CaIssuer {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CaIssuer {
    /// The rcgen issuer (for signing CRLs in tests).
    #[cfg(test)]
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Loads a CA from its certificate PEM and key PEM, checking that the key belongs to the
    /// certificate. The certificate PEM may be a chain (the CA first, then its issuers, as
    /// `make_ca` writes intermediates); the chain is kept and appended to what this CA signs.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CaIssuer, GenError> {
        use rustls_pki_types::pem::PemObject;
        let key = parse_private_key_pem(key_pem)?;
        let chain: Vec<Vec<u8>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| GenError::BadIssuer(format!("not PEM certificates ({e})")))?;
        let der = chain
            .first()
            .ok_or_else(|| GenError::BadIssuer("no CERTIFICATE block found".into()))?
            .clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| GenError::BadIssuer(e.to_string()))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(GenError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| GenError::BadIssuer(e.to_string()))?;
        let ca = CaIssuer {
            issuer,
            cert_pem: chain.iter().map(|d| crate::input::der_to_pem(d)).collect(),
        };
        // rcgen rebuilds the issuer name keeping one value per attribute type: a CA whose subject
        // repeats one (two DC or OU values, say) would be named wrongly in everything it signs.
        // Sign a probe and compare the name it carries with the CA's subject, byte for byte.
        let probe = make_verification_cert(
            "probe",
            &ca,
            OffsetDateTime::now_utc(),
            Duration::minutes(1),
        )?;
        let probe_der =
            crate::input::parse_certificate_input(probe.cert_pem.as_bytes(), usize::MAX)
                .map_err(|e| GenError::BadIssuer(e.to_string()))?;
        let (_, probe_cert) = x509_parser::parse_x509_certificate(&probe_der)
            .map_err(|e| GenError::BadIssuer(e.to_string()))?;
        if probe_cert.issuer().as_raw() != cert.subject().as_raw() {
            return Err(GenError::BadIssuer(format!(
                "its subject '{}' cannot be reproduced exactly by the built-in signer (an attribute type appears more than once); make the certificate with openssl instead",
                crate::dn::rfc4514(cert.subject())
            )));
        }
        Ok(ca)
    }

    /// The CA certificate followed by its chain, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Makes a CA certificate: self-signed root when `parent` is None, else an intermediate signed by
/// `parent` (path length 0 below it).
pub fn make_ca(
    cn: &str,
    kind: KeyKind,
    parent: Option<&CaIssuer>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Generated, GenError> {
    let key = generate_key(kind)?;
    let mut params = base_params(cn, not_before, not_after)?;
    params.is_ca = IsCa::Ca(match parent {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = parent.is_some();
    let cert = match parent {
        None => params.self_signed(&key)?,
        Some(p) => params.signed_by(&key, &p.issuer)?,
    };
    let mut cert_pem = cert.pem();
    if let Some(p) = parent {
        // An intermediate is written with its parent so that the file is a usable chain.
        cert_pem.push_str(p.cert_pem());
    }
    Ok(Generated {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Makes a leaf certificate with subject CN = `cn`, signed by `ca`, with the clientAuth EKU (and
/// serverAuth plus the given SANs when `server_names` is not empty). The PEM holds the leaf followed
/// by the CA certificate(s) of `ca`, ready to present as a chain.
pub fn make_leaf(
    cn: &str,
    kind: KeyKind,
    ca: &CaIssuer,
    server_names: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Generated, GenError> {
    let key = generate_key(kind)?;
    let mut params = base_params(cn, not_before, not_after)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    if server_names.is_empty() {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in server_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
    }
    let cert = params.signed_by(&key, &ca.issuer)?;
    let mut cert_pem = cert.pem();
    cert_pem.push_str(ca.cert_pem());
    Ok(Generated {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Makes a verification certificate for proof of possession: CN = `code`, signed by `ca`, valid
/// from five minutes ago (clock skew) for `lifetime`. Only the leaf is returned.
pub fn make_verification_cert(
    code: &str,
    ca: &CaIssuer,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Generated, GenError> {
    let key = generate_key(KeyKind::EcP256)?;
    let mut params = base_params(code, now - Duration::minutes(5), now + lifetime)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
