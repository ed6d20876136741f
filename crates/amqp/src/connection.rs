//! One AMQP connection: the SASL exchange and open (within the handshake timeout), then its
//! sessions, each link routed by its address to the code that serves it. A connection that has
//! not put a valid token within `auth_timeout` is closed with `amqp:unauthorized-access`; sessions
//! and links past their limits are refused with `amqp:resource-limit-exceeded`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SessionAcceptor,
    SupportedReceiverSettleModes, SupportedSenderSettleModes,
};
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::definitions::{AmqpError, ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Message, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Symbol, Value};
use iothub_hub::Hub;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::address::{self, Node};
use crate::auth::ConnectionAuth;
use crate::context::{amqp_error, node_key, refuse, Context};
use crate::limits::AmqpLimits;
use crate::sasl::Mechanisms;

/// The properties the hub puts on its open, begin and attach: the product and this node.
fn identity(hub: &Hub) -> Fields {
    let mut fields = Fields::new();
    fields.insert(Symbol::from("product"), Value::String("iothub".into()));
    fields.insert(
        Symbol::from("com.microsoft:tracking-id"),
        Value::String(hub.config().node_id.clone()),
    );
    fields
}

/// Serves one connection after its TLS handshake until it closes or the hub stops.
pub(crate) async fn run<Io>(
    stream: Io,
    peer: SocketAddr,
    hub: Hub,
    limits: Arc<AmqpLimits>,
    mut stop: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let auth = Arc::new(ConnectionAuth::new(limits.max_token_refusals));
    // Open, begin and attach carry properties: their lists are then written out in full, which
    // the pure-Python AMQP stack of the Event Hubs client needs (it indexes every field of
    // those performatives, where AMQP lets a sender leave trailing empty fields out).
    let acceptor = ConnectionAcceptor::builder()
        .properties(identity(&hub))
        .container_id(format!("iothub-{}", hub.config().node_id))
        .max_frame_size(limits.max_frame_bytes)
        .channel_max(limits.max_sessions.saturating_sub(1))
        .idle_time_out(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .sasl_acceptor(Mechanisms {
            hub: hub.clone(),
            auth: auth.clone(),
        })
        .build();
    let mut connection =
        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = ?e, "AMQP open refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "AMQP open timed out");
                return;
            }
        };
    let ctx = Arc::new(Context {
        hub,
        limits: limits.clone(),
        auth,
        peer,
        links: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
        replies: Mutex::new(HashMap::new()),
    });
    // handle-max written out: the Python stack reads it with no default.
    let handle_max = u32::try_from(limits.max_links.saturating_sub(1)).unwrap_or(u32::MAX);
    let session_acceptor = SessionAcceptor::builder()
        .handle_max(handle_max)
        .properties(identity(&ctx.hub))
        .build();
    let token_deadline = tokio::time::sleep(limits.auth_timeout);
    tokio::pin!(token_deadline);
    loop {
        tokio::select! {
            incoming = connection.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                let mut session = match session_acceptor.accept_incoming_session(incoming, &mut connection).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = ?e, "AMQP session refused");
                        break;
                    }
                };
                if ctx.sessions.fetch_add(1, Ordering::SeqCst) >= usize::from(limits.max_sessions) {
                    ctx.sessions.fetch_sub(1, Ordering::SeqCst);
                    let _ = session.end_with_error(amqp_error(AmqpError::ResourceLimitExceeded, format!(
                        "this connection has {} sessions, the most allowed (--amqp-max-sessions)", limits.max_sessions))).await;
                    continue;
                }
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    run_session(session, &ctx).await;
                    ctx.sessions.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = &mut token_deadline, if !ctx.auth.is_granted() => {
                tracing::debug!(%peer, "AMQP connection closed: no token in time");
                let _ = connection.close_with_error(amqp_error(AmqpError::UnauthorizedAccess, format!(
                    "no valid token within {} s of opening; put a SharedAccessSignature token on $cbs",
                    limits.auth_timeout.as_secs()))).await;
                return;
            }
            _ = ctx.auth.refused_too_often() => {
                tracing::info!(%peer, refused = ctx.auth.refusals(), "AMQP connection closed: too many tokens refused");
                let _ = connection.close_with_error(amqp_error(AmqpError::UnauthorizedAccess, format!(
                    "{} tokens were refused on this connection, the most allowed (--amqp-token-refusals); \
                     each refusal said why", ctx.auth.refusals()))).await;
                return;
            }
            _ = stop.changed() => break,
        }
    }
    let _ = connection.close().await;
}

