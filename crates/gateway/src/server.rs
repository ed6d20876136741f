//! The accept loop of the MQTT/TLS listener: a bound on concurrent connections, addresses over
//! their refusal limit closed at once (the hub keeps the budget), handshake and CONNECT
//! timeouts, a periodic revalidation of live sessions (certificates that expire while
//! connected), and a graceful shutdown that stops accepting and closes every session.

use std::sync::Arc;
use std::time::Duration;

use iothub_hub::Hub;

use crate::limits::GatewayLimits;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Serves devices on `listener` until `shutdown` completes, then closes every session.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hub: Hub,
    limits: GatewayLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(limits);
    crate::listener::prepare(&listener);
    let mut revalidate = tokio::time::interval(limits.revalidate_every);
    // The refusal budget's windows end, its summaries are logged and held refusal reasons
    // written on this tick (memory only: no blocking thread).
    let mut refusal_sweep = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = revalidate.tick() => {
                let hub = hub.clone();
                tokio::task::spawn_blocking(move || hub.revalidate_sessions());
            }
            _ = refusal_sweep.tick() => hub.sweep_refusals(),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // An address over its refusal limit is closed before any TLS or MQTT work.
                if !hub.admit_device_address(peer.ip()) {
                    drop(stream);
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.max_connections, "connection refused: the gateway is at its connection limit");
                    continue;
                };
                crate::listener::prepare_accepted(&stream);
                tokio::spawn(crate::session::run(Box::new(crate::session::Accepted {
                    stream,
                    peer,
                    tls: tls.clone(),
                    hub: hub.clone(),
                    limits: limits.clone(),
                    stop: stop_rx.clone(),
                    permit,
                })));
            }
        }
    }
    // Graceful shutdown: no new connections; every session closes after its in-flight work
    // (acknowledged messages are already durable).
    drop(listener);
    let _ = stop_tx.send(true);
    // Every session holds a permit until it has closed, so all permits back means all closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(all)).await;
}
