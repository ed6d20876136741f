//! The Event Hubs-compatible endpoint's management routes: `GET /eventHub` (the name readers put
//! in `EntityPath`, the partition ids, the consumer groups) and `/eventHub/consumerGroups[/{name}]`
//! (list, PUT adds, DELETE deletes). The rules are the hub's (`iothub_hub::eventhub`); the reads
//! themselves travel over AMQP (`iothub-amqp`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use iothub_hub::ConsumerGroupView;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::{authenticate, blocking, AppState};

fn group_json(g: &ConsumerGroupView) -> Value {
    json!({
        "name": g.name,
        "createdTime": g.created.map(iothub_pki::pop::format_time),
    })
}

/// `GET /eventHub`.
pub(crate) async fn event_hub(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let (info, groups) = blocking(&state, move |hub| {
        Ok((hub.eventhub_info(&who)?, hub.consumer_groups(&who)?))
    })
    .await?;
    Ok(Json(json!({
        "name": info.name,
        "createdTime": iothub_pki::pop::format_time(info.created_ms / 1000),
        "partitionIds": info.partition_ids,
        "consumerGroups": groups.iter().map(group_json).collect::<Vec<_>>(),
    })))
}

/// `GET /eventHub/consumerGroups`.
pub(crate) async fn list_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let groups = blocking(&state, move |hub| hub.consumer_groups(&who)).await?;
    Ok(Json(json!(groups
        .iter()
        .map(group_json)
        .collect::<Vec<_>>())))
}

/// `PUT /eventHub/consumerGroups/{name}`: adds it (201), or 409 if it exists.
pub(crate) async fn put_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = authenticate(&state, &headers)?;
    let group = blocking(&state, move |hub| hub.add_consumer_group(&who, &name)).await?;
    Ok((StatusCode::CREATED, Json(group_json(&group))))
}

/// `DELETE /eventHub/consumerGroups/{name}`.
pub(crate) async fn delete_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&state, &headers)?;
    blocking(&state, move |hub| hub.delete_consumer_group(&who, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
