//! Proof of possession: `verify_proof` with real generated CAs of every supported key kind, every
//! refusal with its exact variant and stable `kind()`, the order in which the checks run, and the
//! small rules around it (code format, certificate names).

mod common;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA1_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
};
use common::*;
use iothub_pki::gen::KeyKind;
use iothub_pki::input::InputError;
use iothub_pki::pop::{
    constant_time_eq, format_time, generate_code, validate_ca_name, verify_proof, CodeState,
    NameError, ProofError,
};
use iothub_pki::{CertInfo, KeyAlgorithm};
use rcgen::{CertificateParams, DistinguishedName, DnType};
use x509_parser::prelude::{FromDer, X509Certificate};

const CA_NAME: &str = "contoso-root";

/// Submits `input` as it is.
fn prove_input(ca: &Ca, code: &CodeState, input: &[u8], now: i64) -> Result<CertInfo, ProofError> {
    verify_proof(CA_NAME, &ca.info, code, input, MAX, now)
}

/// Submits the certificate `der` as PEM text, the usual upload shape. (Raw DER uploads are
/// covered by input_shapes.rs; see the finding there about DER ending in a white-space byte.)
fn prove(ca: &Ca, code: &CodeState, der: &[u8], now: i64) -> Result<CertInfo, ProofError> {
    prove_input(ca, code, pem_text(der, "\n").as_bytes(), now)
}

/// Asserts that the proof was refused with the error of stable name `kind`, and returns it.
fn refused(result: Result<CertInfo, ProofError>, kind: &str) -> ProofError {
    let e = result.expect_err("the proof must be refused");
    assert_eq!(e.kind(), kind, "unexpected refusal: {e}");
    e
}

fn assert_proves(ca: &Ca) {
    let code = new_code();
    let der = ca.verification(&code);
    let info = prove(ca, &live(&code), &der, NOW)
        .unwrap_or_else(|e| panic!("proof with {} refused: {e}", ca.info.key));
    assert_eq!(info.der, der);
    assert_eq!(info.common_names, vec![code]);
    assert_eq!(info.issuer_raw, ca.info.subject_raw);
    assert_eq!(info, CertInfo::from_der(&der).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Success.

#[test]
fn proof_succeeds_with_ec_p256_root() {
    let ca = shared_root(KeyKind::EcP256);
    assert_eq!(ca.info.key, KeyAlgorithm::EcP256);
    assert_proves(ca);
}

#[test]
fn proof_succeeds_with_ec_p384_root() {
    let ca = shared_root(KeyKind::EcP384);
    assert_eq!(ca.info.key, KeyAlgorithm::EcP384);
    assert_proves(ca);
}

#[test]
fn proof_succeeds_with_ed25519_root() {
    let ca = shared_root(KeyKind::Ed25519);
    assert_eq!(ca.info.key, KeyAlgorithm::Ed25519);
    assert_proves(ca);
}

#[test]
fn proof_succeeds_with_rsa_2048_root() {
    let ca = shared_root(KeyKind::Rsa(2048));
    assert_eq!(ca.info.key, KeyAlgorithm::Rsa { bits: 2048 });
    assert_proves(ca);
}

#[test]
fn proof_succeeds_with_rsa_3072_root() {
    let ca = root("rsa-3072-root", KeyKind::Rsa(3072));
    assert_eq!(ca.info.key, KeyAlgorithm::Rsa { bits: 3072 });
    assert_proves(&ca);
}

#[test]
fn proof_succeeds_with_intermediates_of_every_kind() {
    let p256 = shared_intermediate();
    assert_eq!(p256.info.ca, Some(Some(0)));
    assert_proves(p256);
    let p384 = intermediate("int-p384", KeyKind::EcP384, shared_root(KeyKind::Rsa(2048)));
    assert_proves(&p384);
    let ed = intermediate(
        "int-ed25519",
        KeyKind::Ed25519,
        shared_root(KeyKind::EcP384),
    );
    assert_proves(&ed);
    let p256 = intermediate("int-p256", KeyKind::EcP256, shared_root(KeyKind::Ed25519));
    assert_proves(&p256);
    let rsa = intermediate("int-rsa", KeyKind::Rsa(2048), shared_root(KeyKind::EcP256));
    assert_proves(&rsa);
}

#[test]
fn the_verification_certificate_key_may_be_of_any_kind() {
    let ca = shared_root(KeyKind::EcP256);
    for subject in KINDS {
        let code = new_code();
        let key = shared_root(subject).key();
        let der = ca.sign(&leaf_params(dn_cn(&code), NOW - 60, NOW + 60), &key);
        let info = prove(ca, &live(&code), &der, NOW)
            .unwrap_or_else(|e| panic!("{}: {e}", kind_name(subject)));
        assert_eq!(info.key, shared_root(subject).info.key);
    }
}

#[test]
fn cn_is_compared_without_regard_to_case() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let lower = code.to_ascii_lowercase();
    assert_ne!(
        lower, code,
        "a code holds letters A-F (astronomically likely)"
    );
    let info = prove(ca, &live(&code), &ca.verification(&lower), NOW).expect("lower-case CN");
    assert_eq!(info.common_names, vec![lower]);
    let mixed: String = code
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    prove(ca, &live(&code), &ca.verification(&mixed), NOW).expect("mixed-case CN");
}

#[test]
fn the_verification_certificate_is_accepted_in_every_input_shape() {
    let ca = shared_root(KeyKind::Ed25519);
    let code = new_code();
    let der = ca.verification(&code);
    let pem_lf = pem_text(&der, "\n");
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("PEM LF", pem_lf.clone().into_bytes()),
        ("PEM CRLF", pem_text(&der, "\r\n").into_bytes()),
        ("base64 of DER", B64.encode(&der).into_bytes()),
        ("base64 of PEM", B64.encode(pem_lf.as_bytes()).into_bytes()),
    ];
    for (shape, input) in shapes {
        let info =
            prove_input(ca, &live(&code), &input, NOW).unwrap_or_else(|e| panic!("{shape}: {e}"));
        assert_eq!(info.der, der, "{shape}");
    }
}

