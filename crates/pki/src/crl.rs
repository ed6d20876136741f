//! Certificate revocation lists an operator uploads for a registered CA, judged without I/O:
//! the CRL must be that CA's (issuer name and signature), current (its nextUpdate not passed)
//! and newer than the one held; its entries become the CA's revocations.
//!
//! Why x509-parser rather than webpki here: webpki checks a CRL's signature only while building a
//! path for a certificate, and the hub must refuse a bad CRL at upload, with the reason, before
//! any device presents anything. x509-parser (with aws-lc-rs) already checks proof-of-possession
//! signatures in `pop`; this uses the same.

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::pop::format_time;
use crate::revocation::{normalize_serial, RevocationReason};

/// The PEM label of a CRL.
const PEM_LABEL: &str = "X509 CRL";

/// One revoked certificate of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Normalized (see [`normalize_serial`]).
    pub serial: String,
    pub reason: RevocationReason,
    /// The revocationDate, Unix seconds.
    pub revoked_at: i64,
}

/// What the hub keeps of a CRL that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFacts {
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds, when the CRL has one.
    pub next_update: Option<i64>,
    /// The cRLNumber extension, upper-case hex, when present.
    pub number: Option<String>,
    pub entries: Vec<CrlEntry>,
}

/// Why a CRL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("the CRL is empty; expected a PEM (-----BEGIN X509 CRL-----) or DER certificate revocation list")]
    Empty,
    #[error("the CRL is {size} bytes; at most {max} bytes are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("the CRL is not a certificate revocation list: {0}; expected a PEM (-----BEGIN X509 CRL-----) or DER CRL, e.g. from `openssl ca -gencrl`")]
    Unparsable(String),
    #[error(
        "the CRL has {count} entries; at most {max} are accepted (configure --max-crl-entries)"
    )]
    TooManyEntries { count: usize, max: usize },
    #[error("the CRL was issued by '{issuer}', not by certificate '{ca_name}' ('{ca_subject}'); upload it under the CA that issued it")]
    WrongIssuer {
        issuer: String,
        ca_name: String,
        ca_subject: String,
    },
    #[error("the CRL names '{ca_subject}' as its issuer but was not signed with the key of certificate '{ca_name}'")]
    NotSignedByCa { ca_name: String, ca_subject: String },
    #[error("the CRL expired: its nextUpdate {next_update} has passed (now {now}); upload a current CRL")]
    Expired { next_update: String, now: String },
    #[error("the CRL's thisUpdate {this_update} is in the future (now {now})")]
    NotYetValid { this_update: String, now: String },
    #[error("the CRL is not newer than the one held (its thisUpdate {this_update}; the held CRL's {held}); upload a newer CRL")]
    NotNewer { this_update: String, held: String },
}

/// How far a CRL's thisUpdate may be ahead of the hub's clock (clock skew between the CA and
/// the hub), in seconds.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// The DER of an uploaded CRL: PEM (`X509 CRL`) or DER, at most `max_bytes`.
pub fn read_crl(input: &[u8], max_bytes: usize) -> Result<Vec<u8>, CrlError> {
    if input.len() > max_bytes {
        return Err(CrlError::TooLarge {
            size: input.len(),
            max: max_bytes,
        });
    }
    let trimmed = input.trim_ascii();
    if trimmed.is_empty() {
        return Err(CrlError::Empty);
    }
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(trimmed.to_vec());
    }
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let (label, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(trimmed)
        .map_err(|e| CrlError::Unparsable(format!("the PEM cannot be read ({e})")))?;
    match label {
        SectionKind::Crl => Ok(der),
        _ => Err(CrlError::Unparsable(format!(
            "the PEM is not labelled {PEM_LABEL}"
        ))),
    }
}

