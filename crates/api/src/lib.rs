//! The HTTPS API of iothub: a thin axum adapter over the service layer (`iothub-hub`).
//!
//! Why thin: every rule lives in `Hub`; a handler only authenticates the caller, runs one `Hub`
//! method on a blocking thread (the store is SQLite), and renders the result in Azure IoT Hub's JSON
//! shapes. The Azure-compatible ARM routes and the portal are further adapters over the same calls.
//!
//! Imports go one way: [`routes`] (the table) -> the handler modules -> [`state`] (the kit every
//! handler uses) -> [`portal`] (sessions), [`error`], [`body`], [`shapes`]. No module imports one
//! that imports it back (checked for every crate by `crates/iothub/tests/house.rs`).
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
pub mod enrollments;
pub mod error;
pub mod eventhub;
pub mod feedback;
pub mod limiter;
pub mod overview;
pub mod policies;
pub mod portal;
pub mod portal_routes;
pub mod revocations;
pub mod routes;
pub mod server;
pub mod shapes;
pub mod state;

pub use portal::{PortalLimits, PortalState};
pub use routes::router;
pub use server::{serve_tls, ServerLimits};
pub use state::ApiLimits;
