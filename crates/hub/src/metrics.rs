//! Operational counters for `/metrics`.
//!
//! Owns: `Metrics` — plain atomics bumped on the hot paths (CONNECT, TLS failures, telemetry and
//! its commit latency, C2D, methods, twins, trust rebuilds and their duration). Why atomics and
//! not the exporter's own types: a device message must never take a lock to be counted, and the
//! exporter's labelled families and histograms sit behind one. Store failures are counted where
//! they become a `HubError` (`error::STORE_ERRORS`). The Prometheus text
//! is built only when scraped (`Hub::render_metrics`), from a snapshot of these atomics plus what
//! other parts already know (live sessions, the CAs in the store).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::error::STORE_ERRORS;
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
    Revoked,
    Other,
}

impl RefusalClass {
    /// How many classes there are: the length of every per-class array.
    pub const COUNT: usize = 9;

    pub const ALL: [RefusalClass; RefusalClass::COUNT] = [
        RefusalClass::UnverifiedCa,
        RefusalClass::UnknownDevice,
        RefusalClass::CnMismatch,
        RefusalClass::Expired,
        RefusalClass::Disabled,
        RefusalClass::BadCredentials,
        RefusalClass::ForeignHost,
        RefusalClass::Revoked,
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
            RefusalClass::Revoked => "revoked",
            RefusalClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a direct-method call ended, the `result` label of `iothub_method_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodResult {
    /// The device answered (whatever status it answered with).
    Answered,
    /// The device did not answer within the call's timeout.
    TimedOut,
    /// The device had no session subscribed to methods (Azure's 404103).
    NotOnline,
}

impl MethodResult {
    const ALL: [MethodResult; 3] = [
        MethodResult::Answered,
        MethodResult::TimedOut,
        MethodResult::NotOnline,
    ];

    fn as_str(self) -> &'static str {
        match self {
            MethodResult::Answered => "answered",
            MethodResult::TimedOut => "timed_out",
            MethodResult::NotOnline => "not_online",
        }
    }
}

/// Which side of a twin an update wrote, the `side` label of `iothub_twin_updates_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TwinSide {
    /// Desired properties or tags, written by a back end.
    Desired,
    /// Reported properties, written by the device.
    Reported,
}

/// Upper bounds, in seconds, of the latency histograms' buckets (a last bucket is +Inf): from
/// half a millisecond (a group commit on a fast disk) to a few seconds (a stalled store).
const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram in atomics: observing takes no lock (the exporter's histogram takes one).
#[derive(Default)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// A histogram as read at one scrape, in the shape the exporter encodes.
#[derive(Debug)]
struct HistogramSnapshot {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone).
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Unix seconds by the system clock (the recent-history windows are wall-clock minutes).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Refused CONNECTs by class for each of the last 60 minutes: the overview's "refusals in the
/// last hour". A lock per refusal is fine: refusals are not the hot path, and the budget already
/// takes one.
#[derive(Default)]
struct RefusalHistory {
    /// (minute, counts by class), oldest first, at most 60.
    minutes: Mutex<VecDeque<(i64, [u64; RefusalClass::COUNT])>>,
}

impl RefusalHistory {
    fn record(&self, now: i64, class: RefusalClass) {
        let minute = now / 60;
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        if minutes.back().is_none_or(|(m, _)| *m != minute) {
            minutes.push_back((minute, [0; RefusalClass::COUNT]));
            while minutes.len() > 60 {
                minutes.pop_front();
            }
        }
        if let Some((_, counts)) = minutes.back_mut() {
            counts[class.index()] += 1;
        }
    }

    /// Counts by class over the hour up to `now`.
    fn last_hour(&self, now: i64) -> [u64; RefusalClass::COUNT] {
        let since = now / 60 - 59;
        let minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = [0; RefusalClass::COUNT];
        for (_, counts) in minutes.iter().filter(|(m, _)| *m >= since) {
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        total
    }
}

/// Device-to-cloud messages per second over the last 64 seconds, in atomics (a message takes no
/// lock): slot `second % 64` holds the count of that second, reset by the first message of a new
/// second. Approximate: a message racing that reset may go uncounted; good for a rate on a page.
struct RateRing {
    seconds: [AtomicI64; 64],
    counts: [AtomicU64; 64],
}

impl Default for RateRing {
    fn default() -> RateRing {
        RateRing {
            seconds: std::array::from_fn(|_| AtomicI64::new(-1)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RateRing {
    fn tick(&self, now: i64) {
        let i = now.rem_euclid(64) as usize;
        if self.seconds[i].swap(now, Relaxed) != now {
            self.counts[i].store(0, Relaxed);
        }
        self.counts[i].fetch_add(1, Relaxed);
    }

    /// Messages per second over the 60 whole seconds before `now`.
    fn per_second(&self, now: i64) -> f64 {
        let total: u64 = (1..=60)
            .map(|back| now - back)
            .filter(|s| self.seconds[s.rem_euclid(64) as usize].load(Relaxed) == *s)
            .map(|s| self.counts[s.rem_euclid(64) as usize].load(Relaxed))
            .sum();
        total as f64 / 60.0
    }
}

/// The hub's counters. Relaxed ordering: each is an independent tally read only for display.
#[derive(Default)]
pub(crate) struct Metrics {
    refusal_history: RefusalHistory,
    telemetry_rate: RateRing,
    connects_accepted: AtomicU64,
    connects_refused: AtomicU64,
    refusals: [AtomicU64; RefusalClass::COUNT],
    tls_handshake_failures: AtomicU64,
    telemetry_messages: AtomicU64,
    telemetry_bytes: AtomicU64,
    /// From a message's hand-off to the telemetry writer to its commit (what a QoS 1 PUBACK
    /// waits for).
    pub(crate) telemetry_commit: LatencyHistogram,
    c2d_queued: AtomicU64,
    c2d_delivered: AtomicU64,
    c2d_expired: AtomicU64,
    method_results: [AtomicU64; 3],
    twin_desired_updates: AtomicU64,
    twin_reported_updates: AtomicU64,
    trust_rebuilds: AtomicU64,
    trust_rebuild: LatencyHistogram,
}

impl Metrics {
    pub(crate) fn connect_accepted(&self) {
        self.connects_accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn connect_refused(&self, class: RefusalClass) {
        self.connects_refused.fetch_add(1, Relaxed);
        self.refusals[class.index()].fetch_add(1, Relaxed);
        self.refusal_history.record(unix_now(), class);
    }

    /// Refusals by class in the last hour, every class listed.
    pub(crate) fn refusals_last_hour(&self) -> Vec<(RefusalClass, u64)> {
        let counts = self.refusal_history.last_hour(unix_now());
        RefusalClass::ALL
            .iter()
            .map(|c| (*c, counts[c.index()]))
            .collect()
    }

    /// Device-to-cloud messages per second over the last minute, and in all.
    pub(crate) fn telemetry_rate(&self) -> (f64, u64) {
        (
            self.telemetry_rate.per_second(unix_now()),
            self.telemetry_messages.load(Relaxed),
        )
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn telemetry(&self, body_bytes: usize) {
        self.telemetry_rate.tick(unix_now());
        self.telemetry_messages.fetch_add(1, Relaxed);
        self.telemetry_bytes.fetch_add(body_bytes as u64, Relaxed);
    }

    pub(crate) fn c2d_queued(&self) {
        self.c2d_queued.fetch_add(1, Relaxed);
    }

    pub(crate) fn c2d_delivered(&self) {
        self.c2d_delivered.fetch_add(1, Relaxed);
    }

    pub(crate) fn c2d_expired(&self, n: u64) {
        self.c2d_expired.fetch_add(n, Relaxed);
    }

    pub(crate) fn method_call(&self, result: MethodResult) {
        self.method_results[result as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn twin_updated(&self, side: TwinSide) {
        match side {
            TwinSide::Desired => &self.twin_desired_updates,
            TwinSide::Reported => &self.twin_reported_updates,
        }
        .fetch_add(1, Relaxed);
    }

    pub(crate) fn trust_rebuilt(&self, took: Duration) {
        self.trust_rebuilds.fetch_add(1, Relaxed);
        self.trust_rebuild.observe(took);
    }

    /// A store failure that reached no `HubError` (a background write): counted with those that
    /// did, in [`STORE_ERRORS`].
    pub(crate) fn store_error(&self) {
        STORE_ERRORS.fetch_add(1, Relaxed);
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
            .check_readable()
            .map_err(|e| format!("the store cannot be read: {e}"))
    }

    /// The metrics in Prometheus' text format. Blocking: reads the CA list from the store (a
    /// scrape is rare; the hot paths only bump atomics).
    pub fn render_metrics(&self) -> Result<String, HubError> {
        let mut registry = Registry::with_prefix("iothub");
        self.register_connections(&mut registry);
        self.register_messages(&mut registry);
        self.register_trust(&mut registry)?;
        let mut out = String::new();
        encode(&mut out, &registry).map_err(|e| HubError::Internal(e.to_string()))?;
        Ok(out)
    }

    /// Sessions, CONNECT verdicts, TLS failures.
    fn register_connections(&self, registry: &mut Registry) {
        let m = self.metrics();
        let connected = Gauge::<i64>::default();
        connected.set(self.sessions().live_count() as i64);
        registry.register(
            "connected_devices",
            "Devices with a live MQTT session",
            connected,
        );
        labelled_counter(
            registry,
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
            registry,
            "connect_refusals",
            "Refused device CONNECTs by reason class",
            "reason",
            &refusals,
        );
        let (hits, misses, entries) = self.device_cache().stats();
        labelled_counter(
            registry,
            "device_cache_lookups",
            "CONNECTs whose device was looked up in memory, by whether it was there",
            "result",
            &[("hit", hits), ("miss", misses)],
        );
        let held = Gauge::<i64>::default();
        held.set(entries as i64);
        registry.register(
            "device_cache_entries",
            "Devices held in the in-memory device cache (at most --device-cache-entries)",
            held,
        );
        counter(
            registry,
            "tls_handshake_failures",
            "Device TLS handshakes that failed (bad or untrusted certificate, protocol error, timeout)",
            m.tls_handshake_failures.load(Relaxed),
        );
    }

    /// Telemetry, cloud-to-device messages, methods, twins, store errors.
    fn register_messages(&self, registry: &mut Registry) {
        let m = self.metrics();
        for (name, help, value) in [
            (
                "telemetry_messages",
                "Device-to-cloud messages received",
                &m.telemetry_messages,
            ),
            (
                "telemetry_bytes",
                "Bytes of device-to-cloud message bodies received",
                &m.telemetry_bytes,
            ),
            (
                "c2d_queued",
                "Cloud-to-device messages queued",
                &m.c2d_queued,
            ),
            (
                "c2d_delivered",
                "Cloud-to-device messages acknowledged by their device",
                &m.c2d_delivered,
            ),
            (
                "c2d_expired",
                "Cloud-to-device messages that expired undelivered",
                &m.c2d_expired,
            ),
            (
                "store_errors",
                "Store calls that failed for a storage reason (disk, database)",
                &STORE_ERRORS,
            ),
        ] {
            counter(registry, name, help, value.load(Relaxed));
        }
        registry.register_with_unit(
            "telemetry_commit",
            "From a device-to-cloud message's arrival to its durable commit (a QoS 1 PUBACK waits for it)",
            Unit::Seconds,
            m.telemetry_commit.snapshot(),
        );
        let methods: Vec<(&str, u64)> = MethodResult::ALL
            .iter()
            .map(|r| (r.as_str(), m.method_results[*r as usize].load(Relaxed)))
            .collect();
        labelled_counter(
            registry,
            "method_calls",
            "Direct-method calls by result",
            "result",
            &methods,
        );
        labelled_counter(
            registry,
            "twin_updates",
            "Twin updates by the side written",
            "side",
            &[
                ("desired", m.twin_desired_updates.load(Relaxed)),
                ("reported", m.twin_reported_updates.load(Relaxed)),
            ],
        );
    }

    /// Trust rebuilds, the CAs by state, the soonest CA expiry.
    fn register_trust(&self, registry: &mut Registry) -> Result<(), HubError> {
        let m = self.metrics();
        counter(
            registry,
            "trust_rebuilds",
            "Rebuilds of the trust snapshot",
            m.trust_rebuilds.load(Relaxed),
        );
        registry.register_with_unit(
            "trust_rebuild",
            "How long a trust rebuild took, from the registry read to the re-checked sessions",
            Unit::Seconds,
            m.trust_rebuild.snapshot(),
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
        // Absent while no CA is Verified: an alert on "below N days" then stays quiet.
        if let Some((_, not_after)) = self.trust().soonest_verified_expiry() {
            let left = Gauge::<i64>::default();
            left.set(not_after - self.now());
            registry.register_with_unit(
                "ca_expiry",
                "Seconds until the soonest Verified CA expires (negative: it has expired)",
                Unit::Seconds,
                left,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hour_of_refusals_forgets_older_minutes() {
        let h = RefusalHistory::default();
        let start = 1_000_000 * 60;
        h.record(start, RefusalClass::UnknownDevice);
        h.record(start + 30 * 60, RefusalClass::UnknownDevice);
        h.record(start + 30 * 60, RefusalClass::UnverifiedCa);
        let at = |t| h.last_hour(t);
        assert_eq!(at(start + 30 * 60)[RefusalClass::UnknownDevice.index()], 2);
        // 61 minutes on, the first has left the hour.
        let later = at(start + 61 * 60);
        assert_eq!(later[RefusalClass::UnknownDevice.index()], 1);
        assert_eq!(later[RefusalClass::UnverifiedCa.index()], 1);
        assert_eq!(at(start + 200 * 60), [0; RefusalClass::COUNT]);
    }

    #[test]
    fn the_rate_counts_whole_seconds_of_the_last_minute() {
        let r = RateRing::default();
        for s in 0..120 {
            for _ in 0..(s % 3) {
                r.tick(1000 + s);
            }
        }
        // Seconds 1059..=1118 before 1119 hold 60 counts of 0, 1 and 2 in turn: 60 in all.
        assert_eq!(r.per_second(1000 + 119), 1.0);
        // A second that wrapped around the ring is not counted twice.
        assert_eq!(r.per_second(1000 + 300), 0.0);
    }
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
