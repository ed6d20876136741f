//! Live trust: the set of registered CAs as an immutable in-memory snapshot, swapped atomically when
//! a CA is created, replaced, verified or deleted. Device authentication reads it without a lock or
//! a database query; after each swap the live certificate sessions the change can affect (their
//! chain names a changed CA's subject as an issuer) are checked again, and the ones the new trust
//! set no longer admits are closed.
//!
//! Owns: `Trust` — the snapshot (`ArcSwap<TrustIndex>`), its generation, the anchor memo (each
//! CA parsed once per version; its lock makes rebuilds run one at a time), the rebuild requests,
//! and the cache of validated chains that follows the snapshot.
//! Asks of others: the store (passed in to `Trust::rebuild`: `ca_changes_since`,
//! `list_ca_versions`, `get_ca`); the hub then hands the changed subjects to the sessions part
//! ([`Hub::rebuild_trust`] is that cross-cutting rule), which re-checks the sessions naming them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use iothub_pki::chain::{validate_chain_knowing, ChainError};
use iothub_pki::chain_cache::{chain_key, ChainCache, VerifiedChain};
use iothub_pki::revocation::{RevocationSet, Revoked};
use iothub_pki::trust_index::{NameKey, ParsedAnchor, TrustIndex};
use iothub_store::Store;

use crate::{Hub, HubError};

/// The trust part of the hub (see the module comment).
pub(crate) struct Trust {
    /// The trust snapshot (registered CAs by subject), swapped on every CA change.
    snapshot: ArcSwap<TrustIndex>,
    /// Moves on every trust snapshot stored: a CONNECT judged across a move is re-checked (see
    /// `Hub::connect_ticket`).
    generation: AtomicU64,
    /// Each registered CA parsed, by name, with the etag of the version parsed. Its lock also
    /// makes trust rebuilds run one at a time.
    anchor_memo: Mutex<AnchorMemo>,
    /// Trust rebuilds asked for so far: a rebuild that finds its request already covered by one
    /// that read the registry after it returns at once (see `Trust::rebuild`).
    requests: AtomicU64,
    /// Device chains validated against the snapshot held beside them.
    chain_cache: Mutex<(Arc<TrustIndex>, ChainCache)>,
    /// The most certificates a device may present (`HubConfig::max_chain_len`).
    max_chain_len: usize,
    /// The revoked certificates, by the subject of the CA that revoked them: checked after
    /// every chain verdict, cached or not, so a revocation needs no cache invalidation.
    revocations: ArcSwap<RevocationSet>,
}

/// The registered CAs as last parsed, the index built from them, and how far the rebuilds have
/// come.
#[derive(Default)]
struct AnchorMemo {
    /// Each CA parsed, by name, with the etag of the version parsed.
    parsed: HashMap<String, (u64, ParsedAnchor)>,
    /// The index of exactly the CAs in `parsed`: the next rebuild changes a copy of it.
    index: Arc<TrustIndex>,
    /// The highest etag the last registry read saw: the next rebuild asks only for later writes.
    read_up_to: u64,
    /// Every rebuild request up to this one was read by a rebuild that published its snapshot.
    covered: u64,
    /// The revocations as last read from the store: the set is rebuilt from them whenever the
    /// CAs' subjects may have changed.
    revoked: Vec<Revoked>,
}

/// A CA to put into the index: its name, the etag of the version parsed, and the anchor.
type AddedAnchor = (String, u64, ParsedAnchor);

/// One read of the CA registry for a rebuild: the (name, etag, verified) versions it returned,
/// whether that was the whole list, and the highest etag it saw.
struct RegistryRead {
    versions: Vec<(String, u64, bool)>,
    whole_list: bool,
    read_up_to: u64,
}

impl Trust {
    pub(crate) fn new(chain_cache_entries: usize, max_chain_len: usize) -> Trust {
        Trust {
            snapshot: ArcSwap::from_pointee(TrustIndex::default()),
            generation: AtomicU64::new(0),
            anchor_memo: Mutex::new(AnchorMemo::default()),
            requests: AtomicU64::new(0),
            chain_cache: Mutex::new((
                Arc::new(TrustIndex::default()),
                ChainCache::new(chain_cache_entries),
            )),
            max_chain_len,
            revocations: ArcSwap::from_pointee(RevocationSet::default()),
        }
    }

    /// The current trust snapshot.
    pub(crate) fn current(&self) -> Arc<TrustIndex> {
        self.snapshot.load_full()
    }

