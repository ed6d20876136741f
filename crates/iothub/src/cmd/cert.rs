//! `iothub cert ...`: CA certificates and their proof of possession. Each subcommand is one or a
//! few API calls; the hub decides every rule, this file only sends the request and presents the
//! answer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{items, prop, shown, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Register a CA certificate (PEM or DER file) under NAME; it starts Unverified.
    Add {
        /// The name the hub keeps the certificate under.
        name: String,
        /// The CA certificate: PEM, or binary DER.
        file: PathBuf,
        /// Replace the certificate registered under NAME (resets it to Unverified, unless the
        /// certificate is byte-for-byte the one already registered).
        #[arg(long)]
        replace: bool,
        /// Ask for the CA to be Verified on upload (only if the hub allows it).
        #[arg(long)]
        verified: bool,
    },
    /// List the CA certificates.
    List,
    /// Show one CA certificate.
    Show {
        /// The certificate's name on the hub.
        name: String,
    },
    /// Generate a fresh verification code; prints the code alone.
    Code {
        /// The certificate's name on the hub.
        name: String,
        /// Only if the certificate's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Verify proof of possession with a verification certificate (CN = the code, signed by the CA).
    Verify {
        /// The certificate's name on the hub.
        name: String,
        /// The verification certificate: PEM, or binary DER.
        file: PathBuf,
        /// Only if the certificate's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Prove possession in one step: fetch a code, sign a verification certificate locally with the
    /// CA key (it never leaves this machine), upload it and verify.
    Prove {
        /// The certificate's name on the hub.
        name: String,
        /// The CA's private key (PKCS#8, PKCS#1 or SEC1 PEM).
        #[arg(long, required_unless_present = "pkcs11_module")]
        key: Option<PathBuf>,
        /// Or the CA's key in a PKCS#11 module: it signs there and never leaves it.
        #[command(flatten)]
        pkcs11: crate::cmd::pkcs11::Pkcs11Args,
    },
    /// For a CA key behind a KMS: fetch a code and write the to-be-signed bytes of a
    /// verification certificate, with the commands that sign them (then verification-finish).
    #[command(visible_alias = "verification-csr")]
    VerificationTbs {
        /// The certificate's name on the hub.
        name: String,
        /// Where to write the to-be-signed bytes (DER) [default: NAME.tbs].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Finish a proof begun with verification-tbs: the CA key's signature over the to-be-signed
    /// bytes (DER, raw r||s for ECDSA, or either in base64) makes the verification
    /// certificate, which is checked here, then verified.
    VerificationFinish {
        /// The certificate's name on the hub.
        name: String,
        /// The to-be-signed file verification-tbs wrote.
        #[arg(long)]
        tbs: PathBuf,
        /// The signature file.
        #[arg(long)]
        signature: PathBuf,
        /// Also write the verification certificate (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke the certificate NAME issued with a serial number (a device's, or an
    /// intermediate's): its sessions close at once, on every node, and its next CONNECT is
    /// refused with the reason. Other certificates of the CA are untouched.
    Revoke {
        /// The certificate's name on the hub (the CA that issued the revoked certificate).
        name: String,
        /// The revoked certificate's serial, in hex (`openssl x509 -noout -serial -in FILE`).
        #[arg(long)]
        serial: String,
        /// Why, as RFC 5280 names it: unspecified, keyCompromise, cACompromise,
        /// affiliationChanged, superseded, cessationOfOperation, certificateHold,
        /// privilegeWithdrawn, aACompromise.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the certificates NAME revoked, oldest first (by an operator or by its CRL).
    Revoked {
        /// The certificate's name on the hub.
        name: String,
    },
    /// Upload NAME's certificate revocation list (PEM or DER, e.g. from `openssl ca -gencrl`):
    /// it must be signed by that CA, current, and newer than the one held; its entries replace
    /// the previous CRL's. Without FILE, show the CRL held.
    Crl {
        /// The certificate's name on the hub (the CA that issued the CRL).
        name: String,
        /// The CRL file.
        file: Option<PathBuf>,
    },
    /// Change a CA's settings: auto-registration (a device whose chain ends at this Verified
    /// CA, and whose certificate's CN is its id, is registered at its first CONNECT, which is
    /// admitted), and its device limit.
    Update {
        /// The certificate's name on the hub.
        name: String,
        /// on or off.
        #[arg(long, value_parser = ["on", "off"])]
        auto_register: Option<String>,
        /// The most devices auto-registration through this CA may create [default: 1000, or
        /// the limit already set].
        #[arg(long)]
        auto_register_limit: Option<u64>,
    },
    /// Delete a CA certificate.
    Delete {
        /// The certificate's name on the hub.
        name: String,
        /// Only if the certificate's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
}

pub fn run(target: &HubTarget, output: Output, cmd: CertCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        CertCommand::Add {
            name,
            file,
            replace,
            verified,
        } => add(&api, output, &name, &file, replace, verified),
        CertCommand::List => list(&api, output),
        CertCommand::Show { name } => show(&api, output, &name),
        CertCommand::Code { name, etag } => code(&api, output, &name, etag.as_deref()),
        CertCommand::Verify { name, file, etag } => {
            let certificate = read_certificate_file(&file)?;
            let v = api.call(
                Method::POST,
                &format!("{}/verify", cert_path(&name)),
                etag.as_deref(),
                Some(&json!({ "certificate": certificate })),
            )?;
            output.answer(&v, || println!("{}", summary(&v)))
        }
        CertCommand::VerificationTbs { name, out } => {
            crate::cmd::kms::write_tbs(&api, output, &name, out)
        }
        CertCommand::VerificationFinish {
            name,
            tbs,
            signature,
            out,
        } => crate::cmd::kms::finish(&api, output, &name, &tbs, &signature, out),
        CertCommand::Prove { name, key, pkcs11 } => match key {
            Some(key) => prove(&api, output, &name, &key),
            None => prove_in_module(&api, output, &name, &pkcs11),
        },
        CertCommand::Revoke {
            name,
            serial,
            reason,
        } => {
            let mut body = json!({ "serial": serial });
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let path = format!("{}/revocations", cert_path(&name));
            let v = api.call(Method::POST, &path, None, Some(&body))?;
            output.answer(&v, || {
                println!(
                    "revoked serial {} of {} ({}, since {})",
                    shown(&v["serial"]),
                    shown(&v["certificateName"]),
                    shown(&v["reason"]),
                    shown(&v["revokedAt"])
                )
            })
        }
        CertCommand::Revoked { name } => revoked(&api, output, &name),
        CertCommand::Update {
            name,
            auto_register,
            auto_register_limit,
        } => update(
            &api,
            output,
            &name,
            auto_register.as_deref(),
            auto_register_limit,
        ),
        CertCommand::Crl { name, file } => crl(&api, output, &name, file.as_deref()),
        CertCommand::Delete { name, etag } => {
            api.call(Method::DELETE, &cert_path(&name), etag.as_deref(), None)?;
            output.answer(&json!({ "deleted": name }), || println!("deleted {name}"))
        }
    }
}

fn cert_path(name: &str) -> String {
    format!("/certificates/{}", segment(name))
}

/// One line about a certificate: what `add`, `verify` and `prove` answer with.
fn summary(v: &Value) -> String {
    format!(
        "{}: {} (subject {}, thumbprint {}, expires {})",
        shown(&v["name"]),
        shown(prop(v, "status")),
        shown(prop(v, "subject")),
        shown(prop(v, "thumbprint")),
        shown(prop(v, "expiry"))
    )
}

/// Reads a certificate file: PEM text as is, binary DER as base64 (as Azure's CLI sends it).
fn read_certificate_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    })
}

/// `cert add`: a new name, or with `--replace` the current etag of the name so the hub replaces
/// exactly the certificate just read.
fn add(
    api: &ApiClient,
    output: Output,
    name: &str,
    file: &Path,
    replace: bool,
    verified: bool,
) -> Result<()> {
    let certificate = read_certificate_file(file)?;
    let mut properties = json!({ "certificate": certificate });
    if verified {
        properties["isVerified"] = json!(true);
    }
    let etag = if replace {
        let current = api.call(Method::GET, &cert_path(name), None, None)?;
        Some(text(&current["etag"]))
    } else {
        None
    };
    let v = api.call(
        Method::PUT,
        &cert_path(name),
        etag.as_deref(),
        Some(&json!({ "properties": properties })),
    )?;
    output.answer(&v, || println!("{}", summary(&v)))
}

fn list(api: &ApiClient, output: Output) -> Result<()> {
    let v = api.call(Method::GET, "/certificates", None, None)?;
    output.answer(&v, || {
        let items = items(&v["value"]);
        if items.is_empty() {
            println!("no CA certificates");
            return;
        }
        println!(
            "{:<24} {:<10} {:<40} {:<29} {:<9} SUBJECT",
            "NAME", "STATUS", "THUMBPRINT", "EXPIRY", "DAYS LEFT"
        );
        for c in items {
            // Flagged within the hub's warning window, as the portal's badge.
            let days = days_left(prop(&c, "expiry"));
            let left = match days {
                Some(d) if d < 0 => "EXPIRED".to_string(),
                Some(d) if d < iothub_hub::certificates::EXPIRY_WARNING_DAYS => format!("{d} (!)"),
                Some(d) => d.to_string(),
                None => "-".into(),
            };
            println!(
                "{:<24} {:<10} {:<40} {:<29} {:<9} {}",
                shown(&c["name"]),
                shown(prop(&c, "status")),
                shown(prop(&c, "thumbprint")),
                shown(prop(&c, "expiry")),
                left,
                shown(prop(&c, "subject"))
            );
        }
    })
}

fn update(
    api: &ApiClient,
    output: Output,
    name: &str,
    auto_register: Option<&str>,
    limit: Option<u64>,
) -> Result<()> {
    let path = format!("{}/autoRegistration", cert_path(name));
    let current = api.call(Method::GET, &path, None, None)?;
    let enabled = match auto_register {
        Some(on) => on == "on",
        None if limit.is_some() => true,
        None => anyhow::bail!(
            "nothing to change: give --auto-register on|off and/or --auto-register-limit N"
        ),
    };
    let mut body = json!({ "enabled": enabled });
    if let Some(limit) = limit.or_else(|| current["deviceLimit"].as_u64()) {
        body["deviceLimit"] = json!(limit);
    }
    let v = api.call(Method::PUT, &path, None, Some(&body))?;
    output.answer(&v, || {
        if v["enabled"].as_bool() == Some(true) {
            println!(
                "{}: auto-registration on, {} of at most {} devices registered",
                shown(&v["certificateName"]),
                shown(&v["registered"]),
                shown(&v["deviceLimit"])
            )
        } else {
            println!("{}: auto-registration off", shown(&v["certificateName"]))
        }
    })
}

fn crl(api: &ApiClient, output: Output, name: &str, file: Option<&Path>) -> Result<()> {
    let path = format!("{}/crl", cert_path(name));
    let v = match file {
        Some(file) => {
            // PEM as text; DER as base64 (read_certificate_file does the same for certificates).
            let crl = read_certificate_file(file)?;
            api.call(Method::PUT, &path, None, Some(&json!({ "crl": crl })))?
        }
        None => api.call(Method::GET, &path, None, None)?,
    };
    output.answer(&v, || {
        println!(
            "CRL of {}: thisUpdate {}, nextUpdate {}, number {}, {} revoked",
            shown(&v["certificateName"]),
            shown(&v["thisUpdate"]),
            shown(&v["nextUpdate"]),
            shown(&v["crlNumber"]),
            shown(&v["revoked"])
        )
    })
}

/// Whole days from now until `expiry` (the API's RFC 1123 time, e.g. "Mon, 04 Jan 2027
/// 06:11:50 GMT"); negative once passed.
fn days_left(expiry: &Value) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(expiry.as_str()?, format).ok()?;
    let left = at.assume_utc() - time::OffsetDateTime::now_utc();
    Some(left.whole_seconds().div_euclid(86_400))
}

