//! The HTTPS API of iothub: a thin axum adapter over the service layer (`iothub-hub`).
//!
//! Why thin: every rule lives in `Hub`; a handler only authenticates the caller, runs one `Hub`
//! method on a blocking thread (the store is SQLite), and renders the result in Azure IoT Hub's JSON
//! shapes. The Azure-compatible ARM routes and the portal are further adapters over the same calls.
//!
//! Imports go one way: [`routes`] (the table) -> the handler modules -> [`state`] (the kit every
//! handler uses) -> [`portal`] (sessions), [`error`], [`body`], [`shapes`]. No module imports one
//! that imports it back.
//!
//! - [`server`]: the TLS accept loop (rustls), connection limits and timeouts.
//! - [`routes`]: the route table, the OpenAPI document, the fallbacks for unknown paths and methods.
//! - [`state`]: `AppState`, `ApiLimits` and the request helpers (authenticate, If-Match, blocking
//!   hub calls, audited refusals, etags).
//! - [`certificates`]: the native CA certificate handlers and their body readers.
//! - [`policies`]: the shared access policy handlers and policy JSON.
//! - [`audit`]: the audit log route.
//! - [`devices`]: devices, cloud-to-device messages, device messages (+ SSE), connections.
//! - [`azure`]: Azure-shaped aliases (twins, methods, ARM and DPS certificates, ARM policy keys).
//! - [`portal`]: the portal's login links and sessions; [`portal_routes`]: its pages, login,
//!   logout, assets and the CSRF guard.
//! - [`limiter`]: the limit on failed authentications per address (429).
//! - [`shapes`]: JSON shapes (CertificateDescription and friends) and RFC 1123 dates.
//! - [`error`]: JSON error bodies with stable codes.
//! - [`body`]: bounded request bodies.

pub mod audit;
pub mod azure;
pub mod body;
pub mod certificates;
pub mod devices;
pub mod error;
pub mod limiter;
pub mod policies;
pub mod portal;
pub mod portal_routes;
pub mod routes;
pub mod server;
pub mod shapes;
pub mod state;

pub use portal::{PortalLimits, PortalState};
pub use routes::router;
pub use server::{serve_tls, ServerLimits};
pub use state::ApiLimits;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The modules each source file names through `crate::` (`use crate::x`, `crate::x::f`,
    /// `use crate::{x, y}`), by file stem.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut all = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("source");
            let mut named = BTreeSet::new();
            for after in text.split("crate::").skip(1) {
                let names = match after.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or_default(),
                    None => after,
                };
                for name in names.split(',') {
                    let name: String = name
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != stem {
                        named.insert(name);
                    }
                }
            }
            all.insert(stem, named);
        }
        all
    }

    /// Imports go one way (routes -> handlers -> state -> the rest): a file never imports one
    /// that imports it, directly or through others.
    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let imports = imports();
        assert!(
            imports["routes"].contains("state"),
            "the scan finds imports"
        );
        for start in imports.keys().filter(|m| *m != "lib") {
            let mut seen = BTreeSet::new();
            let mut todo: Vec<&String> = imports[start].iter().collect();
            while let Some(m) = todo.pop() {
                assert_ne!(m, start, "{start} imports a module that imports it back");
                if seen.insert(m.clone()) {
                    todo.extend(imports.get(m).into_iter().flatten());
                }
            }
        }
    }
}
