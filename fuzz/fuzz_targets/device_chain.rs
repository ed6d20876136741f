//! A device chain decision with random certificates (split into a chain) against a trust index
//! holding a real Verified CA: typed refusals only, never a panic.
//!
//! Sign mode (first byte 0xA5): the first certificate is a TBSCertificate that a CA made at start
//! signs (see signer.rs), and the index trusts that CA, so verdicts after the path are fuzzed too:
//! an admitted leaf never has a CN that is not text, nor mismatched algorithm fields; and a chain
//! judged through the intermediate it taught (`validate_chain_knowing`) gets the full verdict.
#![no_main]
use std::sync::OnceLock;

use iothub_pki::chain::{validate_chain, validate_chain_knowing};
use iothub_pki::trust_index::{AnchorEntry, TrustIndex};
use iothub_pki::CertInfo;
use libfuzzer_sys::fuzz_target;

#[path = "signer.rs"]
mod signer;

const CA: &str = include_str!("../fixtures/fuzz-ca.pem");

fn index() -> &'static TrustIndex {
    static INDEX: OnceLock<TrustIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let der = iothub_pki::parse_certificate_input(CA.as_bytes(), usize::MAX).expect("fixture");
        let signing = signer::signer();
        TrustIndex::new([
            AnchorEntry {
                ca_name: "fuzz".into(),
                der,
                subject: "CN=fuzz-ca".into(),
                verified: true,
                not_after: i64::MAX,
            },
            AnchorEntry {
                ca_name: "signing".into(),
                der: signing.ca.der.clone(),
                subject: signing.ca.subject.clone(),
                verified: true,
                not_after: i64::MAX,
            },
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let (sign_mode, data) = match data.split_first() {
        Some((0xA5, rest)) => (true, rest),
        _ => (false, data),
    };
    // Certificates separated by the byte sequence 0xFF 0x00 0xFF (at most 8).
    let mut chain: Vec<Vec<u8>> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= data.len() && chain.len() < 7 {
        if data[i..i + 3] == [0xFF, 0x00, 0xFF] {
            chain.push(data[start..i].to_vec());
            start = i + 3;
            i += 3;
        } else {
            i += 1;
        }
    }
    chain.push(data[start..].to_vec());
    let mut now = 1_800_000_000;
    if sign_mode {
        chain[0] = signer::signer().certificate(&chain[0]);
        if let Ok(leaf) = CertInfo::from_der(&chain[0]) {
            now = leaf.not_before.saturating_add(60);
        }
    }
    let full = validate_chain(&chain, index(), now);
    if let Ok(ok) = &full {
        assert!(ok.leaf.non_text_common_names.is_empty());
        assert!(iothub_pki::cert::check_signature_algorithms(&ok.leaf.der).is_ok());
    }
    // What a chain teaches never changes its own verdict.
    if let Ok(v) = validate_chain_knowing(&chain, index(), now, 8, None) {
        if let Some(known) = v.learned {
            let again = validate_chain_knowing(&chain, index(), now, 8, Some(&known));
            assert_eq!(again.map(|v| v.ok), full);
        }
    }
});
