//! Direct methods: the service calls a method on a connected device and waits for its answer.
//! The hub publishes `$iothub/methods/POST/{name}/?$rid={rid}` to the device's session and matches
//! the device's `$iothub/methods/res/{status}/?$rid={rid}` to the waiting caller.
//!
//! On a cluster, a call for a device whose session another live node holds is handed to that
//! node through the store (`put_method_call`, a `MethodCall` change it follows); the device's
//! answer goes back the same way, and the node that took the call polls for it.
//!
//! Owns: `PendingCalls` — the calls waiting for their device's answer, by request id, with who
//! waits (a caller here, or another node). Asks of others: the store (the device exists;
//! presence, handed-over calls and answers), sessions (is the device's session subscribed to
//! methods; the request goes to it as a `SessionSignal::MethodRequest`), `authorize`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use iothub_pki::device_id::validate_device_id;
use iothub_store::MethodCallRecord;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::{Principal, Right};
use crate::metrics::MethodResult;
use crate::sessions::{MethodRequest, SessionSignal};
use crate::{Hub, HubError};

static NEXT_RID: AtomicU64 = AtomicU64::new(1);

/// A device's answer: its status code and JSON payload.
pub type MethodAnswer = (i32, Value);

/// The status a node records for a call whose device it no longer holds (a device cannot send
/// it: its topic carries a status the gateway reads as a non-negative number).
const NOT_ONLINE_STATUS: i32 = i32::MIN;

/// How often the node that took a call handed to another node looks for its answer.
const ANSWER_POLL: Duration = Duration::from_millis(25);

/// Who waits for a device's answer.
enum Waiter {
    /// A caller on this node.
    Local(oneshot::Sender<MethodAnswer>),
    /// The node that took call `call_id` (through the store), until `deadline`.
    Remote { call_id: i64, deadline: Instant },
}

/// The methods part of the hub: calls waiting for an answer, request id -> (device id, who
/// waits).
#[derive(Default)]
pub(crate) struct PendingCalls {
    calls: Mutex<HashMap<u64, (String, Waiter)>>,
}

impl PendingCalls {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (String, Waiter)>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, rid: u64, device_id: &str, waiter: Waiter) {
        self.lock().insert(rid, (device_id.to_string(), waiter));
    }

    /// Takes call `rid` out, if it went to `device_id`: only that device may answer it.
    fn take_for(&self, device_id: &str, rid: u64) -> Option<Waiter> {
        let mut calls = self.lock();
        if calls.get(&rid).is_some_and(|(d, _)| d == device_id) {
            calls.remove(&rid).map(|(_, w)| w)
        } else {
            None
        }
    }

    /// Drops a call; true when it was still waiting for its answer.
    fn forget(&self, rid: u64) -> bool {
        self.lock().remove(&rid).is_some()
    }

    fn is_waiting(&self, rid: u64) -> bool {
        self.lock().contains_key(&rid)
    }

    /// Drops calls handed over by other nodes whose time is up.
    pub(crate) fn sweep(&self, now: Instant) {
        self.lock()
            .retain(|_, (_, w)| !matches!(w, Waiter::Remote { deadline, .. } if *deadline < now));
    }
}

fn answer_value(payload: &[u8]) -> Value {
    if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
    }
}

