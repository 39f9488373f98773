//! The exactly-once consume-check-produce loop on the read cluster.
//!
//! One consumer in the group, one transactional producer. Records are checked and produced one
//! by one as they are read, inside a transaction opened with the first of them (the mirror's
//! path: librdkafka batches, compresses and sends while the next records are checked, so the
//! commit only waits for the last ones in flight). The transaction ends when nothing more is
//! fetched, or at the batch bounds, and commits the clean records, dead letters, resend-state
//! changes and consumer offsets together (`send_offsets_to_transaction` with the group's
//! metadata, so a zombie from an older group generation is fenced).
//!
//! What may not happen inside a transaction is kept out of it: a record the schema store cannot
//! check now ends the transaction before it, and waits (held) while the loop pauses with no
//! transaction open, so nothing times out; its file's resend mark moves only once it is written.
//! Rebalance callbacks run inside the consumer's poll: one that revokes partitions while a
//! transaction is open aborts the transaction and rewinds every partition it read, and the
//! partitions' owners read those records again from the committed offsets. An abortable
//! transaction error does the same; a fatal one (fenced) stops the loop.
//!
//! The same loop replays a dead-letter topic (`logpipe-validator replay`): input is the DLQ,
//! records are restored to their original form and routed by their original topic, resend
//! removal is off, and the loop ends at the DLQ's end offsets taken at start.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use logpipe_core::kafka::{
    commit_transaction, end_reader, init_transactions, is_fatal, max_record_bytes, partition_count,
    produce_waiting, read_at, read_to_end, record_size, report_lag, rewind, send_offsets,
    send_waiting, transactional_producer, EndReader, GroupEvent, HeaderList, KafkaConfig, Outgoing,
    Partition, RebalanceLog, Role, TakeHeaders,
};
use logpipe_core::record::{
    error_header, header, replay_header, DeadLetterHeaders, ErrorStage, RecordId, ReplayedFrom,
};
use logpipe_core::telemetry::Readiness;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset};
use tokio_util::sync::CancellationToken;

use crate::metrics as names;
use crate::placement::Placement;
use crate::reason::Reason;
use crate::resend_filter::{PartitionKey, ResendFilter};
use crate::route::Routes;
use crate::schema_cache::LookupError;
use crate::topics::{Needed, TopicMaker};
use crate::verdict::{Checker, DeadLetter, Verdict};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
const READY_STORE: &str = "schema_store";
const READY_TOPICS: &str = "topics";
/// The open transaction's deadline is looked at every this many turns of its loop (about one
/// record each), not at every turn: a clock read per record was a measurable share of the loop,
/// and 64 records take well under a millisecond.
const DEADLINE_EVERY: usize = 64;

/// What the loop reads and how it ends.
pub(crate) enum Mode {
    /// The service: every raw topic a route covers, resend removal on, until shutdown.
    Live {
        filter: ResendFilter,
        state_topic: String,
        /// Routes reloaded on SIGHUP, put in force between two transactions.
        reloads: tokio::sync::mpsc::UnboundedReceiver<Routes>,
    },
    /// `replay`: one DLQ topic up to its end offsets at start, records chosen by `select`.
    Replay {
        topic: String,
        select: Box<dyn Fn(&OwnedMessage) -> bool + Send + Sync>,
    },
}

/// The loop's settings.
pub(crate) struct Settings {
    pub(crate) kafka: KafkaConfig,
    /// This loop's readiness check of its Kafka clients.
    pub(crate) kafka_check: String,
    pub(crate) group_id: String,
    pub(crate) transactional_id: String,
    pub(crate) batch_records: usize,
    pub(crate) batch_bytes: usize,
    pub(crate) batch_time: Duration,
    pub(crate) topic_refresh: Duration,
    /// Create missing output and changelog topics ([`crate::topics`]).
    pub(crate) create_topics: bool,
}

/// Counts of a finished replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) clean: u64,
    pub(crate) dead: u64,
    pub(crate) skipped: u64,
}

/// How one transaction ended.
enum Ended {
    /// Nothing was read.
    Empty,
    Committed,
    /// Aborted and rewound: its records are read again.
    Aborted,
    /// Shutdown came during a pause for the schema store.
    Stopped,
}

/// What became of one record.
enum Step {
    /// Produced into the open transaction, or passed over with its offset in it.
    Taken,
    /// The schema store cannot check it now: the transaction ends before it.
    Unavailable(LookupError),
    /// The transaction failed while producing it.
    Failed(KafkaError),
}

