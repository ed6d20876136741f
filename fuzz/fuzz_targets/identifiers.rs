//! Device ids, certificate names, thumbprints, revocation serials and reasons on arbitrary text: typed errors, no panic, and
//! what is accepted is within the documented alphabets and lengths.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if iothub_pki::device_id::validate_device_id(&text).is_ok() {
        assert!(text.len() <= 128 && text.is_ascii() && !text.contains('/'));
    }
    if iothub_pki::pop::validate_ca_name(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= 64);
    }
    if let Ok(t) = iothub_pki::thumbprint::normalize_thumbprint(&text) {
        assert!(t.len() == 40 || t.len() == 64);
    }
    if let Ok(serial) = iothub_pki::revocation::normalize_serial(&text) {
        // One spelling: upper-case hex, no leading zero, at most 20 octets, and stable.
        assert!(!serial.is_empty() && serial.len() <= 40);
        assert!(serial
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
        assert!(serial == "0" || !serial.starts_with('0'));
        assert_eq!(
            iothub_pki::revocation::normalize_serial(&serial).as_ref(),
            Ok(&serial)
        );
    }
    if let Ok(reason) = iothub_pki::revocation::RevocationReason::parse(&text) {
        assert_eq!(
            iothub_pki::revocation::RevocationReason::parse(reason.as_str()),
            Ok(reason)
        );
    }
});
