//! The provisioning service's management routes, in the Device Provisioning Service's JSON
//! shapes: `/provisioning` (the ID scope), `/enrollmentGroups[/{name}]`,
//! `/enrollments[/{registrationId}]` and `/registrations[/{registrationId}]`. The rules are the
//! hub's (`iothub_hub::enrollments`); this file carries the body in and the view out.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iothub_hub::enrollments::{Attestation, EnrollmentView, PutEnrollment, RegistrationView};
use iothub_hub::error as codes;
use iothub_hub::EnrollmentKind;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::error::ApiError;
use crate::state::{audited, authenticate, blocking, if_match, with_etag, AppState};

fn iso(t: i64) -> String {
    iothub_pki::pop::format_time(t)
}

fn status(enabled: bool) -> &'static str {
    if enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn enrollment_json(v: &EnrollmentView) -> Value {
    let mut doc = json!({
        "initialTwin": v.initial_twin,
        "provisioningStatus": status(v.enabled),
        "etag": v.etag,
        "createdDateTimeUtc": iso(v.created),
        "lastUpdatedDateTimeUtc": iso(v.updated),
    });
    match v.kind {
        EnrollmentKind::Group => {
            doc["enrollmentGroupId"] = json!(v.name);
            doc["attestation"] = json!({
                "type": "x509",
                "x509": { "caReferences": { "primary": v.ca_name } }
            });
        }
        EnrollmentKind::Individual => {
            doc["registrationId"] = json!(v.name);
            doc["attestation"] = json!({
                "type": "x509",
                "x509": { "clientCertificates": { "primary": {
                    "certificate": v.certificate_pem,
                    "info": {
                    "sha256Thumbprint": v.thumbprint,
                    "subjectName": v.subject,
                    "notAfterUtc": v.not_after.map(iso),
                } } } }
            });
        }
    }
    doc
}

fn registration_json(v: &RegistrationView) -> Value {
    json!({
        "registrationId": v.registration_id,
        "deviceId": v.device_id,
        "status": "assigned",
        "enrollment": { "kind": v.enrollment_kind.as_str(), "name": v.enrollment_name },
        "etag": v.etag,
        "createdDateTimeUtc": iso(v.created),
        "lastUpdatedDateTimeUtc": iso(v.updated),
    })
}

