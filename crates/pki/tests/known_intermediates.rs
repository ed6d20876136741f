//! A fleet's intermediate remembered between chains (`KnownIntermediate`): a full validation of
//! `[leaf, intermediate]` teaches it, the next chain through it checks only its leaf's signature,
//! and in every case where that shortcut could differ from the full validation it is not taken:
//! a leaf the intermediate did not sign, an intermediate or CA out of its validity, another
//! chain shape, a CA with name constraints. Each verdict is compared with the full one.

mod common;

use common::*;
use iothub_pki::chain::{validate_chain, validate_chain_knowing, ChainError, KnownIntermediate};
use iothub_pki::chain_cache::ChainCache;
use iothub_pki::gen::KeyKind;
use iothub_pki::trust_index::{name_key, AnchorEntry, TrustIndex};
use rcgen::{
    BasicConstraints, CertificateParams, GeneralSubtree, IsCa, Issuer, KeyUsagePurpose,
    NameConstraints,
};
use std::collections::HashSet;

const MAX_LEN: usize = 8;

fn trusting(ca: &Ca) -> TrustIndex {
    trusting_der(&ca.der, ca.info.not_after)
}

fn trusting_der(der: &[u8], not_after: i64) -> TrustIndex {
    let info = iothub_pki::CertInfo::from_der(der).unwrap();
    TrustIndex::new([AnchorEntry {
        ca_name: "root".into(),
        der: der.to_vec(),
        subject: info.subject,
        verified: true,
        not_after,
    }])
}

/// What a full validation of `[leaf, intermediate]` teaches.
fn learn(index: &TrustIndex, leaf: &[u8], intermediate: &[u8]) -> KnownIntermediate {
    let v = validate_chain_knowing(
        &[leaf.to_vec(), intermediate.to_vec()],
        index,
        NOW,
        MAX_LEN,
        None,
    )
    .expect("the first chain validates in full");
    assert!(!v.used_known);
    v.learned
        .expect("[leaf, intermediate] teaches its intermediate")
}

#[test]
fn a_second_leaf_under_a_learned_intermediate_gets_the_full_verdict_from_its_own_signature() {
    let root = shared_root(KeyKind::EcP256);
    let inter = shared_intermediate();
    let index = trusting(root);
    let known = learn(&index, &inter.verification("dev-1"), &inter.der);
    assert_eq!(known.ca_name, "root");
    assert_eq!(known.info.der, inter.der);
    let chain = vec![inter.verification("dev-2"), inter.der.clone()];
    let fast = validate_chain_knowing(&chain, &index, NOW, MAX_LEN, Some(&known)).unwrap();
    assert!(fast.used_known, "one signature, not two");
    assert!(fast.learned.is_none());
    let full = validate_chain(&chain, &index, NOW).unwrap();
    assert_eq!(fast.ok, full, "the same verdict as the full way");
    assert_eq!(fast.ok.leaf.common_names, ["dev-2"]);
    // Only the exact intermediate counts: a leaf alone, or another shape, goes the full way.
    let alone = validate_chain_knowing(&chain[..1], &index, NOW, MAX_LEN, Some(&known));
    assert!(
        matches!(alone, Err(ChainError::UnknownIssuer { .. })),
        "{alone:?}"
    );
    let doubled = vec![chain[0].clone(), inter.der.clone(), inter.der.clone()];
    let v = validate_chain_knowing(&doubled, &index, NOW, MAX_LEN, Some(&known)).unwrap();
    assert!(!v.used_known && v.learned.is_none());
}

#[test]
fn a_leaf_the_intermediate_did_not_sign_is_refused_with_the_full_reason() {
    let root = shared_root(KeyKind::EcP256);
    let inter = shared_intermediate();
    let index = trusting(root);
    let known = learn(&index, &inter.verification("dev-1"), &inter.der);
    // Same issuer name as the intermediate, another key.
    let impostor = intermediate(
        "intermediate",
        KeyKind::EcP256,
        impostor_root(KeyKind::EcP256),
    );
    assert_eq!(impostor.info.subject_raw, inter.info.subject_raw);
    let chain = vec![impostor.verification("dev-x"), inter.der.clone()];
    let fast = validate_chain_knowing(&chain, &index, NOW, MAX_LEN, Some(&known)).unwrap_err();
    let full = validate_chain(&chain, &index, NOW).unwrap_err();
    assert_eq!(fast, full);
}

