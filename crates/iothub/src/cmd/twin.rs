//! `iothub twin ...` and `iothub method invoke`: a device's twin (show, update its desired
//! properties and tags) and its direct methods, through the Azure-shaped `/twins/{id}` routes, so
//! `-o json` prints what `az iot hub device-twin show/update` and `az iot hub invoke-device-method`
//! print.

use anyhow::{anyhow, Result};
use iothub_client::{segment, ApiClient, HubTarget};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::output::{shown, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum TwinCommand {
    /// A device's twin: tags, desired and reported properties, version and etag.
    Show {
        /// The device id.
        id: String,
    },
    /// Merge a patch into a device's twin (a property set to null is removed).
    Update {
        /// The device id.
        id: String,
        /// Desired properties to merge, as a JSON object.
        #[arg(long, value_name = "JSON")]
        desired: Option<String>,
        /// Tags to merge, as a JSON object.
        #[arg(long, value_name = "JSON")]
        tags: Option<String>,
        /// Update only if the twin still has this etag (If-Match); refused (412) otherwise.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum MethodCommand {
    /// Call a direct method on a connected device and print its status and payload.
    Invoke {
        /// The device id.
        id: String,
        /// The method name.
        name: String,
        /// The method's payload, as JSON [default: null].
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Seconds to wait for the device's answer (the hub takes 5 to 300) [default: 30].
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
}

fn twin_path(id: &str) -> String {
    format!("/twins/{}", segment(id))
}

/// A JSON argument, or an error naming its flag (a shell quoting slip is the usual cause).
fn json_arg(flag: &str, value: &str) -> Result<Value> {
    serde_json::from_str(value).map_err(|e| anyhow!("{flag} is not valid JSON ({e}): {value}"))
}

/// A JSON argument that must be an object (what a twin section is).
fn object_arg(flag: &str, value: &str) -> Result<Value> {
    let v = json_arg(flag, value)?;
    if !v.is_object() {
        return Err(anyhow!("{flag} must be a JSON object, got: {value}"));
    }
    Ok(v)
}

/// The body of a twin PATCH: only the sections given, so the others are left as they are.
fn twin_patch(desired: Option<&str>, tags: Option<&str>) -> Result<Value> {
    let mut patch = Map::new();
    if let Some(t) = tags {
        patch.insert("tags".into(), object_arg("--tags", t)?);
    }
    if let Some(d) = desired {
        patch.insert(
            "properties".into(),
            json!({ "desired": object_arg("--desired", d)? }),
        );
    }
    if patch.is_empty() {
        return Err(anyhow!("nothing to update: give --desired and/or --tags"));
    }
    Ok(Value::Object(patch))
}

pub fn run(target: &HubTarget, output: Output, cmd: TwinCommand) -> Result<()> {
    match cmd {
        TwinCommand::Show { id } => {
            let api = ApiClient::connect(target)?;
            let v = api.call(Method::GET, &twin_path(&id), None, None)?;
            output.answer(&v, || print_twin(&v))
        }
        TwinCommand::Update {
            id,
            desired,
            tags,
            etag,
        } => {
            // The arguments are checked before any connection, so a typo costs no round trip.
            let patch = twin_patch(desired.as_deref(), tags.as_deref())?;
            let api = ApiClient::connect(target)?;
            let v = api.call(
                Method::PATCH,
                &twin_path(&id),
                etag.as_deref(),
                Some(&patch),
            )?;
            output.answer(&v, || print_twin(&v))
        }
    }
}

/// A JSON section of a twin for people: pretty JSON with its strings escaped (the device wrote
/// the reported properties, another client the rest).
fn section(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    iothub_hub::peer_text::escaped(&pretty).into_owned()
}

/// A property section without its `$metadata` (per-property timestamps): `-o json` keeps it,
/// for people it would bury the values.
fn properties(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("$metadata");
    }
    section(&v)
}

fn print_twin(v: &Value) {
    println!("device:   {}", shown(&v["deviceId"]));
    println!("status:   {}", shown(&v["status"]));
    println!("state:    {}", shown(&v["connectionState"]));
    println!("version:  {}", shown(&v["version"]));
    // The etag is data a user passes back with --etag, printed as the hub sent it.
    println!("etag:     {}", text(&v["etag"]));
    println!("tags:     {}", section(&v["tags"]));
    println!("desired:  {}", properties(&v["properties"]["desired"]));
    println!("reported: {}", properties(&v["properties"]["reported"]));
}

pub fn method(target: &HubTarget, output: Output, cmd: MethodCommand) -> Result<()> {
    let MethodCommand::Invoke {
        id,
        name,
        payload,
        timeout,
    } = cmd;
    let payload = match payload {
        Some(p) => json_arg("--payload", &p)?,
        None => Value::Null,
    };
    let mut body = json!({ "methodName": name, "payload": payload });
    if let Some(t) = timeout {
        body["responseTimeoutInSeconds"] = json!(t);
    }
    // The hub may wait up to 300 s for the device, so the HTTPS request gets that and a margin
    // rather than the CLI's usual 60 s.
    let wait = timeout.unwrap_or(30).clamp(5, 300) + 30;
    let api = ApiClient::connect_with_timeout(target, Some(std::time::Duration::from_secs(wait)))?;
    let v = api.call(
        Method::POST,
        &format!("{}/methods", twin_path(&id)),
        None,
        Some(&body),
    )?;
    output.answer(&v, || {
        println!("status:  {}", shown(&v["status"]));
        println!("payload: {}", section(&v["payload"]));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_holds_only_the_sections_given() {
        assert_eq!(
            twin_patch(Some(r#"{"fan":1}"#), None).unwrap(),
            json!({ "properties": { "desired": { "fan": 1 } } })
        );
        assert_eq!(
            twin_patch(None, Some(r#"{"site":"a"}"#)).unwrap(),
            json!({ "tags": { "site": "a" } })
        );
        assert!(twin_patch(None, None).is_err());
    }

    #[test]
    fn bad_json_names_its_flag() {
        let e = twin_patch(Some("{fan:1}"), None).unwrap_err().to_string();
        assert!(e.starts_with("--desired is not valid JSON"), "{e}");
        let e = twin_patch(None, Some("[1]")).unwrap_err().to_string();
        assert!(e.starts_with("--tags must be a JSON object"), "{e}");
        let e = json_arg("--payload", "nope").unwrap_err().to_string();
        assert!(e.starts_with("--payload is not valid JSON"), "{e}");
    }
}
