//! The client commands: `cert ...`, `policy ...`, `audit`, `connection-string`, `sas-token`. Each is one or a
//! few API calls; the hub decides every rule, the CLI only presents the answer (text for people,
//! `-o json` for scripts: the API's JSON as is).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{segment, unix_now, ApiClient, HubTarget};
use crate::Output;

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Register a CA certificate (PEM or DER file) under NAME; it starts Unverified.
    Add {
        name: String,
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
    Show { name: String },
    /// Generate a fresh verification code; prints the code alone.
    Code {
        name: String,
        /// Only if the certificate's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Verify proof of possession with a verification certificate (CN = the code, signed by the CA).
    Verify {
        name: String,
        file: PathBuf,
        #[arg(long)]
        etag: Option<String>,
    },
    /// Prove possession in one step: fetch a code, sign a verification certificate locally with the
    /// CA key (it never leaves this machine), upload it and verify.
    Prove {
        name: String,
        /// The CA's private key (PKCS#8, PKCS#1 or SEC1 PEM).
        #[arg(long)]
        key: PathBuf,
    },
    /// Delete a CA certificate.
    Delete {
        name: String,
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Add a shared access policy with fresh keys, or set the rights of an existing one (its keys
    /// stay). The built-in iothubowner keeps every right.
    Add {
        name: String,
        /// Comma-separated rights: RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect.
        #[arg(long)]
        rights: String,
    },
    /// List the policies and their rights (never their keys).
    List,
    /// Show one policy's rights; its keys only with --keys.
    Show {
        name: String,
        /// Print the policy's keys too (they are secrets; owner credential required).
        #[arg(long)]
        keys: bool,
    },
    /// Delete a policy: its keys stop working at once. iothubowner cannot be deleted.
    Delete { name: String },
    /// Replace one key with a new random one: the old key stops working at once.
    Rotate {
        name: String,
        /// Which key to replace.
        #[arg(long, value_parser = ["primary", "secondary"])]
        key: String,
        /// Print the policy's keys after the rotation.
        #[arg(long)]
        keys: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only entries about this certificate.
    #[arg(long)]
    pub certificate: Option<String>,
    /// At most this many entries (1 to 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, clap::Args)]
pub struct ConnectionStringArgs {
    /// A policy other than the connection string's own (its keys are read from the hub).
    #[arg(long)]
    pub policy: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SasTokenArgs {
    /// The policy to sign with [default: the connection string's policy].
    #[arg(long)]
    pub policy: Option<String>,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn prop<'a>(v: &'a Value, key: &str) -> &'a Value {
    &v["properties"][key]
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A field as text output prints it: the hub may be repeating what a device or another client
/// sent (a client id, a refusal reason quoting a username or a certificate name), so control
/// characters are escaped and cannot forge lines or drive the terminal (JSON output escapes them
/// already). Values used as data (PEM, etags, keys) are read with `text`.
fn shown(v: &Value) -> String {
    iothub_hub::peer_text::escaped(&text(v)).into_owned()
}

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
fn read_certificate_file(path: &PathBuf) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    })
}

fn cert_path(name: &str) -> String {
    format!("/certificates/{}", segment(name))
}

pub fn cert(target: &HubTarget, output: Output, cmd: CertCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        CertCommand::Add {
            name,
            file,
            replace,
            verified,
        } => {
            let certificate = read_certificate_file(&file)?;
            let mut properties = json!({ "certificate": certificate });
            if verified {
                properties["isVerified"] = json!(true);
            }
            let etag = if replace {
                let current = api.call(Method::GET, &cert_path(&name), None, None)?;
                Some(text(&current["etag"]))
            } else {
                None
            };
            let v = api.call(
                Method::PUT,
                &cert_path(&name),
                etag.as_deref(),
                Some(&json!({ "properties": properties })),
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!("{}", summary(&v));
                    Ok(())
                }
            }
        }
        CertCommand::List => {
            let v = api.call(Method::GET, "/certificates", None, None)?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    let items = v["value"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        println!("no CA certificates");
                    } else {
                        println!(
                            "{:<24} {:<10} {:<40} {:<29} SUBJECT",
                            "NAME", "STATUS", "THUMBPRINT", "EXPIRY"
                        );
                        for c in items {
                            println!(
                                "{:<24} {:<10} {:<40} {:<29} {}",
                                shown(&c["name"]),
                                shown(prop(&c, "status")),
                                shown(prop(&c, "thumbprint")),
                                shown(prop(&c, "expiry")),
                                shown(prop(&c, "subject"))
                            );
                        }
                    }
                    Ok(())
                }
            }
        }
        CertCommand::Show { name } => {
            let v = api.call(Method::GET, &cert_path(&name), None, None)?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
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
                    Ok(())
                }
            }
        }
        CertCommand::Code { name, etag } => {
            let v = api.call(
                Method::POST,
                &format!("{}/generateVerificationCode", cert_path(&name)),
                etag.as_deref(),
                None,
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!("{}", text(prop(&v, "verificationCode")));
                    eprintln!(
                        "code for '{name}' live until {}; make a certificate with subject CN=<code> signed by the CA's key, then: iothub cert verify {name} <file>",
                        shown(prop(&v, "verificationCodeExpiry"))
                    );
                    Ok(())
                }
            }
        }
        CertCommand::Verify { name, file, etag } => {
            let certificate = read_certificate_file(&file)?;
            let v = api.call(
                Method::POST,
                &format!("{}/verify", cert_path(&name)),
                etag.as_deref(),
                Some(&json!({ "certificate": certificate })),
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!("{}", summary(&v));
                    Ok(())
                }
            }
        }
        CertCommand::Prove { name, key } => prove(&api, output, &name, &key),
        CertCommand::Delete { name, etag } => {
            api.call(Method::DELETE, &cert_path(&name), etag.as_deref(), None)?;
            match output {
                Output::Json => print_json(&json!({ "deleted": name })),
                Output::Text => {
                    println!("deleted {name}");
                    Ok(())
                }
            }
        }
    }
}

