//! The request/response nodes: `$cbs`, where a client puts the SharedAccessSignature token its
//! connection works under (claims-based security), and `$management`, where an Event Hubs client
//! reads the event hub's and a partition's properties. A request arrives on the client's link to
//! the node; the answer goes to the link the client attached at its `reply-to` address, with the
//! request's message id as correlation id and `status-code`/`status-description` application
//! properties (wire facts: docs/azure-wire.md#amqp).

use std::sync::Arc;

use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Timestamp, Value};
use fe2o3_amqp::Receiver;
use iothub_hub::{HubError, Principal};

use crate::context::{node_key, Context};

/// The token types a put-token request may name (service clients, device clients).
const TOKEN_TYPES: [&str; 2] = [
    "servicebus.windows.net:sastoken",
    "azure-devices.net:sastoken",
];

/// A request as the nodes read it.
struct Request {
    message_id: Option<MessageId>,
    reply_to: Option<String>,
    properties: OrderedMap<String, SimpleValue>,
    body: Option<Value>,
}

impl Request {
    fn of(message: &Message<Body<Value>>) -> Request {
        let props = message.properties.as_ref();
        Request {
            message_id: props.and_then(|p| p.message_id.clone()),
            reply_to: props.and_then(|p| p.reply_to.clone()),
            properties: message
                .application_properties
                .as_ref()
                .map(|a| a.0.clone())
                .unwrap_or_default(),
            body: match &message.body {
                Body::Value(AmqpValue(v)) => Some(v.clone()),
                _ => None,
            },
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.properties.get(name) {
            Some(SimpleValue::String(s)) => Some(s),
            Some(SimpleValue::Symbol(s)) => Some(s.as_str()),
            _ => None,
        }
    }
}

/// An answer: status, description, body.
struct Answer {
    status: i32,
    description: String,
    body: Value,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: 200,
            description: "OK".into(),
            body,
        }
    }

    fn refused(status: i32, description: String) -> Answer {
        Answer {
            status,
            description,
            body: Value::Null,
        }
    }

    fn of_hub(e: &HubError) -> Answer {
        let code = e.code();
        Answer::refused(
            i32::from(code.status),
            format!("{} {}: {e}", code.number, code.name),
        )
    }
}

/// Serves requests from one client link to a node, each answered with `answer`.
async fn serve_requests(
    mut receiver: Receiver,
    ctx: &Arc<Context>,
    node: &str,
    answer: fn(&Context, &Request) -> Answer,
) {
    let _ = receiver.set_credit(ctx.limits.receive_credit).await;
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, error = ?e, "AMQP request link ended");
                break;
            }
        };
        let request = Request::of(delivery.message());
        let (reply_to, message_id) = (request.reply_to.clone(), request.message_id.clone());
        let context = ctx.clone();
        // Token checks and store reads are blocking work.
        let answered = match tokio::task::spawn_blocking(move || answer(&context, &request)).await {
            Ok(a) => a,
            Err(_) => Answer::refused(500, "the request's handler failed".into()),
        };
        let _ = receiver.accept(&delivery).await;
        let reply_to = reply_to.unwrap_or_else(|| node_key(node));
        let mut properties = Properties::builder().build();
        properties.correlation_id = message_id;
        let reply = Message::builder()
            .properties(properties)
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", SimpleValue::Int(answered.status))
                    .insert(
                        "status-description",
                        SimpleValue::String(answered.description.clone()),
                    )
                    // The pure-Python Event Hubs client reads a management answer's text under
                    // this key (docs/azure-wire.md#amqp).
                    .insert(
                        "statusDescription",
                        SimpleValue::String(answered.description),
                    )
                    .build(),
            )
            .body(Body::Value(AmqpValue(answered.body)))
            .build();
        if !ctx.reply(&reply_to, reply).await {
            tracing::debug!(peer = %ctx.peer, "AMQP reply link not attached: answer dropped");
        }
    }
    let _ = receiver.close().await;
}

/// `$cbs`: put-token requests.
pub(crate) async fn serve_cbs(receiver: Receiver, ctx: &Arc<Context>) {
    serve_requests(receiver, ctx, "$cbs", put_token).await
}