#[test]
fn a_code_is_live_until_the_second_before_it_expires() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let der = ca.verification(&code);
    let state = |expires_at| CodeState::Live {
        code: code.clone(),
        expires_at,
    };
    prove(ca, &state(NOW + 1), &der, NOW).expect("expires one second after now");
    let e = refused(prove(ca, &state(NOW), &der, NOW), "VerificationCodeExpired");
    assert_eq!(
        e,
        ProofError::CodeExpired {
            ca: CA_NAME.into(),
            expired_at: NOW_TEXT.into()
        }
    );
    refused(
        prove(ca, &state(NOW - 1), &der, NOW),
        "VerificationCodeExpired",
    );
}

#[test]
fn validity_bounds_of_the_verification_certificate_are_inclusive() {
    let ca = shared_root(KeyKind::EcP384);
    let code = new_code();
    let der = ca.verification_valid(&code, NOW - 100, NOW + 100);
    prove(ca, &live(&code), &der, NOW - 100).expect("at notBefore");
    prove(ca, &live(&code), &der, NOW + 100).expect("at notAfter");
    for now in [NOW - 101, NOW + 101] {
        let e = refused(
            prove(ca, &live(&code), &der, now),
            "ProofCertificateNotValidNow",
        );
        assert_eq!(
            e,
            ProofError::OutsideValidity {
                now: rfc3339(now),
                not_before: rfc3339(NOW - 100),
                not_after: rfc3339(NOW + 100),
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals, in check order.

#[test]
fn refuses_without_a_code() {
    let ca = shared_root(KeyKind::EcP256);
    let der = ca.verification(&new_code());
    let e = refused(
        prove(ca, &CodeState::None, &der, NOW),
        "VerificationCodeMissing",
    );
    assert_eq!(e, ProofError::NoCode { ca: CA_NAME.into() });
    assert!(e.to_string().contains(CA_NAME), "{e}");
}

#[test]
fn refuses_a_used_code() {
    let ca = shared_root(KeyKind::EcP256);
    let der = ca.verification(&new_code());
    let e = refused(
        prove(ca, &CodeState::Used { at: NOW - 3600 }, &der, NOW),
        "VerificationCodeUsed",
    );
    assert_eq!(
        e,
        ProofError::CodeUsed {
            ca: CA_NAME.into(),
            at: "2025-06-15T14:06:40Z".into()
        }
    );
}

#[test]
fn refuses_an_expired_code_including_expiry_exactly_now() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let der = ca.verification(&code);
    for expires_at in [NOW, NOW - 1, NOW - 10 * DAY] {
        let state = CodeState::Live {
            code: code.clone(),
            expires_at,
        };
        let e = refused(prove(ca, &state, &der, NOW), "VerificationCodeExpired");
        assert_eq!(
            e,
            ProofError::CodeExpired {
                ca: CA_NAME.into(),
                expired_at: rfc3339(expires_at)
            }
        );
    }
}

#[test]
fn refuses_garbage_input() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let e = refused(
        prove_input(ca, &live(&code), b"this is not a certificate", NOW),
        "CertificateUnparsable",
    );
    assert!(
        matches!(e, ProofError::Input(InputError::NotACertificate { .. })),
        "{e:?}"
    );
    let e = refused(
        prove_input(ca, &live(&code), b" \r\n\t", NOW),
        "CertificateEmpty",
    );
    assert_eq!(e, ProofError::Input(InputError::Empty));
    // A private key is refused for what it is (issue 16, finding 7).
    let key = pem_block("PRIVATE KEY", &ca.key().serialize_der(), "\n");
    let e = refused(
        prove_input(ca, &live(&code), key.as_bytes(), NOW),
        "CertificatePrivateKeyIncluded",
    );
    assert_eq!(
        e,
        ProofError::Input(InputError::PrivateKeyIncluded {
            what: "a PEM block labelled 'PRIVATE KEY'".into()
        })
    );
}

#[test]
fn refuses_two_certificates_in_one_pem() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let one = pem_text(&ca.verification(&code), "\n");
    let two = format!("{one}{}", pem_text(&ca.verification(&code), "\n"));
    let e = refused(
        prove_input(ca, &live(&code), two.as_bytes(), NOW),
        "CertificateCountInvalid",
    );
    assert_eq!(
        e,
        ProofError::Input(InputError::MultipleCertificates { count: 2 })
    );
    // The chain a CA file holds (verification certificate followed by its CA) is two as well.
    let chained = format!("{one}{}", ca.pem());
    refused(
        prove_input(ca, &live(&code), chained.as_bytes(), NOW),
        "CertificateCountInvalid",
    );
}

#[test]
fn refuses_input_over_the_size_limit() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let pem = pem_text(&ca.verification(&code), "\n");
    let padded = |len: usize| {
        let mut v = pem.clone().into_bytes();
        v.resize(len, b' ');
        v
    };
    prove_input(ca, &live(&code), &padded(64 * 1024), NOW).expect("exactly 64 KiB is accepted");
    let e = refused(
        prove_input(ca, &live(&code), &padded(65 * 1024), NOW),
        "CertificateTooLarge",
    );
    assert_eq!(
        e,
        ProofError::Input(InputError::TooLarge {
            len: 65 * 1024,
            max: 64 * 1024
        })
    );
    refused(
        prove_input(ca, &live(&code), &padded(64 * 1024 + 1), NOW),
        "CertificateTooLarge",
    );
}

