//! Bounded JSON request bodies: the size limit is checked while reading (never buffer more than the
//! limit), and both an oversize body and malformed JSON get a specific JSON error.

use axum::body::Body;
use iothub_hub::error as codes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads at most `limit` bytes of `body` and parses them as JSON of type `T`.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            codes::REQUEST_TOO_LARGE,
            format!("the request body exceeds the limit of {limit} bytes (configure --max-request-bytes)"),
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            codes::ARGUMENT_INVALID,
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            codes::ARGUMENT_INVALID,
            format!("the request body is not the expected JSON: {e}"),
        )
    })
}

/// Reads a JSON body and takes the one field its request must carry (`take`); `what` names that
/// field and what it holds, for the refusal when it is missing.
pub async fn read_json_field<B: DeserializeOwned, F>(
    body: Body,
    limit: usize,
    take: impl FnOnce(B) -> Option<F>,
    what: &str,
) -> Result<F, ApiError> {
    let parsed: B = read_json(body, limit).await?;
    take(parsed).ok_or_else(|| {
        ApiError::new(
            codes::ARGUMENT_INVALID,
            format!("the body must carry {what}"),
        )
    })
}
