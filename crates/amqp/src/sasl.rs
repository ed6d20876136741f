//! The SASL mechanisms the endpoint offers. Azure's clients authenticate with a token put on
//! `$cbs` after the connection opens, and announce it by their mechanism: `MSSBCBS` (the uamqp C
//! library) or `ANONYMOUS` (the pure-Python AMQP stack); both succeed here and the connection
//! must then put a token within `AmqpLimits::auth_timeout`. `PLAIN` carries the token as the
//! password (user name `{policy}@sas.root.{hub}`) and is judged at once.

use std::sync::Arc;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use iothub_hub::Hub;

use crate::auth::ConnectionAuth;

pub(crate) const MSSBCBS: &str = "MSSBCBS";
pub(crate) const ANONYMOUS: &str = "ANONYMOUS";
pub(crate) const PLAIN: &str = "PLAIN";

/// One connection's SASL exchange.
#[derive(Clone)]
pub(crate) struct Mechanisms {
    pub(crate) hub: Hub,
    pub(crate) auth: Arc<ConnectionAuth>,
}

fn outcome(code: SaslCode) -> SaslServerFrame {
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

impl SaslAcceptor for Mechanisms {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from(MSSBCBS),
            Symbol::from(ANONYMOUS),
            Symbol::from(PLAIN),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.as_str() {
            MSSBCBS | ANONYMOUS => outcome(SaslCode::Ok),
            PLAIN => {
                let response = init
                    .initial_response
                    .map(|b| b.into_vec())
                    .unwrap_or_default();
                // authzid NUL authcid NUL password; the token is the password.
                let password = response.split(|b| *b == 0).nth(2).unwrap_or_default();
                let accepted = std::str::from_utf8(password)
                    .ok()
                    .is_some_and(|token| self.auth.put_token(&self.hub, token).is_ok());
                outcome(if accepted {
                    SaslCode::Ok
                } else {
                    SaslCode::Auth
                })
            }
            other => {
                tracing::debug!(mechanism = ?other, "SASL mechanism not offered");
                outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // No mechanism offered here sends a challenge, so no response is expected.
        outcome(SaslCode::Auth)
    }
}
