//! Device twins, as Azure IoT Hub keeps them: `tags` (service only), `properties.desired` (service
//! writes, device reads and is notified) and `properties.reported` (device writes), each section
//! with `$version` and `$metadata` (`$lastUpdated` per property), a twin etag, and a size limit of
//! 32 KiB per section. Patches merge (JSON merge patch: `null` deletes a key). A desired change
//! reaches the device's live session at once; a reconnecting device catches up with a twin GET.
//!
//! Owns no in-memory state: twins are the store's. Asks of others: sessions (is the device
//! connected; desired patches signalled to its session), activity (last activity in the twin).

use serde_json::{json, Map, Value};

use iothub_pki::device_id::validate_device_id;
use iothub_store::{StoreError, TwinRecord};

use crate::auth::{encode_etag, IfMatch, Principal, Right};
use crate::metrics::TwinSide;
use crate::sessions::SessionSignal;
use crate::{Hub, HubError};

/// The largest section (tags, desired or reported), serialized, as Azure allows.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
/// The deepest nesting of a twin document Azure allows.
pub const MAX_DEPTH: usize = 10;

fn parse(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Applies a JSON merge patch to `target`; `$`-prefixed keys of the patch are ignored. Returns the
/// top-level keys that changed.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Vec<String> {
    let mut changed = Vec::new();
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                if target.remove(k).is_some() {
                    changed.push(k.clone());
                }
            }
            Value::Object(p) => {
                let entry = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(t) = entry {
                    merge(t, p);
                }
                changed.push(k.clone());
            }
            other => {
                if target.get(k) != Some(other) {
                    target.insert(k.clone(), other.clone());
                    changed.push(k.clone());
                }
            }
        }
    }
    changed
}

fn check_section(name: &str, section: &Map<String, Value>) -> Result<(), HubError> {
    let text = serde_json::to_string(section).unwrap_or_default();
    if text.len() > MAX_SECTION_BYTES {
        return Err(HubError::TwinInvalid(format!(
            "the twin's {name} would be {} bytes; at most {MAX_SECTION_BYTES} bytes are allowed",
            text.len()
        )));
    }
    let d = depth(&Value::Object(section.clone()));
    if d > MAX_DEPTH {
        return Err(HubError::TwinInvalid(format!(
            "the twin's {name} is nested {d} levels deep; at most {MAX_DEPTH} are allowed"
        )));
    }
    Ok(())
}

fn touch_metadata(
    meta: &mut Map<String, Value>,
    keys: &[String],
    section: &Map<String, Value>,
    version: i64,
    now: &str,
) {
    for k in keys {
        if section.contains_key(k) {
            meta.insert(
                k.clone(),
                json!({ "$lastUpdated": now, "$lastUpdatedVersion": version }),
            );
        } else {
            meta.remove(k);
        }
    }
    meta.insert("$lastUpdated".into(), Value::String(now.to_string()));
}

fn section_with_meta(section: &str, meta: &str, version: i64) -> Value {
    let mut m = parse(section);
    m.insert("$metadata".into(), Value::Object(parse(meta)));
    m.insert("$version".into(), json!(version));
    Value::Object(m)
}

/// Twin metadata times are RFC 3339, like every other time the hub shows.
fn iso(t: i64) -> String {
    iothub_pki::pop::format_time(t)
}

/// A service's twin update body: a JSON object that does not write reported properties (those
/// belong to the device).
fn service_twin_patch(body: &Value) -> Result<&Map<String, Value>, HubError> {
    let body = body
        .as_object()
        .ok_or_else(|| HubError::TwinInvalid("the twin must be a JSON object".into()))?;
    if let Some(Value::Object(p)) = body.get("properties") {
        if p.contains_key("reported") {
            return Err(HubError::TwinInvalid(
                "reported properties are written by the device, not by the service".into(),
            ));
        }
    }
    Ok(body)
}

/// An enrollment's initial twin, checked: a JSON object with at most `tags` (an object) and
/// `properties.desired` (an object), each within the twin limits. Returns the document as it is
/// kept: `{"tags": {...}, "properties": {"desired": {...}}}`.
pub(crate) fn check_initial_twin(twin: &Value) -> Result<Value, HubError> {
    let bad = |what: &str| {
        HubError::TwinInvalid(format!(
            "the initial twin {what}; expected {{\"tags\": {{...}}, \"properties\": {{\"desired\": {{...}}}}}}"
        ))
    };
    let doc = twin
        .as_object()
        .ok_or_else(|| bad("is not a JSON object"))?;
    let section = |v: Option<&Value>, name: &str| -> Result<Map<String, Value>, HubError> {
        match v {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(bad(&format!("has {name} that is not an object"))),
        }
    };
    let mut desired = Map::new();
    for (key, value) in doc {
        match key.as_str() {
            "tags" => {}
            "properties" => {
                let props = value
                    .as_object()
                    .ok_or_else(|| bad("has properties that are not an object"))?;
                if let Some(other) = props.keys().find(|k| *k != "desired") {
                    return Err(bad(&format!(
                        "sets properties.{other} (only desired properties can be set)"
                    )));
                }
                desired = section(props.get("desired"), "properties.desired")?;
            }
            other => return Err(bad(&format!("has a field '{other}'"))),
        }
    }
    let tags = section(doc.get("tags"), "tags")?;
    check_section("tags", &tags)?;
    check_section("desired properties", &desired)?;
    Ok(json!({ "tags": tags, "properties": { "desired": desired } }))
}

