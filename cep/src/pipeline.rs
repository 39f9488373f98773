//! The exactly-once loop: one consumer in the group reads the rules' source topics and this
//! group's repartition topics; one transactional producer writes, per batch and in one
//! transaction, the re-keyed events, the matches, the state changelog and the input offsets.
//!
//! Two stages share the loop (Kafka Streams' sub-topologies in one task): a clean record is
//! decoded, evaluated against the rule set, and its hits are re-keyed to
//! `_lp.cep.repartition.<group>.<key path>` partitioned by the key's hash; a re-keyed record
//! advances the counters of its key, which this worker owns because it owns that partition. Both
//! halves commit in the same transactions, so a crash anywhere replays whole batches: the
//! repartition topic and the changelog hold exactly what the committed offsets say was done.
//!
//! Timed rules (event time) add watermark markers to the repartition topics: the first stage
//! writes its source partitions' progress after each batch's events (see `clock`), and the
//! second stage releases held events when a marker moves a rule's watermark; events that come
//! after it passed them go to `cep.late`.
//!
//! An abortable transaction error aborts, rewinds the consumer to the batch's first offsets and
//! restores the owned state from the changelog (the committed truth); a fatal one (fenced by a
//! newer instance with the same transactional id) stops the worker.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::kafka::{
    batch_offsets, commit_transaction, create_topics, end_reader, init_transactions, is_fatal,
    max_record_bytes, read_to_end, records_behind, report_lag, rewind, send_offsets, send_waiting,
    transactional_producer, GroupEvent, KafkaConfig, Partition, RebalanceLog, Role,
};
use logpipe_core::record::{cep_header, cep_repartition_topic, RecordId, CEP_LATE_TOPIC};
use logpipe_core::telemetry::Readiness;
use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::{Progress, SourceClocks};
use crate::decode::{DecodeError, Decoder};
use crate::event::{parse_event_time, EventRef, Hit, Rekeyed};
use crate::field::key_text;
use crate::matches::{self, Match};
use crate::metrics as names;
use crate::replay::{Replayed, Replays};
use crate::rules_store::Rules;
use crate::ruleset::{At, RuleSet};
use crate::state::{KeyedState, NotHeld, Sizes};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Registered by the service at start (with the rules check), so `/ready` is false until the
/// worker has its clients.
pub(crate) const READY_KAFKA: &str = "kafka";
const READY_STORE: &str = "schema_store";
const READY_STATE: &str = "state";
/// How often the state's sizes are measured.
const SIZES_INTERVAL: Duration = Duration::from_secs(1);
/// How often silent source partitions are checked for being caught up (idle).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// At most one log line per rule this often about events refused because a key is full.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The loop's settings.
pub(crate) struct Settings {
    pub(crate) kafka: KafkaConfig,
    pub(crate) group: String,
    pub(crate) transactional_id: String,
    /// Partitions of the repartition, changelog and output topics the worker creates.
    pub(crate) partitions: i32,
    pub(crate) batch_records: usize,
    pub(crate) batch_time: Duration,
    /// A caught-up source partition silent this long follows the wall clock.
    pub(crate) idle_timeout: Duration,
    /// At most one watermark marker per this interval.
    pub(crate) watermark_interval: Duration,
    /// The sequence bound of a rule that gives no `within` (ms).
    pub(crate) default_within: i64,
}

/// What the worker has done per rule version, for `GET /rules/{name}/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RuleStats {
    pub(crate) events_seen: u64,
    pub(crate) events_matched: u64,
    pub(crate) matches_emitted: u64,
    pub(crate) keys_held: u64,
    pub(crate) late_events: u64,
    /// Events held for the watermark and partial sequences.
    pub(crate) events_held: u64,
    /// Events held for the watermark alone.
    pub(crate) events_waiting: u64,
    /// The lowest watermark over this worker's partitions (epoch ms), for timed rules.
    pub(crate) watermark: Option<i64>,
}

/// Per (rule, version), shared with the API.
pub(crate) type Stats = Arc<Mutex<HashMap<(String, u32), RuleStats>>>;

/// A record on its way out (not the changelog, which the state holds).
enum Output {
    Rekeyed {
        topic: String,
        partition: i32,
        key: String,
        value: Vec<u8>,
    },
    Match(Match),
    /// A late event, in the shape of a match record.
    Late(Match),
    /// Source progress for the second stage.
    Marker {
        topic: String,
        partition: i32,
        value: Arc<Vec<u8>>,
    },
}

/// A replay's offsets in one batch: (rule, version) -> first and last offset per partition.
type ReplayOffsets = ((String, u32), BTreeMap<Partition, (i64, i64)>);

/// A clean record, decoded or not.
enum Decoded {
    Event(Value),
    /// Undecodable: counted in the metrics and skipped.
    Skipped,
    /// Shutdown came while the schema store was unreachable.
    Shutdown,
}