impl Hub {
    /// Sends a method call to a connected device; the receiver yields its answer. The caller
    /// applies its timeout and then calls [`Hub::forget_method`].
    pub fn invoke_method(
        &self,
        who: &Principal,
        device_id: &str,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(u64, oneshot::Receiver<MethodAnswer>), HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "invoke direct methods",
            &format!("device/{device_id}"),
        )?;
        validate_device_id(device_id)?;
        if name.is_empty() || name.len() > 128 || name.contains(['/', '?', '#', '+']) {
            return Err(HubError::InvalidArgument(format!(
                "method name '{name}' is invalid: expected 1 to 128 characters without / ? # +"
            )));
        }
        if self.store().get_device(device_id)?.is_none() {
            return Err(HubError::DeviceNotFound(device_id.to_string()));
        }
        let body =
            serde_json::to_vec(payload).map_err(|e| HubError::InvalidArgument(e.to_string()))?;
        if body.len() > 128 * 1024 {
            return Err(HubError::MessageTooLarge {
                size: body.len(),
                max: 128 * 1024,
            });
        }
        if !self.session_subscribed_to_methods(device_id) {
            if self.config().cluster {
                if let Some(call) = self.hand_over_method(device_id, name, &body, timeout)? {
                    return Ok(call);
                }
            }
            self.metrics().method_call(MethodResult::NotOnline);
            return Err(HubError::DeviceNotOnline(device_id.to_string()));
        }
        let rid = NEXT_RID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.methods().insert(rid, device_id, Waiter::Local(tx));
        self.signal_device(
            device_id,
            SessionSignal::MethodRequest(MethodRequest {
                rid,
                name: name.to_string(),
                payload: body,
            }),
        );
        Ok((rid, rx))
    }

    /// A device answered method call `rid`: to the caller here, or through the store to the
    /// node that took the call.
    pub fn method_response(&self, device_id: &str, rid: u64, status: i32, payload: &[u8]) {
        match self.methods().take_for(device_id, rid) {
            Some(Waiter::Local(tx)) => {
                self.metrics().method_call(MethodResult::Answered);
                let _ = tx.send((status, answer_value(payload)));
            }
            Some(Waiter::Remote { call_id, .. }) => {
                let (hub, payload) = (self.clone(), payload.to_vec());
                let answer = move || {
                    if let Err(e) = hub.store().answer_method_call(call_id, status, &payload) {
                        tracing::warn!(error = %e, call_id, "could not hand a method answer back");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => drop(rt.spawn_blocking(answer)),
                    Err(_) => answer(),
                }
            }
            None => {}
        }
    }

    /// The device is not here: if a live node holds its session, the call goes there through
    /// the store, and a task here waits for the answer it records. None: no live node holds it.
    fn hand_over_method(
        &self,
        device_id: &str,
        name: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Option<(u64, oneshot::Receiver<MethodAnswer>)>, HubError> {
        let now = crate::presence::now_ms();
        let Some(holder) = self.store().get_presence(device_id)? else {
            return Ok(None);
        };
        let alive = holder
            .heartbeat_ms
            .is_some_and(|hb| now - hb <= self.config().node_timeout_ms);
        if !alive || holder.node == self.config().node_id {
            return Ok(None);
        }
        let call_id = self.store().put_method_call(&MethodCallRecord {
            id: 0,
            device_id: device_id.to_string(),
            target_node: holder.node,
            name: name.to_string(),
            payload: body.to_vec(),
            created_ms: now,
            timeout_ms: timeout.as_millis() as i64,
        })?;
        let rid = NEXT_RID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.methods().insert(rid, device_id, Waiter::Local(tx));
        let hub = self.clone();
        let device = device_id.to_string();
        tokio::runtime::Handle::try_current()
            .map_err(|e| HubError::Internal(format!("no runtime to wait for the answer: {e}")))?
            .spawn(async move { hub.await_handed_over(&device, rid, call_id).await });
        Ok(Some((rid, rx)))
    }

    /// Looks for the answer to a handed-over call until it comes or the caller gives up.
    async fn await_handed_over(&self, device_id: &str, rid: u64, call_id: i64) {
        while self.methods().is_waiting(rid) {
            tokio::time::sleep(ANSWER_POLL).await;
            let hub = self.clone();
            let answer =
                tokio::task::spawn_blocking(move || hub.store().get_method_answer(call_id)).await;
            let Ok(Ok(Some((status, payload)))) = answer else {
                continue;
            };
            let Some(Waiter::Local(tx)) = self.methods().take_for(device_id, rid) else {
                return;
            };
            if status == NOT_ONLINE_STATUS {
                // Dropping the sender answers the caller with DeviceNotOnline.
                self.metrics().method_call(MethodResult::NotOnline);
            } else {
                self.metrics().method_call(MethodResult::Answered);
                let _ = tx.send((status, answer_value(&payload)));
            }
            return;
        }
    }

    /// Another node handed over call `call_id`: delivered to the device's session here, or
    /// answered "not online" when this node no longer holds it.
    pub(crate) fn deliver_handed_over(&self, call_id: i64) -> Result<(), HubError> {
        let Some(call) = self.store().get_method_call(call_id)? else {
            return Ok(());
        };
        let remaining = call.created_ms + call.timeout_ms - crate::presence::now_ms();
        if call.target_node != self.config().node_id || remaining <= 0 {
            return Ok(());
        }
        if !self.session_subscribed_to_methods(&call.device_id) {
            self.store()
                .answer_method_call(call_id, NOT_ONLINE_STATUS, &[])?;
            return Ok(());
        }
        let rid = NEXT_RID.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_millis(remaining as u64);
        self.methods()
            .insert(rid, &call.device_id, Waiter::Remote { call_id, deadline });
        self.signal_device(
            &call.device_id,
            SessionSignal::MethodRequest(MethodRequest {
                rid,
                name: call.name,
                payload: call.payload,
            }),
        );
        Ok(())
    }

    /// Drops a call that timed out.
    pub fn forget_method(&self, rid: u64) {
        if self.methods().forget(rid) {
            self.metrics().method_call(MethodResult::TimedOut);
        }
    }
}
