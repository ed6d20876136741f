//! The audit log route (`GET /audit`): entries newest first, filtered by target, paged by id.
//!
//! Why a file of its own: it is neither a certificate nor a policy handler, and the route table's
//! file holds only the table.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::shapes::rfc1123;
use crate::state::{authenticate, blocking, AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct AuditParams {
    target: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

pub(crate) async fn audit_log(
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
