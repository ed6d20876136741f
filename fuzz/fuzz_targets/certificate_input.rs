//! Any bytes as an uploaded certificate: parsing must return a certificate or a typed error, and
//! a parsed certificate's facts and the upload rule must never panic. Text announcing a private
//! key (a `-----BEGIN ... PRIVATE KEY-----` line) is never accepted, and its refusal is short: it
//! names the kind of key and never repeats the input.
#![no_main]
use iothub_pki::InputError;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

/// Whether `text` holds a BEGIN line whose label is upper-case words ending in PRIVATE KEY.
fn announces_private_key(text: &str) -> bool {
    text.match_indices("-----BEGIN ").any(|(at, begin)| {
        let rest = &text[at + begin.len()..];
        match rest.find("PRIVATE KEY-----") {
            Some(end) => rest[..end]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b' '),
            None => false,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let result = iothub_pki::parse_certificate_input(data, MAX);
    if let Ok(der) = &result {
        if let Ok(info) = iothub_pki::CertInfo::from_der(der) {
            let _ = iothub_pki::pop::check_ca_upload(&info, 1_800_000_000);
            let _ = iothub_pki::cert::check_signature_algorithms(der);
            let _ = info.single_common_name();
            let _ = info.pem();
        }
    }
    // The parser reads UTF-8 text as PEM unless it is DER-shaped (a SEQUENCE whose next byte is
    // not printable); within the size limit, a private key announced in PEM text is refused.
    let der_shaped = data.first() == Some(&0x30)
        && !(data.len() > 1 && data[1].is_ascii_graphic() && data.is_ascii());
    if let Ok(text) = std::str::from_utf8(data) {
        if data.len() <= MAX && !der_shaped && announces_private_key(text) {
            assert!(
                matches!(result, Err(InputError::PrivateKeyIncluded { .. })),
                "{result:?}"
            );
        }
    }
    if let Err(e @ InputError::PrivateKeyIncluded { .. }) = &result {
        assert!(e.to_string().len() < 400, "{e}");
    }
});