/// Where a link goes, read from its attach before it is accepted.
struct Route {
    node: Node,
    /// The client's own address for a link it receives on (its reply address).
    client_target: Option<String>,
    /// The selector filter of an Event Hubs reader (text or binary).
    selector: Option<String>,
    /// An Event Hubs reader's owner level (`com.microsoft:epoch`).
    epoch: Option<i64>,
}

fn route_of(attach: &Attach) -> Result<Route, address::AddressError> {
    let source = attach.source.as_deref();
    let target = attach.target.as_deref().map(|t| match t {
        TargetArchetype::Target(t) => t,
    });
    let target_address = target.and_then(|t| t.address.clone());
    let source_address = source.and_then(|s| s.address.clone());
    // The client sends on a link whose role is Sender: it names where it sends (target).
    let node_address = match attach.role {
        fe2o3_amqp::types::definitions::Role::Sender => target_address.clone(),
        fe2o3_amqp::types::definitions::Role::Receiver => source_address,
    };
    let node = address::node(node_address.as_deref().unwrap_or_default())?;
    let selector = source.and_then(|s| s.filter.as_ref()).and_then(|filters| {
        filters.iter().find_map(|(_, value)| match value {
            Value::Described(d) => match &d.value {
                Value::String(s) => Some(s.clone()),
                Value::Binary(b) => String::from_utf8(b.to_vec()).ok(),
                _ => None,
            },
            _ => None,
        })
    });
    let epoch = attach.properties.as_ref().and_then(|p| {
        p.iter()
            .find(|(k, _)| k.as_str() == "com.microsoft:epoch")
            .and_then(|(_, v)| match v {
                Value::Long(n) => Some(*n),
                Value::Int(n) => Some(i64::from(*n)),
                Value::Ulong(n) => i64::try_from(*n).ok(),
                Value::Uint(n) => Some(i64::from(*n)),
                _ => None,
            })
    });
    Ok(Route {
        node,
        client_target: target_address,
        selector,
        epoch,
    })
}