fn put_token(ctx: &Context, request: &Request) -> Answer {
    if request.text("operation") != Some("put-token") {
        return Answer::refused(400, "the $cbs node takes operation 'put-token' only".into());
    }
    if !request
        .text("type")
        .is_some_and(|t| TOKEN_TYPES.contains(&t))
    {
        return Answer::refused(
            400,
            format!("the token type must be one of {}", TOKEN_TYPES.join(", ")),
        );
    }
    let Some(Value::String(token)) = &request.body else {
        return Answer::refused(
            400,
            "the request's body must be the token as a string".into(),
        );
    };
    match ctx.auth.put_token(&ctx.hub, token) {
        Ok(()) => Answer::ok(Value::Null),
        Err(e) => Answer::of_hub(&e),
    }
}

/// `$management`: the event hub's and its partitions' properties.
pub(crate) async fn serve_management(receiver: Receiver, ctx: &Arc<Context>) {
    serve_requests(receiver, ctx, "$management", read_properties).await
}

/// The principal a management request acts as: its own `security_token` if it carries one,
/// else the connection's.
fn principal_of(ctx: &Context, request: &Request) -> Result<Principal, HubError> {
    match request.text("security_token") {
        Some(token) => ctx.hub.authenticate(Some(token)),
        None => ctx.auth.current(&ctx.hub),
    }
}

fn read_properties(ctx: &Context, request: &Request) -> Answer {
    if request.text("operation") != Some("READ") {
        return Answer::refused(
            400,
            "the $management node takes operation 'READ' only".into(),
        );
    }
    let who = match principal_of(ctx, request) {
        Ok(p) => p,
        Err(e) => return Answer::of_hub(&e),
    };
    let hub_name = &ctx.hub.config().hub_name;
    if request.text("name") != Some(hub_name.as_str()) {
        return Answer::refused(
            404,
            format!(
                "no event hub named '{}'; this hub's is '{hub_name}' (EntityPath of `iothub connection-string --eventhub`)",
                iothub_hub::peer_text::escaped(request.text("name").unwrap_or_default())
            ),
        );
    }
    let answer = match request.text("type") {
        Some("com.microsoft:eventhub") => eventhub_properties(ctx, &who),
        Some("com.microsoft:partition") => {
            partition_properties(ctx, &who, request.text("partition").unwrap_or_default())
        }
        _ => {
            return Answer::refused(
                400,
                "the type must be com.microsoft:eventhub or com.microsoft:partition".into(),
            )
        }
    };
    answer.unwrap_or_else(|e| Answer::of_hub(&e))
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

fn eventhub_properties(ctx: &Context, who: &Principal) -> Result<Answer, HubError> {
    let info = ctx.hub.eventhub_info(who)?;
    let count = i32::try_from(info.partition_ids.len()).unwrap_or(i32::MAX);
    Ok(Answer::ok(map(vec![
        ("name", Value::String(info.name)),
        ("type", Value::String("com.microsoft:eventhub".into())),
        (
            "created_at",
            Value::Timestamp(Timestamp::from_milliseconds(info.created_ms)),
        ),
        ("partition_count", Value::Int(count)),
        (
            "partition_ids",
            Value::Array(
                info.partition_ids
                    .into_iter()
                    .map(Value::String)
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ),
    ])))
}

fn partition_properties(ctx: &Context, who: &Principal, id: &str) -> Result<Answer, HubError> {
    let partition = ctx.hub.partition_by_id(id)?;
    let info = ctx.hub.partition_info(who, partition)?;
    Ok(Answer::ok(map(vec![
        ("name", Value::String(ctx.hub.config().hub_name.clone())),
        ("type", Value::String("com.microsoft:partition".into())),
        ("partition", Value::String(partition.to_string())),
        ("begin_sequence_number", Value::Long(info.begin_sequence)),
        (
            "last_enqueued_sequence_number",
            Value::Long(info.last_sequence),
        ),
        (
            "last_enqueued_offset",
            Value::String(info.last_sequence.to_string()),
        ),
        (
            "last_enqueued_time_utc",
            Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_ms)),
        ),
        ("is_partition_empty", Value::Bool(info.is_empty)),
    ])))
}
