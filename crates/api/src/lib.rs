//! The HTTPS API of iothub: a thin axum adapter over the service layer (`iothub-hub`).
//!
//! Why thin: every rule lives in `Hub`; a handler only authenticates the caller, runs one `Hub`
//! method on a blocking thread (the store is SQLite), and renders the result in Azure IoT Hub's JSON
//! shapes. The Azure-compatible ARM routes and the portal are further adapters over the same calls.
//!
//! - [`server`]: the TLS accept loop (rustls), connection limits and timeouts.
//! - [`routes`]: the route table and handlers.
//! - [`shapes`]: JSON shapes (CertificateDescription and friends) and RFC 1123 dates.
//! - [`error`]: JSON error bodies with stable codes.
//! - [`body`]: bounded request bodies.

pub mod azure;
pub mod body;
pub mod devices;
pub mod error;
pub mod limiter;
pub mod portal;
pub mod routes;
pub mod server;
pub mod shapes;

pub use portal::{PortalLimits, PortalState};
pub use routes::{router, ApiLimits};
pub use server::{serve_tls, ServerLimits};
