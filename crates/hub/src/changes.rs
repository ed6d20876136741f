//! Following the changes other nodes make to a shared store, so that several hub processes on one
//! database act as one hub.
//!
//! Why: each node keeps in memory what the hot paths must not read from the store (the trust
//! snapshot, the device cache, the policies) and holds its own devices' sessions. A write made
//! through another node reaches this one only through the store: every write that matters to
//! other nodes records a change in the same transaction (`Store::changes_since`, in commit
//! order), and this part applies them: a CA change rebuilds trust (closing the sessions it no
//! longer admits), a device change forgets the cached record and re-checks the device's session, a
//! policy change reloads the policies, a desired-property patch or a queued cloud-to-device
//! message reaches the device's session if this node holds it.
//!
//! A node's own writes are not in its feed (the store leaves them out): the service layer applied
//! them when it made them. When the feed was pruned past where this node stood (a node away for
//! longer than the retention), everything kept in memory is refreshed, as at start.
//!
//! Owns: [`Follower`] — the last change applied, whose lock also makes one follow run at a time.
//! Asks of others: the store's feed, and the parts each change concerns.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use iothub_store::{Change, ChangeKind, Subscriptions};

use crate::peer_text::escaped;
use crate::sessions::SessionSignal;
use crate::{Hub, HubError};

/// The shortest time between two ticks, however many notifications arrive.
const MIN_TICK_GAP: Duration = Duration::from_millis(20);

/// At most this many changes are read per store round trip.
const FEED_PAGE: u32 = 1000;

/// See the module comment.
pub(crate) struct Follower {
    /// The sequence of the last change applied.
    applied: Mutex<u64>,
}

impl Follower {
    /// Starts after `last`, the store's last change when the hub loaded its state.
    pub(crate) fn new(last: u64) -> Follower {
        Follower {
            applied: Mutex::new(last),
        }
    }

    fn applied(&self) -> MutexGuard<'_, u64> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one page of the feed asks this node to do, each thing once.
#[derive(Default)]
struct Work {
    trust: bool,
    policies: bool,
    devices: Vec<String>,
    desired: Vec<(String, String)>,
    c2d: Vec<String>,
    /// (device, "NODE SINCE_MS") of sessions that began on other nodes.
    sessions: Vec<(String, String)>,
    /// Direct-method calls handed to this node (their ids).
    method_calls: Vec<i64>,
    /// Another node revoked a certificate: read the revocations again.
    revocations: bool,
    /// Another node turned a CA's auto-registration on or off.
    auto_registrations: bool,
    /// Persistent sessions another node changed: (device, subscriptions; None if forgotten).
    subscriptions: Vec<(String, Option<Subscriptions>)>,
}

impl Work {
    fn of(changes: &[Change]) -> Work {
        let mut work = Work::default();
        for change in changes {
            let key = change.key.clone();
            match change.kind {
                ChangeKind::Ca => work.trust = true,
                ChangeKind::Policy => work.policies = true,
                ChangeKind::Device if !work.devices.contains(&key) => work.devices.push(key),
                ChangeKind::Device => {}
                ChangeKind::Desired => {
                    if let Some(patch) = &change.detail {
                        work.desired.push((key, patch.clone()));
                    }
                }
                ChangeKind::C2d if !work.c2d.contains(&key) => work.c2d.push(key),
                ChangeKind::C2d => {}
                ChangeKind::Session => {
                    if let Some(detail) = &change.detail {
                        work.sessions.push((key, detail.clone()));
                    }
                }
                ChangeKind::Revocation => work.revocations = true,
                ChangeKind::AutoRegistration => work.auto_registrations = true,
                ChangeKind::Subscriptions => {
                    let subs = change
                        .detail
                        .as_deref()
                        .and_then(Subscriptions::from_detail);
                    // An empty set is a forgotten session: nothing to resume.
                    let subs = subs.filter(|s| *s != Subscriptions::default());
                    work.subscriptions.push((key, subs));
                }
                ChangeKind::MethodCall => {
                    if let Some(id) = change.detail.as_deref().and_then(|d| d.parse().ok()) {
                        work.method_calls.push(id);
                    }
                }
            }
        }
        work
    }
}

impl Hub {
    /// Applies the changes other nodes recorded since the last call; returns how many it applied.
    /// Blocking (reads the store). Safe to call at any time, from any thread: runs are serialised.
    pub fn follow_changes(&self) -> Result<usize, HubError> {
        let mut applied = self.follower().applied();
        let mut total = 0;
        loop {
            let feed = self.store().changes_since(*applied, FEED_PAGE)?;
            if !feed.complete {
                let last = self.store().last_change()?;
                tracing::warn!(
                    from = *applied,
                    to = last,
                    "changes were pruned before this node read them: refreshing everything"
                );
                self.refresh_everything()?;
                *applied = last;
                return Ok(total);
            }
            let Some(last) = feed.changes.last().map(|c| c.seq) else {
                return Ok(total);
            };
            self.apply(Work::of(&feed.changes))?;
            *applied = last;
            total += feed.changes.len();
            if feed.changes.len() < FEED_PAGE as usize {
                return Ok(total);
            }
        }
    }

