//! How the client commands print the hub's answers, written once for all of them: `-o json` prints
//! the API's JSON as is (for scripts), text output prints fields for people, with whatever a peer
//! may have sent escaped.

use anyhow::Result;
use serde_json::Value;

/// The `-o` choice every command honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints `json` pretty for `-o json`, or runs `text` for people.
    pub fn answer(self, json: &Value, text: impl FnOnce()) -> Result<()> {
        match self {
            Output::Json => print_json(json),
            Output::Text => {
                text();
                Ok(())
            }
        }
    }
}

pub fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A field of an Azure resource, which keeps most of them under `properties`.
pub fn prop<'a>(v: &'a Value, key: &str) -> &'a Value {
    &v["properties"][key]
}

/// A field as data: strings without their quotes, a missing field as `-`.
pub fn text(v: &Value) -> String {
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
pub fn shown(v: &Value) -> String {
    iothub_hub::peer_text::escaped(&text(v)).into_owned()
}

/// The elements of a list answer (the answer itself, or its `value` field); none when the hub
/// sent something else, so text output prints an empty list rather than failing.
pub fn items(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}
