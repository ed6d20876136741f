//! One Event Hubs reader: a client's link from `/{hub}/ConsumerGroups/{group}/Partitions/{id}`.
//! The hub turns the link's selector filter into the first sequence number; from there the
//! partition's events are read in batches and sent as the client's credit allows, then the link
//! waits for the log to grow. Each event carries the device's body, its properties, and the
//! annotations Event Hubs readers expect (`x-opt-sequence-number`, `x-opt-offset`,
//! `x-opt-enqueued-time`, `iothub-connection-device-id`, `iothub-enqueuedtime`). Every batch is
//! read under the connection's token as it stands then: a token that expired or a key rotated
//! away detaches the link with `amqp:unauthorized-access`.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::definitions::LinkError;
use fe2o3_amqp::types::messaging::{
    annotations::OwnedKey, ApplicationProperties, Data, Message, MessageAnnotations, MessageId,
    Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::Sender;
use iothub_hub::{HubError, MessageView, ReaderLease, StartPosition};

use crate::address::PartitionAddress;
use crate::context::{amqp_error, hub_error, Context};

/// Events read from the store at a time.
const BATCH: u32 = 256;
/// How often an idle reader looks at the log without a local wake-up (another node's writes).
const IDLE_POLL: Duration = Duration::from_millis(250);

pub(crate) async fn serve(
    mut sender: Sender,
    address: PartitionAddress,
    selector: Option<String>,
    epoch: Option<i64>,
    ctx: &Arc<Context>,
) {
    let start = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || open(&ctx, &address, selector.as_deref(), epoch))
            .await
            .unwrap_or_else(|_| Err(HubError::Internal("the reader's start failed".into())))
    };
    let (partition, mut next, lease) = match start {
        Ok(s) => s,
        Err(e) => {
            // A reader refused for its owner level hears `amqp:link:stolen`, as from Event Hubs:
            // the one condition its clients report at once rather than re-attach forever.
            let error = match &e {
                HubError::ReaderConflict(why) => {
                    let code = e.code();
                    amqp_error(
                        LinkError::Stolen,
                        format!("{} {}: {why}", code.number, code.name),
                    )
                }
                _ => hub_error(&e),
            };
            let _ = sender.close_with_error(error).await;
            return;
        }
    };
    let mut displaced = lease.displaced.clone();
    let mut grown = ctx.hub.watch_messages();
    let stolen = |why: Option<String>| {
        amqp_error(
            LinkError::Stolen,
            why.unwrap_or_else(|| "another reader took this partition".into()),
        )
    };
    loop {
        let batch = {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                let who = ctx.auth.current(&ctx.hub)?;
                ctx.hub.read_partition(&who, partition, next, BATCH)
            })
            .await
            .unwrap_or_else(|_| Err(HubError::Internal("the partition read failed".into())))
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = sender.close_with_error(hub_error(&e)).await;
                return;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = grown.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = displaced.changed() => {
                    let why = displaced.borrow().clone();
                    let _ = sender.close_with_error(stolen(why)).await;
                    return;
                }
                _ = sender.on_detach() => return,
            }
            continue;
        }
        for event in batch {
            next = event.sequence + 1;
            // Waiting for the client's credit, the reader may still be displaced.
            let sent = tokio::select! {
                sent = sender.send_batchable(event_message(event)) => sent.is_ok(),
                _ = displaced.changed() => false,
            };
            if displaced.borrow().is_some() {
                let why = displaced.borrow().clone();
                let _ = sender.close_with_error(stolen(why)).await;
                return;
            }
            if !sent {
                return;
            }
        }
    }
}

/// The partition, the first sequence number and the hold on the partition of a new reader.
fn open(
    ctx: &Context,
    address: &PartitionAddress,
    selector: Option<&str>,
    owner_level: Option<i64>,
) -> Result<(u32, i64, ReaderLease), HubError> {
    let who = ctx.auth.current(&ctx.hub)?;
    let hub_name = &ctx.hub.config().hub_name;
    if !address.entity.eq_ignore_ascii_case(hub_name) {
        return Err(HubError::InvalidArgument(format!(
            "no event hub named '{}'; this hub's is '{hub_name}'",
            iothub_hub::peer_text::escaped(&address.entity)
        )));
    }
    ctx.hub.check_consumer_group(&address.consumer_group)?;
    let partition = ctx.hub.partition_by_id(&address.partition)?;
    let position = match selector {
        None => StartPosition::Latest,
        Some(s) => crate::address::start_position(s)
            .map_err(|e| HubError::InvalidArgument(e.to_string()))?,
    };
    let first = ctx.hub.partition_start(&who, partition, position)?;
    let lease = ctx
        .hub
        .claim_reader(&address.consumer_group, partition, owner_level)?;
    Ok((partition, first, lease))
}

fn symbol_key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

/// One event as an Event Hubs reader receives it.
fn event_message(event: MessageView) -> Message<Data> {
    let enqueued = Timestamp::from_milliseconds(event.enqueued.saturating_mul(1000));
    let mut annotations = MessageAnnotations::builder()
        .insert(
            symbol_key("x-opt-sequence-number"),
            Value::Long(event.sequence),
        )
        .insert(
            symbol_key("x-opt-offset"),
            Value::String(event.sequence.to_string()),
        )
        .insert(
            symbol_key("x-opt-enqueued-time"),
            Value::Timestamp(enqueued.clone()),
        )
        .insert(
            symbol_key("iothub-connection-device-id"),
            Value::String(event.device_id.clone()),
        )
        .insert(
            symbol_key("iothub-enqueuedtime"),
            Value::Timestamp(enqueued),
        )
        .insert(
            symbol_key("iothub-message-source"),
            Value::String("Telemetry".into()),
        );
    if let Some(module) = &event.module_id {
        annotations = annotations.insert(
            symbol_key("iothub-connection-module-id"),
            Value::String(module.clone()),
        );
    }
    let system = |key: &str| {
        event
            .system_properties
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut properties = Properties::builder().build();
    properties.message_id = system("$.mid").map(MessageId::String);
    properties.correlation_id = system("$.cid").map(MessageId::String);
    properties.content_type = system("$.ct").map(Symbol::from);
    properties.content_encoding = system("$.ce").map(Symbol::from);
    let mut application = ApplicationProperties::builder();
    if let Some(object) = event.properties.as_object() {
        for (name, value) in object {
            let value = match value {
                serde_json::Value::String(s) => SimpleValue::String(s.clone()),
                serde_json::Value::Null => SimpleValue::Null,
                other => SimpleValue::String(other.to_string()),
            };
            application = application.insert(name.clone(), value);
        }
    }
    Message::builder()
        .message_annotations(annotations.build())
        .properties(properties)
        .application_properties(application.build())
        .data(Binary::from(event.body))
        .build()
}
