//! What there is to mirror: the selected source topics, their target names and partition counts,
//! and the shard count. Refreshed from both clusters' metadata every `refresh_interval_ms`, so a
//! new topic or partition is picked up within that interval (MirrorMaker 2: 10 minutes).
//!
//! Target topics are never created by producing to them (the mirror's clients have
//! `allow.auto.create.topics=false`, since auto-creation would pick the broker's default
//! partition count). Missing topics are created with the admin API like their source topics
//! (partition count, replication capped at the target's brokers, [`COPIED_CONFIGS`]), missing
//! partitions are added; when the target refuses, the mirror names exactly what an operator
//! must create.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_core::kafka::create_topics;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;

use crate::config::{MirrorConfig, Selection};

/// How a selected source topic is mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicPlan {
    pub(crate) target: String,
    /// Partitions that exist on both sides (the target may still lack some of the source's).
    pub(crate) partitions: i32,
}

/// A snapshot of what to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    /// The state topic's partition count: the number of shards.
    pub(crate) shards: i32,
    /// Source topic => plan.
    pub(crate) topics: BTreeMap<String, TopicPlan>,
}

impl Topology {
    /// The (source topic, partition) pairs a shard owns, in a stable order.
    pub(crate) fn partitions_of(&self, shard: i32) -> Vec<(String, i32)> {
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
pub(crate) fn shard_of(topic: &str, partition: i32, shards: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in topic.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash.wrapping_add(partition as u32) % shards as u32) as i32
}

/// The topic configs copied from a source topic to the target topic the mirror creates, when the
/// source sets them (DescribeConfigs source other than Kafka's built-in default, so a value set
/// on the source topic or by the source brokers' settings is kept, and a default stays the
/// target cluster's own default). Each is here because the target topic must behave like the
/// source topic for its readers:
/// - `cleanup.policy`, `delete.retention.ms`, `min.compaction.lag.ms`, `max.compaction.lag.ms`,
///   `min.cleanable.dirty.ratio`: a compacted topic must stay compacted, with the same tombstone
///   and compaction timing (a consumer that relies on "latest value per key" sees the same).
/// - `retention.ms`, `retention.bytes`: readers of the read side can replay as far back as on
///   the write side (the partition counts are equal, so per-partition bytes mean the same).
/// - `max.message.bytes`: the largest record the source accepted must fit on the target, or
///   the mirror would stop on a record-too-large error.
/// - `compression.type`: the topic owner's choice of stored compression.
/// - `min.insync.replicas`: the durability asked of writes, capped at the target topic's
///   replication factor (a larger value would refuse every write on a smaller target).
/// - `message.timestamp.type`: a LogAppendTime topic stays one, so its records arrive with the
///   timestamp type they had; the target broker stamps them when it appends them (the read
///   side's append time, which is what LogAppendTime means there), replacing the copied value.
///
/// Left out on purpose: the `message.timestamp.*.max.ms` windows
/// (they are checked against the time of the write, so a mirror catching up on old records
/// would be refused), settings naming source brokers (`*.replication.throttled.replicas`),
/// tiered-storage settings (`remote.storage.enable`, `local.retention.*`: the target may have no
/// remote storage), and the storage layout the target's operators own (`segment.*`, `flush.*`,
/// `index.interval.bytes`, `preallocate`, `unclean.leader.election.enable`,
/// `message.format.version`). Configs are copied when the target topic is created and re-synced
/// at every refresh afterwards ([`crate::config_sync`]).
pub(crate) const COPIED_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
];

/// A topic the target lacks (entirely, or some partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    /// Partitions the target has now (0: the topic does not exist).
    pub(crate) existing: i32,
    /// The replication factor to create it with: min(source replication, target brokers).
    pub(crate) replication: i32,
    /// Topic configs to create it with (name, value), in [`COPIED_CONFIGS`] order.
    pub(crate) configs: Vec<(String, String)>,
    /// The source topic (None for the mirror's state topic), whose configs are read.
    pub(crate) source: Option<String>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.existing > 0 {
            return write!(
                f,
                "topic {}: add partitions to reach {} (it has {})",
                self.topic, self.partitions, self.existing
            );
        }
        write!(
            f,
            "topic {} with {} partitions, replication factor {}",
            self.topic, self.partitions, self.replication
        )?;
        for (i, (name, value)) in self.configs.iter().enumerate() {
            write!(f, "{}{name}={value}", if i == 0 { " and " } else { ", " })?;
        }
        Ok(())
    }
}

