//! Rights lists, policy names and key slots as the policy routes receive them (any text from an
//! owner token, the CLI or the management SDK): typed errors, no panic; an accepted rights list
//! is one to four distinct rights in canonical order that survives rendering and parsing again.
#![no_main]
use libfuzzer_sys::fuzz_target;

use iothub_pki::policy::{format_rights, parse_rights, validate_policy_name, KeySlot, Right};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rights) = parse_rights(&text) {
        assert!(!rights.is_empty() && rights.len() <= Right::ALL.len());
        assert!(rights.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        let names: Vec<&str> = rights.iter().map(|r| r.name()).collect();
        assert_eq!(parse_rights(&format_rights(&names)), Ok(rights));
    }
    if validate_policy_name(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= 64 && text.is_ascii());
        assert!(!text.contains(['/', ';', '=', '&', ' ', '%']));
    }
    if let Ok(slot) = KeySlot::parse(&text) {
        assert_eq!(KeySlot::parse(slot.name()), Ok(slot));
    }
});
