//! The files `iothub serve` keeps in its data directory, named once: the hub writes them and the
//! client finds its hub through them, so the two cannot drift apart.

/// The owner connection string (mode 0600), rewritten on every start with the current address.
pub const CONNECTION_STRING: &str = "connection-string";
/// The directory of the hub's TLS identity (mode 0700).
pub const TLS_DIR: &str = "tls";
/// The hub's own local CA certificate, which clients trust.
pub const HUB_CA: &str = "tls/ca.pem";
/// The key of the hub's local CA (mode 0600).
pub const HUB_CA_KEY: &str = "tls/ca.key";
/// The hub's server certificate, re-issued on every start.
pub const SERVER_CERT: &str = "tls/server.pem";
/// The server certificate's key (mode 0600).
pub const SERVER_KEY: &str = "tls/server.key";
/// The SQLite database (mode 0600).
pub const DATABASE: &str = "iothub.db";
