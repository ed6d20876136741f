//! Any bytes as an uploaded certificate: parsing must return a certificate or a typed error, and
//! a parsed certificate's facts and the upload rule must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = iothub_pki::parse_certificate_input(data, 64 * 1024) {
        if let Ok(info) = iothub_pki::CertInfo::from_der(&der) {
            let _ = iothub_pki::pop::check_ca_upload(&info, 1_800_000_000);
            let _ = info.pem();
        }
    }
});
