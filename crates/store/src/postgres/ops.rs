//! The [`Store`] calls of [`PostgresStore`], each one transaction (or one statement) run on the
//! store's runtime. Their semantics are the SQLite store's, call for call; the conformance tests
//! (`crates/store/tests/conformance.rs`) run the same checks against both.

use super::*;
use crate::{
    EnrollmentKind, EnrollmentRecord, FeedbackRecord, FeedbackSettle, FeedbackTake, FeedbackWrite,
    RegistrationRecord,
};

/// Turns a borrowed value into an owned one for the store's runtime.
macro_rules! owned {
    ($($name:ident),*) => { $(let $name = $name.to_owned();)* };
}

impl Store for PostgresStore {
    fn get_ca(&self, name: &str) -> Result<Option<CaRecord>, StoreError> {
        owned!(name);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        &format!("SELECT {CA_COLUMNS} FROM ca_certificate WHERE name = $1"),
                        &[&name],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.map(|r| ca_from_row(&r)))
            })
        })
    }

    fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {CA_COLUMNS} FROM ca_certificate ORDER BY name"),
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(ca_from_row).collect())
            })
        })
    }

    fn list_ca_versions(&self) -> Result<Vec<(String, u64, bool)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT name, etag, is_verified FROM ca_certificate ORDER BY name",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
                    .collect())
            })
        })
    }

    fn ca_changes_since(&self, since: u64) -> Result<CaChanges, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                // One snapshot for both reads: no write lands between them.
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(|e| db.error(e))?;
                let rows = tx
                    .query(
                        "SELECT name, etag, is_verified FROM ca_certificate WHERE etag > $1",
                        &[&(since as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                let total: i64 = tx
                    .query_one("SELECT COUNT(*) FROM ca_certificate", &[])
                    .await
                    .map_err(|e| db.error(e))?
                    .get(0);
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(CaChanges {
                    changed: rows
                        .iter()
                        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
                        .collect(),
                    total: total as u64,
                })
            })
        })
    }

    fn write_ca(
        &self,
        record: &CaRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<CaRecord, StoreError> {
        owned!(record, audit);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                // The etag first: it serialises CA writers, so the checks below see the last one.
                let etag = db.next_etag(&tx).await?;
                let current = db
                    .current_etag(&tx, "ca_certificate", "name", &record.name)
                    .await?;
                db.check_expect(&tx, expect, current, "ca_certificate")
                    .await?;
                let other = tx
                    .query_opt(
                        "SELECT name FROM ca_certificate WHERE thumbprint = $1 AND name <> $2",
                        &[&record.thumbprint, &record.name],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                if let Some(row) = other {
                    return Err(StoreError::DuplicateThumbprint { name: row.get(0) });
                }
                let (code, expires, used): (Option<&str>, Option<i64>, Option<i64>) =
                    match &record.code {
                        CodeRecord::None => (None, None, None),
                        CodeRecord::Live { code, expires_at } => {
                            (Some(code.as_str()), Some(*expires_at), None)
                        }
                        CodeRecord::Used { at } => (None, None, Some(*at)),
                    };
                tx.execute(
                    &format!("INSERT INTO ca_certificate ({CA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (name) DO UPDATE SET der = excluded.der, thumbprint = excluded.thumbprint,
                       is_verified = excluded.is_verified, created = excluded.created, updated = excluded.updated,
                       etag = excluded.etag, code = excluded.code, code_expires_at = excluded.code_expires_at,
                       code_used_at = excluded.code_used_at"),
                    &[&record.name, &record.der, &record.thumbprint, &record.is_verified, &record.created,
                      &record.updated, &(etag as i64), &code, &expires, &used],
                )
                .await
                .map_err(|e| db.error(e))?;
                db.record_change(&tx, ChangeKind::Ca, &record.name, None, etag)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(CaRecord { etag, ..record })
            })
        })
    }

    fn delete_ca(&self, name: &str, etag: Option<u64>, audit: &NewAudit) -> Result<(), StoreError> {
        owned!(name, audit);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                let seq = db.next_etag(&tx).await?;
                let current = db
                    .current_etag(&tx, "ca_certificate", "name", &name)
                    .await?;
                check_delete(current, etag)?;
                tx.execute("DELETE FROM ca_certificate WHERE name = $1", &[&name])
                    .await
                    .map_err(|e| db.error(e))?;
                tx.execute("DELETE FROM revocation WHERE ca_name = $1", &[&name])
                    .await
                    .map_err(|e| db.error(e))?;
                tx.execute("DELETE FROM crl WHERE ca_name = $1", &[&name])
                    .await
                    .map_err(|e| db.error(e))?;
                tx.execute("DELETE FROM auto_registration WHERE ca_name = $1", &[&name])
                    .await
                    .map_err(|e| db.error(e))?;
                db.record_change(&tx, ChangeKind::Ca, &name, None, seq)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(|e| db.error(e))
            })
        })
    }

    fn append_audit(&self, audit: &NewAudit) -> Result<(), StoreError> {
        owned!(audit);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(|e| db.error(e))
            })
        })
    }

    fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let (target, before, limit) = (query.target.clone(), query.before, query.limit as i64);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT id, time, actor, action, target, success, code, detail FROM audit
                         WHERE ($1::TEXT IS NULL OR target = $1) AND ($2::BIGINT IS NULL OR id < $2)
                         ORDER BY id DESC LIMIT $3",
                        &[&target, &before, &limit],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| AuditEntry {
                        id: r.get(0),
                        time: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        target: r.get(4),
                        success: r.get(5),
                        code: r.get(6),
                        detail: r.get(7),
                    })
                    .collect())
            })
        })
    }

    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT name, primary_key, secondary_key, rights FROM policy ORDER BY name",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(policy_from_row).collect())
            })
        })
    }

    fn insert_policy_if_absent(&self, policy: &PolicyRecord) -> Result<bool, StoreError> {
        owned!(policy);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                let n = tx
                    .execute(
                        "INSERT INTO policy (name, primary_key, secondary_key, rights) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO NOTHING",
                        &[&policy.name, &policy.primary_key, &policy.secondary_key, &policy.rights.join(",")],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                if n == 1 {
                    let seq = db.next_etag(&tx).await?;
                    db.record_change(&tx, ChangeKind::Policy, &policy.name, None, seq)
                        .await?;
                }
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(n == 1)
            })
        })
    }

    fn change_policy(
        &self,
        change: &PolicyChange,
        audit: &NewAudit,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        owned!(change, audit);
        self.call(move |db| Box::pin(async move { db.change_policy(change, audit).await }))
    }

    fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        &format!("SELECT {DEVICE_COLUMNS} FROM device WHERE device_id = $1"),
                        &[&device_id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                row.map(|r| device_from_row(&r)).transpose()
            })
        })
    }

    fn count_devices(&self) -> Result<(u64, u64), StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_one(
                        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = $1) FROM device",
                        &[&DeviceStatus::Enabled.as_str()],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
            })
        })
    }

    fn list_devices(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let after = after.map(str::to_owned);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {DEVICE_COLUMNS} FROM device WHERE ($1::TEXT IS NULL OR device_id > $1) ORDER BY device_id LIMIT $2"),
                        &[&after, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                rows.iter().map(device_from_row).collect()
            })
        })
    }

    fn write_device(
        &self,
        record: &DeviceRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError> {
        owned!(record, audit);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                let etag = db.next_etag(&tx).await?;
                let current = db
                    .current_etag(&tx, "device", "device_id", &record.device_id)
                    .await?;
                db.check_expect(&tx, expect, current, "device").await?;
                tx.execute(
                    "DELETE FROM device WHERE device_id = $1",
                    &[&record.device_id],
                )
                .await
                .map_err(|e| db.error(e))?;
                let (etag_value, status, auth) = (
                    etag as i64,
                    record.status.as_str(),
                    record.auth_type.as_str(),
                );
                tx.execute(
                    INSERT_DEVICE,
                    &device_params(&record, &etag_value, &status, &auth),
                )
                .await
                .map_err(|e| db.error(e))?;
                db.record_change(&tx, ChangeKind::Device, &record.device_id, None, etag)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(DeviceRecord { etag, ..record })
            })
        })
    }

    fn create_devices(
        &self,
        rows: &[(DeviceRecord, NewAudit)],
        limit: u64,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError> {
        let rows = rows.to_vec();
        self.call(move |db| Box::pin(async move { db.create_devices(rows, limit).await }))
    }

    fn delete_device(
        &self,
        device_id: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        owned!(device_id, audit);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                let seq = db.next_etag(&tx).await?;
                let current = db
                    .current_etag(&tx, "device", "device_id", &device_id)
                    .await?;
                check_delete(current, etag)?;
                for table in [
                    "device",
                    "device_activity",
                    "c2d",
                    "twin",
                    "persistent_session",
                    "presence",
                    "registration",
                ] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE device_id = $1"),
                        &[&device_id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                }
                db.record_change(&tx, ChangeKind::Device, &device_id, None, seq)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(|e| db.error(e))
            })
        })
    }

    fn list_expiring_devices(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT a.device_id, a.certificate_not_after FROM device_activity a
                         JOIN device d ON d.device_id = a.device_id
                         WHERE a.certificate_not_after < $1
                         ORDER BY a.certificate_not_after, a.device_id LIMIT $2",
                        &[&before, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    fn get_device_activity(&self, device_id: &str) -> Result<DeviceActivity, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT last_activity, last_connected, last_refusal, last_refusal_time, certificate_not_after FROM device_activity WHERE device_id = $1",
                        &[&device_id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row
                    .map(|r| DeviceActivity {
                        last_activity: r.get(0),
                        last_connected: r.get(1),
                        last_refusal: r.get(2),
                        last_refusal_time: r.get(3),
                        certificate_not_after: r.get(4),
                    })
                    .unwrap_or_default())
            })
        })
    }

    fn update_device_activity(
        &self,
        device_id: &str,
        update: &DeviceActivity,
    ) -> Result<(), StoreError> {
        let updates = vec![(device_id.to_owned(), update.clone())];
        self.call(move |db| Box::pin(async move { db.update_activities(updates, false).await }))
    }

    fn update_device_activities(
        &self,
        updates: &[(String, DeviceActivity)],
    ) -> Result<(), StoreError> {
        let updates = updates.to_vec();
        self.call(move |db| Box::pin(async move { db.update_activities(updates, true).await }))
    }

    fn append_messages(&self, messages: &[NewMessage]) -> Result<Vec<i64>, StoreError> {
        let messages = messages.to_vec();
        self.call(move |db| Box::pin(async move { db.append_messages(messages).await }))
    }

    fn read_messages(
        &self,
        from: i64,
        device_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let device_id = device_id.map(str::to_owned);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {MESSAGE_COLUMNS} FROM message WHERE msg_offset >= $1 AND ($2::TEXT IS NULL OR device_id = $2) ORDER BY msg_offset LIMIT $3"),
                        &[&from, &device_id, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(message_from_row).collect())
            })
        })
    }

    fn read_partition(
        &self,
        partition: u32,
        from: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {MESSAGE_COLUMNS} FROM message WHERE partition = $1 AND sequence >= $2 ORDER BY sequence LIMIT $3"),
                        &[&(partition as i32), &from, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(message_from_row).collect())
            })
        })
    }

    fn partition_ends(&self) -> Result<Vec<(u32, i64)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT partition, last FROM partition_counter ORDER BY partition",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                    .collect())
            })
        })
    }

    fn last_message_offset(&self) -> Result<i64, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_one("SELECT last FROM message_counter WHERE id = 1", &[])
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.get(0))
            })
        })
    }

    fn prune_messages(&self, before: i64) -> Result<u64, StoreError> {
        /// Rows deleted per transaction.
        const PRUNE_BATCH: i64 = 10_000;
        self.call(move |db| {
            Box::pin(async move {
                // In batches, each its own transaction: a day of a busy hub's telemetry is
                // millions of rows, and one statement deleting them all would hold its locks and
                // its WAL for as long as that takes while devices' messages wait behind it.
                let c = db.conn().await?;
                let mut total = 0;
                loop {
                    let n = c
                        .execute(
                            "DELETE FROM message WHERE msg_offset IN (
                                SELECT msg_offset FROM message WHERE enqueued < $1 LIMIT $2)",
                            &[&before, &PRUNE_BATCH],
                        )
                        .await
                        .map_err(|e| db.error(e))?;
                    total += n;
                    if n < PRUNE_BATCH as u64 {
                        return Ok(total);
                    }
                }
            })
        })
    }

    fn enqueue_c2d(&self, record: &C2dRecord, max_pending: u32) -> Result<C2dRecord, StoreError> {
        owned!(record);
        self.call(move |db| Box::pin(async move { db.enqueue_c2d(record, max_pending).await }))
    }

    fn list_c2d(&self, device_id: &str, limit: u32) -> Result<Vec<C2dRecord>, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {C2D_COLUMNS} FROM c2d WHERE device_id = $1 ORDER BY id DESC LIMIT $2"),
                        &[&device_id, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                rows.iter().map(c2d_from_row).collect()
            })
        })
    }

    fn pending_c2d(&self, device_id: &str, now: i64) -> Result<Vec<C2dRecord>, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        &format!("SELECT {C2D_COLUMNS} FROM c2d WHERE device_id = $1 AND state = $2 AND expiry > $3 ORDER BY id"),
                        &[&device_id, &C2dState::Queued.as_str(), &now],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                rows.iter().map(c2d_from_row).collect()
            })
        })
    }

    fn expire_c2d(
        &self,
        device_id: Option<&str>,
        now: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<u64, StoreError> {
        let device_id = device_id.map(str::to_owned);
        let feedback = feedback::OwnedFeedback::of(feedback);
        self.call(move |db| Box::pin(async move { db.expire_c2d(device_id, now, feedback).await }))
    }

    fn count_pending_c2d(&self, device_id: &str, now: i64) -> Result<u64, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_one(
                        "SELECT COUNT(*) FROM c2d WHERE device_id = $1 AND state = $3 AND expiry > $2",
                        &[&device_id, &now, &C2dState::Queued.as_str()],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.get::<_, i64>(0) as u64)
            })
        })
    }

    fn mark_c2d_delivered(
        &self,
        id: i64,
        at: i64,
        feedback: &FeedbackWrite<'_>,
    ) -> Result<(), StoreError> {
        let feedback = feedback::OwnedFeedback::of(feedback);
        self.call(move |db| Box::pin(async move { db.mark_c2d_delivered(id, at, feedback).await }))
    }

    fn take_feedback(&self, take: &FeedbackTake<'_>) -> Result<Vec<FeedbackRecord>, StoreError> {
        let take = feedback::OwnedTake::of(take);
        self.call(move |db| Box::pin(async move { db.take_feedback(take).await }))
    }

    fn settle_feedback(
        &self,
        token: &str,
        now: i64,
        settle: FeedbackSettle,
    ) -> Result<u64, StoreError> {
        owned!(token);
        self.call(move |db| Box::pin(async move { db.settle_feedback(token, now, settle).await }))
    }

    fn count_c2d_attempt(&self, id: i64) -> Result<(), StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                c.execute(
                    "UPDATE c2d SET delivery_count = delivery_count + 1 WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| db.error(e))?;
                Ok(())
            })
        })
    }

    fn get_twin(&self, device_id: &str) -> Result<TwinRecord, StoreError> {
        owned!(device_id);
        self.call(move |db| Box::pin(async move { db.get_twin(device_id).await }))
    }

    fn write_twin(
        &self,
        twin: &TwinRecord,
        expected: Option<u64>,
        desired_patch: Option<&str>,
    ) -> Result<TwinRecord, StoreError> {
        owned!(twin);
        let patch = desired_patch.map(str::to_owned);
        self.call(move |db| Box::pin(async move { db.write_twin(twin, expected, patch).await }))
    }

    fn record_presence(&self, updates: &[PresenceUpdate]) -> Result<(), StoreError> {
        let updates = updates.to_vec();
        self.call(move |db| Box::pin(async move { db.record_presence(updates).await }))
    }

    fn get_presence(&self, device_id: &str) -> Result<Option<Presence>, StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT p.node, p.since_ms, h.at_ms FROM presence p
                         LEFT JOIN node_heartbeat h ON h.node = p.node WHERE p.device_id = $1",
                        &[&device_id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.map(|r| Presence {
                    node: r.get(0),
                    since_ms: r.get(1),
                    heartbeat_ms: r.get(2),
                }))
            })
        })
    }

    fn heartbeat(&self, node: &str, now_ms: i64) -> Result<(), StoreError> {
        owned!(node);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                c.execute(
                    "INSERT INTO node_heartbeat (node, at_ms) VALUES ($1, $2)
                     ON CONFLICT (node) DO UPDATE SET at_ms = GREATEST(node_heartbeat.at_ms, excluded.at_ms)",
                    &[&node, &now_ms],
                )
                .await
                .map_err(|e| db.error(e))?;
                Ok(())
            })
        })
    }

    fn put_method_call(&self, call: &MethodCallRecord) -> Result<i64, StoreError> {
        owned!(call);
        self.call(move |db| Box::pin(async move { db.put_method_call(call).await }))
    }

    fn get_method_call(&self, id: i64) -> Result<Option<MethodCallRecord>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT id, device_id, target_node, name, payload, created_ms, timeout_ms FROM method_call WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.map(|r| MethodCallRecord {
                    id: r.get(0),
                    device_id: r.get(1),
                    target_node: r.get(2),
                    name: r.get(3),
                    payload: r.get(4),
                    created_ms: r.get(5),
                    timeout_ms: r.get(6),
                }))
            })
        })
    }

    fn answer_method_call(&self, id: i64, status: i32, payload: &[u8]) -> Result<(), StoreError> {
        let payload = payload.to_vec();
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                c.execute(
                    "UPDATE method_call SET status = $2, response = $3 WHERE id = $1 AND status IS NULL",
                    &[&id, &status, &payload],
                )
                .await
                .map_err(|e| db.error(e))?;
                Ok(())
            })
        })
    }

    fn get_method_answer(&self, id: i64) -> Result<Option<(i32, Vec<u8>)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT status, response FROM method_call WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.and_then(|r| {
                    let status: Option<i32> = r.get(0);
                    let response: Option<Vec<u8>> = r.get(1);
                    status.map(|s| (s, response.unwrap_or_default()))
                }))
            })
        })
    }

    fn prune_method_calls(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                c.execute(
                    "DELETE FROM method_call WHERE created_ms < $1",
                    &[&before_ms],
                )
                .await
                .map_err(|e| db.error(e))
            })
        })
    }

    fn list_consumer_groups(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT name, created FROM consumer_group ORDER BY name",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
    }

    fn insert_consumer_group(
        &self,
        name: &str,
        created: i64,
        limit: u64,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        owned!(name, audit);
        self.call(move |db| {
            Box::pin(async move {
                let e = |e| db.error(e);
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(e)?;
                // One writer at a time, so the count and the insert agree.
                tx.execute("LOCK TABLE consumer_group IN EXCLUSIVE MODE", &[])
                    .await
                    .map_err(e)?;
                let count: i64 = tx
                    .query_one("SELECT COUNT(*) FROM consumer_group", &[])
                    .await
                    .map_err(e)?
                    .get(0);
                let inserted = tx
                    .execute(
                        "INSERT INTO consumer_group (name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&name, &created],
                    )
                    .await
                    .map_err(e)?;
                if inserted == 0 {
                    return Err(StoreError::AlreadyExists);
                }
                if count as u64 >= limit {
                    return Err(StoreError::LimitReached { limit });
                }
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(e)
            })
        })
    }

    fn delete_consumer_group(&self, name: &str, audit: &NewAudit) -> Result<(), StoreError> {
        owned!(name, audit);
        self.call(move |db| {
            Box::pin(async move {
                let e = |e| db.error(e);
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(e)?;
                let deleted = tx
                    .execute("DELETE FROM consumer_group WHERE name = $1", &[&name])
                    .await
                    .map_err(e)?;
                if deleted == 0 {
                    return Err(StoreError::NotFound);
                }
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(e)
            })
        })
    }

    fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        owned!(name);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt("SELECT value FROM hub_setting WHERE name = $1", &[&name])
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.map(|r| r.get(0)))
            })
        })
    }

    fn insert_settings_if_absent(&self, settings: &[(&str, &[u8])]) -> Result<bool, StoreError> {
        let settings: Vec<(String, Vec<u8>)> = settings
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                for (name, value) in &settings {
                    let n = tx
                        .execute(
                            "INSERT INTO hub_setting (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                            &[name, value],
                        )
                        .await
                        .map_err(|e| db.error(e))?;
                    if n == 0 {
                        // Rolled back on drop: none of the set is written.
                        return Ok(false);
                    }
                }
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(true)
            })
        })
    }

    fn changes_since(&self, since: u64, limit: u32) -> Result<ChangeFeed, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(|e| db.error(e))?;
                let pruned: i64 = tx
                    .query_one("SELECT seq FROM change_pruned WHERE id = 1", &[])
                    .await
                    .map_err(|e| db.error(e))?
                    .get(0);
                let rows = tx
                    .query(
                        "SELECT seq, kind, key, detail FROM change_log WHERE seq > $1 AND node <> $2 ORDER BY seq LIMIT $3",
                        &[&(since as i64), &db.node, &(limit as i64)],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                tx.commit().await.map_err(|e| db.error(e))?;
                let changes = rows
                    .iter()
                    .map(|r| {
                        Ok(Change {
                            seq: r.get::<_, i64>(0) as u64,
                            kind: text_value(r.get(1), ChangeKind::parse, "change kind")?,
                            key: r.get(2),
                            detail: r.get(3),
                        })
                    })
                    .collect::<Result<_, StoreError>>()?;
                Ok(ChangeFeed {
                    changes,
                    complete: since >= pruned as u64,
                })
            })
        })
    }

    fn last_change(&self) -> Result<u64, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_one(
                        "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM change_log), 0), (SELECT seq FROM change_pruned WHERE id = 1))",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.get::<_, i64>(0) as u64)
            })
        })
    }

    fn wait_for_changes(&self, timeout: std::time::Duration) -> bool {
        self.db.wakeup.wait(timeout)
    }

    fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        self.call(move |db| Box::pin(async move { db.prune_changes(before).await }))
    }

    fn list_persistent_sessions(&self) -> Result<Vec<(String, Subscriptions)>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT device_id, c2d, desired, methods FROM persistent_session ORDER BY device_id",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let subs = Subscriptions {
                            c2d: r.get(1),
                            desired: r.get(2),
                            methods: r.get(3),
                        };
                        (r.get(0), subs)
                    })
                    .collect())
            })
        })
    }

    fn revoke(&self, record: &RevocationRecord, audit: &NewAudit) -> Result<(), StoreError> {
        owned!(record, audit);
        self.call(move |db| Box::pin(async move { db.revoke(record, audit).await }))
    }

    fn replace_crl(
        &self,
        crl: &CrlRecord,
        entries: &[RevocationRecord],
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        owned!(crl, audit);
        let entries = entries.to_vec();
        self.call(move |db| Box::pin(async move { db.replace_crl(crl, entries, audit).await }))
    }

    fn set_auto_registration(
        &self,
        ca_name: &str,
        device_limit: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        owned!(ca_name, audit);
        self.call(move |db| {
            Box::pin(async move {
                let e = |e| db.error(e);
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(e)?;
                let seq = db.next_etag(&tx).await?;
                db.lock_ca(&tx, &ca_name).await?;
                match device_limit {
                    Some(limit) => {
                        let limit = limit as i64;
                        tx.execute(
                            "INSERT INTO auto_registration (ca_name, device_limit, registered) VALUES ($1, $2, 0)
                             ON CONFLICT (ca_name) DO UPDATE SET device_limit = excluded.device_limit",
                            &[&ca_name, &limit],
                        )
                        .await
                    }
                    None => {
                        tx.execute(
                            "DELETE FROM auto_registration WHERE ca_name = $1",
                            &[&ca_name],
                        )
                        .await
                    }
                }
                .map_err(e)?;
                db.record_change(&tx, ChangeKind::AutoRegistration, &ca_name, None, seq)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(e)
            })
        })
    }

    fn list_auto_registrations(&self) -> Result<Vec<AutoRegistration>, StoreError> {
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT ca_name, device_limit, registered FROM auto_registration ORDER BY ca_name",
                        &[],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| AutoRegistration {
                        ca_name: r.get(0),
                        device_limit: r.get::<_, i64>(1) as u64,
                        registered: r.get::<_, i64>(2) as u64,
                    })
                    .collect())
            })
        })
    }

    fn auto_register_device(
        &self,
        ca_name: &str,
        record: &DeviceRecord,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<DeviceRecord, StoreError> {
        owned!(ca_name, record, audit);
        self.call(move |db| {
            Box::pin(async move {
                let e = |e| db.error(e);
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(e)?;
                let etag = db.next_etag(&tx).await?;
                // The quota row locked: two nodes registering through one CA take turns.
                let quota = tx
                    .query_opt(
                        "SELECT device_limit, registered FROM auto_registration WHERE ca_name = $1 FOR UPDATE",
                        &[&ca_name],
                    )
                    .await
                    .map_err(e)?;
                let Some(quota) = quota else {
                    return Err(StoreError::NotFound);
                };
                let (limit, registered): (i64, i64) = (quota.get(0), quota.get(1));
                if registered >= limit {
                    return Err(StoreError::QuotaReached {
                        limit: limit as u64,
                    });
                }
                let current = db
                    .current_etag(&tx, "device", "device_id", &record.device_id)
                    .await?;
                db.check_expect(
                    &tx,
                    Expect::Absent {
                        limit: device_limit,
                    },
                    current,
                    "device",
                )
                .await?;
                let (etag_value, status, auth) = (
                    etag as i64,
                    record.status.as_str(),
                    record.auth_type.as_str(),
                );
                tx.execute(
                    INSERT_DEVICE,
                    &device_params(&record, &etag_value, &status, &auth),
                )
                .await
                .map_err(e)?;
                tx.execute(
                    "UPDATE auto_registration SET registered = registered + 1 WHERE ca_name = $1",
                    &[&ca_name],
                )
                .await
                .map_err(e)?;
                db.record_change(&tx, ChangeKind::Device, &record.device_id, None, etag)
                    .await?;
                db.insert_audit(&tx, &audit).await?;
                tx.commit().await.map_err(e)?;
                Ok(DeviceRecord { etag, ..record })
            })
        })
    }

    fn get_crl(&self, ca_name: &str) -> Result<Option<CrlRecord>, StoreError> {
        owned!(ca_name);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT c.this_update, c.next_update, c.number, c.uploaded_at,
                                (SELECT COUNT(*) FROM revocation r WHERE r.ca_name = c.ca_name AND r.from_crl)
                         FROM crl c WHERE c.ca_name = $1",
                        &[&ca_name],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(row.map(|r| CrlRecord {
                    ca_name: ca_name.clone(),
                    this_update: r.get(0),
                    next_update: r.get(1),
                    number: r.get(2),
                    uploaded_at: r.get(3),
                    entries: r.get::<_, i64>(4) as u64,
                }))
            })
        })
    }

    fn list_revocations(&self, ca_name: Option<&str>) -> Result<Vec<RevocationRecord>, StoreError> {
        let ca_name = ca_name.map(str::to_string);
        self.call(move |db| {
            Box::pin(async move {
                let c = db.conn().await?;
                let rows = c
                    .query(
                        "SELECT ca_name, serial, reason, revoked_at, from_crl FROM revocation
                         WHERE ($1::text IS NULL OR ca_name = $1) ORDER BY ca_name, revoked_at, serial",
                        &[&ca_name],
                    )
                    .await
                    .map_err(|e| db.error(e))?;
                Ok(rows
                    .iter()
                    .map(|r| RevocationRecord {
                        ca_name: r.get(0),
                        serial: r.get(1),
                        reason: r.get(2),
                        revoked_at: r.get(3),
                        from_crl: r.get(4),
                    })
                    .collect())
            })
        })
    }

    fn write_enrollment(
        &self,
        record: &EnrollmentRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<EnrollmentRecord, StoreError> {
        owned!(record, audit);
        self.call(move |db| {
            Box::pin(async move { db.write_enrollment(record, expect, audit).await })
        })
    }

    fn get_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        owned!(name);
        self.call(move |db| Box::pin(async move { db.get_enrollment(kind, name).await }))
    }

    fn list_enrollments(&self, kind: EnrollmentKind) -> Result<Vec<EnrollmentRecord>, StoreError> {
        self.call(move |db| Box::pin(async move { db.list_enrollments(kind).await }))
    }

    fn delete_enrollment(
        &self,
        kind: EnrollmentKind,
        name: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        owned!(name, audit);
        self.call(move |db| {
            Box::pin(async move { db.delete_enrollment(kind, name, etag, audit).await })
        })
    }

    fn provision_device(
        &self,
        registration: &RegistrationRecord,
        device: &DeviceRecord,
        twin: Option<&TwinRecord>,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<(RegistrationRecord, bool), StoreError> {
        owned!(registration, device, audit);
        let twin = twin.cloned();
        self.call(move |db| {
            Box::pin(async move {
                db.provision_device(registration, device, twin, device_limit, audit)
                    .await
            })
        })
    }

    fn get_registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        owned!(registration_id);
        self.call(move |db| Box::pin(async move { db.get_registration(registration_id).await }))
    }

    fn list_registrations(&self) -> Result<Vec<RegistrationRecord>, StoreError> {
        self.call(move |db| Box::pin(async move { db.list_registrations().await }))
    }

    fn write_persistent_session(
        &self,
        device_id: &str,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), StoreError> {
        owned!(device_id);
        self.call(move |db| {
            Box::pin(async move {
                let mut c = db.conn().await?;
                let tx = c.transaction().await.map_err(|e| db.error(e))?;
                let written = match subscriptions {
                    None => {
                        tx.execute(
                            "DELETE FROM persistent_session WHERE device_id = $1",
                            &[&device_id],
                        )
                        .await
                    }
                    // Only for a device that exists (see the SQLite store).
                    Some(s) => {
                        tx.execute(
                            "INSERT INTO persistent_session (device_id, c2d, desired, methods)
                             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM device WHERE device_id = $1)
                             ON CONFLICT (device_id) DO UPDATE SET c2d = excluded.c2d, desired = excluded.desired, methods = excluded.methods",
                            &[&device_id, &s.c2d, &s.desired, &s.methods],
                        )
                        .await
                    }
                }
                .map_err(|e| db.error(e))?;
                if written > 0 {
                    let seq = db.next_etag(&tx).await?;
                    let detail = subscriptions.unwrap_or_default().detail();
                    db.record_change(&tx, ChangeKind::Subscriptions, &device_id, Some(&detail), seq)
                        .await?;
                }
                tx.commit().await.map_err(|e| db.error(e))?;
                Ok(())
            })
        })
    }
}