/// Counts of one batch, published when it commits.
#[derive(Default)]
struct BatchCounts {
    events: HashMap<String, u64>,
    matched: HashMap<(String, u32), u64>,
    emitted: HashMap<(String, u32), u64>,
    late: HashMap<(String, u32), u64>,
    /// Events a timed rule could not hold: their key's state was full.
    refused: HashMap<(String, u32), u64>,
    undecodable: HashMap<(String, &'static str), u64>,
    unkeyed: HashMap<String, u64>,
}

/// The worker.
pub(crate) struct Worker {
    settings: Settings,
    consumer: StreamConsumer<RebalanceLog>,
    producer: ThreadedProducer<DefaultProducerContext>,
    admin: AdminClient<DefaultClientContext>,
    rules: watch::Receiver<Arc<RuleSet>>,
    /// The rules topic, asked whether a rule write is in flight.
    store: Arc<Rules>,
    set: Arc<RuleSet>,
    decoder: Decoder,
    state: KeyedState,
    /// The first stage's progress per source partition.
    clocks: SourceClocks,
    /// The source partitions this worker owns in the group (and replays).
    sources_owned: BTreeSet<Partition>,
    replays: Replays,
    /// Ownership or rules changed: the replays must follow.
    replays_changed: bool,
    last_idle_check: Instant,
    /// When a rule's refused events were last logged.
    refusals_logged: HashMap<String, Instant>,
    /// The state's sizes, when last measured.
    sizes: Option<(Instant, Sizes)>,
    state_topic: String,
    /// Repartition topic -> the key path it is keyed by.
    key_paths: HashMap<String, String>,
    /// Topics known to exist.
    existing: BTreeSet<String>,
    subscribed: Vec<String>,
    stats: Stats,
    readiness: Readiness,
    shutdown: CancellationToken,
}

impl Worker {
    /// Connects and fences older transactions of the same id, retrying while Kafka is
    /// unreachable; `None` on shutdown meanwhile.
    pub(crate) async fn connect(
        settings: Settings,
        store: Arc<Rules>,
        decoder: Decoder,
        stats: Stats,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<Worker>> {
        readiness.ready(READY_STORE);
        readiness.ready(READY_STATE);
        // The transactional id names this worker uniquely and stably: a restarted worker
        // takes its partitions back at once as the same static member.
        let consumer_config = settings.kafka.client_config(
            &Role::StaticMember {
                group_id: settings.group.clone(),
                instance_id: settings.transactional_id.clone(),
            },
            "logpipe-cep",
        );
        let consumer: StreamConsumer<RebalanceLog> = consumer_config
            .create_with_context(RebalanceLog::counting_losses_as(
                names::RECORDS_LOST_TO_RETENTION,
            ))
            .context("creating the consumer")?;
        let producer_config = settings.kafka.client_config(
            &Role::TransactionalProducer {
                transactional_id: settings.transactional_id.clone(),
            },
            "logpipe-cep",
        );
        let max_entry_bytes = max_record_bytes(&producer_config);
        let producer = transactional_producer(producer_config)
            .context("creating the transactional producer")?;
        let admin: AdminClient<DefaultClientContext> = settings
            .kafka
            .client_config(&Role::Admin, "logpipe-cep")
            .create()
            .context("creating the admin client")?;
        if !init_transactions(&producer, KAFKA_TIMEOUT, &readiness, READY_KAFKA, &shutdown).await? {
            return Ok(None);
        }
        let state_topic = logpipe_core::record::cep_state_topic(&settings.group);
        let rules = store.subscribe();
        let set = rules.borrow().clone();
        let default_within = settings.default_within;
        let replays = Replays::new(settings.kafka.clone(), settings.group.clone());
        let mut worker = Worker {
            settings,
            consumer,
            producer,
            admin,
            rules,
            store,
            set,
            decoder,
            state: KeyedState::new(default_within, max_entry_bytes),
            clocks: SourceClocks::default(),
            sources_owned: BTreeSet::new(),
            replays,
            replays_changed: true,
            last_idle_check: Instant::now(),
            refusals_logged: HashMap::new(),
            sizes: None,
            state_topic,
            key_paths: HashMap::new(),
            existing: BTreeSet::new(),
            subscribed: Vec::new(),
            stats,
            readiness,
            shutdown,
        };
        let changelog = worker.state_topic.clone();
        worker.ensure_topics(&[(changelog, true)]).await?;
        worker.check_changelog()?;
        Ok(Some(worker))
    }

    /// The changelog must have as many partitions as the repartition topics this worker creates:
    /// state of repartition partition p lives in changelog partition p.
    fn check_changelog(&self) -> anyhow::Result<()> {
        let metadata = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_metadata(Some(&self.state_topic), KAFKA_TIMEOUT)
        })?;
        let found = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        anyhow::ensure!(
            found == self.settings.partitions,
            "{} has {found} partitions but `partitions` is {}: the state of repartition partition p lives in changelog partition p, so they must match (set partitions = {found})",
            self.state_topic,
            self.settings.partitions
        );
        Ok(())
    }