/// The open transaction's records.
struct Batch {
    /// Whether the transaction has begun.
    open: bool,
    records: usize,
    /// Input bytes (record values).
    bytes: usize,
    /// (topic, partition, first offset, last offset): a batch holds a few partitions.
    partitions: Vec<(String, i32, i64, i64)>,
    counts: BatchCounts,
    /// Time spent reading, checking records and enqueueing what they became: from the first
    /// record to the end of the batch (a batch ends once nothing more is fetched, so no part of
    /// it waits), not timed per record.
    checking: Duration,
    /// The transaction's start: the batch's total time runs from it, and the schema cache takes
    /// it as the time of every lookup in the batch (a `latest` subject is refreshed every few
    /// seconds, a batch lasts milliseconds).
    started: Instant,
    /// Wall clock at the transaction's start, in ms: the time the resend filter stamps on what
    /// it sees (its entries live for hours, so one clock read per transaction is precise enough).
    started_ms: i64,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            open: false,
            records: 0,
            bytes: 0,
            partitions: Vec::new(),
            counts: BatchCounts::default(),
            checking: Duration::ZERO,
            started: Instant::now(),
            started_ms: now_ms(),
        }
    }

    fn read(&mut self, topic: &str, partition: i32, offset: i64, bytes: usize) {
        self.records += 1;
        self.bytes += bytes;
        match self
            .partitions
            .iter_mut()
            .find(|(t, p, ..)| *p == partition && t == topic)
        {
            Some((_, _, first, last)) => {
                *first = (*first).min(offset);
                *last = (*last).max(offset);
            }
            None => self
                .partitions
                .push((topic.to_owned(), partition, offset, offset)),
        }
    }

    /// First and last offset per partition.
    fn offsets(&self) -> BTreeMap<Partition, (i64, i64)> {
        self.partitions
            .iter()
            .map(|(t, p, first, last)| ((t.clone(), *p), (*first, *last)))
            .collect()
    }
}

/// A record read from Kafka: borrowed from the consumer, or owned while it waits out a pause.
trait Read: TakeHeaders {
    fn owned(&self) -> OwnedMessage;
}

impl Read for BorrowedMessage<'_> {
    fn owned(&self) -> OwnedMessage {
        self.detach()
    }
}

impl Read for OwnedMessage {
    fn owned(&self) -> OwnedMessage {
        self.clone()
    }
}

/// Per-batch counts, published to metrics only once the batch is committed.
#[derive(Default)]
struct BatchCounts {
    /// By source topic, then subject.
    valid: Counts<String, Counts<Arc<str>, u64>>,
    invalid: HashMap<(String, ErrorStage, Reason), u64>,
    dropped_fields: Counts<String, u64>,
    resends: Counts<String, u64>,
    skipped: u64,
}

/// Counted for every record: hashed with foldhash rather than SipHash.
type Counts<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The count of `topic` in `counts`, copying the name only the first time it is counted.
fn count_of<'c, V: Default>(counts: &'c mut Counts<String, V>, topic: &str) -> &'c mut V {
    if !counts.contains_key(topic) {
        counts.insert(topic.to_owned(), V::default());
    }
    counts.get_mut(topic).expect("inserted above")
}

impl BatchCounts {
    fn publish(self, totals: &mut Totals) {
        for (topic, subjects) in self.valid {
            for (subject, n) in subjects {
                metrics::counter!(names::RECORDS_VALID, "topic" => topic.clone(), "subject" => subject.to_string())
                    .increment(n);
                totals.clean += n;
            }
        }
        for ((topic, stage, reason), n) in self.invalid {
            metrics::counter!(names::RECORDS_INVALID, "topic" => topic, "stage" => stage.as_str(), "reason" => reason.as_str())
                .increment(n);
            totals.dead += n;
        }
        for (topic, n) in self.dropped_fields {
            metrics::counter!(names::EXTRA_FIELDS_DROPPED, "topic" => topic).increment(n);
        }
        for (topic, n) in self.resends {
            metrics::counter!(names::REPLAYS_DROPPED_ALIAS, "topic" => topic.clone()).increment(n);
            metrics::counter!(names::RESENDS_DROPPED, "topic" => topic).increment(n);
        }
        totals.skipped += self.skipped;
    }
}

/// The loop.
pub(crate) struct Pipeline {
    settings: Settings,
    mode: Mode,
    checker: Checker,
    /// Shared with the transaction being gathered, whose records borrow from it.
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    producer: ThreadedProducer<DefaultProducerContext>,
    topics: TopicMaker,
    readiness: Readiness,
    shutdown: CancellationToken,
    subscribed: Vec<String>,
    /// Replay mode: end offsets per partition at start; a partition is done at its end.
    ends: BTreeMap<i32, i64>,
    totals: Totals,
    /// The producer's `message.max.bytes`: every output is measured against it first.
    max_record_bytes: usize,
    /// Replay: reads the originals of dead letters written without them (made when needed).
    originals: Option<EndReader>,
    /// A record the schema store could not check; it goes first into the next transaction.
    held: Option<OwnedMessage>,
    /// The clean value being encoded, kept for the next record.
    encoded: Vec<u8>,
    /// Files the resend filter tracked at the last commit (this loop's part of the gauge).
    files: usize,
    /// Output topics' C names and partitions.
    placement: Placement,
}