/// The configs of a source topic to give its target topic: the [`COPIED_CONFIGS`] the source
/// sets (anything but Kafka's built-in default), `min.insync.replicas` capped at `replication`.
pub(crate) fn copied_configs(entries: &[ConfigEntry], replication: i32) -> Vec<(String, String)> {
    COPIED_CONFIGS
        .iter()
        .filter_map(|name| {
            let entry = entries
                .iter()
                .find(|e| e.name == *name && e.source != ConfigSource::Default)?;
            let value = entry.value.clone()?;
            let value = match (*name, value.parse::<i32>()) {
                ("min.insync.replicas", Ok(n)) if n > replication => replication.to_string(),
                _ => value,
            };
            Some(((*name).to_owned(), value))
        })
        .collect()
}

/// One metadata read of both clusters.
pub(crate) struct Scan {
    pub(crate) topology: Topology,
    /// What the target lacks after any creation attempt.
    pub(crate) missing: Vec<Missing>,
}

/// Reads both clusters' metadata and creates what the target lacks (when allowed).
pub(crate) struct Scanner {
    config: std::sync::Arc<MirrorConfig>,
    /// Replaced by a reload ([`Scanner::select`]); the next scan uses it.
    selection: std::sync::RwLock<Selection>,
    source: BaseConsumer,
    target: BaseConsumer,
    /// Reads source topic configs (DescribeConfigs only: nothing is written to the source).
    source_admin: AdminClient<DefaultClientContext>,
    admin: Option<AdminClient<DefaultClientContext>>,
    /// Target topics whose config re-sync was refused, with the changes last refused: each
    /// refusal is logged once.
    sync_refused: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
}

