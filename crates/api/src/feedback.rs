//! Azure's feedback routes for cloud-to-device messages: `GET /messages/serviceBound/feedback`
//! hands out the next batch of feedback records (204 when there is none) locked under a token
//! sent as the `ETag`; `DELETE /messages/serviceBound/feedback/{lockToken}` completes it and
//! `POST .../{lockToken}/abandon` gives it back. The queue's rules are the hub's
//! (`iothub_hub::feedback`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iothub_hub::{FeedbackBatch, Hub, HubError, Principal, FEEDBACK_CONTENT_TYPE};

use crate::error::ApiError;
use crate::state::{authenticate, blocking, AppState};

fn batch_response(batch: FeedbackBatch) -> Response {
    let body = batch.azure_json().to_string();
    let newest = batch.newest();
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE.as_str(), FEEDBACK_CONTENT_TYPE.into());
    set(header::ETAG.as_str(), format!("\"{}\"", batch.lock_token));
    set(
        "iothub-lockuntil",
        iothub_pki::pop::format_time(batch.locked_until),
    );
    set("iothub-deliverycount", batch.delivery_count.to_string());
    set("iothub-enqueuedtime", iothub_pki::pop::format_time(newest));
    response
}

/// `GET /messages/serviceBound/feedback`.
pub(crate) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    let batch = blocking(&state, move |hub| hub.receive_feedback(&who)).await?;
    Ok(match batch {
        Some(batch) => batch_response(batch),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The token as a client may send it back: the ETag it received, quotes and all.
fn token_of(raw: &str) -> String {
    raw.trim().trim_matches('"').to_string()
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`.
pub(crate) async fn complete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    settle(state, headers, token, Hub::complete_feedback).await
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`.
pub(crate) async fn abandon(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    settle(state, headers, token, Hub::abandon_feedback).await
}

async fn settle(
    state: AppState,
    headers: HeaderMap,
    token: String,
    how: fn(&Hub, &Principal, &str) -> Result<(), HubError>,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&state, &headers)?;
    let token = token_of(&token);
    blocking(&state, move |hub| how(hub, &who, &token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_back_with_or_without_its_quotes() {
        assert_eq!(token_of("\"ab-c\""), "ab-c");
        assert_eq!(token_of("ab-c"), "ab-c");
        assert_eq!(token_of(" \"ab-c\" "), "ab-c");
    }
}
