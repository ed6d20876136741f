//! JSON errors: `{"code": "400055", "httpStatusCode": "BadRequest", "message": "...", "details": null,
//! "errorName": "ProofCommonNameMismatch"}` plus the header `iothub-errorcode`, the top-level shape
//! Azure's SDKs parse (docs/azure-wire.md#error-body).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use iothub_hub::error::ErrorCode;
use iothub_hub::HubError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Render `code` as a JSON number (the DPS management SDK types it so).
    pub numeric: bool,
}

impl ApiError {
    /// An error the API decides itself (a body it cannot read, an unknown route), with one of the
    /// hub's codes (`iothub_hub::error::ARGUMENT_INVALID`...): the code is a constant, not a name
    /// looked up, so a misspelt code does not compile.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            numeric: false,
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
            numeric: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = self.code.number, message = %self.message, "request failed");
        }
        let body = serde_json::json!({
            "code": if self.numeric { serde_json::json!(self.code.number) } else { serde_json::json!(self.code.number.to_string()) },
            "httpStatusCode": status.canonical_reason().unwrap_or("Error").replace(' ', ""),
            "message": self.message,
            "details": null,
            "errorName": self.code.name,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(self.code.name) {
            response.headers_mut().insert("iothub-errorcode", v);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("SharedAccessSignature"),
            );
        }
        response
    }
}
