//! Operational counters for `/metrics`.
//!
//! Owns: `Metrics` — plain atomics bumped on the hot paths (CONNECT, telemetry, C2D, trust
//! rebuilds). Why atomics and not the exporter's own types: a device message must never take a
//! lock to be counted, and the exporter's labelled families sit behind one. The Prometheus text
//! is built only when scraped (`Hub::render_metrics`), from a snapshot of these atomics plus what
//! other parts already know (live sessions, the CAs in the store).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{Hub, HubError};

/// The class of a refused CONNECT, the `reason` label of `iothub_connect_refusals_total`. Kept
/// coarse on purpose: a label's values must stay few, and the precise reason is in the log and
/// the device's `lastRefusal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    UnverifiedCa,
    UnknownDevice,
    CnMismatch,
    Expired,
    Disabled,
    BadCredentials,
    ForeignHost,
    Other,
}

impl RefusalClass {
    pub const ALL: [RefusalClass; 8] = [
        RefusalClass::UnverifiedCa,
        RefusalClass::UnknownDevice,
        RefusalClass::CnMismatch,
        RefusalClass::Expired,
        RefusalClass::Disabled,
        RefusalClass::BadCredentials,
        RefusalClass::ForeignHost,
        RefusalClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalClass::UnverifiedCa => "unverified_ca",
            RefusalClass::UnknownDevice => "unknown_device",
            RefusalClass::CnMismatch => "cn_mismatch",
            RefusalClass::Expired => "expired",
            RefusalClass::Disabled => "disabled",
            RefusalClass::BadCredentials => "bad_credentials",
            RefusalClass::ForeignHost => "foreign_host",
            RefusalClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The hub's counters. Relaxed ordering: each is an independent tally read only for display.
#[derive(Default)]
pub(crate) struct Metrics {
    connects_accepted: AtomicU64,
    connects_refused: AtomicU64,
    refusals: [AtomicU64; 8],
    telemetry_messages: AtomicU64,
    telemetry_bytes: AtomicU64,
    c2d_queued: AtomicU64,
    c2d_delivered: AtomicU64,
    trust_rebuilds: AtomicU64,
}

impl Metrics {
    pub(crate) fn connect_accepted(&self) {
        self.connects_accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn connect_refused(&self, class: RefusalClass) {
        self.connects_refused.fetch_add(1, Relaxed);
        self.refusals[class.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn telemetry(&self, body_bytes: usize) {
        self.telemetry_messages.fetch_add(1, Relaxed);
        self.telemetry_bytes.fetch_add(body_bytes as u64, Relaxed);
    }

    pub(crate) fn c2d_queued(&self) {
        self.c2d_queued.fetch_add(1, Relaxed);
    }

    pub(crate) fn c2d_delivered(&self) {
        self.c2d_delivered.fetch_add(1, Relaxed);
    }

    pub(crate) fn trust_rebuilt(&self) {
        self.trust_rebuilds.fetch_add(1, Relaxed);
    }
}

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn labelled_counter(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) {
    let family = Family::<Labels, Counter<u64>>::default();
    for (v, n) in values {
        family
            .get_or_create(&vec![(label.to_string(), v.to_string())])
            .inc_by(*n);
    }
    registry.register(name, help, family);
}

impl Hub {
    /// The trivial store read `/readyz` asks for: `Err` carries the reason.
    pub fn check_ready(&self) -> Result<(), String> {
        self.store()
            .last_message_offset()
            .map(|_| ())
            .map_err(|e| format!("the store cannot be read: {e}"))
    }

    /// The metrics in Prometheus' text format. Blocking: reads the CA list from the store (a
    /// scrape is rare; the hot paths only bump atomics).
    pub fn render_metrics(&self) -> Result<String, HubError> {
        let m = self.metrics();
        let mut registry = Registry::with_prefix("iothub");
        let connected = Gauge::<i64>::default();
        connected.set(self.sessions().live_count() as i64);
        registry.register(
            "connected_devices",
            "Devices with a live MQTT session",
            connected,
        );
        labelled_counter(
            &mut registry,
            "connects",
            "Judged device CONNECTs by result",
            "result",
            &[
                ("accepted", m.connects_accepted.load(Relaxed)),
                ("refused", m.connects_refused.load(Relaxed)),
            ],
        );
        let refusals: Vec<(&str, u64)> = RefusalClass::ALL
            .iter()
            .map(|c| (c.as_str(), m.refusals[c.index()].load(Relaxed)))
            .collect();
        labelled_counter(
            &mut registry,
            "connect_refusals",
            "Refused device CONNECTs by reason class",
            "reason",
            &refusals,
        );
        counter(
            &mut registry,
            "telemetry_messages",
            "Device-to-cloud messages received",
            m.telemetry_messages.load(Relaxed),
        );
        counter(
            &mut registry,
            "telemetry_bytes",
            "Bytes of device-to-cloud message bodies received",
            m.telemetry_bytes.load(Relaxed),
        );
        counter(
            &mut registry,
            "c2d_queued",
            "Cloud-to-device messages queued",
            m.c2d_queued.load(Relaxed),
        );
        counter(
            &mut registry,
            "c2d_delivered",
            "Cloud-to-device messages acknowledged by their device",
            m.c2d_delivered.load(Relaxed),
        );
        counter(
            &mut registry,
            "trust_rebuilds",
            "Rebuilds of the trust snapshot",
            m.trust_rebuilds.load(Relaxed),
        );
        let cas = self.store().list_ca_versions()?;
        let verified = cas.iter().filter(|(_, _, v)| *v).count() as i64;
        let cas_gauge = Family::<Labels, Gauge<i64>>::default();
        for (state, n) in [
            ("verified", verified),
            ("unverified", cas.len() as i64 - verified),
        ] {
            cas_gauge
                .get_or_create(&vec![("state".to_string(), state.to_string())])
                .set(n);
        }
        registry.register("cas", "Registered CA certificates by state", cas_gauge);
        let mut out = String::new();
        encode(&mut out, &registry).map_err(|e| HubError::Internal(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Refusal;
    use iothub_pki::chain::ChainError;

    #[test]
    fn refusals_fall_in_their_class() {
        let id = || "d".to_string();
        for (refusal, class) in [
            (Refusal::NotRegistered { device_id: id() }, "unknown_device"),
            (Refusal::Disabled { device_id: id() }, "disabled"),
            (
                Refusal::Chain(ChainError::Unverified {
                    ca_name: id(),
                    subject: id(),
                }),
                "unverified_ca",
            ),
            (
                Refusal::Chain(ChainError::CaExpired {
                    ca_name: id(),
                    subject: id(),
                    not_after: id(),
                }),
                "expired",
            ),
            (
                Refusal::LeafCnMismatch {
                    cn: id(),
                    client_id: id(),
                },
                "cn_mismatch",
            ),
            (
                Refusal::ForeignHost {
                    host: id(),
                    hub_names: vec![],
                    client_id: id(),
                },
                "foreign_host",
            ),
            (Refusal::PasswordNotText, "bad_credentials"),
            (Refusal::Internal(id()), "other"),
        ] {
            assert_eq!(refusal.class().as_str(), class, "{refusal}");
        }
    }

    #[test]
    fn the_class_array_matches_the_indices() {
        for (i, c) in RefusalClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}
