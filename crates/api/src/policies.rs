//! The shared access policy handlers (`/policies`, `/policies/{name}`, `.../listKeys`,
//! `.../rotateKey`) and Azure's policy JSON shapes, which the management-plane `listkeys` routes in
//! `azure` render too. The rules (rights, owner level, limits) are `Hub`'s.
//!
//! Why a file of its own: these handlers used to live in the route table's file, which every
//! sibling imported for its helpers; here they depend on the helper kit (`state`) only.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iothub_hub::error as codes;
use iothub_hub::{PolicyRecord, PolicyView};
use iothub_pki::policy::format_rights;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{read_json, read_json_field};
use crate::error::ApiError;
use crate::state::{audited, authenticate, blocking, AppState};

pub(crate) async fn list_policies(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let policies = blocking(&state, move |hub| hub.list_policies(&who)).await?;
    let value: Vec<Value> = policies
        .iter()
        .map(|(name, rights)| json!({ "keyName": name, "rights": format_rights(rights) }))
        .collect();
    Ok(Json(json!({ "value": value })))
}

/// A policy with its keys, in Azure's `SharedAccessSignatureAuthorizationRule` shape.
pub(crate) fn policy_with_keys(p: &PolicyRecord) -> Value {
    json!({
        "keyName": p.name,
        "primaryKey": p.primary_key,
        "secondaryKey": p.secondary_key,
        "rights": format_rights(&p.rights),
    })
}

fn policy_without_keys(p: &PolicyView) -> Value {
    json!({ "keyName": p.name, "rights": format_rights(&p.rights) })
}

pub(crate) async fn policy_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let p = blocking(&state, move |hub| hub.policy_keys(&who, &name)).await?;
    Ok(Json(policy_with_keys(&p)))
}

pub(crate) async fn get_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let p = blocking(&state, move |hub| hub.get_policy(&who, &name)).await?;
    Ok(Json(policy_without_keys(&p)))
}

#[derive(Debug, Deserialize)]
struct PutPolicyBody {
    rights: Option<String>,
}

/// `PUT /policies/{name}` `{"rights": "RegistryRead, ServiceConnect"}`: creates the policy with
/// fresh keys (201) or sets the rights of an existing one (200). The answer carries no key.
pub(crate) async fn put_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json_field(
        body,
        state.limits.max_request_bytes,
        |b: PutPolicyBody| b.rights,
        "'rights': a comma-separated list of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect",
    )
    .await;
    let rights = audited(&state, &who, "policy.put", format!("policy/{name}"), parsed).await?;
    let (p, created) = blocking(&state, move |hub| hub.put_policy(&who, &name, &rights)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(policy_without_keys(&p))).into_response())
}

pub(crate) async fn delete_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&state, &headers)?;
    blocking(&state, move |hub| hub.delete_policy(&who, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct RotateKeyBody {
    key: Option<String>,
}

/// `POST /policies/{name}/rotateKey` `{"key": "primary"|"secondary"}`: a new random key replaces
/// that one at once; the answer is the policy with its keys (owner level only, as listKeys).
pub(crate) async fn rotate_policy_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = async {
        let b: RotateKeyBody = read_json(body, state.limits.max_request_bytes).await?;
        b.key.ok_or_else(|| {
            ApiError::new(
                codes::ARGUMENT_INVALID,
                "the body must carry 'key': \"primary\" or \"secondary\"",
            )
        })
    }
    .await;
    let key = audited(
        &state,
        &who,
        "policy.rotateKey",
        format!("policy/{name}"),
        parsed,
    )
    .await?;
    let p = blocking(&state, move |hub| hub.rotate_policy_key(&who, &name, &key)).await?;
    Ok(Json(policy_with_keys(&p)))
}
