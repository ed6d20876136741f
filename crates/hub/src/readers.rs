//! Part `Readers`: the Event Hubs readers this node serves, by consumer group and partition, and
//! the owner-level (epoch) rule between them, as Event Hubs applies it: a reader with an owner
//! level takes the partition from every reader of that group with a lower or no owner level
//! (they are told, and their links end with `amqp:link:stolen`); while one holds it, a reader
//! with a lower or no owner level is refused; readers without an owner level share a partition,
//! at most `HubConfig::readers_per_partition` of them. Node-local: readers on other nodes of a
//! cluster are not counted (docs/decisions.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::{Hub, HubError};

#[derive(Default)]
pub(crate) struct Readers {
    next_id: AtomicU64,
    held: Mutex<HashMap<(String, u32), Vec<Holder>>>,
}

struct Holder {
    id: u64,
    owner_level: Option<i64>,
    /// Set to the reason when another reader takes the partition.
    displaced: watch::Sender<Option<String>>,
}

/// A reader's hold on a partition: released when dropped. `displaced` changes to the reason when
/// a reader with a higher owner level takes the partition.
pub struct ReaderLease {
    held_by: Arc<Readers>,
    key: (String, u32),
    id: u64,
    pub displaced: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for ReaderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderLease")
            .field("group", &self.key.0)
            .field("partition", &self.key.1)
            .finish()
    }
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held_by.held.lock() {
            if let Some(holders) = held.get_mut(&self.key) {
                holders.retain(|h| h.id != self.id);
                if holders.is_empty() {
                    held.remove(&self.key);
                }
            }
        }
    }
}

impl Readers {
    fn claim(
        self: &Arc<Readers>,
        group: &str,
        partition: u32,
        owner_level: Option<i64>,
        max_shared: usize,
    ) -> Result<ReaderLease, HubError> {
        let key = (group.to_ascii_lowercase(), partition);
        let mut held = self
            .held
            .lock()
            .map_err(|_| HubError::Internal("the readers' lock is poisoned".into()))?;
        let holders = held.entry(key.clone()).or_default();
        let top = holders.iter().filter_map(|h| h.owner_level).max();
        match (owner_level, top) {
            (Some(mine), Some(theirs)) if mine < theirs => {
                return Err(HubError::ReaderConflict(format!(
                    "a reader with owner level {theirs} holds partition {partition} of consumer group '{group}'; this reader's owner level {mine} is lower"
                )));
            }
            (None, Some(theirs)) => {
                return Err(HubError::ReaderConflict(format!(
                    "a reader with owner level {theirs} holds partition {partition} of consumer group '{group}'; a reader without an owner level cannot join it"
                )));
            }
            (None, None) if holders.len() >= max_shared => {
                return Err(HubError::ReaderConflict(format!(
                    "partition {partition} of consumer group '{group}' has {} readers, the most allowed (--readers-per-partition); use another consumer group",
                    holders.len()
                )));
            }
            (Some(mine), _) => {
                // Every other reader of the partition gives way.
                for h in holders.drain(..) {
                    let why = match h.owner_level {
                        Some(level) => format!("a reader with owner level {mine} took partition {partition} of consumer group '{group}' from this one (owner level {level})"),
                        None => format!("a reader with owner level {mine} took partition {partition} of consumer group '{group}'"),
                    };
                    let _ = h.displaced.send(Some(why));
                }
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        holders.push(Holder {
            id,
            owner_level,
            displaced: tx,
        });
        Ok(ReaderLease {
            held_by: self.clone(),
            key,
            id,
            displaced: rx,
        })
    }
}

impl Hub {
    /// Claims partition `partition` of consumer group `group` for a reader with `owner_level`
    /// (None: none), under the owner-level rule above.
    pub fn claim_reader(
        &self,
        group: &str,
        partition: u32,
        owner_level: Option<i64>,
    ) -> Result<ReaderLease, HubError> {
        self.readers().claim(
            group,
            partition,
            owner_level,
            self.config().readers_per_partition,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers() -> Arc<Readers> {
        Arc::new(Readers::default())
    }

    #[test]
    fn a_higher_owner_level_takes_the_partition_and_a_lower_one_is_refused() {
        let r = readers();
        let plain = r.claim("$Default", 0, None, 5).unwrap();
        let one = r.claim("$Default", 0, Some(1), 5).unwrap();
        assert!(plain
            .displaced
            .borrow()
            .as_deref()
            .unwrap()
            .contains("owner level 1"));
        assert!(one.displaced.borrow().is_none());
        let err = r.claim("$Default", 0, None, 5).unwrap_err();
        assert!(err.to_string().contains("owner level 1 holds"), "{err}");
        let err = r.claim("$default", 0, Some(0), 5).unwrap_err();
        assert!(err.to_string().contains("owner level 0 is lower"), "{err}");
        let same = r.claim("$Default", 0, Some(1), 5).unwrap();
        assert!(
            one.displaced.borrow().is_some(),
            "an equal owner level takes it too"
        );
        // Other partitions and groups are apart.
        let _other = r.claim("$Default", 1, None, 5).unwrap();
        let _group = r.claim("analytics", 0, None, 5).unwrap();
        drop((one, same));
        let _back = r.claim("$Default", 0, None, 5).unwrap();
    }

    #[test]
    fn readers_without_an_owner_level_share_up_to_the_limit() {
        let r = readers();
        let a = r.claim("g", 2, None, 2).unwrap();
        let _b = r.claim("g", 2, None, 2).unwrap();
        let err = r.claim("g", 2, None, 2).unwrap_err();
        assert!(err.to_string().contains("has 2 readers"), "{err}");
        assert_eq!(err.code().number, 409056);
        drop(a);
        let _c = r.claim("g", 2, None, 2).unwrap();
        assert!(r.held.lock().unwrap().len() == 1);
    }
}
