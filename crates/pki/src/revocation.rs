//! Revoked certificates, judged without I/O: a compromised device (or intermediate) certificate
//! must stop working at once, while the other devices of its CA carry on.
//!
//! A revocation names a registered CA and a serial number: the certificate that CA issued with
//! that serial (issuer and serial identify a certificate, RFC 5280 4.1.2.2). A presented chain is
//! refused when any of its certificates is revoked by the CA whose subject is that certificate's
//! issuer. Serials are compared in one spelling: upper-case hex without leading zeros (`0x`,
//! colons and spaces as `openssl x509 -serial` and browsers print them are accepted on input).

use std::collections::HashMap;

use crate::trust_index::NameKey;

/// The most hex digits a serial may have: RFC 5280 allows 20 octets.
pub const MAX_SERIAL_HEX_DIGITS: usize = 40;

/// Why a serial number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("the serial number is empty; expected the certificate's serial in hex, e.g. 1A2B3C (openssl x509 -noout -serial prints it)")]
    Empty,
    #[error("the serial number '{0}' is not hex; expected hex digits (0-9, A-F), optionally separated by colons, e.g. 1A:2B:3C")]
    NotHex(String),
    #[error(
        "the serial number has {0} hex digits; a certificate serial has at most 40 (20 octets)"
    )]
    TooLong(usize),
}

/// The one spelling of a serial: upper-case hex, no leading zeros (`0` for zero). Accepts a
/// `0x` prefix and colons or spaces between digits.
pub fn normalize_serial(text: &str) -> Result<String, SerialError> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let digits: String = body.chars().filter(|c| *c != ':' && *c != ' ').collect();
    if digits.is_empty() {
        return Err(SerialError::Empty);
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SerialError::NotHex(text.chars().take(64).collect()));
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_SERIAL_HEX_DIGITS {
        return Err(SerialError::TooLong(significant.len()));
    }
    Ok(if significant.is_empty() {
        "0".to_string()
    } else {
        significant.to_ascii_uppercase()
    })
}

/// Why a certificate was revoked: RFC 5280's CRLReason names (5.3.1), as CRLs and operators
/// spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

const REASONS: &[(RevocationReason, &str)] = &[
    (RevocationReason::Unspecified, "unspecified"),
    (RevocationReason::KeyCompromise, "keyCompromise"),
    (RevocationReason::CaCompromise, "cACompromise"),
    (RevocationReason::AffiliationChanged, "affiliationChanged"),
    (RevocationReason::Superseded, "superseded"),
    (
        RevocationReason::CessationOfOperation,
        "cessationOfOperation",
    ),
    (RevocationReason::CertificateHold, "certificateHold"),
    (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
    (RevocationReason::AaCompromise, "aACompromise"),
];

/// A reason that is not one of RFC 5280's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a revocation reason; expected one of unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise")]
pub struct ReasonError(pub String);

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        REASONS
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("unspecified", |(_, name)| name)
    }

    /// The reason of a CRL entry's reasonCode (RFC 5280 5.3.1); None for removeFromCRL (8: the
    /// certificate is not revoked) and for codes RFC 5280 does not define.
    pub fn from_crl_code(code: u8) -> Option<RevocationReason> {
        Some(match code {
            0 => RevocationReason::Unspecified,
            1 => RevocationReason::KeyCompromise,
            2 => RevocationReason::CaCompromise,
            3 => RevocationReason::AffiliationChanged,
            4 => RevocationReason::Superseded,
            5 => RevocationReason::CessationOfOperation,
            6 => RevocationReason::CertificateHold,
            9 => RevocationReason::PrivilegeWithdrawn,
            10 => RevocationReason::AaCompromise,
            _ => return None,
        })
    }

    /// Reads a reason name, in any letter case.
    pub fn parse(text: &str) -> Result<RevocationReason, ReasonError> {
        REASONS
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(text.trim()))
            .map(|(r, _)| *r)
            .ok_or_else(|| ReasonError(text.chars().take(64).collect()))
    }
}

/// One revoked certificate, as the refusal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The registered CA that revoked it.
    pub ca_name: String,
    /// Normalized (see [`normalize_serial`]).
    pub serial: String,
    pub reason: RevocationReason,
    /// When it was revoked, as RFC 3339 UTC text.
    pub since: String,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate serial {} revoked by '{}' ({}, since {})",
            self.serial,
            self.ca_name,
            self.reason.as_str(),
            self.since
        )
    }
}

/// Every revocation, by the subject of the CA that made it, then by serial.
#[derive(Debug, Default)]
pub struct RevocationSet {
    by_issuer: HashMap<NameKey, HashMap<String, Revoked>>,
}

