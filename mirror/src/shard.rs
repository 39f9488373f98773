//! One shard: a fixed set of source partitions copied by one transactional producer.
//!
//! A session of a shard:
//! 1. `init_transactions` with the shard's stable transactional id: any previous owner (a crashed
//!    or partitioned instance) is fenced, and its open transaction is aborted.
//! 2. Read the positions of the shard's partitions from the state topic (read_committed).
//! 3. For each partition, check the position against the source log-start offset (data-loss
//!    alarm and policy), then read the target partition after the committed target offset. On a
//!    cluster that isolates transactions this finds nothing; if it finds records (a cluster
//!    without transaction isolation, such as librdkafka's mock cluster, shows a crashed
//!    owner's unfinished transaction), they must be exactly the next source records, which are
//!    then verified instead of written again, and anything else stops the shard (someone else
//!    writes to the target partition).
//! 4. Copy: every source record is produced to the same partition of the target topic inside
//!    the open transaction. When the source has nothing more, or at the latest every
//!    `commit_interval_ms`, the producer is flushed, each moved partition's new position is
//!    written to the state topic, and the transaction commits: records and positions become
//!    visible together, or not at all.
//!
//! Any error ends the session; the next one starts again from step 1, so recovery after an
//! error is the same tested path as recovery after kill -9.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use logpipe_core::kafka::{produce, Outgoing, TakeHeaders as _};
use metrics::{counter, gauge, histogram, Counter, Gauge};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clients::{self, TargetReader};
use crate::config::{DataLossPolicy, MirrorConfig};
use crate::copy::copy_of;
use crate::metrics as names;
use crate::shards_ready::ShardsReady;
use crate::state::{self, Position};
use crate::topology::Topology;

/// Bound of every blocking Kafka call a session makes (init, flush, commit, reads).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Delivery opaque of state records (not a partition run).
const STATE_RECORD: usize = usize::MAX;
/// The commit interval is looked at every this many records polled, not at every one: a clock
/// read per record was a share of the loop (beside rdkafka's and librdkafka's own per poll), and
/// 64 records take well under a millisecond.
const INTERVAL_EVERY: usize = 64;

/// What every shard of this process shares.
pub(crate) struct Shared {
    pub(crate) config: Arc<MirrorConfig>,
    pub(crate) topology: watch::Receiver<Arc<Topology>>,
    pub(crate) ready: ShardsReady,
}

