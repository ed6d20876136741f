//! SharedAccessSignature tokens: built, parsed and checked, with signatures computed here
//! independently (HMAC-SHA256 over `sr + "\n" + se` with the base64-decoded key), in the encodings
//! the various Azure SDKs use.

mod common;

use aws_lc_rs::hmac;
use common::{Engine, B64, NOW};
use iothub_pki::pop::format_time;
use iothub_pki::sas::{build_token, generate_key, SasError, SasToken, MAX_TOKEN_LEN};

const POLICY: &str = "iothubowner";
const EXPIRY: i64 = NOW + 3600;

fn key_b64() -> String {
    B64.encode([7u8; 32])
}

fn raw_key() -> Vec<u8> {
    vec![7u8; 32]
}

/// base64(HMAC-SHA256(key, sr + "\n" + se)), computed here.
fn signature(key: &[u8], sr: &str, se: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    B64.encode(hmac::sign(&k, format!("{sr}\n{se}").as_bytes()))
}

fn quote_all(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A token signed over `sr` exactly as given, with the signature encoded by `encode_sig`.
fn hand_token(sr: &str, se: &str, encode_sig: impl Fn(&str) -> String) -> String {
    let sig = encode_sig(&signature(&raw_key(), sr, se));
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={POLICY}")
}

fn check(token: &str, now: i64) -> Result<(), SasError> {
    SasToken::parse(token)?.check(POLICY, &[&raw_key()], now)
}

#[test]
fn build_parse_check_round_trip() {
    let token = build_token("localhost:8443", &key_b64(), Some(POLICY), EXPIRY).unwrap();
    let expected_sig = quote_all(&signature(
        &raw_key(),
        "localhost%3A8443",
        &EXPIRY.to_string(),
    ));
    assert_eq!(
        token,
        format!(
            "SharedAccessSignature sr=localhost%3A8443&sig={expected_sig}&se={EXPIRY}&skn={POLICY}"
        )
    );
    let t = SasToken::parse(&token).unwrap();
    assert_eq!(t.sr, "localhost%3A8443");
    assert_eq!(t.se, EXPIRY.to_string());
    assert_eq!(t.expiry, EXPIRY);
    assert_eq!(t.skn.as_deref(), Some(POLICY));
    assert_eq!(t.resource(), "localhost:8443");
    assert!(t.signed_with(&raw_key()));
    assert_eq!(t.check(POLICY, &[&raw_key()], NOW), Ok(()));
}

#[test]
fn a_token_without_a_policy() {
    let token = build_token("hub.example", &key_b64(), None, EXPIRY).unwrap();
    assert!(!token.contains("skn="), "{token}");
    let t = SasToken::parse(&token).unwrap();
    assert_eq!(t.skn, None);
    assert_eq!(t.check(POLICY, &[&raw_key()], NOW), Ok(()));
    let empty_skn = format!("{token}&skn=");
    assert_eq!(SasToken::parse(&empty_skn).unwrap().skn, None);
}

#[test]
fn a_wrong_key_is_refused() {
    let token = build_token("localhost:8443", &key_b64(), Some(POLICY), EXPIRY).unwrap();
    let t = SasToken::parse(&token).unwrap();
    let wrong = [8u8; 32];
    let e = t.check(POLICY, &[&wrong], NOW).unwrap_err();
    assert_eq!(e, SasError::BadSignature(POLICY.into()));
    assert!(e.to_string().contains("policy 'iothubowner'"), "{e}");
    assert!(!t.signed_with(&wrong));
    assert!(!t.signed_with(&raw_key()[..31]));
    assert_eq!(
        t.check(POLICY, &[], NOW),
        Err(SasError::BadSignature(POLICY.into()))
    );
    // Either of a policy's two keys will do.
    assert_eq!(t.check(POLICY, &[&wrong, &raw_key()], NOW), Ok(()));
    assert_eq!(t.check(POLICY, &[&raw_key(), &wrong], NOW), Ok(()));
}

#[test]
fn expiry_is_exclusive_and_checked_after_the_signature() {
    let token = build_token("localhost:8443", &key_b64(), Some(POLICY), EXPIRY).unwrap();
    assert_eq!(check(&token, EXPIRY - 1), Ok(()));
    assert_eq!(
        check(&token, EXPIRY),
        Err(SasError::Expired {
            expired_at: format_time(EXPIRY)
        })
    );
    assert_eq!(
        check(&token, EXPIRY + 1),
        Err(SasError::Expired {
            expired_at: "2025-06-15T16:06:40Z".into()
        })
    );
    // Expired and signed by another key: the signature is reported.
    let t = SasToken::parse(&token).unwrap();
    assert_eq!(
        t.check(POLICY, &[&[1u8; 32]], EXPIRY + 1),
        Err(SasError::BadSignature(POLICY.into()))
    );
}

#[test]
fn the_sr_is_verified_exactly_as_received() {
    let se = EXPIRY.to_string();
    let plain = |s: &str| s.to_string();
    // quote_plus (Python service SDK), raw (some device SDKs), lower-case escapes.
    for sr in ["localhost%3A8443", "localhost:8443", "localhost%3a8443"] {
        let token = hand_token(sr, &se, plain);
        assert_eq!(check(&token, NOW), Ok(()), "sr={sr}");
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.sr, sr);
        assert_eq!(t.resource(), "localhost:8443");
    }
    // Signed over one encoding, sent in another: the literal sr was signed, so this fails.
    let sig = signature(&raw_key(), "localhost%3A8443", &se);
    let resent = format!("SharedAccessSignature sr=localhost:8443&sig={sig}&se={se}&skn={POLICY}");
    assert_eq!(
        check(&resent, NOW),
        Err(SasError::BadSignature(POLICY.into()))
    );
    let sig = signature(&raw_key(), "localhost:8443", &se);
    let resent =
        format!("SharedAccessSignature sr=localhost%3A8443&sig={sig}&se={se}&skn={POLICY}");
    assert_eq!(
        check(&resent, NOW),
        Err(SasError::BadSignature(POLICY.into()))
    );
}

