//! The trust index: the registered CAs a device chain may lead to, found by the exact DER of the
//! issuer name a certificate gives, and the [`NameKey`]s that say which chains a CA change can
//! affect.
//!
//! Why it exists: a CONNECT must never scan the whole registry nor touch the database. The
//! service layer rebuilds this index when a CA changes and publishes it as an immutable snapshot;
//! chain validation (`crate::chain`) then only reads it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::cert::CertInfo;
use crate::sharded::ShardedMap;

/// A CA of the registry, as the trust index holds it.
#[derive(Debug, Clone)]
pub struct AnchorEntry {
    pub ca_name: String,
    pub der: Vec<u8>,
    pub subject: String,
    pub verified: bool,
    pub not_after: i64,
}

/// A short key for a distinguished name, from its DER. The trust index finds CAs by the exact DER
/// of an issuer name, so a change to a CA can only alter the verdict on chains in which some
/// certificate names that CA's subject as its issuer: these keys let the hub find exactly those
/// chains (two names sharing a key only cost an extra re-check, never a missed one).
pub type NameKey = u64;

/// The [`NameKey`] of a DER-encoded name.
pub fn name_key(der: &[u8]) -> NameKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    der.hash(&mut h);
    h.finish()
}

/// The registered CAs indexed by the DER of their subject: a chain is checked against only the CAs
/// whose subject equals an issuer it names, never by scanning them all. Cloning it is cheap
/// (shared shards), and [`TrustIndex::with_changes`] copies only what a change touches.
#[derive(Debug, Clone, Default)]
pub struct TrustIndex {
    by_subject: ShardedMap<Arc<[u8]>, Vec<Arc<AnchorEntry>>>,
    /// basicConstraints path lengths of the CAs that have one, by CA name: webpki's trust anchors
    /// carry no basicConstraints, so the limit a registered CA sets below itself is enforced here.
    path_lens: ShardedMap<String, u32>,
    count: usize,
}

/// A registered CA with what the index needs from its certificate, parsed once: a registry of
/// thousands of CAs is re-indexed on every CA change, and parsing each certificate every time
/// made that quadratic.
#[derive(Debug, Clone)]
pub struct ParsedAnchor {
    pub entry: Arc<AnchorEntry>,
    subject_raw: Arc<[u8]>,
    path_len: Option<u32>,
}

impl ParsedAnchor {
    /// Parses a registered CA's certificate.
    pub fn parse(ca_name: &str, der: &[u8], verified: bool) -> Result<ParsedAnchor, String> {
        let info = CertInfo::from_der(der).map_err(|e| e.to_string())?;
        Ok(ParsedAnchor {
            entry: Arc::new(AnchorEntry {
                ca_name: ca_name.to_string(),
                der: der.to_vec(),
                subject: info.subject,
                verified,
                not_after: info.not_after,
            }),
            subject_raw: info.subject_raw.into(),
            path_len: info.ca.flatten(),
        })
    }
}

impl ParsedAnchor {
    /// The key of this CA's subject: chains naming it as an issuer are the ones a change to this
    /// CA can affect.
    pub fn subject_key(&self) -> NameKey {
        name_key(&self.subject_raw)
    }
}

impl TrustIndex {
    /// Builds the index; entries whose DER cannot be read are skipped (the registry only holds
    /// parsed certificates).
    pub fn new(entries: impl IntoIterator<Item = AnchorEntry>) -> TrustIndex {
        TrustIndex::from_parsed(entries.into_iter().filter_map(|e| {
            let info = CertInfo::from_der(&e.der).ok()?;
            Some(ParsedAnchor {
                subject_raw: info.subject_raw.into(),
                path_len: info.ca.flatten(),
                entry: Arc::new(e),
            })
        }))
    }

    /// Builds the index from CAs parsed earlier (CA names are unique).
    pub fn from_parsed(anchors: impl IntoIterator<Item = ParsedAnchor>) -> TrustIndex {
        TrustIndex::default().with_changes(&[], anchors)
    }