/// Checks the CRL `der` for CA `ca_name` (its certificate `ca_der`) at `now`, against the held
/// CRL's thisUpdate, and returns what to keep.
pub fn check_crl(
    der: &[u8],
    ca_name: &str,
    ca_der: &[u8],
    now: i64,
    held_this_update: Option<i64>,
    max_entries: usize,
) -> Result<CrlFacts, CrlError> {
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        Ok(_) => return Err(CrlError::Unparsable("bytes follow the CRL".into())),
        Err(e) => return Err(CrlError::Unparsable(e.to_string())),
    };
    let count = crl.iter_revoked_certificates().count();
    if count > max_entries {
        return Err(CrlError::TooManyEntries {
            count,
            max: max_entries,
        });
    }
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| CrlError::Unparsable(format!("the CA certificate cannot be read: {e}")))?;
    let ca_subject = ca.subject().to_string();
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CrlError::WrongIssuer {
            issuer: crl.issuer().to_string(),
            ca_name: ca_name.to_string(),
            ca_subject,
        });
    }
    if crl.verify_signature(ca.public_key()).is_err() {
        return Err(CrlError::NotSignedByCa {
            ca_name: ca_name.to_string(),
            ca_subject,
        });
    }
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().map(|t| t.timestamp());
    if this_update > now + CLOCK_SKEW_SECS {
        return Err(CrlError::NotYetValid {
            this_update: format_time(this_update),
            now: format_time(now),
        });
    }
    if let Some(next) = next_update.filter(|next| *next <= now) {
        return Err(CrlError::Expired {
            next_update: format_time(next),
            now: format_time(now),
        });
    }
    if let Some(held) = held_this_update.filter(|held| this_update <= *held) {
        return Err(CrlError::NotNewer {
            this_update: format_time(this_update),
            held: format_time(held),
        });
    }
    let entries = crl
        .iter_revoked_certificates()
        .filter_map(|r| {
            let reason = match r.reason_code().map(|(_, code)| code.0) {
                None => RevocationReason::Unspecified,
                Some(code) => RevocationReason::from_crl_code(code)?,
            };
            let serial = normalize_serial(&hex::encode_upper(r.raw_serial())).ok()?;
            Some(CrlEntry {
                serial,
                reason,
                revoked_at: r.revocation_date.timestamp(),
            })
        })
        .collect();
    Ok(CrlFacts {
        this_update,
        next_update,
        number: crl.crl_number().map(|n| format!("{n:X}")),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{make_ca, make_leaf, CaIssuer, KeyKind};
    use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
    use time::{Duration, OffsetDateTime};

    const MAX: usize = 1000;

    struct Ca {
        der: Vec<u8>,
        issuer: CaIssuer,
    }

    fn ca(cn: &str) -> Ca {
        let now = OffsetDateTime::now_utc();
        let g = make_ca(
            cn,
            KeyKind::EcP256,
            None,
            now - Duration::hours(1),
            now + Duration::days(9),
        )
        .unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(g.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        Ca {
            der,
            issuer: CaIssuer::from_pem(&g.cert_pem, &g.key_pem).unwrap(),
        }
    }

    /// A CRL signed by `signer`, issued `age` ago, valid for `valid` more, revoking `serials`.
    fn crl(
        signer: &Ca,
        age: Duration,
        valid: Duration,
        serials: &[(u8, Option<rcgen::RevocationReason>)],
    ) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - age,
            next_update: now + valid,
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|(s, reason)| RevokedCertParams {
                    serial_number: SerialNumber::from(vec![*s]),
                    revocation_time: now - Duration::hours(2),
                    reason_code: *reason,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(signer.issuer.issuer())
            .unwrap()
            .der()
            .to_vec()
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_current_crl_of_the_ca_gives_its_entries() {
        let root = ca("Root");
        let der = crl(
            &root,
            Duration::minutes(5),
            Duration::days(1),
            &[
                (0x1A, Some(rcgen::RevocationReason::KeyCompromise)),
                (0x2B, None),
                (0x3C, Some(rcgen::RevocationReason::RemoveFromCrl)),
            ],
        );
        let facts = check_crl(&der, "root", &root.der, now(), None, MAX).unwrap();
        let got: Vec<(&str, RevocationReason)> = facts
            .entries
            .iter()
            .map(|e| (e.serial.as_str(), e.reason))
            .collect();
        // removeFromCRL lifts a hold: not a revocation.
        assert_eq!(
            got,
            [
                ("1A", RevocationReason::KeyCompromise),
                ("2B", RevocationReason::Unspecified)
            ]
        );
        assert_eq!(facts.number.as_deref(), Some("7"));
        assert!(facts.next_update.unwrap() > now());
        // The PEM form reads to the same DER.
        let pem = format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        assert_eq!(read_crl(pem.as_bytes(), 1 << 20).unwrap(), der);
        assert_eq!(read_crl(&der, 1 << 20).unwrap(), der);
    }

    #[test]
    fn a_crl_of_another_ca_or_key_is_refused() {
        let root = ca("Root");
        let other = ca("Other");
        let foreign = crl(
            &other,
            Duration::minutes(5),
            Duration::days(1),
            &[(1, None)],
        );
        assert!(matches!(
            check_crl(&foreign, "root", &root.der, now(), None, MAX),
            Err(CrlError::WrongIssuer { .. })
        ));
        // Same name, another key: an impostor "Root".
        let impostor = ca("Root");
        let forged = crl(
            &impostor,
            Duration::minutes(5),
            Duration::days(1),
            &[(1, None)],
        );
        let e = check_crl(&forged, "root", &root.der, now(), None, MAX).unwrap_err();
        assert!(matches!(e, CrlError::NotSignedByCa { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("not signed with the key of certificate 'root'"));
    }

    #[test]
    fn stale_future_and_older_crls_are_refused() {
        let root = ca("Root");
        let expired = crl(&root, Duration::days(2), -Duration::days(1), &[]);
        let e = check_crl(&expired, "root", &root.der, now(), None, MAX).unwrap_err();
        assert!(matches!(e, CrlError::Expired { .. }), "{e}");
        let future = crl(&root, -Duration::hours(1), Duration::days(1), &[]);
        assert!(matches!(
            check_crl(&future, "root", &root.der, now(), None, MAX),
            Err(CrlError::NotYetValid { .. })
        ));
        let current = crl(&root, Duration::minutes(5), Duration::days(1), &[]);
        let facts = check_crl(&current, "root", &root.der, now(), None, MAX).unwrap();
        let e = check_crl(
            &current,
            "root",
            &root.der,
            now(),
            Some(facts.this_update),
            MAX,
        )
        .unwrap_err();
        assert!(matches!(e, CrlError::NotNewer { .. }), "{e}");
    }

    #[test]
    fn bad_input_says_what_was_expected_and_never_panics() {
        let root = ca("Root");
        assert_eq!(read_crl(b"  \n", 100), Err(CrlError::Empty));
        assert!(matches!(
            read_crl(&[0u8; 101], 100),
            Err(CrlError::TooLarge {
                size: 101,
                max: 100
            })
        ));
        let cert_pem = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            read_crl(cert_pem, 1000),
            Err(CrlError::Unparsable(_))
        ));
        for junk in [
            &b"\x30\x03\x02\x01\x01"[..],
            b"not a crl",
            &[0x30, 0x82, 0xff, 0xff],
        ] {
            assert!(matches!(
                check_crl(junk, "root", &root.der, now(), None, MAX),
                Err(CrlError::Unparsable(_))
            ));
        }
        let many = crl(
            &root,
            Duration::minutes(5),
            Duration::days(1),
            &[(1, None), (2, None)],
        );
        assert_eq!(
            check_crl(&many, "root", &root.der, now(), None, 1),
            Err(CrlError::TooManyEntries { count: 2, max: 1 })
        );
        // A leaf is not a CRL either.
        let leaf = make_leaf(
            "d",
            KeyKind::EcP256,
            &root.issuer,
            &[],
            OffsetDateTime::now_utc() - Duration::hours(1),
            OffsetDateTime::now_utc() + Duration::days(1),
        )
        .unwrap();
        assert!(matches!(
            read_crl(leaf.cert_pem.as_bytes(), 1 << 20),
            Err(CrlError::Unparsable(_))
        ));
    }
}
