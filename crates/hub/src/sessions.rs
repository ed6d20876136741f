//! Device sessions: the registry of live sessions (one per device), recent refusals with their
//! exact reasons, the refusal budget, and closing sessions the hub no longer admits. The judgement
//! of a CONNECT is `admission`'s; this module registers what it admitted.
//!
//! The gateway owns sockets; this module owns decisions. A session is registered with a channel the
//! gateway listens on; the hub sends `Close(reason)` on it when trust or the device changes, and
//! `C2dAvailable` when a cloud-to-device message is queued.
//!
//! Owns: `Sessions` — the live sessions (one per device, with the chain each was admitted
//! with), the persistent-session subscriptions (CleanSession=0), the recent refusals, and the
//! refusal budget of the device listener (`refusal_budget`'s rules, under this part's lock).
//! Asks of others: the device cache's and trust's generations for a CONNECT's ticket
//! ([`Hub::connect_ticket`]); trust to re-validate chains and the store to re-read a device when
//! re-checking sessions; activity (`activity`) to record connects, disconnects and `lastRefusal`.
//! Devices and trust call [`Hub::revalidate_device_sessions`] and `revalidate_sessions_naming`
//! after their changes; c2d, twins and methods signal a device's live session through
//! `signal_device`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use iothub_pki::device_id::validate_device_id;
use iothub_pki::trust_index::NameKey;
use iothub_pki::CertInfo;
use iothub_store::{AuthType, DeviceActivity, DeviceStatus, Store, StoreError, Subscriptions};
use tokio::sync::mpsc;

use crate::auth::{Principal, Right};
use crate::devices::{record_auth, DeviceAuth};
use crate::peer_text::escaped;
use crate::refusal_budget::{self, RefusalBudget, RefusalVerdict, SweepEvent};
use crate::{Hub, HubError};

/// What a device presented at CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// The TLS client certificate chain, leaf first (empty when none was presented).
    pub chain: Vec<Vec<u8>>,
    pub remote: String,
}

/// How an admitted device proved its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Ca {
        ca_name: String,
        /// The issuer names of the presented chain: a change to a CA with one of these subjects
        /// re-checks the session (see `iothub_pki::trust_index::NameKey`).
        issuers: Arc<[NameKey]>,
        /// The leaf certificate's notAfter (Unix seconds).
        not_after: i64,
    },
    SelfSigned {
        thumbprint: String,
        /// The certificate's notAfter (Unix seconds).
        not_after: i64,
    },
    Sas,
}

impl AuthMethod {
    /// When the certificate the device connected with expires (None for a SAS token).
    pub fn certificate_not_after(&self) -> Option<i64> {
        match self {
            AuthMethod::Ca { not_after, .. } | AuthMethod::SelfSigned { not_after, .. } => {
                Some(*not_after)
            }
            AuthMethod::Sas => None,
        }
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::Ca { ca_name, .. } => {
                write!(f, "{} via '{ca_name}'", AuthType::CertificateAuthority)
            }
            AuthMethod::SelfSigned { thumbprint, .. } => {
                write!(f, "{} {thumbprint}", AuthType::SelfSigned)
            }
            AuthMethod::Sas => f.write_str(AuthType::Sas.as_str()),
        }
    }
}

/// A signal from the hub to a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSignal {
    /// Close the session, recording this reason.
    Close(String),
    /// Cloud-to-device messages are waiting.
    C2dAvailable,
    /// Desired properties changed: publish this patch (JSON with `$version`).
    DesiredPatch(String),
    /// A direct-method call to deliver.
    MethodRequest(MethodRequest),
}

/// The hub's side of a session's signal channel. Signals travel boxed: the channel allocates its
/// slots in blocks of 32 when it is made and every live session holds one, so a slot of one
/// pointer makes that block 256 bytes instead of 1 KB per connection (docs/decisions.md: memory
/// per idle connection); signals are rare.
#[derive(Debug, Clone)]
pub(crate) struct SignalSender(mpsc::UnboundedSender<Box<SessionSignal>>);

impl SignalSender {
    /// Sends `signal`; false when the session has ended.
    pub(crate) fn send(&self, signal: SessionSignal) -> bool {
        self.0.send(Box::new(signal)).is_ok()
    }
}

