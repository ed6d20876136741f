//! The refusal budget of the device listener: how many refused connections one address may cause,
//! and how often refusals reach the log and a device's record.
//!
//! Why: anyone who can reach the MQTT port can make the hub judge a CONNECT, log a warning and
//! overwrite the named device's `lastRefusal`, hundreds of times a second. The HTTPS API limits
//! failed authentications per address (`--auth-failure-limit`); this is the same rule for
//! devices, decided here so the gateway only asks:
//!
//! - past `limit` refusals from one IP address within a minute (the window starts at its first
//!   refusal), that address's connections are closed as soon as they are accepted, with no TLS
//!   or MQTT work and no write, until the minute ends; one line is logged when it trips and one
//!   when it ends (with how many connections were dropped). `limit` 0 turns the drop off;
//! - at most one "device refused" line per address every [`LOG_EVERY`]; the others are counted
//!   and summed up in one line;
//! - a device's `lastRefusal` is written at most once per [`RECORD_EVERY`]; a newer reason
//!   arriving sooner is held and written when that time has passed, so the record still ends up
//!   with the newest reason.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses and as many held device reasons; past
//! that the oldest windows are dropped.
//!
//! Time is passed in (`now`), so the rules are tested without waiting. The sessions part holds the
//! one `RefusalBudget` under its lock; this module is the pure rules.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The window of the refusal limit.
pub const WINDOW: Duration = Duration::from_secs(60);
/// At most one "device refused" line per address in this time.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// A device's `lastRefusal` is written at most once in this time.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);
/// Addresses (and held device reasons) tracked at most.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct AddressState {
    window_start: Instant,
    refusals: u32,
    /// Connections closed unjudged since the address went over its limit.
    dropped: u64,
    tripped: bool,
    last_logged: Option<Instant>,
    /// Refusals not logged since `last_logged`.
    unlogged: u64,
}

impl AddressState {
    fn new(now: Instant) -> AddressState {
        AddressState {
            window_start: now,
            refusals: 0,
            dropped: 0,
            tripped: false,
            last_logged: None,
            unlogged: 0,
        }
    }

    fn window_over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.window_start) >= WINDOW
    }
}

#[derive(Debug)]
struct DeviceState {
    last_written: Instant,
    /// The newest reason not written yet, with its time (Unix seconds).
    held: Option<(String, i64)>,
}

/// What to do with a refusal just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalVerdict {
    /// Log it (the number is how many refusals from the address went unlogged before it).
    pub log: Option<u64>,
    /// This refusal used up the address's budget: from now on its connections are dropped.
    pub tripped: bool,
    /// The address's previous minute over the limit ended (not yet swept): this many
    /// connections were dropped in it.
    pub ended: Option<u64>,
}

/// Something the periodic sweep has to say or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepEvent {
    /// `count` refusals from `ip` were not logged one by one in the last `LOG_EVERY`.
    Unlogged { ip: IpAddr, count: u64 },
    /// The minute of an address over its limit ended; `dropped` connections were closed unjudged.
    Ended { ip: IpAddr, dropped: u64 },
    /// Write this held reason as the device's `lastRefusal`.
    Record {
        device_id: String,
        reason: String,
        time: i64,
    },
}

/// The bookkeeping (see the module documentation).
#[derive(Debug)]
pub struct RefusalBudget {
    limit: u32,
    addresses: HashMap<IpAddr, AddressState>,
    devices: HashMap<String, DeviceState>,
}

impl RefusalBudget {
    /// `limit` refusals per address per minute; 0: connections are never dropped (logging and
    /// record writes are still limited).
    pub fn new(limit: u32) -> RefusalBudget {
        RefusalBudget {
            limit,
            addresses: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    /// Whether a connection just accepted from `ip` is to be served (false: close it now).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.addresses.get_mut(&ip) {
            Some(state) if state.tripped && !state.window_over(now) => {
                state.dropped += 1;
                false
            }
            _ => true,
        }
    }