#[test]
fn refuses_a_verification_certificate_from_another_ca() {
    let root = shared_root(KeyKind::EcP256);
    let other = shared_intermediate();
    let code = new_code();
    let e = refused(
        prove(root, &live(&code), &other.verification(&code), NOW),
        "ProofIssuerMismatch",
    );
    assert_eq!(
        e,
        ProofError::IssuerMismatch {
            expected: "CN=root".into(),
            found: "CN=intermediate".into()
        }
    );
    assert!(
        e.to_string()
            .contains("expected issuer 'CN=root', found 'CN=intermediate'"),
        "{e}"
    );
    // And the other way round: signed by the root, presented for its intermediate.
    let e = refused(
        prove(other, &live(&code), &root.verification(&code), NOW),
        "ProofIssuerMismatch",
    );
    assert_eq!(
        e,
        ProofError::IssuerMismatch {
            expected: "CN=intermediate".into(),
            found: "CN=root".into()
        }
    );
}

#[test]
fn refuses_a_self_signed_certificate_carrying_the_code() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let key = p256_key();
    let der = leaf_params(dn_cn(&code), NOW - 60, NOW + 60)
        .self_signed(&key)
        .unwrap()
        .der()
        .to_vec();
    let e = refused(prove(ca, &live(&code), &der, NOW), "ProofIssuerMismatch");
    assert_eq!(
        e,
        ProofError::IssuerMismatch {
            expected: "CN=root".into(),
            found: format!("CN={code}")
        }
    );
}

#[test]
fn refuses_a_certificate_signed_by_another_key_under_the_same_subject_name() {
    for kind in KINDS {
        let ca = shared_root(kind);
        let impostor = impostor_root(kind);
        assert_eq!(impostor.info.subject_raw, ca.info.subject_raw);
        assert_ne!(impostor.der, ca.der);
        let code = new_code();
        let e = refused(
            prove(ca, &live(&code), &impostor.verification(&code), NOW),
            "ProofSignatureInvalid",
        );
        assert_eq!(
            e,
            ProofError::BadSignature { ca: CA_NAME.into() },
            "{}",
            kind_name(kind)
        );
    }
}

#[test]
fn refuses_an_rsa_ca_against_an_ecdsa_signed_certificate() {
    let ca = shared_root(KeyKind::Rsa(2048));
    let signer = impostor_root(KeyKind::EcP256);
    assert_eq!(signer.info.subject_raw, ca.info.subject_raw);
    let code = new_code();
    let e = refused(
        prove(ca, &live(&code), &signer.verification(&code), NOW),
        "ProofSignatureInvalid",
    );
    assert_eq!(e, ProofError::BadSignature { ca: CA_NAME.into() });
}

#[test]
fn refuses_every_cross_key_kind_signature() {
    for ca_kind in KINDS {
        for signer_kind in KINDS.into_iter().filter(|k| *k != ca_kind) {
            let code = new_code();
            let der = impostor_root(signer_kind).verification(&code);
            let e = refused(
                prove(shared_root(ca_kind), &live(&code), &der, NOW),
                "ProofSignatureInvalid",
            );
            assert_eq!(
                e,
                ProofError::BadSignature { ca: CA_NAME.into() },
                "CA {} vs signature by {}",
                kind_name(ca_kind),
                kind_name(signer_kind)
            );
        }
    }
}

#[test]
fn refuses_a_certificate_altered_after_signing() {
    // The CA signs CN=<another code>; the subject is then rewritten to the live code while the
    // original signature is kept.
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let signed = ca.verification(&new_code());
    let sig = content(tlv_items(content(&signed))[2])[1..].to_vec();
    let forged = rebuild(
        &signed,
        ALG_ECDSA_SHA256,
        |items| items[TBS_SUBJECT] = name(&[&[(OID_CN, UTF8, code.as_str())]]),
        |_| sig,
    );
    let info = CertInfo::from_der(&forged).unwrap();
    assert_eq!(info.common_names, vec![code.clone()]);
    let e = refused(
        prove(ca, &live(&code), &forged, NOW),
        "ProofSignatureInvalid",
    );
    assert_eq!(e, ProofError::BadSignature { ca: CA_NAME.into() });
}