/// A live session's signals from the hub, in the order they were sent.
#[derive(Debug)]
pub struct SignalReceiver(mpsc::UnboundedReceiver<Box<SessionSignal>>);

impl SignalReceiver {
    /// The next signal; None once the hub has forgotten the session.
    pub async fn recv(&mut self) -> Option<SessionSignal> {
        self.0.recv().await.map(|signal| *signal)
    }

    /// The next signal if one is waiting.
    pub fn try_recv(&mut self) -> Result<SessionSignal, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|signal| *signal)
    }
}

fn signal_channel() -> (SignalSender, SignalReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SignalSender(tx), SignalReceiver(rx))
}

/// A direct-method call for a device's session: publish it on the method topic with `rid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRequest {
    pub rid: u64,
    pub name: String,
    pub payload: Vec<u8>,
}

/// An admitted device session, as the gateway holds it.
#[derive(Debug)]
pub struct Admission {
    pub device_id: String,
    pub session_id: u64,
    pub method: AuthMethod,
    pub signals: SignalReceiver,
    /// The subscriptions of the device's persistent session, if it resumed one (CONNACK
    /// session present = 1).
    pub resumed: Option<Subscriptions>,
    /// A device or the trust set changed between the CONNECT's ticket and the registration of
    /// this session, so that change may have looked for the session before it existed: the caller
    /// must run [`Hub::revalidate_device_sessions`] (it reads the store, so on a blocking thread).
    pub recheck: bool,
}

/// What [`Hub::connect_ticket`] returns: the generations of the device registry and of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectTicket {
    devices: u64,
    trust: u64,
}

struct SessionEntry {
    session_id: u64,
    method: AuthMethod,
    /// Shared, so re-checks can take it out of the lock without copying certificates.
    chain: Arc<Vec<Vec<u8>>>,
    remote: String,
    since: i64,
    tx: SignalSender,
    /// Subscribed to `$iothub/methods/POST/#`.
    methods: bool,
}

/// A refused connection attempt, as kept among the recent ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentRefusal {
    pub time: i64,
    pub client_id: String,
    pub remote: String,
    pub reason: String,
}

/// A live session, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    pub device_id: String,
    pub remote: String,
    pub since: i64,
    pub auth: String,
    /// The presented leaf certificate's notAfter (Unix seconds), for certificate sessions.
    pub certificate_expiry: Option<i64>,
}

/// The sessions part of the hub (see the module comment).
pub(crate) struct Sessions {
    table: Mutex<Table>,
    /// Held while a device's persistent session is copied from `table` to the store, so that the
    /// copies of concurrent changes reach the store in order and the last one written is the
    /// current state.
    persist: Mutex<()>,
    /// Refusals per device-listener address, and how often they are logged and recorded.
    budget: Mutex<RefusalBudget>,
    /// How many recent refusals are kept (`HubConfig::refusals_kept`).
    refusals_kept: usize,
}

/// What one lock guards: a CONNECT registers its session and reads its persistent
/// subscriptions in one step.
#[derive(Default)]
struct Table {
    live: HashMap<String, SessionEntry>,
    /// Subscriptions of devices using CleanSession=0: loaded from the store at start, and
    /// written through to it on every change (see [`Hub::persist_session`]).
    persistent: HashMap<String, Subscriptions>,
    refusals: VecDeque<RecentRefusal>,
}

/// The chain a session was admitted with, shared so re-checks take it out of the lock without
/// copying certificates.
type SharedChain = Arc<Vec<Vec<u8>>>;

/// A live session as a re-check takes it out of the lock: device id, how it was admitted, its
/// chain and its signal channel.
type Judged = (String, AuthMethod, SharedChain, SignalSender);