    /// Counts a refused connection from `ip`.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> RefusalVerdict {
        if !self.addresses.contains_key(&ip) && self.addresses.len() >= MAX_TRACKED {
            evict_oldest(&mut self.addresses, |s| s.window_start);
        }
        let state = self
            .addresses
            .entry(ip)
            .or_insert_with(|| AddressState::new(now));
        let mut ended = None;
        if state.window_over(now) {
            if state.tripped {
                ended = Some(state.dropped);
            }
            state.window_start = now;
            state.refusals = 0;
            state.tripped = false;
            state.dropped = 0;
        }
        state.refusals = state.refusals.saturating_add(1);
        let tripped = self.limit > 0 && !state.tripped && state.refusals >= self.limit;
        if tripped {
            state.tripped = true;
        }
        let log = match state.last_logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => {
                state.unlogged += 1;
                None
            }
            _ => {
                state.last_logged = Some(now);
                Some(std::mem::take(&mut state.unlogged))
            }
        };
        RefusalVerdict {
            log,
            tripped,
            ended,
        }
    }

    /// Whether `reason` is to be written as the device's `lastRefusal` now; if not, it is held
    /// (replacing an older held one) and handed back by [`RefusalBudget::sweep`] once
    /// [`RECORD_EVERY`] has passed.
    pub fn record_now(&mut self, device_id: &str, reason: &str, time: i64, now: Instant) -> bool {
        match self.devices.get_mut(device_id) {
            Some(state) if now.saturating_duration_since(state.last_written) < RECORD_EVERY => {
                state.held = Some((reason.to_string(), time));
                false
            }
            Some(state) => {
                state.last_written = now;
                state.held = None;
                true
            }
            None => {
                if self.devices.len() >= MAX_TRACKED {
                    evict_oldest(&mut self.devices, |s| s.last_written);
                }
                self.devices.insert(
                    device_id.to_string(),
                    DeviceState {
                        last_written: now,
                        held: None,
                    },
                );
                true
            }
        }
    }

    /// Forgets what is held for a device (it was deleted).
    pub fn forget_device(&mut self, device_id: &str) {
        self.devices.remove(device_id);
    }

    /// Ends the windows that are over, sums up unlogged refusals, hands back held device
    /// reasons whose time has come, and forgets what no longer matters. Call it every second or so.
    pub fn sweep(&mut self, now: Instant) -> Vec<SweepEvent> {
        let mut events = Vec::new();
        self.addresses.retain(|ip, state| {
            let log_due = state
                .last_logged
                .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
            if state.unlogged > 0 && log_due {
                events.push(SweepEvent::Unlogged {
                    ip: *ip,
                    count: std::mem::take(&mut state.unlogged),
                });
            }
            if !state.window_over(now) {
                return true;
            }
            if state.tripped {
                events.push(SweepEvent::Ended {
                    ip: *ip,
                    dropped: std::mem::take(&mut state.dropped),
                });
                state.tripped = false;
            }
            // Kept while its refusals may still be logged one by one too often.
            !log_due
        });
        self.devices.retain(|id, state| {
            if now.saturating_duration_since(state.last_written) < RECORD_EVERY {
                return true;
            }
            if let Some((reason, time)) = state.held.take() {
                state.last_written = now;
                events.push(SweepEvent::Record {
                    device_id: id.clone(),
                    reason,
                    time,
                });
                return true;
            }
            false
        });
        events
    }

    /// Addresses tracked (for tests of the bound).
    pub fn tracked(&self) -> usize {
        self.addresses.len()
    }
}

