//! The client side of iothub, in its own crate so that the product CLI (`iothub`) and the tools
//! (`iothub-bench`) share one copy of it and the hub's binary does not have to carry the tools:
//!
//! - [`api`]: the HTTPS API client and where it finds its hub ([`HubTarget`]);
//! - [`layout`]: the data directory's file names, read by `iothub serve` (which writes them) and by
//!   the client (which finds the hub through them);
//! - [`mqtt`]: a small MQTT 3.1.1 device client over mutual TLS;
//! - [`proof`]: registering a CA and proving possession of its key through the API.

pub mod api;
pub mod layout;
pub mod mqtt;
pub mod proof;

pub use api::{segment, unix_now, ApiClient, ApiRefusal, ConnectionString, HubTarget};
