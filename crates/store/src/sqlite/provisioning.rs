//! The provisioning service's records on SQLite: enrollments (groups and individual ones) and
//! registrations, and the one transaction that registers a device (device, twin, registration,
//! change and audit entry together). Kept apart from `sqlite.rs` because these calls share
//! nothing with the registry's but the helpers they import.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{
    backend, check_delete, check_expect, current_etag, device_row, insert_audit, next_etag,
    record_change, SqliteStore, DEVICE_COLUMNS,
};
use crate::{
    ChangeKind, DeviceRecord, EnrollmentKind, EnrollmentRecord, Expect, NewAudit,
    RegistrationRecord, StoreError, TwinRecord,
};

const ENROLLMENT_COLUMNS: &str =
    "kind, name, ca_name, certificate, thumbprint, initial_twin, enabled, etag, created, updated";

const REGISTRATION_COLUMNS: &str =
    "registration_id, device_id, enrollment_kind, enrollment_name, operation_id, etag, created, updated";

fn enrollment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        kind: r.get(0)?,
        name: r.get(1)?,
        ca_name: r.get(2)?,
        certificate: r.get(3)?,
        thumbprint: r.get(4)?,
        initial_twin: r.get(5)?,
        enabled: r.get(6)?,
        etag: r.get::<_, i64>(7)? as u64,
        created: r.get(8)?,
        updated: r.get(9)?,
    })
}

fn registration_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RegistrationRecord> {
    Ok(RegistrationRecord {
        registration_id: r.get(0)?,
        device_id: r.get(1)?,
        enrollment_kind: r.get(2)?,
        enrollment_name: r.get(3)?,
        operation_id: r.get(4)?,
        etag: r.get::<_, i64>(5)? as u64,
        created: r.get(6)?,
        updated: r.get(7)?,
    })
}

impl SqliteStore {
    pub(super) fn write_enrollment_sql(
        &self,
        record: &EnrollmentRecord,
        expect: Expect,
        audit: &NewAudit,
    ) -> Result<EnrollmentRecord, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag FROM enrollment WHERE kind = ?1 AND name = ?2",
                params![record.kind, record.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        check_expect(&tx, expect, current, "SELECT COUNT(*) FROM enrollment")?;
        if let Some(thumbprint) = &record.thumbprint {
            let holder: Option<String> = tx
                .query_row(
                    "SELECT name FROM enrollment WHERE thumbprint = ?1 AND NOT (kind = ?2 AND name = ?3)",
                    params![thumbprint, record.kind, record.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(name) = holder {
                return Err(StoreError::DuplicateThumbprint { name });
            }
        }
        let etag = next_etag(&tx)?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO enrollment ({ENROLLMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                record.kind,
                record.name,
                record.ca_name,
                record.certificate,
                record.thumbprint,
                record.initial_twin,
                record.enabled,
                etag as i64,
                record.created,
                record.updated
            ],
        )
        .map_err(backend)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok(EnrollmentRecord {
            etag,
            ..record.clone()
        })
    }

    pub(super) fn get_enrollment_sql(
        &self,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE kind = ?1 AND name = ?2"),
            params![kind, name],
            enrollment_from_row,
        )
        .optional()
        .map_err(backend)
    }

    pub(super) fn list_enrollments_sql(
        &self,
        kind: EnrollmentKind,
    ) -> Result<Vec<EnrollmentRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE kind = ?1 ORDER BY name"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map([kind], enrollment_from_row)
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    pub(super) fn delete_enrollment_sql(
        &self,
        kind: EnrollmentKind,
        name: &str,
        etag: Option<u64>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT etag FROM enrollment WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        check_delete(current, etag)?;
        tx.execute(
            "DELETE FROM enrollment WHERE kind = ?1 AND name = ?2",
            params![kind, name],
        )
        .map_err(backend)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)
    }

    pub(super) fn provision_device_sql(
        &self,
        registration: &RegistrationRecord,
        device: &DeviceRecord,
        twin: Option<&TwinRecord>,
        device_limit: u64,
        audit: &NewAudit,
    ) -> Result<(RegistrationRecord, bool), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let existing = current_etag(&tx, "device", "device_id", &device.device_id)?;
        let created = existing.is_none();
        if created {
            check_expect(
                &tx,
                Expect::Absent {
                    limit: device_limit,
                },
                None,
                "SELECT COUNT(*) FROM device",
            )?;
            let etag = next_etag(&tx)? as i64;
            tx.execute(
                &format!("INSERT INTO device ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                device_row(device, &etag),
            )
            .map_err(backend)?;
            if let Some(t) = twin {
                tx.execute(
                    "INSERT OR REPLACE INTO twin (device_id, etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        t.device_id,
                        etag,
                        t.tags,
                        t.desired,
                        t.desired_metadata,
                        t.desired_version,
                        t.reported,
                        t.reported_metadata,
                        t.reported_version
                    ],
                )
                .map_err(backend)?;
            }
            record_change(
                &tx,
                &self.node,
                ChangeKind::Device,
                &device.device_id,
                etag as u64,
            )?;
        }
        let first: Option<i64> = tx
            .query_row(
                "SELECT created FROM registration WHERE registration_id = ?1",
                [&registration.registration_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let stored = RegistrationRecord {
            etag: next_etag(&tx)?,
            created: first.unwrap_or(registration.created),
            ..registration.clone()
        };
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO registration ({REGISTRATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                stored.registration_id,
                stored.device_id,
                stored.enrollment_kind,
                stored.enrollment_name,
                stored.operation_id,
                stored.etag as i64,
                stored.created,
                stored.updated
            ],
        )
        .map_err(backend)?;
        insert_audit(&tx, audit)?;
        tx.commit().map_err(backend)?;
        Ok((stored, created))
    }

    pub(super) fn get_registration_sql(
        &self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            &format!("SELECT {REGISTRATION_COLUMNS} FROM registration WHERE registration_id = ?1"),
            [registration_id],
            registration_from_row,
        )
        .optional()
        .map_err(backend)
    }

    pub(super) fn list_registrations_sql(&self) -> Result<Vec<RegistrationRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {REGISTRATION_COLUMNS} FROM registration ORDER BY registration_id"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map([], registration_from_row).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }
}
