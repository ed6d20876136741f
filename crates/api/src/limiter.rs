//! A limit on failed authentications per client address (API tokens and portal login links alike):
//! past `limit` refusals within a minute, the address gets 429 with `Retry-After` until the minute
//! ends. Keys cannot be guessed (256-bit HMAC keys and login tokens); the limit keeps a misbehaving
//! client from flooding the logs and the CPU.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iothub_hub::error as codes;

use crate::error::ApiError;

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (oldest windows dropped beyond).
const MAX_TRACKED: usize = 100_000;

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

pub struct AuthFailureLimiter {
    limit: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailureLimiter {
    pub fn new(limit_per_minute: u32) -> AuthFailureLimiter {
        AuthFailureLimiter {
            limit: limit_per_minute.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until the address may try again, if it is over the limit.
    fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = windows.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *count >= self.limit).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// Middleware over every route: refuses an address over its failure limit, and counts 401s.
pub(crate) async fn limit_auth_failures(
    State(limiter): State<Arc<AuthFailureLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    if let Some(ip) = ip {
        if let Some(wait) = limiter.blocked_for(ip) {
            let mut r = ApiError::new(
                codes::THROTTLING_EXCEPTION,
                format!("too many failed authentications from {ip}; try again in {wait} s"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    // Any api-version is accepted (SDK generations send different dates); it is logged.
    if let Some(version) = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")))
    {
        tracing::debug!(api_version = %version, path = %request.uri().path(), "api-version");
    }
    let response = next.run(request).await;
    if let (Some(ip), StatusCode::UNAUTHORIZED) = (ip, response.status()) {
        limiter.record_failure(ip);
    }
    response
}
