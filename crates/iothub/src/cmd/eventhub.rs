//! `iothub consumer-group ...`: the consumer groups of the Event Hubs-compatible endpoint (add,
//! list, delete). Readers name one in their `consumer_group`; `$Default` always exists.

use anyhow::Result;
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::json;

use crate::output::{items, shown, Output};

#[derive(Debug, clap::Subcommand)]
pub enum ConsumerGroupCommand {
    /// Add a consumer group (1 to 50 letters, digits, '.', '-' or '_').
    Add {
        /// The group's name, as readers give it (`consumer_group=`).
        name: String,
    },
    /// List the consumer groups, $Default first.
    List,
    /// Delete a consumer group ($Default cannot be deleted).
    Delete {
        /// The group's name.
        name: String,
    },
}

fn group_path(name: &str) -> String {
    format!("/eventHub/consumerGroups/{}", segment(name))
}

pub fn run(target: &HubTarget, output: Output, cmd: ConsumerGroupCommand) -> Result<()> {
    let api = ApiClient::connect(target)?;
    match cmd {
        ConsumerGroupCommand::Add { name } => {
            let v = api.call(Method::PUT, &group_path(&name), None, None)?;
            output.answer(&v, || {
                println!("added consumer group {}", shown(&v["name"]))
            })
        }
        ConsumerGroupCommand::List => {
            let v = api.call(Method::GET, "/eventHub/consumerGroups", None, None)?;
            output.answer(&v, || {
                println!("{:<52} CREATED", "NAME");
                for g in items(&v) {
                    let created = if g["createdTime"].is_null() {
                        "-".to_string()
                    } else {
                        shown(&g["createdTime"])
                    };
                    println!("{:<52} {created}", shown(&g["name"]));
                }
            })
        }
        ConsumerGroupCommand::Delete { name } => {
            api.call(Method::DELETE, &group_path(&name), None, None)?;
            output.answer(&json!({ "deleted": name }), || {
                println!(
                    "deleted consumer group {}",
                    iothub_hub::peer_text::escaped(&name)
                )
            })
        }
    }
}
