//! The whole proof-of-possession check with random verification-certificate bytes and a code,
//! against a real CA: it must refuse with a typed error, never panic, and never accept a
//! certificate that the CA did not sign.
//!
//! Sign mode (first byte >= 0x80): the certificate bytes are a TBSCertificate that a CA made at
//! start signs (see signer.rs), so the checks after the signature are fuzzed too: the outer and
//! signed algorithm fields, CN types (a CN that is not text must never prove), CN count and value.
#![no_main]
use std::sync::OnceLock;

use iothub_pki::pop::{verify_proof, CodeState, ProofError};
use iothub_pki::CertInfo;
use libfuzzer_sys::fuzz_target;

#[path = "signer.rs"]
mod signer;

const CA: &str = include_str!("../fixtures/fuzz-ca.pem");
const SEED: &str = include_str!("../fixtures/verification.pem");
const FIXED_CODE: &str = "00112233445566778899AABBCCDDEEFF0011223344556677";

fn ca() -> &'static (CertInfo, i64) {
    static CA_INFO: OnceLock<(CertInfo, i64)> = OnceLock::new();
    CA_INFO.get_or_init(|| {
        let der = iothub_pki::parse_certificate_input(CA.as_bytes(), usize::MAX).expect("fixture");
        let seed =
            iothub_pki::parse_certificate_input(SEED.as_bytes(), usize::MAX).expect("fixture");
        let now = CertInfo::from_der(&seed).expect("fixture").not_before + 60;
        (CertInfo::from_der(&der).expect("fixture"), now)
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the mode and the code state; the next 48 bytes are the code; the rest
    // the certificate (sign mode: its TBSCertificate).
    let (state, rest) = match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => return,
    };
    let (code, cert) = rest.split_at(rest.len().min(48));
    let code = String::from_utf8_lossy(code).to_ascii_uppercase();
    let sign_mode = state & 0x80 != 0;
    let (ca_info, now, cert) = if sign_mode {
        let s = signer::signer();
        let der = s.certificate(cert);
        let now = CertInfo::from_der(&der).map_or(ca().1, |i| i.not_before + 60);
        (&s.ca, now, der)
    } else {
        (&ca().0, ca().1, cert.to_vec())
    };
    let live = match (state & 0x7f) % 3 {
        0 => Some(FIXED_CODE.to_string()),
        1 => Some(code),
        _ => None,
    };
    let code_state = match &live {
        Some(code) => CodeState::Live {
            code: code.clone(),
            expires_at: now + 60,
        },
        None => CodeState::Used { at: now - 1 },
    };
    match verify_proof("fuzz", ca_info, &code_state, &cert, 64 * 1024, now) {
        Ok(info) => {
            // Accepted: issued and signed by that CA, its algorithm fields equal, and exactly one
            // CN, a text string equal to the code.
            assert_eq!(info.issuer_raw, ca_info.subject_raw);
            assert!(iothub_pki::cert::check_signature_algorithms(&info.der).is_ok());
            assert!(info.non_text_common_names.is_empty());
            let cn = info.single_common_name().expect("one text CN");
            let code = live.expect("a live code");
            assert!(cn.eq_ignore_ascii_case(&code));
        }
        Err(e @ ProofError::CnMismatch { .. }) => {
            // No 8 consecutive characters of a (hex) live code in the refusal.
            let code = live.expect("a live code");
            if code.len() >= 8 && code.bytes().all(|b| b.is_ascii_hexdigit()) {
                let text = e.to_string().to_ascii_uppercase();
                for i in 0..=code.len() - 8 {
                    assert!(!text.contains(&code[i..i + 8]), "{text}");
                }
            }
        }
        Err(_) => {}
    }
});