impl RevocationSet {
    /// Builds the set; `subject_of` gives a registered CA's subject key by name (a revocation of
    /// a CA that is not registered is left out: it has nothing to revoke for).
    pub fn new(
        revocations: impl IntoIterator<Item = Revoked>,
        subject_of: impl Fn(&str) -> Option<NameKey>,
    ) -> RevocationSet {
        let mut by_issuer: HashMap<NameKey, HashMap<String, Revoked>> = HashMap::new();
        for r in revocations {
            if let Some(key) = subject_of(&r.ca_name) {
                by_issuer
                    .entry(key)
                    .or_default()
                    .insert(r.serial.clone(), r);
            }
        }
        RevocationSet { by_issuer }
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The subjects of the CAs that revoked anything: the sessions a change of revocations can
    /// affect name one of them as an issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &NameKey> {
        self.by_issuer.keys()
    }

    /// The first revoked certificate among `presented` (each certificate's issuer and serial,
    /// as a verdict keeps them: `VerifiedChain::presented`), if any.
    pub fn check(&self, presented: &[(NameKey, String)]) -> Result<(), &Revoked> {
        if self.by_issuer.is_empty() {
            return Ok(());
        }
        for (issuer, serial) in presented {
            if let Some(r) = self.by_issuer.get(issuer).and_then(|s| s.get(serial)) {
                return Err(r);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_have_one_spelling() {
        for (input, expected) in [
            ("1a2b", "1A2B"),
            ("00:1A:2B", "1A2B"),
            ("0x001a2b", "1A2B"),
            (" 1A 2B ", "1A2B"),
            ("0000", "0"),
            (&"F".repeat(40), &"F".repeat(40)),
            (&format!("00{}", "F".repeat(40)), &"F".repeat(40)),
        ] {
            assert_eq!(normalize_serial(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn bad_serials_say_what_was_expected() {
        assert_eq!(normalize_serial(""), Err(SerialError::Empty));
        assert_eq!(normalize_serial(" : "), Err(SerialError::Empty));
        assert!(matches!(
            normalize_serial("12G4"),
            Err(SerialError::NotHex(_))
        ));
        assert!(matches!(
            normalize_serial("-12"),
            Err(SerialError::NotHex(_))
        ));
        assert_eq!(
            normalize_serial(&"1".repeat(41)),
            Err(SerialError::TooLong(41))
        );
        let long_junk = "z".repeat(10_000);
        let SerialError::NotHex(shown) = normalize_serial(&long_junk).unwrap_err() else {
            panic!("expected NotHex");
        };
        assert_eq!(
            shown.len(),
            64,
            "the error quotes a bounded part of the input"
        );
    }

    #[test]
    fn reasons_round_trip_and_refuse_unknown_names() {
        for (reason, name) in REASONS {
            assert_eq!(reason.as_str(), *name);
            assert_eq!(RevocationReason::parse(name).unwrap(), *reason);
            assert_eq!(
                RevocationReason::parse(&name.to_uppercase()).unwrap(),
                *reason
            );
        }
        let e = RevocationReason::parse("stolen").unwrap_err();
        assert!(e.to_string().contains("keyCompromise"), "{e}");
    }

    fn chain(presented: &[(NameKey, &str)]) -> Vec<(NameKey, String)> {
        presented.iter().map(|(k, s)| (*k, s.to_string())).collect()
    }

    #[test]
    fn a_chain_is_refused_only_for_a_serial_its_own_issuer_revoked() {
        let root = crate::trust_index::name_key(b"root subject");
        let other = crate::trust_index::name_key(b"other subject");
        let revoked = Revoked {
            ca_name: "root".into(),
            serial: "1A".into(),
            reason: RevocationReason::KeyCompromise,
            since: "2026-12-05T00:00:00Z".into(),
        };
        let set = RevocationSet::new([revoked.clone()], |name| (name == "root").then_some(root));
        assert_eq!(set.check(&chain(&[(root, "1A")])), Err(&revoked));
        // The same serial from another issuer is another certificate.
        assert_eq!(set.check(&chain(&[(other, "1A")])), Ok(()));
        assert_eq!(set.check(&chain(&[(root, "1B")])), Ok(()));
        // An intermediate revoked by the root refuses the leaf it issued.
        assert_eq!(
            set.check(&chain(&[(other, "77"), (root, "1A")])),
            Err(&revoked)
        );
        assert_eq!(
            revoked.to_string(),
            "certificate serial 1A revoked by 'root' (keyCompromise, since 2026-12-05T00:00:00Z)"
        );
        // A revocation of a CA that is not registered revokes nothing.
        let orphan = RevocationSet::new([revoked], |_| None);
        assert!(orphan.is_empty());
    }
}