#[test]
fn refuses_a_cn_that_is_not_the_code() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    // A CN holding 8 consecutive characters of the live code is not shown (see
    // a_cn_mismatch_shows_no_part_of_the_live_code); any other is, up to 96 characters.
    let mismatch = |cn: &str| {
        let upper = cn.to_ascii_uppercase();
        let holds_part = (0..=code.len() - 8).any(|i| upper.contains(&code[i..i + 8]));
        ProofError::CnMismatch {
            found: (!holds_part).then(|| cn.chars().take(96).collect()),
        }
    };
    let other = new_code();
    let cases = [
        other.clone(),
        code[..47].to_string(),
        format!("{code}0"),
        format!("{code} "),
        format!(" {code}"),
        "device-1".to_string(),
        "é".repeat(120),
    ];
    for cn in cases {
        let e = refused(
            prove(ca, &live(&code), &ca.verification(&cn), NOW),
            "ProofCommonNameMismatch",
        );
        assert_eq!(e, mismatch(&cn), "CN {cn:?}");
    }
    let e = refused(
        prove(ca, &live(&code), &ca.verification(&other), NOW),
        "ProofCommonNameMismatch",
    );
    assert!(
        e.to_string().contains(&format!(
            "CN is '{other}' but it does not equal the current verification code"
        )),
        "{e}"
    );
}

#[test]
fn refuses_the_code_in_ou_instead_of_cn() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    // OU only, no CN at all: the CN count check fails first.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationalUnitName, code.as_str());
    let der = ca.sign(&leaf_params(dn, NOW - 60, NOW + 60), &p256_key());
    assert!(CertInfo::from_der(&der).unwrap().common_names.is_empty());
    let e = refused(prove(ca, &live(&code), &der, NOW), "ProofCommonNameMissing");
    assert_eq!(
        e,
        ProofError::CnCount {
            found: "no CN".into()
        }
    );
    // OU holding the code beside a CN that does not: the CN is compared, and differs.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationalUnitName, code.as_str());
    dn.push(DnType::CommonName, "device");
    let der = ca.sign(&leaf_params(dn, NOW - 60, NOW + 60), &p256_key());
    let e = refused(
        prove(ca, &live(&code), &der, NOW),
        "ProofCommonNameMismatch",
    );
    assert!(
        matches!(&e, ProofError::CnMismatch { found: Some(found) } if found == "device"),
        "{e:?}"
    );
}

/// A subject with two CN attributes (rcgen keeps one value per type, so the second is written
/// under the CN OID as a custom type).
fn two_cn_subject(first: &str, second: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first);
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), second);
    dn
}

#[test]
fn refuses_two_cns_even_when_both_are_the_code() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    for (a, b) in [
        (code.as_str(), code.as_str()),
        (code.as_str(), "x"),
        ("x", code.as_str()),
    ] {
        let der = ca.sign(
            &leaf_params(two_cn_subject(a, b), NOW - 60, NOW + 60),
            &p256_key(),
        );
        assert_eq!(CertInfo::from_der(&der).unwrap().common_names, vec![a, b]);
        let e = refused(prove(ca, &live(&code), &der, NOW), "ProofCommonNameMissing");
        assert_eq!(
            e,
            ProofError::CnCount {
                found: "2 CNs".into()
            }
        );
    }
}

#[test]
fn refuses_an_expired_verification_certificate() {
    let ca = shared_root(KeyKind::Ed25519);
    let code = new_code();
    let der = ca.verification_valid(&code, NOW - 2 * DAY, NOW - DAY);
    let e = refused(
        prove(ca, &live(&code), &der, NOW),
        "ProofCertificateNotValidNow",
    );
    assert_eq!(
        e,
        ProofError::OutsideValidity {
            now: NOW_TEXT.into(),
            not_before: rfc3339(NOW - 2 * DAY),
            not_after: rfc3339(NOW - DAY),
        }
    );
}