/// The twin of a device registered through an enrollment whose initial twin is `initial` (as
/// [`check_initial_twin`] keeps it), written at time `now`.
pub(crate) fn initial_twin_record(device_id: &str, initial: &str, now: i64) -> TwinRecord {
    let doc: Value = serde_json::from_str(initial).unwrap_or(Value::Null);
    let tags = doc.get("tags").cloned().unwrap_or_else(|| json!({}));
    let desired = doc
        .pointer("/properties/desired")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut twin = TwinRecord::empty(device_id);
    twin.tags = tags.to_string();
    if !desired.is_empty() {
        let mut meta = Map::new();
        let keys: Vec<String> = desired.keys().cloned().collect();
        touch_metadata(&mut meta, &keys, &desired, 1, &iso(now));
        twin.desired_metadata = Value::Object(meta).to_string();
        twin.desired = Value::Object(desired).to_string();
    }
    twin
}

/// The etag the twin write is conditional on: the caller's If-Match, or the twin just read.
fn expected_twin_etag(
    id: &str,
    current: &TwinRecord,
    if_match: Option<&IfMatch>,
) -> Result<Option<u64>, HubError> {
    match if_match {
        Some(IfMatch::Etag(given)) => match crate::auth::decode_etag(given) {
            Some(e) => Ok(Some(e)),
            None => Err(HubError::DeviceEtagMismatch {
                name: format!("twin of {id}"),
                given: given.clone(),
                current: encode_etag(current.etag),
            }),
        },
        _ => Ok(Some(current.etag)),
    }
}

/// What the device is sent after a desired change: the patch without `$` keys, or the whole new
/// desired document after a replace, with the new `$version`.
fn desired_notice(
    replace: bool,
    desired: Map<String, Value>,
    patch: Option<&Map<String, Value>>,
    version: i64,
) -> String {
    let mut notice = if replace {
        desired
    } else {
        patch
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .collect()
    };
    notice.insert("$version".into(), json!(version));
    Value::Object(notice).to_string()
}

impl Hub {
    fn twin_store_error(id: &str, e: StoreError, given: Option<&IfMatch>) -> HubError {
        match e {
            StoreError::NotFound => HubError::DeviceNotFound(id.to_string()),
            StoreError::EtagMismatch { current } => HubError::DeviceEtagMismatch {
                name: format!("twin of {id}"),
                given: given.map(IfMatch::shown).unwrap_or_default(),
                current: encode_etag(current),
            },
            other => HubError::from(other),
        }
    }

    /// The twin document as Azure's service API returns it.
    fn twin_json(&self, t: &TwinRecord) -> Result<Value, HubError> {
        let device = self
            .store()
            .get_device(&t.device_id)?
            .ok_or_else(|| HubError::DeviceNotFound(t.device_id.clone()))?;
        let activity = self.device_activity(&t.device_id)?;
        let connected = self.is_connected(&t.device_id);
        Ok(json!({
            "deviceId": t.device_id,
            "moduleId": null,
            "etag": encode_etag(t.etag),
            "deviceEtag": encode_etag(device.etag),
            "version": t.desired_version + t.reported_version,
            "status": device.status.as_str(),
            "statusReason": device.status_reason,
            "statusUpdateTime": iso(device.status_updated),
            "connectionState": if connected { "Connected" } else { "Disconnected" },
            "lastActivityTime": activity.last_activity.map(iso).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "cloudToDeviceMessageCount": self.store().count_pending_c2d(&t.device_id, self.now())?,
            "authenticationType": device.auth_type.as_str(),
            "x509Thumbprint": { "primaryThumbprint": device.primary_thumbprint, "secondaryThumbprint": device.secondary_thumbprint },
            "capabilities": { "iotEdge": false },
            "tags": Value::Object(parse(&t.tags)),
            "properties": {
                "desired": section_with_meta(&t.desired, &t.desired_metadata, t.desired_version),
                "reported": section_with_meta(&t.reported, &t.reported_metadata, t.reported_version),
            }
        }))
    }