impl Pipeline {
    /// Connects: creates the clients and fences older transactions of the same id (retrying
    /// while Kafka is unreachable, until shutdown).
    pub(crate) async fn connect(
        settings: Settings,
        mode: Mode,
        checker: Checker,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<Pipeline>> {
        readiness.register(&settings.kafka_check);
        readiness.ready(READY_STORE);
        readiness.ready(READY_TOPICS);
        // The transactional id names this instance uniquely and stably: a restarted validator
        // takes its partitions back at once as the same static member.
        let consumer_role = Role::StaticMember {
            group_id: settings.group_id.clone(),
            instance_id: settings.transactional_id.clone(),
        };
        let mut consumer_config = settings
            .kafka
            .client_config(&consumer_role, "logpipe-validator");
        if let Mode::Replay { .. } = mode {
            // A replay ends at the DLQ's end, also for partitions whose group offset is there.
            consumer_config.set("enable.partition.eof", "true");
        }
        let consumer: StreamConsumer<RebalanceLog> = consumer_config
            .create_with_context(RebalanceLog::counting_losses_as(
                names::RECORDS_LOST_TO_RETENTION,
            ))
            .context("creating the consumer")?;
        let producer_role = Role::TransactionalProducer {
            transactional_id: settings.transactional_id.clone(),
        };
        let producer_config = settings
            .kafka
            .client_config(&producer_role, "logpipe-validator");
        let max_record_bytes = max_record_bytes(&producer_config);
        let topics = TopicMaker::new(&settings.kafka, settings.create_topics, max_record_bytes)
            .context("creating the admin client")?;
        let producer = transactional_producer(producer_config)
            .context("creating the transactional producer")?;
        if !init_transactions(
            &producer,
            KAFKA_TIMEOUT,
            &readiness,
            &settings.kafka_check,
            &shutdown,
        )
        .await?
        {
            return Ok(None);
        }
        let mut pipeline = Pipeline {
            settings,
            mode,
            checker,
            consumer: Arc::new(consumer),
            producer,
            topics,
            readiness,
            shutdown,
            subscribed: Vec::new(),
            ends: BTreeMap::new(),
            totals: Totals::default(),
            max_record_bytes,
            originals: None,
            held: None,
            encoded: Vec::new(),
            files: 0,
            placement: Placement::default(),
        };
        pipeline.prepare().await?;
        Ok(Some(pipeline))
    }

    /// Makes sure the changelog topic exists (live) or takes the DLQ's end offsets (replay).
    async fn prepare(&mut self) -> anyhow::Result<()> {
        match &self.mode {
            Mode::Live { state_topic, .. } => {
                if !self.exists(state_topic, false) {
                    let needed = Needed {
                        name: state_topic.clone(),
                        partitions: 1,
                        compacted: true,
                    };
                    if let Some((_, sentence)) = self.ensure(&[needed]).await.pop() {
                        bail!("{sentence}");
                    }
                }
                Ok(())
            }
            Mode::Replay { topic, .. } => {
                let topic = topic.clone();
                self.take_ends(&topic)
            }
        }
    }

    /// Whether a topic exists with partitions; `may_create` asks through the producer, whose
    /// metadata request lets a broker auto-create the topic.
    fn exists(&self, topic: &str, may_create: bool) -> bool {
        let metadata = tokio::task::block_in_place(|| {
            if may_create {
                self.producer
                    .client()
                    .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            } else {
                self.consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            }
        });
        metadata.is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
    }

    /// [`TopicMaker::ensure`] with this pipeline's clients; returns what is still missing.
    async fn ensure(&self, needed: &[Needed]) -> Vec<(Needed, String)> {
        let may_create = self.topics.creates();
        self.topics
            .ensure(needed, |t| self.exists(t, may_create))
            .await
    }

    /// Replay: the DLQ's end offsets now; the replay stops there.
    fn take_ends(&mut self, topic: &str) -> anyhow::Result<()> {
        let metadata = tokio::task::block_in_place(|| {
            self.consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        })
        .with_context(|| format!("reading metadata of {topic}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty());
        let Some(found) = found else {
            bail!(
                "topic {topic} does not exist on {}",
                self.settings.kafka.bootstrap
            );
        };
        for p in found.partitions() {
            let (low, high) = tokio::task::block_in_place(|| {
                self.consumer.fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)
            })?;
            if high > low {
                self.ends.insert(p.id(), high);
            }
        }
        tracing::info!(topic, ends = ?self.ends, "replaying up to these end offsets");
        Ok(())
    }

    /// Runs until shutdown (live) or the end of the DLQ (replay).
    pub(crate) async fn run(mut self) -> anyhow::Result<Totals> {
        let mut last_refresh: Option<Instant> = None;
        let mut progress = Instant::now();
        loop {
            if self.shutdown.is_cancelled() || self.replay_done() {
                break;
            }
            if let Mode::Live { reloads, .. } = &mut self.mode {
                if let Ok(routes) = reloads.try_recv() {
                    tracing::info!("reload: new routes in force from this batch on");
                    self.checker.set_routes(routes);
                    last_refresh = None;
                }
            }
            if last_refresh.is_none_or(|t| t.elapsed() >= self.settings.topic_refresh) {
                self.refresh_subscription().await?;
                last_refresh = Some(Instant::now());
            }
            match self.transaction().await? {
                Ended::Stopped => break,
                Ended::Empty | Ended::Committed | Ended::Aborted => {}
            }
            if matches!(self.mode, Mode::Replay { .. })
                && progress.elapsed() >= Duration::from_secs(1)
            {
                eprintln!(
                    "replay: {} clean, {} failed again, {} skipped",
                    self.totals.clean, self.totals.dead, self.totals.skipped
                );
                progress = Instant::now();
            }
        }
        tracing::info!(totals = ?self.totals, "stopping");
        Ok(self.totals)
    }

    /// The record a dead letter was written without, from where its `lp.error.*` headers say
    /// it was read; `None` when it is no longer there.
    fn read_original(&mut self, message: &impl Message) -> anyhow::Result<Option<Vec<u8>>> {
        let (Some(topic), Some(partition), Some(offset)) = (
            header_text(message, error_header::TOPIC),
            header_text(message, error_header::PARTITION).and_then(|p| p.parse().ok()),
            header_text(message, error_header::OFFSET).and_then(|o| o.parse().ok()),
        ) else {
            return Ok(None);
        };
        if self.originals.is_none() {
            let config = self.settings.kafka.client_config(
                &Role::Consumer {
                    group_id: format!("{}.originals", self.settings.group_id),
                },
                "logpipe-validator-originals",
            );
            self.originals = Some(end_reader(config).context("creating the originals reader")?);
        }
        let reader = self.originals.as_ref().expect("made above");
        tokio::task::block_in_place(|| read_at(reader, &topic, partition, offset, KAFKA_TIMEOUT))
    }

    fn replay_done(&self) -> bool {
        matches!(self.mode, Mode::Replay { .. }) && self.ends.is_empty()
    }

    /// Subscribes to the topics the routes cover (live) or to the DLQ (replay). A raw topic
    /// whose clean or DLQ topic is missing (and cannot be created) is left out until it exists.
    async fn refresh_subscription(&mut self) -> anyhow::Result<()> {
        let wanted: Vec<String> = match &self.mode {
            Mode::Replay { topic, .. } => vec![topic.clone()],
            Mode::Live { .. } => {
                let partitions = match self.partition_counts() {
                    Ok(partitions) => partitions,
                    Err(e) => {
                        self.readiness
                            .not_ready(&self.settings.kafka_check, format!("metadata: {e}"));
                        tracing::warn!("reading the topic list: {e}");
                        return Ok(());
                    }
                };
                self.placement.update(&partitions);
                let all: Vec<String> = partitions.keys().cloned().collect();
                let mut wanted: Vec<String> = all
                    .iter()
                    .filter(|t| self.checker.routes().reads(t, &all))
                    .cloned()
                    .collect();
                let outputs = self.outputs(&wanted, &partitions);
                let needed: BTreeSet<Needed> = outputs
                    .values()
                    .flatten()
                    .filter(|n| !partitions.contains_key(&n.name))
                    .cloned()
                    .collect();
                let created = !needed.is_empty();
                let mut unusable: Vec<(String, String)> = self
                    .ensure(&needed.into_iter().collect::<Vec<_>>())
                    .await
                    .into_iter()
                    .map(|(topic, sentence)| (topic.name, sentence))
                    .collect();
                if created {
                    // The first records into new outputs already go by their partition counts.
                    match self.partition_counts() {
                        Ok(partitions) => self.placement.update(&partitions),
                        Err(e) => tracing::warn!("reading the topic list again: {e}"),
                    }
                }
                let existing: Vec<String> = outputs
                    .values()
                    .flatten()
                    .map(|o| o.name.clone())
                    .filter(|name| !unusable.iter().any(|(u, _)| u == name))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                unusable.extend(self.topics.too_small(&existing).await);
                if unusable.is_empty() {
                    self.readiness.ready(READY_TOPICS);
                } else {
                    let sentences: Vec<&str> = unusable.iter().map(|(_, s)| s.as_str()).collect();
                    self.readiness.not_ready(READY_TOPICS, sentences.join("; "));
                    wanted.retain(|raw| {
                        !outputs[raw]
                            .iter()
                            .any(|o| unusable.iter().any(|(name, _)| *name == o.name))
                    });
                }
                wanted
            }
        };
        if wanted != self.subscribed {
            tracing::info!(topics = ?wanted, "subscribing");
            if wanted.is_empty() {
                self.consumer.unsubscribe();
            } else {
                let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
                self.consumer.subscribe(&names).context("subscribing")?;
            }
            self.subscribed = wanted;
        }
        if self.subscribed.is_empty() {
            self.readiness
                .not_ready(&self.settings.kafka_check, "no topic matches a route yet");
        } else {
            self.readiness.ready(&self.settings.kafka_check);
        }
        report_lag(&*self.consumer, names::CONSUMER_LAG_RECORDS);
        self.consumer
            .context()
            .settle_losses_at_log_start(&*self.consumer);
        Ok(())
    }

    /// Every topic of the cluster with its partition count.
    fn partition_counts(&self) -> Result<BTreeMap<String, i32>, KafkaError> {
        let metadata =
            tokio::task::block_in_place(|| self.consumer.fetch_metadata(None, KAFKA_TIMEOUT))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }

    /// The clean and DLQ topics of each raw topic, with the raw topic's partition count.
    fn outputs(
        &self,
        raw_topics: &[String],
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, [Needed; 2]> {
        raw_topics
            .iter()
            .filter_map(|raw| {
                let route = self.checker.routes().find(raw)?;
                let n = partitions.get(raw).copied().unwrap_or(1).max(1);
                let need = |name: String| Needed {
                    name,
                    partitions: n,
                    compacted: false,
                };
                Some((
                    raw.clone(),
                    [need(route.clean.render(raw)), need(route.dlq.render(raw))],
                ))
            })
            .collect()
    }

    /// One transaction's worth of records. Each record is checked and produced as soon as it is
    /// read, the transaction opened with the first one, so librdkafka compresses and sends while
    /// the next records are checked, and the commit only waits for the last few in flight. The
    /// transaction commits once the consumer has nothing more fetched (at a trickle a record waits
    /// for no timer; under load batches grow by what arrives while the previous one commits), at
    /// `batch_records` or `batch_bytes`, at `batch_time`, or at shutdown. A record the schema
    /// store cannot check now ends it early: the record is held outside any transaction while the
    /// validator pauses, and goes first into the next one.
    async fn transaction(&mut self) -> anyhow::Result<Ended> {
        let consumer = Arc::clone(&self.consumer);
        let mut batch = Batch::new();
        // When the first record was read, and so when the batch ends at the latest.
        let mut first: Option<(Instant, Instant)> = None;
        let mut paused = None;
        if let Mode::Live { filter, .. } = &mut self.mode {
            filter.expire(batch.started_ms);
        }
        let mut turns = 0usize;
        loop {
            turns += 1;
            if batch.records >= self.settings.batch_records
                || batch.bytes >= self.settings.batch_bytes
                || (turns.is_multiple_of(DEADLINE_EVERY)
                    && first.is_some_and(|(_, deadline)| Instant::now() >= deadline))
            {
                break;
            }
            let step = if let Some(mut held) = self.held.take() {
                let step = self.take(&mut held, &mut batch).await?;
                if let Step::Unavailable(_) = step {
                    self.held = Some(held);
                }
                step
            } else {
                let received = if batch.records == 0 {
                    let wait = self.settings.batch_time * 5;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => None,
                        r = tokio::time::timeout(wait, consumer.recv()) => r.ok(),
                    }
                } else {
                    // Only what is fetched already: no timer per record.
                    tokio::select! {
                        biased;
                        r = consumer.recv() => Some(r),
                        _ = std::future::ready(()) => None,
                    }
                };
                // A rebalance hands partitions to other owners, who read from the committed
                // offsets: an open transaction with records of the old assignment is aborted,
                // and the record this poll returned (it came after the rebalance) is read again.
                let revoked = self.handle_group_events()?;
                if !revoked.is_empty() && batch.records > 0 {
                    if let Some(Ok(message)) = &received {
                        batch.read(message.topic(), message.partition(), message.offset(), 0);
                    }
                    tracing::info!("partitions revoked during a transaction: aborting it");
                    self.abort(&batch.offsets(), None)?;
                    return Ok(Ended::Aborted);
                }
                match received {
                    None => break,
                    Some(Ok(mut message)) => {
                        first.get_or_insert_with(|| {
                            let now = Instant::now();
                            (now, now + self.settings.batch_time)
                        });
                        if !self.wanted(&message) {
                            continue;
                        }
                        let step = self.take(&mut message, &mut batch).await?;
                        if let Step::Unavailable(_) = step {
                            self.held = Some(message.detach());
                        }
                        step
                    }
                    Some(Err(KafkaError::PartitionEOF(partition))) => {
                        self.ends.remove(&partition);
                        if self.replay_done() {
                            break;
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("consumer: {e}");
                        self.readiness
                            .not_ready(&self.settings.kafka_check, format!("consumer: {e}"));
                        break;
                    }
                }
            };
            match step {
                Step::Taken => {}
                Step::Unavailable(why) => {
                    paused = Some(why);
                    break;
                }
                Step::Failed(e) if is_fatal(&e) => {
                    return Err(e)
                        .context("transaction failed fatally (fenced by a newer instance?)")
                }
                Step::Failed(e) => {
                    self.abort(&batch.offsets(), Some(&e))?;
                    return Ok(Ended::Aborted);
                }
            }
        }
        if let Some((first, _)) = first {
            batch.checking = first.elapsed();
        }
        if batch.records > 0 {
            self.readiness.ready(&self.settings.kafka_check);
            if self.checker.store_reachable() {
                self.readiness.ready(READY_STORE);
            } else {
                self.readiness.not_ready(
                    READY_STORE,
                    "schema store unreachable; using cached schemas",
                );
            }
        }
        let ended = if batch.records > 0 {
            self.commit(batch)?
        } else {
            Ended::Empty
        };
        if let Some(why) = paused {
            if !self.pause(&why).await {
                return Ok(Ended::Stopped);
            }
        }
        Ok(ended)
    }

    /// In replay, only records below the end offsets at start are taken (records this replay
    /// dead-letters again land after them).
    /// Live, a record of a topic no longer subscribed (its route removed by a reload, its
    /// partition not revoked yet) is left to the group's committed offset, not checked against
    /// routes it was not read for.
    fn wanted(&mut self, message: &impl Message) -> bool {
        match self.mode {
            Mode::Live { .. } => {
                let topic = message.topic();
                self.subscribed.iter().any(|t| t == topic)
            }
            Mode::Replay { .. } => {
                let Some(&end) = self.ends.get(&message.partition()) else {
                    return false;
                };
                if message.offset() + 1 >= end {
                    self.ends.remove(&message.partition());
                }
                message.offset() < end
            }
        }
    }

    /// Acts on rebalances; returns the partitions revoked.
    fn handle_group_events(&mut self) -> anyhow::Result<Vec<PartitionKey>> {
        let events = self.consumer.context().take();
        let mut revoked = Vec::new();
        for event in events {
            match (event, &mut self.mode) {
                (GroupEvent::Revoked(list), mode) => {
                    if let Mode::Live { filter, .. } = mode {
                        for partition in &list {
                            filter.revoke(partition);
                        }
                    }
                    revoked.extend(list);
                }
                (
                    GroupEvent::Assigned(list),
                    Mode::Live {
                        filter,
                        state_topic,
                        ..
                    },
                ) => {
                    let started = Instant::now();
                    let restored = tokio::task::block_in_place(|| {
                        restore_state(&self.settings, state_topic, &list, filter, &self.shutdown)
                    })?;
                    tracing::info!(partitions = list.len(), records = restored, elapsed = ?started.elapsed(), "resend state restored");
                }
                (GroupEvent::Assigned(_), Mode::Replay { .. }) => {}
            }
        }
        Ok(revoked)
    }

    /// Checks one record and produces its clean record or dead letter into the open transaction
    /// (opening it for the first record). A resend, or in replay a record not selected, is passed
    /// over; either way the record's offset is the transaction's.
    async fn take<M: Read>(&mut self, message: &mut M, batch: &mut Batch) -> anyhow::Result<Step> {
        // A live record's headers move on to its output record (taken before anything borrows
        // the record; reading them again would parse them anew).
        let taken = match self.mode {
            Mode::Live { .. } => message.take_headers(),
            Mode::Replay { .. } => None,
        };
        let message = &*message;
        // rdkafka looks the name up (and checks its UTF-8) at every call.
        let topic = message.topic();
        // In replay, the original record without the previous verdict, from its own topic.
        let (source_topic, headers) = match &self.mode {
            Mode::Replay { select, .. } => {
                if !select(&message.owned()) {
                    batch.counts.skipped += 1;
                    return Ok(self.passed_over(message, batch));
                }
                let original = header_text(message, error_header::TOPIC)
                    .map_or(Cow::Borrowed(topic), Cow::Owned);
                (original, Some(replayed_headers(message)))
            }
            Mode::Live { .. } => (Cow::Borrowed(topic), taken),
        };
        let mut resend_id = None;
        if let Mode::Live { filter, .. } = &self.mode {
            let pairs = headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value));
            match RecordId::from_headers(pairs) {
                Ok(Some(id)) => {
                    if filter.is_resend(topic, message.partition(), &id) {
                        *count_of(&mut batch.counts.resends, topic) += 1;
                        return Ok(self.passed_over(message, batch));
                    }
                    resend_id = Some(id);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(topic, offset = message.offset(), "no resend check: {e}"),
            }
        }
        let original;
        let omitted = matches!(self.mode, Mode::Replay { .. })
            && header_text(message, error_header::OMITTED).is_some();
        // A dead letter written without its record: replay the record where it stays.
        let raw = if omitted {
            match self.read_original(message)? {
                Some(read) => {
                    original = read;
                    &original[..]
                }
                None => {
                    tracing::error!(
                        topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        "the record of this dead letter was written without it and is no longer where its lp.error headers point (retention): it cannot be replayed"
                    );
                    batch.counts.skipped += 1;
                    return Ok(self.passed_over(message, batch));
                }
            }
        } else {
            message.payload().unwrap_or_default()
        };
        // One buffer for every clean value: librdkafka copies what it is given.
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let verdict = match self
            .checker
            .check(&source_topic, raw, &mut encoded, batch.started)
            .await
        {
            Ok(verdict) => verdict,
            Err(unavailable) => {
                self.encoded = encoded;
                return Ok(Step::Unavailable(unavailable));
            }
        };
        // Only a record that is written moves its file's high mark (not one held for a pause).
        if let (Mode::Live { filter, .. }, Some(id)) = (&mut self.mode, &resend_id) {
            filter.mark(topic, message.partition(), id, batch.started_ms);
        }
        let key = message.key();
        let timestamp = message.timestamp().to_millis();
        // A clean record too large to produce would abort every transaction it is in.
        let clean_size = |value: &[u8]| record_size(key, value, headers.as_ref());
        let verdict = match verdict {
            Verdict::Clean {
                subject,
                schema_id,
                dlq,
                ..
            } if clean_size(&encoded) > self.max_record_bytes => Verdict::Dead(DeadLetter {
                topic: Some(dlq),
                stage: ErrorStage::Encode,
                kind: Reason::OutputTooLarge,
                reason: format!(
                    "the clean record would be {} bytes, above the producer's message.max.bytes of {}",
                    clean_size(&encoded),
                    self.max_record_bytes
                ),
                pointer: None,
                subject: Some(subject),
                schema_id: Some(schema_id),
            }),
            verdict => verdict,
        };
        let (output, value, headers) = match verdict {
            Verdict::Clean {
                topic: output,
                subject,
                dropped_fields,
                ..
            } => {
                *count_of(&mut batch.counts.valid, &source_topic)
                    .entry(subject)
                    .or_default() += 1;
                if dropped_fields > 0 {
                    *count_of(&mut batch.counts.dropped_fields, &source_topic) +=
                        dropped_fields as u64;
                }
                (output, &encoded[..], headers.unwrap_or_default())
            }
            Verdict::Dead(mut dead) => {
                if dead.stage == ErrorStage::Parse {
                    if let Some(length) = header_text(message, header::TRUNCATED) {
                        dead.kind = Reason::TooLarge;
                        dead.reason = format!(
                            "{} (the agent cut this line of {length} bytes at its size limit)",
                            dead.reason
                        );
                    }
                }
                *batch
                    .counts
                    .invalid
                    .entry((source_topic.to_string(), dead.stage, dead.kind))
                    .or_default() += 1;
                let output = dead.topic.clone().unwrap_or_else(|| {
                    logpipe_core::record::TopicTemplate::dlq_default()
                        .render(&source_topic)
                        .into()
                });
                let base = headers.unwrap_or_default();
                let mut headers =
                    dead_letter_headers(base.clone(), &dead, message, &source_topic, None);
                let mut value = raw;
                let size = record_size(key, value, Some(&headers));
                if size > self.max_record_bytes {
                    // Never stall the partition: the dead letter goes without the record,
                    // which stays where its lp.error.* headers point.
                    dead.reason = format!(
                        "{}; with the record ({} bytes) this dead letter would be {size} bytes, above the producer's message.max.bytes of {}, so it is written without it: the record stays in the topic, partition and offset its lp.error headers name",
                        dead.reason,
                        raw.len(),
                        self.max_record_bytes
                    );
                    headers =
                        dead_letter_headers(base, &dead, message, &source_topic, Some(raw.len()));
                    value = &[];
                    tracing::warn!(
                        topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        size,
                        "a dead letter too large to produce is written without its record"
                    );
                }
                (output, value, headers)
            }
        };
        // In replay the input is the DLQ, not the raw topic whose partition an output follows.
        let source = match self.mode {
            Mode::Live { .. } => Some((topic, message.partition())),
            Mode::Replay { .. } => None,
        };
        let sent = self.open(batch).and_then(|()| {
            let (topic, partition) = self
                .placement
                .target(&output, source)
                .map_err(KafkaError::from)?;
            let mut record = Outgoing {
                topic,
                partition,
                key,
                payload: Some(value),
                timestamp,
                headers: Some(headers),
            };
            produce_waiting(&self.producer, &mut record, KAFKA_TIMEOUT)
        });
        self.encoded = encoded;
        batch.read(topic, message.partition(), message.offset(), raw.len());
        Ok(match sent {
            Ok(()) => Step::Taken,
            Err(e) => Step::Failed(e),
        })
    }

    /// Waits while the schema store is unavailable; false on shutdown.
    async fn pause(&mut self, why: &LookupError) -> bool {
        tracing::warn!("{why}; pausing");
        metrics::counter!(names::STORE_PAUSES).increment(1);
        self.readiness.not_ready(READY_STORE, why.to_string());
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_millis(500)) => true,
        }
    }