#[test]
fn refuses_a_not_yet_valid_verification_certificate() {
    let ca = shared_root(KeyKind::Rsa(2048));
    let code = new_code();
    let der = ca.verification_valid(&code, NOW + DAY, NOW + 2 * DAY);
    let e = refused(
        prove(ca, &live(&code), &der, NOW),
        "ProofCertificateNotValidNow",
    );
    assert_eq!(
        e,
        ProofError::OutsideValidity {
            now: NOW_TEXT.into(),
            not_before: rfc3339(NOW + DAY),
            not_after: rfc3339(NOW + 2 * DAY),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// SHA-1: rcgen cannot sign with SHA-1, so the certificates are rebuilt and signed here: RSA with
// the test's own PKCS#1 v1.5 + SHA-1 implementation, ECDSA through aws-lc-rs's digest signing.

/// A verification certificate for `code` from the shared RSA root, re-signed with SHA-1 under
/// the algorithm identifier `alg` (sha1WithRSAEncryption or its OIW alias).
fn rsa_sha1_verification(code: &str, alg: &[u8]) -> Vec<u8> {
    let ca = shared_root(KeyKind::Rsa(2048));
    let pkcs8 = ca.key().serialize_der();
    rebuild(
        &ca.verification(code),
        alg,
        |_| {},
        |tbs| rsa_sha1_sign(&pkcs8, tbs),
    )
}

#[test]
fn refuses_a_genuine_sha1_rsa_signature() {
    let ca = shared_root(KeyKind::Rsa(2048));
    let (_, ca_cert) = X509Certificate::from_der(&ca.der).unwrap();
    for alg in [ALG_SHA1_RSA, ALG_SHA1_RSA_OIW] {
        let code = new_code();
        let der = rsa_sha1_verification(&code, alg);
        // The signature is real: aws-lc-rs's legacy SHA-1 verifier and x509-parser accept it, so
        // only the policy check stands between it and a verified CA.
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sig = content(tlv_items(content(&der))[2])[1..].to_vec();
        UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            ca_cert.public_key().subject_public_key.data.as_ref(),
        )
        .verify(&tbs_der(&der), &sig)
        .expect("a valid SHA-1 RSA signature");
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("x509-parser alone accepts SHA-1");
        let e = refused(
            prove(ca, &live(&code), &der, NOW),
            "ProofSignatureAlgorithmRefused",
        );
        assert_eq!(
            e,
            ProofError::WeakSignature {
                algorithm: "SHA-1".into()
            }
        );
    }
}

#[test]
fn refuses_a_genuine_ecdsa_sha1_signature() {
    let ca = shared_root(KeyKind::EcP256);
    let pkcs8 = ca.key().serialize_der();
    let code = new_code();
    let der = rebuild(
        &ca.verification(&code),
        ALG_ECDSA_SHA1,
        |_| {},
        |tbs| {
            // ECDSA signs the hash as an integer: SHA-1 left-padded to 32 bytes is the same integer.
            let mut padded = [0u8; 32];
            padded[12..].copy_from_slice(&sha1(tbs));
            let d = digest::Digest::import_less_safe(&padded, &digest::SHA256).unwrap();
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
                .unwrap()
                .sign_digest(&d)
                .unwrap()
                .as_ref()
                .to_vec()
        },
    );
    let (_, ca_cert) = X509Certificate::from_der(&ca.der).unwrap();
    let sig = content(tlv_items(content(&der))[2])[1..].to_vec();
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA1_ASN1,
        ca_cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&tbs_der(&der), &sig)
    .expect("a valid ECDSA SHA-1 signature");
    let e = refused(
        prove(ca, &live(&code), &der, NOW),
        "ProofSignatureAlgorithmRefused",
    );
    assert_eq!(
        e,
        ProofError::WeakSignature {
            algorithm: "SHA-1".into()
        }
    );
}

#[test]
fn refuses_dsa_with_sha1_before_looking_at_the_signature() {
    // No DSA key at hand: the signature is junk, yet the algorithm is refused first.
    let ca = shared_root(KeyKind::Rsa(2048));
    let code = new_code();
    let der = rebuild(
        &ca.verification(&code),
        ALG_DSA_SHA1,
        |_| {},
        |_| seq(&[tlv(0x02, &[1]), tlv(0x02, &[1])]),
    );
    let e = refused(
        prove(ca, &live(&code), &der, NOW),
        "ProofSignatureAlgorithmRefused",
    );
    assert_eq!(
        e,
        ProofError::WeakSignature {
            algorithm: "SHA-1".into()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Check order: when several things are wrong, the first check in the documented order decides.

#[test]
fn the_code_is_checked_before_the_input() {
    let ca = shared_root(KeyKind::EcP256);
    let garbage = b"\x00\x01garbage";
    let huge = vec![b'A'; MAX + 1];
    for input in [&garbage[..], &huge[..], b""] {
        refused(
            prove_input(ca, &CodeState::None, input, NOW),
            "VerificationCodeMissing",
        );
        refused(
            prove_input(ca, &CodeState::Used { at: NOW }, input, NOW),
            "VerificationCodeUsed",
        );
        let expired = CodeState::Live {
            code: new_code(),
            expires_at: NOW,
        };
        refused(
            prove_input(ca, &expired, input, NOW),
            "VerificationCodeExpired",
        );
    }
}

#[test]
fn the_issuer_is_checked_before_algorithm_signature_cn_and_validity() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    // Another CA, a wrong CN, and expired: the issuer decides.
    let der = shared_intermediate().verification_valid("not-the-code", NOW - 2 * DAY, NOW - DAY);
    refused(prove(ca, &live(&code), &der, NOW), "ProofIssuerMismatch");
    // A SHA-1 signature by another CA (the RSA root is "CN=root" too, so use the intermediate).
    let rsa_sha1 = rsa_sha1_verification(&code, ALG_SHA1_RSA);
    refused(
        prove(shared_intermediate(), &live(&code), &rsa_sha1, NOW),
        "ProofIssuerMismatch",
    );
}

fn live_until(expires_at: i64) -> CodeState {
    CodeState::Live {
        code: new_code(),
        expires_at,
    }
}

#[test]
fn the_algorithm_is_checked_before_signature_cn_and_validity() {
    let ca = shared_root(KeyKind::Rsa(2048));
    // The code in the certificate is not the live one.
    let der = rsa_sha1_verification(&new_code(), ALG_SHA1_RSA);
    refused(
        prove(ca, &live_until(NOW + 400 * DAY), &der, NOW + 365 * DAY),
        "ProofSignatureAlgorithmRefused",
    );
}

#[test]
fn the_signature_is_checked_before_cn_and_validity() {
    let ca = shared_root(KeyKind::EcP384);
    let impostor = impostor_root(KeyKind::EcP384);
    let code = new_code();
    let wrong_cn = impostor.verification_valid("nope", NOW - 2 * DAY, NOW - DAY);
    refused(
        prove(ca, &live(&code), &wrong_cn, NOW),
        "ProofSignatureInvalid",
    );
    let two_cns = impostor.sign(
        &leaf_params(two_cn_subject(&code, &code), NOW - 60, NOW + 60),
        &p256_key(),
    );
    refused(
        prove(ca, &live(&code), &two_cns, NOW),
        "ProofSignatureInvalid",
    );
}

#[test]
fn the_cn_is_checked_before_validity() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let two = ca.sign(
        &leaf_params(two_cn_subject(&code, "x"), NOW - 2 * DAY, NOW - DAY),
        &p256_key(),
    );
    refused(prove(ca, &live(&code), &two, NOW), "ProofCommonNameMissing");
    let wrong = ca.verification_valid("wrong", NOW - 2 * DAY, NOW - DAY);
    refused(
        prove(ca, &live(&code), &wrong, NOW),
        "ProofCommonNameMismatch",
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness: no single-bit change to a verification certificate's signed part yields a proof.

#[test]
fn every_single_bit_flip_of_the_signed_part_is_refused() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    // Raw DER ending in a white-space byte is refused as it stands (see input_shapes.rs), so pick
    // a certificate that does not, for the control below.
    let der = std::iter::repeat_with(|| ca.verification(&code))
        .find(|d| !d[d.len() - 1].is_ascii_whitespace())
        .unwrap();
    prove_input(ca, &live(&code), &der, NOW).expect("the unmodified certificate proves");
    let (_, tbs_header, tbs_len) = tlv_header(content(&der));
    let outer_header = der.len() - content(&der).len();
    let tbs_range = outer_header..outer_header + tbs_header + tbs_len;
    for i in 0..der.len() {
        for bit in 0..8 {
            let mut flipped = der.clone();
            flipped[i] ^= 1 << bit;
            let first = prove_input(ca, &live(&code), &flipped, NOW);
            let second = prove_input(ca, &live(&code), &flipped, NOW);
            assert_eq!(first, second, "byte {i} bit {bit}: not deterministic");
            // Outside the signed TBS, x509-parser tolerates some changes to the unsigned outer
            // AlgorithmIdentifier and BIT STRING (tag bits, the unused-bits count) and still
            // verifies the unchanged signature over the unchanged TBS: harmless malleability,
            // so only determinism and absence of panics are required there.
            if tbs_range.contains(&i) || i < outer_header {
                assert!(
                    first.is_err(),
                    "byte {i} bit {bit}: a changed certificate proves"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Codes, names, helpers.

#[test]
fn codes_are_48_uppercase_hex_digits_and_unique() {
    let codes: Vec<String> = (0..200).map(|_| generate_code().unwrap()).collect();
    for c in &codes {
        assert_eq!(c.len(), 48, "{c}");
        assert!(
            c.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
            "{c}"
        );
    }
    let mut sorted = codes.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), codes.len());
}

#[test]
fn ca_names_follow_the_documented_pattern() {
    let ok_64 = "a".repeat(64);
    for ok in [
        "a",
        "root",
        "Contoso-Root_2.0",
        "0",
        "-",
        ".",
        "_",
        ok_64.as_str(),
    ] {
        assert_eq!(validate_ca_name(ok), Ok(()), "{ok:?}");
    }
    let cases: [(String, &str); 8] = [
        (String::new(), "it is empty"),
        ("a".repeat(65), "it has 65 characters"),
        ("my root".into(), "it contains ' '"),
        ("a/b".into(), "it contains '/'"),
        ("é".into(), "it contains 'é'"),
        ("root\n".into(), "it contains '\\n'"),
        ("a:b".into(), "it contains ':'"),
        ("é".repeat(65), "it has 65 characters"),
    ];
    for (name, problem) in cases {
        let e = validate_ca_name(&name).expect_err(&name);
        assert_eq!(
            e,
            NameError {
                shown: name.chars().take(80).collect(),
                problem: problem.into()
            }
        );
        assert!(e.to_string().contains("expected 1 to 64 characters"), "{e}");
    }
    let long = "x".repeat(200);
    assert_eq!(validate_ca_name(&long).unwrap_err().shown, "x".repeat(80));
}

#[test]
fn constant_time_eq_compares_bytes() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(b"ABC", b"ABC"));
    assert!(!constant_time_eq(b"ABC", b"ABD"));
    assert!(!constant_time_eq(b"ABC", b"abc"));
    assert!(!constant_time_eq(b"ABC", b"ABCD"));
    assert!(!constant_time_eq(b"", b"A"));
}

#[test]
fn format_time_is_rfc3339_utc() {
    assert_eq!(format_time(NOW), NOW_TEXT);
    assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_time(i64::MAX), format!("{} (Unix time)", i64::MAX));
}

#[test]
fn generated_params_helpers_are_sane() {
    // Guards the fixtures themselves: a verification certificate is an end entity with the CN.
    let p: CertificateParams = leaf_params(dn_cn("x"), NOW, NOW + 1);
    assert_eq!(p.not_before.unix_timestamp(), NOW);
    let info = CertInfo::from_der(&shared_root(KeyKind::EcP256).verification("x")).unwrap();
    assert_eq!(info.ca, None);
    assert_eq!(info.common_names, vec!["x"]);
    assert_eq!(info.issuer, "CN=root");
}

// ---------------------------------------------------------------------------------------------
// Findings.

#[test]
fn a_cn_equal_to_a_lower_case_live_code_is_accepted() {
    // verify_proof documents the comparison as "without regard to case". generate_code emits
    // upper case, so this bites only when a code reaches CodeState in another case (a store or
    // API layer that normalises, or a code supplied by an operator).
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code().to_ascii_lowercase();
    let der = ca.verification(&code);
    prove(ca, &live(&code), &der, NOW).expect("CN equal to the live code");
}

#[test]
fn a_bmp_string_cn_holding_the_code_is_accepted() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        rcgen::DnValue::BmpString(rcgen::string::BmpString::try_from(code.as_str()).unwrap()),
    );
    let der = ca.sign(&leaf_params(dn, NOW - 60, NOW + 60), &p256_key());
    prove(ca, &live(&code), &der, NOW).expect("the CN is the code");
}

// ---------------------------------------------------------------------------------------------
// Security review, issue 16, finding 7.

/// A CN whose value is not a text string must never be read as one (it used to be read as the hex
/// of its bytes, so an OCTET STRING holding the code's 24 bytes proved possession).
#[test]
fn refuses_a_cn_that_is_not_a_text_string() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let code_bytes = hex_bytes(&code);
    let utf8_code = tlv(UTF8, code.as_bytes());
    let mut bad_utf8 = code.as_bytes().to_vec();
    bad_utf8[0] = 0xff;
    let mut non_ascii_printable = code.as_bytes().to_vec();
    non_ascii_printable[0] = 0xc3;
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "an OCTET STRING",
            name_raw(&[(OID_CN, OCTET_STRING, &code_bytes)]),
        ),
        ("a SEQUENCE", name_raw(&[(OID_CN, SEQUENCE, &utf8_code)])),
        ("an INTEGER", name_raw(&[(OID_CN, INTEGER, &code_bytes)])),
        (
            "a VisibleString",
            name_raw(&[(OID_CN, VISIBLE, code.as_bytes())]),
        ),
        ("a NumericString", name_raw(&[(OID_CN, NUMERIC, b"1234")])),
        (
            "a UTF8String that is not valid UTF-8",
            name_raw(&[(OID_CN, UTF8, &bad_utf8)]),
        ),
        (
            "a PrintableString that is not ASCII",
            name_raw(&[(OID_CN, PRINTABLE, &non_ascii_printable)]),
        ),
    ];
    for (what, subject) in cases {
        let der = p256_signed_with_subject(ca, subject);
        let e = refused(prove(ca, &live(&code), &der, NOW), "ProofCommonNameNotText");
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "the verification certificate's CN is {what}, not a text string"
            )),
            "{what}: {text}"
        );
        // The bytes of a CN that is not text are not shown as if they were a name.
        assert!(!text.contains(&code), "{what}: {text}");
    }
}

