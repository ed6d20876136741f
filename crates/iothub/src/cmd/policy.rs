//! `iothub policy ...`: shared access policies (add with chosen rights, list, show, delete, rotate
//! a key), and keeping the local connection string working when its own key is rotated.

use anyhow::Result;
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{items, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Add a shared access policy with fresh keys, or set the rights of an existing one (its keys
    /// stay). The built-in iothubowner keeps every right.
    Add {
        /// The policy's name (the SharedAccessKeyName of its connection strings).
        name: String,
        /// Comma-separated rights: RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect.
        #[arg(long)]
        rights: String,
    },
    /// List the policies and their rights (never their keys).
    List,
    /// Show one policy's rights; its keys only with --keys.
    Show {
        /// The policy's name.
        name: String,
        /// Print the policy's keys too (they are secrets; owner credential required).
        #[arg(long)]
        keys: bool,
    },
    /// Delete a policy: its keys stop working at once. iothubowner cannot be deleted.
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Replace one key with a new random one: the old key stops working at once.
    Rotate {
        /// The policy's name.
        name: String,
        /// Which key to replace.
        #[arg(long, value_parser = ["primary", "secondary"])]
        key: String,
        /// Print the policy's keys after the rotation.
        #[arg(long)]
        keys: bool,
    },
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

pub fn run(target: &HubTarget, output: Output, cmd: PolicyCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        PolicyCommand::Add { name, rights } => {
            let v = api.call(
                Method::PUT,
                &policy_path(&name),
                None,
                Some(&json!({ "rights": rights })),
            )?;
            output.answer(&v, || {
                print_policy(&v, false);
                eprintln!("keys: iothub policy show {name} --keys");
            })
        }
        PolicyCommand::List => {
            let v = api.call(Method::GET, "/policies", None, None)?;
            output.answer(&v, || {
                println!("{:<24} RIGHTS", "NAME");
                for p in items(&v["value"]) {
                    println!("{:<24} {}", text(&p["keyName"]), text(&p["rights"]));
                }
            })
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
            output.answer(&v, || print_policy(&v, keys))
        }
        PolicyCommand::Delete { name } => {
            api.call(Method::DELETE, &policy_path(&name), None, None)?;
            output.answer(&json!({ "deleted": name }), || println!("deleted {name}"))
        }
        PolicyCommand::Rotate { name, key, keys } => {
            let v = api.call(
                Method::POST,
                &format!("{}/rotateKey", policy_path(&name)),
                None,
                Some(&json!({ "key": key })),
            )?;
            follow_own_rotation(target, &name, &key, &v)?;
            output.answer(&shown_policy(v.clone(), keys), || {
                println!("rotated the {key} key of {name}; the old one no longer works");
                if keys {
                    print_policy(&v, true);
                }
            })
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
