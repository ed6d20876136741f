//! The AMQP endpoint's limits, in one type the accept loop and every connection read: each is a
//! `serve` setting (`--amqp-*`), and each has a test that goes past it.

use std::time::Duration;

/// Limits of the AMQP endpoint.
#[derive(Debug, Clone)]
pub struct AmqpLimits {
    /// AMQP connections served at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake, the SASL exchange and the AMQP open.
    pub handshake_timeout: Duration,
    /// How long a connection may stay without a valid token (put on `$cbs`, or SASL PLAIN)
    /// before it is closed.
    pub auth_timeout: Duration,
    /// Largest frame either side may send, in bytes (AMQP's minimum is 512).
    pub max_frame_bytes: u32,
    /// Sessions one connection may begin.
    pub max_sessions: u16,
    /// Links one connection may attach, over all its sessions.
    pub max_links: usize,
    /// Credit given to a client sending cloud-to-device messages or requests (messages it may
    /// send before the hub settles them).
    pub receive_credit: u32,
    /// Largest message a client may send (a cloud-to-device message's own limit is the hub's).
    pub max_message_bytes: u64,
    /// Idle timeout announced in the open: a client silent for longer is closed.
    pub idle_timeout: Duration,
    /// Tokens one connection may have refused (on `$cbs`) before it is closed: a client that
    /// guesses keys pays a TLS handshake for every few guesses.
    pub max_token_refusals: u32,
}

impl Default for AmqpLimits {
    fn default() -> Self {
        AmqpLimits {
            max_connections: 1_000,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            max_frame_bytes: 64 * 1024,
            max_sessions: 8,
            max_links: 64,
            receive_credit: 100,
            max_message_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(240),
            max_token_refusals: 10,
        }
    }
}
