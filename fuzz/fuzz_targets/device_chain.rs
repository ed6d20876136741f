//! A device chain decision with random certificates (split into a chain) against a trust index
//! holding a real Verified CA: typed refusals only, never a panic.
#![no_main]
use std::sync::OnceLock;

use iothub_pki::device::{validate_chain, AnchorEntry, TrustIndex};
use libfuzzer_sys::fuzz_target;

const CA: &str = include_str!("../fixtures/fuzz-ca.pem");

fn index() -> &'static TrustIndex {
    static INDEX: OnceLock<TrustIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let der = iothub_pki::parse_certificate_input(CA.as_bytes(), usize::MAX).expect("fixture");
        TrustIndex::new([AnchorEntry {
            ca_name: "fuzz".into(),
            der,
            subject: "CN=fuzz-ca".into(),
            verified: true,
            not_after: i64::MAX,
        }])
    })
}

fuzz_target!(|data: &[u8]| {
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
    let _ = validate_chain(&chain, index(), 1_800_000_000);
});
