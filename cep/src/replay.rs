//! Replays: a rule version created with `from: earliest` or `from: <time>` also reads its
//! sources' history, at full speed, and then goes on live with nothing counted twice.
//!
//! When the version is stored, each source partition gets a boundary: the offset where its
//! history starts (the beginning, or the first record at or after the time) and the partition's
//! end at that moment. The live lane counts the version's events from the end on; the replay
//! lane reads `[start, end)` with a consumer of its own group
//! (`<group>.replay.<rule>.<version>`), whose offsets commit in the worker's transactions beside
//! the live group's, so a crash resumes the replay exactly where the committed state stops. The
//! worker that owns a source partition in the live group replays it, so ownership moves with
//! the group's rebalances.
//!
//! The replayed events carry their own watermark lane (see `clock`): the version's watermark
//! follows its history until every replayed partition is done, then the live clock, so a
//! replay is just faster event time and old events are never late for being old.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::kafka::{KafkaConfig, Partition, Role};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::clock::{replay_lane, SourceClocks};
use crate::rule::Rule;
use crate::ruleset::RuleSet;
use crate::timing::From;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Per source partition (`<topic>/<partition>`): `[start, end)` of the history to replay.
pub(crate) type Boundaries = BTreeMap<String, [i64; 2]>;

/// The boundaries of a new version reading `sources` from `from`.
pub(crate) fn boundaries(
    kafka: &KafkaConfig,
    sources: &[String],
    from: From,
) -> anyhow::Result<Boundaries> {
    let consumer: BaseConsumer = kafka
        .client_config(&Role::Admin, "logpipe-cep-replay-bounds")
        .create()
        .context("creating a metadata client")?;
    let mut out = Boundaries::new();
    for topic in sources {
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .with_context(|| format!("reading the partitions of {topic}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        for partition in 0..partitions as i32 {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
                .with_context(|| format!("reading the end of {topic}/{partition}"))?;
            let start = match from {
                From::Latest => high,
                From::Earliest => low,
                From::At(ms) => {
                    let mut wanted = TopicPartitionList::new();
                    wanted.add_partition_offset(topic, partition, Offset::Offset(ms))?;
                    let found = consumer
                        .offsets_for_times(wanted, KAFKA_TIMEOUT)
                        .with_context(|| {
                            format!("finding {topic}/{partition}'s offset for {ms}")
                        })?;
                    match found.find_partition(topic, partition).map(|p| p.offset()) {
                        Some(Offset::Offset(o)) => o.max(low),
                        // No record at or after the time.
                        _ => high,
                    }
                }
            };
            out.insert(format!("{topic}/{partition}"), [start, high]);
        }
    }
    Ok(out)
}

/// One rule version's replay on this worker.
struct Replay {
    rule: Arc<Rule>,
    lane: String,
    consumer: BaseConsumer,
    /// Assigned partitions and where their history ends.
    reading: BTreeMap<Partition, i64>,
}

impl Replay {
    /// A partition's history is read: stop reading it and mark its lane done.
    fn finish(&mut self, partition: &Partition, clocks: &mut SourceClocks) {
        self.reading.remove(partition);
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(e) = self.consumer.incremental_unassign(&list) {
            tracing::warn!("stopping a finished replay: {e}");
        }
        clocks.finish(&self.lane, partition);
        tracing::info!(
            rule = self.rule.name,
            version = self.rule.version,
            source = format!("{}/{}", partition.0, partition.1),
            "replay done"
        );
    }
}

/// A record of a replay: which rule version's lane it belongs to.
pub(crate) struct Replayed {
    pub(crate) rule: Arc<Rule>,
    pub(crate) lane: String,
    pub(crate) message: OwnedMessage,
}

/// The replays this worker runs.
pub(crate) struct Replays {
    kafka: KafkaConfig,
    group: String,
    running: BTreeMap<(String, u32), Replay>,
}

fn split_source(source: &str) -> Option<Partition> {
    let (topic, partition) = source.rsplit_once('/')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

impl Replays {
    pub(crate) fn new(kafka: KafkaConfig, group: String) -> Replays {
        Replays {
            kafka,
            group,
            running: BTreeMap::new(),
        }
    }

    /// Whether some history is still being read.
    pub(crate) fn active(&self) -> bool {
        self.running.values().any(|r| !r.reading.is_empty())
    }

    /// Forgets every assignment (after an aborted transaction): the next [`Replays::sync`]
    /// resumes from the committed offsets.
    pub(crate) fn reset(&mut self) {
        for replay in self.running.values_mut() {
            let _ = replay.consumer.unassign();
            replay.reading.clear();
        }
        self.running.clear();
    }

    /// Runs the replays of `set`'s versions over the source partitions this worker `owns`:
    /// starts what is missing from each replay group's committed offset (or the history's
    /// start), stops what is no longer owned, and marks partitions with nothing left done.
    pub(crate) fn sync(
        &mut self,
        set: &RuleSet,
        owns: &BTreeSet<Partition>,
        clocks: &mut SourceClocks,
    ) -> anyhow::Result<()> {
        self.running
            .retain(|(name, version), _| set.get(name, *version).is_some());
        for rule in set.rules() {
            if rule.replay_sources.is_empty() {
                continue;
            }
            let id = (rule.name.clone(), rule.version);
            if !self.running.contains_key(&id) {
                let group = format!("{}.replay.{}.{}", self.group, rule.name, rule.version);
                let consumer: BaseConsumer = self
                    .kafka
                    .client_config(&Role::Consumer { group_id: group }, "logpipe-cep-replay")
                    .create()
                    .context("creating a replay consumer")?;
                self.running.insert(
                    id.clone(),
                    Replay {
                        rule: rule.clone(),
                        lane: replay_lane(&rule.name, rule.version),
                        consumer,
                        reading: BTreeMap::new(),
                    },
                );
            }
            let replay = self.running.get_mut(&id).expect("inserted");
            let path = [rule.event_time.as_str().to_owned()];
            let stop: Vec<Partition> = replay
                .reading
                .keys()
                .filter(|p| !owns.contains(*p))
                .cloned()
                .collect();
            if !stop.is_empty() {
                let mut list = TopicPartitionList::new();
                for (topic, partition) in &stop {
                    list.add_partition(topic, *partition);
                    replay.reading.remove(&(topic.clone(), *partition));
                }
                replay.consumer.incremental_unassign(&list)?;
            }
            let mut start = TopicPartitionList::new();
            for source in &rule.replay_sources {
                let Some(partition) = split_source(source) else {
                    continue;
                };
                if !owns.contains(&partition) || replay.reading.contains_key(&partition) {
                    continue;
                }
                let [first, end] = rule.replay[source];
                let mut wanted = TopicPartitionList::new();
                wanted.add_partition(&partition.0, partition.1);
                let committed = replay
                    .consumer
                    .committed_offsets(wanted, KAFKA_TIMEOUT)
                    .context("reading a replay's committed offsets")?;
                let at = match committed
                    .find_partition(&partition.0, partition.1)
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => first,
                };
                clocks.start(&replay.lane, &partition, &path);
                if at >= end {
                    clocks.finish(&replay.lane, &partition);
                    continue;
                }
                tracing::info!(
                    rule = rule.name,
                    version = rule.version,
                    source,
                    from = at,
                    to = end,
                    "replaying"
                );
                start.add_partition_offset(&partition.0, partition.1, Offset::Offset(at))?;
                replay.reading.insert(partition, end);
            }
            if start.count() > 0 {
                replay.consumer.incremental_assign(&start)?;
            }
        }
        Ok(())
    }

    /// Takes up to `max` records of the histories, waiting for them until `deadline` (a batch
    /// of history is as full as a live one, so a replay costs as few transactions); a partition
    /// whose history has been read to its end is marked done.
    pub(crate) fn poll(
        &mut self,
        max: usize,
        deadline: Instant,
        clocks: &mut SourceClocks,
    ) -> Vec<Replayed> {
        let mut out = Vec::new();
        for replay in self.running.values_mut() {
            while out.len() < max && !replay.reading.is_empty() {
                let wait = deadline.saturating_duration_since(Instant::now());
                let Some(result) = replay.consumer.poll(wait) else {
                    // Caught up for now: the history may end with transaction markers, which
                    // move the position but deliver no record.
                    let ended: Vec<Partition> = match replay.consumer.position() {
                        Ok(positions) => replay
                            .reading
                            .iter()
                            .filter(|((topic, partition), end)| {
                                positions
                                    .find_partition(topic, *partition)
                                    .and_then(|p| p.offset().to_raw())
                                    .is_some_and(|at| at >= **end)
                            })
                            .map(|(p, _)| p.clone())
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    for partition in ended {
                        replay.finish(&partition, clocks);
                    }
                    break;
                };
                let message = match result {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        tracing::warn!(rule = replay.rule.name, "replay consumer: {e}");
                        break;
                    }
                };
                let partition = (message.topic().to_owned(), message.partition());
                let Some(&end) = replay.reading.get(&partition) else {
                    continue;
                };
                if message.offset() + 1 >= end {
                    replay.finish(&partition, clocks);
                    if message.offset() >= end {
                        continue;
                    }
                }
                out.push(Replayed {
                    rule: replay.rule.clone(),
                    lane: replay.lane.clone(),
                    message,
                });
            }
        }
        out
    }

    /// The consumer whose group commits `rule` version's replay offsets.
    pub(crate) fn consumer(&self, rule: &str, version: u32) -> Option<&BaseConsumer> {
        self.running
            .get(&(rule.to_owned(), version))
            .map(|r| &r.consumer)
    }
}
