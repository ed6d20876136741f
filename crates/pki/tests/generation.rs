//! Generation (`gen`): keys, CAs, leaves and verification certificates, checked by reading what
//! was generated back with x509-parser and by running it through `verify_proof`.

mod common;

use common::*;
use iothub_pki::gen::{
    self, generate_key, make_ca, make_leaf, make_verification_cert, parse_private_key_pem,
    CaIssuer, GenError, KeyKind,
};
use iothub_pki::input::der_to_pem;
use iothub_pki::pop::{verify_proof, ProofError};
use iothub_pki::{CertInfo, KeyAlgorithm};
use rcgen::string::PrintableString;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa};
use rcgen::{KeyUsagePurpose, PublicKeyData};
use std::net::IpAddr;
use time::Duration;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn x509(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der)
        .expect("x509-parser reads it")
        .1
}

/// Whether `child` carries a valid signature by the key of `parent`.
fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    x509(child)
        .verify_signature(Some(x509(parent).public_key()))
        .is_ok()
}

fn spki_of_cert(der: &[u8]) -> Vec<u8> {
    x509(der).public_key().raw.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Keys.

#[test]
fn keys_of_every_kind_and_refused_rsa_sizes() {
    assert_eq!(
        generate_key(KeyKind::EcP256).unwrap().algorithm(),
        &rcgen::PKCS_ECDSA_P256_SHA256
    );
    assert_eq!(
        generate_key(KeyKind::EcP384).unwrap().algorithm(),
        &rcgen::PKCS_ECDSA_P384_SHA384
    );
    assert_eq!(
        generate_key(KeyKind::Ed25519).unwrap().algorithm(),
        &rcgen::PKCS_ED25519
    );
    for bits in [0, 1024, 2047, 2049, 8192] {
        let e = generate_key(KeyKind::Rsa(bits)).unwrap_err();
        assert!(matches!(e, GenError::RsaSize(b) if b == bits), "{e:?}");
        assert!(
            e.to_string().contains(&format!("{bits} was asked for")),
            "{e}"
        );
    }
}

#[test]
fn pkcs8_keys_round_trip() {
    for kind in KINDS {
        let ca = shared_root(kind);
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = parse_private_key_pem(&ca.key_pem)
            .unwrap_or_else(|e| panic!("{}: {e}", kind_name(kind)));
        assert_eq!(key.serialize_pem(), ca.key_pem, "{}", kind_name(kind));
        assert_eq!(key.subject_public_key_info(), spki_of_cert(&ca.der));
        // CRLF line ends are fine too.
        let crlf = ca.key_pem.replace('\n', "\r\n");
        assert_eq!(
            parse_private_key_pem(&crlf).unwrap().serialize_der(),
            key.serialize_der()
        );
    }
}

#[test]
fn pkcs1_rsa_and_sec1_ec_keys_are_read() {
    // PKCS#8 wraps the PKCS#1 RSAPrivateKey / SEC1 ECPrivateKey in an OCTET STRING.
    let inner = |pkcs8: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let items = tlv_items(content(pkcs8));
        let alg_items = tlv_items(content(items[1]));
        let params = alg_items.get(1).map(|p| p.to_vec()).unwrap_or_default();
        (content(items[2]).to_vec(), params)
    };
    let rsa = shared_root(KeyKind::Rsa(2048));
    let (pkcs1, _) = inner(&rsa.key().serialize_der());
    let pem = pem_block("RSA PRIVATE KEY", &pkcs1, "\n");
    let key = parse_private_key_pem(&pem).expect("PKCS#1 RSA key");
    assert_eq!(key.subject_public_key_info(), spki_of_cert(&rsa.der));

    for kind in [KeyKind::EcP256, KeyKind::EcP384] {
        let ca = shared_root(kind);
        let (sec1, curve) = inner(&ca.key().serialize_der());
        // As OpenSSL writes it: the named curve as [0] parameters.
        let mut fields: Vec<Vec<u8>> = tlv_items(content(&sec1))
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        if !fields.iter().any(|f| f[0] == 0xa0) {
            fields.insert(2, tlv(0xa0, &curve));
        }
        let pem = pem_block("EC PRIVATE KEY", &seq(&fields), "\n");
        let key = parse_private_key_pem(&pem).expect("SEC1 EC key");
        assert_eq!(key.subject_public_key_info(), spki_of_cert(&ca.der));
    }
}