fn revoked(api: &ApiClient, output: Output, name: &str) -> Result<()> {
    let path = format!("{}/revocations", cert_path(name));
    let v = api.call(Method::GET, &path, None, None)?;
    output.answer(&v, || {
        let items = items(&v["value"]);
        if items.is_empty() {
            println!(
                "{} revoked no certificates",
                iothub_hub::peer_text::escaped(name)
            );
            return;
        }
        println!(
            "{:<42} {:<22} {:<9} REVOKED AT",
            "SERIAL", "REASON", "SOURCE"
        );
        for r in items {
            println!(
                "{:<42} {:<22} {:<9} {}",
                shown(&r["serial"]),
                shown(&r["reason"]),
                shown(&r["source"]),
                shown(&r["revokedAt"])
            );
        }
    })
}

fn show(api: &ApiClient, output: Output, name: &str) -> Result<()> {
    let v = api.call(Method::GET, &cert_path(name), None, None)?;
    output.answer(&v, || {
        println!("name: {}", shown(&v["name"]));
        println!("etag: {}", shown(&v["etag"]));
        for key in [
            "status",
            "subject",
            "issuer",
            "thumbprint",
            "thumbprintSha256",
            "notBefore",
            "expiry",
            "keyAlgorithm",
            "isRoot",
            "pathLengthConstraint",
            "subjectKeyIdentifier",
            "authorityKeyIdentifier",
            "serialNumber",
            "created",
            "updated",
            "verificationCodeExpiry",
        ] {
            println!("{key}: {}", shown(prop(&v, key)));
        }
    })
}