/// Which side a metadata read failed on, for readiness.
#[derive(Debug)]
pub(crate) enum ScanError {
    Source(anyhow::Error),
    Target(anyhow::Error),
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Scanner {
    pub(crate) fn new(config: std::sync::Arc<MirrorConfig>) -> anyhow::Result<Scanner> {
        let selection = config.selection()?;
        let source = crate::clients::metadata_client(&config.source, "source")?;
        let target = crate::clients::metadata_client(&config.target, "target")?;
        let source_admin = crate::clients::admin(&config.source)?;
        let admin = if config.create_topics {
            Some(crate::clients::admin(&config.target)?)
        } else {
            None
        };
        Ok(Scanner {
            config,
            selection: std::sync::RwLock::new(selection),
            source,
            target,
            source_admin,
            admin,
            sync_refused: Default::default(),
        })
    }

    /// Mirrors the topics `selection` selects from the next scan on: newly selected ones are
    /// created and copied from their committed positions (or the start), deselected ones stop
    /// after their shard commits.
    pub(crate) fn select(&self, selection: Selection) {
        *self.selection.write().expect("selection lock") = selection;
    }

    /// Reads both sides; creates missing target topics and partitions when allowed.
    pub(crate) fn scan(&self) -> Result<Scan, ScanError> {
        let source = self
            .source
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|e| ScanError::Source(e.into()))?;
        let target = self
            .target
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|e| ScanError::Target(e.into()))?;
        let (mut topology, mut missing) = self.plan(&source, &target);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return Err(ScanError::Target(e.into())),
        };
        if missing.is_empty() {
            runtime.block_on(self.sync_configs(&topology, &target));
            return Ok(Scan { topology, missing });
        }
        runtime.block_on(self.read_source_configs(&mut missing));
        if self.admin.is_none() {
            return Ok(Scan { topology, missing });
        }
        if let Err(e) = runtime.block_on(self.create(&missing)) {
            tracing::warn!("the target did not create the missing topics: {e:#}");
        }
        // Read again: whatever the admin API managed to create is now mirrorable.
        let target = self
            .target
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|e| ScanError::Target(e.into()))?;
        let configs: Vec<(String, Vec<(String, String)>)> =
            missing.into_iter().map(|m| (m.topic, m.configs)).collect();
        (topology, missing) = self.plan(&source, &target);
        // Keep the configs read above for the error message (no second DescribeConfigs).
        for m in &mut missing {
            if let Some((_, read)) = configs.iter().find(|(topic, _)| *topic == m.topic) {
                m.configs.clone_from(read);
            }
        }
        Ok(Scan { topology, missing })
    }

    fn plan(&self, source: &Metadata, target: &Metadata) -> (Topology, Vec<Missing>) {
        let target_partitions = |name: &str| {
            target
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32)
        };
        let brokers = target.brokers().len().max(1) as i32;
        let mut missing = Vec::new();
        let state_topic = self.config.state_topic();
        let shards = target_partitions(&state_topic);
        if shards == 0 {
            missing.push(Missing {
                topic: state_topic,
                partitions: self.config.shards,
                existing: 0,
                // The state topic has no source: the usual production minimum of 3 replicas.
                replication: brokers.min(3),
                configs: vec![("cleanup.policy".into(), "compact".into())],
                source: None,
            });
        }
        let mut topics = BTreeMap::new();
        let selection = self.selection.read().expect("selection lock");
        for topic in source.topics() {
            if topic.error().is_some()
                || topic.partitions().is_empty()
                || !selection.selects(topic.name())
            {
                continue;
            }
            let wanted = topic.partitions().len() as i32;
            let name = self.config.target_topic(topic.name());
            let existing = target_partitions(&name);
            if existing < wanted {
                let source_replication = topic
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .max()
                    .unwrap_or(0) as i32;
                missing.push(Missing {
                    topic: name.clone(),
                    partitions: wanted,
                    existing,
                    replication: source_replication.clamp(1, brokers),
                    configs: Vec::new(),
                    source: Some(topic.name().to_owned()),
                });
            }
            if existing > 0 {
                topics.insert(
                    topic.name().to_owned(),
                    TopicPlan {
                        target: name,
                        partitions: existing.min(wanted),
                    },
                );
            }
        }
        (
            Topology {
                shards: shards.max(1),
                topics,
            },
            missing,
        )
    }

    /// Writes the copied configs of every mirrored topic whose target differs from its source
    /// (see [`crate::config_sync`]). Failures are logged (a refusal once per topic and change)
    /// and the next refresh tries again.
    async fn sync_configs(&self, topology: &Topology, target: &Metadata) {
        let Some(admin) = &self.admin else {
            return;
        };
        if topology.topics.is_empty() {
            return;
        }
        let replication = |name: &str| {
            target
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .and_then(|t| t.partitions().first())
                .map_or(1, |p| p.replicas().len().max(1) as i32)
        };
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let sources: Vec<ResourceSpecifier<'_>> = topology
            .topics
            .keys()
            .map(|t| ResourceSpecifier::Topic(t))
            .collect();
        let targets: Vec<ResourceSpecifier<'_>> = topology
            .topics
            .values()
            .map(|plan| ResourceSpecifier::Topic(&plan.target))
            .collect();
        let described = tokio::join!(
            self.source_admin.describe_configs(&sources, &options),
            admin.describe_configs(&targets, &options),
        );
        let (sources, targets) = match described {
            (Ok(sources), Ok(targets)) => (sources, targets),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("reading topic configs to re-sync them: {e}");
                return;
            }
        };
        for ((plan, source), target) in topology.topics.values().zip(sources).zip(targets) {
            // A resource's error reads as an empty entry list.
            let (Ok(source), Ok(target)) = (source, target) else {
                continue;
            };
            if source.entries.is_empty() || target.entries.is_empty() {
                continue;
            }
            let Some(crate::config_sync::Resync { set, changes }) = crate::config_sync::plan(
                &source.entries,
                &target.entries,
                replication(&plan.target),
            ) else {
                continue;
            };
            let alter = set.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(&plan.target)),
                |alter, (name, value)| alter.set(name, value),
            );
            let refused = match admin.alter_configs(&[alter], &options).await {
                Ok(results) => match results.into_iter().next() {
                    Some(Ok(_)) => None,
                    Some(Err((_, code))) => Some(code.to_string()),
                    None => Some("no answer".to_owned()),
                },
                Err(e) => Some(e.to_string()),
            };
            let mut warned = self.sync_refused.lock().expect("sync_refused lock");
            match refused {
                None => {
                    warned.remove(&plan.target);
                    tracing::info!(
                        topic = plan.target,
                        ?changes,
                        "target topic configs re-synced with the source"
                    );
                }
                Some(why) if warned.get(&plan.target) != Some(&changes) => {
                    tracing::warn!(topic = plan.target, ?changes, "could not re-sync the target topic's configs (AlterConfigs: {why}); retrying at every refresh");
                    warned.insert(plan.target.clone(), changes);
                }
                Some(_) => {}
            }
        }
    }

    /// Fills in the configs of the source topics whose target topics are to be created. A topic
    /// whose configs cannot be read keeps `source` set and is not created this round: creating
    /// it without them would, say, turn a compacted topic into a deleting one for good.
    async fn read_source_configs(&self, missing: &mut [Missing]) {
        let sources: Vec<String> = missing
            .iter()
            .filter(|m| m.existing == 0)
            .filter_map(|m| m.source.clone())
            .collect();
        if sources.is_empty() {
            return;
        }
        let resources: Vec<ResourceSpecifier<'_>> = sources
            .iter()
            .map(|t| ResourceSpecifier::Topic(t))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let described = match self
            .source_admin
            .describe_configs(&resources, &options)
            .await
        {
            Ok(described) => described,
            Err(e) => {
                tracing::warn!("could not read the source topics' configs (DescribeConfigs): {e}; retrying at the next refresh");
                return;
            }
        };
        for (topic, result) in sources.iter().zip(described) {
            // rdkafka returns a resource's error as an empty entry list: an existing topic always
            // has entries (defaults included).
            let Some(resource) = result.ok().filter(|r| !r.entries.is_empty()) else {
                tracing::warn!(topic, "could not read the source topic's configs; its target topic waits for the next refresh");
                continue;
            };
            if let Some(m) = missing
                .iter_mut()
                .find(|m| m.source.as_deref() == Some(topic.as_str()))
            {
                m.configs = copied_configs(&resource.entries, m.replication);
                m.source = None;
            }
        }
    }

    async fn create(&self, missing: &[Missing]) -> anyhow::Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        // `source` still set: the source configs are unknown, so the topic is not created yet.
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .filter(|m| m.existing == 0 && m.source.is_none())
            .map(|m| {
                m.configs.iter().fold(
                    NewTopic::new(
                        &m.topic,
                        m.partitions,
                        TopicReplication::Fixed(m.replication),
                    ),
                    |topic, (name, value)| topic.set(name, value),
                )
            })
            .collect();
        let grow: Vec<NewPartitions<'_>> = missing
            .iter()
            .filter(|m| m.existing > 0)
            .map(|m| NewPartitions::new(&m.topic, m.partitions as usize))
            .collect();
        if !new.is_empty() {
            for (topic, result) in create_topics(admin, &new, ADMIN_TIMEOUT)
                .await
                .context("CreateTopics")?
            {
                match result {
                    Ok(()) => tracing::info!(topic, "created the target topic"),
                    Err(e) => tracing::warn!(topic, "could not create the target topic: {e}"),
                }
            }
        }
        if !grow.is_empty() {
            for result in admin
                .create_partitions(&grow, &options)
                .await
                .context("CreatePartitions")?
            {
                match result {
                    Ok(topic) => tracing::info!(topic, "added partitions to the target topic"),
                    Err((topic, e)) => {
                        tracing::warn!(topic, "could not add partitions to the target topic: {e}")
                    }
                }
            }
        }
        Ok(())
    }
}

