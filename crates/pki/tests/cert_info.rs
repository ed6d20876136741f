//! CertInfo: the facts read from a certificate (names, thumbprints, validity, constraints, key,
//! key identifiers), and `check_ca_upload`, on real generated certificates.

mod common;

use aws_lc_rs::digest;
use common::*;
use iothub_pki::gen::{self, KeyKind};
use iothub_pki::input::InputError;
use iothub_pki::pop::{check_ca_upload, UploadError};
use iothub_pki::{parse_certificate_input, CertInfo, KeyAlgorithm};
use rcgen::string::{BmpString, Ia5String, PrintableString};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa};

fn info(der: &[u8]) -> CertInfo {
    CertInfo::from_der(der).expect("certificate facts")
}

/// A self-signed certificate (EC P-256) with subject `dn`, valid NOW-DAY .. NOW+DAY.
fn self_signed(dn: DistinguishedName, is_ca: IsCa) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = is_ca;
    p.not_before = t(NOW - DAY);
    p.not_after = t(NOW + DAY);
    p.self_signed(&p256_key()).unwrap().der().to_vec()
}

fn ca_with_dn(dn: DistinguishedName) -> CertInfo {
    info(&self_signed(dn, IsCa::Ca(BasicConstraints::Unconstrained)))
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// A leaf under the shared intermediate, made by `gen::make_leaf`.
fn leaf() -> CertInfo {
    let g = gen::make_leaf(
        "device-1",
        KeyKind::EcP256,
        &shared_intermediate().issuer,
        &[],
        t(NOW - DAY),
        t(NOW + DAY),
    )
    .unwrap();
    info(&first_der(&g.cert_pem))
}

// ---------------------------------------------------------------------------------------------
// Thumbprints.

#[test]
fn the_independent_sha1_matches_known_vectors() {
    assert_eq!(
        upper_hex(&sha1(b"")),
        "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709"
    );
    assert_eq!(
        upper_hex(&sha1(b"abc")),
        "A9993E364706816ABA3E25717850C26C9CD0D89D"
    );
    assert_eq!(
        upper_hex(&sha1(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "84983E441C3BD26EBAAE4AA1F95129E5E54670F1"
    );
}

#[test]
fn thumbprint_sha1_is_40_uppercase_hex_of_the_der() {
    let mut ders: Vec<Vec<u8>> = KINDS.iter().map(|k| shared_root(*k).der.clone()).collect();
    ders.push(shared_intermediate().der.clone());
    ders.push(leaf().der);
    for der in &ders {
        let i = info(der);
        assert_eq!(i.thumbprint_sha1, upper_hex(&sha1(der)));
        assert_eq!(i.thumbprint_sha1.len(), 40);
        assert!(is_upper_hex(&i.thumbprint_sha1), "{}", i.thumbprint_sha1);
    }
    let mut all: Vec<&str> = Vec::new();
    let infos: Vec<CertInfo> = ders.iter().map(|d| info(d)).collect();
    for i in &infos {
        all.push(&i.thumbprint_sha1);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), ders.len(), "thumbprints are distinct");
}

#[test]
fn thumbprint_sha256_is_64_uppercase_hex_of_the_der() {
    for kind in KINDS {
        let ca = shared_root(kind);
        let expected = upper_hex(digest::digest(&digest::SHA256, &ca.der).as_ref());
        assert_eq!(ca.info.thumbprint_sha256, expected);
        assert_eq!(ca.info.thumbprint_sha256.len(), 64);
        assert!(is_upper_hex(&ca.info.thumbprint_sha256));
    }
}

// ---------------------------------------------------------------------------------------------
// Names.

#[test]
fn subject_and_issuer_are_rfc4514_last_rdn_first() {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString(PrintableString::try_from("US").unwrap()),
    );
    dn.push(DnType::OrganizationName, "Contoso");
    dn.push(DnType::CommonName, "Contoso Root");
    let i = ca_with_dn(dn);
    assert_eq!(i.subject, "CN=Contoso Root,O=Contoso,C=US");
    assert_eq!(i.issuer, "CN=Contoso Root,O=Contoso,C=US");
    assert_eq!(i.common_names, vec!["Contoso Root"]);
    assert!(i.is_self_issued());
    assert_eq!(i.subject_raw, i.issuer_raw);
}

#[test]
fn every_common_attribute_has_its_short_name() {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::StateOrProvinceName, "WA");
    dn.push(DnType::LocalityName, "Redmond");
    dn.push(DnType::OrganizationName, "Contoso");
    dn.push(DnType::OrganizationalUnitName, "Devices");
    dn.push(DnType::CommonName, "x");
    dn.push(
        DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]),
        DnValue::Ia5String(Ia5String::try_from("ops@example.com").unwrap()),
    );
    dn.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]),
        DnValue::Ia5String(Ia5String::try_from("example").unwrap()),
    );
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-1");
    assert_eq!(
        ca_with_dn(dn).subject,
        "serialNumber=SN-1,DC=example,emailAddress=ops@example.com,CN=x,OU=Devices,O=Contoso,\
         L=Redmond,ST=WA,C=US"
    );
}

