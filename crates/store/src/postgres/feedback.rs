//! The outcomes of cloud-to-device messages on PostgreSQL: a message delivered or expired with
//! its feedback record written by the same statement, and the feedback queue that service
//! clients take from (rows locked with `SKIP LOCKED`, so two nodes never hand out one record
//! twice). The same semantics as `sqlite/feedback.rs`, checked by the conformance tests.

use super::*;
use crate::{FeedbackRecord, FeedbackSettle, FeedbackStatus};

/// A [`crate::FeedbackWrite`] owned, to cross onto the store's runtime.
pub(super) struct OwnedFeedback {
    pub wanted_by: Vec<&'static str>,
    pub status: &'static str,
    pub description: String,
}

impl OwnedFeedback {
    pub(super) fn of(f: &crate::FeedbackWrite<'_>) -> OwnedFeedback {
        OwnedFeedback {
            wanted_by: f.wanted_by.iter().map(|a| a.as_str()).collect(),
            status: f.status.as_str(),
            description: f.description.to_string(),
        }
    }
}

/// A [`crate::FeedbackTake`] owned.
pub(super) struct OwnedTake {
    pub token: String,
    pub now: i64,
    pub until: i64,
    pub max: i64,
    pub oldest: i64,
    pub max_deliveries: i64,
}

impl OwnedTake {
    pub(super) fn of(t: &crate::FeedbackTake<'_>) -> OwnedTake {
        OwnedTake {
            token: t.token.to_string(),
            now: t.now,
            until: t.until,
            max: t.max as i64,
            oldest: t.oldest,
            max_deliveries: t.max_deliveries as i64,
        }
    }
}

fn feedback_from_row(r: &Row) -> Result<FeedbackRecord, StoreError> {
    Ok(FeedbackRecord {
        id: r.get(0),
        original_message_id: r.get(1),
        device_id: r.get(2),
        device_generation_id: r.get(3),
        status: text_value(r.get(4), FeedbackStatus::parse, "feedback status")?,
        description: r.get(5),
        enqueued: r.get(6),
        delivery_count: r.get(7),
    })
}

/// The insert that follows an outcome: `done` is the CTE of the messages the outcome changed.
const FEEDBACK_FROM_DONE: &str =
    "INSERT INTO c2d_feedback (original_message_id, device_id, device_generation_id, status, description, enqueued)
     SELECT done.message_id, done.device_id, COALESCE(d.generation_id, ''), $F1, $F2, $F3
     FROM done LEFT JOIN device d ON d.device_id = done.device_id
     WHERE done.ack = ANY($F4)";

/// [`FEEDBACK_FROM_DONE`] with its four parameters numbered from `first`.
fn feedback_insert(first: usize) -> String {
    (1..=4).fold(FEEDBACK_FROM_DONE.to_string(), |sql, n| {
        sql.replace(&format!("$F{n}"), &format!("${}", first + n - 1))
    })
}

impl Db {
    pub(super) async fn mark_c2d_delivered(
        &self,
        id: i64,
        at: i64,
        feedback: OwnedFeedback,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "WITH done AS (UPDATE c2d SET state = $3, delivered_at = $2 WHERE id = $1 AND state = $4
                           RETURNING message_id, device_id, ack)
             {}",
            feedback_insert(5)
        );
        c.execute(
            &sql,
            &[
                &id,
                &at,
                &C2dState::Delivered.as_str(),
                &C2dState::Queued.as_str(),
                &feedback.status,
                &feedback.description,
                &at,
                &feedback.wanted_by,
            ],
        )
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(super) async fn expire_c2d(
        &self,
        device_id: Option<String>,
        now: i64,
        feedback: OwnedFeedback,
    ) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        // $4 NULL: every device's messages.
        let sql = format!(
            "WITH done AS (UPDATE c2d SET state = $2 WHERE state = $3 AND expiry <= $1
                               AND ($4::TEXT IS NULL OR device_id = $4)
                           RETURNING message_id, device_id, ack),
                  written AS ({})
             SELECT COUNT(*) FROM done",
            feedback_insert(5)
        );
        let row = c
            .query_one(
                &sql,
                &[
                    &now,
                    &C2dState::Expired.as_str(),
                    &C2dState::Queued.as_str(),
                    &device_id,
                    &feedback.status,
                    &feedback.description,
                    &now,
                    &feedback.wanted_by,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(super) async fn take_feedback(
        &self,
        take: OwnedTake,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        tx.execute(
            "DELETE FROM c2d_feedback WHERE enqueued < $1
                OR (delivery_count >= $2 AND (locked_until IS NULL OR locked_until <= $3))",
            &[&take.oldest, &take.max_deliveries, &take.now],
        )
        .await
        .map_err(e)?;
        let rows = tx
            .query(
                "UPDATE c2d_feedback
                 SET lock_token = $1, locked_until = $2, delivery_count = delivery_count + 1
                 WHERE id IN (SELECT id FROM c2d_feedback
                              WHERE locked_until IS NULL OR locked_until <= $3
                              ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING id, original_message_id, device_id, device_generation_id, status,
                           description, enqueued, delivery_count",
                &[&take.token, &take.until, &take.now, &take.max],
            )
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        let mut records = rows
            .iter()
            .map(feedback_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.id);
        Ok(records)
    }

    pub(super) async fn settle_feedback(
        &self,
        token: String,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let sql = match settle {
            FeedbackSettle::Complete => {
                "DELETE FROM c2d_feedback WHERE lock_token = $1 AND locked_until > $2"
            }
            FeedbackSettle::Abandon => {
                "UPDATE c2d_feedback SET lock_token = NULL, locked_until = NULL
                 WHERE lock_token = $1 AND locked_until > $2"
            }
            FeedbackSettle::Release => {
                "UPDATE c2d_feedback SET lock_token = NULL, locked_until = NULL,
                        delivery_count = delivery_count - 1
                 WHERE lock_token = $1 AND locked_until > $2"
            }
        };
        c.execute(sql, &[&token, &now])
            .await
            .map_err(|e| self.error(e))
    }
}
