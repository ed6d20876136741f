//! The route table and handlers. Each handler: read the Authorization header and If-Match, run the
//! `Hub` call on a blocking thread, render JSON. Paths mirror Azure's (`/certificates/{name}`,
//! `.../generateVerificationCode`, `.../verify`); any `api-version` query is accepted.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iothub_hub::{Hub, HubError, IfMatch, PolicyView, Principal, PutCertificate};
use iothub_pki::policy::format_rights;
use iothub_store::PolicyRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::azure;
use crate::body::read_json;
use crate::error::ApiError;
use crate::shapes::{certificate_description, rfc1123, PutBody, VerifyBody};
use iothub_hub::error as codes;

/// Limits of the API layer.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// The largest request body read, in bytes.
    pub max_request_bytes: usize,
    /// Failed authentications per client address per minute before it gets 429.
    pub auth_failures_per_minute: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_request_bytes: 256 * 1024,
            auth_failures_per_minute: 300,
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) hub: Hub,
    pub(crate) limits: Arc<ApiLimits>,
    pub(crate) portal: Arc<crate::portal::PortalState>,
    pub(crate) auth_limiter: Arc<crate::limiter::AuthFailureLimiter>,
}

/// The OpenAPI document of this API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Builds the router over `hub`; `portal` holds the portal's login links and sessions.
pub fn router(hub: Hub, limits: ApiLimits, portal: Arc<crate::portal::PortalState>) -> Router {
    // The link `iothub serve` printed before the router existed stands for the owner's primary key.
    match hub.owner_credential() {
        Ok(owner) => portal.bind_unowned_links(&owner),
        Err(e) => tracing::warn!(error = %e, "portal links not bound to the owner key"),
    }
    let state = AppState {
        hub,
        auth_limiter: Arc::new(crate::limiter::AuthFailureLimiter::new(
            limits.auth_failures_per_minute,
        )),
        limits: Arc::new(limits),
        portal,
    };
    Router::new()
        .route("/certificates", get(list_certificates))
        .route(
            "/certificates/{name}",
            get(get_certificate)
                .put(put_certificate)
                .delete(delete_certificate),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(generate_code),
        )
        .route("/certificates/{name}/verify", post(verify_certificate))
        .route("/devices", get(crate::devices::list_devices))
        .route(
            "/devices/{id}",
            get(crate::devices::get_device)
                .put(crate::devices::put_device)
                .delete(crate::devices::delete_device),
        )
        .route(
            "/devices/{id}/messages/devicebound",
            get(crate::devices::list_c2d).post(crate::devices::send_c2d),
        )
        .route("/messages", get(crate::devices::read_messages))
        .route("/messages/stream", get(crate::devices::stream_messages))
        .route("/connections", get(crate::devices::connections))
        .route("/twins/{id}", get(azure::get_twin).patch(azure::patch_twin).put(azure::replace_twin))
        .route("/twins/{id}/methods", post(azure::invoke_method))
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/certificates",
            get(azure::hub_list),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/certificates/{name}",
            get(azure::hub_get).put(azure::hub_put).delete(azure::hub_delete),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/certificates/{name}/generateVerificationCode",
            post(azure::hub_generate),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/certificates/{name}/verify",
            post(azure::hub_verify),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/listkeys",
            post(azure::hub_list_keys),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{resource}/IotHubKeys/{name}/listkeys",
            post(azure::hub_key_for_name),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/{resource}/certificates",
            get(azure::dps_list),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/{resource}/certificates/{name}",
            get(azure::dps_get).put(azure::dps_put).delete(azure::dps_delete),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/{resource}/certificates/{name}/generateVerificationCode",
            post(azure::dps_generate),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/{resource}/certificates/{name}/verify",
            post(azure::dps_verify),
        )
        .route("/audit", get(audit_log))
        .route("/policies", get(list_policies))
        .route(
            "/policies/{name}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/policies/{name}/listKeys", post(policy_keys))
        .route("/policies/{name}/rotateKey", post(rotate_policy_key))
        .route("/openapi.json", get(openapi))
        .route("/portal-links", post(crate::portal::create_link))
        .route("/portal", get(crate::portal::page))
        .route("/portal/certificates", get(crate::portal::page))
        .route("/portal/devices", get(crate::portal::page))
        .route("/portal/connections", get(crate::portal::page))
        .route("/portal/login", get(crate::portal::login))
        .route("/portal/logout", post(crate::portal::logout))
        .route("/portal/signed-out", get(crate::portal::signed_out))
        .route("/portal/static/app.js", get(crate::portal::app_js))
        .route("/portal/static/app.css", get(crate::portal::app_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::portal::csrf_guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::limiter::limit_auth_failures))
        .with_state(state)
}

pub(crate) fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    headers
        .get(axum::http::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(IfMatch::parse)
}

