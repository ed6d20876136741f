//! Feedback on cloud-to-device messages: a sender that sets a message's `ack` hears how it ended
//! (completed by the device, or expired undelivered) through the feedback queue, which service
//! clients read in batches under a lock token and then complete or abandon, as on Azure IoT Hub.
//!
//! Owns no in-memory state: the records are the store's, written in the same transaction as the
//! outcome (so none is lost or doubled, on any node of a cluster). This module holds the rules:
//! which ack wants which outcome, the queue's limits (from the config), the lock token, and who may
//! read (ServiceConnect).

pub use iothub_store::{C2dAck, FeedbackRecord, FeedbackStatus};
use iothub_store::{FeedbackSettle, FeedbackTake, FeedbackWrite};

use crate::auth::{Principal, Right};
use crate::{Hub, HubError};

/// A completed message: reported to senders that asked for positive or full feedback.
pub(crate) const COMPLETED: FeedbackWrite<'static> = FeedbackWrite {
    wanted_by: &[C2dAck::Positive, C2dAck::Full],
    status: FeedbackStatus::Success,
    description: "Success",
};

/// An expired message: reported to senders that asked for negative or full feedback.
pub(crate) const EXPIRED: FeedbackWrite<'static> = FeedbackWrite {
    wanted_by: &[C2dAck::Negative, C2dAck::Full],
    status: FeedbackStatus::Expired,
    description: "Message expired",
};

/// The ack a sender named (`iothub-ack` on AMQP, `ack` in the HTTPS body), or why it is none.
pub fn parse_ack(text: &str) -> Result<C2dAck, HubError> {
    C2dAck::parse(text).ok_or_else(|| {
        HubError::InvalidArgument(format!(
            "ack '{}' is not one of none, positive, negative, full",
            crate::peer_text::escaped(text)
        ))
    })
}

/// What one receive hands out: records locked under one token until `locked_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackBatch {
    pub lock_token: String,
    pub locked_until: i64,
    /// How many times the most often taken record of the batch has been taken (this time included).
    pub delivery_count: i64,
    pub records: Vec<FeedbackRecord>,
}

/// The content type of a feedback batch in Azure's JSON (both transports send it).
pub const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

impl FeedbackBatch {
    /// The batch as Azure's feedback JSON: an array of records, oldest first. The document the
    /// service SDKs parse, the same over HTTPS and AMQP, so it is written once, here.
    pub fn azure_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "originalMessageId": r.original_message_id,
                        "deviceId": r.device_id,
                        "deviceGenerationId": r.device_generation_id,
                        "statusCode": r.status.as_str(),
                        "description": r.description,
                        "enqueuedTimeUtc": iothub_pki::pop::format_time(r.enqueued),
                    })
                })
                .collect(),
        )
    }

    /// When the newest outcome of the batch happened (Unix seconds).
    pub fn newest(&self) -> i64 {
        self.records.iter().map(|r| r.enqueued).max().unwrap_or(0)
    }
}

/// A fresh lock token, in the shape of Azure's (a GUID).
fn lock_token() -> Result<String, HubError> {
    let hex = iothub_pki::pop::generate_code()
        .map_err(|_| HubError::Internal("the system random source failed".into()))?
        .to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

impl Hub {
    fn authorize_feedback(&self, who: &Principal) -> Result<(), HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read cloud-to-device feedback",
            "feedback",
        )
    }

    /// The next batch of feedback, locked for `--c2d-feedback-lock` seconds; None when the queue
    /// holds nothing to take. Messages that expired since the last sweep are expired first, so
    /// their feedback is in the queue as soon as they are due (one indexed update).
    pub fn receive_feedback(&self, who: &Principal) -> Result<Option<FeedbackBatch>, HubError> {
        self.authorize_feedback(who)?;
        self.expire_c2d_everywhere()?;
        let config = self.config();
        let now = self.now();
        let token = lock_token()?;
        let until = now + config.feedback_lock_secs;
        let records = self.store().take_feedback(&FeedbackTake {
            token: &token,
            now,
            until,
            max: config.feedback_batch,
            oldest: now - config.feedback_ttl_secs,
            max_deliveries: config.feedback_max_deliveries,
        })?;
        if records.is_empty() {
            return Ok(None);
        }
        Ok(Some(FeedbackBatch {
            lock_token: token,
            locked_until: until,
            delivery_count: records.iter().map(|r| r.delivery_count).max().unwrap_or(1),
            records,
        }))
    }

    /// Deletes the batch locked under `token`.
    pub fn complete_feedback(&self, who: &Principal, token: &str) -> Result<(), HubError> {
        self.settle_feedback(who, token, FeedbackSettle::Complete)
    }

    /// Gives the batch locked under `token` back to the queue, to be received again.
    pub fn abandon_feedback(&self, who: &Principal, token: &str) -> Result<(), HubError> {
        self.settle_feedback(who, token, FeedbackSettle::Abandon)
    }

    /// Gives back a batch that never reached its reader (a transport with no credit from the
    /// client before the lock ran short): it is received again, and this receive is not counted
    /// against its records' `--c2d-feedback-max-deliveries`.
    pub fn release_feedback(&self, who: &Principal, token: &str) -> Result<(), HubError> {
        self.settle_feedback(who, token, FeedbackSettle::Release)
    }

    fn settle_feedback(
        &self,
        who: &Principal,
        token: &str,
        settle: FeedbackSettle,
    ) -> Result<(), HubError> {
        self.authorize_feedback(who)?;
        // A token is ours only in our shape; anything else is refused before the store.
        let ours = token.len() == 36 && token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !ours || self.store().settle_feedback(token, self.now(), settle)? == 0 {
            return Err(HubError::FeedbackLockLost(
                crate::peer_text::escaped(token).to_string(),
            ));
        }
        Ok(())
    }

    /// Expires every device's messages that are due (writing their feedback), so that a device
    /// that never connects again still produces its senders' Expired feedback; run once a minute
    /// by `serve`. Returns how many expired.
    pub fn expire_c2d_everywhere(&self) -> Result<u64, HubError> {
        let expired = self.store().expire_c2d(None, self.now(), &EXPIRED)?;
        self.metrics().c2d_expired(expired);
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_are_guid_shaped_and_fresh() {
        let a = lock_token().unwrap();
        let b = lock_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn each_ack_hears_the_outcomes_it_asked_for() {
        let hears = |ack| {
            (
                COMPLETED.wanted_by.contains(&ack),
                EXPIRED.wanted_by.contains(&ack),
            )
        };
        assert_eq!(hears(C2dAck::None), (false, false));
        assert_eq!(hears(C2dAck::Positive), (true, false));
        assert_eq!(hears(C2dAck::Negative), (false, true));
        assert_eq!(hears(C2dAck::Full), (true, true));
    }

    #[test]
    fn acks_parse_by_their_exact_names() {
        assert_eq!(parse_ack("full").unwrap(), C2dAck::Full);
        assert_eq!(parse_ack("none").unwrap(), C2dAck::None);
        let e = parse_ack("Full\n").unwrap_err().to_string();
        assert!(
            e.contains("'Full\\n'") && e.contains("none, positive, negative, full"),
            "{e}"
        );
    }
}