    /// The twin of a device (service side).
    pub fn get_twin(&self, who: &Principal, id: &str) -> Result<Value, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read twins",
            &format!("device/{id}"),
        )?;
        validate_device_id(id)?;
        let t = self
            .store()
            .get_twin(id)
            .map_err(|e| Self::twin_store_error(id, e, None))?;
        self.twin_json(&t)
    }

    /// Updates tags and desired properties: merged (`replace` false, PATCH) or replaced (PUT).
    pub fn update_twin(
        &self,
        who: &Principal,
        id: &str,
        body: &Value,
        if_match: Option<&IfMatch>,
        replace: bool,
    ) -> Result<Value, HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "update twins",
            &format!("device/{id}"),
        )?;
        validate_device_id(id)?;
        let body = service_twin_patch(body)?;
        let current = self
            .store()
            .get_twin(id)
            .map_err(|e| Self::twin_store_error(id, e, if_match))?;
        let expected = expected_twin_etag(id, &current, if_match)?;
        let now = iso(self.now());
        let mut tags = if replace {
            Map::new()
        } else {
            parse(&current.tags)
        };
        let mut desired = if replace {
            Map::new()
        } else {
            parse(&current.desired)
        };
        let old_desired = parse(&current.desired);
        if let Some(Value::Object(t)) = body.get("tags") {
            merge(&mut tags, t);
        }
        let patch = body
            .get("properties")
            .and_then(|p| p.get("desired"))
            .and_then(Value::as_object);
        if let Some(p) = patch {
            merge(&mut desired, p);
        }
        check_section("tags", &tags)?;
        check_section("desired properties", &desired)?;
        let desired_changed = desired != old_desired;
        let mut twin = current.clone();
        twin.tags = Value::Object(tags).to_string();
        if desired_changed {
            let mut meta = parse(&current.desired_metadata);
            let keys: Vec<String> = desired.keys().chain(old_desired.keys()).cloned().collect();
            twin.desired_version = current.desired_version + 1;
            touch_metadata(&mut meta, &keys, &desired, twin.desired_version, &now);
            twin.desired_metadata = Value::Object(meta).to_string();
            twin.desired = Value::Object(desired.clone()).to_string();
        }
        // The device receives what changed (a replace sends the whole new desired document),
        // from this node or, through the change feed, from the node that holds its session.
        let notice =
            desired_changed.then(|| desired_notice(replace, desired, patch, twin.desired_version));
        let stored = self
            .store()
            .write_twin(&twin, expected, notice.as_deref())
            .map_err(|e| Self::twin_store_error(id, e, if_match))?;
        self.metrics().twin_updated(TwinSide::Desired);
        if let Some(notice) = notice {
            self.signal_device(id, SessionSignal::DesiredPatch(notice));
        }
        self.twin_json(&stored)
    }

    /// The twin as a device's GET sees it: `{"desired": {...}, "reported": {...}}` with versions.
    pub fn twin_for_device(&self, id: &str) -> Result<Value, HubError> {
        let t = self
            .store()
            .get_twin(id)
            .map_err(|e| Self::twin_store_error(id, e, None))?;
        let mut desired = parse(&t.desired);
        desired.insert("$version".into(), json!(t.desired_version));
        let mut reported = parse(&t.reported);
        reported.insert("$version".into(), json!(t.reported_version));
        Ok(json!({ "desired": desired, "reported": reported }))
    }

    /// Merges a device's reported-properties patch; returns the new reported version.
    pub fn patch_reported(&self, id: &str, patch: &Value) -> Result<i64, HubError> {
        let patch = patch.as_object().ok_or_else(|| {
            HubError::TwinInvalid("a reported-properties patch must be a JSON object".into())
        })?;
        // Retried on a concurrent write: the device's patch must not be lost.
        for _ in 0..5 {
            let current = self
                .store()
                .get_twin(id)
                .map_err(|e| Self::twin_store_error(id, e, None))?;
            let mut reported = parse(&current.reported);
            let old = reported.clone();
            let keys = merge(&mut reported, patch);
            check_section("reported properties", &reported)?;
            let mut twin = current.clone();
            if reported != old {
                twin.reported_version = current.reported_version + 1;
                let mut meta = parse(&current.reported_metadata);
                touch_metadata(
                    &mut meta,
                    &keys,
                    &reported,
                    twin.reported_version,
                    &iso(self.now()),
                );
                twin.reported_metadata = Value::Object(meta).to_string();
                twin.reported = Value::Object(reported).to_string();
            }
            match self.store().write_twin(&twin, Some(current.etag), None) {
                Ok(stored) => {
                    self.metrics().twin_updated(TwinSide::Reported);
                    return Ok(stored.reported_version);
                }
                Err(StoreError::EtagMismatch { .. }) => continue,
                Err(e) => return Err(Self::twin_store_error(id, e, None)),
            }
        }
        Err(HubError::Internal(
            "the twin kept changing; try again".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_semantics() {
        let mut t: Map<String, Value> =
            serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3},"e":4}"#).unwrap();
        let p: Map<String, Value> =
            serde_json::from_str(r#"{"a":null,"b":{"c":null,"x":5},"e":4,"$version":9}"#).unwrap();
        let changed = merge(&mut t, &p);
        assert_eq!(
            Value::Object(t),
            serde_json::json!({"b":{"d":3,"x":5},"e":4})
        );
        assert_eq!(changed, ["a", "b"]);
    }

    #[test]
    fn limits() {
        let big: Map<String, Value> = [("k".to_string(), Value::String("x".repeat(40_000)))]
            .into_iter()
            .collect();
        assert!(check_section("desired", &big).is_err());
        let mut deep = json!(1);
        for _ in 0..12 {
            deep = json!({ "n": deep });
        }
        assert!(check_section("desired", deep.as_object().unwrap()).is_err());
        assert!(check_section("desired", &Map::new()).is_ok());
    }
}
