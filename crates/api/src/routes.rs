//! The route table: which handler serves each path and method, the middleware over every route
//! (the CSRF guard, the limit on failed authentications), and the answers that belong to the table
//! itself: the OpenAPI document of these routes, and the fallbacks for unknown paths and methods.
//! Paths mirror Azure's (`/certificates/{name}`, `.../generateVerificationCode`, `.../verify`); any
//! `api-version` query is accepted.
//!
//! Why only the table: the handlers live by subject (`certificates`, `devices`, `policies`,
//! `audit`, `azure`, `portal_routes`) over the shared request helpers (`state`); this file imports
//! them all and nothing imports it, so there is no import circle.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use iothub_hub::error as codes;
use iothub_hub::Hub;

use crate::error::ApiError;
use crate::limiter::{limit_auth_failures, AuthFailureLimiter};
use crate::portal::PortalState;
use crate::state::{authenticate, ApiLimits, AppState};
use crate::{
    audit, azure, certificates, devices, enrollments, eventhub, feedback, overview, policies,
    portal_routes, revocations,
};

/// The OpenAPI document of this API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The hub's native routes: certificates, devices and their messages, telemetry, connections,
/// twins and methods.
fn registry_routes() -> Router<AppState> {
    Router::new()
        .route("/certificates", get(certificates::list_certificates))
        .route(
            "/certificates/{name}",
            get(certificates::get_certificate)
                .put(certificates::put_certificate)
                .delete(certificates::delete_certificate),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(certificates::generate_code),
        )
        .route(
            "/certificates/{name}/verify",
            post(certificates::verify_certificate),
        )
        .route(
            "/certificates/{name}/revocations",
            get(revocations::list).post(revocations::revoke),
        )
        .route(
            "/certificates/{name}/crl",
            get(revocations::get_crl).put(revocations::put_crl),
        )
        .route(
            "/certificates/{name}/autoRegistration",
            get(revocations::get_auto_registration).put(revocations::put_auto_registration),
        )
        .route("/eventHub", get(eventhub::event_hub))
        .route("/eventHub/consumerGroups", get(eventhub::list_groups))
        .route(
            "/eventHub/consumerGroups/{name}",
            put(eventhub::put_group).delete(eventhub::delete_group),
        )
        .route("/provisioning", get(enrollments::provisioning))
        .route("/enrollmentGroups", get(enrollments::list_groups))
        .route(
            "/enrollmentGroups/{name}",
            get(enrollments::get_group)
                .put(enrollments::put_group)
                .delete(enrollments::delete_group),
        )
        .route("/enrollments", get(enrollments::list_individuals))
        .route(
            "/enrollments/{id}",
            get(enrollments::get_individual)
                .put(enrollments::put_individual)
                .delete(enrollments::delete_individual),
        )
        .route("/registrations", get(enrollments::list_registrations))
        .route("/registrations/{id}", get(enrollments::get_registration))
        // POST, not `/devices/import`: that path would hide a device named "import".
        .route(
            "/devices",
            get(devices::list_devices).post(devices::import_devices),
        )
        .route(
            "/devices/{id}",
            get(devices::get_device)
                .put(devices::put_device)
                .delete(devices::delete_device),
        )
        .route(
            "/devices/{id}/messages/devicebound",
            get(devices::list_c2d).post(devices::send_c2d),
        )
        .route("/messages", get(devices::read_messages))
        .route("/messages/serviceBound/feedback", get(feedback::receive))
        .route(
            "/messages/serviceBound/feedback/{lockToken}",
            delete(feedback::complete),
        )
        .route(
            "/messages/serviceBound/feedback/{lockToken}/abandon",
            post(feedback::abandon),
        )
        .route("/messages/stream", get(devices::stream_messages))
        .route("/connections", get(devices::connections))
        .route("/overview", get(overview::overview))
        .route(
            "/twins/{id}",
            get(azure::get_twin)
                .patch(azure::patch_twin)
                .put(azure::replace_twin),
        )
        .route("/twins/{id}/methods", post(azure::invoke_method))
}

/// Azure's management-plane aliases over the same hub calls: ARM (IoT hub certificates and
/// policy keys) and DPS (provisioning service certificates).
fn management_routes() -> Router<AppState> {
    Router::new()
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
}

/// The audit log and shared access policies.
fn access_routes() -> Router<AppState> {
    Router::new()
        .route("/audit", get(audit::audit_log))
        .route("/policies", get(policies::list_policies))
        .route(
            "/policies/{name}",
            get(policies::get_policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/policies/{name}/listKeys", post(policies::policy_keys))
        .route(
            "/policies/{name}/rotateKey",
            post(policies::rotate_policy_key),
        )
}

/// The portal: its pages, assets, sign-in and sign-out, and login links.
fn portal_table() -> Router<AppState> {
    Router::new()
        .route("/portal-links", post(portal_routes::create_link))
        .route("/portal", get(portal_routes::page))
        .route("/portal/overview", get(portal_routes::page))
        .route("/portal/certificates", get(portal_routes::page))
        .route("/portal/devices", get(portal_routes::page))
        .route("/portal/device", get(portal_routes::page))
        .route("/portal/connections", get(portal_routes::page))
        .route("/portal/provisioning", get(portal_routes::page))
        .route("/portal/login", get(portal_routes::login))
        .route("/portal/logout", post(portal_routes::logout))
        .route("/portal/signed-out", get(portal_routes::signed_out))
        .route("/portal/static/app.js", get(portal_routes::app_js))
        .route("/portal/static/app.css", get(portal_routes::app_css))
        .route("/favicon.ico", get(portal_routes::favicon))
}

/// Builds the router over `hub`; `portal` holds the portal's login links and sessions.
pub fn router(hub: Hub, limits: ApiLimits, portal: Arc<PortalState>) -> Router {
    // The link `iothub serve` printed before the router existed stands for the owner's primary key.
    match hub.owner_credential() {
        Ok(owner) => portal.bind_unowned_links(&owner),
        Err(e) => tracing::warn!(error = %e, "portal links not bound to the owner key"),
    }
    let auth_limiter = Arc::new(AuthFailureLimiter::new(limits.auth_failures_per_minute));
    let state = AppState {
        hub,
        limits: Arc::new(limits),
        portal,
    };
    registry_routes()
        .merge(management_routes())
        .merge(access_routes())
        .merge(portal_table())
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            portal_routes::csrf_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth_limiter,
            limit_auth_failures,
        ))
        .with_state(state)
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
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    if let Some(redirect) = portal_routes::browser_home(&method, &uri, &headers) {
        return Ok(redirect);
    }
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
        // From the first sub-table to the router's fallback: every `.route(` of the table.
        let start = source.find("fn registry_routes").expect("registry_routes");
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

    /// The published schema offers exactly the values the hub accepts on a device put: the
    /// statuses, and the authentication types a device can connect with (`none` is read, never
    /// written).
    #[test]
    fn openapi_device_enums_are_the_hub_values() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let listed = |pointer: &str| -> Vec<String> {
            spec.pointer(pointer).unwrap()["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let statuses: Vec<String> = iothub_hub::DeviceStatus::ALL
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            listed("/components/schemas/Device/properties/status"),
            statuses
        );
        let types: Vec<String> = iothub_hub::AuthType::ALL
            .iter()
            .filter(|t| **t != iothub_hub::AuthType::None)
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            listed("/components/schemas/Device/properties/authentication/properties/type"),
            types
        );
    }
}