/// `cert code`: the code alone on stdout (so `$(iothub cert code NAME)` is the code), what to do
/// with it on stderr.
fn code(api: &ApiClient, output: Output, name: &str, etag: Option<&str>) -> Result<()> {
    let v = api.call(
        Method::POST,
        &format!("{}/generateVerificationCode", cert_path(name)),
        etag,
        None,
    )?;
    output.answer(&v, || {
        println!("{}", text(prop(&v, "verificationCode")));
        eprintln!(
            "code for '{name}' live until {}; make a certificate with subject CN=<code> signed by the CA's key, then: iothub cert verify {name} <file>",
            shown(prop(&v, "verificationCodeExpiry"))
        );
    })
}

/// `cert prove`: the whole proof of possession in one step, the key staying on this machine.
/// `cert prove --pkcs11-*`: the verification certificate signed inside the module.
fn prove_in_module(
    api: &ApiClient,
    output: Output,
    name: &str,
    args: &crate::cmd::pkcs11::Pkcs11Args,
) -> Result<()> {
    let current = api.call(Method::GET, &cert_path(name), None, None)?;
    let ca_pem = text(prop(&current, "certificate"));
    let ca_der = iothub_pki::parse_certificate_input(ca_pem.as_bytes(), usize::MAX)?;
    let kind = iothub_pki::external_key::external_key_kind(&ca_der)?;
    // Open the module before changing anything on the hub (a wrong PIN leaves no code behind).
    let signer = crate::cmd::pkcs11::Pkcs11Signer::open(args, kind)?;
    let sign = |msg: &[u8]| signer.sign(msg);
    let make = |code: &str| -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let cert = iothub_pki::external_key::make_verification_cert_external(
            code,
            &ca_der,
            &sign,
            now,
            time::Duration::hours(1),
        )
        .context("the module could not sign the verification certificate (is the key the CA's?)")?;
        Ok(cert.cert_pem)
    };
    let v = iothub_client::proof::prove_with_signer(
        api,
        name,
        &ca_pem,
        &text(&current["etag"]),
        &make,
    )?;
    output.answer(&v, || println!("{}", summary(&v)))
}

fn prove(api: &ApiClient, output: Output, name: &str, key_path: &Path) -> Result<()> {
    let key_pem = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let current = api.call(Method::GET, &cert_path(name), None, None)?;
    let ca_pem = text(prop(&current, "certificate"));
    // Check the key against the CA before changing anything on the hub.
    let issuer = iothub_pki::gen::CaIssuer::from_pem(&ca_pem, &key_pem).with_context(|| {
        format!(
            "{} cannot sign for certificate '{name}'",
            key_path.display()
        )
    })?;
    let v = iothub_client::proof::prove_with(api, name, &ca_pem, &text(&current["etag"]), &issuer)?;
    output.answer(&v, || println!("{}", summary(&v)))
}
