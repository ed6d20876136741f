//! Azure-shaped routes over the same service calls:
//! - twins and direct methods as azure-iot-hub calls them (`/twins/{id}`, `/twins/{id}/methods`);
//! - the management plane's certificate operations as azure-mgmt-iothub calls them
//!   (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/IotHubs/{hub}/certificates/...`),
//!   and the Device Provisioning Service's (`.../provisioningServices/{dps}/certificates/...`),
//!   both mapped to the one CA registry; and the hub's policy keys (`.../IotHubs/{hub}/listkeys`,
//!   `.../IotHubKeys/{keyName}/listkeys`). Any subscription and resource group is accepted; the
//!   resource name must be the hub's name. No rule is implemented here: these are aliases.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use iothub_hub::error as codes;
use iothub_hub::{CaView, HubError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::certificates::{read_put_certificate, read_verification_certificate};
use crate::error::ApiError;
use crate::policies::policy_with_keys;
use crate::shapes::certificate_description;
use crate::state::{audited, authenticate, blocking, if_match, AppState};

// ----- twins and direct methods ------------------------------------------------------------------

pub(crate) async fn get_twin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    Ok(Json(
        blocking(&state, move |hub| hub.get_twin(&who, &id)).await?,
    ))
}

async fn update_twin(
    state: AppState,
    headers: HeaderMap,
    id: String,
    body: Body,
    replace: bool,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<Value>(body, state.limits.max_request_bytes).await;
    let twin = audited(&state, &who, "twin.update", format!("device/{id}"), parsed).await?;
    let precondition = if_match(&headers);
    Ok(Json(
        blocking(&state, move |hub| {
            hub.update_twin(&who, &id, &twin, precondition.as_ref(), replace)
        })
        .await?,
    ))
}

pub(crate) async fn patch_twin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    update_twin(state, headers, id, body, false).await
}

pub(crate) async fn replace_twin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    update_twin(state, headers, id, body, true).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    method_name: String,
    #[serde(default)]
    payload: Value,
    response_timeout_in_seconds: Option<u64>,
}

/// Invokes a direct method and waits for the device's answer (default 30 s, at most 300 s).
pub(crate) async fn invoke_method(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let parsed = read_json::<MethodCall>(body, state.limits.max_request_bytes).await;
    let call = audited(
        &state,
        &who,
        "method.invoke",
        format!("device/{id}"),
        parsed,
    )
    .await?;
    let timeout = call.response_timeout_in_seconds.unwrap_or(30).clamp(5, 300);
    let (device, name, payload) = (id.clone(), call.method_name.clone(), call.payload.clone());
    let wait = Duration::from_secs(timeout);
    let (rid, answer) = blocking(&state, move |hub| {
        hub.invoke_method(&who, &device, &name, &payload, wait)
    })
    .await?;
    match tokio::time::timeout(Duration::from_secs(timeout), answer).await {
        Ok(Ok((status, payload))) => Ok(Json(json!({ "status": status, "payload": payload }))),
        Ok(Err(_)) => Err(ApiError::from(HubError::DeviceNotOnline(id))),
        Err(_) => {
            state.hub.forget_method(rid);
            Err(ApiError::from(HubError::MethodTimeout {
                device: id,
                method: call.method_name,
                seconds: timeout,
            }))
        }
    }
}

// ----- management-plane certificates (IoT Hub and DPS) --------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    IotHub,
    Dps,
}

impl Plane {
    fn provider_path(self) -> &'static str {
        match self {
            Plane::IotHub => "IotHubs",
            Plane::Dps => "provisioningServices",
        }
    }

    fn resource_type(self) -> &'static str {
        match self {
            Plane::IotHub => "Microsoft.Devices/IotHubs/Certificates",
            Plane::Dps => "Microsoft.Devices/ProvisioningServices/Certificates",
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ArmPath {
    sub: String,
    rg: String,
    resource: String,
    name: Option<String>,
}

fn arm_id(plane: Plane, p: &ArmPath, name: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Devices/{}/{}/certificates/{name}",
        p.sub,
        p.rg,
        plane.provider_path(),
        p.resource
    )
}

fn describe(plane: Plane, p: &ArmPath, v: &CaView) -> Value {
    let mut d = certificate_description(v, &arm_id(plane, p, &v.name));
    d["type"] = Value::String(plane.resource_type().into());
    if plane == Plane::Dps {
        // The DPS SDK types `certificate` as bytes with a base64 wire format (it sends base64 of
        // the PEM text): answer in kind, so that it reads back the PEM it uploaded.
        use base64::Engine as _;
        let pem = v.info.pem();
        d["properties"]["certificate"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()));
    }
    d
}

fn check_resource(state: &AppState, p: &ArmPath) -> Result<(), ApiError> {
    let hub_name = &state.hub.config().hub_name;
    if !p.resource.eq_ignore_ascii_case(hub_name) {
        return Err(ApiError::new(
            codes::ROUTE_NOT_FOUND,
            format!(
                "this hub is '{hub_name}'; there is no resource '{}' here",
                p.resource
            ),
        ));
    }
    Ok(())
}

fn cert_name(p: &ArmPath) -> String {
    p.name.clone().unwrap_or_default()
}

async fn arm_list(
    state: AppState,
    headers: HeaderMap,
    plane: Plane,
    p: ArmPath,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let views = blocking(&state, move |hub| hub.list_certificates(&who)).await?;
    let value: Vec<Value> = views.iter().map(|v| describe(plane, &p, v)).collect();
    Ok(Json(json!({ "value": value })).into_response())
}

