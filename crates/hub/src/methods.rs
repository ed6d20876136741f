//! Direct methods: the service calls a method on a connected device and waits for its answer.
//! The hub publishes `$iothub/methods/POST/{name}/?$rid={rid}` to the device's session and matches
//! the device's `$iothub/methods/res/{status}/?$rid={rid}` to the waiting caller.
//!
//! Owns: `PendingCalls` — the calls waiting for their device's answer, by request id. Asks of
//! others: the store (the device exists), sessions (is the device's session subscribed to
//! methods; the request goes to it as a `SessionSignal::MethodRequest`), `authorize`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use iothub_pki::device_id::validate_device_id;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::{Principal, Right};
use crate::sessions::SessionSignal;
use crate::{Hub, HubError};

static NEXT_RID: AtomicU64 = AtomicU64::new(1);

/// A device's answer: its status code and JSON payload.
pub type MethodAnswer = (i32, Value);

/// The methods part of the hub: calls waiting for an answer, request id -> (device id, where the
/// answer goes).
#[derive(Default)]
pub(crate) struct PendingCalls {
    calls: Mutex<HashMap<u64, (String, oneshot::Sender<MethodAnswer>)>>,
}

impl PendingCalls {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (String, oneshot::Sender<MethodAnswer>)>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, rid: u64, device_id: &str, tx: oneshot::Sender<MethodAnswer>) {
        self.lock().insert(rid, (device_id.to_string(), tx));
    }

    /// Takes call `rid` out, if it went to `device_id`: only that device may answer it.
    fn take_for(&self, device_id: &str, rid: u64) -> Option<oneshot::Sender<MethodAnswer>> {
        let mut calls = self.lock();
        if calls.get(&rid).is_some_and(|(d, _)| d == device_id) {
            calls.remove(&rid).map(|(_, tx)| tx)
        } else {
            None
        }
    }

    fn forget(&self, rid: u64) {
        self.lock().remove(&rid);
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
            return Err(HubError::DeviceNotOnline(device_id.to_string()));
        }
        let rid = NEXT_RID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.methods().insert(rid, device_id, tx);
        self.signal_device(
            device_id,
            SessionSignal::MethodRequest {
                rid,
                name: name.to_string(),
                payload: body,
            },
        );
        Ok((rid, rx))
    }

    /// A device answered method call `rid`.
    pub fn method_response(&self, device_id: &str, rid: u64, status: i32, payload: &[u8]) {
        if let Some(tx) = self.methods().take_for(device_id, rid) {
            let value = if payload.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(payload).into_owned())
                })
            };
            let _ = tx.send((status, value));
        }
    }

    /// Drops a call that timed out.
    pub fn forget_method(&self, rid: u64) {
        self.methods().forget(rid);
    }
}
