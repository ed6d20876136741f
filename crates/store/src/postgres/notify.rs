//! Waking the other nodes at once: every recorded change also sends a PostgreSQL notification
//! (`pg_notify`, delivered at commit), and each store keeps one connection listening for them,
//! which wakes `Store::wait_for_changes`. The change feed itself stays in the table: a
//! notification only says "read it now", so one lost while the listening connection was down
//! costs a poll interval, never a change.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::TlsStream;
use tokio_postgres::{AsyncMessage, Connection};

use super::*;

/// The channel notifications travel on.
pub(super) const CHANNEL: &str = "iothub_changes";

/// Whether another node's notification arrived since the last wait.
#[derive(Default)]
pub(super) struct Wakeup {
    woken: Mutex<bool>,
    signal: Condvar,
}

impl Wakeup {
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.signal.notify_all();
    }

    /// Waits for a notification or `timeout`; true when one came.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let woken = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        let (mut woken, _) = self
            .signal
            .wait_timeout_while(woken, timeout, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *woken, false)
    }
}

impl Db {
    /// Listens for ever on the store's runtime: a broken connection is made again a second later.
    pub(super) async fn listen(self: Arc<Self>) {
        loop {
            let _ = self.listen_once().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen_once(&self) -> Result<(), StoreError> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| self.error(e))?;
                self.relay(client, connection).await
            }
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.error(e))?;
                self.relay(client, connection).await
            }
        }
    }

    /// Drives the listening connection, waking waiters on every other node's notification, until
    /// the connection ends.
    async fn relay<S, T>(
        &self,
        client: Client,
        mut connection: Connection<S, T>,
    ) -> Result<(), StoreError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: TlsStream + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(n) = message {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| self.error(e))?;
        // A change may have landed while this connection was down.
        self.wakeup.wake();
        while let Some(node) = rx.recv().await {
            if node != self.node {
                self.wakeup.wake();
            }
        }
        driver.abort();
        Ok(())
    }
}
