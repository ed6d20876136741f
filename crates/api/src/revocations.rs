//! The revocation handlers: `POST /certificates/{name}/revocations` revokes a certificate the CA
//! issued (by serial, with an RFC 5280 reason), `GET` lists them; `PUT /certificates/{name}/crl`
//! takes the CA's certificate revocation list, `GET` shows the one held;
//! `PUT/GET /certificates/{name}/autoRegistration` turns the CA's auto-registration on or off. The rules are the hub's
//! (`iothub_hub::revocations`); this file only carries the body in and the view out.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use iothub_hub::error as codes;
use iothub_hub::revocations::{CrlView, RevocationView};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::error::ApiError;
use crate::state::{audited, authenticate, blocking, AppState};

/// `{"serial": "1A2B", "reason": "keyCompromise"}`; the reason may be left out (unspecified).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    serial: String,
    reason: Option<String>,
}

fn view(v: &RevocationView) -> Value {
    json!({
        "certificateName": v.ca_name,
        "serial": v.serial,
        "reason": v.reason,
        "revokedAt": v.revoked_at,
        "source": if v.from_crl { "crl" } else { "operator" },
    })
}

fn crl_view(v: &CrlView) -> Value {
    json!({
        "certificateName": v.ca_name,
        "thisUpdate": v.this_update,
        "nextUpdate": v.next_update,
        "crlNumber": v.number,
        "revoked": v.revoked,
    })
}

/// `{"crl": "-----BEGIN X509 CRL-----..."}` or the DER in base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlBody {
    crl: String,
}

pub(crate) async fn put_crl(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    use base64::Engine as _;
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<CrlBody>(body, state.limits.max_request_bytes).await;
    let target = format!("certificate/{name}");
    let body = audited(
        &state,
        &who,
        "certificate.uploadCrl",
        target.clone(),
        parsed,
    )
    .await?;
    let text = body.crl.trim();
    let bytes = if text.starts_with("-----BEGIN") {
        text.as_bytes().to_vec()
    } else {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| {
                ApiError::new(
                    codes::CRL_INVALID,
                    "the crl field is neither PEM (-----BEGIN X509 CRL-----) nor base64 DER",
                )
            });
        audited(&state, &who, "certificate.uploadCrl", target, decoded).await?
    };
    let limit = state.limits.max_request_bytes;
    let held = blocking(&state, move |hub| {
        hub.upload_crl(&who, &name, &bytes, limit)
    })
    .await?;
    Ok(Json(crl_view(&held)))
}

fn auto_view(v: &iothub_hub::auto_registration::AutoRegistrationView) -> Value {
    json!({
        "certificateName": v.ca_name,
        "enabled": v.enabled,
        "deviceLimit": v.device_limit,
        "registered": v.registered,
    })
}

/// `{"enabled": true, "deviceLimit": 1000}`; the limit defaults to 1000 when enabling.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AutoBody {
    enabled: bool,
    device_limit: Option<u64>,
}

pub(crate) async fn put_auto_registration(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<AutoBody>(body, state.limits.max_request_bytes).await;
    let target = format!("certificate/{name}");
    let body = audited(&state, &who, "certificate.autoRegistration", target, parsed).await?;
    let limit = body.enabled.then(|| {
        body.device_limit
            .unwrap_or(iothub_hub::auto_registration::DEFAULT_AUTO_REGISTER_LIMIT)
    });
    let view = blocking(&state, move |hub| {
        hub.set_auto_registration(&who, &name, limit)
    })
    .await?;
    Ok(Json(auto_view(&view)))
}

pub(crate) async fn get_auto_registration(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let view = blocking(&state, move |hub| hub.get_auto_registration(&who, &name)).await?;
    Ok(Json(auto_view(&view)))
}

pub(crate) async fn get_crl(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let shown = name.clone();
    let held = blocking(&state, move |hub| hub.get_crl(&who, &name)).await?;
    match held {
        Some(v) => Ok(Json(crl_view(&v))),
        None => Err(ApiError::new(
            codes::CERTIFICATE_NOT_FOUND,
            format!("certificate '{shown}' has no CRL; upload one with PUT .../crl (iothub cert crl {shown} FILE)"),
        )),
    }
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<RevokeBody>(body, state.limits.max_request_bytes).await;
    let target = format!("certificate/{name}");
    let body = audited(&state, &who, "certificate.revoke", target, parsed).await?;
    let revoked = blocking(&state, move |hub| {
        hub.revoke_certificate(&who, &name, &body.serial, body.reason.as_deref())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view(&revoked))))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let all = blocking(&state, move |hub| hub.list_revocations(&who, &name)).await?;
    Ok(Json(
        json!({ "value": all.iter().map(view).collect::<Vec<_>>() }),
    ))
}
