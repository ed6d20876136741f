//! Device-side routes: the registry in Azure IoT Hub's device shape (`/devices/{id}`, as the
//! azure-iot-hub SDK calls it: PUT answers 200, DELETE 204, quoted etags and `"*"` accepted),
//! cloud-to-device messages, device-to-cloud messages (read by offset, or followed live as
//! server-sent events), and connections (live sessions and recent refusals).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use iothub_hub::error as codes;
use iothub_hub::{C2dSend, C2dView, DeviceView, MessageView, PutDevice};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::error::ApiError;
use crate::shapes::rfc1123;
use crate::state::{audited, authenticate, blocking, if_match, with_etag, AppState};

/// RFC 3339, with Azure's "never" value for a time that never was.
fn iso(t: Option<i64>) -> String {
    t.map(iothub_pki::pop::format_time)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

/// Azure's Device JSON (docs/azure-wire.md#device-json) plus iothub's connection facts.
pub fn device_json(v: &DeviceView) -> Value {
    let r = &v.record;
    json!({
        "deviceId": r.device_id,
        "generationId": r.generation_id,
        "etag": v.etag,
        "connectionState": if v.connected { "Connected" } else { "Disconnected" },
        "status": r.status.as_str(),
        "statusReason": r.status_reason,
        "connectionStateUpdatedTime": iso(v.activity.last_activity),
        "statusUpdatedTime": iso(Some(r.status_updated)),
        "lastActivityTime": iso(v.activity.last_activity),
        "cloudToDeviceMessageCount": v.c2d_queued,
        "authentication": {
            "type": r.auth_type.as_str(),
            "symmetricKey": { "primaryKey": r.primary_key, "secondaryKey": r.secondary_key },
            "x509Thumbprint": { "primaryThumbprint": r.primary_thumbprint, "secondaryThumbprint": r.secondary_thumbprint },
        },
        "capabilities": { "iotEdge": false },
        "deviceScope": null,
        "parentScopes": [],
        "lastConnectedTime": v.activity.last_connected.map(|t| iso(Some(t))),
        "lastRefusal": v.activity.last_refusal,
        "lastRefusalTime": v.activity.last_refusal_time.map(|t| iso(Some(t))),
        "certificateExpiry": v.activity.certificate_not_after.map(|t| iso(Some(t))),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceBody {
    status: Option<String>,
    status_reason: Option<String>,
    authentication: Option<AuthBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    symmetric_key: Option<KeysBody>,
    x509_thumbprint: Option<ThumbprintsBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeysBody {
    primary_key: Option<String>,
    secondary_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThumbprintsBody {
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
}

pub(crate) async fn get_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let v = blocking(&state, move |hub| hub.get_device(&who, &id)).await?;
    Ok(with_etag(Json(device_json(&v)).into_response(), &v.etag))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListParams {
    top: Option<u32>,
    after: Option<String>,
    /// Only the devices whose last certificate expires within this many days, soonest first.
    expiring_within_days: Option<i64>,
}

pub(crate) async fn list_devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let after = params.after.or_else(|| {
        headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    // As Azure: up to 1000, and any value outside 1-1000 counts as 1000.
    let top = match params.top {
        Some(t) if (1..=1000).contains(&t) => t,
        _ => 1000,
    };
    if let Some(days) = params.expiring_within_days {
        let views = blocking(&state, move |hub| {
            hub.list_expiring_devices(&who, days.saturating_mul(86_400), top)
        })
        .await?;
        let body: Vec<Value> = views.iter().map(device_json).collect();
        return Ok(Json(body).into_response());
    }
    let views = blocking(&state, move |hub| {
        hub.list_devices(&who, after.as_deref(), top)
    })
    .await?;
    let body: Vec<Value> = views.iter().map(device_json).collect();
    let mut response = Json(body).into_response();
    // A full page may have a next one: its continuation is the last id of this page.
    if views.len() == top as usize {
        if let Some(last) = views.last() {
            if let Ok(v) = HeaderValue::from_str(&last.record.device_id) {
                response.headers_mut().insert("x-ms-continuation", v);
            }
        }
    }
    Ok(response)
}

pub(crate) async fn put_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<DeviceBody>(body, state.limits.max_request_bytes).await;
    let parsed = audited(&state, &who, "device.put", format!("device/{id}"), parsed).await?;
    let request = put_request(parsed);
    let precondition = if_match(&headers);
    let (v, _created) = blocking(&state, move |hub| {
        hub.put_device(&who, &id, &request, precondition.as_ref())
    })
    .await?;
    // azure-iot-hub accepts only 200 for a create as for an update.
    Ok(with_etag(Json(device_json(&v)).into_response(), &v.etag))
}

/// The hub's request from the Azure device JSON.
fn put_request(parsed: DeviceBody) -> PutDevice {
    let auth = parsed.authentication.unwrap_or_default();
    let keys = auth.symmetric_key.unwrap_or_default();
    let thumbs = auth.x509_thumbprint.unwrap_or_default();
    PutDevice {
        status: parsed.status,
        status_reason: parsed.status_reason,
        auth_type: auth.kind,
        primary_thumbprint: thumbs.primary_thumbprint,
        secondary_thumbprint: thumbs.secondary_thumbprint,
        primary_key: keys.primary_key,
        secondary_key: keys.secondary_key,
    }
}

/// At most this many devices per `POST /devices`: one store transaction each, so a request
/// holds the writer for a bounded time (about 0.1 s), and the CLI sends chunks of this size.
pub const IMPORT_MAX_DEVICES: usize = 1000;

/// The body limit of `POST /devices`: room for `IMPORT_MAX_DEVICES` devices with keys and
/// thumbprints (about 400 bytes each as JSON); the one-device limit would not hold a chunk.
pub const IMPORT_MAX_BYTES: usize = IMPORT_MAX_DEVICES * 2048;

/// One row of an import: a device object with its id.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportRow {
    #[serde(default)]
    device_id: String,
    #[serde(flatten)]
    device: DeviceBody,
}

/// `POST /devices`: a JSON array of new devices (Azure device objects), at most
/// `IMPORT_MAX_DEVICES`. Answers 200 with one result per row, in order; the rows without an
/// error landed (in one transaction), the others changed nothing but the audit log.
pub(crate) async fn import_devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<Vec<ImportRow>>(body, IMPORT_MAX_BYTES)
        .await
        .and_then(|rows| {
            if rows.len() > IMPORT_MAX_DEVICES {
                Err(ApiError::new(
                    codes::ARGUMENT_INVALID,
                    format!(
                        "{} devices in one import; at most {IMPORT_MAX_DEVICES} per request",
                        rows.len()
                    ),
                ))
            } else {
                Ok(rows)
            }
        });
    let rows = audited(&state, &who, "device.import", "devices".into(), parsed).await?;
    let rows: Vec<(String, PutDevice)> = rows
        .into_iter()
        .map(|r| (r.device_id, put_request(r.device)))
        .collect();
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let results = blocking(&state, move |hub| hub.import_devices(&who, &rows)).await?;
    let mut imported = 0;
    let results: Vec<Value> = ids
        .iter()
        .zip(results)
        .map(|(id, r)| match r {
            Ok(v) => {
                imported += 1;
                json!({ "deviceId": id, "etag": v.etag })
            }
            Err(e) => {
                let e = ApiError::from(e);
                json!({
                    "deviceId": id,
                    "error": { "code": e.code.number.to_string(), "errorName": e.code.name, "httpStatus": e.code.status, "message": e.message },
                })
            }
        })
        .collect();
    Ok(Json(json!({ "imported": imported, "results": results })).into_response())
}

pub(crate) async fn delete_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&state, &headers)?;
    let precondition = if_match(&headers);
    blocking(&state, move |hub| {
        hub.delete_device(&who, &id, precondition.as_ref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn c2d_json(m: &C2dView) -> Value {
    json!({
        "id": m.id,
        "deviceId": m.device_id,
        "messageId": m.message_id,
        "state": m.state.as_str(),
        "created": rfc1123(m.created),
        "expiryTimeUtc": rfc1123(m.expiry),
        "deliveredTime": m.delivered_at.map(rfc1123),
        "deliveryCount": m.delivery_count,
        "systemProperties": m.system_properties,
        "properties": m.properties,
        "body": String::from_utf8(m.body.clone()).ok(),
        "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&m.body),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct C2dBody {
    body: Option<String>,
    body_base64: Option<String>,
    #[serde(default)]
    properties: serde_json::Map<String, Value>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    ttl_seconds: Option<i64>,
    /// Which outcomes to hear about through the feedback queue: none, positive, negative, full.
    ack: Option<String>,
}

pub(crate) async fn send_c2d(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = async {
        let parsed: C2dBody = read_json(body, state.limits.max_request_bytes).await?;
        let bytes = match (&parsed.body, &parsed.body_base64) {
            (Some(text), None) => text.clone().into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::new(
                        codes::ARGUMENT_INVALID,
                        format!("bodyBase64 is not base64: {e}"),
                    )
                })?,
            _ => {
                return Err(ApiError::new(
                    codes::ARGUMENT_INVALID,
                    "give exactly one of 'body' (text) and 'bodyBase64'",
                ))
            }
        };
        let ack = match &parsed.ack {
            Some(text) => iothub_hub::feedback::parse_ack(text)?,
            None => Default::default(),
        };
        Ok((parsed, bytes, ack))
    }
    .await;
    let (parsed, bytes, ack) =
        audited(&state, &who, "c2d.send", format!("device/{id}"), parsed).await?;
    let mut properties = Vec::new();
    for (k, v) in parsed.properties {
        match v {
            Value::String(s) => properties.push((k, s)),
            other => properties.push((k, other.to_string())),
        }
    }
    let msg = C2dSend {
        body: bytes,
        properties,
        message_id: parsed.message_id,
        correlation_id: parsed.correlation_id,
        content_type: parsed.content_type,
        content_encoding: parsed.content_encoding,
        ttl_secs: parsed.ttl_seconds,
        ack,
    };
    let record = blocking(&state, move |hub| hub.send_c2d(&who, &id, &msg)).await?;
    Ok((StatusCode::CREATED, Json(c2d_json(&record))).into_response())
}

pub(crate) async fn list_c2d(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let list = blocking(&state, move |hub| hub.list_c2d(&who, &id, 100)).await?;
    Ok(Json(
        json!({ "value": list.iter().map(c2d_json).collect::<Vec<_>>() }),
    ))
}

/// A device-to-cloud message as `az iot hub monitor-events` shows events, plus its offset.
pub fn message_json(m: &MessageView) -> Value {
    let mut system = m.system_properties.clone();
    system.insert(
        "iothub-connection-device-id".into(),
        m.device_id.clone().into(),
    );
    system.insert("iothub-enqueuedtime".into(), iso(Some(m.enqueued)).into());
    json!({
        "offset": m.offset,
        "partition": m.partition,
        "sequenceNumber": m.sequence,
        "deviceId": m.device_id,
        "moduleId": m.module_id,
        "enqueuedTime": iso(Some(m.enqueued)),
        "properties": m.properties,
        "systemProperties": system,
        "body": String::from_utf8(m.body.clone()).ok(),
        "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&m.body),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageParams {
    from: Option<i64>,
    device_id: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn read_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<MessageParams>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let from = p.from.unwrap_or(1);
    let limit = p.limit.unwrap_or(100);
    let (list, last) = blocking(&state, move |hub| {
        let list = hub.read_messages(&who, from, p.device_id.as_deref(), limit)?;
        Ok((list, hub.last_message_offset()))
    })
    .await?;
    let next = list.last().map(|m| m.offset + 1).unwrap_or(from.max(1));
    Ok(Json(json!({
        "value": list.iter().map(message_json).collect::<Vec<_>>(),
        "nextOffset": next,
        "lastOffset": last,
    })))
}

/// Follows messages live as server-sent events (`id:` is the offset). `from` defaults to the next
/// message to arrive; `from=1` replays everything retained first.
pub(crate) async fn stream_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<MessageParams>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let who = authenticate(&state, &headers)?;
    // The right is checked once, up front, with the same rule as reads.
    let check = who.clone();
    blocking(&state, move |hub| {
        hub.read_messages(&check, i64::MAX, None, 1)
    })
    .await?;
    let hub = state.hub.clone();
    let watch = hub.watch_messages();
    // The stream lasts only while the key that opened it does: on every policy change (and
    // before every read) the credential is re-checked, and a rotated or deleted key ends it.
    let policies = hub.watch_policies();
    let start = p.from.unwrap_or_else(|| hub.last_message_offset() + 1);
    let device = p.device_id.clone();
    let stream = futures_util::stream::unfold(
        (
            hub,
            who,
            (watch, policies),
            start,
            device,
            Vec::<MessageView>::new(),
        ),
        |(hub, who, (mut watch, mut policies), mut next, device, mut buffered)| async move {
            loop {
                let Some(current) = hub.refresh_principal(&who) else {
                    tracing::info!(policy = %who.policy, "event stream ended: its key was rotated or its policy deleted");
                    return None;
                };
                if let Some(m) = buffered.pop() {
                    let event = Event::default()
                        .id(m.offset.to_string())
                        .data(message_json(&m).to_string());
                    return Some((
                        Ok(event),
                        (hub, who, (watch, policies), next, device, buffered),
                    ));
                }
                let (h, d) = (hub.clone(), device.clone());
                let batch = tokio::task::spawn_blocking(move || {
                    h.read_messages(&current, next, d.as_deref(), 256)
                })
                .await
                .ok()?
                .ok()?;
                if let Some(last) = batch.last() {
                    next = last.offset + 1;
                    buffered = batch.into_iter().rev().collect();
                    continue;
                }
                // Nothing new: wait for the next commit or policy change (or a minute, to re-check).
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    tokio::select! {
                        _ = watch.changed() => {}
                        _ = policies.changed() => {}
                    }
                })
                .await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub(crate) async fn connections(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let (live, refusals) = blocking(&state, move |hub| hub.connections(&who)).await?;
    Ok(Json(json!({
        "live": live.iter().map(|s| json!({
            "deviceId": s.device_id, "remote": s.remote, "since": rfc1123(s.since), "authentication": s.auth,
            "certificateExpiry": s.certificate_expiry.map(rfc1123),
        })).collect::<Vec<_>>(),
        "refusals": refusals.iter().map(|r| json!({
            "time": rfc1123(r.time), "timeUnix": r.time, "clientId": r.client_id, "remote": r.remote, "reason": r.reason,
        })).collect::<Vec<_>>(),
    })))
}