/// Runs a shard until `stop` is cancelled, restarting its session after errors with backoff.
pub(crate) fn run(shared: &Shared, shard: i32, stop: &CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    gauge!(names::SHARD_OWNED, "shard" => shard.to_string()).set(1.0);
    while !stop.is_cancelled() {
        let outcome = Session::open(shared, shard, stop).and_then(|mut session| {
            shared.ready.opened(shard);
            session.run(stop)
        });
        match outcome {
            Ok(Outcome::Stopped) => break,
            Ok(Outcome::Reopen) => backoff = Duration::from_millis(500),
            Err(e) => {
                counter!(names::SHARD_ERRORS, "shard" => shard.to_string()).increment(1);
                tracing::error!(
                    shard,
                    "shard session failed: {e:#}; starting it again in {backoff:?}"
                );
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    gauge!(names::SHARD_OWNED, "shard" => shard.to_string()).set(0.0);
    tracing::info!(shard, "shard stopped");
}

enum Outcome {
    /// The shard was asked to stop; its last transaction is committed.
    Stopped,
    /// The shard's partitions changed or a position must be checked again: start a new session.
    Reopen,
}

/// Delivery results of one transaction, written by librdkafka's delivery callback.
#[derive(Default)]
struct Deliveries {
    /// Per partition run: target offset just after the last delivered record.
    ends: Mutex<Vec<i64>>,
    failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, run: usize) {
        match result {
            Ok(message) if run != STATE_RECORD => {
                let mut ends = self.ends.lock().expect("deliveries lock");
                if ends.len() <= run {
                    ends.resize(run + 1, -1);
                }
                ends[run] = ends[run].max(message.offset() + 1);
            }
            Ok(_) => {}
            Err((e, message)) => {
                let mut failure = self.failure.lock().expect("deliveries lock");
                failure.get_or_insert_with(|| {
                    format!(
                        "delivery to {} [{}] failed: {e}",
                        message.topic(),
                        message.partition()
                    )
                });
            }
        }
    }
}

/// Per-partition metric handles, created once per session.
struct PartitionMetrics {
    records: Counter,
    bytes: Counter,
    offset_lag: Gauge,
    time_lag: Gauge,
    commit_age: Gauge,
    committed: Gauge,
    /// Records a previous owner wrote without committing, found and verified on the target.
    verified: Counter,
}

impl PartitionMetrics {
    fn new(topic: &str, partition: i32) -> Self {
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        PartitionMetrics {
            records: counter!(names::RECORDS, &labels),
            bytes: counter!(names::BYTES, &labels),
            offset_lag: gauge!(names::OFFSET_LAG_RECORDS, &labels),
            time_lag: gauge!(names::TIME_LAG, &labels),
            commit_age: gauge!(names::LAST_COMMIT_AGE, &labels),
            committed: gauge!(names::COMMITTED_OFFSET, &labels),
            verified: counter!(names::VERIFIED_RECORDS, &labels),
        }
    }
}

/// One source partition within a session.
struct PartitionRun {
    topic: String,
    target_topic: String,
    /// `target_topic` in C form, made once rather than for every record produced.
    target_c: CString,
    partition: i32,
    /// Durable position (what the state topic says after the last commit).
    committed: Position,
    /// Next source offset to read; ahead of `committed.source` within an open transaction.
    next_source: i64,
    /// Target records after `committed.target` that a predecessor wrote but did not commit
    /// (visible only on clusters without transaction isolation), to verify in order.
    unverified: VecDeque<OwnedMessage>,
    /// Target offset after the last verified record.
    verified_target: i64,
    /// Position moved since the last commit.
    moved: bool,
    /// Records and bytes copied in the open transaction.
    pending_records: u64,
    pending_bytes: u64,
    /// Timestamp (ms) of the newest copied record, and of the newest committed one.
    pending_timestamp: Option<i64>,
    committed_timestamp: Option<i64>,
    last_commit: Instant,
    metrics: PartitionMetrics,
}

struct Session<'a> {
    shared: &'a Shared,
    shard: i32,
    topology: Arc<Topology>,
    producer: BaseProducer<Deliveries>,
    source: Arc<BaseConsumer>,
    runs: Vec<PartitionRun>,
    /// topic => partition => run index.
    index: HashMap<String, HashMap<i32, usize>>,
    /// Partitions that are not copied because of data loss under the `stop` policy.
    stopped: Vec<(String, i32)>,
    in_transaction: bool,
    last_commit: Instant,
    last_metrics: Instant,
    state_topic: String,
}

impl<'a> Session<'a> {
    fn open(
        shared: &'a Shared,
        shard: i32,
        stop: &CancellationToken,
    ) -> anyhow::Result<Session<'a>> {
        let config = &shared.config;
        let topology = shared.topology.borrow().clone();
        let producer =
            clients::shard_producer(config, shard, topology.shards, Deliveries::default())?;
        producer
            .init_transactions(CALL_TIMEOUT)
            .context("init_transactions (fencing the previous owner)")?;
        let source = Arc::new(clients::source_consumer(config, shard, topology.shards)?);
        let reader = clients::target_reader(config, shard)?;
        let owned = topology.partitions_of(shard);
        let positions = state::read_positions(
            &reader,
            &config.state_topic(),
            topology.shards,
            |topic, partition| owned.iter().any(|(t, p)| t == topic && *p == partition),
            CALL_TIMEOUT,
        )
        .context("reading committed positions")?;
        let mut session = Session {
            shared,
            shard,
            topology: topology.clone(),
            producer,
            source,
            runs: Vec::new(),
            index: HashMap::new(),
            stopped: Vec::new(),
            in_transaction: false,
            last_commit: Instant::now(),
            last_metrics: Instant::now(),
            state_topic: config.state_topic(),
        };
        for (topic, partition) in owned {
            if stop.is_cancelled() {
                break;
            }
            session.prepare(
                &reader,
                &topic,
                partition,
                positions.get(&(topic.clone(), partition)).copied(),
            )?;
        }
        session.load_unverified(&reader)?;
        let mut assignment = TopicPartitionList::new();
        for run in &session.runs {
            assignment.add_partition_offset(
                &run.topic,
                run.partition,
                Offset::Offset(run.next_source),
            )?;
        }
        session
            .source
            .assign(&assignment)
            .context("assigning source partitions")?;
        tracing::info!(
            shard,
            partitions = session.runs.len(),
            stopped = session.stopped.len(),
            "shard session started (previous owner fenced, positions read)"
        );
        Ok(session)
    }

    /// Decides where a partition resumes: its committed position, checked against the source
    /// log-start offset.
    fn prepare(
        &mut self,
        reader: &TargetReader,
        topic: &str,
        partition: i32,
        position: Option<Position>,
    ) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let plan = &self.topology.topics[topic];
        let (source_low, source_high) = self
            .source
            .fetch_watermarks(topic, partition, CALL_TIMEOUT)
            .with_context(|| format!("watermarks of source {topic} [{partition}]"))?;
        let (target_low, _) = reader
            .fetch_watermarks(&plan.target, partition, CALL_TIMEOUT)
            .with_context(|| format!("watermarks of target {} [{partition}]", plan.target))?;
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        let mut committed = position.unwrap_or(Position {
            source: source_low,
            target: target_low,
        });
        let mut moved = false;
        if committed.source < source_low {
            let lost = source_low - committed.source;
            gauge!(names::DATA_LOSS_RECORDS, &labels).set(lost as f64);
            counter!(names::DATA_LOSS_EVENTS, &labels).increment(1);
            let action = match config.on_data_loss {
                DataLossPolicy::Stop => {
                    "this partition is stopped (on_data_loss = \"stop\"); set on_data_loss = \"resume-from-earliest\" to accept the loss and continue"
                }
                DataLossPolicy::ResumeFromEarliest => "resuming from the earliest retained record",
            };
            tracing::error!(
                topic,
                partition,
                committed = committed.source,
                log_start = source_low,
                lost,
                "DATA LOSS: source retention deleted {lost} records the mirror had not copied; {action}"
            );
            if config.on_data_loss == DataLossPolicy::Stop {
                self.stopped.push((topic.to_owned(), partition));
                return Ok(());
            }
            committed.source = source_low;
            moved = true;
        } else {
            gauge!(names::DATA_LOSS_RECORDS, &labels).set(0.0);
        }
        if committed.source > source_high {
            bail!(
                "source {topic} [{partition}] ends at {source_high} but the mirror committed position {}: was the source topic deleted and re-created?",
                committed.source
            );
        }
        let metrics = PartitionMetrics::new(topic, partition);
        metrics.committed.set(committed.source as f64);
        let index = self.runs.len();
        self.index
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, index);
        self.runs.push(PartitionRun {
            topic: topic.to_owned(),
            target_topic: plan.target.clone(),
            target_c: CString::new(plan.target.as_str())
                .with_context(|| format!("target topic {:?}", plan.target))?,
            partition,
            committed: Position {
                source: committed.source,
                target: committed.target.max(target_low),
            },
            next_source: committed.source,
            unverified: VecDeque::new(),
            verified_target: committed.target.max(target_low),
            moved,
            pending_records: 0,
            pending_bytes: 0,
            pending_timestamp: None,
            committed_timestamp: None,
            last_commit: Instant::now(),
            metrics,
        });
        Ok(())
    }

    /// Reads, per target topic, what lies after each partition's committed target offset.
    fn load_unverified(&mut self, reader: &TargetReader) -> anyhow::Result<()> {
        let mut by_topic: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
        for run in &self.runs {
            by_topic
                .entry(run.target_topic.clone())
                .or_default()
                .push((run.partition, run.committed.target));
        }
        for (topic, from) in by_topic {
            // Bounded by the shard's buffer share: an unfinished transaction is never larger.
            let limit =
                (self.shared.config.max_buffer_bytes / self.topology.shards.max(1) as u64) as usize;
            for record in state::drain(reader, &topic, &from, CALL_TIMEOUT, limit)? {
                let source_topic = self
                    .runs
                    .iter()
                    .find(|r| r.target_topic == topic)
                    .map(|r| r.topic.clone())
                    .unwrap_or_default();
                let index = self.index[&source_topic][&record.partition()];
                self.runs[index].unverified.push_back(record);
            }
        }
        for run in &self.runs {
            if !run.unverified.is_empty() {
                tracing::warn!(
                    topic = run.target_topic,
                    partition = run.partition,
                    records = run.unverified.len(),
                    "the target holds records after the last committed position (an unfinished transaction of a previous owner, \
                     visible because this cluster does not isolate transactions); verifying them against the source instead of copying again"
                );
            }
        }
        Ok(())
    }

    fn run(&mut self, stop: &CancellationToken) -> anyhow::Result<Outcome> {
        let interval = self.shared.config.commit_interval();
        let mut topology = self.shared.topology.clone();
        let source = self.source.clone();
        loop {
            if stop.is_cancelled() {
                self.commit()?;
                return Ok(Outcome::Stopped);
            }
            if topology.has_changed().unwrap_or(false) {
                let next = topology.borrow_and_update().clone();
                if next.partitions_of(self.shard) != self.topology.partitions_of(self.shard)
                    || next.shards != self.topology.shards
                {
                    tracing::info!(
                        shard = self.shard,
                        "the shard's partitions changed; starting a new session"
                    );
                    self.commit()?;
                    return Ok(Outcome::Reopen);
                }
            }
            // Take everything fetched so far (waiting briefly only for the first record), so a
            // transaction carries all that arrived since the last commit. Once the source has
            // nothing more, it commits at once: under load a shard is never caught up and commits
            // every `commit_interval_ms`, at a trickle a record waits for no timer.
            let mut wait = Duration::from_millis(20);
            let mut caught_up = false;
            let mut polled = 0usize;
            while !polled.is_multiple_of(INTERVAL_EVERY) || self.last_commit.elapsed() < interval {
                polled += 1;
                match source.poll(wait) {
                    None => {
                        caught_up = true;
                        break;
                    }
                    Some(Ok(mut message)) => self.copy(&mut message, stop)?,
                    Some(Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset,
                    ))) => {
                        // A position fell below the log start while copying: commit what is
                        // done, then the next session applies the data-loss policy.
                        self.commit()?;
                        return Ok(Outcome::Reopen);
                    }
                    Some(Err(e)) => tracing::debug!(shard = self.shard, "source consumer: {e}"),
                }
                wait = Duration::ZERO;
            }
            serve_deliveries(&self.producer);
            if caught_up || self.last_commit.elapsed() >= interval {
                self.commit()?;
            }
            if self.last_metrics.elapsed() >= Duration::from_secs(1) {
                self.update_lag();
            }
        }
    }

    /// Copies (or verifies) one source record.
    fn copy(
        &mut self,
        message: &mut BorrowedMessage<'_>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(&index) = self
            .index
            .get(message.topic())
            .and_then(|p| p.get(&message.partition()))
        else {
            return Ok(());
        };
        let run = &mut self.runs[index];
        if message.offset() < run.next_source {
            return Ok(());
        }
        let headers = message.take_headers();
        let message = &*message;
        let copy = copy_of(message, headers, self.shared.config.loop_guard.as_ref());
        run.next_source = message.offset() + 1;
        run.moved = true;
        let Some(copy) = copy else {
            counter!(names::LOOP_SKIPPED, "topic" => run.topic.clone()).increment(1);
            return Ok(());
        };
        if let Some(expected) = run.unverified.pop_front() {
            if !copy.matches(&expected) {
                bail!(
                    "target {} [{}] offset {} is not the mirror's copy of source {} [{}] offset {}: another producer writes to the target partition; \
                     the mirror will not add to it",
                    run.target_topic,
                    run.partition,
                    expected.offset(),
                    run.topic,
                    run.partition,
                    message.offset()
                );
            }
            run.verified_target = expected.offset() + 1;
            run.metrics.verified.increment(1);
            return Ok(());
        }
        begin_unless_open(&self.producer, &mut self.in_transaction)?;
        let size = copy.size() as u64;
        run.pending_records += 1;
        run.pending_bytes += size;
        run.pending_timestamp = copy.timestamp.or(run.pending_timestamp);
        let mut record = Outgoing {
            topic: &run.target_c,
            partition: Some(run.partition),
            key: copy.key,
            payload: copy.payload,
            timestamp: copy.timestamp,
            headers: copy.headers,
        };
        loop {
            match produce(&self.producer, &mut record, index) {
                Ok(()) => return Ok(()),
                // Back-pressure: the producer queue holds this shard's share of the buffer
                // budget; wait for the target instead of buffering more. Not by flushing: the
                // batches of a full queue are full already, and a flush would send every
                // partition's partial batch at once.
                Err(RDKafkaErrorCode::QueueFull) => {
                    if stop.is_cancelled() {
                        bail!("stopping while the target is not accepting records");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    serve_deliveries(&self.producer);
                }
                Err(e) => {
                    return Err(anyhow::Error::from(KafkaError::MessageProduction(e))
                        .context("producing to the target"))
                }
            }
        }
    }

    /// Commits the open transaction with the positions it covers.
    fn commit(&mut self) -> anyhow::Result<()> {
        if !self.runs.iter().any(|r| r.moved) {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        begin_unless_open(&self.producer, &mut self.in_transaction)?;
        self.await_acknowledgements()
            .context("flushing records before the commit")?;
        let context = self.producer.context();
        if let Some(failure) = context.failure.lock().expect("deliveries lock").take() {
            bail!("{failure}");
        }
        let ends = std::mem::take(&mut *context.ends.lock().expect("deliveries lock"));
        let mut positions = Vec::new();
        for (index, run) in self.runs.iter().enumerate().filter(|(_, r)| r.moved) {
            let delivered = ends.get(index).copied().unwrap_or(-1);
            let position = Position {
                source: run.next_source,
                target: run.committed.target.max(run.verified_target).max(delivered),
            };
            let (key, value) = state::encode(&run.topic, run.partition, position);
            let record = BaseRecord::with_opaque_to(&self.state_topic, STATE_RECORD)
                .partition(self.shard)
                .key(&key)
                .payload(&value);
            self.producer
                .send(record)
                .map_err(|(e, _)| e)
                .context("writing the position to the state topic")?;
            positions.push((index, position));
        }
        self.await_acknowledgements().context("writing positions")?;
        self.producer
            .commit_transaction(CALL_TIMEOUT)
            .context("commit_transaction")?;
        self.in_transaction = false;
        // The interval runs from the end of a commit: a slow commit must not shrink the next
        // transaction to a single record.
        self.last_commit = Instant::now();
        let seconds = started.elapsed().as_secs_f64();
        histogram!(names::COMMIT_LATENCY, "shard" => self.shard.to_string()).record(seconds);
        let now = Instant::now();
        for (index, position) in positions {
            let run = &mut self.runs[index];
            run.committed = position;
            run.verified_target = position.target;
            run.moved = false;
            run.metrics.records.increment(run.pending_records);
            run.metrics.bytes.increment(run.pending_bytes);
            run.metrics.committed.set(position.source as f64);
            run.pending_records = 0;
            run.pending_bytes = 0;
            run.committed_timestamp = run.pending_timestamp.or(run.committed_timestamp);
            run.last_commit = now;
        }
        self.update_lag();
        Ok(())
    }

    /// Waits until the target acknowledged everything produced. rdkafka's `flush` (also run
    /// inside `commit_transaction`) sleeps in steps of 100 ms between checks, which made every
    /// commit cost about 200 ms; waiting in 1 ms steps ends as soon as the last acknowledgement
    /// arrives, and leaves `commit_transaction` nothing to wait for.
    fn await_acknowledgements(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                bail!(
                    "the target did not acknowledge {} records within {CALL_TIMEOUT:?}",
                    self.producer.in_flight_count()
                );
            }
            wait_for_deliveries(&self.producer);
        }
        Ok(())
    }

    /// Offset lag, time lag and last-commit age of each partition, from the watermarks the
    /// source consumer last saw.
    fn update_lag(&mut self) {
        self.last_metrics = Instant::now();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for run in &self.runs {
            let Some((_, high)) =
                clients::cached_watermarks(&self.source, &run.topic, run.partition)
            else {
                continue;
            };
            let lag = (high - run.committed.source).max(0);
            run.metrics.offset_lag.set(lag as f64);
            if lag == 0 {
                run.metrics.time_lag.set(0.0);
                run.metrics.commit_age.set(0.0);
            } else {
                let time_lag = run
                    .committed_timestamp
                    .map_or(0.0, |ts| (now_ms - ts).max(0) as f64 / 1000.0);
                run.metrics.time_lag.set(time_lag);
                run.metrics
                    .commit_age
                    .set(run.last_commit.elapsed().as_secs_f64());
            }
        }
    }
}

