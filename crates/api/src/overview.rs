//! `GET /overview`: the hub at a glance (`Hub::overview`) as JSON, for the portal's overview page
//! and for scripts.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use iothub_hub::overview::days_left;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::shapes::rfc1123;
use crate::state::{authenticate, blocking, AppState};

pub(crate) async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let (o, now) = blocking(&state, move |hub| Ok((hub.overview(&who)?, hub.now()))).await?;
    let refusals: serde_json::Map<String, Value> = o
        .refusals_last_hour
        .iter()
        .map(|(class, n)| (class.as_str().to_string(), json!(n)))
        .collect();
    Ok(Json(json!({
        "certificates": {
            "verified": o.cas_verified,
            "unverified": o.cas_unverified,
            "expiringSoon": o.cas_expiring.iter().map(|c| json!({
                "name": c.name,
                "status": if c.is_verified { "Verified" } else { "Unverified" },
                "expiry": rfc1123(c.not_after),
                "daysLeft": days_left(c.not_after, now),
            })).collect::<Vec<_>>(),
        },
        "devices": { "total": o.devices, "enabled": o.devices_enabled, "connected": o.connected },
        "refusalsLastHour": refusals,
        "telemetry": {
            "messagesPerSecond": (o.telemetry_per_second * 100.0).round() / 100.0,
            "messagesSinceStart": o.telemetry_total,
        },
    })))
}
