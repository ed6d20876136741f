//! The longer transactions of the PostgreSQL store: policy changes, bulk device import, activity
//! batches, the telemetry append (offsets and per-partition sequence numbers from their counter
//! rows), the C2D queue, twins, presence, handed-over method calls and the feed's pruning.

use super::*;

impl Db {
    pub(super) async fn change_policy(
        &self,
        change: PolicyChange,
        audit: NewAudit,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        // The counter first: policy changes take turns, so the count below holds.
        let seq = self.next_etag(&tx).await?;
        let name = match &change {
            PolicyChange::Create { record, .. } => record.name.clone(),
            PolicyChange::SetRights { name, .. }
            | PolicyChange::SetKey { name, .. }
            | PolicyChange::Delete { name } => name.clone(),
        };
        let exists = self.read_policy(&tx, &name).await?.is_some();
        match &change {
            PolicyChange::Create { record, limit } => {
                if exists {
                    return Err(StoreError::AlreadyExists);
                }
                let count: i64 = tx
                    .query_one("SELECT COUNT(*) FROM policy", &[])
                    .await
                    .map_err(e)?
                    .get(0);
                if count as u64 >= *limit {
                    return Err(StoreError::LimitReached { limit: *limit });
                }
                tx.execute(
                    "INSERT INTO policy (name, primary_key, secondary_key, rights) VALUES ($1, $2, $3, $4)",
                    &[&record.name, &record.primary_key, &record.secondary_key, &record.rights.join(",")],
                )
                .await
                .map_err(e)?;
            }
            _ if !exists => return Err(StoreError::NotFound),
            PolicyChange::SetRights { name, rights } => {
                tx.execute(
                    "UPDATE policy SET rights = $2 WHERE name = $1",
                    &[name, &rights.join(",")],
                )
                .await
                .map_err(e)?;
            }
            PolicyChange::SetKey {
                name,
                secondary,
                key,
            } => {
                let sql = if *secondary {
                    "UPDATE policy SET secondary_key = $2 WHERE name = $1"
                } else {
                    "UPDATE policy SET primary_key = $2 WHERE name = $1"
                };
                tx.execute(sql, &[name, key]).await.map_err(e)?;
            }
            PolicyChange::Delete { name } => {
                tx.execute("DELETE FROM policy WHERE name = $1", &[name])
                    .await
                    .map_err(e)?;
            }
        }
        let after = self.read_policy(&tx, &name).await?;
        self.record_change(&tx, ChangeKind::Policy, &name, None, seq)
            .await?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)?;
        Ok(after)
    }

    /// Bulk import in one transaction: the existing ids read in one query, the count once, then
    /// each row checked and inserted (see `Store::create_devices`).
    pub(super) async fn create_devices(
        &self,
        rows: Vec<(DeviceRecord, NewAudit)>,
        limit: u64,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        // Serialises with every other write that counts devices.
        tx.execute("UPDATE etag_counter SET value = value WHERE id = 1", &[])
            .await
            .map_err(e)?;
        let ids: Vec<&str> = rows.iter().map(|(r, _)| r.device_id.as_str()).collect();
        let existing: std::collections::HashSet<String> = tx
            .query(
                "SELECT device_id FROM device WHERE device_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut count = tx
            .query_one("SELECT COUNT(*) FROM device", &[])
            .await
            .map_err(e)?
            .get::<_, i64>(0) as u64;
        let insert = tx.prepare(INSERT_DEVICE).await.map_err(e)?;
        let mut seen = std::collections::HashSet::new();
        let mut answers = Vec::with_capacity(rows.len());
        for (record, audit) in rows {
            if existing.contains(&record.device_id) || !seen.insert(record.device_id.clone()) {
                answers.push(Err(StoreError::AlreadyExists));
                continue;
            }
            if count >= limit {
                answers.push(Err(StoreError::LimitReached { limit }));
                continue;
            }
            let etag = self.next_etag(&tx).await?;
            let (etag_value, status, auth) = (
                etag as i64,
                record.status.as_str(),
                record.auth_type.as_str(),
            );
            tx.execute(
                &insert,
                &device_params(&record, &etag_value, &status, &auth),
            )
            .await
            .map_err(e)?;
            self.record_change(&tx, ChangeKind::Device, &record.device_id, None, etag)
                .await?;
            self.insert_audit(&tx, &audit).await?;
            count += 1;
            answers.push(Ok(DeviceRecord { etag, ..record }));
        }
        tx.commit().await.map_err(e)?;
        Ok(answers)
    }

    /// Merges activity facts (a None field is left as it is); `only_existing`: skip devices
    /// that no longer exist.
    pub(super) async fn update_activities(
        &self,
        updates: Vec<(String, DeviceActivity)>,
        only_existing: bool,
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let guard = if only_existing {
            "WHERE EXISTS (SELECT 1 FROM device WHERE device_id = $1)"
        } else {
            ""
        };
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO device_activity (device_id, last_activity, last_connected, last_refusal, last_refusal_time, certificate_not_after)
                 SELECT $1, $2, $3, $4, $5, $6 {guard}
                 ON CONFLICT (device_id) DO UPDATE SET
                   last_activity = COALESCE(excluded.last_activity, device_activity.last_activity),
                   last_connected = COALESCE(excluded.last_connected, device_activity.last_connected),
                   last_refusal = COALESCE(excluded.last_refusal, device_activity.last_refusal),
                   last_refusal_time = COALESCE(excluded.last_refusal_time, device_activity.last_refusal_time),
                   certificate_not_after = COALESCE(excluded.certificate_not_after, device_activity.certificate_not_after)"
            ))
            .await
            .map_err(e)?;
        for (id, u) in &updates {
            tx.execute(
                &stmt,
                &[
                    id,
                    &u.last_activity,
                    &u.last_connected,
                    &u.last_refusal,
                    &u.last_refusal_time,
                    &u.certificate_not_after,
                ],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// One batch of telemetry, one transaction: offsets from `message_counter` and sequence
    /// numbers from `partition_counter`, both locked until commit (see the module comment), and
    /// the rows in one multi-row INSERT.
    pub(super) async fn append_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<i64>, StoreError> {
        let e = |e| self.error(e);
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let n = messages.len() as i64;
        let last: i64 = tx
            .query_one(
                "UPDATE message_counter SET last = last + $1 WHERE id = 1 RETURNING last",
                &[&n],
            )
            .await
            .map_err(e)?
            .get(0);
        let first = last - n + 1;
        // Per partition: how many, then one counter update each (in partition order, so two
        // appenders lock the rows in the same order).
        let mut per_partition = std::collections::BTreeMap::<i32, i64>::new();
        for m in &messages {
            *per_partition.entry(m.partition as i32).or_default() += 1;
        }
        let mut next = std::collections::HashMap::<i32, i64>::new();
        for (partition, count) in &per_partition {
            let end: i64 = tx
                .query_one(
                    "INSERT INTO partition_counter (partition, last) VALUES ($1, $2)
                     ON CONFLICT (partition) DO UPDATE SET last = partition_counter.last + excluded.last
                     RETURNING last",
                    &[partition, count],
                )
                .await
                .map_err(e)?
                .get(0);
            next.insert(*partition, end - count + 1);
        }
        let offsets: Vec<i64> = (first..=last).collect();
        let mut sql = String::from(
            "INSERT INTO message (msg_offset, sequence, partition, device_id, module_id, enqueued, system_properties, properties, body) VALUES ",
        );
        let mut sequences = Vec::with_capacity(messages.len());
        let mut partitions = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let p = m.partition as i32;
            let seq = next.get_mut(&p).expect("counted above");
            sequences.push(*seq);
            partitions.push(p);
            *seq += 1;
            let b = i * 9;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9
            ));
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(messages.len() * 9);
        for (i, m) in messages.iter().enumerate() {
            params.extend_from_slice(&[
                &offsets[i],
                &sequences[i],
                &partitions[i],
                &m.device_id,
                &m.module_id,
                &m.enqueued,
                &m.system_properties,
                &m.properties,
                &m.body,
            ]);
        }
        tx.execute(&sql, &params).await.map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(offsets)
    }

    pub(super) async fn enqueue_c2d(
        &self,
        record: C2dRecord,
        max_pending: u32,
    ) -> Result<C2dRecord, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let seq = self.next_etag(&tx).await?;
        if !self.device_exists(&tx, &record.device_id).await? {
            return Err(StoreError::NotFound);
        }
        let pending: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM c2d WHERE device_id = $1 AND state = $3 AND expiry > $2",
                &[
                    &record.device_id,
                    &record.created,
                    &C2dState::Queued.as_str(),
                ],
            )
            .await
            .map_err(e)?
            .get(0);
        if pending as u64 >= max_pending as u64 {
            return Err(StoreError::LimitReached {
                limit: max_pending as u64,
            });
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO c2d (device_id, message_id, properties, body, created, expiry, state, delivered_at, delivery_count, ack)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, 0, $8) RETURNING id",
                &[&record.device_id, &record.message_id, &record.properties, &record.body,
                  &record.created, &record.expiry, &C2dState::Queued.as_str(), &record.ack.as_str()],
            )
            .await
            .map_err(e)?
            .get(0);
        self.record_change(&tx, ChangeKind::C2d, &record.device_id, None, seq)
            .await?;
        tx.commit().await.map_err(e)?;
        Ok(C2dRecord {
            id,
            state: C2dState::Queued,
            delivered_at: None,
            delivery_count: 0,
            ..record
        })
    }

    pub(super) async fn get_twin(&self, device_id: String) -> Result<TwinRecord, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(e)?;
        if !self.device_exists(&tx, &device_id).await? {
            return Err(StoreError::NotFound);
        }
        let row = tx
            .query_opt(
                "SELECT etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version
                 FROM twin WHERE device_id = $1",
                &[&device_id],
            )
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(match row {
            Some(r) => TwinRecord {
                device_id,
                etag: r.get::<_, i64>(0) as u64,
                tags: r.get(1),
                desired: r.get(2),
                desired_metadata: r.get(3),
                desired_version: r.get(4),
                reported: r.get(5),
                reported_metadata: r.get(6),
                reported_version: r.get(7),
            },
            None => TwinRecord::empty(&device_id),
        })
    }

    pub(super) async fn write_twin(
        &self,
        t: TwinRecord,
        expected: Option<u64>,
        desired_patch: Option<String>,
    ) -> Result<TwinRecord, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let etag = self.next_etag(&tx).await?;
        if !self.device_exists(&tx, &t.device_id).await? {
            return Err(StoreError::NotFound);
        }
        let current = self
            .current_etag(&tx, "twin", "device_id", &t.device_id)
            .await?
            .unwrap_or(0) as u64;
        if let Some(want) = expected {
            if want != current {
                return Err(StoreError::EtagMismatch { current });
            }
        }
        tx.execute(
            "INSERT INTO twin (device_id, etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (device_id) DO UPDATE SET etag = excluded.etag, tags = excluded.tags,
               desired = excluded.desired, desired_metadata = excluded.desired_metadata,
               desired_version = excluded.desired_version, reported = excluded.reported,
               reported_metadata = excluded.reported_metadata, reported_version = excluded.reported_version",
            &[&t.device_id, &(etag as i64), &t.tags, &t.desired, &t.desired_metadata,
              &t.desired_version, &t.reported, &t.reported_metadata, &t.reported_version],
        )
        .await
        .map_err(e)?;
        if let Some(patch) = &desired_patch {
            self.record_change(&tx, ChangeKind::Desired, &t.device_id, Some(patch), etag)
                .await?;
        }
        tx.commit().await.map_err(e)?;
        Ok(TwinRecord { etag, ..t })
    }

    /// A tick's presence updates in a few set-based statements whatever their number (a
    /// reconnect storm brings thousands per tick, and each statement costs the node CPU): the
    /// newest session of each device in the batch is upserted (a session only replaces an older
    /// one), the sessions that began are one change each, numbered from one reservation of the
    /// etag counter, and the ended sessions are deleted (an insert and a delete of the same
    /// short session in one batch leave no row, as in order).
    pub(super) async fn record_presence(
        &self,
        updates: Vec<PresenceUpdate>,
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let mut newest: std::collections::HashMap<&str, &PresenceUpdate> = Default::default();
        for u in updates.iter().filter(|u| u.connected) {
            let slot = newest.entry(u.device_id.as_str()).or_insert(u);
            if u.since_ms >= slot.since_ms {
                *slot = u;
            }
        }
        let columns = |rows: &mut dyn Iterator<Item = &PresenceUpdate>| {
            let (mut ids, mut nodes, mut since) = (Vec::new(), Vec::new(), Vec::new());
            for u in rows {
                ids.push(u.device_id.clone());
                nodes.push(u.node.clone());
                since.push(u.since_ms);
            }
            (ids, nodes, since)
        };
        let began = columns(&mut newest.values().copied());
        let ended = columns(&mut updates.iter().filter(|u| !u.connected));
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        if !began.0.is_empty() {
            let written = tx
                .query(
                    "INSERT INTO presence (device_id, node, since_ms)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
                     ON CONFLICT (device_id) DO UPDATE SET node = excluded.node, since_ms = excluded.since_ms
                     WHERE excluded.since_ms >= presence.since_ms
                     RETURNING device_id, node, since_ms",
                    &[&began.0, &began.1, &began.2],
                )
                .await
                .map_err(e)?;
            if !written.is_empty() {
                self.record_session_changes(&tx, &written).await?;
            }
        }
        if !ended.0.is_empty() {
            tx.execute(
                "DELETE FROM presence p USING UNNEST($1::text[], $2::text[], $3::bigint[]) AS d(device_id, node, since_ms)
                 WHERE p.device_id = d.device_id AND p.node = d.node AND p.since_ms = d.since_ms",
                &[&ended.0, &ended.1, &ended.2],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// One `Session` change per presence row written (device_id, node, since_ms), numbered from
    /// one reservation of the etag counter, and one notification.
    async fn record_session_changes(
        &self,
        tx: &Transaction<'_>,
        written: &[Row],
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let n = written.len() as i64;
        let last: i64 = tx
            .query_one(
                "UPDATE etag_counter SET value = value + $1 WHERE id = 1 RETURNING value",
                &[&n],
            )
            .await
            .map_err(e)?
            .get(0);
        let seqs: Vec<i64> = (last - n + 1..=last).collect();
        let keys: Vec<String> = written.iter().map(|r| r.get(0)).collect();
        let details: Vec<String> = written
            .iter()
            .map(|r| format!("{} {}", r.get::<_, String>(1), r.get::<_, i64>(2)))
            .collect();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT INTO change_log (seq, node, kind, key, detail, at)
             SELECT s, $2, $3, k, d, $4 FROM UNNEST($1::bigint[], $5::text[], $6::text[]) AS u(s, k, d)",
            &[&seqs, &self.node, &ChangeKind::Session.as_str(), &at, &keys, &details],
        )
        .await
        .map_err(e)?;
        tx.execute(
            &format!("SELECT pg_notify('{}', $1)", super::notify::CHANNEL),
            &[&self.node],
        )
        .await
        .map_err(e)?;
        Ok(())
    }

    /// Locks CA `name`'s row for the rest of `tx` (a write about a CA racing its deletion either
    /// lands before it or finds no CA): NotFound when there is none.
    pub(super) async fn lock_ca(&self, tx: &Transaction<'_>, name: &str) -> Result<(), StoreError> {
        let row = tx
            .query_opt(
                "SELECT 1 FROM ca_certificate WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(|e| self.error(e))?;
        row.map(|_| ()).ok_or(StoreError::NotFound)
    }

    /// See `Store::revoke`: the CA row is locked first, so a revocation racing the CA's
    /// deletion either lands before it (and is deleted with it) or finds no CA.
    pub(super) async fn revoke(
        &self,
        record: RevocationRecord,
        audit: NewAudit,
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let seq = self.next_etag(&tx).await?;
        self.lock_ca(&tx, &record.ca_name).await?;
        // An operator's revocation takes the place of the CRL's for the same serial (see the
        // SQLite store); a second one of the operator's is refused.
        let written = tx
            .execute(
                "INSERT INTO revocation (ca_name, serial, reason, revoked_at, from_crl) VALUES ($1, $2, $3, $4, FALSE)
                 ON CONFLICT (ca_name, serial) DO UPDATE SET reason = excluded.reason,
                    revoked_at = excluded.revoked_at, from_crl = FALSE
                 WHERE revocation.from_crl",
                &[&record.ca_name, &record.serial, &record.reason, &record.revoked_at],
            )
            .await
            .map_err(e)?;
        if written == 0 {
            return Err(StoreError::AlreadyExists);
        }
        self.record_change(&tx, ChangeKind::Revocation, &record.ca_name, None, seq)
            .await?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)
    }

    /// See `Store::replace_crl`: the CA row is locked first, as for a revocation.
    pub(super) async fn replace_crl(
        &self,
        crl: CrlRecord,
        entries: Vec<RevocationRecord>,
        audit: NewAudit,
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let seq = self.next_etag(&tx).await?;
        self.lock_ca(&tx, &crl.ca_name).await?;
        let held: Option<i64> = tx
            .query_opt(
                "SELECT this_update FROM crl WHERE ca_name = $1",
                &[&crl.ca_name],
            )
            .await
            .map_err(e)?
            .map(|r| r.get(0));
        if let Some(held) = held.filter(|held| *held >= crl.this_update) {
            return Err(StoreError::EtagMismatch {
                current: held as u64,
            });
        }
        tx.execute(
            "INSERT INTO crl (ca_name, this_update, next_update, number, uploaded_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (ca_name) DO UPDATE SET this_update = excluded.this_update,
                next_update = excluded.next_update, number = excluded.number, uploaded_at = excluded.uploaded_at",
            &[&crl.ca_name, &crl.this_update, &crl.next_update, &crl.number, &crl.uploaded_at],
        )
        .await
        .map_err(e)?;
        tx.execute(
            "DELETE FROM revocation WHERE ca_name = $1 AND from_crl",
            &[&crl.ca_name],
        )
        .await
        .map_err(e)?;
        let serials: Vec<&str> = entries.iter().map(|r| r.serial.as_str()).collect();
        let reasons: Vec<&str> = entries.iter().map(|r| r.reason.as_str()).collect();
        let times: Vec<i64> = entries.iter().map(|r| r.revoked_at).collect();
        tx.execute(
            "INSERT INTO revocation (ca_name, serial, reason, revoked_at, from_crl)
             SELECT $1, s, r, t, TRUE FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS u(s, r, t)
             ON CONFLICT DO NOTHING",
            &[&crl.ca_name, &serials, &reasons, &times],
        )
        .await
        .map_err(e)?;
        self.record_change(&tx, ChangeKind::Revocation, &crl.ca_name, None, seq)
            .await?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)
    }

    pub(super) async fn put_method_call(&self, call: MethodCallRecord) -> Result<i64, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let seq = self.next_etag(&tx).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO method_call (device_id, target_node, name, payload, created_ms, timeout_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&call.device_id, &call.target_node, &call.name, &call.payload, &call.created_ms, &call.timeout_ms],
            )
            .await
            .map_err(e)?
            .get(0);
        let detail = id.to_string();
        self.record_change(
            &tx,
            ChangeKind::MethodCall,
            &call.device_id,
            Some(&detail),
            seq,
        )
        .await?;
        tx.commit().await.map_err(e)?;
        Ok(id)
    }

    pub(super) async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let newest: Option<i64> = tx
            .query_one("SELECT MAX(seq) FROM change_log WHERE at < $1", &[&before])
            .await
            .map_err(e)?
            .get(0);
        let Some(newest) = newest else {
            return Ok(0);
        };
        let n = tx
            .execute("DELETE FROM change_log WHERE seq <= $1", &[&newest])
            .await
            .map_err(e)?;
        tx.execute(
            "UPDATE change_pruned SET seq = GREATEST(seq, $1) WHERE id = 1",
            &[&newest],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(n)
    }
}