#[test]
fn special_characters_are_escaped() {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, " lead and trail ");
    dn.push(DnType::OrganizationalUnitName, "#tag");
    dn.push(DnType::CommonName, "Smith, John+Jr <\"x\";\\>");
    let i = ca_with_dn(dn);
    assert_eq!(
        i.subject,
        "CN=Smith\\, John\\+Jr \\<\\\"x\\\"\\;\\\\\\>,OU=\\#tag,O=\\ lead and trail\\ "
    );
    // The CN itself is kept as written.
    assert_eq!(i.common_names, vec!["Smith, John+Jr <\"x\";\\>"]);
}

#[test]
fn unknown_attributes_and_other_string_types() {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 97]), "abc"); // organizationIdentifier
    dn.push(
        DnType::CommonName,
        DnValue::BmpString(BmpString::try_from("Zürich").unwrap()),
    );
    let i = ca_with_dn(dn);
    assert_eq!(i.subject, "CN=Zürich,2.5.4.97=#0c03616263");
}

#[test]
fn a_bmp_string_cn_is_decoded_like_the_subject() {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        DnValue::BmpString(BmpString::try_from("Zürich").unwrap()),
    );
    let i = ca_with_dn(dn);
    assert_eq!(i.subject, "CN=Zürich");
    assert_eq!(i.common_names, vec!["Zürich".to_string()]);
}

#[test]
fn multi_valued_rdns_and_repeated_attributes() {
    let subject = name(&[
        &[(OID_DC, IA5, "com")],
        &[(OID_DC, IA5, "example")],
        &[(OID_O, PRINTABLE, "Contoso")],
        &[(OID_CN, UTF8, "a"), (OID_OU, UTF8, "b")],
    ]);
    let (der, _) = p256_ca_with_subject(&subject);
    let i = info(&der);
    assert_eq!(i.subject, "CN=a+OU=b,O=Contoso,DC=example,DC=com");
    assert_eq!(i.subject_raw, subject, "subject_raw is the Name's DER");
    assert_eq!(i.issuer_raw, subject);
    assert_eq!(i.common_names, vec!["a"]);
}

#[test]
fn issuer_of_a_leaf_is_its_ca_subject() {
    let l = leaf();
    let ca = &shared_intermediate().info;
    assert_eq!(l.subject, "CN=device-1");
    assert_eq!(l.issuer, "CN=intermediate");
    assert_eq!(l.issuer_raw, ca.subject_raw);
    assert!(!l.is_self_issued());
    assert!(!ca.is_self_issued());
    assert!(shared_root(KeyKind::EcP256).info.is_self_issued());
}

// ---------------------------------------------------------------------------------------------
// Validity, version, serial.