#[test]
fn outside_the_intermediates_or_the_cas_validity_memory_is_not_used() {
    let root = shared_root(KeyKind::EcP256);
    let inter = shared_intermediate();
    let index = trusting(root);
    let known = learn(&index, &inter.verification("dev-1"), &inter.der);
    // A leaf valid for years, so that only the intermediate or the CA has run out.
    let leaf = inter.verification_valid("dev-2", NOW - DAY, NOW + 900 * DAY);
    let chain = vec![leaf, inter.der.clone()];
    for now in [inter.info.not_after + 1, inter.info.not_before - 1] {
        let fast = validate_chain_knowing(&chain, &index, now, MAX_LEN, Some(&known));
        assert_eq!(
            fast.map(|v| v.ok),
            validate_chain(&chain, &index, now),
            "at {now}"
        );
    }
    // The CA expired (as the snapshot says): refused, as in full.
    let expiring = KnownIntermediate {
        ca_not_after: NOW - 1,
        ..known.clone()
    };
    let fast = validate_chain_knowing(&chain, &index, NOW, MAX_LEN, Some(&expiring)).unwrap();
    assert!(!fast.used_known, "a CA past its notAfter is asked again");
}

#[test]
fn a_ca_with_name_constraints_teaches_nothing() {
    let key = p256_key();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_cn("constrained root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = t(NOW - DAY);
    params.not_after = t(NOW + 100 * DAY);
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("devices.example".into())],
        excluded_subtrees: vec![],
    });
    let root_der = params.self_signed(&key).unwrap().der().to_vec();
    let root_issuer = Issuer::from_ca_cert_der(&root_der.clone().into(), key).unwrap();
    let inter_key = p256_key();
    let mut inter = CertificateParams::default();
    inter.distinguished_name = dn_cn("constrained intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    inter.not_before = t(NOW - DAY);
    inter.not_after = t(NOW + 50 * DAY);
    let inter_der = inter
        .signed_by(&inter_key, &root_issuer)
        .unwrap()
        .der()
        .to_vec();
    let inter_issuer = Issuer::from_ca_cert_der(&inter_der.clone().into(), inter_key).unwrap();
    let leaf = leaf_params(dn_cn("dev-1"), NOW - DAY, NOW + 10 * DAY)
        .signed_by(&p256_key(), &inter_issuer)
        .unwrap()
        .der()
        .to_vec();
    let index = trusting_der(&root_der, NOW + 100 * DAY);
    let v = validate_chain_knowing(&[leaf, inter_der], &index, NOW, MAX_LEN, None)
        .expect("the chain itself is within the constraints");
    assert!(
        v.learned.is_none(),
        "an anchor made of the intermediate would drop the CA's constraints"
    );
}

#[test]
fn a_trust_change_forgets_the_intermediates_it_can_affect_and_keeps_the_others() {
    let root = shared_root(KeyKind::EcP256);
    let inter = shared_intermediate();
    let index = trusting(root);
    let known = learn(&index, &inter.verification("dev-1"), &inter.der);
    let mut cache = ChainCache::new(10);
    cache.learn_intermediate(known.clone());
    assert_eq!(cache.known_intermediates(), 1);
    assert_eq!(
        cache.known_intermediate(&inter.der).as_deref(),
        Some(&known)
    );
    assert!(cache.known_intermediate(&root.der).is_none());
    cache.forget_affected(&HashSet::from([name_key(b"unrelated")]));
    assert_eq!(cache.known_intermediates(), 1);
    // The CA that signed it changed, or a CA now carries its subject: forgotten.
    for changed in [&inter.info.issuer_raw, &inter.info.subject_raw] {
        cache.learn_intermediate(known.clone());
        cache.forget_affected(&HashSet::from([name_key(changed)]));
        assert_eq!(cache.known_intermediates(), 0);
    }
    // A cache that caches nothing remembers nothing.
    let mut off = ChainCache::new(0);
    off.learn_intermediate(known);
    assert_eq!(off.known_intermediates(), 0);
}