#[test]
fn resources_with_paths_and_spaces_are_decoded() {
    let se = EXPIRY.to_string();
    let token = hand_token("myhub.example%2Fdevices%2Fdev+1", &se, |s| s.to_string());
    let t = SasToken::parse(&token).unwrap();
    assert_eq!(t.resource(), "myhub.example/devices/dev 1");
    assert_eq!(check(&token, NOW), Ok(()));
    let built = build_token("myhub.example/devices/dev 1", &key_b64(), None, EXPIRY).unwrap();
    let t = SasToken::parse(&built).unwrap();
    assert_eq!(t.sr, "myhub.example%2Fdevices%2Fdev%201");
    assert_eq!(t.resource(), "myhub.example/devices/dev 1");
}

#[test]
fn every_signature_encoding_is_accepted() {
    // Find an expiry whose signature holds '+' and '/', the characters SDKs encode differently.
    let se = (EXPIRY..EXPIRY + 10_000)
        .map(|e| e.to_string())
        .find(|se| {
            let s = signature(&raw_key(), "localhost", se);
            s.contains('+') && s.contains('/')
        })
        .expect("an expiry with '+' and '/' in the signature");
    type Encode = fn(&str) -> String;
    let encodings: [(&str, Encode); 4] = [
        ("raw", |s| s.to_string()),
        ("quote", |s| {
            s.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        }),
        ("quote with '/' safe", |s| {
            s.replace('+', "%2B").replace('=', "%3D")
        }),
        ("lower-case escapes", |s| {
            s.replace('+', "%2b")
                .replace('/', "%2f")
                .replace('=', "%3d")
        }),
    ];
    for (what, encode) in encodings {
        let token = hand_token("localhost", &se, encode);
        assert_eq!(check(&token, NOW), Ok(()), "{what}: {token}");
    }
}

#[test]
fn field_order_unknown_fields_and_white_space() {
    let se = EXPIRY.to_string();
    let sig = quote_all(&signature(&raw_key(), "hub", &se));
    let reordered = format!("SharedAccessSignature skn={POLICY}&se={se}&x=1&sig={sig}&sr=hub&y");
    let t = SasToken::parse(&reordered).unwrap();
    assert_eq!((t.sr.as_str(), t.expiry), ("hub", EXPIRY));
    assert_eq!(check(&reordered, NOW), Ok(()));
    assert_eq!(check(&format!("  {reordered}\r\n"), NOW), Ok(()));
    let skn = format!("SharedAccessSignature sr=hub&sig={sig}&se={se}&skn=my%20policy");
    assert_eq!(
        SasToken::parse(&skn).unwrap().skn.as_deref(),
        Some("my policy")
    );
}

