//! Verdicts on device chains already validated against one trust snapshot, so a device that
//! connects again (a reconnect, a resumed TLS session) costs a hash and a map lookup instead of
//! parsing and two signature checks.
//!
//! Invariants: an entry is only ever a *success* (refusals are always worked out in full, with
//! their reason); it is used only between the chain's `valid_from` and `valid_until`; and the
//! owner updates the cache whenever the trust snapshot changes (see `hub::trust`), so a deleted
//! or unverified CA admits no one from the next CONNECT on. The owner drops only the verdicts a
//! change can affect: those on chains naming a changed CA's subject as an issuer. The key is SHA-256 over every
//! presented certificate, each length-prefixed, so two different chains never share an entry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::chain::{ChainOk, KnownIntermediate};
use crate::trust_index::{name_key, NameKey};

/// Intermediates remembered at most (a fleet has a handful; when full, it starts over).
pub const KNOWN_INTERMEDIATES: usize = 1024;

/// What a cached verdict keeps: only what CONNECT needs (held per device, so kept small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    pub ca_name: String,
    /// The leaf's CNs (all text: a chain whose leaf has a CN that is not is never a success).
    pub leaf_common_names: Vec<String>,
    pub valid_from: i64,
    pub valid_until: i64,
    /// See [`ChainOk::issuers`].
    pub issuers: Arc<[NameKey]>,
    /// See [`ChainOk::presented`].
    pub presented: Arc<[(NameKey, String)]>,
    /// The leaf certificate's notAfter (Unix seconds): what the device's certificate expiry is.
    pub leaf_not_after: i64,
}

impl VerifiedChain {
    /// Whether a change to CAs with these subjects can alter this verdict.
    pub fn depends_on(&self, changed: &HashSet<NameKey>) -> bool {
        self.issuers.iter().any(|k| changed.contains(k))
    }
}

impl From<&ChainOk> for VerifiedChain {
    fn from(ok: &ChainOk) -> Self {
        VerifiedChain {
            ca_name: ok.ca_name.clone(),
            leaf_common_names: ok.leaf.common_names.clone(),
            valid_from: ok.valid_from,
            valid_until: ok.valid_until,
            issuers: ok.issuers.as_slice().into(),
            presented: ok.presented.as_slice().into(),
            leaf_not_after: ok.leaf.not_after,
        }
    }
}

/// The cache key of a presented chain.
pub type ChainKey = [u8; 32];