    /// A record whose offset the transaction takes without writing anything for it.
    fn passed_over(&self, message: &impl Message, batch: &mut Batch) -> Step {
        batch.read(message.topic(), message.partition(), message.offset(), 0);
        match self.open(batch) {
            Ok(()) => Step::Taken,
            Err(e) => Step::Failed(e),
        }
    }

    /// Opens the transaction with the batch's first record.
    fn open(&self, batch: &mut Batch) -> Result<(), KafkaError> {
        if !batch.open {
            self.producer.begin_transaction()?;
            batch.open = true;
        }
        Ok(())
    }

    /// Commits the open transaction: the resend-state changes and the consumer offsets join the
    /// records produced, then the transaction commits once all are acknowledged. An abortable
    /// failure aborts and rewinds (the batch is read again).
    fn commit(&mut self, batch: Batch) -> anyhow::Result<Ended> {
        let offsets = batch.offsets();
        self.consumer.context().settle_losses(&offsets);
        let committing = Instant::now();
        let result = tokio::task::block_in_place(|| self.finish(&offsets, batch.records));
        match result {
            Ok(()) => {
                if let Mode::Live { filter, .. } = &mut self.mode {
                    filter.commit();
                    // Every loop adds its own files.
                    let files = filter.len();
                    metrics::gauge!(names::REPLAY_STATE_FILES)
                        .increment(files as f64 - self.files as f64);
                    self.files = files;
                }
                batch.counts.publish(&mut self.totals);
                let committed = committing.elapsed();
                let total = batch.started.elapsed();
                metrics::histogram!(names::BATCH).record(total.as_secs_f64());
                metrics::histogram!(names::GATHER)
                    .record((total - committed - batch.checking).as_secs_f64());
                metrics::histogram!(names::CHECK).record(batch.checking.as_secs_f64());
                metrics::histogram!(names::COMMIT).record(committed.as_secs_f64());
                Ok(Ended::Committed)
            }
            Err(e) if is_fatal(&e) => {
                Err(e).context("transaction failed fatally (fenced by a newer instance?)")
            }
            Err(e) => {
                self.abort(&offsets, Some(&e))?;
                Ok(Ended::Aborted)
            }
        }
    }