#[test]
fn malformed_tokens() {
    let se = EXPIRY.to_string();
    let sig = quote_all(&signature(&raw_key(), "hub", &se));
    let ok = format!("SharedAccessSignature sr=hub&sig={sig}&se={se}");
    assert!(SasToken::parse(&ok).is_ok());
    for prefixless in [
        "sr=hub&sig=AA==&se=1".to_string(),
        "sharedaccesssignature sr=hub&sig=AA==&se=1".to_string(),
        "SharedAccessSignaturesr=hub&sig=AA==&se=1".to_string(),
        format!("Bearer {ok}"),
        String::new(),
    ] {
        assert_eq!(
            SasToken::parse(&prefixless),
            Err(SasError::MissingPrefix),
            "{prefixless}"
        );
    }
    for (field, token) in [
        ("sr", format!("SharedAccessSignature sig={sig}&se={se}")),
        ("sig", format!("SharedAccessSignature sr=hub&se={se}")),
        ("se", format!("SharedAccessSignature sr=hub&sig={sig}")),
    ] {
        assert_eq!(SasToken::parse(&token), Err(SasError::MissingField(field)));
    }
    for field in ["sr", "sig", "se", "skn"] {
        let token = if field == "skn" {
            format!("{ok}&skn=p&skn=q")
        } else {
            format!("{ok}&{field}=again")
        };
        assert_eq!(
            SasToken::parse(&token),
            Err(SasError::DuplicateField(field.into())),
            "{token}"
        );
    }
    for se_bad in ["soon", "", "1.5", "99999999999999999999"] {
        let token = format!("SharedAccessSignature sr=hub&sig={sig}&se={se_bad}");
        assert!(
            matches!(
                SasToken::parse(&token),
                Err(SasError::Malformed { field: "se", .. })
            ),
            "se={se_bad}"
        );
    }
    for sig_bad in ["!!", "AAA", "%ZZ"] {
        let token = format!("SharedAccessSignature sr=hub&sig={sig_bad}&se={se}");
        assert!(
            matches!(
                SasToken::parse(&token),
                Err(SasError::Malformed { field: "sig", .. })
            ),
            "sig={sig_bad}"
        );
    }
}

#[test]
fn length_limit_is_exact() {
    let se = EXPIRY.to_string();
    let sig = quote_all(&signature(&raw_key(), "hub", &se));
    let base = format!("SharedAccessSignature sr=hub&sig={sig}&se={se}&pad=");
    let at = format!("{base}{}", "x".repeat(MAX_TOKEN_LEN - base.len()));
    assert_eq!(at.len(), MAX_TOKEN_LEN);
    assert_eq!(check(&at, NOW), Ok(()));
    let over = format!("{at}x");
    assert_eq!(
        SasToken::parse(&over),
        Err(SasError::TooLong(MAX_TOKEN_LEN + 1))
    );
}

#[test]
fn tampering_is_detected() {
    let token = build_token("localhost:8443", &key_b64(), Some(POLICY), EXPIRY).unwrap();
    for (from, to) in [
        ("sr=localhost%3A8443", "sr=localhost%3A8444"),
        (
            &format!("se={EXPIRY}")[..],
            &format!("se={}", EXPIRY + 1)[..],
        ),
    ] {
        let tampered = token.replace(from, to);
        assert_ne!(tampered, token);
        assert_eq!(
            check(&tampered, NOW),
            Err(SasError::BadSignature(POLICY.into())),
            "{to}"
        );
    }
    // The policy name is not signed: it only selects the keys.
    let renamed = token.replace("skn=iothubowner", "skn=service");
    assert_eq!(check(&renamed, NOW), Ok(()));
}

#[test]
fn keys_are_32_random_bytes_and_build_refuses_bad_base64() {
    let a = generate_key().unwrap();
    let b = generate_key().unwrap();
    assert_ne!(a, b);
    for k in [&a, &b] {
        assert_eq!(B64.decode(k).unwrap().len(), 32);
    }
    let token = build_token("hub", &a, Some(POLICY), EXPIRY).unwrap();
    let t = SasToken::parse(&token).unwrap();
    assert_eq!(t.check(POLICY, &[&B64.decode(&a).unwrap()], NOW), Ok(()));
    assert_eq!(
        t.check(POLICY, &[&B64.decode(&b).unwrap()], NOW),
        Err(SasError::BadSignature(POLICY.into()))
    );
    assert!(build_token("hub", "not base64!", None, EXPIRY).is_err());
    // Surrounding white space in the key text is tolerated.
    assert_eq!(
        build_token("hub", &format!(" {a}\n"), Some(POLICY), EXPIRY).unwrap(),
        token
    );
}
