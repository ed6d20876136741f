//! The gateway's limits, in one type that the accept loop (`server`) and each session
//! (`session`) read: a module of its own so that neither has to import the other for it.

use std::time::Duration;

/// Limits of the device gateway.
#[derive(Debug, Clone)]
pub struct GatewayLimits {
    /// Device connections served at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and then for the CONNECT packet.
    pub handshake_timeout: Duration,
    /// Largest telemetry payload, in bytes (Azure: 256 KiB).
    pub max_message_bytes: usize,
    /// Keep-alive values above this (seconds) are capped (Azure: 1177 for clients).
    pub max_keep_alive: u16,
    /// How often live sessions are re-checked for certificates that expired meanwhile.
    pub revalidate_every: Duration,
    /// Cloud-to-device messages published to one device and not yet acknowledged, at most.
    pub max_inflight: usize,
    /// QoS 1 messages from one device whose commit (and so PUBACK) is pending, at most: the
    /// session reads on while they are stored, up to this many.
    pub max_unacked_telemetry: usize,
    /// How long a provisioning client may stay connected (its exchange takes seconds).
    pub provisioning_timeout: Duration,
    /// Requests (register, status polls) one provisioning connection may make.
    pub provisioning_requests: u32,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_message_bytes: 256 * 1024,
            max_keep_alive: 1177,
            revalidate_every: Duration::from_secs(10),
            max_inflight: 10,
            max_unacked_telemetry: 64,
            provisioning_timeout: Duration::from_secs(60),
            provisioning_requests: 16,
        }
    }
}