    fn finish(
        &self,
        offsets: &BTreeMap<Partition, (i64, i64)>,
        records: usize,
    ) -> Result<(), KafkaError> {
        if let Mode::Live {
            filter,
            state_topic,
            ..
        } = &self.mode
        {
            for (key, value) in filter.changes() {
                let mut record = BaseRecord::<[u8], [u8]>::to(state_topic).key(&key);
                if let Some(value) = &value {
                    record = record.payload(value);
                }
                self.send(record)?;
            }
        }
        tracing::debug!(?offsets, records, "committing a batch");
        send_offsets(&self.producer, &*self.consumer, offsets, KAFKA_TIMEOUT)?;
        commit_transaction(&self.producer, KAFKA_TIMEOUT)
    }

    /// Aborts the open transaction, drops its resend-state changes and rewinds the consumer to
    /// the transaction's first offsets, so that its records are read again. `why`: the failure,
    /// `None` for a rebalance.
    fn abort(
        &mut self,
        offsets: &BTreeMap<Partition, (i64, i64)>,
        why: Option<&KafkaError>,
    ) -> anyhow::Result<()> {
        if let Some(e) = why {
            tracing::warn!("transaction failed: {e}; aborting and reading the batch again");
            metrics::counter!(names::TRANSACTIONS_ABORTED).increment(1);
        }
        if let Mode::Live { filter, .. } = &mut self.mode {
            filter.rollback();
        }
        tokio::task::block_in_place(|| self.producer.abort_transaction(KAFKA_TIMEOUT))
            .context("aborting the transaction")?;
        rewind(&*self.consumer, offsets, KAFKA_TIMEOUT);
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        send_waiting(&self.producer, record, KAFKA_TIMEOUT)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn header_text(message: &impl Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A dead letter's headers as a replay writes them: without the `lp.error.*` ones and an earlier
/// replay's `lp.replay.*` ones (the record as it was first read), plus `lp.replay.*` naming this
/// dead letter, so that an end-to-end count tells the replayed line from a duplicate.
fn replayed_headers(message: &impl Message) -> HeaderList {
    let mut out = HeaderList::new();
    for h in message
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .filter(|h| !error_header::ALL.contains(&h.key) && !replay_header::ALL.contains(&h.key))
    {
        out.add(h.key, h.value);
    }
    let from = ReplayedFrom {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    };
    for (key, value) in from.headers() {
        out.add(key, Some(value.as_bytes()));
    }
    out
}

/// A dead letter's headers: the record's own, then the verdict's `lp.error.*` ones.
/// `omitted`: the record's size, when the dead letter goes without it.
fn dead_letter_headers(
    headers: HeaderList,
    dead: &DeadLetter,
    message: &impl Message,
    source_topic: &str,
    omitted: Option<usize>,
) -> HeaderList {
    // Where the record was read: in a replay, where it was first read.
    let first_read = || {
        let partition = header_text(message, error_header::PARTITION)?
            .parse()
            .ok()?;
        let offset = header_text(message, error_header::OFFSET)?.parse().ok()?;
        Some((partition, offset))
    };
    let (partition, offset) = first_read()
        .filter(|_| message.topic() != source_topic)
        .unwrap_or((message.partition(), message.offset()));
    let verdict = DeadLetterHeaders {
        stage: dead.stage,
        reason: &dead.reason,
        path: dead.pointer.as_deref(),
        subject: dead.subject.as_deref(),
        schema_id: dead.schema_id,
        topic: source_topic,
        partition,
        offset,
        omitted,
    };
    verdict
        .headers()
        .iter()
        .fold(headers, |mut headers, (key, value)| {
            headers.add(key, Some(value.as_bytes()));
            headers
        })
}

/// Reads the changelog from the start to its end and keeps the entries of `owned`. Returns the
/// number of changelog records read.
fn restore_state(
    settings: &Settings,
    state_topic: &str,
    owned: &[PartitionKey],
    filter: &mut ResendFilter,
    shutdown: &CancellationToken,
) -> anyhow::Result<u64> {
    let reader = end_reader(settings.kafka.client_config(
        &Role::Consumer {
            group_id: format!("{}.restore", settings.group_id),
        },
        "logpipe-validator-restore",
    ))
    .context("creating the resend-state reader")?;
    let from: Vec<(i32, Offset)> = (0..partition_count(&reader, state_topic, KAFKA_TIMEOUT)?)
        .map(|p| (p as i32, Offset::Beginning))
        .collect();
    read_to_end(
        &reader,
        state_topic,
        &from,
        Duration::from_secs(120),
        Some(shutdown),
        |m| {
            if let Some(key) = m.key() {
                filter.restore(owned, key, m.payload());
            }
            Ok(())
        },
    )
    .context("restoring the resend state")
}
