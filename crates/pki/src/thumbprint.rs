//! How the hub writes a certificate thumbprint: one canonical form (uppercase hex, SHA-1 or
//! SHA-256), whatever form an operator typed or `openssl` printed.
//!
//! Why a module of its own: a device registered by thumbprint is matched at CONNECT by string
//! equality, so every thumbprint that enters the hub must go through this one normalisation.

/// Normalises a thumbprint: SHA-1 (40 hex) or SHA-256 (64 hex), without regard to case; colons and
/// spaces (as `openssl x509 -fingerprint` prints them) are removed. Returns uppercase hex.
pub fn normalize_thumbprint(text: &str) -> Result<String, String> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if !(hex.len() == 40 || hex.len() == 64) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "thumbprint '{}' is invalid: expected 40 (SHA-1) or 64 (SHA-256) hex digits",
            text.chars().take(80).collect::<String>()
        ));
    }
    Ok(hex.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints() {
        let sha1 = "97388663832d0393c9246cab4fba2c8677185a25";
        assert_eq!(
            normalize_thumbprint(sha1).unwrap(),
            sha1.to_ascii_uppercase()
        );
        let colons = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_thumbprint(&colons).unwrap(), "AB".repeat(32));
        for bad in ["", "XYZ", &"A".repeat(41), &"G".repeat(40)] {
            assert!(normalize_thumbprint(bad).is_err(), "{bad}");
        }
    }
}