/// The string types a CN may use (UTF8String, PrintableString, IA5String, TeletexString with ASCII
/// text, BMPString, UniversalString) all carry the code.
#[test]
fn every_text_string_type_may_carry_the_code() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let utf16: Vec<u8> = code.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let utf32: Vec<u8> = code
        .chars()
        .flat_map(|c| (c as u32).to_be_bytes())
        .collect();
    for (tag, value) in [
        (UTF8, code.as_bytes().to_vec()),
        (PRINTABLE, code.as_bytes().to_vec()),
        (IA5, code.as_bytes().to_vec()),
        (TELETEX, code.as_bytes().to_vec()),
        (BMP, utf16),
        (UNIVERSAL, utf32),
    ] {
        let der = p256_signed_with_subject(ca, name_raw(&[(OID_CN, tag, &value)]));
        let info =
            prove(ca, &live(&code), &der, NOW).unwrap_or_else(|e| panic!("tag {tag:#04x}: {e}"));
        assert_eq!(info.common_names, vec![code.clone()]);
    }
}

/// A CN that is not text is refused whatever the count: beside a text CN equal to the code it
/// still fails (counting only the text CNs would have admitted it), and before the count.
#[test]
fn a_cn_that_is_not_text_is_refused_before_the_cn_count() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    for subject in [
        name_raw(&[
            (OID_CN, UTF8, code.as_bytes()),
            (OID_CN, OCTET_STRING, &hex_bytes(&code)),
        ]),
        name_raw(&[
            (OID_CN, OCTET_STRING, &hex_bytes(&code)),
            (OID_CN, UTF8, code.as_bytes()),
        ]),
    ] {
        let der = p256_signed_with_subject(ca, subject);
        let e = refused(prove(ca, &live(&code), &der, NOW), "ProofCommonNameNotText");
        assert!(e.to_string().contains("an OCTET STRING"), "{e}");
    }
}

