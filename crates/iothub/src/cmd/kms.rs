//! `cert verification-tbs` and `cert verification-finish`: proof of possession in two steps, for
//! a CA key that sits behind a KMS with its own command line and no PKCS#11 (AWS KMS, Azure Key
//! Vault, Google Cloud KMS, an offline machine). The first writes the to-be-signed bytes of a
//! verification certificate for a fresh code and prints how to sign them; the second puts the
//! signature in, checks the certificate as the hub will, and verifies. The key is never here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use iothub_client::{segment, ApiClient};
use iothub_pki::external_key::{self, ExternalKeyKind};
use reqwest::Method;
use serde_json::json;

use crate::output::{prop, text, Output};

fn cert_path(name: &str) -> String {
    format!("/certificates/{}", segment(name))
}

/// The first step: a code, and `out` (default `NAME.tbs`) with the bytes the CA key must sign.
pub fn write_tbs(api: &ApiClient, output: Output, name: &str, out: Option<PathBuf>) -> Result<()> {
    let current = api.call(Method::GET, &cert_path(name), None, None)?;
    let ca_pem = text(prop(&current, "certificate"));
    let ca_der = iothub_pki::parse_certificate_input(ca_pem.as_bytes(), usize::MAX)?;
    let kind = external_key::external_key_kind(&ca_der)?;
    let coded = api.call(
        Method::POST,
        &format!("{}/generateVerificationCode", cert_path(name)),
        Some(&text(&current["etag"])),
        None,
    )?;
    let code = text(&coded["properties"]["verificationCode"]);
    let tbs = external_key::verification_tbs(
        &code,
        &ca_der,
        time::OffsetDateTime::now_utc(),
        time::Duration::hours(1),
    )?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.tbs")));
    crate::files::write_atomic(&path, &tbs, 0o644)?;
    let (algorithm, aws) = match kind {
        ExternalKeyKind::EcP256 => ("ECDSA P-256 with SHA-256", "ECDSA_SHA_256"),
        ExternalKeyKind::Rsa => ("RSA PKCS#1 v1.5 with SHA-256", "RSASSA_PKCS1_V1_5_SHA_256"),
    };
    let shown = path.display();
    let answer = json!({
        "certificate": name,
        "verificationCode": code,
        "toBeSigned": shown.to_string(),
        "algorithm": algorithm,
        "expiry": coded["properties"]["verificationCodeExpiry"],
    });
    output.answer(&answer, || {
        println!("wrote {shown}: the to-be-signed bytes of a verification certificate for code {code}");
        println!("sign them with the CA's key ({algorithm}) before the code expires, for example:");
        println!("  openssl dgst -sha256 -sign CA.key -out {name}.sig {shown}");
        println!("  aws kms sign --key-id KEY --message fileb://{shown} --message-type RAW --signing-algorithm {aws} --query Signature --output text | base64 -d > {name}.sig");
        println!("  (a KMS that signs a digest: give it `openssl dgst -sha256 -binary {shown}`)");
        println!("then: iothub cert verification-finish {name} --tbs {shown} --signature {name}.sig");
    })
}

/// A signature file: binary (DER, or raw `r || s`), or the same in base64 text.
fn read_signature(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the signature {}", path.display()))?;
    let text: String = String::from_utf8_lossy(&bytes).split_whitespace().collect();
    let looks_base64 = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'));
    if looks_base64 && bytes.iter().all(|b| b.is_ascii()) {
        let standard = base64::engine::general_purpose::STANDARD.decode(&text);
        let url =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='));
        if let Ok(decoded) = standard.or(url) {
            return Ok(decoded);
        }
    }
    Ok(bytes)
}

/// The second step: the signature in, the certificate checked locally, then verified.
pub fn finish(
    api: &ApiClient,
    output: Output,
    name: &str,
    tbs_path: &Path,
    signature_path: &Path,
    out: Option<PathBuf>,
) -> Result<()> {
    let tbs = std::fs::read(tbs_path)
        .with_context(|| format!("cannot read the to-be-signed file {}", tbs_path.display()))?;
    let signature = read_signature(signature_path)?;
    let der = external_key::certificate_from_tbs(&tbs, &signature)?;
    let pem = iothub_pki::input::der_to_pem(&der);
    let info = iothub_pki::CertInfo::from_der(&der)?;
    let code = match info.common_names.as_slice() {
        [code] => code.clone(),
        _ => bail!(
            "{} holds no verification certificate (its subject has no single CN)",
            tbs_path.display()
        ),
    };
    let current = api.call(Method::GET, &cert_path(name), None, None)?;
    let ca_pem = text(prop(&current, "certificate"));
    let ca_der = iothub_pki::parse_certificate_input(ca_pem.as_bytes(), usize::MAX)?;
    let ca_info = iothub_pki::CertInfo::from_der(&ca_der)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let state = iothub_pki::pop::CodeState::Live {
        code: code.clone(),
        expires_at: now + 60,
    };
    if let Err(e) =
        iothub_pki::pop::verify_proof(name, &ca_info, &state, pem.as_bytes(), usize::MAX, now)
    {
        bail!("the signature does not make a verification certificate the hub accepts: {e}; was it made with the key of '{name}' over {}?", tbs_path.display());
    }
    if let Some(path) = &out {
        crate::files::write_atomic(path, pem.as_bytes(), 0o644)?;
    }
    let v = api.call(
        Method::POST,
        &format!("{}/verify", cert_path(name)),
        Some(&text(&current["etag"])),
        Some(&json!({ "certificate": pem })),
    )?;
    output.answer(&v, || {
        println!(
            "{name}: {}",
            if prop(&v, "isVerified") == &json!(true) {
                "Verified"
            } else {
                "Unverified"
            }
        )
    })
}
