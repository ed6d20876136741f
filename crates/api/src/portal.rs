//! The web portal's plumbing: one-time login links, browser sessions, CSRF protection, security
//! headers and the embedded static assets. The portal's pages call the very same API routes as the
//! CLI (authenticated by the session cookie instead of a SAS token), so no rule lives here.
//!
//! Login: `iothub serve` prints a link with a random single-use token (or `iothub portal-link`
//! asks the hub for a fresh one). Opening it consumes the token, creates a session, sets the
//! cookie (HttpOnly, Secure, SameSite=Strict) and redirects to a URL without the token. Every
//! state-changing request made with the cookie must carry the session's CSRF token in
//! `X-CSRF-Token`, and, when the browser sends `Origin`, come from the hub's own origin.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use iothub_hub::{Credential, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::AppState;
use iothub_hub::error as codes;

pub const SESSION_COOKIE: &str = "iothub_session";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Limits of the portal.
#[derive(Debug, Clone)]
pub struct PortalLimits {
    /// How long a login link stays usable.
    pub link_lifetime: Duration,
    /// How long a session lasts without use.
    pub session_idle: Duration,
    /// Live login links and sessions at most (oldest dropped beyond).
    pub max_entries: usize,
}

impl Default for PortalLimits {
    fn default() -> Self {
        PortalLimits {
            link_lifetime: Duration::from_secs(15 * 60),
            session_idle: Duration::from_secs(8 * 3600),
            max_entries: 1000,
        }
    }
}

struct Session {
    csrf: String,
    last_seen: Instant,
    /// The key whose holder made the login link: the session lasts only while that key does.
    maker: Credential,
}

/// A login link: when it expires, and the key of whoever made it (None: made by `iothub serve`
/// before the router existed; bound to the owner's primary key by `router`).
struct Link {
    expires: Instant,
    maker: Option<Credential>,
}

/// Login links (by SHA-256 of the token) and sessions, in memory: a restart signs everyone out.
pub struct PortalState {
    limits: PortalLimits,
    links: Mutex<HashMap<Vec<u8>, Link>>,
    sessions: Mutex<HashMap<Vec<u8>, Session>>,
}

fn random_hex(bytes: usize) -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    // The system CSPRNG does not fail on Linux; a zero token would still be unique per process.
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

fn digest(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

impl PortalState {
    pub fn new(limits: PortalLimits) -> PortalState {
        PortalState {
            limits,
            links: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a single-use login token on behalf of the hub's owner (the link `iothub serve`
    /// prints; `router` binds it to the owner's primary key).
    pub fn new_link_token(&self) -> String {
        self.new_link(None)
    }

    /// Creates a single-use login token made by the holder of `maker`.
    pub(crate) fn new_link(&self, maker: Option<Credential>) -> String {
        let token = random_hex(32);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        links.retain(|_, l| l.expires > now);
        if links.len() >= self.limits.max_entries {
            if let Some(oldest) = links
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| k.clone())
            {
                links.remove(&oldest);
            }
        }
        links.insert(
            digest(&token),
            Link {
                expires: now + self.limits.link_lifetime,
                maker,
            },
        );
        token
    }

    /// Binds the links made before the router existed to `owner` (the owner's primary key, which
    /// the local connection string holds): rotating that key ends them and their sessions.
    pub(crate) fn bind_unowned_links(&self, owner: &Credential) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        for link in links.values_mut().filter(|l| l.maker.is_none()) {
            link.maker = Some(owner.clone());
        }
    }

    /// Consumes a login token; returns a new session id and its CSRF token. `still_valid` says
    /// whether the key that made the link still works.
    fn redeem(
        &self,
        token: &str,
        still_valid: impl FnOnce(Option<&Credential>) -> Option<Credential>,
    ) -> Option<(String, String)> {
        let link = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up by digest: no comparison of the secret itself happens here.
            links
                .remove(&digest(token))
                .filter(|l| l.expires > Instant::now())
        };
        let maker = still_valid(link?.maker.as_ref())?;
        let (id, csrf) = (random_hex(32), random_hex(32));
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let idle = self.limits.session_idle;
        sessions.retain(|_, s| now.duration_since(s.last_seen) < idle);
        if sessions.len() >= self.limits.max_entries {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            digest(&id),
            Session {
                csrf: csrf.clone(),
                last_seen: now,
                maker,
            },
        );
        Some((id, csrf))
    }

    /// The CSRF token and maker of a live session (refreshing its idle timer).
    fn session(&self, id: &str) -> Option<(String, Credential)> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(id);
        let idle = self.limits.session_idle;
        match sessions.get_mut(&key) {
            Some(s) if s.last_seen.elapsed() < idle => {
                s.last_seen = Instant::now();
                Some((s.csrf.clone(), s.maker.clone()))
            }
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(id));
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A live session's CSRF token and principal (the operator who opened a login link, with the
/// current rights of the key that made the link). A session whose maker's key was rotated, or
/// whose policy was deleted, is ended here.
fn live_session(state: &AppState, id: &str) -> Option<(String, Principal)> {
    let (csrf, maker) = state.portal.session(id)?;
    match state
        .hub
        .refresh_principal(&Principal::portal_session(maker, Vec::new()))
    {
        Some(who) => Some((csrf, who)),
        None => {
            state.portal.end(id);
            None
        }
    }
}

/// The principal of a portal session: the operator who opened an owner's login link.
pub(crate) fn session_principal(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    let id = session_cookie(headers)?;
    live_session(state, &id).map(|(_, who)| who)
}

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
    let Some((expected, _)) = live_session(&state, &id) else {
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

fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>iothub - {title}</title><link rel=\"stylesheet\" href=\"/portal/static/app.css\"></head><body><main class=\"narrow\"><h1>{title}</h1><p>{text}</p></main></body></html>"
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
    let mut response = Redirect::to("/portal/certificates").into_response();
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
    let Some((csrf, _)) = live_session(&state, &id) else {
        return message_page(StatusCode::UNAUTHORIZED, "Session ended", "Your portal session has ended. Run <code>iothub portal-link</code> for a new login link.");
    };
    let page_name = match uri.path().trim_start_matches("/portal").trim_matches('/') {
        "" | "certificates" => "certificates",
        "devices" => "devices",
        "connections" => "connections",
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

pub(crate) async fn app_css() -> Response {
    secure_headers(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response())
}

/// `POST /portal-links` (owner SAS token): a fresh login link for this hub, standing for the
/// caller's key. A portal session cannot make one (`Hub::authorize_portal_link`).
pub(crate) async fn create_link(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = crate::routes::authenticate(&state, &headers)?;
    let maker = crate::routes::blocking(&state, move |hub| hub.authorize_portal_link(&who)).await?;
    let token = state.portal.new_link(Some(maker));
    Ok(Json(json!({
        "path": format!("/portal/login?token={token}"),
        "expiresInSeconds": state.portal.limits.link_lifetime.as_secs(),
    })))
}
