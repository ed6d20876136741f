//! Device chains at CONNECT (`validate_chain`) against certificates the generator never makes: a
//! leaf whose CN is not a text string, and certificates whose outer signatureAlgorithm differs
//! from the one they signed (security review, issue 16, finding 7).

mod common;

use common::*;
use iothub_pki::chain::{validate_chain, ChainError};
use iothub_pki::gen::KeyKind;
use iothub_pki::trust_index::{AnchorEntry, TrustIndex};

/// The trust index holding `ca` as a Verified CA named "root".
fn trusting(ca: &Ca) -> TrustIndex {
    TrustIndex::new([AnchorEntry {
        ca_name: "root".into(),
        der: ca.der.clone(),
        subject: ca.info.subject.clone(),
        verified: true,
        not_after: ca.info.not_after,
    }])
}

/// A device leaf whose CN is not a text string is refused with that reason, never read as the
/// hex of its bytes (a CN of bytes DE AD used to connect as device "DEAD").
#[test]
fn a_leaf_whose_cn_is_not_a_text_string_is_refused() {
    let ca = shared_root(KeyKind::EcP256);
    let index = trusting(ca);
    let control = p256_signed_with_subject(ca, name_raw(&[(OID_CN, UTF8, b"DEAD")]));
    let ok = validate_chain(&[control], &index, NOW).expect("a text CN");
    assert_eq!(ok.leaf.common_names, vec!["DEAD"]);
    for (tag, what) in [
        (OCTET_STRING, "an OCTET STRING"),
        (SEQUENCE, "a SEQUENCE"),
        (INTEGER, "an INTEGER"),
    ] {
        let value: &[u8] = if tag == SEQUENCE {
            &[0x0c, 0x02, 0xde, 0xad]
        } else {
            &[0xde, 0xad]
        };
        let leaf = p256_signed_with_subject(ca, name_raw(&[(OID_CN, tag, value)]));
        let e = validate_chain(&[leaf], &index, NOW).expect_err(what);
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "the leaf certificate's CN is {what}, not a text string"
            )),
            "{what}: {text}"
        );
        assert!(!text.contains("DEAD"), "{what}: {text}");
    }
}

/// webpki refuses a leaf or an intermediate whose outer signatureAlgorithm differs from the
/// signed one; the reason says so.
#[test]
fn a_chain_with_mismatched_signature_algorithm_fields_is_refused() {
    let ca = shared_root(KeyKind::EcP256);
    let index = trusting(ca);
    let pkcs8 = ca.key().serialize_der();
    let base = ca.verification("dev-1");
    let leaf = rebuild_with_algorithms(
        &base,
        ALG_ECDSA_SHA384,
        ALG_ECDSA_SHA256,
        |_| {},
        p256_signer(&pkcs8),
    );
    let e = validate_chain(&[leaf], &index, NOW).expect_err("mismatched leaf");
    assert!(
        e.to_string().contains("signature algorithm") && e.to_string().contains("RFC 5280"),
        "{e}"
    );
    let same = rebuild(&base, ALG_ECDSA_SHA256, |_| {}, p256_signer(&pkcs8));
    validate_chain(&[same], &index, NOW).expect("equal fields");

    // An intermediate with mismatched fields, under the trusted root.
    let inter = intermediate("mismatch-inter", KeyKind::EcP256, ca);
    let bad_inter = rebuild_with_algorithms(
        &inter.der,
        ALG_ECDSA_SHA384,
        ALG_ECDSA_SHA256,
        |_| {},
        p256_signer(&pkcs8),
    );
    let leaf = inter.verification("dev-2");
    let e = validate_chain(&[leaf.clone(), bad_inter], &index, NOW).expect_err("intermediate");
    assert!(
        matches!(&e, ChainError::Invalid { reason, .. } if reason.contains("signature algorithm") && reason.contains("RFC 5280")),
        "{e}"
    );
    let good_inter = rebuild(&inter.der, ALG_ECDSA_SHA256, |_| {}, p256_signer(&pkcs8));
    validate_chain(&[leaf, good_inter], &index, NOW).expect("equal fields");
}
