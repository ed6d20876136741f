//! The AMQP 1.0 endpoint of iothub (port 5671): what back ends written for a cloud IoT hub speak.
//! `azure-iot-hub`'s `send_c2d_message` sends cloud-to-device messages here, the service SDKs'
//! feedback receivers read their feedback here, and the Event Hubs
//! clients (`azure-eventhub`'s consumer) read the telemetry log here, unmodified.
//!
//! Why thin: the protocol (framing, SASL, sessions, links, flow control) is `fe2o3-amqp`'s
//! acceptor; this crate maps addresses and messages to hub calls and back. Every decision (is the
//! token good, may this policy send, does the device exist, where does a reader start) is the
//! hub's.
//!
//! - [`limits`]: `AmqpLimits`, read by the accept loop and every connection.
//! - [`address`]: link addresses, a message's device, the selector filter, read into types.
//! - [`server`]: the TLS accept loop, the connection limit, graceful shutdown.
//! - `connection`: one connection: SASL, sessions, links routed by address, the token deadline.
//! - `context`: what a connection's sessions and links share, and how a refusal is sent.
//! - `sasl`: the mechanisms offered (MSSBCBS, ANONYMOUS, PLAIN).
//! - `auth`: what a connection has proved (the token put on `$cbs`), until when.
//! - `nodes`: the request/response nodes `$cbs` (put-token) and `$management` (event hub and
//!   partition properties).
//! - `c2d`: a client's link to `/messages/devicebound`: each message queued by the hub, then
//!   settled Accepted or Rejected with the hub's reason.
//! - `feedback`: a client's link from `/messages/serviceBound/feedback`: feedback batches sent
//!   unsettled, completed by the client's Accepted, abandoned by any other outcome.
//! - `events`: one partition's events sent to an Event Hubs reader, from its start position on,
//!   as the client's credit allows.

pub mod address;
mod auth;
mod c2d;
mod connection;
mod context;
mod events;
mod feedback;
pub mod limits;
mod nodes;
mod sasl;
pub mod server;

pub use limits::AmqpLimits;
pub use server::serve;
