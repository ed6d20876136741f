//! The CA certificate handlers of the native routes (`/certificates/{name}`,
//! `.../generateVerificationCode`, `.../verify`) and the body readers they share with the
//! management-plane aliases in `azure`.
//!
//! Why a file of its own: these handlers used to live in the route table's file, which every
//! sibling imported for its helpers; here they depend on the helper kit (`state`) and nothing
//! depends back on them but the table and `azure`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iothub_hub::error as codes;
use iothub_hub::{Principal, PutCertificate};
use serde_json::{json, Value};

use crate::body::{read_json, read_json_field};
use crate::error::ApiError;
use crate::shapes::{certificate_description, PutBody, VerifyBody};
use crate::state::{audited, authenticate, blocking, if_match, with_etag, AppState};

/// Reads a certificate create-or-replace body (current or legacy shape) for `name`; a refusal is
/// audited. Shared by the native and the management-plane routes.
pub(crate) async fn read_put_certificate(
    state: &AppState,
    who: &Principal,
    name: &str,
    body: Body,
) -> Result<PutCertificate, ApiError> {
    let parsed = async {
        let parsed: PutBody = read_json(body, state.limits.max_request_bytes).await?;
        let fields = parsed.properties.unwrap_or(parsed.legacy);
        let certificate = fields.certificate.ok_or_else(|| {
            ApiError::new(
                codes::ARGUMENT_INVALID,
                "the body must carry properties.certificate: the CA certificate as PEM text or base64 of DER",
            )
        })?;
        Ok(PutCertificate {
            certificate,
            is_verified: fields.is_verified,
        })
    }
    .await;
    audited(
        state,
        who,
        "certificate.put",
        format!("certificate/{name}"),
        parsed,
    )
    .await
}

/// Reads a verify body (`{"certificate": ...}`) for `name`; a refusal is audited.
pub(crate) async fn read_verification_certificate(
    state: &AppState,
    who: &Principal,
    name: &str,
    body: Body,
) -> Result<String, ApiError> {
    let parsed = read_json_field(
        body,
        state.limits.max_request_bytes,
        |b: VerifyBody| b.certificate,
        "'certificate': the verification certificate as PEM text or base64 of DER",
    )
    .await;
    audited(
        state,
        who,
        "certificate.verify",
        format!("certificate/{name}"),
        parsed,
    )
    .await
}

fn resource_id(name: &str) -> String {
    format!("/certificates/{name}")
}

pub(crate) async fn list_certificates(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let views = blocking(&state, move |hub| hub.list_certificates(&who)).await?;
    let value: Vec<Value> = views
        .iter()
        .map(|v| certificate_description(v, &resource_id(&v.name)))
        .collect();
    Ok(Json(json!({ "value": value })))
}

pub(crate) async fn get_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let view = blocking(&state, move |hub| hub.get_certificate(&who, &name)).await?;
    let body = certificate_description(&view, &resource_id(&view.name));
    Ok(with_etag(Json(body).into_response(), &view.etag))
}

pub(crate) async fn put_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    // Authenticate before reading the body, so an anonymous caller cannot make us parse anything.
    let who = authenticate(&state, &headers)?;
    let request = read_put_certificate(&state, &who, &name, body).await?;
    let precondition = if_match(&headers);
    let (view, created) = blocking(&state, move |hub| {
        hub.put_certificate(&who, &name, &request, precondition.as_ref())
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = certificate_description(&view, &resource_id(&view.name));
    Ok(with_etag((status, Json(body)).into_response(), &view.etag))
}

pub(crate) async fn delete_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let precondition = if_match(&headers);
    let who = authenticate(&state, &headers)?;
    blocking(&state, move |hub| {
        hub.delete_certificate(&who, &name, precondition.as_ref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn generate_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let precondition = if_match(&headers);
    let who = authenticate(&state, &headers)?;
    let (view, code, _expires) = blocking(&state, move |hub| {
        hub.generate_verification_code(&who, &name, precondition.as_ref())
    })
    .await?;
    let mut body = certificate_description(&view, &resource_id(&view.name));
    body["properties"]["verificationCode"] = Value::String(code);
    Ok(with_etag(Json(body).into_response(), &view.etag))
}

pub(crate) async fn verify_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let certificate = read_verification_certificate(&state, &who, &name, body).await?;
    let precondition = if_match(&headers);
    let view = blocking(&state, move |hub| {
        hub.verify_certificate(&who, &name, precondition.as_ref(), &certificate)
    })
    .await?;
    let body = certificate_description(&view, &resource_id(&view.name));
    Ok(with_etag(Json(body).into_response(), &view.etag))
}