impl Sessions {
    /// `persistent`: the persistent sessions the store holds.
    pub(crate) fn new(
        refusals_kept: usize,
        mqtt_refusal_limit: u32,
        persistent: Vec<(String, Subscriptions)>,
    ) -> Sessions {
        Sessions {
            table: Mutex::new(Table {
                persistent: persistent.into_iter().collect(),
                ..Table::default()
            }),
            persist: Mutex::new(()),
            budget: Mutex::new(RefusalBudget::new(mqtt_refusal_limit)),
            refusals_kept,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn budget(&self) -> MutexGuard<'_, RefusalBudget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many devices have a live session (the `/metrics` gauge).
    pub(crate) fn live_count(&self) -> usize {
        self.table().live.len()
    }

    pub(crate) fn is_connected(&self, device_id: &str) -> bool {
        self.table().live.contains_key(device_id)
    }

    /// The devices with a live session here.
    pub(crate) fn live_device_ids(&self) -> Vec<String> {
        self.table().live.keys().cloned().collect()
    }

    /// Registers `entry` as `device_id`'s session under one lock: returns the persistent
    /// subscriptions it resumes (none with CleanSession=1, which forgets them), the session it
    /// replaced, if any, and whether a persistent session was forgotten (the store must learn).
    fn register(
        &self,
        device_id: &str,
        mut entry: SessionEntry,
        clean_session: bool,
    ) -> (Option<Subscriptions>, Option<SessionEntry>, bool) {
        let mut table = self.table();
        let (resumed, forgotten) = if clean_session {
            (None, table.persistent.remove(device_id).is_some())
        } else {
            (table.persistent.get(device_id).copied(), false)
        };
        entry.methods = resumed.is_some_and(|r| r.methods);
        let previous = table.live.insert(device_id.to_owned(), entry);
        (resumed, previous, forgotten)
    }

    /// See [`Hub::remember_subscriptions`]. Returns whether the persistent session changed.
    fn remember_subscriptions(
        &self,
        device_id: &str,
        session_id: u64,
        subs: Subscriptions,
        persistent: bool,
    ) -> bool {
        let mut table = self.table();
        match table.live.get_mut(device_id) {
            Some(e) if e.session_id == session_id => e.methods = subs.methods,
            _ => return false,
        }
        persistent && table.persistent.insert(device_id.to_string(), subs) != Some(subs)
    }

    /// Copies `device_id`'s persistent session, as it is now, to the store.
    fn persist(&self, store: &dyn Store, device_id: &str) -> Result<(), StoreError> {
        let _ordered = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table().persistent.get(device_id).copied();
        store.write_persistent_session(device_id, current)
    }

    /// Takes another node's record of `device_id`'s persistent session (None: it was forgotten),
    /// so that the device resumes it if it moves here.
    pub(crate) fn adopt_persistent(&self, device_id: &str, subs: Option<Subscriptions>) {
        let mut table = self.table();
        match subs {
            Some(s) => table.persistent.insert(device_id.to_string(), s),
            None => table.persistent.remove(device_id),
        };
    }

    /// Every persistent session as the store holds them (a node that missed changes).
    pub(crate) fn replace_persistent(&self, all: Vec<(String, Subscriptions)>) {
        self.table().persistent = all.into_iter().collect();
    }

    /// Forgets a deleted device's persistent session and any refusal reason held for it.
    pub(crate) fn forget_device(&self, device_id: &str) {
        self.table().persistent.remove(device_id);
        self.budget().forget_device(device_id);
    }

    /// Removes a session if it is still the registered one for its device.
    fn remove(&self, device_id: &str, session_id: u64) {
        let mut table = self.table();
        if table
            .live
            .get(device_id)
            .is_some_and(|e| e.session_id == session_id)
        {
            table.live.remove(device_id);
        }
    }

    fn admit_address(&self, ip: IpAddr, now: Instant) -> bool {
        self.budget().admit(ip, now)
    }

    fn refused(&self, ip: IpAddr, now: Instant) -> RefusalVerdict {
        self.budget().refused(ip, now)
    }

    fn sweep_budget(&self, now: Instant) -> Vec<SweepEvent> {
        self.budget().sweep(now)
    }

    /// Keeps a refusal among the recent ones (the oldest dropped past `refusals_kept`).
    fn keep_refusal(&self, refusal: RecentRefusal) {
        let mut table = self.table();
        table.refusals.push_back(refusal);
        while table.refusals.len() > self.refusals_kept {
            table.refusals.pop_front();
        }
    }

    /// Whether a device's `lastRefusal` is to be written now (see `refusal_budget`).
    fn record_refusal_now(&self, device_id: &str, reason: &str, time: i64, now: Instant) -> bool {
        self.budget().record_now(device_id, reason, time, now)
    }

    /// Live sessions (by device id) and recent refusals (newest first).
    fn listing(&self) -> (Vec<SessionInfo>, Vec<RecentRefusal>) {
        let table = self.table();
        let mut live: Vec<(SessionInfo, SharedChain)> = table
            .live
            .iter()
            .map(|(id, e)| {
                let info = SessionInfo {
                    device_id: id.clone(),
                    remote: e.remote.clone(),
                    since: e.since,
                    auth: e.method.to_string(),
                    certificate_expiry: None,
                };
                (info, e.chain.clone())
            })
            .collect();
        let refusals = table.refusals.iter().rev().cloned().collect();
        // The leaves are parsed out of the lock: CONNECTs must not wait for a listing.
        drop(table);
        live.sort_by(|a, b| a.0.device_id.cmp(&b.0.device_id));
        let live = live
            .into_iter()
            .map(|(mut info, chain)| {
                info.certificate_expiry = chain
                    .first()
                    .and_then(|leaf| CertInfo::from_der(leaf).ok())
                    .map(|leaf| leaf.not_after);
                info
            })
            .collect();
        (live, refusals)
    }

    /// The certificate sessions `affected` selects, taken out of the lock to be judged.
    fn certificate_sessions(&self, affected: impl Fn(&AuthMethod) -> bool) -> Vec<Judged> {
        self.table()
            .live
            .iter()
            .filter(|(_, e)| !matches!(e.method, AuthMethod::Sas) && affected(&e.method))
            .map(|(id, e)| (id.clone(), e.method.clone(), e.chain.clone(), e.tx.clone()))
            .collect()
    }

    /// A device's live session: its id, how it was admitted and its chain.
    fn of_device(&self, device_id: &str) -> Option<(u64, AuthMethod, SharedChain)> {
        self.table()
            .live
            .get(device_id)
            .map(|e| (e.session_id, e.method.clone(), e.chain.clone()))
    }

    /// Sends `signal` to `device_id`'s live session if it is still session `session_id`.
    pub(crate) fn signal_session(&self, device_id: &str, session_id: u64, signal: SessionSignal) {
        if let Some(e) = self
            .table()
            .live
            .get(device_id)
            .filter(|e| e.session_id == session_id)
        {
            let _ = e.tx.send(signal);
        }
    }

    /// Sends a signal to a device's live session, if it has one.
    pub(crate) fn signal(&self, device_id: &str, signal: SessionSignal) {
        if let Some(e) = self.table().live.get(device_id) {
            let _ = e.tx.send(signal);
        }
    }

    pub(crate) fn subscribed_to_methods(&self, device_id: &str) -> bool {
        self.table().live.get(device_id).is_some_and(|e| e.methods)
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn log_budget_ended(ip: IpAddr, dropped: u64) {
    tracing::info!(remote = %ip, dropped, "connections from {ip} are judged again: {dropped} were dropped unjudged in its minute over --mqtt-refusal-limit");
}

impl Hub {
    pub(crate) fn is_connected(&self, device_id: &str) -> bool {
        self.sessions().is_connected(device_id)
    }

    /// Take this before judging a CONNECT, and hand it to [`Hub::open_session`]. A device or
    /// trust change re-checks the live sessions it affects; one that lands while a CONNECT is
    /// being judged finds no session yet, and the ticket is how `open_session` knows to ask for
    /// that re-check.
    pub fn connect_ticket(&self) -> ConnectTicket {
        ConnectTicket {
            devices: self.device_cache().generation(),
            trust: self.trust_set().generation(),
        }
    }

    /// Registers an admitted session; an older session of the same device is closed. `ticket`
    /// is [`Hub::connect_ticket`] from before the CONNECT was judged.
    pub fn open_session(
        &self,
        req: &ConnectRequest,
        method: AuthMethod,
        clean_session: bool,
        ticket: ConnectTicket,
    ) -> Admission {
        let (tx, rx) = signal_channel();
        let session_id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let entry = SessionEntry {
            session_id,
            method: method.clone(),
            chain: Arc::new(req.chain.clone()),
            remote: req.remote.clone(),
            since: now,
            tx,
            methods: false,
        };
        let (resumed, previous, forgotten) =
            self.sessions()
                .register(&req.client_id, entry, clean_session);
        if self.config().cluster {
            self.presence()
                .connected(&self.config().node_id, &req.client_id, session_id);
        }
        if forgotten {
            // Rare (a device moving to CleanSession=1), so the store write stays off this path.
            let (hub, id) = (self.clone(), req.client_id.clone());
            tokio::task::spawn_blocking(move || hub.persist_session(&id));
        }
        if let Some(old) = previous {
            let _ = old.tx.send(SessionSignal::Close(format!(
                "a new connection of device '{}' from {} replaced this one",
                req.client_id, req.remote
            )));
        }
        self.record_activity(
            &req.client_id,
            DeviceActivity {
                last_activity: Some(now),
                last_connected: Some(now),
                certificate_not_after: method.certificate_not_after(),
                ..Default::default()
            },
        );
        tracing::info!(device = %escaped(&req.client_id), remote = %escaped(&req.remote), auth = %method, "device connected");
        // Read after the session is registered: a device or trust change either saw the
        // session, or moved its generation before this read.
        let recheck = self.connect_ticket() != ticket;
        Admission {
            device_id: req.client_id.clone(),
            session_id,
            method,
            signals: rx,
            resumed,
            recheck,
        }
    }

    /// Records a session's current subscriptions: for routing direct methods, and, when the
    /// device uses CleanSession=0, to restore them on its next connection.
    pub fn remember_subscriptions(
        &self,
        device_id: &str,
        session_id: u64,
        subs: Subscriptions,
        persistent: bool,
    ) {
        if self
            .sessions()
            .remember_subscriptions(device_id, session_id, subs, persistent)
        {
            self.persist_session(device_id);
        }
    }

    /// Writes a device's persistent session through to the store (it reads the store, so on a
    /// blocking thread). A failed write is logged: the session still works on this run, and the
    /// next change writes the whole state again.
    fn persist_session(&self, device_id: &str) {
        if let Err(e) = self.sessions().persist(self.store().as_ref(), device_id) {
            self.metrics().store_error();
            tracing::warn!(device = %escaped(device_id), error = %e, "could not record the persistent session");
        }
    }

    /// Removes a session (if it is still the registered one for its device).
    pub fn close_session(&self, device_id: &str, session_id: u64, reason: &str) {
        self.sessions().remove(device_id, session_id);
        if self.config().cluster {
            self.presence()
                .disconnected(&self.config().node_id, device_id, session_id);
        }
        self.record_activity(
            device_id,
            DeviceActivity {
                last_activity: Some(self.now()),
                ..Default::default()
            },
        );
        tracing::info!(device = %escaped(device_id), reason = %escaped(reason), "device disconnected");
    }

    /// Whether a device connection just accepted from `ip` is to be served: false when the
    /// address is over its refusal limit (`--mqtt-refusal-limit`), and the caller closes it
    /// without any TLS or MQTT work.
    pub fn admit_device_address(&self, ip: IpAddr) -> bool {
        self.sessions().admit_address(ip, Instant::now())
    }

    /// Records a refused connection attempt (before or at CONNECT) from `peer` and counts it
    /// against the address's refusal budget. Call it before answering the device, so that its
    /// next connection already meets the budget. At most one line per address every 10 s is
    /// logged (the others are counted in the next line or in a summary).
    pub fn refuse_connection(&self, client_id: &str, peer: SocketAddr, reason: &str) {
        let ip = peer.ip();
        let verdict = self.sessions().refused(ip, Instant::now());
        if let Some(dropped) = verdict.ended {
            log_budget_ended(ip, dropped);
        }
        let remote = peer.to_string();
        let (shown_id, reason) = self.keep_refusal(client_id, &remote, reason);
        match verdict.log {
            Some(0) => {
                tracing::warn!(client_id = %shown_id, %remote, %reason, "device refused");
            }
            Some(unlogged) => {
                tracing::warn!(client_id = %shown_id, %remote, %reason, "device refused (and {unlogged} earlier refusals from {ip} not logged one by one)");
            }
            None => {}
        }
        if verdict.tripped {
            let limit = self.config().mqtt_refusal_limit;
            tracing::warn!(remote = %ip, limit, "{limit} refused device connections from {ip} within a minute (--mqtt-refusal-limit): connections from {ip} are dropped unjudged until the minute ends");
        }
    }

    /// A device's TLS handshake failed or timed out: counted, then refused as any connection.
    pub fn tls_handshake_failed(&self, peer: SocketAddr, reason: &str) {
        self.metrics().tls_handshake_failed();
        self.refuse_connection("", peer, reason);
    }

    /// Logs what the refusal budget has to say (a minute over the limit ended, refusals not
    /// logged one by one) and writes held `lastRefusal` reasons. The gateway calls it every second.
    pub fn sweep_refusals(&self) {
        let events = self.sessions().sweep_budget(Instant::now());
        for event in events {
            match event {
                SweepEvent::Unlogged { ip, count } => tracing::warn!(
                    remote = %ip,
                    "... and {count} more device refusals from {ip} in the last {} s, not logged one by one",
                    refusal_budget::LOG_EVERY.as_secs()
                ),
                SweepEvent::Ended { ip, dropped } => log_budget_ended(ip, dropped),
                SweepEvent::Record {
                    device_id,
                    reason,
                    time,
                } => self.record_activity(
                    &device_id,
                    DeviceActivity {
                        last_refusal: Some(reason),
                        last_refusal_time: Some(time),
                        ..Default::default()
                    },
                ),
            }
        }
    }

    /// Records a connection ended for cause (or a refusal whose address is unknown). Never
    /// includes secrets. The client id and the reason (which may quote what the peer sent: a
    /// username, a certificate's names) are kept, logged and shown with control characters
    /// escaped (see `peer_text`).
    pub fn record_refusal(&self, client_id: &str, remote: &str, reason: &str) {
        let (shown_id, reason) = self.keep_refusal(client_id, remote, reason);
        let remote = escaped(remote);
        tracing::warn!(client_id = %shown_id, %remote, %reason, "device refused");
    }

    /// Keeps a refusal among the recent ones and as the device's `lastRefusal` (at most once a
    /// second per device, the newest reason held until then); returns the escaped client id and
    /// reason.
    fn keep_refusal(&self, client_id: &str, remote: &str, reason: &str) -> (String, String) {
        let now = self.now();
        let shown_id: String = client_id.chars().take(128).collect();
        let shown_id = escaped(&shown_id).into_owned();
        let remote = escaped(remote).into_owned();
        let reason = escaped(reason).into_owned();
        self.sessions().keep_refusal(RecentRefusal {
            time: now,
            client_id: shown_id.clone(),
            remote,
            reason: reason.clone(),
        });
        if validate_device_id(client_id).is_ok()
            && self
                .sessions()
                .record_refusal_now(client_id, &reason, now, Instant::now())
        {
            self.record_activity(
                client_id,
                DeviceActivity {
                    last_refusal: Some(reason.clone()),
                    last_refusal_time: Some(now),
                    ..Default::default()
                },
            );
        }
        (shown_id, reason)
    }

    /// Live sessions and recent refusals (newest first).
    pub fn connections(
        &self,
        who: &Principal,
    ) -> Result<(Vec<SessionInfo>, Vec<RecentRefusal>), HubError> {
        self.authorize(who, Right::RegistryRead, "list connections", "connections")?;
        Ok(self.sessions().listing())
    }

    /// Re-checks every certificate session against the current trust snapshot and the clock,
    /// and closes those no longer admitted (certificate or CA expired). Runs periodically.
    pub fn revalidate_sessions(&self) {
        self.revalidate_sessions_where(|_| true);
    }

    /// Re-checks the CA sessions a trust change can affect: those whose chain names one of
    /// `changed` as an issuer (a CA deleted, replaced, verified or no longer Verified). Every
    /// other session's verdict cannot have changed (see `iothub_pki::trust_index::NameKey`).
    pub(crate) fn revalidate_sessions_naming(&self, changed: &HashSet<NameKey>) {
        if changed.is_empty() {
            return;
        }
        self.revalidate_sessions_where(|method| match method {
            AuthMethod::Ca { issuers, .. } => issuers.iter().any(|k| changed.contains(k)),
            AuthMethod::SelfSigned { .. } | AuthMethod::Sas => false,
        });
    }

    /// The sessions are listed under the lock and judged outside it: chains not in the cache
    /// are validated in full, which for tens of thousands of sessions takes seconds, and
    /// CONNECTs and closes must not wait for that.
    fn revalidate_sessions_where(&self, affected: impl Fn(&AuthMethod) -> bool) {
        let now = self.now();
        let certificate_sessions = self.sessions().certificate_sessions(affected);
        for (id, method, chain, tx) in certificate_sessions {
            if let Some(reason) = self.certificate_verdict(&method, &chain, now) {
                // A session replaced meanwhile has its own signal channel: this reaches only the
                // session that was judged.
                let _ = tx.send(SessionSignal::Close(format!(
                    "device '{id}' is no longer admitted: {reason}"
                )));
            }
        }
    }

    /// Why a session admitted with `method` and `chain` is no longer admitted at `now`, if so.
    fn certificate_verdict(
        &self,
        method: &AuthMethod,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Option<String> {
        match method {
            AuthMethod::Ca { .. } => self
                .validate_device_chain(chain, now)
                .err()
                .map(|err| err.to_string()),
            AuthMethod::SelfSigned { .. } => match chain.first().map(|d| CertInfo::from_der(d)) {
                Some(Ok(info)) if info.is_valid_at(now) => None,
                _ => Some("the client certificate is no longer valid".to_string()),
            },
            AuthMethod::Sas => None,
        }
    }

    /// Re-checks the session of one device after its registry entry changed (or after a CONNECT
    /// judged while a device or trust changed, see [`Admission::recheck`]): its record, and its
    /// certificate against current trust. Reads the store.
    pub fn revalidate_device_sessions(&self, device_id: &str) {
        let Some((judged, method, chain)) = self.sessions().of_device(device_id) else {
            return;
        };
        let reason = match self.store().get_device(device_id) {
            Ok(None) => Some(format!("device '{device_id}' was deleted")),
            Ok(Some(r)) if r.status != DeviceStatus::Enabled => {
                Some(format!("device '{device_id}' was disabled"))
            }
            Ok(Some(r)) => {
                let same_kind = matches!(
                    (record_auth(&r), &method),
                    (
                        Some(DeviceAuth::CertificateAuthority),
                        AuthMethod::Ca { .. }
                    ) | (
                        Some(DeviceAuth::SelfSigned { .. }),
                        AuthMethod::SelfSigned { .. }
                    ) | (Some(DeviceAuth::Sas { .. }), AuthMethod::Sas)
                );
                (!same_kind).then(|| format!("the authentication of device '{device_id}' changed"))
            }
            Err(e) => Some(format!("the registry is unavailable: {e}")),
        }
        .or_else(|| {
            self.certificate_verdict(&method, &chain, self.now())
                .map(|reason| format!("device '{device_id}' is no longer admitted: {reason}"))
        });
        // Only the session judged: one that replaced it meanwhile was judged on its own
        // credentials, and a change after its CONNECT re-checks it through its ticket.
        if let Some(reason) = reason {
            self.sessions()
                .signal_session(device_id, judged, SessionSignal::Close(reason));
        }
    }

    /// Tells a device's live session that cloud-to-device messages wait.
    pub(crate) fn wake_device(&self, device_id: &str) {
        self.signal_device(device_id, SessionSignal::C2dAvailable);
    }

    /// Sends a signal to a device's live session, if it has one.
    pub(crate) fn signal_device(&self, device_id: &str, signal: SessionSignal) {
        self.sessions().signal(device_id, signal);
    }

    pub(crate) fn session_subscribed_to_methods(&self, device_id: &str) -> bool {
        self.sessions().subscribed_to_methods(device_id)
    }

    /// Marks activity of a connected device (throttled by the caller).
    pub fn touch_device(&self, device_id: &str) {
        self.record_activity(
            device_id,
            DeviceActivity {
                last_activity: Some(self.now()),
                ..Default::default()
            },
        );
    }
}