    /// A copy of this index without the CAs `removed` (by name) and with the CAs `added`: a
    /// replaced CA is in both. Only the shards these CAs fall in are copied, so the cost follows
    /// the change, not the size of the registry.
    pub fn with_changes(
        &self,
        removed: &[ParsedAnchor],
        added: impl IntoIterator<Item = ParsedAnchor>,
    ) -> TrustIndex {
        let mut next = self.clone();
        for r in removed {
            next.remove(r);
        }
        for a in added {
            if let Some(len) = a.path_len {
                next.path_lens
                    .shard_mut(a.entry.ca_name.as_str())
                    .insert(a.entry.ca_name.clone(), len);
            }
            next.by_subject
                .shard_mut(&*a.subject_raw)
                .entry(a.subject_raw)
                .or_default()
                .push(a.entry);
            next.count += 1;
        }
        next
    }

    fn remove(&mut self, anchor: &ParsedAnchor) {
        let name = anchor.entry.ca_name.as_str();
        if self.by_subject.get(&*anchor.subject_raw).is_none() {
            return;
        }
        let shard = self.by_subject.shard_mut(&*anchor.subject_raw);
        let Some(entries) = shard.get_mut(&*anchor.subject_raw) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.ca_name != name);
        self.count -= before - entries.len();
        if entries.is_empty() {
            shard.remove(&*anchor.subject_raw);
        }
        if self.path_lens.get(name).is_some() {
            self.path_lens.shard_mut(name).remove(name);
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names of the CAs in the index, in no particular order (tests and diagnostics).
    pub fn ca_names(&self) -> Vec<String> {
        self.by_subject
            .values()
            .flatten()
            .map(|e| e.ca_name.clone())
            .collect()
    }

    /// The Verified CA that expires first, as (name, notAfter in Unix seconds): what an operator
    /// must renew next. Expired ones count too (they already stopped admitting devices).
    pub fn soonest_verified_expiry(&self) -> Option<(&str, i64)> {
        self.by_subject
            .values()
            .flatten()
            .filter(|e| e.verified)
            .min_by_key(|e| e.not_after)
            .map(|e| (e.ca_name.as_str(), e.not_after))
    }

    /// The registered CAs whose subject is exactly `issuer_raw` (the DER of an issuer name).
    pub(crate) fn candidates(&self, issuer_raw: &[u8]) -> &[Arc<AnchorEntry>] {
        self.by_subject
            .get(issuer_raw)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The basicConstraints path length of the CA named `ca_name`, if it sets one.
    pub(crate) fn path_len(&self, ca_name: &str) -> Option<u32> {
        self.path_lens.get(ca_name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{validate_chain, ChainError};
    use crate::sharded::SHARDS;
    use crate::test_certs::{params, root_inter_leaf, Chain};
    use rcgen::{BasicConstraints, KeyPair};
    use std::collections::HashMap;

    #[test]
    fn a_changed_copy_of_the_index_leaves_the_original_as_it_was() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Chain {
            root, inter, leaf, ..
        } = root_inter_leaf(BasicConstraints::Constrained(0));
        let chain = vec![leaf.der().to_vec(), inter.der().to_vec()];
        let other = params("other", Some(BasicConstraints::Unconstrained))
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        let root_a = ParsedAnchor::parse("root", root.der(), true).unwrap();
        let other_a = ParsedAnchor::parse("other", other.der(), true).unwrap();
        let path_len_refusal = |index: &TrustIndex| {
            let e = validate_chain(&chain, index, now).unwrap_err();
            assert!(e.to_string().contains("path length"), "{e}");
        };

        let before = TrustIndex::from_parsed([root_a.clone(), other_a.clone()]);
        path_len_refusal(&before);
        let after = before.with_changes(std::slice::from_ref(&root_a), []);
        // The copy lost the CA, its path length with it; the original (which CONNECTs may still
        // hold) is untouched.
        assert!(matches!(
            validate_chain(&chain, &after, now),
            Err(ChainError::UnknownIssuer { .. })
        ));
        assert_eq!(
            (after.len(), after.ca_names()),
            (1, vec!["other".to_string()])
        );
        assert!(after.path_lens.get("root").is_none());
        path_len_refusal(&before);
        assert_eq!(before.len(), 2);
        // Removing a CA the index does not hold changes nothing; adding it back restores it.
        let same = after.with_changes(std::slice::from_ref(&root_a), []);
        assert_eq!(same.len(), 1);
        let back = same.with_changes(&[], [root_a]);
        path_len_refusal(&back);
        let mut names = back.ca_names();
        names.sort();
        assert_eq!(names, vec!["other".to_string(), "root".to_string()]);
    }

    #[test]
    fn a_change_copies_only_the_shards_it_touches() {
        let anchors: Vec<ParsedAnchor> = (0..200)
            .map(|i| {
                let name = format!("ca-{i}");
                let cert = params(&name, Some(BasicConstraints::Constrained(1)))
                    .self_signed(&KeyPair::generate().unwrap())
                    .unwrap();
                ParsedAnchor::parse(&name, cert.der(), true).unwrap()
            })
            .collect();
        let before = TrustIndex::from_parsed(anchors.iter().cloned());
        let after = before.with_changes(&anchors[..1], anchors[..1].iter().cloned());
        assert_eq!(after.len(), 200);
        fn shared<K: Hash + Eq + Clone, V: Clone>(
            a: &ShardedMap<K, V>,
            b: &ShardedMap<K, V>,
        ) -> usize {
            a.shared_shards(b)
        }
        // One subject shard and one path-length shard were copied; the rest are shared.
        assert_eq!(shared(&before.by_subject, &after.by_subject), SHARDS - 1);
        assert_eq!(shared(&before.path_lens, &after.path_lens), SHARDS - 1);
    }

    /// Random sequences of CA additions, replacements and removals, applied one change at a
    /// time with `with_changes`, always give the index a rebuild from scratch would: same CAs,
    /// same candidates for every subject (several CAs may share one), same path lengths.
    #[test]
    fn changing_the_index_step_by_step_matches_building_it_anew() {
        // 8 subjects x 2 keys, some with a path length; the same certificate may sit under
        // several names, as far as the index is concerned.
        let pool: Vec<(String, Vec<u8>)> = (0..16)
            .map(|i| {
                let subject = format!("subject-{}", i % 8);
                let bc = if i % 3 == 0 {
                    BasicConstraints::Constrained(i % 4)
                } else {
                    BasicConstraints::Unconstrained
                };
                let cert = params(&subject, Some(bc))
                    .self_signed(&KeyPair::generate().unwrap())
                    .unwrap();
                (subject, cert.der().to_vec())
            })
            .collect();
        let subjects: Vec<Arc<[u8]>> = pool
            .iter()
            .map(|(_, der)| CertInfo::from_der(der).unwrap().subject_raw.into())
            .collect();
        let view = |index: &TrustIndex| {
            let mut names = index.ca_names();
            names.sort();
            let by_subject: Vec<Vec<String>> = subjects
                .iter()
                .map(|s| {
                    let mut n: Vec<String> = index
                        .candidates(s)
                        .iter()
                        .map(|e| e.ca_name.clone())
                        .collect();
                    n.sort();
                    n
                })
                .collect();
            let lens: Vec<Option<u32>> = names
                .iter()
                .map(|n| index.path_lens.get(n).copied())
                .collect();
            (index.len(), names, by_subject, lens)
        };

        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let mut model: HashMap<String, ParsedAnchor> = HashMap::new();
        let mut index = TrustIndex::default();
        for step in 0..400 {
            let name = format!("ca-{}", next(24));
            let (_, der) = &pool[next(pool.len())];
            let verified = next(2) == 0;
            let (removed, added): (Vec<ParsedAnchor>, Vec<ParsedAnchor>) = match next(3) {
                // Remove the CA of that name, if there is one.
                0 => (model.remove(&name).into_iter().collect(), vec![]),
                // Add it, or replace the one of that name.
                _ => {
                    let new = ParsedAnchor::parse(&name, der, verified).unwrap();
                    let old = model.insert(name.clone(), new.clone());
                    (old.into_iter().collect(), vec![new])
                }
            };
            index = index.with_changes(&removed, added);
            let anew = TrustIndex::from_parsed(model.values().cloned());
            assert_eq!(view(&index), view(&anew), "after step {step}");
        }
        assert!(!model.is_empty());
    }
}