#[test]
fn validity_version_and_serial() {
    let ca = shared_root(KeyKind::EcP256);
    assert_eq!(ca.info.not_before, NOW - 30 * DAY);
    assert_eq!(ca.info.not_after, NOW + 365 * DAY);
    assert_eq!(ca.info.version, 3);
    assert!(ca.info.is_valid_at(NOW - 30 * DAY));
    assert!(ca.info.is_valid_at(NOW + 365 * DAY));
    assert!(!ca.info.is_valid_at(NOW - 30 * DAY - 1));
    assert!(!ca.info.is_valid_at(NOW + 365 * DAY + 1));
    // make_ca: 16 random bytes, positive, no leading zero byte.
    assert_eq!(ca.info.serial.len(), 32, "{}", ca.info.serial);
    assert!(is_upper_hex(&ca.info.serial));
    assert_ne!(ca.info.serial, impostor_root(KeyKind::EcP256).info.serial);
    let mut p = CertificateParams::default();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02, 0xab]));
    p.not_before = t(NOW);
    p.not_after = t(NOW + 1);
    let der = p.self_signed(&p256_key()).unwrap().der().to_vec();
    assert_eq!(info(&der).serial, "0102AB");
    // Dates after 2049 are GeneralizedTime.
    p.not_after = t(2_600_000_000);
    let der = p.self_signed(&p256_key()).unwrap().der().to_vec();
    assert_eq!(info(&der).not_after, 2_600_000_000);
}