/// SHA-256 over the presented certificates, each prefixed with its length.
pub fn chain_key(chain: &[Vec<u8>]) -> ChainKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for der in chain {
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The key of one certificate: [`chain_key`] of a chain of just it.
fn certificate_key(der: &[u8]) -> ChainKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(der.len() as u64).to_be_bytes());
    ctx.update(der);
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Successful chain validations, at most `capacity` of them (when full, it starts over: the
/// cost of a miss is one full validation, never a wrong verdict), and the intermediates those
/// validations went through ([`KnownIntermediate`], by the SHA-256 of their DER; none when
/// `capacity` is 0).
#[derive(Debug, Default)]
pub struct ChainCache {
    capacity: usize,
    entries: HashMap<ChainKey, VerifiedChain>,
    intermediates: HashMap<ChainKey, Arc<KnownIntermediate>>,
}

impl ChainCache {
    pub fn new(capacity: usize) -> ChainCache {
        ChainCache {
            capacity,
            entries: HashMap::new(),
            intermediates: HashMap::new(),
        }
    }

    /// The remembered intermediate whose DER is exactly `der`.
    pub fn known_intermediate(&self, der: &[u8]) -> Option<Arc<KnownIntermediate>> {
        if self.intermediates.is_empty() {
            return None;
        }
        self.intermediates
            .get(&certificate_key(der))
            .filter(|k| k.info.der == der)
            .cloned()
    }

    /// Remembers an intermediate a full validation went through.
    pub fn learn_intermediate(&mut self, known: KnownIntermediate) {
        if self.capacity == 0 {
            return;
        }
        let key = certificate_key(&known.info.der);
        if self.intermediates.len() >= KNOWN_INTERMEDIATES && !self.intermediates.contains_key(&key)
        {
            self.intermediates.clear();
        }
        self.intermediates.insert(key, Arc::new(known));
    }

    pub fn known_intermediates(&self) -> usize {
        self.intermediates.len()
    }

    /// The cached verdict for `key`, if there is one and it holds at `now`.
    pub fn get(&self, key: &ChainKey, now: i64) -> Option<&VerifiedChain> {
        self.entries
            .get(key)
            .filter(|v| v.valid_from <= now && now <= v.valid_until)
    }

    pub fn insert(&mut self, key: ChainKey, verdict: VerifiedChain) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        self.entries.insert(key, verdict);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.intermediates.clear();
    }

    /// Drops the verdicts a change to CAs with these subjects can alter; returns how many. So
    /// are the intermediates issued by such a CA, or named like one (a CA registered under an
    /// intermediate's subject would end its chains there instead).
    pub fn forget_affected(&mut self, changed: &HashSet<NameKey>) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, v| !v.depends_on(changed));
        self.intermediates.retain(|_, k| {
            !changed.contains(&name_key(&k.info.issuer_raw))
                && !changed.contains(&name_key(&k.info.subject_raw))
        });
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(from: i64, until: i64) -> VerifiedChain {
        verdict_from(from, until, &[1])
    }

    fn verdict_from(from: i64, until: i64, issuers: &[NameKey]) -> VerifiedChain {
        VerifiedChain {
            ca_name: "root".into(),
            leaf_common_names: vec!["dev".into()],
            valid_from: from,
            valid_until: until,
            issuers: issuers.into(),
            presented: Arc::from([]),
            leaf_not_after: until,
        }
    }

    #[test]
    fn keys_differ_for_different_chains_and_splits() {
        let a = chain_key(&[vec![1, 2], vec![3]]);
        let b = chain_key(&[vec![1], vec![2, 3]]);
        let c = chain_key(&[vec![1, 2, 3]]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(a, chain_key(&[vec![1, 2], vec![3]]));
    }

    #[test]
    fn a_verdict_is_used_only_inside_its_validity_window() {
        let mut cache = ChainCache::new(10);
        let key = chain_key(&[vec![9]]);
        cache.insert(key, verdict(100, 200));
        assert!(cache.get(&key, 99).is_none());
        assert!(cache.get(&key, 100).is_some());
        assert!(cache.get(&key, 200).is_some());
        assert!(cache.get(&key, 201).is_none());
    }

    #[test]
    fn a_full_cache_starts_over_and_capacity_zero_caches_nothing() {
        let mut cache = ChainCache::new(2);
        for i in 0..3u8 {
            cache.insert(chain_key(&[vec![i]]), verdict(0, 10));
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&chain_key(&[vec![2]]), 5).is_some());
        let mut none = ChainCache::new(0);
        none.insert(chain_key(&[vec![1]]), verdict(0, 10));
        assert!(none.is_empty());
    }

    #[test]
    fn a_trust_change_forgets_only_the_verdicts_naming_a_changed_subject() {
        let mut cache = ChainCache::new(10);
        let (a, b, c) = (
            chain_key(&[vec![1]]),
            chain_key(&[vec![2]]),
            chain_key(&[vec![3]]),
        );
        cache.insert(a, verdict_from(0, 10, &[7, 8]));
        cache.insert(b, verdict_from(0, 10, &[9]));
        cache.insert(c, verdict_from(0, 10, &[8]));
        assert_eq!(cache.forget_affected(&HashSet::from([8])), 2);
        assert!(cache.get(&a, 5).is_none());
        assert!(cache.get(&c, 5).is_none());
        assert!(cache.get(&b, 5).is_some());
        assert_eq!(cache.forget_affected(&HashSet::new()), 0);
        assert_eq!(cache.len(), 1);
    }
}
