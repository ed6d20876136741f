//! The provisioning service's records on PostgreSQL: enrollments and registrations, and the one
//! transaction that registers a device. The same semantics as the SQLite store's
//! (`sqlite/provisioning.rs`), checked by the conformance tests against both.

use super::*;
use crate::{EnrollmentKind, EnrollmentRecord, RegistrationRecord};

const ENROLLMENT_COLUMNS: &str =
    "kind, name, ca_name, certificate, thumbprint, initial_twin, enabled, etag, created, updated";

const REGISTRATION_COLUMNS: &str =
    "registration_id, device_id, enrollment_kind, enrollment_name, operation_id, etag, created, updated";

fn enrollment_from_row(r: &Row) -> Result<EnrollmentRecord, StoreError> {
    Ok(EnrollmentRecord {
        kind: text_value(r.get(0), EnrollmentKind::parse, "enrollment kind")?,
        name: r.get(1),
        ca_name: r.get(2),
        certificate: r.get(3),
        thumbprint: r.get(4),
        initial_twin: r.get(5),
        enabled: r.get(6),
        etag: r.get::<_, i64>(7) as u64,
        created: r.get(8),
        updated: r.get(9),
    })
}

fn registration_from_row(r: &Row) -> Result<RegistrationRecord, StoreError> {
    Ok(RegistrationRecord {
        registration_id: r.get(0),
        device_id: r.get(1),
        enrollment_kind: text_value(r.get(2), EnrollmentKind::parse, "enrollment kind")?,
        enrollment_name: r.get(3),
        operation_id: r.get(4),
        etag: r.get::<_, i64>(5) as u64,
        created: r.get(6),
        updated: r.get(7),
    })
}

impl Db {
    /// The etag of an enrollment (locked for the rest of the transaction), if it exists.
    async fn enrollment_etag(
        &self,
        tx: &Transaction<'_>,
        kind: EnrollmentKind,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = tx
            .query_opt(
                "SELECT etag FROM enrollment WHERE kind = $1 AND name = $2 FOR UPDATE",
                &[&kind.as_str(), &name],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn write_enrollment(
        &self,
        record: EnrollmentRecord,
        expect: Expect,
        audit: NewAudit,
    ) -> Result<EnrollmentRecord, StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        let etag = self.next_etag(&tx).await?;
        let current = self.enrollment_etag(&tx, record.kind, &record.name).await?;
        self.check_expect(&tx, expect, current, "enrollment")
            .await?;
        if let Some(thumbprint) = &record.thumbprint {
            let holder = tx
                .query_opt(
                    "SELECT name FROM enrollment WHERE thumbprint = $1 AND NOT (kind = $2 AND name = $3)",
                    &[thumbprint, &record.kind.as_str(), &record.name],
                )
                .await
                .map_err(e)?;
            if let Some(row) = holder {
                return Err(StoreError::DuplicateThumbprint { name: row.get(0) });
            }
        }
        let etag_value = etag as i64;
        tx.execute(
            &format!(
                "INSERT INTO enrollment ({ENROLLMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (kind, name) DO UPDATE SET ca_name = excluded.ca_name,
                    certificate = excluded.certificate, thumbprint = excluded.thumbprint,
                    initial_twin = excluded.initial_twin, enabled = excluded.enabled,
                    etag = excluded.etag, created = excluded.created, updated = excluded.updated"
            ),
            &[
                &record.kind.as_str(),
                &record.name,
                &record.ca_name,
                &record.certificate,
                &record.thumbprint,
                &record.initial_twin,
                &record.enabled,
                &etag_value,
                &record.created,
                &record.updated,
            ],
        )
        .await
        .map_err(e)?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)?;
        Ok(EnrollmentRecord { etag, ..record })
    }

