//! Socket options set once on the device listener rather than once per accepted connection:
//! at thousands of connects per second, every system call on the accept path shows.

use tokio::net::{TcpListener, TcpStream};

/// Prepares the listener: Linux copies `TCP_NODELAY` from it into every accepted socket, so
/// the option costs one call at start instead of one per connection.
pub(crate) fn prepare(listener: &TcpListener) {
    if INHERITS_NODELAY {
        if let Err(e) = socket2::SockRef::from(listener).set_tcp_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on the device listener");
        }
    }
}

/// Prepares an accepted socket: small MQTT packets (PUBACK, PINGRESP) must not wait for Nagle.
pub(crate) fn prepare_accepted(stream: &TcpStream) {
    if !INHERITS_NODELAY {
        let _ = stream.set_nodelay(true);
    }
}

/// Whether accepted sockets inherit `TCP_NODELAY` from their listener (tested below).
const INHERITS_NODELAY: bool = cfg!(target_os = "linux");

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        prepare(&listener);
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (accepted, _) = listener.accept().await.unwrap();
        prepare_accepted(&accepted);
        assert!(
            accepted.nodelay().unwrap(),
            "an accepted device socket must have TCP_NODELAY"
        );
        drop(client.await.unwrap());
    }
}
