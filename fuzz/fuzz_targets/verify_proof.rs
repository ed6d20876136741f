//! The whole proof-of-possession check with random verification-certificate bytes and a code,
//! against a real CA: it must refuse with a typed error, never panic, and never accept a
//! certificate that the CA did not sign.
#![no_main]
use std::sync::OnceLock;

use iothub_pki::pop::{verify_proof, CodeState};
use iothub_pki::CertInfo;
use libfuzzer_sys::fuzz_target;

const CA: &str = include_str!("../fixtures/fuzz-ca.pem");
const SEED: &str = include_str!("../fixtures/verification.pem");

fn ca() -> &'static (CertInfo, i64) {
    static CA_INFO: OnceLock<(CertInfo, i64)> = OnceLock::new();
    CA_INFO.get_or_init(|| {
        let der = iothub_pki::parse_certificate_input(CA.as_bytes(), usize::MAX).expect("fixture");
        let seed = iothub_pki::parse_certificate_input(SEED.as_bytes(), usize::MAX).expect("fixture");
        let now = CertInfo::from_der(&seed).expect("fixture").not_before + 60;
        (CertInfo::from_der(&der).expect("fixture"), now)
    })
}

fuzz_target!(|data: &[u8]| {
    let (ca, now) = ca();
    // The first byte picks the code state; the next 48 bytes are the code; the rest the certificate.
    let (state, rest) = match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => return,
    };
    let (code, cert) = rest.split_at(rest.len().min(48));
    let code = String::from_utf8_lossy(code).to_ascii_uppercase();
    let code_state = match state % 3 {
        0 => CodeState::Live { code: "00112233445566778899AABBCCDDEEFF0011223344556677".into(), expires_at: now + 60 },
        1 => CodeState::Live { code, expires_at: now + 60 },
        _ => CodeState::Used { at: now - 1 },
    };
    if let Ok(info) = verify_proof("fuzz", ca, &code_state, cert, 64 * 1024, *now) {
        // Accepted: it must really be issued and signed by the fixture CA, with the code as CN.
        assert_eq!(info.issuer_raw, ca.subject_raw);
        assert_eq!(info.common_names.len(), 1);
    }
});