    /// Creates the topics that are missing: (name, compacted).
    async fn ensure_topics(&mut self, topics: &[(String, bool)]) -> anyhow::Result<()> {
        // Each name once: rules share output topics, and a CreateTopics request naming a topic
        // twice fails as a whole.
        let mut missing: Vec<&(String, bool)> = Vec::new();
        for topic in topics {
            if !self.existing.contains(&topic.0) && !missing.iter().any(|m| m.0 == topic.0) {
                missing.push(topic);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, compacted)| {
                let topic =
                    NewTopic::new(name, self.settings.partitions, TopicReplication::Fixed(-1));
                if *compacted {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        for (name, result) in create_topics(&self.admin, &new, KAFKA_TIMEOUT)
            .await
            .context("creating topics")?
        {
            match result {
                Ok(()) => {
                    self.existing.insert(name);
                }
                Err(code) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
        Ok(())
    }

    /// Runs until shutdown; the last batch is committed before it returns.
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        self.apply_rules().await?;
        let mut last_lag = Instant::now();
        while !self.shutdown.is_cancelled() {
            if last_lag.elapsed() >= LAG_INTERVAL {
                report_lag(&self.consumer, names::CONSUMER_LAG_RECORDS);
                self.consumer
                    .context()
                    .settle_losses_at_log_start(&self.consumer);
                last_lag = Instant::now();
            }
            let batch = self.gather().await?;
            // Rules change between gathering and counting: a rule put meanwhile counts the
            // records not older than itself, some of which may be in this batch.
            while self.store.writes_in_flight() && !self.shutdown.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if self.rules.has_changed().unwrap_or(false) {
                self.set = self.rules.borrow_and_update().clone();
                self.apply_rules().await?;
                self.replays_changed = true;
            }
            if std::mem::take(&mut self.replays_changed) {
                let sync = tokio::task::block_in_place(|| {
                    self.replays
                        .sync(&self.set, &self.sources_owned, &mut self.clocks)
                });
                if let Err(e) = sync {
                    tracing::warn!("starting replays: {e:#}; retrying");
                    self.replays_changed = true;
                }
            }
            let room = self.settings.batch_records.saturating_sub(batch.len());
            let deadline = Instant::now() + self.settings.batch_time;
            let replayed =
                tokio::task::block_in_place(|| self.replays.poll(room, deadline, &mut self.clocks));
            let started = Instant::now();
            let Some((mut outputs, counts)) = self.process(&batch, &replayed).await? else {
                break;
            };
            self.markers(&mut outputs);
            if batch.is_empty()
                && replayed.is_empty()
                && outputs.is_empty()
                && !self.state.has_changes()
            {
                // Nothing to write, but the gauges and the rules' status (keys and events held)
                // stay current on an idle worker too (measured at most once a second).
                self.publish(counts);
                continue;
            }
            if self.commit(&batch, &replayed, outputs)? {
                self.publish(counts);
                metrics::histogram!(names::BATCH).record(started.elapsed().as_secs_f64());
            }
        }
        tracing::info!("stopping");
        Ok(())
    }

    /// A new rule set: state of inactive versions is dropped (tombstoned in the next commit),
    /// repartition and output topics are created, and the subscription follows the sources.
    async fn apply_rules(&mut self) -> anyhow::Result<()> {
        let set = self.set.clone();
        self.state.retain(&set);
        metrics::gauge!(names::RULES_ACTIVE).set(set.rules().len() as f64);
        let mut topics: Vec<(String, bool)> = Vec::new();
        self.key_paths.clear();
        for key_path in set.key_paths() {
            let topic = cep_repartition_topic(&self.settings.group, &key_path);
            topics.push((topic.clone(), false));
            self.key_paths.insert(topic, key_path);
        }
        for rule in set.rules() {
            topics.push((rule.output_topic.clone(), false));
        }
        if set.rules().iter().any(|r| r.timing.is_some()) {
            topics.push((CEP_LATE_TOPIC.to_owned(), false));
        }
        self.ensure_topics(&topics).await?;
        let mut wanted: Vec<String> = set.sources().into_iter().collect();
        wanted.extend(self.key_paths.keys().cloned());
        wanted.sort();
        if wanted != self.subscribed {
            if wanted.is_empty() {
                tracing::info!("no rules: unsubscribing");
                self.consumer.unsubscribe();
            } else {
                tracing::info!(topics = ?wanted, "subscribing");
                let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
                self.consumer.subscribe(&names).context("subscribing")?;
            }
            self.subscribed = wanted;
        }
        // With no rules there is nothing to do, which is working as asked.
        self.readiness.ready(READY_KAFKA);
        Ok(())
    }

    /// Takes up to `batch_records` records: after the first one (waited for at most five times
    /// `batch_time`, so rule changes are noticed), those already fetched, for at most
    /// `batch_time`. A batch ends as soon as the consumer has nothing more, so at a trickle an
    /// event waits for no timer.
    async fn gather(&mut self) -> anyhow::Result<Vec<OwnedMessage>> {
        let mut batch: Vec<OwnedMessage> = Vec::new();
        if self.subscribed.is_empty() {
            // No rules: nothing to read until some arrive.
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                // `changed` marks the new set seen; marked unseen again, `run` applies it.
                _ = self.rules.changed() => self.rules.mark_changed(),
            }
            return Ok(batch);
        }
        let mut deadline = None;
        while batch.len() < self.settings.batch_records {
            let wait = if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            } else if self.replays.active() {
                // History is waiting: do not wait for live records.
                Duration::from_millis(1)
            } else if deadline.is_none() {
                self.settings.batch_time * 5
            } else {
                Duration::ZERO
            };
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
                r = tokio::time::timeout(wait, self.consumer.recv()) => r.map(|r| r.map(|m| m.detach())),
            };
            // Records gathered from a revoked partition are dropped: its next owner reads them
            // from the committed offset.
            let revoked = self.handle_group_events()?;
            // A restore cut short by shutdown left partial state: count nothing more with it.
            if self.shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            if !revoked.is_empty() {
                batch.retain(|m| {
                    !revoked
                        .iter()
                        .any(|(t, p)| t == m.topic() && *p == m.partition())
                });
            }
            match received {
                Err(_elapsed) => break,
                Ok(Ok(message)) => {
                    deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.settings.batch_time
                    });
                    self.readiness.ready(READY_KAFKA);
                    batch.push(message);
                }
                Ok(Err(e)) => {
                    tracing::warn!("consumer: {e}");
                    self.readiness
                        .not_ready(READY_KAFKA, format!("consumer: {e}"));
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Acts on rebalances; returns the partitions revoked.
    fn handle_group_events(&mut self) -> anyhow::Result<Vec<Partition>> {
        let mut revoked = Vec::new();
        for event in self.consumer.context().take() {
            match event {
                GroupEvent::Revoked(list) => {
                    for owned in &list {
                        self.state.release(owned);
                        self.clocks.release(owned);
                        self.sources_owned.remove(owned);
                    }
                    self.replays_changed = true;
                    revoked.extend(list);
                }
                GroupEvent::Assigned(list) => {
                    for source in list.iter().filter(|(t, _)| !self.key_paths.contains_key(t)) {
                        let paths = self.set.clock_names(&source.0);
                        self.clocks.start("", source, &paths);
                        self.sources_owned.insert(source.clone());
                    }
                    self.replays_changed = true;
                    let owned: Vec<Partition> = list
                        .into_iter()
                        .filter(|(topic, _)| self.key_paths.contains_key(topic))
                        .collect();
                    for (topic, partition) in &owned {
                        self.state
                            .own((topic.clone(), *partition), &self.key_paths[topic]);
                    }
                    self.restore(&owned)?;
                }
            }
        }
        Ok(revoked)
    }

    /// Restores the state of `owned` repartition partitions from the changelog.
    fn restore(&mut self, owned: &[Partition]) -> anyhow::Result<()> {
        let partitions: BTreeSet<i32> = owned.iter().map(|(_, p)| *p).collect();
        if partitions.is_empty() {
            return Ok(());
        }
        self.readiness
            .not_ready(READY_STATE, "restoring state from the changelog");
        let started = Instant::now();
        let reader = end_reader(self.settings.kafka.client_config(
            &Role::Consumer {
                group_id: format!("{}.restore", self.settings.group),
            },
            "logpipe-cep-restore",
        ))
        .context("creating the state reader")?;
        let from: Vec<(i32, Offset)> = partitions.iter().map(|p| (*p, Offset::Beginning)).collect();
        let group = self.settings.group.clone();
        let set = self.set.clone();
        let state = &mut self.state;
        let result = tokio::task::block_in_place(|| {
            read_to_end(
                &reader,
                &self.state_topic,
                &from,
                Duration::from_secs(300),
                Some(&self.shutdown),
                |m| {
                    if let Some(key) = m.key() {
                        state.restore(
                            m.partition(),
                            key,
                            m.payload(),
                            |k| cep_repartition_topic(&group, k),
                            &set,
                        );
                    }
                    Ok(())
                },
            )
        });
        // Stopping while restoring is a graceful stop: nothing is counted after it (see
        // `gather`), and the next owner restores again.
        if result.is_err() && self.shutdown.is_cancelled() {
            tracing::info!(partitions = ?partitions, "shutdown while restoring state");
            return Ok(());
        }
        let records = result.context("restoring state from the changelog")?;
        let elapsed = started.elapsed();
        metrics::histogram!(names::STATE_RESTORE).record(elapsed.as_secs_f64());
        tracing::info!(partitions = ?partitions, records, ?elapsed, "state restored");
        self.readiness.ready(READY_STATE);
        Ok(())
    }

    /// Runs both stages over a batch and the replayed records. `None` when shutdown came while
    /// the schema store was unreachable.
    async fn process(
        &mut self,
        batch: &[OwnedMessage],
        replayed: &[Replayed],
    ) -> anyhow::Result<Option<(Vec<Output>, BatchCounts)>> {
        let mut outputs = Vec::new();
        let mut counts = BatchCounts::default();
        let mut hits: Vec<(usize, u32)> = Vec::new();
        let set = self.set.clone();
        for message in batch {
            let topic = message.topic();
            let payload = message.payload().unwrap_or_default();
            if self.key_paths.contains_key(topic) {
                self.count(&set, message, payload, &mut outputs, &mut counts);
                continue;
            }
            *counts.events.entry(topic.to_owned()).or_default() += 1;
            let source: Partition = (topic.to_owned(), message.partition());
            self.clocks.touch("", &source);
            let event = match self.decode(message, &mut counts).await? {
                Decoded::Event(event) => event,
                Decoded::Skipped => continue,
                Decoded::Shutdown => return Ok(None),
            };
            let at = At {
                partition: message.partition(),
                offset: message.offset(),
                record_ms: message.timestamp().to_millis().unwrap_or(0),
            };
            for path in set.clock_paths(topic) {
                let t = path
                    .get(&event)
                    .and_then(parse_event_time)
                    .unwrap_or(at.record_ms);
                self.clocks.observe("", &source, path.as_str(), t);
            }
            set.evaluate(topic, &event, &at, &mut hits);
            self.rekey(
                &set,
                message,
                &event,
                at.record_ms,
                &hits,
                &mut outputs,
                &mut counts,
            );
        }
        for replayed in replayed {
            let message = &replayed.message;
            let Some(r) = set.index_of(&replayed.rule.name, replayed.rule.version) else {
                continue;
            };
            let event = match self.decode(message, &mut counts).await? {
                Decoded::Event(event) => event,
                Decoded::Skipped => continue,
                Decoded::Shutdown => return Ok(None),
            };
            let record_ms = message.timestamp().to_millis().unwrap_or(0);
            let rule = &set.rules()[r];
            let t = rule
                .event_time
                .get(&event)
                .and_then(parse_event_time)
                .unwrap_or(record_ms);
            let source: Partition = (message.topic().to_owned(), message.partition());
            self.clocks
                .observe(&replayed.lane, &source, rule.event_time.as_str(), t);
            set.evaluate_rule(r, message.topic(), &event, &mut hits);
            self.rekey(
                &set,
                message,
                &event,
                record_ms,
                &hits,
                &mut outputs,
                &mut counts,
            );
        }
        Ok(Some((outputs, counts)))
    }

    /// Decodes a clean record, pausing while the schema store is unreachable.
    async fn decode(
        &mut self,
        message: &OwnedMessage,
        counts: &mut BatchCounts,
    ) -> anyhow::Result<Decoded> {
        let topic = message.topic();
        let payload = message.payload().unwrap_or_default();
        let decoded = loop {
            match self.decoder.decode(payload).await {
                Ok(event) => break Decoded::Event(event),
                Err(DecodeError::Unavailable(why)) => {
                    if !self.pause(&why).await {
                        return Ok(Decoded::Shutdown);
                    }
                }
                Err(e) => {
                    tracing::debug!(
                        topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        "not counted: {e}"
                    );
                    *counts
                        .undecodable
                        .entry((topic.to_owned(), e.kind()))
                        .or_default() += 1;
                    break Decoded::Skipped;
                }
            }
        };
        self.readiness.ready(READY_STORE);
        Ok(decoded)
    }

    /// First stage: the hits of one event, one re-keyed record per key path.
    #[allow(clippy::too_many_arguments)]
    fn rekey(
        &self,
        set: &RuleSet,
        message: &OwnedMessage,
        event: &Value,
        record_ms: i64,
        hits: &[(usize, u32)],
        outputs: &mut Vec<Output>,
        counts: &mut BatchCounts,
    ) {
        if hits.is_empty() {
            return;
        }
        let id = event_id(message);
        // (key path, key) -> hits; a BTreeMap so the records go out in a stable order.
        let mut by_key: BTreeMap<(&str, String), Rekeyed> = BTreeMap::new();
        for (r, steps) in hits {
            let rule = &set.rules()[*r];
            let event_time = rule
                .event_time
                .get(event)
                .and_then(parse_event_time)
                .unwrap_or(record_ms);
            if rule
                .timing
                .as_ref()
                .is_some_and(|t| !t.scheduled(event_time))
            {
                continue;
            }
            let Some(key) = rule.key.get(event).and_then(key_text) else {
                *counts.unkeyed.entry(rule.name.clone()).or_default() += 1;
                continue;
            };
            *counts
                .matched
                .entry((rule.name.clone(), rule.version))
                .or_default() += 1;
            let entry = by_key
                .entry((rule.key.as_str(), key))
                .or_insert_with(|| Rekeyed {
                    hits: Vec::new(),
                    event: EventRef {
                        id: id.clone(),
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        event_time,
                    },
                });
            // Rules reading another event-time field carry their own time.
            let time = (entry.event.event_time != event_time).then_some(event_time);
            entry.hits.push(Hit {
                rule: rule.name.clone(),
                version: rule.version,
                steps: *steps,
                time,
            });
        }
        for ((key_path, key), rekeyed) in by_key {
            outputs.push(Output::Rekeyed {
                topic: cep_repartition_topic(&self.settings.group, key_path),
                partition: partition_for(&key, self.settings.partitions),
                value: serde_json::to_vec(&rekeyed).expect("a re-keyed record serializes"),
                key,
            });
        }
    }

    /// Second stage: a re-keyed record advances its key's counters, or is held for the
    /// watermark; a marker moves the watermark.
    fn count(
        &mut self,
        set: &RuleSet,
        message: &OwnedMessage,
        payload: &[u8],
        outputs: &mut Vec<Output>,
        counts: &mut BatchCounts,
    ) {
        let owned = (message.topic().to_owned(), message.partition());
        let is_marker = message
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == cep_header::WATERMARK));
        if is_marker {
            let Some(marker) = read_internal::<Vec<Progress>>(message, payload, "watermark marker")
            else {
                return;
            };
            for (rule, key, (completed, last)) in self.state.advance_clocks(&owned, &marker, set) {
                outputs.push(Output::Match(matches::build(
                    &rule, &key, &completed, &last,
                )));
                *counts
                    .emitted
                    .entry((rule.name.clone(), rule.version))
                    .or_default() += 1;
            }
            return;
        }
        let Some(rekeyed) = read_internal::<Rekeyed>(message, payload, "re-keyed record") else {
            return;
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default());
        for hit in &rekeyed.hits {
            let Some(rule) = set.get(&hit.rule, hit.version) else {
                continue;
            };
            // The event's time by this rule's event-time field.
            let event = match hit.time {
                Some(event_time) => Cow::Owned(EventRef {
                    event_time,
                    ..rekeyed.event.clone()
                }),
                None => Cow::Borrowed(&rekeyed.event),
            };
            if rule.timing.is_some() {
                let held =
                    self.state
                        .hold(&owned, rule, &key, hit.steps, event.clone().into_owned());
                let counter = match held {
                    Ok(()) => continue,
                    Err(NotHeld::Late(late)) => {
                        outputs.push(Output::Late(matches::late(rule, &key, &event, late)));
                        &mut counts.late
                    }
                    Err(NotHeld::KeyStateFull { bytes }) => {
                        let logged = self
                            .refusals_logged
                            .entry(rule.name.clone())
                            .or_insert_with(|| Instant::now() - REFUSAL_LOG_EVERY);
                        if logged.elapsed() >= REFUSAL_LOG_EVERY {
                            *logged = Instant::now();
                            tracing::warn!(
                                rule = rule.name,
                                key = %key,
                                bytes,
                                "a key's held events would outgrow a changelog record: its events go to {CEP_LATE_TOPIC} uncounted until the watermark releases what it holds (logged once a minute per rule; each counted in {})",
                                names::RULE_EVENTS_REFUSED
                            );
                        }
                        outputs.push(Output::Late(matches::state_full(rule, &key, &event, bytes)));
                        &mut counts.refused
                    }
                };
                *counter
                    .entry((rule.name.clone(), rule.version))
                    .or_default() += 1;
                continue;
            }
            if let Some(completed) = self.state.advance(&owned, rule, &key, hit.steps, &event) {
                outputs.push(Output::Match(matches::build(
                    rule, &key, &completed, &event,
                )));
                *counts
                    .emitted
                    .entry((rule.name.clone(), rule.version))
                    .or_default() += 1;
            }
        }
    }

    /// Appends the first stage's watermark markers, one per partition of each repartition topic
    /// that timed rules count from, when the progress of a source partition moved (idle ones
    /// follow the wall clock once confirmed caught up).
    fn markers(&mut self, outputs: &mut Vec<Output>) {
        let key_paths = self.set.timed_key_paths();
        if key_paths.is_empty() {
            return;
        }
        if self.last_idle_check.elapsed() >= IDLE_CHECK {
            self.last_idle_check = Instant::now();
            let now_ms = crate::rules_store::now_ms();
            for source in self.clocks.silent(self.settings.idle_timeout) {
                let paths = self.set.clock_names(&source.0);
                if !paths.is_empty()
                    && records_behind(&self.consumer, &source.0, source.1) == Some(0)
                {
                    self.clocks
                        .idle(&source, &paths, now_ms, self.settings.idle_timeout);
                }
            }
        }
        let Some(marker) = self.clocks.marker(self.settings.watermark_interval) else {
            return;
        };
        let value = Arc::new(serde_json::to_vec(&marker).expect("a marker serializes"));
        for key_path in key_paths {
            let topic = cep_repartition_topic(&self.settings.group, &key_path);
            for partition in 0..self.settings.partitions {
                outputs.push(Output::Marker {
                    topic: topic.clone(),
                    partition,
                    value: value.clone(),
                });
            }
        }
    }

    /// Waits while the schema store is unreachable; false on shutdown.
    async fn pause(&mut self, why: &str) -> bool {
        tracing::warn!("schema store unavailable: {why}; pausing");
        self.readiness.not_ready(READY_STORE, why.to_owned());
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_millis(500)) => true,
        }
    }

    /// Writes a batch in one transaction. True when committed; false when aborted (the consumer
    /// is rewound and the state restored from the changelog).
    fn commit(
        &mut self,
        batch: &[OwnedMessage],
        replayed: &[Replayed],
        outputs: Vec<Output>,
    ) -> anyhow::Result<bool> {
        let offsets = batch_offsets(batch);
        self.consumer.context().settle_losses(&offsets);
        let mut replay_offsets: BTreeMap<(String, u32), Vec<OwnedMessage>> = BTreeMap::new();
        for r in replayed {
            replay_offsets
                .entry((r.rule.name.clone(), r.rule.version))
                .or_default()
                .push(r.message.clone());
        }
        let replay_offsets: Vec<ReplayOffsets> = replay_offsets
            .into_iter()
            .map(|(id, messages)| (id, batch_offsets(&messages)))
            .collect();
        let changes = self.state.take_changes();
        let result = tokio::task::block_in_place(|| {
            self.transaction(&offsets, &replay_offsets, &outputs, &changes)
        });
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_fatal(&e) => {
                Err(e).context("transaction failed fatally (fenced by a newer instance?)")
            }
            Err(e) => {
                tracing::warn!("transaction failed: {e}; aborting and reading the batch again");
                metrics::counter!(names::TRANSACTIONS_ABORTED).increment(1);
                tokio::task::block_in_place(|| self.producer.abort_transaction(KAFKA_TIMEOUT))
                    .context("aborting the transaction")?;
                self.clocks.resend();
                // Replays resume from their committed offsets and report again.
                self.replays.reset();
                self.clocks.forget_replays();
                self.replays_changed = true;
                rewind(&self.consumer, &offsets, KAFKA_TIMEOUT);
                let owned: Vec<(Partition, String)> = self.state.owned();
                self.state.clear();
                for (partition, key_path) in &owned {
                    self.state.own(partition.clone(), key_path);
                }
                let partitions: Vec<Partition> = owned.into_iter().map(|(p, _)| p).collect();
                self.restore(&partitions)?;
                Ok(false)
            }
        }
    }

    fn transaction(
        &self,
        offsets: &BTreeMap<Partition, (i64, i64)>,
        replay_offsets: &[ReplayOffsets],
        outputs: &[Output],
        changes: &BTreeMap<(i32, Vec<u8>), Option<Vec<u8>>>,
    ) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        for output in outputs {
            match output {
                Output::Rekeyed {
                    topic,
                    partition,
                    key,
                    value,
                } => {
                    self.send(
                        BaseRecord::to(topic)
                            .partition(*partition)
                            .key(key.as_bytes())
                            .payload(value.as_slice()),
                    )?;
                }
                Output::Marker {
                    topic,
                    partition,
                    value,
                } => {
                    self.send(
                        BaseRecord::to(topic)
                            .partition(*partition)
                            .payload(value.as_slice())
                            .headers(OwnedHeaders::new().insert(Header {
                                key: cep_header::WATERMARK,
                                value: Some("1"),
                            })),
                    )?;
                }
                Output::Match(m) | Output::Late(m) => {
                    let headers = m.headers.iter().fold(
                        OwnedHeaders::new_with_capacity(3),
                        |h, (key, value)| {
                            h.insert(Header {
                                key,
                                value: Some(value.as_bytes()),
                            })
                        },
                    );
                    self.send(
                        BaseRecord::to(&m.topic)
                            .key(m.key.as_bytes())
                            .payload(m.value.as_slice())
                            .headers(headers),
                    )?;
                }
            }
        }
        for ((partition, key), value) in changes {
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.state_topic)
                .partition(*partition)
                .key(key.as_slice());
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            self.send(record)?;
        }
        if !offsets.is_empty() {
            send_offsets(&self.producer, &self.consumer, offsets, KAFKA_TIMEOUT)?;
        }
        // Each replay's progress commits with its group, in the same transaction.
        for ((rule, version), offsets) in replay_offsets {
            if let Some(consumer) = self.replays.consumer(rule, *version) {
                send_offsets(&self.producer, consumer, offsets, KAFKA_TIMEOUT)?;
            }
        }
        commit_transaction(&self.producer, KAFKA_TIMEOUT)
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        send_waiting(&self.producer, record, KAFKA_TIMEOUT)
    }

    /// Publishes a committed batch's counts.
    fn publish(&mut self, counts: BatchCounts) {
        for (topic, n) in &counts.events {
            metrics::counter!(names::EVENTS, "topic" => topic.clone()).increment(*n);
        }
        for ((topic, kind), n) in counts.undecodable {
            metrics::counter!(names::EVENTS_UNDECODABLE, "topic" => topic, "reason" => kind)
                .increment(n);
        }
        for (rule, n) in counts.unkeyed {
            metrics::counter!(names::EVENTS_UNKEYED, "rule" => rule).increment(n);
        }
        // Measuring walks every key: once a second is enough for gauges and the status.
        if self
            .sizes
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= SIZES_INTERVAL)
        {
            self.sizes = Some((Instant::now(), self.state.sizes(&self.set)));
        }
        let Some((_, sizes)) = &self.sizes else {
            return;
        };
        metrics::gauge!(names::STATE_BYTES).set(sizes.bytes as f64);
        let now_ms = crate::rules_store::now_ms();
        let mut stats = self.stats.lock().expect("stats lock");
        stats.retain(|(name, version), _| self.set.get(name, *version).is_some());
        for rule in self.set.rules() {
            let id = (rule.name.clone(), rule.version);
            let seen: u64 = rule
                .sources
                .iter()
                .filter_map(|t| counts.events.get(t))
                .sum();
            let matched = counts.matched.get(&id).copied().unwrap_or(0);
            let emitted = counts.emitted.get(&id).copied().unwrap_or(0);
            let late = counts.late.get(&id).copied().unwrap_or(0);
            let refused = counts.refused.get(&id).copied().unwrap_or(0);
            let held = sizes.keys.get(&rule.name).copied().unwrap_or(0) as u64;
            let events_held = sizes.pending.get(&rule.name).copied().unwrap_or(0) as u64;
            let events_waiting = sizes.waiting.get(&rule.name).copied().unwrap_or(0) as u64;
            let watermark = sizes.watermarks.get(&id).copied();
            let label = rule.name.clone();
            if rule.timing.is_some() {
                metrics::counter!(names::RULE_EVENTS_LATE, "rule" => label.clone()).increment(late);
                metrics::counter!(names::RULE_EVENTS_REFUSED, "rule" => label.clone(), "reason" => "key_state_full")
                    .increment(refused);
                metrics::gauge!(names::RULE_EVENTS_HELD, "rule" => label.clone())
                    .set(events_held as f64);
                if let Some(watermark) = watermark {
                    metrics::gauge!(names::RULE_WATERMARK_LAG, "rule" => label.clone())
                        .set((now_ms - watermark) as f64 / 1000.0);
                }
            }
            metrics::counter!(names::RULE_EVENTS_EVALUATED, "rule" => label.clone())
                .increment(seen);
            metrics::counter!(names::RULE_EVENTS_MATCHED, "rule" => label.clone())
                .increment(matched);
            metrics::counter!(names::RULE_MATCHES_EMITTED, "rule" => label.clone())
                .increment(emitted);
            metrics::gauge!(names::RULE_KEYS_HELD, "rule" => label).set(held as f64);
            let entry = stats.entry(id).or_default();
            entry.events_seen += seen;
            entry.events_matched += matched;
            entry.matches_emitted += emitted;
            entry.keys_held = held;
            entry.late_events += late;
            entry.events_held = events_held;
            entry.events_waiting = events_waiting;
            entry.watermark = watermark;
        }
    }
}