/// RFC 5280 4.1.1.2: the signatureAlgorithm outside the signed part must equal the one inside
/// it. A certificate whose signed part names one algorithm and whose outer field names another
/// (or the same OID with other parameters) is refused, however its signature verifies.
#[test]
fn refuses_an_outer_signature_algorithm_that_differs_from_the_signed_one() {
    let ca = shared_root(KeyKind::EcP256);
    let pkcs8 = ca.key().serialize_der();
    let code = new_code();
    let base = ca.verification(&code);
    for (inner, outer, shown) in [
        (ALG_ECDSA_SHA384, ALG_ECDSA_SHA256, "ecdsa-with-SHA384"),
        (ALG_ECDSA_SHA256_NULL, ALG_ECDSA_SHA256, "with parameters"),
        (ALG_ECDSA_SHA256, ALG_ECDSA_SHA384, "ecdsa-with-SHA384"),
    ] {
        let der = rebuild_with_algorithms(&base, inner, outer, |_| {}, p256_signer(&pkcs8));
        let e = refused(
            prove(ca, &live(&code), &der, NOW),
            "CertificateSignatureAlgorithmMismatch",
        );
        let text = e.to_string();
        assert!(
            text.contains("RFC 5280") && text.contains(shown),
            "{shown}: {text}"
        );
    }
    // The same certificate with the two fields equal proves.
    let same = rebuild(&base, ALG_ECDSA_SHA256, |_| {}, p256_signer(&pkcs8));
    prove(ca, &live(&code), &same, NOW).expect("equal algorithm fields");
}

