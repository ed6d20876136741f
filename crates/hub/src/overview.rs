//! The whole hub at a glance, as the portal's overview page shows it: the CAs by status and the
//! ones expiring soon, the devices, how many are connected, the refusals of the last hour by
//! reason, and the telemetry rate.
//!
//! Why a part of the service layer and not of the portal: every figure comes from a part that
//! already keeps it (the store, the sessions, the metrics' recent history), and the adapter only
//! renders the result; no state of its own.

use crate::auth::{Principal, Right};
use crate::metrics::RefusalClass;
use crate::{Hub, HubError};

/// CAs that expire within this many seconds are listed as expiring soon (30 days, as the
/// portal's warning badge).
pub const EXPIRING_SOON_SECS: i64 = 30 * 86_400;

/// A CA that expires soon, or has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringCa {
    pub name: String,
    pub is_verified: bool,
    /// Unix seconds.
    pub not_after: i64,
}

/// See the module comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub cas_verified: u64,
    pub cas_unverified: u64,
    /// Soonest first.
    pub cas_expiring: Vec<ExpiringCa>,
    pub devices: u64,
    pub devices_enabled: u64,
    pub connected: u64,
    /// Every refusal class, with its count over the last hour.
    pub refusals_last_hour: Vec<(RefusalClass, u64)>,
    /// Device-to-cloud messages per second over the last minute.
    pub telemetry_per_second: f64,
    /// Device-to-cloud messages received since the hub started.
    pub telemetry_total: u64,
}

impl Hub {
    /// The overview (RegistryRead). Reads the store (the CA list and the device count).
    pub fn overview(&self, who: &Principal) -> Result<Overview, HubError> {
        self.authorize(who, Right::RegistryRead, "read the overview", "overview")?;
        let now = self.now();
        let cas = self.store().list_cas()?;
        let verified = cas.iter().filter(|c| c.is_verified).count() as u64;
        let mut cas_expiring: Vec<ExpiringCa> = cas
            .iter()
            .filter_map(|c| {
                let info = iothub_pki::CertInfo::from_der(&c.der).ok()?;
                (info.not_after - now <= EXPIRING_SOON_SECS).then(|| ExpiringCa {
                    name: c.name.clone(),
                    is_verified: c.is_verified,
                    not_after: info.not_after,
                })
            })
            .collect();
        cas_expiring.sort_by_key(|c| c.not_after);
        let (devices, devices_enabled) = self.store().count_devices()?;
        let (telemetry_per_second, telemetry_total) = self.metrics().telemetry_rate();
        Ok(Overview {
            cas_verified: verified,
            cas_unverified: cas.len() as u64 - verified,
            cas_expiring,
            devices,
            devices_enabled,
            connected: self.sessions().live_count() as u64,
            refusals_last_hour: self.metrics().refusals_last_hour(),
            telemetry_per_second,
            telemetry_total,
        })
    }
}

/// How an expiry reads on the page: "in 12 days", "today", "3 days ago".
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_rounds_towards_the_past() {
        assert_eq!(days_left(86_400 * 3, 0), 3);
        assert_eq!(days_left(86_400 * 3 - 1, 0), 2);
        assert_eq!(days_left(0, 1), -1);
    }
}