    pub(super) async fn get_enrollment(
        &self,
        kind: EnrollmentKind,
        name: String,
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE kind = $1 AND name = $2"
                ),
                &[&kind.as_str(), &name],
            )
            .await
            .map_err(|e| self.error(e))?;
        row.map(|r| enrollment_from_row(&r)).transpose()
    }

    pub(super) async fn list_enrollments(
        &self,
        kind: EnrollmentKind,
    ) -> Result<Vec<EnrollmentRecord>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE kind = $1 ORDER BY name"
                ),
                &[&kind.as_str()],
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(enrollment_from_row).collect()
    }

    pub(super) async fn delete_enrollment(
        &self,
        kind: EnrollmentKind,
        name: String,
        etag: Option<u64>,
        audit: NewAudit,
    ) -> Result<(), StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        self.next_etag(&tx).await?;
        let current = self.enrollment_etag(&tx, kind, &name).await?;
        check_delete(current, etag)?;
        tx.execute(
            "DELETE FROM enrollment WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        )
        .await
        .map_err(e)?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)
    }

    pub(super) async fn provision_device(
        &self,
        registration: RegistrationRecord,
        device: DeviceRecord,
        twin: Option<TwinRecord>,
        device_limit: u64,
        audit: NewAudit,
    ) -> Result<(RegistrationRecord, bool), StoreError> {
        let e = |e| self.error(e);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(e)?;
        // The etag counter row, locked until commit, serialises this with every other write:
        // two nodes registering the same device take turns.
        let etag = self.next_etag(&tx).await?;
        let created = !self.device_exists(&tx, &device.device_id).await?;
        if created {
            let limit = Expect::Absent {
                limit: device_limit,
            };
            self.check_expect(&tx, limit, None, "device").await?;
            let (etag_value, status, auth) = (
                etag as i64,
                device.status.as_str(),
                device.auth_type.as_str(),
            );
            tx.execute(
                INSERT_DEVICE,
                &device_params(&device, &etag_value, &status, &auth),
            )
            .await
            .map_err(e)?;
            if let Some(t) = &twin {
                tx.execute(
                    "INSERT INTO twin (device_id, etag, tags, desired, desired_metadata, desired_version, reported, reported_metadata, reported_version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &t.device_id,
                        &etag_value,
                        &t.tags,
                        &t.desired,
                        &t.desired_metadata,
                        &t.desired_version,
                        &t.reported,
                        &t.reported_metadata,
                        &t.reported_version,
                    ],
                )
                .await
                .map_err(e)?;
            }
            self.record_change(&tx, ChangeKind::Device, &device.device_id, None, etag)
                .await?;
        }
        let first = tx
            .query_opt(
                "SELECT created FROM registration WHERE registration_id = $1",
                &[&registration.registration_id],
            )
            .await
            .map_err(e)?;
        let stored = RegistrationRecord {
            etag,
            created: first.map_or(registration.created, |r| r.get(0)),
            ..registration
        };
        let etag_value = etag as i64;
        tx.execute(
            &format!(
                "INSERT INTO registration ({REGISTRATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (registration_id) DO UPDATE SET device_id = excluded.device_id,
                    enrollment_kind = excluded.enrollment_kind,
                    enrollment_name = excluded.enrollment_name,
                    operation_id = excluded.operation_id, etag = excluded.etag,
                    updated = excluded.updated"
            ),
            &[
                &stored.registration_id,
                &stored.device_id,
                &stored.enrollment_kind.as_str(),
                &stored.enrollment_name,
                &stored.operation_id,
                &etag_value,
                &stored.created,
                &stored.updated,
            ],
        )
        .await
        .map_err(e)?;
        self.insert_audit(&tx, &audit).await?;
        tx.commit().await.map_err(e)?;
        Ok((stored, created))
    }

    pub(super) async fn get_registration(
        &self,
        registration_id: String,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {REGISTRATION_COLUMNS} FROM registration WHERE registration_id = $1"
                ),
                &[&registration_id],
            )
            .await
            .map_err(|e| self.error(e))?;
        row.map(|r| registration_from_row(&r)).transpose()
    }

    pub(super) async fn list_registrations(&self) -> Result<Vec<RegistrationRecord>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {REGISTRATION_COLUMNS} FROM registration ORDER BY registration_id"
                ),
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(registration_from_row).collect()
    }
}
