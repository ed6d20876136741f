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