/// Drops the oldest tenth of `map` (by `age`), so that a full map is not scanned at every insert.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    age: impl Fn(&V) -> Instant,
) {
    let mut ages: Vec<Instant> = map.values().map(&age).collect();
    let n = (ages.len() / 10).max(1).min(ages.len());
    if n == 0 {
        return;
    }
    let (_, cutoff, _) = ages.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    map.retain(|_, v| {
        if removed < n && age(v) <= cutoff {
            removed += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_over_its_limit_is_dropped_until_its_minute_ends() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(3);
        for i in 0..2 {
            assert!(b.admit(ip(1), t0));
            assert!(!b.refused(ip(1), t0 + Duration::from_secs(i)).tripped);
        }
        assert!(b.admit(ip(1), t0));
        assert!(b.refused(ip(1), t0 + Duration::from_secs(2)).tripped);
        // Dropped now; another address is not.
        for _ in 0..4 {
            assert!(!b.admit(ip(1), t0 + Duration::from_secs(30)));
        }
        assert!(b.admit(ip(2), t0 + Duration::from_secs(30)));
        // Two of the three refusals were not logged one by one.
        assert_eq!(
            b.sweep(t0 + Duration::from_secs(59)),
            [SweepEvent::Unlogged {
                ip: ip(1),
                count: 2
            }]
        );
        // The minute from the first refusal ends: one event, with the count.
        let events = b.sweep(t0 + WINDOW);
        assert_eq!(
            events,
            [SweepEvent::Ended {
                ip: ip(1),
                dropped: 4
            }]
        );
        assert!(b.admit(ip(1), t0 + WINDOW));
        assert!(b.sweep(t0 + WINDOW + Duration::from_secs(1)).is_empty());
        assert_eq!(b.tracked(), 0);
        // A fresh budget.
        assert!(!b.refused(ip(1), t0 + WINDOW * 2).tripped);
    }

    #[test]
    fn the_window_restarts_after_a_quiet_minute() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(2);
        assert!(!b.refused(ip(1), t0).tripped);
        assert!(!b.refused(ip(1), t0 + WINDOW).tripped);
        assert!(
            b.refused(ip(1), t0 + WINDOW + Duration::from_secs(1))
                .tripped
        );
        // Trips once per window.
        assert!(
            !b.refused(ip(1), t0 + WINDOW + Duration::from_secs(2))
                .tripped
        );
        assert!(!b.admit(ip(1), t0 + WINDOW + Duration::from_secs(3)));
        // A refusal after the minute (before any sweep) ends it, with the count, and starts anew.
        let later = b.refused(ip(1), t0 + WINDOW * 2);
        assert_eq!((later.tripped, later.ended), (false, Some(1)));
        assert!(b.admit(ip(1), t0 + WINDOW * 2));
        let events = b.sweep(t0 + WINDOW * 2);
        assert!(
            !events.iter().any(|e| matches!(e, SweepEvent::Ended { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn limit_zero_never_drops() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(0);
        for _ in 0..1000 {
            assert!(!b.refused(ip(1), t0).tripped);
        }
        assert!(b.admit(ip(1), t0));
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_a_count() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(0);
        assert_eq!(b.refused(ip(1), t0).log, Some(0));
        for i in 1..=57 {
            assert_eq!(b.refused(ip(1), t0 + Duration::from_millis(i)).log, None);
        }
        // Another address has its own period.
        assert_eq!(b.refused(ip(2), t0).log, Some(0));
        // The sweep sums them up once the period is over...
        assert!(b.sweep(t0 + Duration::from_secs(9)).is_empty());
        let events = b.sweep(t0 + LOG_EVERY);
        assert_eq!(
            events,
            [SweepEvent::Unlogged {
                ip: ip(1),
                count: 57
            }]
        );
        // ... or the next logged refusal carries the count.
        let t1 = t0 + LOG_EVERY * 2;
        assert_eq!(b.refused(ip(3), t1).log, Some(0));
        assert_eq!(b.refused(ip(3), t1).log, None);
        assert_eq!(b.refused(ip(3), t1 + LOG_EVERY).log, Some(1));
    }

    #[test]
    fn a_device_record_is_written_at_most_once_a_second_ending_with_the_newest_reason() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(0);
        let mut writes = 0;
        let mut last = String::new();
        for i in 0..400u64 {
            let now = t0 + Duration::from_millis(i * 44); // 400 refusals in 17.6 s
            let reason = format!("reason {i}");
            if b.record_now("dev1", &reason, i as i64, now) {
                writes += 1;
                last = reason;
            }
            if i % 23 == 0 {
                for e in b.sweep(now) {
                    if let SweepEvent::Record { reason, .. } = e {
                        writes += 1;
                        last = reason;
                    }
                }
            }
        }
        for e in b.sweep(t0 + Duration::from_secs(30)) {
            if let SweepEvent::Record { reason, .. } = e {
                writes += 1;
                last = reason;
            }
        }
        assert!(writes <= 19, "{writes} writes in 17.6 s");
        assert_eq!(last, "reason 399");
        // Nothing is kept once written.
        assert!(b.sweep(t0 + Duration::from_secs(40)).is_empty());
        assert!(b.devices.is_empty());
        // A deleted device's held reason is dropped.
        let t1 = t0 + Duration::from_secs(50);
        assert!(b.record_now("dev1", "a", 1, t1));
        assert!(!b.record_now("dev1", "b", 1, t1));
        b.forget_device("dev1");
        assert!(b.sweep(t1 + RECORD_EVERY).is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut b = RefusalBudget::new(5);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let now = t0 + Duration::from_micros(u64::from(i));
            b.refused(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(b.tracked() <= MAX_TRACKED, "{}", b.tracked());
        // The newest are kept.
        let newest = IpAddr::from((MAX_TRACKED as u32 + 9).to_be_bytes());
        assert!(b.addresses.contains_key(&newest));
        assert!(!b.addresses.contains_key(&IpAddr::from(0u32.to_be_bytes())));
    }
}
