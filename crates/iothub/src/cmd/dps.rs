//! `iothub dps ...`: the provisioning service. The hub's ID scope, enrollment groups (bound to a
//! Verified CA), individual enrollments (by certificate), and the registrations made through
//! them. Devices then register with the Azure device SDK's `ProvisioningDeviceClient` on the
//! hub's MQTT port.

use std::path::PathBuf;

use anyhow::{Context, Result};
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{items, shown, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum DpsCommand {
    /// Print the hub's ID scope (what ProvisioningDeviceClient's id_scope must be).
    IdScope,
    /// Enrollment groups: every device whose chain ends at a Verified CA.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Individual enrollments: one device, by its certificate.
    #[command(subcommand)]
    Individual(IndividualCommand),
    /// The registrations made through the provisioning service.
    Registrations,
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Add an enrollment group bound to a Verified CA (root or intermediate).
    Add {
        /// The group's name.
        name: String,
        /// The CA (as named in `iothub cert list`) its devices' chains must end at.
        #[arg(long)]
        ca: String,
        /// A JSON file with the twin a device starts with:
        /// {"tags": {...}, "properties": {"desired": {...}}}.
        #[arg(long, value_name = "FILE")]
        initial_twin: Option<PathBuf>,
        /// Add it disabled (registrations through it are refused until it is enabled).
        #[arg(long)]
        disabled: bool,
    },
    /// List the enrollment groups.
    List,
    /// Show one enrollment group.
    Show {
        /// The group's name.
        name: String,
    },
    /// Delete an enrollment group (devices registered through it stay).
    Delete {
        /// The group's name.
        name: String,
    },
    /// Refuse registrations through a group until it is enabled again.
    Disable {
        /// The group's name.
        name: String,
    },
    /// Accept registrations through a group again.
    Enable {
        /// The group's name.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum IndividualCommand {
    /// Enroll one device by its certificate (its CN must be the registration id).
    Add {
        /// The registration id (the certificate's CN; it becomes the device id).
        registration_id: String,
        /// The device's certificate (PEM or DER).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// A JSON file with the twin the device starts with.
        #[arg(long, value_name = "FILE")]
        initial_twin: Option<PathBuf>,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List the individual enrollments.
    List,
    /// Show one individual enrollment.
    Show {
        /// The registration id.
        registration_id: String,
    },
    /// Delete an individual enrollment (a device registered through it stays).
    Delete {
        /// The registration id.
        registration_id: String,
    },
    /// Refuse this device's registration until it is enabled again.
    Disable {
        /// The registration id.
        registration_id: String,
    },
    /// Accept this device's registration again.
    Enable {
        /// The registration id.
        registration_id: String,
    },
}

fn read_twin(path: Option<&PathBuf>) -> Result<Option<Value>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the initial twin {}", path.display()))?;
    let twin =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(Some(twin))
}

fn status(disabled: bool) -> &'static str {
    if disabled {
        "disabled"
    } else {
        "enabled"
    }
}

fn print_enrollment(v: &Value) {
    if v["enrollmentGroupId"].is_null() {
        println!("registration id: {}", shown(&v["registrationId"]));
        let info = &v["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
        println!(
            "certificate: {} (SHA-256 {})",
            shown(&info["subjectName"]),
            text(&info["sha256Thumbprint"])
        );
        println!("not after: {}", text(&info["notAfterUtc"]));
    } else {
        println!("group: {}", shown(&v["enrollmentGroupId"]));
        println!(
            "CA: {}",
            shown(&v["attestation"]["x509"]["caReferences"]["primary"])
        );
    }
    println!("status: {}", text(&v["provisioningStatus"]));
    println!("initial twin: {}", v["initialTwin"]);
    println!("etag: {}", text(&v["etag"]));
}

/// Creates an enrollment at `path` with this x509 attestation, initial twin file and status.
fn put_new(
    api: &ApiClient,
    path: &str,
    x509: Value,
    initial_twin: Option<&PathBuf>,
    disabled: bool,
) -> Result<Value> {
    let mut body = json!({
        "attestation": { "type": "x509", "x509": x509 },
        "provisioningStatus": status(disabled),
    });
    if let Some(twin) = read_twin(initial_twin)? {
        body["initialTwin"] = twin;
    }
    api.call(Method::PUT, path, None, Some(&body))
}

/// Sets an enrollment's provisioningStatus: read it, then replace it under its etag.
fn set_status(api: &ApiClient, path: &str, enabled: bool) -> Result<Value> {
    let mut v = api.call(Method::GET, path, None, None)?;
    let etag = text(&v["etag"]);
    v["provisioningStatus"] = json!(status(!enabled));
    api.call(Method::PUT, path, Some(&etag), Some(&v))
}

pub fn run(target: &HubTarget, output: Output, cmd: DpsCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        DpsCommand::IdScope => {
            let v = api.call(Method::GET, "/provisioning", None, None)?;
            output.answer(&v, || println!("{}", text(&v["idScope"])))
        }
        DpsCommand::Group(c) => group(&api, output, c),
        DpsCommand::Individual(c) => individual(&api, output, c),
        DpsCommand::Registrations => {
            let v = api.call(Method::GET, "/registrations", None, None)?;
            output.answer(&v, || {
                println!(
                    "{:<32} {:<32} {:<40} LAST",
                    "REGISTRATION", "DEVICE", "ENROLLMENT"
                );
                for r in items(&v["value"]) {
                    let e = &r["enrollment"];
                    println!(
                        "{:<32} {:<32} {:<40} {}",
                        shown(&r["registrationId"]),
                        shown(&r["deviceId"]),
                        format!("{} {}", text(&e["kind"]), shown(&e["name"])),
                        text(&r["lastUpdatedDateTimeUtc"])
                    );
                }
            })
        }
    }
}

fn group(api: &ApiClient, output: Output, cmd: GroupCommand) -> Result<()> {
    let path = |name: &str| format!("/enrollmentGroups/{}", segment(name));
    match cmd {
        GroupCommand::Add {
            name,
            ca,
            initial_twin,
            disabled,
        } => {
            let x509 = json!({ "caReferences": { "primary": ca } });
            let v = put_new(api, &path(&name), x509, initial_twin.as_ref(), disabled)?;
            output.answer(&v, || print_enrollment(&v))
        }
        GroupCommand::List => {
            let v = api.call(Method::GET, "/enrollmentGroups", None, None)?;
            output.answer(&v, || {
                println!("{:<32} {:<24} STATUS", "GROUP", "CA");
                for g in items(&v["value"]) {
                    println!(
                        "{:<32} {:<24} {}",
                        shown(&g["enrollmentGroupId"]),
                        shown(&g["attestation"]["x509"]["caReferences"]["primary"]),
                        text(&g["provisioningStatus"])
                    );
                }
            })
        }
        GroupCommand::Show { name } => {
            let v = api.call(Method::GET, &path(&name), None, None)?;
            output.answer(&v, || print_enrollment(&v))
        }
        GroupCommand::Delete { name } => {
            api.call(Method::DELETE, &path(&name), None, None)?;
            output.answer(&json!({ "deleted": name }), || println!("deleted {name}"))
        }
        GroupCommand::Disable { name } => {
            let v = set_status(api, &path(&name), false)?;
            output.answer(&v, || {
                println!("{name} is disabled: registrations through it are refused")
            })
        }
        GroupCommand::Enable { name } => {
            let v = set_status(api, &path(&name), true)?;
            output.answer(&v, || println!("{name} is enabled"))
        }
    }
}

fn individual(api: &ApiClient, output: Output, cmd: IndividualCommand) -> Result<()> {
    let path = |id: &str| format!("/enrollments/{}", segment(id));
    match cmd {
        IndividualCommand::Add {
            registration_id,
            cert,
            initial_twin,
            disabled,
        } => {
            let bytes = std::fs::read(&cert)
                .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
            // PEM as it is; DER as base64, which the hub also reads.
            let certificate = match String::from_utf8(bytes.clone()) {
                Ok(text) if text.contains("-----BEGIN") => text,
                _ => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                }
            };
            let x509 =
                json!({ "clientCertificates": { "primary": { "certificate": certificate } } });
            let v = put_new(
                api,
                &path(&registration_id),
                x509,
                initial_twin.as_ref(),
                disabled,
            )?;
            output.answer(&v, || print_enrollment(&v))
        }
        IndividualCommand::List => {
            let v = api.call(Method::GET, "/enrollments", None, None)?;
            output.answer(&v, || {
                println!(
                    "{:<32} {:<66} STATUS",
                    "REGISTRATION", "CERTIFICATE (SHA-256)"
                );
                for e in items(&v["value"]) {
                    let info = &e["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
                    println!(
                        "{:<32} {:<66} {}",
                        shown(&e["registrationId"]),
                        text(&info["sha256Thumbprint"]),
                        text(&e["provisioningStatus"])
                    );
                }
            })
        }
        IndividualCommand::Show { registration_id } => {
            let v = api.call(Method::GET, &path(&registration_id), None, None)?;
            output.answer(&v, || print_enrollment(&v))
        }
        IndividualCommand::Delete { registration_id } => {
            api.call(Method::DELETE, &path(&registration_id), None, None)?;
            output.answer(&json!({ "deleted": registration_id }), || {
                println!("deleted {registration_id}")
            })
        }
        IndividualCommand::Disable { registration_id } => {
            let v = set_status(api, &path(&registration_id), false)?;
            output.answer(&v, || {
                println!("{registration_id} is disabled: its registration is refused")
            })
        }
        IndividualCommand::Enable { registration_id } => {
            let v = set_status(api, &path(&registration_id), true)?;
            output.answer(&v, || println!("{registration_id} is enabled"))
        }
    }
}