/// The algorithm fields are compared after the issuer and before SHA-1, the signature, the CN and
/// the validity.
#[test]
fn the_algorithm_fields_are_compared_after_the_issuer_and_before_the_rest() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let other = shared_intermediate();
    let from_other = rebuild_with_algorithms(
        &other.verification(&code),
        ALG_ECDSA_SHA384,
        ALG_ECDSA_SHA256,
        |_| {},
        p256_signer(&other.key().serialize_der()),
    );
    refused(
        prove(ca, &live(&code), &from_other, NOW),
        "ProofIssuerMismatch",
    );
    // Signed by another key, SHA-1 outside, a wrong CN, expired: the mismatch decides.
    let impostor = impostor_root(KeyKind::EcP256);
    let messy = rebuild_with_algorithms(
        &impostor.verification_valid("nope", NOW - 2 * DAY, NOW - DAY),
        ALG_ECDSA_SHA256,
        ALG_ECDSA_SHA1,
        |_| {},
        p256_signer(&impostor.key().serialize_der()),
    );
    refused(
        prove(ca, &live(&code), &messy, NOW),
        "CertificateSignatureAlgorithmMismatch",
    );
}

/// No part of the live code is shown when a CN does not match: not a prefix, and not a CN that
/// holds part of it (a near miss would otherwise copy the code into the audit log).
#[test]
fn a_cn_mismatch_shows_no_part_of_the_live_code() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let windows: Vec<String> = (0..=code.len() - 8)
        .map(|i| code[i..i + 8].to_string())
        .collect();
    for cn in [
        new_code(),
        "device-1".to_string(),
        code[..47].to_string(),
        code[1..].to_string(),
        format!("{code} "),
        format!(" {}", code.to_ascii_lowercase()),
        format!("x{}", &code[20..30]),
    ] {
        let e = refused(
            prove(ca, &live(&code), &ca.verification(&cn), NOW),
            "ProofCommonNameMismatch",
        );
        let text = e.to_string();
        assert!(
            text.contains("does not equal the current verification code"),
            "{cn}: {text}"
        );
        let upper = text.to_ascii_uppercase();
        for w in &windows {
            assert!(!upper.contains(w.as_str()), "{cn}: {text} shows {w}");
        }
        assert!(!format!("{e:?}").to_ascii_uppercase().contains(&code[..8]));
    }
    // A CN that shares nothing with the code is shown, so the operator sees what they sent.
    let e = refused(
        prove(ca, &live(&code), &ca.verification("device-1"), NOW),
        "ProofCommonNameMismatch",
    );
    assert!(e.to_string().contains("CN is 'device-1'"), "{e}");
}
