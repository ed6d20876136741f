//! A client's link from `/messages/serviceBound/feedback`: the feedback receivers of the .NET,
//! Java and Node service SDKs (and `az iot hub c2d-message send --wait`) read C2D feedback here
//! rather than over HTTPS. Each batch the hub hands out (`Hub::receive_feedback`) travels as one
//! unsettled message (Azure's feedback JSON, content type
//! `application/vnd.microsoft.iothub.feedback.json`, `user-id` the hub's host name,
//! `iothub-enqueuedtime` annotated); the client's Accepted completes it, any other outcome
//! abandons it. A batch that cannot go out because the client grants no credit before its lock
//! runs short is released (received again, not counted as a delivery).

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{
    annotations::OwnedKey, Data, Message, MessageAnnotations, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};
use fe2o3_amqp::Sender;
use iothub_hub::{FeedbackBatch, FEEDBACK_CONTENT_TYPE};

use crate::context::{hub_error, Context};

/// How often an idle feedback link looks at the queue.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What became of one batch.
enum Sent {
    /// The client settled it (with this outcome).
    Settled(Outcome),
    /// It never went out: no credit before the lock ran short.
    NoCredit,
    /// It went out and the client has not settled it within its lock.
    Unsettled,
    /// The link is gone.
    Gone,
}

pub(crate) async fn serve(mut sender: Sender, ctx: &Arc<Context>) {
    loop {
        let who = match ctx.auth.current(&ctx.hub) {
            Ok(who) => who,
            Err(e) => {
                let _ = sender.close_with_error(hub_error(&e)).await;
                return;
            }
        };
        let hub = ctx.hub.clone();
        let taken = {
            let who = who.clone();
            tokio::task::spawn_blocking(move || hub.receive_feedback(&who)).await
        };
        let batch = match taken {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => continue,
                    _ = sender.on_detach() => return,
                }
            }
            Ok(Err(e)) => {
                let _ = sender.close_with_error(hub_error(&e)).await;
                return;
            }
            Err(_) => return,
        };
        let sent = send(&mut sender, &batch, ctx).await;
        let hub = ctx.hub.clone();
        let token = batch.lock_token.clone();
        let gone = matches!(sent, Sent::Gone);
        let _ = tokio::task::spawn_blocking(move || match sent {
            Sent::Settled(Outcome::Accepted(_)) => hub.complete_feedback(&who, &token),
            Sent::Settled(_) => hub.abandon_feedback(&who, &token),
            Sent::NoCredit | Sent::Gone => hub.release_feedback(&who, &token),
            // Its lock runs out by itself; the take counts as a delivery.
            Sent::Unsettled => Ok(()),
        })
        .await;
        if gone {
            return;
        }
    }
}

/// Sends one batch and waits for the client's outcome, each step within the batch's lock.
async fn send(sender: &mut Sender, batch: &FeedbackBatch, ctx: &Arc<Context>) -> Sent {
    let left = |ctx: &Arc<Context>| {
        // A second short of the lock, so a settle never races its expiry.
        Duration::from_secs((batch.locked_until - ctx.hub.now() - 1).max(1) as u64)
    };
    let message = feedback_message(batch, &ctx.hub.config().hub_name);
    let delivery = match tokio::time::timeout(left(ctx), sender.send_batchable(message)).await {
        Err(_) => return Sent::NoCredit,
        Ok(Err(e)) => {
            tracing::debug!(peer = %ctx.peer, error = ?e, "AMQP feedback link ended");
            return Sent::Gone;
        }
        Ok(Ok(delivery)) => delivery,
    };
    match tokio::time::timeout(left(ctx), delivery).await {
        Err(_) => Sent::Unsettled,
        Ok(Ok(outcome)) => Sent::Settled(outcome),
        Ok(Err(e)) => {
            tracing::debug!(peer = %ctx.peer, error = ?e, "AMQP feedback link ended");
            Sent::Gone
        }
    }
}

fn symbol_key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

/// One batch as the service SDKs' feedback receivers read it.
fn feedback_message(batch: &FeedbackBatch, user: &str) -> Message<Data> {
    let enqueued = Timestamp::from_milliseconds(batch.newest().saturating_mul(1000));
    let annotations = MessageAnnotations::builder()
        .insert(
            symbol_key("iothub-enqueuedtime"),
            Value::Timestamp(enqueued),
        )
        .insert(
            symbol_key("iothub-deliverycount"),
            Value::Long(batch.delivery_count),
        )
        .build();
    let mut properties = Properties::builder().build();
    properties.message_id = Some(MessageId::String(batch.lock_token.clone()));
    properties.user_id = Some(Binary::from(user.as_bytes().to_vec()));
    properties.content_type = Some(Symbol::from(FEEDBACK_CONTENT_TYPE));
    properties.content_encoding = Some(Symbol::from("utf-8"));
    Message::builder()
        .message_annotations(annotations)
        .properties(properties)
        .data(Binary::from(batch.azure_json().to_string().into_bytes()))
        .build()
}
