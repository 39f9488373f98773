//! What there is to mirror: the selected source topics, their target names and partition counts,
//! and the shard count. Refreshed from both clusters' metadata every `refresh_interval_ms`, so a
//! new topic or partition is picked up within that interval (MirrorMaker 2: 10 minutes).
//!
//! Target topics are never created by producing to them (the mirror's clients have
//! `allow.auto.create.topics=false`, since auto-creation would pick the broker's default
//! partition count). Missing topics and partitions are created with the admin API; when the
//! target refuses, the mirror names exactly what an operator must create.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;

use crate::config::{MirrorConfig, Selection};

/// How a selected source topic is mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub target: String,
    /// Partitions that exist on both sides (the target may still lack some of the source's).
    pub partitions: i32,
}

/// A snapshot of what to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The state topic's partition count: the number of shards.
    pub shards: i32,
    /// Source topic => plan.
    pub topics: BTreeMap<String, TopicPlan>,
}

impl Topology {
    /// The (source topic, partition) pairs a shard owns, in a stable order.
    pub fn partitions_of(&self, shard: i32) -> Vec<(String, i32)> {
        let mut owned = Vec::new();
        for (topic, plan) in &self.topics {
            for partition in 0..plan.partitions {
                if shard_of(topic, partition, self.shards) == shard {
                    owned.push((topic.clone(), partition));
                }
            }
        }
        owned
    }
}

/// The shard of a source partition: FNV-1a of the topic name plus the partition number, modulo
/// the shard count. Stable across versions and processes (every instance must agree), and a
/// topic's consecutive partitions land on consecutive shards.
pub fn shard_of(topic: &str, partition: i32, shards: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in topic.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash.wrapping_add(partition as u32) % shards as u32) as i32
}

/// A topic the target lacks (entirely, or some partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub topic: String,
    pub partitions: i32,
    /// Partitions the target has now (0: the topic does not exist).
    pub existing: i32,
    pub compacted: bool,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.existing == 0 {
            write!(f, "topic {} with {} partitions", self.topic, self.partitions)?;
            if self.compacted {
                f.write_str(" and cleanup.policy=compact")?;
            }
            Ok(())
        } else {
            write!(f, "topic {}: add partitions to reach {} (it has {})", self.topic, self.partitions, self.existing)
        }
    }
}

/// One metadata read of both clusters.
pub struct Scan {
    pub topology: Topology,
    /// What the target lacks after any creation attempt.
    pub missing: Vec<Missing>,
}

/// Reads both clusters' metadata and creates what the target lacks (when allowed).
pub struct Scanner {
    config: std::sync::Arc<MirrorConfig>,
    selection: Selection,
    source: BaseConsumer,
    target: BaseConsumer,
    admin: Option<AdminClient<DefaultClientContext>>,
}

