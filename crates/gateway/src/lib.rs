//! The MQTT/TLS gateway through which devices connect, send telemetry and receive cloud-to-device
//! messages, in Azure IoT Hub's MQTT dialect.
//!
//! Why thin: the gateway owns sockets, TLS and MQTT framing; every decision (who is admitted,
//! which session to close, where a message goes) is a call to the service layer (`iothub-hub`).
//!
//! - [`tls`]: the rustls server configuration: asks for (does not require) a client certificate,
//!   checks only that the client holds the certificate's key, and resumes sessions by stateless
//!   tickets; a resumed connection's chain (kept in the ticket) is judged at CONNECT like any other.
//! - [`limits`]: `GatewayLimits`, the limits the accept loop and every session read.
//! - `conn`: a device connection's MQTT framing over TLS (read one packet, write packets), shared
//!   by `session` and `provisioning`.
//! - `listener`: socket options set once on the listener (TCP_NODELAY) and on accepted sockets.
//! - [`server`]: the accept loop, connection limits, periodic revalidation, graceful shutdown.
//! - [`session`]: one device connection: CONNECT, then telemetry, subscriptions, C2D delivery,
//!   keep-alive, and closing when the hub says so.
//! - `provisioning`: a provisioning client (the device SDK's `ProvisioningDeviceClient`) on the
//!   device port: admitted on structure, then its register and status requests answered.
//! - `stream`: rustls driven over the socket, so the session ticket leaves with CONNACK.

mod conn;
pub mod limits;
mod listener;
mod provisioning;
pub mod server;
pub mod session;
mod stream;
pub mod tls;

pub use limits::GatewayLimits;
pub use server::serve;
pub use tls::server_config;
