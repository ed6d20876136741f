//! A generic map split into shards behind `Arc`s, copied on write shard by shard.
//!
//! Why it exists: the trust index is republished on every CA change, and CONNECTs may still hold
//! the previous one, so a change must build a new map rather than edit the live one. Copying a
//! whole 10,000-CA map each time made every change cost the whole registry; with shards, a copy
//! changed in a few keys clones only the shards holding them and shares the rest.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How many shards a [`ShardedMap`] has: a change copies about 1/64 of the map.
pub(crate) const SHARDS: usize = 64;

/// A map split into shards, each behind an `Arc`, so that a copy changed in a few keys clones
/// only the shards holding them and shares the rest.
#[derive(Debug, Clone)]
pub(crate) struct ShardedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[Self::shard_of(key)].get(key)
    }

    /// The shard that holds `key`, copied first if another map still shares it.
    pub(crate) fn shard_mut<Q>(&mut self, key: &Q) -> &mut HashMap<K, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Arc::make_mut(&mut self.shards[Self::shard_of(key)])
    }

    /// Every value, shard by shard, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// How many shards this map still shares with `other` (tests check what a change copied).
    #[cfg(test)]
    pub(crate) fn shared_shards(&self, other: &Self) -> usize {
        let same = self.shards.iter().zip(&other.shards);
        same.filter(|(x, y)| Arc::ptr_eq(x, y)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_copy_shares_every_shard_it_did_not_change() {
        let mut before: ShardedMap<String, u32> = ShardedMap::default();
        for i in 0..500 {
            before
                .shard_mut(format!("k{i}").as_str())
                .insert(format!("k{i}"), i);
        }
        let mut after = before.clone();
        assert_eq!(after.shared_shards(&before), SHARDS);
        after.shard_mut("k7").insert("k7".into(), 70);
        assert_eq!(after.shared_shards(&before), SHARDS - 1);
        assert_eq!((before.get("k7"), after.get("k7")), (Some(&7), Some(&70)));
        assert_eq!(after.values().count(), 500);
    }
}