/// One 1 ms step of waiting for the target: librdkafka's own `rd_kafka_flush`, during which
/// the broker threads send partly filled batches at once instead of waiting out `linger.ms`
/// (so the tail of a transaction costs a round trip, not linger plus a round trip), then the
/// delivery reports that came in. In rdkafka's event mode that flush only sleeps; rdkafka's
/// own `poll(timeout)` must not do the waiting, as it spins for any timeout under a
/// millisecond (it passes whole milliseconds to librdkafka and loops until its deadline):
/// the shard thread was busy for half of every wait, on cores the pipeline shares.
fn wait_for_deliveries(producer: &BaseProducer<Deliveries>) {
    let native = producer.client().native_ptr();
    // SAFETY: the handle is valid while `producer` lives; the call is thread safe.
    unsafe { rdkafka::bindings::rd_kafka_flush(native, 1) };
    serve_deliveries(producer);
}

/// Serves every delivery report already queued, without waiting: `poll(0)` serves at most
/// one event, and each served report lowers the in-flight count.
fn serve_deliveries(producer: &BaseProducer<Deliveries>) {
    loop {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() >= before {
            return;
        }
    }
}

/// Begins a transaction unless one is open. Takes the session's fields, not the session, so
/// that a caller can hold a partition run borrowed from it meanwhile.
fn begin_unless_open(
    producer: &BaseProducer<Deliveries>,
    in_transaction: &mut bool,
) -> anyhow::Result<()> {
    if !*in_transaction {
        producer.begin_transaction().context("begin_transaction")?;
        *in_transaction = true;
    }
    Ok(())
}
