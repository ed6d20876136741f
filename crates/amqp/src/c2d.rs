//! A client's link to `/messages/devicebound` (the service SDK's `send_c2d_message`): each
//! message is read into a `hub::C2dSend` (its `to` names the device; message id, correlation id,
//! content type and encoding, absolute expiry and application properties kept) and queued by the
//! hub under the connection's token; it is settled Accepted once durably queued, Rejected with
//! the hub's code and reason otherwise (unknown device, queue full, a policy without
//! ServiceConnect, an expired token).

use std::sync::Arc;

use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorValue};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::Receiver;
use iothub_hub::C2dSend;

use crate::context::{amqp_error, hub_error, Context};

pub(crate) async fn serve(mut receiver: Receiver, ctx: &Arc<Context>) {
    if let Err(e) = ctx.auth.current(&ctx.hub) {
        let _ = receiver.close_with_error(hub_error(&e)).await;
        return;
    }
    let _ = receiver.set_credit(ctx.limits.receive_credit).await;
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, error = ?e, "AMQP cloud-to-device link ended");
                break;
            }
        };
        let outcome = queue(ctx, delivery.message()).await;
        let settled = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => receiver.reject(&delivery, error).await,
        };
        if settled.is_err() {
            break;
        }
    }
    let _ = receiver.close().await;
}

/// Queues one message, or says why not.
async fn queue(ctx: &Arc<Context>, message: &Message<Body<Value>>) -> Result<(), AmqpErrorValue> {
    let who = ctx.auth.current(&ctx.hub).map_err(|e| hub_error(&e))?;
    let (device, send) = read(message, ctx.hub.now())?;
    let hub = ctx.hub.clone();
    tokio::task::spawn_blocking(move || hub.send_c2d(&who, &device, &send))
        .await
        .map_err(|_| amqp_error(AmqpError::InternalError, "the send failed".into()))?
        .map(|_| ())
        .map_err(|e| hub_error(&e))
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => {
            let b: &[u8] = u.as_ref();
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// An application property's value as text (the hub keeps property values as text).
fn value_text(v: &SimpleValue) -> Option<String> {
    Some(match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_string(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        _ => return None,
    })
}

/// The device and the hub's message, from an AMQP message.
fn read(message: &Message<Body<Value>>, now: i64) -> Result<(String, C2dSend), AmqpErrorValue> {
    let invalid = |why: String| amqp_error(AmqpError::InvalidField, why);
    let props = message.properties.as_ref();
    let to = props.and_then(|p| p.to.as_deref()).ok_or_else(|| {
        invalid(
            "the message has no 'to'; expected '/devices/{deviceId}/messages/devicebound'".into(),
        )
    })?;
    let device = crate::address::device_of(to).map_err(|e| invalid(e.to_string()))?;
    let body = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(AmqpValue(Value::String(s))) => s.clone().into_bytes(),
        Body::Value(AmqpValue(Value::Binary(b))) => b.to_vec(),
        Body::Empty => Vec::new(),
        _ => {
            return Err(invalid(
                "the body must be data (or a string or binary value)".into(),
            ))
        }
    };
    let ttl_secs = match props.and_then(|p| p.absolute_expiry_time.as_ref()) {
        Some(at) => {
            let secs = at.milliseconds().div_euclid(1000) - now;
            if secs <= 0 {
                return Err(invalid(
                    "the message's absolute expiry time has passed".into(),
                ));
            }
            Some(secs)
        }
        None => None,
    };
    let mut properties = Vec::new();
    let mut ack = Default::default();
    if let Some(app) = &message.application_properties {
        for (name, value) in app.0.iter() {
            let value = value_text(value).ok_or_else(|| {
                invalid(format!(
                    "application property '{}' is not a text, number or boolean",
                    iothub_hub::peer_text::escaped(name)
                ))
            })?;
            // The sender's feedback request travels as an application property, as to Azure.
            if name == "iothub-ack" {
                ack =
                    iothub_hub::feedback::parse_ack(&value).map_err(|e| invalid(e.to_string()))?;
            } else {
                properties.push((name.clone(), value));
            }
        }
    }
    Ok((
        device,
        C2dSend {
            body,
            properties,
            message_id: props.and_then(|p| p.message_id.as_ref()).map(id_text),
            correlation_id: props.and_then(|p| p.correlation_id.as_ref()).map(id_text),
            content_type: props
                .and_then(|p| p.content_type.as_ref())
                .map(|s| s.as_str().to_string()),
            content_encoding: props
                .and_then(|p| p.content_encoding.as_ref())
                .map(|s| s.as_str().to_string()),
            ttl_secs,
            ack,
        },
    ))
}
