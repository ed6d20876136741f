//! An uploaded CRL's bytes, PEM or DER, checked against a real CA: a typed error for anything
//! but a CRL that CA signed, never a panic, and never an accepted CRL (the fuzzer cannot sign
//! with the CA's key). The entry limit and a held thisUpdate vary with the input's first byte.
#![no_main]
use std::sync::OnceLock;

use iothub_pki::crl::{check_crl, read_crl};
use libfuzzer_sys::fuzz_target;

const CA: &str = include_str!("../fixtures/fuzz-ca.pem");

fn ca_der() -> &'static Vec<u8> {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        iothub_pki::parse_certificate_input(CA.as_bytes(), usize::MAX).expect("fixture")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let Ok(der) = read_crl(input, 1 << 16) else {
        return;
    };
    let max_entries = usize::from(knob % 8);
    let held = (knob & 0x80 != 0).then_some(1_700_000_000);
    let verdict = check_crl(&der, "fuzz-ca", ca_der(), 1_800_000_000, held, max_entries);
    assert!(verdict.is_err(), "a CRL the fuzzer made was accepted");
    // Every refusal renders (the API shows it).
    let _ = verdict.map_err(|e| e.to_string());
});