/// Authenticates the request. Runs inline: it is an in-memory policy lookup and one HMAC per key.
pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = match headers.get(axum::http::header::AUTHORIZATION) {
        // A browser of the portal: its session stands for the owner who opened the login link
        // (CSRF is enforced for it by `portal::csrf_guard` on every state-changing request).
        None if crate::portal::session_cookie(headers).is_some() => {
            return crate::portal::session_principal(state, headers).ok_or_else(|| {
                ApiError::from(HubError::Unauthorized(
                    "the portal session has ended; open a new login link".into(),
                ))
            })
        }
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            // Like every other refused token: one answer (see `iothub_hub::auth::TOKEN_REFUSED`).
            tracing::debug!("request refused: the Authorization header is not ASCII text");
            ApiError::from(HubError::Unauthorized(
                iothub_hub::auth::TOKEN_REFUSED.into(),
            ))
        })?),
    };
    // The management SDKs send the same hub token as an OAuth bearer token.
    let header = header.map(|h| h.strip_prefix("Bearer ").unwrap_or(h));
    state.hub.authenticate(header).map_err(|e| {
        // The reason names no secret: token contents are never logged.
        // The token's fields (its skn) are the caller's text: escaped, they cannot forge a line.
        tracing::warn!(reason = %iothub_hub::peer_text::escaped(&e.to_string()), "request refused: unauthorized");
        ApiError::from(e)
    })
}

/// Audits a refusal made here, before the service call (malformed or oversized body), then
/// returns it: every refused operation of an identified caller is on record.
pub(crate) async fn audited<T>(
    state: &AppState,
    who: &Principal,
    action: &'static str,
    target: String,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(e) = &result {
        let (hub, who, code, message) = (
            state.hub.clone(),
            who.clone(),
            e.code.number,
            e.message.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            hub.audit_refusal(&who, action, &target, code, &message)
        })
        .await;
    }
    result
}

/// Runs a service-layer call on a blocking thread (the store is synchronous SQLite).
pub(crate) async fn blocking<T, F>(state: &AppState, op: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Hub) -> Result<T, HubError> + Send + 'static,
{
    let hub = state.hub.clone();
    tokio::task::spawn_blocking(move || op(&hub))
        .await
        .map_err(|e| ApiError::new(codes::SERVER_ERROR, format!("request task failed: {e}")))?
        .map_err(ApiError::from)
}

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
    let parsed = async {
        let parsed: VerifyBody = read_json(body, state.limits.max_request_bytes).await?;
        parsed.certificate.ok_or_else(|| {
            ApiError::new(
                codes::ARGUMENT_INVALID,
                "the body must carry 'certificate': the verification certificate as PEM text or base64 of DER",
            )
        })
    }
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

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(axum::http::header::ETAG, v);
    }
    response
}

fn resource_id(name: &str) -> String {
    format!("/certificates/{name}")
}

async fn list_certificates(
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

async fn get_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let view = blocking(&state, move |hub| hub.get_certificate(&who, &name)).await?;
    let body = certificate_description(&view, &resource_id(&view.name));
    Ok(with_etag(Json(body).into_response(), &view.etag))
}

async fn put_certificate(
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

async fn delete_certificate(
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

async fn generate_code(
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

async fn verify_certificate(
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

#[derive(Debug, Deserialize)]
struct AuditParams {
    target: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let entries = blocking(&state, move |hub| {
        hub.audit_log(
            &who,
            params.target.as_deref(),
            params.before,
            params.limit.unwrap_or(100),
        )
    })
    .await?;
    let value: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "time": rfc1123(e.time),
                "timeUnix": e.time,
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "outcome": if e.success { "success" } else { "failure" },
                "code": e.code,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "value": value })))
}

async fn list_policies(
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

async fn policy_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let p = blocking(&state, move |hub| hub.policy_keys(&who, &name)).await?;
    Ok(Json(policy_with_keys(&p)))
}

async fn get_policy(
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
async fn put_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = async {
        let b: PutPolicyBody = read_json(body, state.limits.max_request_bytes).await?;
        b.rights.ok_or_else(|| {
            ApiError::new(
                codes::ARGUMENT_INVALID,
                "the body must carry 'rights': a comma-separated list of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect",
            )
        })
    }
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

async fn delete_policy(
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
async fn rotate_policy_key(
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

async fn openapi(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
        .into_response())
}

async fn method_not_allowed(
    State(state): State<AppState>,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    // Authenticated first: an anonymous caller cannot tell known paths from unknown ones.
    authenticate(&state, &headers)?;
    Err(ApiError::new(
        codes::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on {}", uri.path()),
    ))
}

async fn not_found(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    // Unknown paths are refused as unauthorized first, so the route table is not probeable.
    authenticate(&state, &headers)?;
    Err(ApiError::new(
        codes::ROUTE_NOT_FOUND,
        format!("no such route: {}", uri.path()),
    ))
}

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;

    #[test]
    fn openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let source = include_str!("routes.rs");
        let start = source.find("pub fn router").expect("router");
        let table = &source[start..start + source[start..].find(".fallback(").expect("fallback")];
        let mut seen = 0;
        for literal in table.split('"').skip(1).step_by(2) {
            if literal.starts_with('/') {
                seen += 1;
                assert!(
                    paths.contains_key(literal),
                    "{literal} is not in openapi.json"
                );
            }
        }
        assert_eq!(
            seen,
            paths.len(),
            "openapi.json lists a path the router does not serve"
        );
        assert!(paths.len() >= 7);
    }
}