    /// How many snapshots have been stored: a CONNECT's ticket compares it before and after.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Validates a device's chain against the current trust snapshot, remembering successes for
    /// as long as that snapshot stays current (see `iothub_pki::chain_cache`).
    pub(crate) fn validate_chain(
        &self,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Result<VerifiedChain, ChainError> {
        let verdict = self.validate_chain_cached(chain, now)?;
        match self.revocations.load().check(&verdict.presented) {
            Ok(()) => Ok(verdict),
            Err(revoked) => Err(ChainError::Revoked(revoked.clone())),
        }
    }

    /// The verdict on `chain` from the cache or from a full validation, revocations aside.
    fn validate_chain_cached(
        &self,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Result<VerifiedChain, ChainError> {
        let trust = self.current();
        let key = chain_key(chain);
        let known = {
            let cache = self.chain_cache();
            // The cache follows the snapshot under its own lock (see `rebuild`); a caller
            // still holding an older snapshot neither reads nor fills it.
            if !Arc::ptr_eq(&cache.0, &trust) {
                None
            } else if let Some(hit) = cache.1.get(&key, now) {
                return Ok(hit.clone());
            } else {
                // A fleet's intermediate, already verified against this snapshot: the chain
                // then costs the leaf's signature only (`KnownIntermediate`).
                chain.get(1).and_then(|der| cache.1.known_intermediate(der))
            }
        };
        let validation =
            validate_chain_knowing(chain, &trust, now, self.max_chain_len, known.as_deref())?;
        let verdict = VerifiedChain::from(&validation.ok);
        let mut cache = self.chain_cache();
        if Arc::ptr_eq(&cache.0, &trust) {
            cache.1.insert(key, verdict.clone());
            if let Some(learned) = validation.learned {
                cache.1.learn_intermediate(learned);
            }
        }
        Ok(verdict)
    }

    /// How many validated chains the cache holds.
    pub(crate) fn cached_chains(&self) -> usize {
        self.chain_cache().1.len()
    }

    /// How many intermediates the cache remembers as verified.
    pub(crate) fn known_intermediates(&self) -> usize {
        self.chain_cache().1.known_intermediates()
    }

    fn chain_cache(&self) -> MutexGuard<'_, (Arc<TrustIndex>, ChainCache)> {
        self.chain_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rebuilds the trust snapshot from `store` and returns the subjects the change can affect
    /// (old and new subjects of every CA taken out or put in): the chain cache keeps every other
    /// verdict, so a CA change among thousands costs only its own devices. When a rebuild that
    /// started after this call's request already published, this returns at once with no
    /// subjects: the snapshot holds the caller's change, and that rebuild reported them.
    pub(crate) fn rebuild(&self, store: &dyn Store) -> Result<HashSet<NameKey>, HubError> {
        // Taken after the caller's change landed in the store.
        let request = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        // Rebuilds run one at a time, each reading the registry after the change that
        // triggered it, so the snapshot stored last holds every change.
        let mut guard = self
            .anchor_memo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.covered >= request {
            // A rebuild that read the registry after this request already published: under
            // a burst of CA changes (thousands of registrations) one read serves them all.
            return Ok(HashSet::new());
        }
        let covers = self.requests.load(Ordering::SeqCst);
        let read = read_ca_changes(store, &guard)?;
        let read_up_to = read.read_up_to;
        let (removed, added) = anchor_changes(store, &guard.parsed, &read)?;
        let changed: HashSet<_> = removed
            .iter()
            .chain(added.iter().map(|(_, _, a)| a))
            .map(ParsedAnchor::subject_key)
            .collect();
        let index = Arc::new(
            guard
                .index
                .with_changes(&removed, added.iter().map(|(_, _, a)| a.clone())),
        );
        for old in &removed {
            guard.parsed.remove(&old.entry.ca_name);
        }
        for (name, etag, parsed) in added {
            guard.parsed.insert(name, (etag, parsed));
        }
        guard.index = index.clone();
        guard.read_up_to = read_up_to;
        guard.covered = covers;
        // The cache moves to the new snapshot, minus the verdicts the change can affect, in
        // the same step as the snapshot is published: a CONNECT reading the new snapshot
        // finds the cache already following it.
        let mut cache = self.chain_cache();
        cache.1.forget_affected(&changed);
        cache.0 = index.clone();
        self.snapshot.store(index);
        self.generation.fetch_add(1, Ordering::SeqCst);
        // A CA replaced under its name may have a new subject: its revocations follow it.
        self.publish_revocations(&guard);
        Ok(changed)
    }

    /// Takes the store's revocations (all of them) and returns the subjects of the CAs whose
    /// revocations the change can touch: the sessions naming them must be checked again.
    pub(crate) fn replace_revocations(&self, revoked: Vec<Revoked>) -> HashSet<NameKey> {
        let mut guard = self
            .anchor_memo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut touched: HashSet<NameKey> = self.revocations.load().issuers().copied().collect();
        guard.revoked = revoked;
        self.publish_revocations(&guard);
        touched.extend(self.revocations.load().issuers().copied());
        touched
    }

    /// Builds the revocation set from the memo's revocations and CAs, and publishes it.
    fn publish_revocations(&self, memo: &AnchorMemo) {
        let set = RevocationSet::new(memo.revoked.iter().cloned(), |name| {
            memo.parsed.get(name).map(|(_, a)| a.subject_key())
        });
        self.revocations.store(Arc::new(set));
    }
}

/// Reads which CAs changed since the memo's last read: only the CAs written since then,
/// unless some were deleted meanwhile (the count falls short of the CAs known plus the new
/// names): then the whole list, to see which.
fn read_ca_changes(store: &dyn Store, memo: &AnchorMemo) -> Result<RegistryRead, HubError> {
    let changes = store.ca_changes_since(memo.read_up_to)?;
    let new_names = changes
        .changed
        .iter()
        .filter(|(name, _, _)| !memo.parsed.contains_key(name))
        .count();
    let whole_list = changes.total != (memo.parsed.len() + new_names) as u64;
    let versions = if whole_list {
        store.list_ca_versions()?
    } else {
        changes.changed
    };
    // Only etags from these consistent reads: an etag `get_ca` returns later may be newer
    // than writes this read did not see.
    let read_up_to = versions
        .iter()
        .map(|(_, etag, _)| *etag)
        .fold(memo.read_up_to, u64::max);
    Ok(RegistryRead {
        versions,
        whole_list,
        read_up_to,
    })
}

/// The anchors to take out of the index and to put in, from a registry read. Each CA is
/// loaded and parsed once per version (etag), and the new index is a copy of the last one
/// changed in those CAs only: with thousands of CAs, rebuilding everything made each CA
/// change cost the whole registry. Nothing is changed here: after an error the next rebuild
/// compares with the same memo.
fn anchor_changes(
    store: &dyn Store,
    memo: &HashMap<String, (u64, ParsedAnchor)>,
    read: &RegistryRead,
) -> Result<(Vec<ParsedAnchor>, Vec<AddedAnchor>), HubError> {
    let mut removed: Vec<ParsedAnchor> = Vec::new();
    let mut added: Vec<AddedAnchor> = Vec::new();
    let mut still_listed = 0;
    for (name, etag, _verified) in &read.versions {
        let earlier = memo.get(name);
        if let Some((seen, _)) = earlier {
            still_listed += 1;
            if seen == etag {
                continue;
            }
        }
        // Changed since the last rebuild (or new): load it. Gone meanwhile, or no longer
        // readable: it leaves the index (a delete rebuilds trust again).
        removed.extend(earlier.map(|(_, old)| old.clone()));
        let Some(r) = store.get_ca(name)? else {
            continue;
        };
        let Ok(parsed) = ParsedAnchor::parse(&r.name, &r.der, r.is_verified) else {
            continue;
        };
        added.push((name.clone(), r.etag, parsed));
    }
    // CAs no longer listed were deleted.
    if read.whole_list && still_listed < memo.len() {
        let listed: HashSet<&str> = read.versions.iter().map(|(n, _, _)| n.as_str()).collect();
        removed.extend(
            memo.iter()
                .filter(|(name, _)| !listed.contains(name.as_str()))
                .map(|(_, (_, old))| old.clone()),
        );
    }
    Ok((removed, added))
}

impl Hub {
    /// The current trust snapshot.
    pub fn trust(&self) -> Arc<TrustIndex> {
        self.trust_set().current()
    }

    /// Validates a device's chain against the current trust snapshot, remembering successes for
    /// as long as that snapshot stays current (see `iothub_pki::chain_cache`).
    pub fn validate_device_chain(
        &self,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Result<VerifiedChain, ChainError> {
        self.trust_set().validate_chain(chain, now)
    }

    /// How many validated chains the cache holds (diagnostics, and tests of what a trust change
    /// keeps).
    pub fn cached_chains(&self) -> usize {
        self.trust_set().cached_chains()
    }

    /// How many presented intermediates the chain cache remembers as verified against the
    /// current snapshot (diagnostics, and tests of what a trust change forgets).
    pub fn known_intermediates(&self) -> usize {
        self.trust_set().known_intermediates()
    }

    /// Rebuilds the trust snapshot from the store, then re-checks the live sessions the change
    /// can affect: those whose chain names a changed CA's subject as an issuer. The rule that
    /// needs two parts: trust says which subjects changed, sessions re-checks the sessions
    /// naming them. When a rebuild that started after this call's request already published,
    /// this returns at once: the snapshot holds the caller's change, and that rebuild re-checks
    /// the sessions.
    pub fn rebuild_trust(&self) -> Result<(), HubError> {
        let started = std::time::Instant::now();
        let changed = self.trust_set().rebuild(self.store().as_ref())?;
        self.revalidate_sessions_naming(&changed);
        self.metrics().trust_rebuilt(started.elapsed());
        Ok(())
    }

    /// Reads every revocation from the store into the trust part, then re-checks the sessions
    /// of the CAs concerned: a revoked certificate's sessions close at once, with the reason.
    pub fn reload_revocations(&self) -> Result<(), HubError> {
        let records = self.store().list_revocations(None)?;
        let revoked = records
            .into_iter()
            .map(crate::revocations::revoked)
            .collect();
        let touched = self.trust_set().replace_revocations(revoked);
        self.revalidate_sessions_naming(&touched);
        Ok(())
    }

    /// Rebuilds trust after a CA change; a failure is logged (the change itself has landed, and the
    /// periodic revalidation retries).
    pub(crate) fn trust_changed(&self) {
        if let Err(e) = self.rebuild_trust() {
            tracing::error!(error = %e, "could not rebuild the trust snapshot");
        }
    }
}
