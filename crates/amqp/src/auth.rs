//! What one AMQP connection has proved: the principal of the last token it put on `$cbs` (or gave
//! as SASL PLAIN's password) and that token's expiry. Tokens are stateless, so every use asks the
//! hub whether the key behind the principal is still its policy's (`Hub::refresh_principal`):
//! a rotated key or a deleted policy stops a connection at its next message. Refused tokens are
//! counted: past `--amqp-token-refusals` the connection is told to close (`refused_too_often`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use iothub_hub::{Hub, HubError, Principal};
use tokio::sync::Notify;

pub(crate) struct ConnectionAuth {
    grant: Mutex<Option<Grant>>,
    refusals: AtomicU32,
    max_refusals: u32,
    too_many: Notify,
}

struct Grant {
    principal: Principal,
    /// Unix seconds.
    expires: i64,
}

impl ConnectionAuth {
    pub(crate) fn new(max_refusals: u32) -> ConnectionAuth {
        ConnectionAuth {
            grant: Mutex::new(None),
            refusals: AtomicU32::new(0),
            max_refusals,
            too_many: Notify::new(),
        }
    }

    /// Authenticates `token` with the hub and, if good, makes it this connection's.
    pub(crate) fn put_token(&self, hub: &Hub, token: &str) -> Result<(), HubError> {
        let (principal, expires) = hub.authenticate_token(token).inspect_err(|_| {
            if self.refusals.fetch_add(1, Ordering::SeqCst) + 1 == self.max_refusals {
                self.too_many.notify_one();
            }
        })?;
        if let Ok(mut grant) = self.grant.lock() {
            *grant = Some(Grant { principal, expires });
        }
        Ok(())
    }

    /// Resolves once the connection has had `max_refusals` tokens refused.
    pub(crate) async fn refused_too_often(&self) {
        self.too_many.notified().await
    }

    /// How many tokens were refused on this connection.
    pub(crate) fn refusals(&self) -> u32 {
        self.refusals.load(Ordering::SeqCst)
    }

    /// Whether a token was ever accepted on this connection.
    pub(crate) fn is_granted(&self) -> bool {
        self.grant.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// The connection's principal as it stands now, or why there is none.
    pub(crate) fn current(&self, hub: &Hub) -> Result<Principal, HubError> {
        let (principal, expires) = {
            let grant = self.grant.lock().map_err(|_| {
                HubError::Internal("the connection's token lock is poisoned".into())
            })?;
            let grant = grant.as_ref().ok_or_else(|| {
                HubError::Unauthorized(
                    "no token on this connection: put a SharedAccessSignature token on $cbs first"
                        .into(),
                )
            })?;
            (grant.principal.clone(), grant.expires)
        };
        if expires <= hub.now() {
            return Err(HubError::Unauthorized(
                "the connection's token has expired: put a new one on $cbs".into(),
            ));
        }
        hub.refresh_principal(&principal).ok_or_else(|| {
            HubError::Unauthorized(
                "the key that signed the connection's token was rotated or its policy deleted"
                    .into(),
            )
        })
    }
}