async fn run_session(mut session: ListenerSessionHandle, ctx: &Arc<Context>) {
    // Every link settles in the first mode: a message is settled by the hub's disposition alone
    // (the uamqp C library asks for the second mode on its sends, then waits forever for a
    // settled disposition that the second mode would not send).
    let acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .initial_delivery_count(0)
        .properties(identity(&ctx.hub))
        .max_message_size(ctx.limits.max_message_bytes)
        .build();
    // What the hub sends (events, answers) goes pre-settled: Event Hubs clients never settle the
    // events they receive, and an unsettled delivery is kept by the sending link until settled
    // (measured: 15 MB -> 270 MB of server memory over 200,000 events read by one client).
    let settled_sender = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .initial_delivery_count(0)
        .properties(identity(&ctx.hub))
        .max_message_size(ctx.limits.max_message_bytes)
        .build();
    // Feedback is the one thing the hub sends that the client settles: its Accepted completes a
    // batch, any other outcome abandons it.
    let unsettled_sender = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .supported_sender_settle_modes(SupportedSenderSettleModes::Unsettled)
        .fallback_sender_settle_mode(SenderSettleMode::Unsettled)
        .initial_delivery_count(0)
        .properties(identity(&ctx.hub))
        .max_message_size(ctx.limits.max_message_bytes)
        .build();
    while let Some(attach) = session.next_incoming_attach().await {
        let route = route_of(&attach);
        let over_limit = ctx.links.fetch_add(1, Ordering::SeqCst) >= ctx.limits.max_links;
        // The client receives on a link whose role is Receiver: the hub sends on it.
        let feedback = matches!(
            &route,
            Ok(Route {
                node: Node::Feedback,
                ..
            })
        );
        let acceptor = match attach.role {
            fe2o3_amqp::types::definitions::Role::Receiver if feedback => &unsettled_sender,
            fe2o3_amqp::types::definitions::Role::Receiver => &settled_sender,
            fe2o3_amqp::types::definitions::Role::Sender => &acceptor,
        };
        let link = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(e) => {
                ctx.links.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!(peer = %ctx.peer, error = ?e, "AMQP link refused");
                continue;
            }
        };
        let decision = if over_limit {
            Err(amqp_error(
                AmqpError::ResourceLimitExceeded,
                format!(
                    "this connection has {} links, the most allowed (--amqp-max-links)",
                    ctx.limits.max_links
                ),
            ))
        } else {
            route.map_err(|e| amqp_error(AmqpError::InvalidField, e.to_string()))
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match decision {
                Ok(route) => serve_link(link, route, &ctx).await,
                Err(error) => refuse(link, error).await,
            }
            ctx.links.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let _ = session.end().await;
}

async fn serve_link(link: LinkEndpoint, route: Route, ctx: &Arc<Context>) {
    match (link, route.node) {
        (LinkEndpoint::Receiver(r), Node::Cbs) => crate::nodes::serve_cbs(r, ctx).await,
        (LinkEndpoint::Receiver(r), Node::Management) => {
            crate::nodes::serve_management(r, ctx).await
        }
        (LinkEndpoint::Receiver(r), Node::DeviceBound) => crate::c2d::serve(r, ctx).await,
        (LinkEndpoint::Sender(s), Node::Feedback) => crate::feedback::serve(s, ctx).await,
        (LinkEndpoint::Sender(s), Node::Partition(p)) => {
            crate::events::serve(s, p, route.selector, route.epoch, ctx).await
        }
        (LinkEndpoint::Sender(s), node @ (Node::Cbs | Node::Management | Node::Other(_))) => {
            // Answers go to the request's reply-to; a request without one (the uamqp C
            // library's) is answered on the link the client receives from that node on.
            let mut keys: Vec<String> = route.client_target.into_iter().collect();
            match node {
                Node::Cbs => keys.push(node_key("$cbs")),
                Node::Management => keys.push(node_key("$management")),
                _ => {}
            }
            if keys.is_empty() {
                let error = amqp_error(
                    AmqpError::InvalidField,
                    "a reply link needs a target address (the requests' reply-to)".into(),
                );
                return refuse(LinkEndpoint::Sender(s), error).await;
            }
            serve_replies(s, keys, ctx).await
        }
        (link, node) => {
            let what = match node {
                Node::Other(a) => format!("'{}'", iothub_hub::peer_text::escaped(&a)),
                other => format!("{other:?}"),
            };
            let error = amqp_error(
                AmqpError::NotFound,
                format!(
                    "no such node for this link's direction: {what}; this endpoint serves $cbs, \
                     $management, /messages/devicebound (send), /messages/serviceBound/feedback \
                     and /{{hub}}/ConsumerGroups/{{group}}/Partitions/{{id}} (receive)"
                ),
            );
            refuse(link, error).await
        }
    }
}

/// A client's reply link: answers handed over by `Context::reply` under any of `keys` are sent
/// on it.
async fn serve_replies(mut sender: fe2o3_amqp::Sender, keys: Vec<String>, ctx: &Arc<Context>) {
    let (tx, mut rx) = mpsc::channel::<Message<Body<Value>>>(16);
    if let Ok(mut replies) = ctx.replies.lock() {
        for key in &keys {
            replies.insert(key.clone(), tx.clone());
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            reply = rx.recv() => {
                let Some(reply) = reply else { break };
                if sender.send_batchable(reply).await.is_err() {
                    break;
                }
            }
            _ = sender.on_detach() => break,
        }
    }
    if let Ok(mut replies) = ctx.replies.lock() {
        for key in &keys {
            replies.remove(key);
        }
    }
    let _ = sender.close().await;
}
