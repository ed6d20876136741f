//! The web portal's memory: one-time login links and browser sessions (each remembering the key
//! that made its link, and ending with that key), and the session cookie. The portal's pages call
//! the very same API routes as the CLI (authenticated by the session cookie instead of a SAS
//! token), so no rule lives here.
//!
//! Login: `iothub serve` prints a link with a random single-use token (or `iothub portal-link`
//! asks the hub for a fresh one). Opening it consumes the token, creates a session, sets the
//! cookie (HttpOnly, Secure, SameSite=Strict) and redirects to a URL without the token. Every
//! state-changing request made with the cookie must carry the session's CSRF token in
//! `X-CSRF-Token`, and, when the browser sends `Origin`, come from the hub's own origin.
//!
//! Why apart from the portal's routes, pages and CSRF guard (`portal_routes`): the request
//! helpers (`state`) need a session's principal to authenticate a browser, and those routes need
//! the helpers; split so, imports go one way. This file imports nothing of the crate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use iothub_hub::{Credential, Hub, Principal};

pub const SESSION_COOKIE: &str = "iothub_session";

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
    pub(crate) fn redeem(
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
    pub(crate) fn session(&self, id: &str) -> Option<(String, Credential)> {
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

    pub(crate) fn end(&self, id: &str) {
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

impl PortalState {
    /// A live session's CSRF token and principal (the operator who opened a login link, with the
    /// current rights of the key that made the link). A session whose maker's key was rotated, or
    /// whose policy was deleted, is ended here.
    pub(crate) fn live_session(&self, hub: &Hub, id: &str) -> Option<(String, Principal)> {
        let (csrf, maker) = self.session(id)?;
        match hub.refresh_principal(&Principal::portal_session(maker, Vec::new())) {
            Some(who) => Some((csrf, who)),
            None => {
                self.end(id);
                None
            }
        }
    }

    /// The principal of a portal session: the operator who opened an owner's login link.
    pub(crate) fn session_principal(&self, hub: &Hub, headers: &HeaderMap) -> Option<Principal> {
        let id = session_cookie(headers)?;
        self.live_session(hub, &id).map(|(_, who)| who)
    }

    /// How long a login link made now stays usable.
    pub(crate) fn link_lifetime(&self) -> Duration {
        self.limits.link_lifetime
    }
}