/// A repartition topic's record (`what` it is, for the log); an unreadable one (written by a
/// newer worker, say) is logged and skipped.
fn read_internal<T: serde::de::DeserializeOwned>(
    message: &OwnedMessage,
    payload: &[u8],
    what: &str,
) -> Option<T> {
    serde_json::from_slice(payload)
        .map_err(|e| {
            tracing::error!(
                topic = message.topic(),
                offset = message.offset(),
                "unreadable {what}, skipped: {e}"
            );
        })
        .ok()
}

/// The repartition partition of a key: stable across workers and restarts.
pub(crate) fn partition_for(key: &str, partitions: i32) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % partitions.max(1) as u64) as i32
}

/// The record contract's unique id as `<host>/<file>/<offset>`, or `<topic>/<partition>/<offset>`
/// for a record produced without the `lp.*` headers.
fn event_id(message: &OwnedMessage) -> String {
    let pairs = message
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|h| (h.key, h.value));
    match RecordId::from_headers(pairs) {
        Ok(Some(id)) => format!("{}/{}/{}", id.host, id.file.to_hex(), id.offset),
        _ => format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_partitions_the_same_way_every_time() {
        let mut seen = [0u32; 8];
        for i in 0..8_000 {
            let p = partition_for(&format!("p-{i}"), 8);
            assert_eq!(p, partition_for(&format!("p-{i}"), 8));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }
}
