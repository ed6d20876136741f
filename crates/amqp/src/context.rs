//! What every session and link of one AMQP connection shares (`Context`: the hub, the limits,
//! what the connection has proved, its link and session counts, the reply links of its
//! request/response nodes), and the two ways a refusal travels: an AMQP error from a hub
//! refusal (`hub_error`) and a link detached with one (`refuse`). Its own module so that the
//! connection and the link servers it starts (`nodes`, `c2d`, `events`) import it, not each
//! other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorValue, ErrorCondition};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use iothub_hub::{Hub, HubError};
use tokio::sync::mpsc;

use crate::auth::ConnectionAuth;
use crate::limits::AmqpLimits;

/// What every session and link of one connection shares.
pub(crate) struct Context {
    pub(crate) hub: Hub,
    pub(crate) limits: Arc<AmqpLimits>,
    pub(crate) auth: Arc<ConnectionAuth>,
    pub(crate) peer: SocketAddr,
    pub(crate) links: AtomicUsize,
    pub(crate) sessions: AtomicUsize,
    /// The client's reply links by their address: where `$cbs` and `$management` answer.
    pub(crate) replies: Mutex<HashMap<String, mpsc::Sender<Message<Body<Value>>>>>,
}

impl Context {
    /// Hands a reply to the link attached at `address`, waiting a little for a client that
    /// sent its request before its reply link was accepted.
    pub(crate) async fn reply(&self, address: &str, message: Message<Body<Value>>) -> bool {
        for _ in 0..20 {
            let link = self
                .replies
                .lock()
                .ok()
                .and_then(|r| r.get(address).cloned());
            if let Some(link) = link {
                return link.send(message).await.is_ok();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// An AMQP error with a condition and a description.
pub(crate) fn amqp_error(
    condition: impl Into<ErrorCondition>,
    description: String,
) -> AmqpErrorValue {
    AmqpErrorValue::new(condition, description, None)
}

/// A hub refusal as AMQP sees it: a standard condition, the hub's code and reason as the text.
pub(crate) fn hub_error(e: &HubError) -> AmqpErrorValue {
    let code = e.code();
    let condition = match code.status {
        401 | 403 => AmqpError::UnauthorizedAccess,
        404 => AmqpError::NotFound,
        400 | 412 => AmqpError::InvalidField,
        409 | 429 => AmqpError::ResourceLimitExceeded,
        _ => AmqpError::InternalError,
    };
    amqp_error(condition, format!("{} {}: {e}", code.number, code.name))
}

/// The key under which the reply link a client receives from `node` on is found.
pub(crate) fn node_key(node: &str) -> String {
    format!("node:{node}")
}

/// Detaches (closes) a link with `error`.
pub(crate) async fn refuse(link: LinkEndpoint, error: AmqpErrorValue) {
    match link {
        LinkEndpoint::Sender(s) => {
            let _ = s.close_with_error(error).await;
        }
        LinkEndpoint::Receiver(r) => {
            let _ = r.close_with_error(error).await;
        }
    }
}
