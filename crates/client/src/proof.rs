//! Proof of possession through the API in one step, the CA's key staying on this machine: `iothub
//! cert prove` and the load generator's `cas` (which registers thousands of CAs) both need it, so
//! it lives beside the API client rather than in either of them.

use anyhow::{bail, Result};
use iothub_pki::gen::CaIssuer;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::{segment, unix_now, ApiClient};

fn cert_path(name: &str) -> String {
    format!("/certificates/{}", segment(name))
}

/// A string field of an API answer as the CLI shows it ("-" when absent).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Adds a CA certificate under `name` and proves possession of its key (`issuer`): what
/// `cert add` + `cert prove` do, for callers that register many CAs (`iothub-bench cas`).
pub fn add_and_prove(
    api: &ApiClient,
    name: &str,
    ca_pem: &str,
    issuer: &CaIssuer,
) -> Result<Value> {
    let added = api.call(
        Method::PUT,
        &cert_path(name),
        None,
        Some(&json!({ "properties": { "certificate": ca_pem } })),
    )?;
    prove_with(api, name, ca_pem, &text(&added["etag"]), issuer)
}

/// Fetches a verification code for CA `name` (at `etag`), signs the verification certificate
/// with `issuer` and has the hub verify it; returns the hub's description of the Verified CA.
pub fn prove_with(
    api: &ApiClient,
    name: &str,
    ca_pem: &str,
    etag: &str,
    issuer: &CaIssuer,
) -> Result<Value> {
    let make = |code: &str| -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let cert =
            iothub_pki::gen::make_verification_cert(code, issuer, now, time::Duration::hours(1))?;
        Ok(cert.cert_pem)
    };
    prove_with_signer(api, name, ca_pem, etag, &make)
}

/// [`prove_with`] where `make` builds the verification certificate (PEM) for a code: signed
/// with a key held elsewhere, e.g. in a PKCS#11 module.
pub fn prove_with_signer(
    api: &ApiClient,
    name: &str,
    ca_pem: &str,
    etag: &str,
    make: &dyn Fn(&str) -> Result<String>,
) -> Result<Value> {
    let coded = api.call(
        Method::POST,
        &format!("{}/generateVerificationCode", cert_path(name)),
        Some(etag),
        None,
    )?;
    let code = text(&coded["properties"]["verificationCode"]);
    let verification_pem = make(&code)?;

    // Apply the hub's own rule locally first: a certificate we cannot reproduce exactly (e.g. a CA
    // subject with repeated attribute types) is explained here instead of being refused remotely.
    let ca_der = iothub_pki::parse_certificate_input(ca_pem.as_bytes(), usize::MAX)?;
    let ca_info = iothub_pki::CertInfo::from_der(&ca_der)?;
    let state = iothub_pki::pop::CodeState::Live {
        code: code.clone(),
        expires_at: unix_now() + 60,
    };
    if let Err(e) = iothub_pki::pop::verify_proof(
        name,
        &ca_info,
        &state,
        verification_pem.as_bytes(),
        usize::MAX,
        unix_now(),
    ) {
        bail!(
            "the verification certificate made locally would be refused ({e}); make it with openssl instead (subject CN={code}) and run 'iothub cert verify {name} FILE'"
        );
    }
    let v = api.call(
        Method::POST,
        &format!("{}/verify", cert_path(name)),
        Some(&text(&coded["etag"])),
        Some(&json!({ "certificate": verification_pem })),
    )?;
    Ok(v)
}
