//! The telemetry log as an Event Hubs reader sees it (the endpoint back ends written for a cloud
//! IoT hub read telemetry from): the hub's name as the event hub's, its partitions by id, each
//! partition's first and last sequence number, and a reader's start position turned into the
//! sequence number it reads from.
//!
//! Why here: which partitions exist, what a position means and who may read are rules; the AMQP
//! adapter only turns its wire's filters into a [`StartPosition`] and events back into frames.
//! An event's offset is its sequence number within the partition, as text (Event Hubs offsets are
//! opaque strings to their readers; docs/decisions.md). Consumer groups: `$Default` always, the
//! others kept in the store (at most `HubConfig::consumer_group_limit`), added and deleted with
//! RegistryWrite, every change audited. Owns no in-memory state: reads the store.

use iothub_store::StoreError;

use crate::auth::{Principal, Right};
use crate::telemetry::MessageView;
use crate::{Hub, HubError};

/// Where a reader of one partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest event the log still holds (Event Hubs' offset "-1").
    Earliest,
    /// Only events enqueued after the reader attached ("@latest").
    Latest,
    /// After (or, inclusive, at) a sequence number; an offset is the same number.
    Sequence { sequence: i64, inclusive: bool },
    /// Events enqueued after (or, inclusive, at) a time in Unix milliseconds.
    EnqueuedAt { unix_ms: i64, inclusive: bool },
}

/// The event hub as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubInfo {
    /// The hub's name (`EntityPath` of the Event Hubs connection string).
    pub name: String,
    /// When the hub's store first answered this question, Unix milliseconds (kept).
    pub created_ms: i64,
    /// "0", "1", ... one per partition of the log.
    pub partition_ids: Vec<String>,
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// The oldest sequence number the log holds (retention drops older ones); the next one to be
    /// given when the partition is empty.
    pub begin_sequence: i64,
    /// The last sequence number given (0: none yet).
    pub last_sequence: i64,
    /// When that last event was enqueued, Unix milliseconds (0: none).
    pub last_enqueued_ms: i64,
    pub is_empty: bool,
}

/// The consumer group every event hub has, which cannot be deleted.
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// A consumer group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupView {
    pub name: String,
    /// Unix seconds; None for `$Default` (as old as the hub).
    pub created: Option<i64>,
}

/// Azure's rule for a consumer group's name: 1 to 50 letters, digits, '.', '-' or '_'.
pub fn validate_consumer_group(name: &str) -> Result<(), HubError> {
    let ok = (1..=50).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(HubError::ConsumerGroupInvalid(format!(
            "consumer group name '{}' is not valid; expected 1 to 50 letters, digits, '.', '-' or '_'",
            crate::peer_text::escaped(name)
        )))
    }
}

fn group_target(name: &str) -> String {
    format!("consumerGroup/{name}")
}

/// The setting the event hub's creation time is kept under.
const CREATED_SETTING: &str = "eventhub.created_ms";

impl Hub {
    fn authorize_read(&self, who: &Principal, target: &str) -> Result<(), HubError> {
        self.authorize(
            who,
            Right::ServiceConnect,
            "read device-to-cloud messages",
            target,
        )
    }

    /// The event hub's name, creation time and partition ids.
    pub fn eventhub_info(&self, who: &Principal) -> Result<EventHubInfo, HubError> {
        self.authorize_read(who, "eventhub")?;
        let now_ms = self.now().saturating_mul(1000).to_string();
        self.store()
            .insert_settings_if_absent(&[(CREATED_SETTING, now_ms.as_bytes())])?;
        let created_ms = self
            .store()
            .get_setting(CREATED_SETTING)?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        Ok(EventHubInfo {
            name: self.config().hub_name.clone(),
            created_ms,
            partition_ids: (0..self.config().partitions.max(1))
                .map(|p| p.to_string())
                .collect(),
        })
    }

    /// A partition id as readers spell it ("0", "1", ...), checked against this hub's count.
    pub fn partition_by_id(&self, id: &str) -> Result<u32, HubError> {
        let count = self.config().partitions.max(1);
        match id.parse::<u32>() {
            Ok(p) if p < count && !id.starts_with('+') && (id == "0" || !id.starts_with('0')) => {
                Ok(p)
            }
            _ => Err(HubError::InvalidArgument(format!(
                "partition '{}' does not exist; this hub's partitions are 0 to {}",
                crate::peer_text::escaped(id),
                count - 1
            ))),
        }
    }

    /// One partition's first and last sequence numbers and last enqueued time.
    pub fn partition_info(
        &self,
        who: &Principal,
        partition: u32,
    ) -> Result<PartitionInfo, HubError> {
        self.authorize_read(who, &format!("partition/{partition}"))?;
        self.partition_state(partition)
    }

    fn partition_state(&self, partition: u32) -> Result<PartitionInfo, HubError> {
        let last_sequence = self
            .store()
            .partition_ends()?
            .into_iter()
            .find(|(p, _)| *p == partition)
            .map_or(0, |(_, last)| last);
        let first = self.store().read_partition(partition, 1, 1)?;
        let last = if last_sequence > 0 {
            self.store().read_partition(partition, last_sequence, 1)?
        } else {
            Vec::new()
        };
        let is_empty = first.is_empty();
        Ok(PartitionInfo {
            partition,
            begin_sequence: first.first().map_or(last_sequence + 1, |m| m.sequence),
            last_sequence,
            last_enqueued_ms: last
                .first()
                .map_or(0, |m| m.message.enqueued.saturating_mul(1000)),
            is_empty,
        })
    }