/// The operator-facing sentence for topics the mirror cannot create.
pub(crate) fn missing_message(missing: &[Missing], target: &str) -> String {
    let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
    format!("the target cluster {target} lacks what the mirror needs and could not create it; create: {}", list.join("; "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DescribeConfigs entry, for tests of what is copied.
    pub(crate) fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: false,
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("raw.game", 0, 8), shard_of("raw.game", 0, 8));
        let shards: std::collections::BTreeSet<i32> =
            (0..8).map(|p| shard_of("raw.game", p, 8)).collect();
        assert_eq!(
            shards.len(),
            8,
            "consecutive partitions land on distinct shards"
        );
        assert!((0..100).all(|p| (0..4).contains(&shard_of("x", p, 4))));
        // Pinned to the FNV-1a test vector ("a" => 0xe40c292c): instances of different versions
        // must agree on every shard.
        assert_eq!(
            shard_of("a", 0, 1_000_003),
            (0xe40c_292c_u32 % 1_000_003) as i32
        );
        assert_eq!(
            shard_of("a", 1, 1_000_003),
            (0xe40c_292c_u32 % 1_000_003) as i32 + 1
        );
    }

    #[test]
    fn partitions_of_covers_every_partition_once() {
        let topology = Topology {
            shards: 3,
            topics: BTreeMap::from([
                (
                    "a".to_owned(),
                    TopicPlan {
                        target: "a".into(),
                        partitions: 5,
                    },
                ),
                (
                    "b".to_owned(),
                    TopicPlan {
                        target: "x.b".into(),
                        partitions: 2,
                    },
                ),
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
        let missing =
            |topic: &str, partitions, existing, replication, configs: &[(&str, &str)]| Missing {
                topic: topic.into(),
                partitions,
                existing,
                replication,
                configs: configs
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                source: None,
            };
        let missing = vec![
            missing("raw.a", 4, 0, 2, &[]),
            missing("raw.b", 6, 2, 3, &[]),
            missing(
                "_lp.mirror.default.state",
                8,
                0,
                3,
                &[("cleanup.policy", "compact")],
            ),
            missing(
                "raw.c",
                1,
                0,
                1,
                &[("cleanup.policy", "compact"), ("retention.ms", "1000")],
            ),
        ];
        let text = missing_message(&missing, "r:9092");
        assert!(
            text.contains("topic raw.a with 4 partitions, replication factor 2;"),
            "{text}"
        );
        assert!(
            text.contains("raw.b: add partitions to reach 6 (it has 2)"),
            "{text}"
        );
        assert!(text.contains("_lp.mirror.default.state with 8 partitions, replication factor 3 and cleanup.policy=compact"), "{text}");
        assert!(text.ends_with("raw.c with 1 partitions, replication factor 1 and cleanup.policy=compact, retention.ms=1000"), "{text}");
    }

    #[test]
    fn configs_set_on_the_source_are_copied_and_defaults_are_not() {
        let entries = vec![
            entry("cleanup.policy", "compact", ConfigSource::DynamicTopic),
            entry("retention.ms", "604800000", ConfigSource::Default),
            entry("max.message.bytes", "5000000", ConfigSource::StaticBroker),
            entry(
                "message.timestamp.type",
                "LogAppendTime",
                ConfigSource::DynamicTopic,
            ),
            entry("segment.bytes", "1000000", ConfigSource::DynamicTopic),
            entry("min.insync.replicas", "2", ConfigSource::DynamicTopic),
        ];
        let copied = copied_configs(&entries, 3);
        let expected = |min_isr: &str| -> Vec<(String, String)> {
            [
                ("cleanup.policy", "compact"),
                ("max.message.bytes", "5000000"),
                // A LogAppendTime topic stays one: records keep their timestamp type.
                ("message.timestamp.type", "LogAppendTime"),
                ("min.insync.replicas", min_isr),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
        };
        assert_eq!(copied, expected("2"));
        // On a single-broker target, min.insync.replicas=2 would refuse every write.
        assert_eq!(copied_configs(&entries, 1), expected("1"));
    }
}
