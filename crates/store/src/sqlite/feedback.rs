//! The outcomes of cloud-to-device messages on SQLite: a message delivered or expired, with the
//! feedback record its sender asked for written in the same transaction, and the feedback queue
//! that service clients take from, lock, complete and abandon. Kept apart from `sqlite.rs`
//! because these calls form one small queue of their own.

use rusqlite::{params, params_from_iter, TransactionBehavior};

use super::{backend, SqliteStore};
use crate::{C2dState, FeedbackRecord, FeedbackSettle, FeedbackTake, FeedbackWrite, StoreError};

/// `?first, ?first+1, ...`: one placeholder per ack that wants the outcome.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn feedback_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedbackRecord> {
    Ok(FeedbackRecord {
        id: r.get(0)?,
        original_message_id: r.get(1)?,
        device_id: r.get(2)?,
        device_generation_id: r.get(3)?,
        status: r.get(4)?,
        description: r.get(5)?,
        enqueued: r.get(6)?,
        delivery_count: r.get(7)?,
    })
}

impl SqliteStore {
    /// The feedback rows for the messages `selection` picks (a `WHERE` over `c2d`, whose first
    /// parameters are `selection_params`), when their ack is one of `feedback.wanted_by`.
    fn write_feedback(
        tx: &rusqlite::Transaction<'_>,
        selection: &str,
        selection_params: &[&dyn rusqlite::ToSql],
        feedback: &FeedbackWrite<'_>,
        at: i64,
    ) -> Result<(), StoreError> {
        if feedback.wanted_by.is_empty() {
            return Ok(());
        }
        let n = selection_params.len();
        let sql = format!(
            "INSERT INTO c2d_feedback (original_message_id, device_id, device_generation_id, status, description, enqueued)
             SELECT c.message_id, c.device_id, COALESCE(d.generation_id, ''), ?{}, ?{}, ?{}
             FROM c2d c LEFT JOIN device d ON d.device_id = c.device_id
             WHERE {selection} AND c.ack IN ({})",
            n + 1,
            n + 2,
            n + 3,
            placeholders(n + 4, feedback.wanted_by.len())
        );
        let mut values: Vec<&dyn rusqlite::ToSql> = selection_params.to_vec();
        values.push(&feedback.status);
        values.push(&feedback.description);
        values.push(&at);
        let acks: Vec<&str> = feedback.wanted_by.iter().map(|a| a.as_str()).collect();
        for ack in &acks {
            values.push(ack);
        }
        tx.execute(&sql, params_from_iter(values))
            .map_err(backend)?;
        Ok(())
    }

    pub(super) fn mark_c2d_delivered_sql(
        &self,
        id: i64,
        at: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let queued = C2dState::Queued;
        Self::write_feedback(
            &tx,
            "c.id = ?1 AND c.state = ?2",
            &[&id, &queued],
            feedback,
            at,
        )?;
        tx.execute(
            "UPDATE c2d SET state = ?3, delivered_at = ?2 WHERE id = ?1 AND state = ?4",
            params![id, at, C2dState::Delivered, C2dState::Queued],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    pub(super) fn expire_c2d_sql(
        &self,
        device_id: Option<&str>,
        now: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let queued = C2dState::Queued;
        let expired = C2dState::Expired;
        let n = match device_id {
            Some(device) => {
                Self::write_feedback(
                    &tx,
                    "c.device_id = ?1 AND c.state = ?2 AND c.expiry <= ?3",
                    &[&device, &queued, &now],
                    feedback,
                    now,
                )?;
                tx.execute(
                    "UPDATE c2d SET state = ?3 WHERE device_id = ?1 AND state = ?4 AND expiry <= ?2",
                    params![device, now, expired, queued],
                )
            }
            None => {
                Self::write_feedback(
                    &tx,
                    "c.state = ?1 AND c.expiry <= ?2",
                    &[&queued, &now],
                    feedback,
                    now,
                )?;
                tx.execute(
                    "UPDATE c2d SET state = ?2 WHERE state = ?3 AND expiry <= ?1",
                    params![now, expired, queued],
                )
            }
        }
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(n as u64)
    }

    pub(super) fn take_feedback_sql(
        &self,
        take: &FeedbackTake<'_>,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        // What is past the queue's time to live, or was taken as often as allowed and is not
        // locked now, is gone for good.
        tx.execute(
            "DELETE FROM c2d_feedback WHERE enqueued < ?1
                OR (delivery_count >= ?2 AND (locked_until IS NULL OR locked_until <= ?3))",
            params![take.oldest, take.max_deliveries, take.now],
        )
        .map_err(backend)?;
        let records = {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE c2d_feedback
                     SET lock_token = ?1, locked_until = ?2, delivery_count = delivery_count + 1
                     WHERE id IN (SELECT id FROM c2d_feedback
                                  WHERE locked_until IS NULL OR locked_until <= ?3
                                  ORDER BY id LIMIT ?4)
                     RETURNING id, original_message_id, device_id, device_generation_id, status,
                               description, enqueued, delivery_count",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![take.token, take.until, take.now, take.max],
                    feedback_from_row,
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
        };
        tx.commit().map_err(backend)?;
        let mut records = records;
        records.sort_by_key(|r| r.id);
        Ok(records)
    }

    pub(super) fn settle_feedback_sql(
        &self,
        token: &str,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        let sql = match settle {
            FeedbackSettle::Complete => {
                "DELETE FROM c2d_feedback WHERE lock_token = ?1 AND locked_until > ?2"
            }
            FeedbackSettle::Abandon => {
                "UPDATE c2d_feedback SET lock_token = NULL, locked_until = NULL
                 WHERE lock_token = ?1 AND locked_until > ?2"
            }
            FeedbackSettle::Release => {
                "UPDATE c2d_feedback SET lock_token = NULL, locked_until = NULL,
                        delivery_count = delivery_count - 1
                 WHERE lock_token = ?1 AND locked_until > ?2"
            }
        };
        conn.execute(sql, params![token, now])
            .map(|n| n as u64)
            .map_err(backend)
    }
}
