//! The accept loop of the AMQP listener: TLS (server certificate only: AMQP clients prove who they
//! are with a token), a bound on concurrent connections, a handshake timeout, and a graceful
//! shutdown that stops accepting and closes every connection.

use std::sync::Arc;
use std::time::Duration;

use iothub_hub::Hub;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::limits::AmqpLimits;

/// Serves AMQP clients on `listener` until `shutdown` completes, then closes every connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hub: Hub,
    limits: AmqpLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(limits);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "AMQP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.max_connections, "AMQP connection refused: at the connection limit (--amqp-max-connections)");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, hub, limits, stop) = (acceptor.clone(), hub.clone(), limits.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "AMQP TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "AMQP TLS handshake timed out");
                            return;
                        }
                    };
                    crate::connection::run(tls, peer, hub, limits, stop).await;
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(all)).await;
}