#[test]
fn unreadable_keys_are_refused() {
    let cert_pem = shared_root(KeyKind::EcP256).pem();
    for bad in ["", "not a key", cert_pem.as_str()] {
        let e = parse_private_key_pem(bad).expect_err("refused");
        assert!(matches!(e, GenError::BadKey(_)), "{e:?}");
        assert!(e.to_string().contains("cannot be read"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// CAs.

#[test]
fn make_ca_root() {
    for kind in KINDS {
        let ca = shared_root(kind);
        assert_eq!(
            all_ders(&ca.chain_pem).len(),
            1,
            "a root's PEM holds itself only"
        );
        assert_eq!(ca.chain_pem, der_to_pem(&ca.der));
        let i = &ca.info;
        assert_eq!(i.subject, "CN=root");
        assert!(i.is_self_issued());
        assert!(signed_by(&ca.der, &ca.der), "{}", kind_name(kind));
        assert_eq!(i.ca, Some(None));
        assert_eq!(
            (i.not_before, i.not_after),
            (NOW - 30 * DAY, NOW + 365 * DAY)
        );
        let ku = *x509(&ca.der).key_usage().unwrap().expect("keyUsage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let key = parse_private_key_pem(&ca.key_pem).unwrap();
        assert_eq!(key.subject_public_key_info(), spki_of_cert(&ca.der));
    }
}

#[test]
fn make_ca_intermediate_is_written_with_its_parent() {
    let root = shared_root(KeyKind::EcP256);
    let int = shared_intermediate();
    let ders = all_ders(&int.chain_pem);
    assert_eq!(ders.len(), 2);
    assert_eq!(ders[0], int.der);
    assert_eq!(ders[1], root.der);
    assert!(signed_by(&int.der, &root.der));
    assert!(!signed_by(&int.der, &impostor_root(KeyKind::EcP256).der));
    assert_eq!(int.info.ca, Some(Some(0)));
    assert_eq!(int.info.issuer_raw, root.info.subject_raw);
    assert_eq!(int.info.authority_key_id, root.info.subject_key_id);
    assert_eq!(
        (int.info.not_before, int.info.not_after),
        (NOW - 10 * DAY, NOW + 200 * DAY)
    );
}

#[test]
fn ca_issuer_refuses_a_key_that_is_not_the_cas() {
    let ca = shared_root(KeyKind::EcP256);
    for other in [
        impostor_root(KeyKind::EcP256),
        shared_root(KeyKind::EcP384),
        shared_root(KeyKind::Ed25519),
    ] {
        let e = CaIssuer::from_pem(&ca.chain_pem, &other.key_pem)
            .err()
            .expect("refused");
        assert!(matches!(e, GenError::KeyMismatch), "{e:?}");
    }
    // The intermediate's chain PEM with the root's key: the first certificate is the CA.
    let int = shared_intermediate();
    let e = CaIssuer::from_pem(&int.chain_pem, &ca.key_pem)
        .err()
        .expect("refused");
    assert!(matches!(e, GenError::KeyMismatch), "{e:?}");
}

#[test]
fn ca_issuer_refuses_unreadable_input() {
    let ca = shared_root(KeyKind::EcP256);
    let e = CaIssuer::from_pem(&ca.chain_pem, "garbage").err().unwrap();
    assert!(matches!(e, GenError::BadKey(_)), "{e:?}");
    for cert in ["", "garbage", ca.key_pem.as_str()] {
        let e = CaIssuer::from_pem(cert, &ca.key_pem).err().unwrap();
        assert!(matches!(e, GenError::BadIssuer(_)), "{cert:?}: {e:?}");
    }
    let not_der = pem_block("CERTIFICATE", b"hello", "\n");
    let e = CaIssuer::from_pem(&not_der, &ca.key_pem).err().unwrap();
    assert!(matches!(e, GenError::BadIssuer(_)), "{e:?}");
}

#[test]
fn ca_issuer_keeps_the_chain() {
    let root = shared_root(KeyKind::EcP256);
    let int = shared_intermediate();
    assert_eq!(root.issuer.cert_pem(), der_to_pem(&root.der));
    assert_eq!(
        all_ders(int.issuer.cert_pem()),
        vec![int.der.clone(), root.der.clone()]
    );
    // CRLF input is normalised.
    let crlf = int.chain_pem.replace('\n', "\r\n");
    let issuer = CaIssuer::from_pem(&crlf, &int.key_pem).unwrap();
    assert_eq!(issuer.cert_pem(), int.issuer.cert_pem());
}

// ---------------------------------------------------------------------------------------------
// Leaves.

#[test]
fn make_leaf_for_a_client() {
    let int = shared_intermediate();
    let g = make_leaf(
        "device-1",
        KeyKind::Ed25519,
        &int.issuer,
        &[],
        t(NOW),
        t(NOW + DAY),
    )
    .unwrap();
    let ders = all_ders(&g.cert_pem);
    assert_eq!(ders.len(), 3, "leaf, intermediate, root");
    assert_eq!(ders[1..], all_ders(int.issuer.cert_pem())[..]);
    let leaf = &ders[0];
    assert!(signed_by(leaf, &int.der));
    let i = CertInfo::from_der(leaf).unwrap();
    assert_eq!(i.subject, "CN=device-1");
    assert_eq!(i.key, KeyAlgorithm::Ed25519);
    assert_eq!(i.ca, None);
    assert_eq!((i.not_before, i.not_after), (NOW, NOW + DAY));
    let c = x509(leaf);
    assert!(c.subject_alternative_name().unwrap().is_none());
    let eku = c.extended_key_usage().unwrap().expect("EKU").value.clone();
    assert!(eku.client_auth && !eku.server_auth);
    let bc = c
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    let key = parse_private_key_pem(&g.key_pem).unwrap();
    assert_eq!(key.subject_public_key_info(), spki_of_cert(leaf));
}

#[test]
fn make_leaf_for_a_server_puts_the_names_in_the_san() {
    let root = shared_root(KeyKind::EcP384);
    let names: Vec<String> = ["localhost", "127.0.0.1", "::1", "hub.example.com"]
        .map(String::from)
        .to_vec();
    let g = make_leaf(
        "hub",
        KeyKind::EcP256,
        &root.issuer,
        &names,
        t(NOW),
        t(NOW + DAY),
    )
    .unwrap();
    let ders = all_ders(&g.cert_pem);
    assert_eq!(ders.len(), 2);
    let c = x509(&ders[0]);
    let san = c
        .subject_alternative_name()
        .unwrap()
        .expect("SAN")
        .value
        .clone();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
            }),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns, ["localhost", "hub.example.com"]);
    assert_eq!(
        ips,
        [
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    let eku = c.extended_key_usage().unwrap().expect("EKU").value.clone();
    assert!(eku.server_auth);
    assert!(signed_by(&ders[0], &root.der));
}

#[test]
fn make_leaf_refuses_a_name_that_is_not_ascii() {
    let root = shared_root(KeyKind::EcP256);
    let e = make_leaf(
        "hub",
        KeyKind::EcP256,
        &root.issuer,
        &["hüb.example".to_string()],
        t(NOW),
        t(NOW + DAY),
    )
    .expect_err("refused");
    assert!(matches!(e, GenError::Rcgen(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Verification certificates.

#[test]
fn make_verification_cert_passes_verify_proof_for_every_ca() {
    let mut cas: Vec<&Ca> = KINDS.iter().map(|k| shared_root(*k)).collect();
    cas.push(shared_intermediate());
    for ca in cas {
        let code = new_code();
        let g = make_verification_cert(&code, &ca.issuer, t(NOW), Duration::hours(1)).unwrap();
        assert_eq!(all_ders(&g.cert_pem).len(), 1, "only the leaf");
        let i = verify_proof(
            "ca",
            &ca.info,
            &live(&code),
            g.cert_pem.as_bytes(),
            MAX,
            NOW,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", ca.info.key));
        assert_eq!(i.common_names, vec![code.clone()]);
        assert_eq!(i.key, KeyAlgorithm::EcP256);
        assert_eq!(i.ca, None);
        assert_eq!((i.not_before, i.not_after), (NOW - 300, NOW + 3600));
        let c = x509(&i.der);
        let eku = c.extended_key_usage().unwrap().expect("EKU").value.clone();
        assert!(eku.client_auth);
        let key = parse_private_key_pem(&g.key_pem).unwrap();
        assert_eq!(key.subject_public_key_info(), spki_of_cert(&i.der));
    }
}

#[test]
fn verification_cert_validity_is_five_minutes_back_to_the_lifetime() {
    let ca = shared_root(KeyKind::EcP256);
    let code = new_code();
    let g = make_verification_cert(&code, &ca.issuer, t(NOW), Duration::minutes(30)).unwrap();
    let state = |_| iothub_pki::pop::CodeState::Live {
        code: code.clone(),
        expires_at: NOW + DAY,
    };
    let at = |now: i64| verify_proof("ca", &ca.info, &state(()), g.cert_pem.as_bytes(), MAX, now);
    at(NOW - 300).expect("five minutes before now");
    at(NOW + 1800).expect("at the end of the lifetime");
    for now in [NOW - 301, NOW + 1801] {
        assert!(
            matches!(at(now), Err(ProofError::OutsideValidity { .. })),
            "{now}"
        );
    }
}

#[test]
fn verification_cert_for_a_ca_with_a_multi_attribute_name() {
    // C as PrintableString, O and CN as UTF8String: the issuer name must be reproduced byte for
    // byte from the CA certificate.
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString(PrintableString::try_from("US").unwrap()),
    );
    dn.push(DnType::OrganizationName, "Contoso");
    dn.push(DnType::OrganizationalUnitName, "IoT");
    dn.push(DnType::CommonName, "Contoso Root");
    let key = p256_key();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = t(NOW - DAY);
    p.not_after = t(NOW + DAY);
    let der = p.self_signed(&key).unwrap().der().to_vec();
    let ca_info = CertInfo::from_der(&der).unwrap();
    assert_eq!(ca_info.subject, "CN=Contoso Root,OU=IoT,O=Contoso,C=US");
    let issuer = CaIssuer::from_pem(&der_to_pem(&der), &key.serialize_pem()).unwrap();
    let code = new_code();
    let g = make_verification_cert(&code, &issuer, t(NOW), Duration::hours(1)).unwrap();
    verify_proof(
        "ca",
        &ca_info,
        &live(&code),
        g.cert_pem.as_bytes(),
        MAX,
        NOW,
    )
    .expect("proof for a multi-attribute CA name");
}

#[test]
fn ca_issuer_refuses_a_ca_whose_name_it_cannot_reproduce() {
    // A multi-valued RDN (CN=a+OU=b): rather than sign with a different issuer name, refuse.
    let subject = name(&[
        &[(OID_O, UTF8, "Contoso")],
        &[(OID_CN, UTF8, "a"), (OID_OU, UTF8, "b")],
    ]);
    let (der, key_pem) = p256_ca_with_subject(&subject);
    let e = CaIssuer::from_pem(&der_to_pem(&der), &key_pem)
        .err()
        .expect("refused");
    assert!(matches!(e, GenError::BadIssuer(_)), "{e:?}");
}

/// A CA named `CN=Issuing CA,DC=example,DC=com` (two DC attributes, as Active Directory
/// Certificate Services names its CAs), self-signed, EC P-256.
fn two_dc_ca() -> (Vec<u8>, String) {
    let subject = name(&[
        &[(OID_DC, IA5, "com")],
        &[(OID_DC, IA5, "example")],
        &[(OID_CN, UTF8, "Issuing CA")],
    ]);
    p256_ca_with_subject(&subject)
}

#[test]
fn verify_proof_itself_handles_a_ca_with_repeated_attributes() {
    // The pure rule is fine: a verification certificate whose issuer is the CA's exact name,
    // signed by the CA key, proves. (Built by hand, since gen cannot; see the finding below.)
    let (ca_der, key_pem) = two_dc_ca();
    let ca_info = CertInfo::from_der(&ca_der).unwrap();
    assert_eq!(ca_info.subject, "CN=Issuing CA,DC=example,DC=com");
    let code = new_code();
    let ca_key = parse_private_key_pem(&key_pem).unwrap().serialize_der();
    let base = shared_root(KeyKind::EcP256).verification(&code);
    let der = rebuild(
        &base,
        ALG_ECDSA_SHA256,
        |items| items[TBS_ISSUER] = ca_info.subject_raw.clone(),
        p256_signer(&ca_key),
    );
    verify_proof(
        "ca",
        &ca_info,
        &live(&code),
        pem_text(&der, "\n").as_bytes(),
        MAX,
        NOW,
    )
    .expect("hand-made proof");
}

#[test]
fn a_ca_with_repeated_attributes_is_refused_by_the_signer_instead_of_misnamed() {
    // rcgen keeps one value per attribute type, so it cannot name this CA (DC=example,DC=com)
    // exactly; signing anyway would produce certificates verify_proof refuses. The signer says so.
    let (ca_der, key_pem) = two_dc_ca();
    match CaIssuer::from_pem(&der_to_pem(&ca_der), &key_pem) {
        Err(iothub_pki::gen::GenError::BadIssuer(msg)) => {
            assert!(msg.contains("cannot be reproduced exactly"), "{msg}");
            assert!(msg.contains("openssl"), "{msg}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a CA whose name the signer cannot reproduce was accepted"),
    }
    // verify_proof itself handles such a CA (a proof made by hand passes; see the test above).
    let ca_info = CertInfo::from_der(&ca_der).unwrap();
    assert_eq!(ca_info.subject.matches("DC=").count(), 2);
}

#[test]
fn gen_module_is_reachable_through_the_crate_path() {
    // Guards the public surface the CLI uses.
    let g: gen::Generated =
        make_ca("x", KeyKind::EcP256, None, t(NOW), t(NOW + DAY)).expect("make_ca");
    assert!(g.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(g.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
}