/// Which side a metadata read failed on, for readiness.
#[derive(Debug)]
pub enum ScanError {
    Source(anyhow::Error),
    Target(anyhow::Error),
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Scanner {
    pub fn new(config: std::sync::Arc<MirrorConfig>) -> anyhow::Result<Scanner> {
        let selection = config.selection()?;
        let source = crate::clients::metadata_client(&config.source, "source")?;
        let target = crate::clients::metadata_client(&config.target, "target")?;
        let admin = if config.create_topics { Some(crate::clients::admin(&config.target)?) } else { None };
        Ok(Scanner { config, selection, source, target, admin })
    }

    /// Reads both sides; creates missing target topics and partitions when allowed.
    pub fn scan(&self) -> Result<Scan, ScanError> {
        let source = self.source.fetch_metadata(None, METADATA_TIMEOUT).map_err(|e| ScanError::Source(e.into()))?;
        let target = self.target.fetch_metadata(None, METADATA_TIMEOUT).map_err(|e| ScanError::Target(e.into()))?;
        let (mut topology, mut missing) = self.plan(&source, &target);
        if missing.is_empty() || self.admin.is_none() {
            return Ok(Scan { topology, missing });
        }
        if let Err(e) = self.create(&missing) {
            tracing::warn!("the target did not create the missing topics: {e:#}");
        }
        // Read again: whatever the admin API managed to create is now mirrorable.
        let target = self.target.fetch_metadata(None, METADATA_TIMEOUT).map_err(|e| ScanError::Target(e.into()))?;
        (topology, missing) = self.plan(&source, &target);
        Ok(Scan { topology, missing })
    }

    fn plan(&self, source: &Metadata, target: &Metadata) -> (Topology, Vec<Missing>) {
        let target_partitions = |name: &str| {
            target.topics().iter().find(|t| t.name() == name && t.error().is_none()).map_or(0, |t| t.partitions().len() as i32)
        };
        let mut missing = Vec::new();
        let state_topic = self.config.state_topic();
        let shards = target_partitions(&state_topic);
        if shards == 0 {
            missing.push(Missing { topic: state_topic, partitions: self.config.shards, existing: 0, compacted: true });
        }
        let mut topics = BTreeMap::new();
        for topic in source.topics() {
            if topic.error().is_some() || topic.partitions().is_empty() || !self.selection.selects(topic.name()) {
                continue;
            }
            let wanted = topic.partitions().len() as i32;
            let name = self.config.target_topic(topic.name());
            let existing = target_partitions(&name);
            if existing < wanted {
                missing.push(Missing { topic: name.clone(), partitions: wanted, existing, compacted: false });
            }
            if existing > 0 {
                topics.insert(topic.name().to_owned(), TopicPlan { target: name, partitions: existing.min(wanted) });
            }
        }
        (Topology { shards: shards.max(1), topics }, missing)
    }

    fn create(&self, missing: &[Missing]) -> anyhow::Result<()> {
        let Some(admin) = &self.admin else { return Ok(()) };
        let brokers = self.target.fetch_metadata(None, METADATA_TIMEOUT)?.brokers().len().max(1) as i32;
        // Replication factor: the target's broker count capped at 3 (the source's factor is not
        // reliably visible through metadata on every cluster).
        let replication = brokers.min(3);
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)).operation_timeout(Some(ADMIN_TIMEOUT));
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .filter(|m| m.existing == 0)
            .map(|m| {
                let topic = NewTopic::new(&m.topic, m.partitions, TopicReplication::Fixed(replication));
                if m.compacted {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let grow: Vec<NewPartitions<'_>> =
            missing.iter().filter(|m| m.existing > 0).map(|m| NewPartitions::new(&m.topic, m.partitions as usize)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            if !new.is_empty() {
                for result in admin.create_topics(&new, &options).await.context("CreateTopics")? {
                    match result {
                        Ok(topic) => tracing::info!(topic, "created the target topic"),
                        Err((topic, e)) => tracing::warn!(topic, "could not create the target topic: {e}"),
                    }
                }
            }
            if !grow.is_empty() {
                for result in admin.create_partitions(&grow, &options).await.context("CreatePartitions")? {
                    match result {
                        Ok(topic) => tracing::info!(topic, "added partitions to the target topic"),
                        Err((topic, e)) => tracing::warn!(topic, "could not add partitions to the target topic: {e}"),
                    }
                }
            }
            anyhow::Ok(())
        })
    }
}

/// The operator-facing sentence for topics the mirror cannot create.
pub fn missing_message(missing: &[Missing], target: &str) -> String {
    let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
    format!("the target cluster {target} lacks what the mirror needs and could not create it; create: {}", list.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("raw.game", 0, 8), shard_of("raw.game", 0, 8));
        let shards: std::collections::BTreeSet<i32> = (0..8).map(|p| shard_of("raw.game", p, 8)).collect();
        assert_eq!(shards.len(), 8, "consecutive partitions land on distinct shards");
        assert!((0..100).all(|p| (0..4).contains(&shard_of("x", p, 4))));
        // Pinned to the FNV-1a test vector ("a" => 0xe40c292c): instances of different versions
        // must agree on every shard.
        assert_eq!(shard_of("a", 0, 1_000_003), (0xe40c_292c_u32 % 1_000_003) as i32);
        assert_eq!(shard_of("a", 1, 1_000_003), (0xe40c_292c_u32 % 1_000_003) as i32 + 1);
    }

    #[test]
    fn partitions_of_covers_every_partition_once() {
        let topology = Topology {
            shards: 3,
            topics: BTreeMap::from([
                ("a".to_owned(), TopicPlan { target: "a".into(), partitions: 5 }),
                ("b".to_owned(), TopicPlan { target: "x.b".into(), partitions: 2 }),
            ]),
        };
        let mut all: Vec<(String, i32)> = (0..3).flat_map(|s| topology.partitions_of(s)).collect();
        all.sort();
        assert_eq!(all.len(), 7);
        all.dedup();
        assert_eq!(all.len(), 7);
    }

    #[test]
    fn missing_topics_are_named_exactly() {
        let missing = vec![
            Missing { topic: "raw.a".into(), partitions: 4, existing: 0, compacted: false },
            Missing { topic: "raw.b".into(), partitions: 6, existing: 2, compacted: false },
            Missing { topic: "_lp.mirror.default.state".into(), partitions: 8, existing: 0, compacted: true },
        ];
        let text = missing_message(&missing, "r:9092");
        assert!(text.contains("topic raw.a with 4 partitions"), "{text}");
        assert!(text.contains("raw.b: add partitions to reach 6 (it has 2)"), "{text}");
        assert!(text.contains("_lp.mirror.default.state with 8 partitions and cleanup.policy=compact"), "{text}");
    }
}
