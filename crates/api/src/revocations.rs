//! The revocation handlers: `POST /certificates/{name}/revocations` revokes a certificate the CA
//! issued (by serial, with an RFC 5280 reason), `GET` lists them. The rules are the hub's
//! (`iothub_hub::revocations`); this file only carries the body in and the view out.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use iothub_hub::revocations::RevocationView;
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
    })
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
