//! What every handler shares: the router's state ([`AppState`]) and the steps each request takes
//! (authenticate, read If-Match, run the `Hub` call on a blocking thread, audit a refusal made
//! before that call, put the etag on the answer).
//!
//! Why a file of its own: the handler files (`certificates`, `devices`, `policies`, `azure`,
//! `portal_routes`...) all need these, and the route table needs the handlers; with the kit here,
//! imports only go one way (table -> handlers -> this kit), never back.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use iothub_hub::error as codes;
use iothub_hub::{Hub, HubError, IfMatch, Principal};

use crate::error::ApiError;
use crate::portal::PortalState;

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
    pub(crate) portal: Arc<PortalState>,
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
        // (CSRF is enforced for it by `portal_routes::csrf_guard` on every state-changing request).
        None if crate::portal::session_cookie(headers).is_some() => {
            return state
                .portal
                .session_principal(&state.hub, headers)
                .ok_or_else(|| {
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

/// Puts `etag` on the answer as a quoted `ETag` header, as Azure's SDKs expect.
pub(crate) fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(axum::http::header::ETAG, v);
    }
    response
}