    fn apply(&self, work: Work) -> Result<(), HubError> {
        if work.policies {
            self.policies().replace(self.store().list_policies()?)?;
        }
        if work.trust {
            self.rebuild_trust()?;
        }
        if work.revocations {
            self.reload_revocations()?;
        }
        if work.auto_registrations {
            self.reload_auto_registrations()?;
        }
        for id in &work.devices {
            self.device_cache().forget(id);
            if self.store().get_device(id)?.is_none() {
                self.sessions().forget_device(id);
            }
            self.revalidate_device_sessions(id);
        }
        for (id, patch) in work.desired {
            self.signal_device(&id, SessionSignal::DesiredPatch(patch));
        }
        for id in &work.c2d {
            self.wake_device(id);
        }
        for (id, detail) in &work.sessions {
            self.session_began_elsewhere(id, detail);
        }
        for (id, subs) in work.subscriptions {
            self.sessions().adopt_persistent(&id, subs);
        }
        for call_id in work.method_calls {
            self.deliver_handed_over(call_id)?;
        }
        Ok(())
    }

    /// One tick of a cluster node: its heartbeat and presence written, the other nodes' changes
    /// applied, handed-over method calls past their time dropped. Blocking.
    pub fn cluster_tick(&self) -> Result<usize, HubError> {
        self.write_presence()?;
        let applied = self.follow_changes()?;
        self.methods().sweep(std::time::Instant::now());
        Ok(applied)
    }

    /// Everything this node keeps in memory, read again: trust, policies, the device cache, the
    /// live sessions re-checked and woken for their queued messages. Desired patches made
    /// meanwhile are not replayed; a device reads its whole twin when it reconnects.
    fn refresh_everything(&self) -> Result<(), HubError> {
        self.policies().replace(self.store().list_policies()?)?;
        self.rebuild_trust()?;
        self.reload_revocations()?;
        self.reload_auto_registrations()?;
        self.device_cache().forget_all();
        self.sessions()
            .replace_persistent(self.store().list_persistent_sessions()?);
        for id in self.sessions().live_device_ids() {
            self.revalidate_device_sessions(&id);
            self.wake_device(&id);
        }
        Ok(())
    }

    /// Drops changes older than `change_retention_secs` from the feed, and handed-over method
    /// calls as old (every call is over within 300 s); returns how many changes went.
    pub fn prune_changes(&self) -> Result<u64, HubError> {
        let retention = self.config().change_retention_secs;
        let calls_before = crate::presence::now_ms() - retention * 1000;
        self.store().prune_method_calls(calls_before)?;
        Ok(self.store().prune_changes(self.now() - retention)?)
    }

    /// Runs [`Hub::cluster_tick`] on a thread of its own, for the life of the process (a node of
    /// a cluster; a hub alone on its store has no one to follow): when the store says another node
    /// wrote (PostgreSQL's notifications), and at least every `every`.
    pub fn start_following(&self, every: Duration) -> Result<(), HubError> {
        let hub = self.clone();
        std::thread::Builder::new()
            .name("change-follower".into())
            .spawn(move || loop {
                let started = std::time::Instant::now();
                if let Err(e) = hub.cluster_tick() {
                    tracing::warn!(error = %escaped(&e.to_string()), "could not follow the other nodes' changes; retrying");
                }
                // Until another node's notification (at once) or `every` (the fallback, for
                // stores without notifications and notifications lost); at most 50 ticks a second.
                let rest = every.saturating_sub(started.elapsed());
                hub.store().wait_for_changes(rest);
                std::thread::sleep(MIN_TICK_GAP.saturating_sub(started.elapsed()));
            })
            .map(|_| ())
            .map_err(|e| HubError::Internal(format!("cannot start the change follower: {e}")))
    }
}
