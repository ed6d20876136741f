//! SharedAccessSignature tokens, as Azure IoT Hub defines them and its SDKs send them.
//!
//! `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>&skn=<policy>`, where the
//! signature is base64(HMAC-SHA256(base64-decoded key, sr + "\n" + se)). The SDKs disagree on how
//! they encode `sr` (quote_plus, raw, quote), so the signature is checked over the `sr` field
//! exactly as received, and the resource is compared only after decoding it.

use aws_lc_rs::hmac;
use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::pop::constant_time_eq;

/// Tokens longer than this are refused before any parsing (they never occur in practice).
pub const MAX_TOKEN_LEN: usize = 4096;
const PREFIX: &str = "SharedAccessSignature ";

/// A parsed token. `sr` and `se` are kept exactly as received because they are what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    pub sr: String,
    pub se: String,
    pub expiry: i64,
    pub skn: Option<String>,
    /// The signature, percent-decoded and base64-decoded.
    signature: Vec<u8>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the token is {0} bytes long; at most 4096 are accepted")]
    TooLong(usize),
    #[error("the Authorization value must start with 'SharedAccessSignature '")]
    MissingPrefix,
    #[error("the token field '{0}' appears more than once")]
    DuplicateField(String),
    #[error("the token lacks the field '{0}'")]
    MissingField(&'static str),
    #[error("the token field '{field}' is malformed: {detail}")]
    Malformed { field: &'static str, detail: String },
    #[error("the token names no policy (skn); a hub policy token is required")]
    NoPolicy,
    #[error("the token's signature does not match any key of policy '{0}'")]
    BadSignature(String),
    #[error("the token's signature does not match any key of device '{0}'")]
    BadDeviceSignature(String),
    #[error("the token expired at {expired_at}")]
    Expired { expired_at: String },
    #[error("the token is for resource '{found}', expected this hub ({expected})")]
    WrongResource { found: String, expected: String },
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`.
    pub fn parse(header_value: &str) -> Result<SasToken, SasError> {
        if header_value.len() > MAX_TOKEN_LEN {
            return Err(SasError::TooLong(header_value.len()));
        }
        let body = header_value
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SasError::MissingPrefix)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in body.split('&') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let slot = match key {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue, // unknown fields are ignored, as Azure does
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(SasError::DuplicateField(key.to_string()));
            }
        }
        let sr = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;
        let expiry: i64 = se.parse().map_err(|_| SasError::Malformed {
            field: "se",
            detail: format!("'{}' is not a whole number of seconds", truncate(&se)),
        })?;
        let sig_text = percent_decode_str(&sig).decode_utf8_lossy();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(sig_text.as_bytes())
            .map_err(|e| SasError::Malformed {
                field: "sig",
                detail: format!("not base64 ({e})"),
            })?;
        let skn = match skn {
            Some(s) if !s.is_empty() => Some(percent_decode_str(&s).decode_utf8_lossy().into()),
            _ => None,
        };
        Ok(SasToken {
            sr,
            se,
            expiry,
            skn,
            signature,
        })
    }

    /// The resource URI, percent-decoded.
    pub fn resource(&self) -> String {
        percent_decode_str(&self.sr.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    }

    /// Whether the signature was made with `key` (raw key bytes), compared in constant time.
    pub fn signed_with(&self, key: &[u8]) -> bool {
        let expected = sign_raw(key, &self.sr, &self.se);
        constant_time_eq(&expected, &self.signature)
    }

    /// Checks the signature against any of `keys` (raw bytes) of `policy`, then the expiry.
    pub fn check(&self, policy: &str, keys: &[&[u8]], now: i64) -> Result<(), SasError> {
        self.check_keys(keys, now, || SasError::BadSignature(policy.to_string()))
    }

    /// [`SasToken::check`] for a device's token: signed with one of the device's own keys.
    pub fn check_device(&self, device_id: &str, keys: &[&[u8]], now: i64) -> Result<(), SasError> {
        self.check_keys(keys, now, || {
            SasError::BadDeviceSignature(device_id.to_string())
        })
    }

    fn check_keys(
        &self,
        keys: &[&[u8]],
        now: i64,
        unsigned: impl FnOnce() -> SasError,
    ) -> Result<(), SasError> {
        // Every key is tried (no early exit) so timing does not tell which key matched.
        let matched = keys
            .iter()
            .fold(false, |acc, key| self.signed_with(key) | acc);
        if !matched {
            return Err(unsigned());
        }
        if self.expiry <= now {
            return Err(SasError::Expired {
                expired_at: crate::pop::format_time(self.expiry),
            });
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn sign_raw(key: &[u8], sr: &str, se: &str) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut msg = Vec::with_capacity(sr.len() + se.len() + 1);
    msg.extend_from_slice(sr.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(se.as_bytes());
    hmac::sign(&k, &msg).as_ref().to_vec()
}

/// Characters `urllib.parse.quote(s, safe="")` leaves alone: letters, digits and `_.-~`.
const QUOTE_ALL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// Builds a token for `resource` (e.g. `localhost:8443`), signed with `key_b64` (a policy's base64
/// key), expiring at `expiry` (Unix seconds). Encodes like the Azure IoT device SDK.
pub fn build_token(
    resource: &str,
    key_b64: &str,
    policy: Option<&str>,
    expiry: i64,
) -> Result<String, base64::DecodeError> {
    let key = base64::engine::general_purpose::STANDARD.decode(key_b64.trim())?;
    let sr = utf8_percent_encode(resource, QUOTE_ALL).to_string();
    let se = expiry.to_string();
    let sig = base64::engine::general_purpose::STANDARD.encode(sign_raw(&key, &sr, &se));
    let sig = utf8_percent_encode(&sig, QUOTE_ALL);
    let mut token = format!("{PREFIX}sr={sr}&sig={sig}&se={se}");
    if let Some(p) = policy {
        token.push_str("&skn=");
        token.push_str(&utf8_percent_encode(p, QUOTE_ALL).to_string());
    }
    Ok(token)
}

/// Generates a random 32-byte key, base64-encoded, as Azure's policy and device keys are.
pub fn generate_key() -> Result<String, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhpcyBpcyBhIHRlc3Qga2V5IGZvciBpb3RodWIgISE=";

    fn raw_key() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap()
    }

    #[test]
    fn round_trip() {
        let t = build_token("localhost:8443", KEY, Some("iothubowner"), 2_000_000_000).unwrap();
        assert!(t.starts_with("SharedAccessSignature sr=localhost%3A8443&sig="));
        let p = SasToken::parse(&t).unwrap();
        assert_eq!(p.resource(), "localhost:8443");
        assert_eq!(p.skn.as_deref(), Some("iothubowner"));
        assert!(p.check("iothubowner", &[&raw_key()], 1_000).is_ok());
    }

    #[test]
    fn python_service_sdk_shape_is_accepted() {
        // azure-iot-hub: sr = quote_plus(host); sig = quote(b64) with '/' left raw.
        let sr = "localhost%3A8443";
        let se = "1795888176";
        let sig = base64::engine::general_purpose::STANDARD.encode(sign_raw(&raw_key(), sr, se));
        let sig_enc = sig.replace('+', "%2B").replace('=', "%3D");
        let header = format!("SharedAccessSignature sr={sr}&sig={sig_enc}&se={se}&skn=iothubowner");
        let p = SasToken::parse(&header).unwrap();
        assert!(p.check("iothubowner", &[&raw_key()], 1_700_000_000).is_ok());
    }

    #[test]
    fn refusals() {
        let t = build_token("localhost", KEY, Some("p"), 100).unwrap();
        let p = SasToken::parse(&t).unwrap();
        assert!(matches!(
            p.check("p", &[&raw_key()], 100),
            Err(SasError::Expired { .. })
        ));
        assert!(matches!(
            p.check("p", &[b"other key"], 50),
            Err(SasError::BadSignature(_))
        ));
        assert_eq!(SasToken::parse("Bearer x"), Err(SasError::MissingPrefix));
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sr=b&sig=AA==&se=1"),
            Err(SasError::DuplicateField("sr".into()))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sig=AA==&se=1"),
            Err(SasError::MissingField("sr"))
        );
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=AA==&se=soon"),
            Err(SasError::Malformed { field: "se", .. })
        ));
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=!!&se=1"),
            Err(SasError::Malformed { field: "sig", .. })
        ));
        let long = format!("SharedAccessSignature sr={}", "a".repeat(5000));
        assert!(matches!(SasToken::parse(&long), Err(SasError::TooLong(_))));
        // A tampered expiry no longer matches the signature.
        let tampered = t.replace("se=100", "se=999999999999");
        let p = SasToken::parse(&tampered).unwrap();
        assert!(matches!(
            p.check("p", &[&raw_key()], 50),
            Err(SasError::BadSignature(_))
        ));
    }

    #[test]
    fn generated_keys_are_32_bytes() {
        let k = generate_key().unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(k).unwrap();
        assert_eq!(raw.len(), 32);
    }
}