/// `cert prove`: the whole proof of possession in one step, the key staying on this machine.
fn prove(api: &ApiClient, output: Output, name: &str, key_path: &PathBuf) -> Result<()> {
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
    match output {
        Output::Json => print_json(&v),
        Output::Text => {
            println!("{}", summary(&v));
            Ok(())
        }
    }
}

pub fn audit(target: &HubTarget, output: Output, args: AuditArgs) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let mut path = format!("/audit?limit={}", args.limit);
    if let Some(c) = &args.certificate {
        path.push_str(&format!("&target={}", segment(&format!("certificate/{c}"))));
    }
    let v = api.call(Method::GET, &path, None, None)?;
    match output {
        Output::Json => print_json(&v),
        Output::Text => {
            for e in v["value"].as_array().cloned().unwrap_or_default() {
                let code = match &e["code"] {
                    Value::String(c) => format!(" [{c}]"),
                    _ => String::new(),
                };
                println!(
                    "{}  {:<12} {:<38} {:<24} {}{}: {}",
                    shown(&e["time"]),
                    shown(&e["actor"]),
                    shown(&e["action"]),
                    shown(&e["target"]),
                    shown(&e["outcome"]),
                    code,
                    shown(&e["detail"])
                );
            }
            Ok(())
        }
    }
}

fn policy_path(name: &str) -> String {
    format!("/policies/{}", segment(name))
}

fn print_policy(v: &Value, keys: bool) {
    println!("name: {}", text(&v["keyName"]));
    println!("rights: {}", text(&v["rights"]));
    if keys {
        println!("primaryKey: {}", text(&v["primaryKey"]));
        println!("secondaryKey: {}", text(&v["secondaryKey"]));
    }
}

/// Keeps the value of a policy answer that is to be shown: without keys unless asked.
fn shown_policy(mut v: Value, keys: bool) -> Value {
    if !keys {
        if let Some(o) = v.as_object_mut() {
            o.remove("primaryKey");
            o.remove("secondaryKey");
        }
    }
    v
}

pub fn policy(target: &HubTarget, output: Output, cmd: PolicyCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        PolicyCommand::Add { name, rights } => {
            let v = api.call(
                Method::PUT,
                &policy_path(&name),
                None,
                Some(&json!({ "rights": rights })),
            )?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    print_policy(&v, false);
                    eprintln!("keys: iothub policy show {name} --keys");
                    Ok(())
                }
            }
        }
        PolicyCommand::List => {
            let v = api.call(Method::GET, "/policies", None, None)?;
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    println!("{:<24} RIGHTS", "NAME");
                    for p in v["value"].as_array().cloned().unwrap_or_default() {
                        println!("{:<24} {}", text(&p["keyName"]), text(&p["rights"]));
                    }
                    Ok(())
                }
            }
        }
        PolicyCommand::Show { name, keys } => {
            let v = if keys {
                api.call(
                    Method::POST,
                    &format!("{}/listKeys", policy_path(&name)),
                    None,
                    None,
                )?
            } else {
                api.call(Method::GET, &policy_path(&name), None, None)?
            };
            match output {
                Output::Json => print_json(&v),
                Output::Text => {
                    print_policy(&v, keys);
                    Ok(())
                }
            }
        }
        PolicyCommand::Delete { name } => {
            api.call(Method::DELETE, &policy_path(&name), None, None)?;
            match output {
                Output::Json => print_json(&json!({ "deleted": name })),
                Output::Text => {
                    println!("deleted {name}");
                    Ok(())
                }
            }
        }
        PolicyCommand::Rotate { name, key, keys } => {
            let v = api.call(
                Method::POST,
                &format!("{}/rotateKey", policy_path(&name)),
                None,
                Some(&json!({ "key": key })),
            )?;
            follow_own_rotation(target, &name, &key, &v)?;
            match output {
                Output::Json => print_json(&shown_policy(v, keys)),
                Output::Text => {
                    println!("rotated the {key} key of {name}; the old one no longer works");
                    if keys {
                        print_policy(&v, true);
                    }
                    Ok(())
                }
            }
        }
    }
}