async fn arm_get(
    state: AppState,
    headers: HeaderMap,
    plane: Plane,
    p: ArmPath,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let name = cert_name(&p);
    let v = blocking(&state, move |hub| hub.get_certificate(&who, &name)).await?;
    Ok(Json(describe(plane, &p, &v)).into_response())
}

async fn arm_put(
    state: AppState,
    headers: HeaderMap,
    plane: Plane,
    p: ArmPath,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let name = cert_name(&p);
    let request = read_put_certificate(&state, &who, &name, body).await?;
    let precondition = if_match(&headers);
    let (v, created) = blocking(&state, move |hub| {
        hub.put_certificate(&who, &name, &request, precondition.as_ref())
    })
    .await?;
    // The DPS SDK accepts only 200 for a create-or-update; the IoT Hub SDK accepts 200 and 201.
    let status = if created && plane == Plane::IotHub {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(plane, &p, &v))).into_response())
}

async fn arm_delete(state: AppState, headers: HeaderMap, p: ArmPath) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let name = cert_name(&p);
    let precondition = if_match(&headers);
    match blocking(&state, move |hub| {
        hub.delete_certificate(&who, &name, precondition.as_ref())
    })
    .await
    {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        // The management SDKs document delete as idempotent: a missing certificate is no error.
        Err(e) if e.code == codes::CERTIFICATE_NOT_FOUND => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(e),
    }
}

async fn arm_generate(
    state: AppState,
    headers: HeaderMap,
    plane: Plane,
    p: ArmPath,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let name = cert_name(&p);
    let precondition = if_match(&headers);
    let (v, code, _) = blocking(&state, move |hub| {
        hub.generate_verification_code(&who, &name, precondition.as_ref())
    })
    .await?;
    let mut d = describe(plane, &p, &v);
    d["properties"]["verificationCode"] = Value::String(code);
    Ok(Json(d).into_response())
}

async fn arm_verify(
    state: AppState,
    headers: HeaderMap,
    plane: Plane,
    p: ArmPath,
    body: Body,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, &headers)?;
    check_resource(&state, &p)?;
    let name = cert_name(&p);
    let certificate = read_verification_certificate(&state, &who, &name, body).await?;
    let precondition = if_match(&headers);
    let v = blocking(&state, move |hub| {
        hub.verify_certificate(&who, &name, precondition.as_ref(), &certificate)
    })
    .await?;
    Ok(Json(describe(plane, &p, &v)).into_response())
}

/// Renders a result; the DPS SDK types the error code as an integer (IoT Hub's accepts either).
fn respond(plane: Plane, r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(mut e) => {
            e.numeric = plane == Plane::Dps;
            e.into_response()
        }
    }
}

macro_rules! plane_handlers {
    ($plane:expr, $list:ident, $get:ident, $put:ident, $delete:ident, $generate:ident, $verify:ident) => {
        pub(crate) async fn $list(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
        ) -> Response {
            respond($plane, arm_list(s, h, $plane, p).await)
        }
        pub(crate) async fn $get(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
        ) -> Response {
            respond($plane, arm_get(s, h, $plane, p).await)
        }
        pub(crate) async fn $put(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
            b: Body,
        ) -> Response {
            respond($plane, arm_put(s, h, $plane, p, b).await)
        }
        pub(crate) async fn $delete(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
        ) -> Response {
            respond($plane, arm_delete(s, h, p).await)
        }
        pub(crate) async fn $generate(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
        ) -> Response {
            respond($plane, arm_generate(s, h, $plane, p).await)
        }
        pub(crate) async fn $verify(
            State(s): State<AppState>,
            h: HeaderMap,
            Path(p): Path<ArmPath>,
            b: Body,
        ) -> Response {
            respond($plane, arm_verify(s, h, $plane, p, b).await)
        }
    };
}

plane_handlers!(
    Plane::IotHub,
    hub_list,
    hub_get,
    hub_put,
    hub_delete,
    hub_generate,
    hub_verify
);
plane_handlers!(
    Plane::Dps,
    dps_list,
    dps_get,
    dps_put,
    dps_delete,
    dps_generate,
    dps_verify
);

// ----- management-plane shared access policy keys (IoT Hub) ---------------------------------------

/// `POST .../IotHubs/{hub}/listkeys` (`IotHubResourceOperations.list_keys`): every policy with its
/// keys, as `SharedAccessSignatureAuthorizationRuleListResult`. Owner level only, never a portal
/// session (`Hub::all_policy_keys`). Policies are not created here: in ARM that is a PUT of the
/// whole IotHub resource, which this hub does not serve (use `PUT /policies/{name}`).
pub(crate) async fn hub_list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<ArmPath>,
) -> Response {
    let r = async {
        let who = authenticate(&state, &headers)?;
        check_resource(&state, &p)?;
        let all = blocking(&state, move |hub| hub.all_policy_keys(&who)).await?;
        let value: Vec<Value> = all.iter().map(policy_with_keys).collect();
        Ok(Json(json!({ "value": value, "nextLink": null })).into_response())
    }
    .await;
    respond(Plane::IotHub, r)
}

/// `POST .../IotHubs/{hub}/IotHubKeys/{keyName}/listkeys` (`get_keys_for_key_name`): one policy
/// with its keys, as `SharedAccessSignatureAuthorizationRule`.
pub(crate) async fn hub_key_for_name(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<ArmPath>,
) -> Response {
    let r = async {
        let who = authenticate(&state, &headers)?;
        check_resource(&state, &p)?;
        let name = cert_name(&p);
        let policy = blocking(&state, move |hub| hub.policy_keys(&who, &name)).await?;
        Ok(Json(policy_with_keys(&policy)).into_response())
    }
    .await;
    respond(Plane::IotHub, r)
}