/// The body of a PUT, as the Device Provisioning Service's enrollment JSON: the attestation,
/// the initial twin, the provisioning status. The read-only fields a GET returns may be sent back
/// (they are ignored, except the id, which must be the path's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnrollmentBody {
    attestation: AttestationBody,
    initial_twin: Option<Value>,
    provisioning_status: Option<String>,
    enrollment_group_id: Option<String>,
    registration_id: Option<String>,
    #[allow(dead_code)]
    etag: Option<String>,
    #[allow(dead_code)]
    created_date_time_utc: Option<String>,
    #[allow(dead_code)]
    last_updated_date_time_utc: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AttestationBody {
    #[serde(rename = "type")]
    kind: String,
    x509: X509Body,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct X509Body {
    ca_references: Option<CaReferences>,
    client_certificates: Option<ClientCertificates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaReferences {
    primary: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientCertificates {
    primary: ClientCertificate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientCertificate {
    certificate: String,
    /// What a GET shows of the certificate; ignored when sent back.
    #[allow(dead_code)]
    info: Option<Value>,
}

const EXPECTED: &str = "expected {\"attestation\": {\"type\": \"x509\", \"x509\": {\"caReferences\": {\"primary\": CA_NAME}}}} for a group, or {\"attestation\": {\"type\": \"x509\", \"x509\": {\"clientCertificates\": {\"primary\": {\"certificate\": PEM}}}}} for an individual enrollment";

/// The hub's request from the body, or why it is not one.
fn put_request(
    kind: EnrollmentKind,
    name: &str,
    body: EnrollmentBody,
) -> Result<PutEnrollment, ApiError> {
    let bad = |what: String| ApiError::new(codes::ARGUMENT_INVALID, format!("{what}; {EXPECTED}"));
    if body.attestation.kind != "x509" {
        return Err(bad(format!(
            "the attestation type is '{}', and only x509 is served",
            body.attestation.kind
        )));
    }
    let named = match kind {
        EnrollmentKind::Group => body.enrollment_group_id,
        EnrollmentKind::Individual => body.registration_id,
    };
    if named.as_deref().is_some_and(|n| n != name) {
        return Err(bad(format!(
            "the body names '{}' but the path names '{name}'",
            named.unwrap_or_default()
        )));
    }
    let x509 = body.attestation.x509;
    let attestation = match (kind, x509.ca_references, x509.client_certificates) {
        (EnrollmentKind::Group, Some(ca), None) => Attestation::Ca(ca.primary),
        (EnrollmentKind::Individual, None, Some(c)) => {
            Attestation::Certificate(c.primary.certificate.into_bytes())
        }
        (EnrollmentKind::Group, _, _) => {
            return Err(bad("an enrollment group names its CA in caReferences (and nothing else)".into()))
        }
        (EnrollmentKind::Individual, _, _) => {
            return Err(bad("an individual enrollment names its certificate in clientCertificates (and nothing else)".into()))
        }
    };
    let enabled = match body.provisioning_status.as_deref() {
        None | Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => {
            return Err(ApiError::new(
                codes::ARGUMENT_INVALID,
                format!("provisioningStatus is '{other}'; expected enabled or disabled"),
            ))
        }
    };
    Ok(PutEnrollment {
        attestation,
        initial_twin: body.initial_twin,
        enabled,
    })
}

fn kind_of(group: bool) -> EnrollmentKind {
    if group {
        EnrollmentKind::Group
    } else {
        EnrollmentKind::Individual
    }
}

fn action(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Group => "enrollmentGroup.put",
        EnrollmentKind::Individual => "enrollment.put",
    }
}

async fn put(
    state: AppState,
    headers: HeaderMap,
    kind: EnrollmentKind,
    name: String,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let target = match kind {
        EnrollmentKind::Group => format!("enrollmentGroup/{name}"),
        EnrollmentKind::Individual => format!("enrollment/{name}"),
    };
    let parsed = read_json::<EnrollmentBody>(body, state.limits.max_request_bytes).await;
    let parsed = audited(&state, &who, action(kind), target.clone(), parsed).await?;
    let request = audited(
        &state,
        &who,
        action(kind),
        target,
        put_request(kind, &name, parsed),
    )
    .await?;
    let precondition = if_match(&headers);
    let (v, created) = blocking(&state, move |hub| {
        hub.put_enrollment(&who, kind, &name, &request, precondition.as_ref())
    })
    .await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(
        (code, Json(enrollment_json(&v))).into_response(),
        &v.etag,
    ))
}

async fn get_one(
    state: AppState,
    headers: HeaderMap,
    kind: EnrollmentKind,
    name: String,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let v = blocking(&state, move |hub| hub.get_enrollment(&who, kind, &name)).await?;
    Ok(with_etag(
        Json(enrollment_json(&v)).into_response(),
        &v.etag,
    ))
}

async fn list(
    state: AppState,
    headers: HeaderMap,
    kind: EnrollmentKind,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let all = blocking(&state, move |hub| hub.list_enrollments(&who, kind)).await?;
    Ok(Json(
        json!({ "value": all.iter().map(enrollment_json).collect::<Vec<_>>() }),
    ))
}

async fn delete(
    state: AppState,
    headers: HeaderMap,
    kind: EnrollmentKind,
    name: String,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&state, &headers)?;
    let precondition = if_match(&headers);
    blocking(&state, move |hub| {
        hub.delete_enrollment(&who, kind, &name, precondition.as_ref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn put_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    put(state, headers, kind_of(true), name, body).await
}

pub(crate) async fn put_individual(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    put(state, headers, kind_of(false), name, body).await
}

pub(crate) async fn get_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_one(state, headers, kind_of(true), name).await
}

pub(crate) async fn get_individual(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    get_one(state, headers, kind_of(false), name).await
}

pub(crate) async fn list_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list(state, headers, kind_of(true)).await
}

pub(crate) async fn list_individuals(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list(state, headers, kind_of(false)).await
}

pub(crate) async fn delete_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(state, headers, kind_of(true), name).await
}

pub(crate) async fn delete_individual(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(state, headers, kind_of(false), name).await
}

/// `GET /provisioning`: the ID scope and the host provisioning clients connect to.
pub(crate) async fn provisioning(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let host = state
        .hub
        .config()
        .host_names
        .first()
        .cloned()
        .unwrap_or_default();
    let scope = blocking(&state, move |hub| hub.get_id_scope(&who)).await?;
    Ok(Json(json!({ "idScope": scope, "provisioningHost": host })))
}

pub(crate) async fn list_registrations(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let all = blocking(&state, move |hub| hub.list_registrations(&who)).await?;
    Ok(Json(
        json!({ "value": all.iter().map(registration_json).collect::<Vec<_>>() }),
    ))
}

pub(crate) async fn get_registration(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let v = blocking(&state, move |hub| hub.get_registration(&who, &id)).await?;
    Ok(Json(registration_json(&v)))
}
