//! The web portal's routes: the login link (`/portal/login`, single use, sets the session cookie),
//! logout, the pages (one HTML shell the script fills), the embedded assets with security headers,
//! `POST /portal-links`, and the CSRF guard, a middleware over every route. The links and
//! sessions themselves are kept by `portal`.
//!
//! Why a file of its own: these are handlers over the shared request helpers (`state`), which in
//! turn need the portal's sessions; apart from `portal`, nothing imports back.

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use iothub_hub::error as codes;
use iothub_hub::{Credential, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::portal::{session_cookie, SESSION_COOKIE};
use crate::state::{authenticate, blocking, AppState};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// CSRF protection for every route: a state-changing request authenticated by the session cookie
/// (not by an Authorization header) must carry the session's CSRF token and, if the browser sends
/// an Origin, come from this hub's origin.
pub(crate) async fn csrf_guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let headers = request.headers();
    if safe || headers.contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let Some(id) = session_cookie(headers) else {
        return next.run(request).await;
    };
    let refuse = |why: &str| ApiError::new(codes::CSRF_REJECTED, why.to_string()).into_response();
    let Some((expected, _)) = state.portal.live_session(&state.hub, &id) else {
        return refuse("the portal session has ended; open a new login link");
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if origin != format!("https://{host}") {
            return refuse(&format!("cross-origin request from '{origin}' refused"));
        }
    }
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !iothub_pki::pop::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return refuse("missing or wrong X-CSRF-Token for this portal session");
    }
    next.run(request).await
}

fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    token: Option<String>,
}

const PAGE: &str = include_str!("../portal/index.html");
const APP_JS: &str = include_str!("../portal/app.js");
const APP_CSS: &str = include_str!("../portal/app.css");
const ICON_SVG: &str = include_str!("../portal/icon.svg");

fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>iothub - {title}</title><link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\"><link rel=\"stylesheet\" href=\"/portal/static/app.css\"></head><body><main class=\"narrow\"><h1>{title}</h1><p>{text}</p></main></body></html>"
    );
    secure_headers((status, Html(body)).into_response())
}

/// `GET /portal/login?token=...`: redeems a login link, then redirects without the token.
pub(crate) async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    // The link works only while the key that made it does (a link made by `iothub serve` and
    // never bound stands for the owner's primary key).
    let still_valid = |maker: Option<&Credential>| {
        let maker = match maker {
            Some(m) => m.clone(),
            None => state.hub.owner_credential().ok()?,
        };
        state
            .hub
            .refresh_principal(&Principal::portal_session(maker.clone(), Vec::new()))
            .map(|_| maker)
    };
    let Some((id, _csrf)) = q
        .token
        .as_deref()
        .and_then(|t| state.portal.redeem(t, still_valid))
    else {
        return message_page(
            StatusCode::UNAUTHORIZED,
            "Login link not valid",
            "This login link is unknown, already used or expired. Run <code>iothub portal-link</code> on the hub's machine for a new one.",
        );
    };
    let mut response = Redirect::to("/portal/overview").into_response();
    let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure_headers(response)
}

/// `POST /portal/logout`.
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.portal.end(&id);
    }
    let mut response = Redirect::to("/portal/signed-out").into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure_headers(response)
}

pub(crate) async fn signed_out() -> Response {
    message_page(
        StatusCode::OK,
        "Signed out",
        "You are signed out. Open a new login link to sign in again.",
    )
}

/// The portal's pages: one shell; the script renders the page named by the path.
pub(crate) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let Some(id) = session_cookie(&headers) else {
        return message_page(StatusCode::UNAUTHORIZED, "Sign in", "Open the login link that <code>iothub serve</code> printed, or run <code>iothub portal-link</code> for a new one.");
    };
    let Some((csrf, _)) = state.portal.live_session(&state.hub, &id) else {
        return message_page(StatusCode::UNAUTHORIZED, "Session ended", "Your portal session has ended. Run <code>iothub portal-link</code> for a new login link.");
    };
    let page_name = match uri.path().trim_start_matches("/portal").trim_matches('/') {
        "" | "overview" => "overview",
        "certificates" => "certificates",
        "devices" => "devices",
        "device" => "device",
        "connections" => "connections",
        "provisioning" => "provisioning",
        _ => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such portal page.",
            )
        }
    };
    let html = PAGE
        .replace("{{csrf}}", &csrf)
        .replace("{{page}}", page_name);
    secure_headers(Html(html).into_response())
}

pub(crate) async fn app_js() -> Response {
    secure_headers(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            APP_JS,
        )
            .into_response(),
    )
}

/// The hub's icon, for the browser tab (`/favicon.ico`, which browsers ask for on their own, and
/// the pages' `<link rel="icon">`). Public: it says nothing about the hub.
pub(crate) async fn favicon() -> Response {
    secure_headers(([(header::CONTENT_TYPE, "image/svg+xml")], ICON_SVG).into_response())
}

/// `GET /` from a browser (it asks for `text/html`): to the portal, which asks it to sign in.
/// Anything else at `/`, and every other unknown path, gets the API's answer.
pub(crate) fn browser_home(
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    (*method == Method::GET && uri.path() == "/" && wants_html)
        .then(|| secure_headers(Redirect::to("/portal").into_response()))
}

pub(crate) async fn app_css() -> Response {
    secure_headers(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response())
}

/// `POST /portal-links` (owner SAS token): a fresh login link for this hub, standing for the
/// caller's key. A portal session cannot make one (`Hub::authorize_portal_link`).
pub(crate) async fn create_link(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authenticate(&state, &headers)?;
    let maker = blocking(&state, move |hub| hub.authorize_portal_link(&who)).await?;
    let token = state.portal.new_link(Some(maker));
    Ok(Json(json!({
        "path": format!("/portal/login?token={token}"),
        "expiresInSeconds": state.portal.link_lifetime().as_secs(),
    })))
}