#[test]
fn a_v1_certificate_is_read_and_is_not_a_ca() {
    let base = leaf_params(dn_cn("old"), NOW - DAY, NOW + DAY);
    let key = p256_key();
    let der = base.self_signed(&key).unwrap().der().to_vec();
    let pkcs8 = key.serialize_der();
    // Drop the explicit version (v1 is the default) and the extensions, then sign again.
    let v1 = rebuild(
        &der,
        ALG_ECDSA_SHA256,
        |items| {
            items.pop();
            items.remove(0);
        },
        p256_signer(&pkcs8),
    );
    let i = info(&v1);
    assert_eq!(i.version, 1);
    assert_eq!(i.ca, None);
    assert_eq!(i.subject_key_id, None);
    assert_eq!(
        check_ca_upload(&i, NOW),
        Err(UploadError::NotCa {
            subject: "CN=old".into(),
            found: "an X.509 v1 certificate, which has no extensions".into()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// basicConstraints, key identifiers.

#[test]
fn basic_constraints() {
    assert_eq!(shared_root(KeyKind::EcP256).info.ca, Some(None));
    assert_eq!(shared_intermediate().info.ca, Some(Some(0)));
    assert_eq!(leaf().ca, None);
    let constrained = self_signed(dn_cn("c"), IsCa::Ca(BasicConstraints::Constrained(3)));
    assert_eq!(info(&constrained).ca, Some(Some(3)));
    let explicit_no = self_signed(dn_cn("e"), IsCa::ExplicitNoCa);
    assert_eq!(info(&explicit_no).ca, None);
    let absent = self_signed(dn_cn("n"), IsCa::NoCa);
    assert_eq!(info(&absent).ca, None);
}

#[test]
fn subject_and_authority_key_identifiers() {
    let root = &shared_root(KeyKind::EcP256).info;
    let int = &shared_intermediate().info;
    let l = leaf();
    let root_ski = root.subject_key_id.clone().expect("root SKI");
    let int_ski = int.subject_key_id.clone().expect("intermediate SKI");
    assert_eq!(
        root.authority_key_id, None,
        "make_ca writes no AKI on a root"
    );
    assert_eq!(int.authority_key_id.as_deref(), Some(root_ski.as_str()));
    assert!(l.subject_key_id.is_some(), "leaf SKI");
    assert_eq!(l.authority_key_id.as_deref(), Some(int_ski.as_str()));
    for id in [&root_ski, &int_ski, l.subject_key_id.as_ref().unwrap()] {
        assert_eq!(id.len(), 40, "{id}");
        assert!(is_upper_hex(id), "{id}");
    }
    assert_ne!(root_ski, int_ski);
}

// ---------------------------------------------------------------------------------------------
// Keys.

fn p521_ca() -> CertInfo {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn_cn("p521");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = t(NOW - DAY);
    p.not_after = t(NOW + DAY);
    info(p.self_signed(&key).unwrap().der())
}

#[test]
fn key_algorithms_are_detected() {
    let expected = [
        (KeyKind::EcP256, KeyAlgorithm::EcP256, "ECDSA P-256"),
        (KeyKind::EcP384, KeyAlgorithm::EcP384, "ECDSA P-384"),
        (KeyKind::Ed25519, KeyAlgorithm::Ed25519, "Ed25519"),
        (
            KeyKind::Rsa(2048),
            KeyAlgorithm::Rsa { bits: 2048 },
            "RSA 2048",
        ),
    ];
    for (kind, alg, shown) in expected {
        let key = &shared_root(kind).info.key;
        assert_eq!(key, &alg);
        assert_eq!(key.to_string(), shown);
        assert_eq!(key.check_supported(), Ok(()));
    }
    let p521 = p521_ca().key;
    assert_eq!(
        p521,
        KeyAlgorithm::Other {
            description: "EC curve 1.3.132.0.35".into()
        }
    );
    assert_eq!(p521.to_string(), "EC curve 1.3.132.0.35");
    let reason = p521.check_supported().unwrap_err();
    assert!(reason.contains("EC curve 1.3.132.0.35"), "{reason}");
}

#[test]
fn supported_rsa_sizes_are_2048_to_4096() {
    for bits in [2048, 3072, 4096, 2049, 4095] {
        assert_eq!(
            KeyAlgorithm::Rsa { bits }.check_supported(),
            Ok(()),
            "{bits}"
        );
    }
    for bits in [0, 512, 1024, 2047, 4097, 8192] {
        let reason = KeyAlgorithm::Rsa { bits }.check_supported().unwrap_err();
        assert!(reason.contains(&format!("{bits} bits")), "{reason}");
    }
    let other = KeyAlgorithm::Other {
        description: "algorithm 1.2.840.10040.4.1".into(),
    };
    assert!(other.check_supported().is_err());
}

// ---------------------------------------------------------------------------------------------
// Round trips and errors.

#[test]
fn pem_round_trips_and_garbage_is_refused() {
    for kind in KINDS {
        let i = &shared_root(kind).info;
        assert_eq!(
            parse_certificate_input(i.pem().as_bytes(), MAX).unwrap(),
            i.der
        );
        assert_eq!(&info(&i.der), i);
    }
    for garbage in [&b""[..], b"\x30\x03\x02\x01\x00", b"hello"] {
        assert!(matches!(
            CertInfo::from_der(garbage),
            Err(InputError::NotACertificate { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// check_ca_upload.

#[test]
fn upload_accepts_supported_cas() {
    for kind in KINDS {
        assert_eq!(check_ca_upload(&shared_root(kind).info, NOW), Ok(()));
    }
    assert_eq!(check_ca_upload(&shared_intermediate().info, NOW), Ok(()));
    let ca = &shared_root(KeyKind::EcP256).info;
    assert_eq!(
        check_ca_upload(ca, ca.not_after),
        Ok(()),
        "valid at notAfter"
    );
    // Not yet valid is not a refusal reason at upload.
    assert_eq!(check_ca_upload(ca, ca.not_before - DAY), Ok(()));
}

#[test]
fn upload_refuses_a_leaf() {
    let l = leaf();
    let e = check_ca_upload(&l, NOW).unwrap_err();
    assert_eq!(
        e,
        UploadError::NotCa {
            subject: "CN=device-1".into(),
            found: "no basicConstraints CA:TRUE".into()
        }
    );
    assert_eq!(e.kind(), "CertificateNotCa");
    assert!(e.to_string().contains("not a device certificate"), "{e}");
    let absent = info(&self_signed(dn_cn("n"), IsCa::NoCa));
    assert!(matches!(
        check_ca_upload(&absent, NOW),
        Err(UploadError::NotCa { .. })
    ));
}

#[test]
fn upload_refuses_an_expired_ca() {
    let g = gen::make_ca("old", KeyKind::EcP256, None, t(NOW - 2 * DAY), t(NOW - 1)).unwrap();
    let i = info(&first_der(&g.cert_pem));
    let e = check_ca_upload(&i, NOW).unwrap_err();
    assert_eq!(
        e,
        UploadError::Expired {
            subject: "CN=old".into(),
            not_after: rfc3339(NOW - 1)
        }
    );
    assert_eq!(e.kind(), "CertificateExpired");
    assert_eq!(check_ca_upload(&i, NOW - 1), Ok(()));
}

#[test]
fn upload_refuses_an_unsupported_key() {
    let i = p521_ca();
    let e = check_ca_upload(&i, NOW).unwrap_err();
    assert!(
        matches!(&e, UploadError::UnsupportedKey { subject, reason }
            if subject == "CN=p521" && reason.contains("EC curve 1.3.132.0.35")),
        "{e:?}"
    );
    assert_eq!(e.kind(), "CertificateKeyUnsupported");
    // A CA with an out-of-range RSA key (the facts edited: no generator makes RSA-1024).
    let mut small = shared_root(KeyKind::EcP256).info.clone();
    small.key = KeyAlgorithm::Rsa { bits: 1024 };
    assert!(matches!(
        check_ca_upload(&small, NOW),
        Err(UploadError::UnsupportedKey { .. })
    ));
}

#[test]
fn upload_checks_run_in_order() {
    // An expired leaf is "not a CA"; an expired CA with an unsupported key is "unsupported key".
    let mut expired_leaf = leaf();
    expired_leaf.not_after = NOW - DAY;
    assert_eq!(
        check_ca_upload(&expired_leaf, NOW).unwrap_err().kind(),
        "CertificateNotCa"
    );
    let mut expired_p521 = p521_ca();
    expired_p521.not_after = NOW - DAY;
    assert_eq!(
        check_ca_upload(&expired_p521, NOW).unwrap_err().kind(),
        "CertificateKeyUnsupported"
    );
}

// ---------------------------------------------------------------------------------------------
// Security review, issue 16, finding 7.

/// A CN whose value is not a text string is never read as text: it used to become the hex of its
/// bytes, so a CN holding the bytes DE AD read as the device id "DEAD".
#[test]
fn a_cn_that_is_not_a_text_string_is_never_read_as_text() {
    let ca = shared_root(KeyKind::EcP256);
    for tag in [OCTET_STRING, INTEGER] {
        let der = p256_signed_with_subject(ca, name_raw(&[(OID_CN, tag, &[0xde, 0xad])]));
        let i = info(&der);
        assert!(i.common_names.is_empty(), "{:?}", i.common_names);
        // The subject still shows it, in RFC 4514's #hex form.
        assert!(i.subject.starts_with("CN=#"), "{}", i.subject);
    }
}

/// RFC 5280 4.1.1.2: a CA whose outer signatureAlgorithm differs from the one in its signed part
/// is refused at upload, before any other check.
#[test]
fn upload_refuses_a_ca_whose_signature_algorithm_fields_differ() {
    let base = root("mismatch", KeyKind::EcP256);
    let pkcs8 = base.key().serialize_der();
    let der = rebuild_with_algorithms(
        &base.der,
        ALG_ECDSA_SHA384,
        ALG_ECDSA_SHA256,
        |_| {},
        p256_signer(&pkcs8),
    );
    let mut i = info(&der);
    let e = check_ca_upload(&i, NOW).expect_err("mismatched algorithm fields");
    assert_eq!(e.kind(), "CertificateSignatureAlgorithmMismatch");
    let text = e.to_string();
    assert!(
        text.contains("CN=mismatch")
            && text.contains("ecdsa-with-SHA256")
            && text.contains("ecdsa-with-SHA384")
            && text.contains("RFC 5280"),
        "{text}"
    );
    // Before "expired".
    i.not_after = NOW - DAY;
    assert_eq!(
        check_ca_upload(&i, NOW).unwrap_err().kind(),
        "CertificateSignatureAlgorithmMismatch"
    );
    // Equal fields (rebuilt the same way) are accepted.
    let same = rebuild(&base.der, ALG_ECDSA_SHA256, |_| {}, p256_signer(&pkcs8));
    assert_eq!(check_ca_upload(&info(&same), NOW), Ok(()));
}