/// When the key this CLI signed with was the one just replaced, the local connection string
/// (DATA/connection-string) gets the new key, so that the next command still reaches the hub; a
/// connection string given with --hub cannot be updated, so the operator is told.
fn follow_own_rotation(target: &HubTarget, name: &str, slot: &str, answer: &Value) -> Result<()> {
    let conn = target.connection()?;
    let (primary, secondary) = (text(&answer["primaryKey"]), text(&answer["secondaryKey"]));
    if conn.policy != name || conn.key == primary || conn.key == secondary {
        return Ok(());
    }
    let new_key = if slot == "secondary" {
        secondary
    } else {
        primary
    };
    if target.connection_string.is_some() {
        eprintln!(
            "note: the connection string given with --hub / IOTHUB_CONNECTION_STRING used the key just replaced and no longer works; read the new key with 'iothub policy show {name} --keys' (with another owner credential)"
        );
        return Ok(());
    }
    let path = target.data.join(iothub_client::layout::CONNECTION_STRING);
    let updated = format!(
        "HostName={};SharedAccessKeyName={};SharedAccessKey={new_key}\n",
        conn.host_name, conn.policy
    );
    crate::files::write_atomic(&path, updated.as_bytes(), 0o600)?;
    eprintln!("{} now holds the new {slot} key of {name}", path.display());
    Ok(())
}

fn policy_key(target: &HubTarget, policy: &str) -> Result<String> {
    let api = ApiClient::connect(target)?;
    let v = api.call(
        Method::POST,
        &format!("/policies/{}/listKeys", segment(policy)),
        None,
        None,
    )?;
    Ok(text(&v["primaryKey"]))
}

pub fn connection_string(
    target: &HubTarget,
    output: Output,
    args: ConnectionStringArgs,
) -> Result<()> {
    let conn = target.connection()?;
    let (policy, key) = match args.policy {
        Some(p) if p != conn.policy => {
            let key = policy_key(target, &p)?;
            (p, key)
        }
        _ => (conn.policy.clone(), conn.key.clone()),
    };
    let s = format!(
        "HostName={};SharedAccessKeyName={policy};SharedAccessKey={key}",
        conn.host_name
    );
    match output {
        Output::Json => print_json(&json!({ "connectionString": s })),
        Output::Text => {
            println!("{s}");
            Ok(())
        }
    }
}

pub fn sas_token(target: &HubTarget, output: Output, args: SasTokenArgs) -> Result<()> {
    if !(1..=365 * 24 * 3600).contains(&args.ttl) {
        bail!("--ttl is {} seconds; expected 1 to 31536000", args.ttl);
    }
    let mut conn = target.connection()?;
    if let Some(p) = args.policy {
        if p != conn.policy {
            conn.key = policy_key(target, &p)?;
            conn.policy = p;
        }
    }
    let token = conn.token(args.ttl)?;
    match output {
        Output::Json => print_json(&json!({ "sas": token, "expiry": unix_now() + args.ttl })),
        Output::Text => {
            println!("{token}");
            Ok(())
        }
    }
}

/// `portal-link`: asks the hub for a single-use login link (owner credential required).
pub fn portal_link(target: &HubTarget, output: Output) -> Result<()> {
    let api = ApiClient::connect(target)?;
    let v = api.call(Method::POST, "/portal-links", None, None)?;
    let host = target.connection()?.host_name;
    let url = format!("https://{host}{}", text(&v["path"]));
    match output {
        Output::Json => {
            print_json(&json!({ "url": url, "expiresInSeconds": v["expiresInSeconds"] }))
        }
        Output::Text => {
            println!("{url}");
            eprintln!("single use, valid for {} s", text(&v["expiresInSeconds"]));
            Ok(())
        }
    }
}