    /// The first sequence number a reader starting at `position` reads.
    pub fn partition_start(
        &self,
        who: &Principal,
        partition: u32,
        position: StartPosition,
    ) -> Result<i64, HubError> {
        self.authorize_read(who, &format!("partition/{partition}"))?;
        let state = self.partition_state(partition)?;
        Ok(match position {
            StartPosition::Earliest => state.begin_sequence,
            StartPosition::Latest => state.last_sequence + 1,
            StartPosition::Sequence {
                sequence,
                inclusive,
            } => {
                let from = if inclusive {
                    sequence
                } else {
                    sequence.saturating_add(1)
                };
                from.clamp(state.begin_sequence, state.last_sequence + 1)
            }
            StartPosition::EnqueuedAt { unix_ms, inclusive } => {
                self.first_enqueued_at(partition, &state, unix_ms, inclusive)?
            }
        })
    }

    /// The first sequence number enqueued after (inclusive: at or after) `unix_ms`, by binary
    /// search over the partition (enqueued times never decrease within a partition).
    fn first_enqueued_at(
        &self,
        partition: u32,
        state: &PartitionInfo,
        unix_ms: i64,
        inclusive: bool,
    ) -> Result<i64, HubError> {
        let (mut low, mut high) = (state.begin_sequence, state.last_sequence + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let Some(m) = self.store().read_partition(partition, mid, 1)?.pop() else {
                high = mid;
                continue;
            };
            let at = m.message.enqueued.saturating_mul(1000);
            let after = if inclusive {
                at >= unix_ms
            } else {
                at > unix_ms
            };
            if after {
                high = mid.min(m.sequence);
            } else {
                low = m.sequence + 1;
            }
        }
        Ok(low)
    }

    /// The consumer groups, `$Default` first.
    pub fn consumer_groups(&self, who: &Principal) -> Result<Vec<ConsumerGroupView>, HubError> {
        self.authorize_read(who, "consumerGroups")?;
        let mut groups = vec![ConsumerGroupView {
            name: DEFAULT_CONSUMER_GROUP.into(),
            created: None,
        }];
        groups.extend(
            self.store()
                .list_consumer_groups()?
                .into_iter()
                .map(|(name, created)| ConsumerGroupView {
                    name,
                    created: Some(created),
                }),
        );
        Ok(groups)
    }

    /// Whether a reader's consumer group exists (`$Default`, any case, always does).
    pub fn check_consumer_group(&self, name: &str) -> Result<(), HubError> {
        if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP)
            || self
                .store()
                .list_consumer_groups()?
                .iter()
                .any(|(n, _)| n == name)
        {
            return Ok(());
        }
        Err(HubError::ConsumerGroupNotFound(
            crate::peer_text::escaped(name).into_owned(),
        ))
    }

    /// Adds a consumer group (RegistryWrite).
    pub fn add_consumer_group(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<ConsumerGroupView, HubError> {
        const ACTION: &str = "consumerGroup.add";
        let run = || -> Result<ConsumerGroupView, HubError> {
            who.require(Right::RegistryWrite, "add consumer groups")?;
            if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
                return Err(HubError::ConsumerGroupExists(name.to_string()));
            }
            validate_consumer_group(name)?;
            let created = self.now();
            let audit = self.audit_entry(who, ACTION, &group_target(name), &Ok("added".into()));
            let limit = self.config().consumer_group_limit;
            self.store()
                .insert_consumer_group(name, created, limit, &audit)
                .map_err(|e| match e {
                    StoreError::AlreadyExists => HubError::ConsumerGroupExists(name.to_string()),
                    StoreError::LimitReached { limit } => {
                        HubError::ConsumerGroupLimitReached(limit)
                    }
                    other => other.into(),
                })?;
            Ok(ConsumerGroupView {
                name: name.to_string(),
                created: Some(created),
            })
        };
        run().or_else(|e| self.refuse(who, ACTION, &group_target(name), e))
    }

    /// Deletes a consumer group (RegistryWrite); `$Default` cannot be deleted.
    pub fn delete_consumer_group(&self, who: &Principal, name: &str) -> Result<(), HubError> {
        const ACTION: &str = "consumerGroup.delete";
        let run = || -> Result<(), HubError> {
            who.require(Right::RegistryWrite, "delete consumer groups")?;
            if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
                return Err(HubError::ConsumerGroupInvalid(
                    "$Default cannot be deleted: every event hub has it".into(),
                ));
            }
            let audit = self.audit_entry(who, ACTION, &group_target(name), &Ok("deleted".into()));
            self.store()
                .delete_consumer_group(name, &audit)
                .map_err(|e| match e {
                    StoreError::NotFound => HubError::ConsumerGroupNotFound(
                        crate::peer_text::escaped(name).into_owned(),
                    ),
                    other => other.into(),
                })
        };
        run().or_else(|e| self.refuse(who, ACTION, &group_target(name), e))
    }

    /// Up to `limit` events of one partition from sequence number `from` on.
    pub fn read_partition(
        &self,
        who: &Principal,
        partition: u32,
        from: i64,
        limit: u32,
    ) -> Result<Vec<MessageView>, HubError> {
        self.authorize_read(who, &format!("partition/{partition}"))?;
        Ok(self
            .store()
            .read_partition(partition, from.max(1), limit.clamp(1, 1000))?
            .into_iter()
            .map(MessageView::of)
            .collect())
    }
}
