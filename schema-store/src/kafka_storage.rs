//! The `kafka` storage: the registry lives in a single-partition compacted `_schemas` topic in
//! Confluent's key/value format, shared by every instance, so several instances serve one
//! registry and a Confluent or Karapace `_schemas` topic is adopted in place.
//!
//! Design (one writer at a time, Karapace/Confluent style):
//! - **Reading**: every instance assigns itself partition 0 and replays it from the beginning
//!   (read_committed) into the same in-memory [`State`] the local store builds. Reads are served
//!   from that state. The instance is ready once the first replay reaches the end of the topic.
//! - **Election**: every instance is a member of the consumer group
//!   `_lp.schema-store.<cluster>.election` subscribed to the topic. It has one partition, so
//!   exactly one member is assigned it: that member is the leader. A killed leader loses it
//!   after `session.timeout.ms` and the group gives it to another instance. The members never
//!   consume through the group (the partition is paused), they only hold it.
//! - **Fencing**: the leader writes with a transactional producer whose id is the same for every
//!   instance (`_lp.schema-store.<cluster>`). A new leader's `init_transactions` fences the old
//!   one, so a stalled ex-leader that has not yet noticed it lost the group cannot write again,
//!   and its unfinished transaction is aborted: its records never become visible.
//! - **Taking over**: the new leader writes a NOOP record (as Confluent does) and waits until its
//!   own reader has consumed it, so its state holds everything any earlier leader committed
//!   before it plans a write. Ids continue above every id in the topic: never reused.
//! - **Read-your-writes**: a write is answered only after the writer's reader consumed the
//!   records back (as Confluent does). Followers forward writes over HTTP to the leader with the
//!   caller's credentials, then wait until their own reader reaches the position the leader
//!   reports, so the caller can read its write back from the instance it asked.
//! - **Finding the leader**: the leader commits an offset for the topic in the election group
//!   with its advertised URL as the offset's metadata; followers read it (OffsetFetch). This needs
//!   nothing beyond the group and the topic the store already uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logpipe_core::kafka::{create_topics, EndIsNotAnError, KafkaConfig, Role};
use logpipe_core::record::INTERNAL_PREFIX;
use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::error::Error;
use crate::log::{Key, Record};
use crate::registry::{Journal, Registry, State};
use logpipe_core::metric_names::schema_store as metric;

/// How the store reaches its topic and how the other instances reach it.
#[derive(Debug, Clone)]
pub(crate) struct KafkaStorage {
    pub(crate) kafka: KafkaConfig,
    /// The topic, `_schemas` unless configured.
    pub(crate) topic: String,
    /// Names this registry's election group and transactional id, so several registries can
    /// share one Kafka cluster (with different topics).
    pub(crate) cluster: String,
    /// The URL other instances forward writes to.
    pub(crate) advertised_url: String,
    /// Replication factor used only when the store creates the topic (-1: the broker's default).
    pub(crate) replication_factor: i32,
}

impl KafkaStorage {
    pub(crate) fn election_group(&self) -> String {
        format!("{INTERNAL_PREFIX}schema-store.{}.election", self.cluster)
    }

    pub(crate) fn transactional_id(&self) -> String {
        format!("{INTERNAL_PREFIX}schema-store.{}", self.cluster)
    }

    /// The reader assigns its partition and never joins or commits; librdkafka still wants a
    /// group id for a consumer.
    fn reader_group(&self) -> String {
        format!("{INTERNAL_PREFIX}schema-store.{}.reader", self.cluster)
    }
}

/// The consumer that replays the topic.
type Reader = BaseConsumer<EndIsNotAnError>;

/// How long a write waits for its own records to be consumed back before it fails.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The reader's longest fetch wait (librdkafka's default is 500 ms).
const READER_FETCH_WAIT_MS: &str = "10";
/// How often a follower re-reads the leader's address.
const LEADER_REFRESH: Duration = Duration::from_secs(1);
/// The election group's session timeout: how long a killed leader keeps the partition.
const SESSION_TIMEOUT_MS: &str = "6000";
/// How often the reader checks that the topic is still there and reachable.
const STORAGE_PROBE: Duration = Duration::from_secs(1);
/// How long the topic may be unreachable before the instance reports itself not ready (a
/// broker restart or a leader move is not a lost storage).
const STORAGE_LOST_AFTER: Duration = Duration::from_secs(6);
/// How long a fenced instance that still holds the partition waits before leading again: twice
/// the session timeout, by when the group has moved the partition if another instance has it.
const FENCED_GRACE: Duration = Duration::from_secs(12);

/// What the reader, the election and the API share.
#[derive(Debug)]
pub(crate) struct Cluster {
    storage: KafkaStorage,
    leader: AtomicBool,
    /// The leader's advertised URL as last read from the election group.
    leader_url: Mutex<Option<String>>,
    /// Next offset after the last record applied to the state.
    position: watch::Receiver<i64>,
    /// True once the first replay reached the end of the topic.
    caught_up: watch::Receiver<bool>,
    /// Why the topic is lost (unreachable, or shorter than what was read), while it is.
    storage_lost: watch::Receiver<Option<String>>,
    /// Set when a newer leader fenced this instance's producer: it does not take over again
    /// until the group has taken the partition away (else two instances could fence each other
    /// in turn while the group moves the partition).
    fenced: AtomicBool,
    /// Leadership terms this instance has begun; a new term makes the writer re-plan from the
    /// replayed state.
    terms: AtomicU64,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// The URL other instances reach this one at.
    pub(crate) fn advertised_url(&self) -> &str {
        &self.storage.advertised_url
    }

    pub(crate) fn leader_url(&self) -> Option<String> {
        self.leader_url.lock().expect("leader url lock").clone()
    }

    /// The next offset after the last record applied to this instance's state.
    pub(crate) fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until this instance has applied every record before `position`.
    pub(crate) async fn wait_for_position(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows whether the storage is lost, and why: `/ready` reports it.
    pub(crate) fn storage_lost(&self) -> watch::Receiver<Option<String>> {
        self.storage_lost.clone()
    }

    /// Waits until the initial replay reached the end of the topic.
    pub(crate) async fn wait_caught_up(&self) {
        let mut rx = self.caught_up.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Stops the election (leaving the group, so another instance takes over at once) and the
    /// reader, and waits for both threads.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Opens the topic (creating it if missing), starts the reader and the election, and returns
/// the registry over the replayed state. Returns before the replay ends: see
/// [`Cluster::wait_caught_up`].
pub(crate) async fn open(storage: KafkaStorage) -> anyhow::Result<(Registry, Arc<Cluster>)> {
    // The reader waits for the topic's end, which librdkafka also reports as a client error:
    // its context keeps that out of the error log.
    let reader: Reader = consumer_config(&storage, &storage.reader_group(), "reader")
        .set("enable.partition.eof", "true")
        // A write is answered only once read back, so the reader's fetch wait is part of every
        // write's latency; the topic is small, and frequent empty fetches cost little.
        .set("fetch.wait.max.ms", READER_FETCH_WAIT_MS)
        .create_with_context(EndIsNotAnError)
        .map_err(|e| anyhow::anyhow!("cannot create the {} reader: {e}", storage.topic))?;
    let reader = Arc::new(reader);
    ensure_topic(&storage, Arc::clone(&reader)).await?;
    let mut partition = TopicPartitionList::new();
    partition.add_partition_offset(&storage.topic, 0, Offset::Beginning)?;
    reader.assign(&partition)?;

    let state = Arc::new(RwLock::new(State::default()));
    let (position_tx, position) = watch::channel(0i64);
    let (caught_up_tx, caught_up) = watch::channel(false);
    let (lost_tx, storage_lost) = watch::channel(None);
    let cluster = Arc::new(Cluster {
        storage: storage.clone(),
        leader: AtomicBool::new(false),
        leader_url: Mutex::new(None),
        position,
        caught_up,
        storage_lost,
        fenced: AtomicBool::new(false),
        terms: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        threads: Mutex::new(Vec::new()),
    });
    let term: Arc<Mutex<Option<Term>>> = Arc::default();
    let reading = {
        let (cluster, state) = (Arc::clone(&cluster), Arc::clone(&state));
        std::thread::Builder::new()
            .name("schemas-reader".into())
            .spawn(move || {
                let mut probe = StorageProbe::new(lost_tx);
                read(
                    reader,
                    cluster,
                    state,
                    position_tx,
                    caught_up_tx,
                    &mut probe,
                )
            })?
    };
    let election: BaseConsumer = consumer_config(&storage, &storage.election_group(), "election")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "1000")
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create the election consumer: {e}"))?;
    election.subscribe(&[&storage.topic])?;
    let electing = {
        let (cluster, term) = (Arc::clone(&cluster), Arc::clone(&term));
        let runtime = Handle::current();
        std::thread::Builder::new()
            .name("schemas-election".into())
            .spawn(move || elect(election, cluster, term, runtime))?
    };
    cluster
        .threads
        .lock()
        .expect("threads lock")
        .extend([electing, reading]);
    let journal = KafkaJournal {
        cluster: Arc::clone(&cluster),
        term,
        seen_epoch: 0,
        runtime: Handle::current(),
    };
    Ok((Registry::start(state, journal)?, cluster))
}

fn consumer_config(storage: &KafkaStorage, group: &str, purpose: &str) -> ClientConfig {
    let mut config = storage.kafka.client_config(
        &Role::Consumer {
            group_id: group.to_owned(),
        },
        &format!("logpipe-schema-store-{purpose}"),
    );
    // Never let a metadata request create the topic with the broker's defaults (several
    // partitions, no compaction): the store creates it itself, or says why it cannot.
    config.set("allow.auto.create.topics", "false");
    config
}

/// Checks the topic has exactly one partition, creating it (compacted) when it is missing.
async fn ensure_topic(storage: &KafkaStorage, reader: Arc<Reader>) -> anyhow::Result<()> {
    let topic = storage.topic.clone();
    let partitions = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<usize>> {
        let metadata = reader
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("cannot read the metadata of topic {topic}: {e}"))?;
        Ok(metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len()))
    })
    .await??;
    match partitions {
        Some(1) => Ok(()),
        Some(n) => anyhow::bail!(
            "topic {} has {n} partitions; the schema store needs exactly one (a total order of registrations)",
            storage.topic
        ),
        None => {
            tracing::info!(topic = %storage.topic, "creating the schemas topic (1 partition, cleanup.policy=compact)");
            let admin: AdminClient<DefaultClientContext> = storage.kafka.client_config(&Role::Admin, "logpipe-schema-store-admin").create()?;
            let new = NewTopic::new(&storage.topic, 1, TopicReplication::Fixed(storage.replication_factor)).set("cleanup.policy", "compact");
            let cannot = |e: String| {
                anyhow::anyhow!(
                    "topic {} does not exist and the store cannot create it ({e}); create it with 1 partition and cleanup.policy=compact",
                    storage.topic
                )
            };
            let results = create_topics(&admin, &[new], Duration::from_secs(15))
                .await
                .map_err(|e| cannot(e.to_string()))?;
            for (_, result) in results {
                result.map_err(|code| cannot(code.to_string()))?;
            }
            Ok(())
        }
    }
}

/// The reader thread: applies every record of the topic, in order, to the state.
fn read(
    consumer: Arc<Reader>,
    cluster: Arc<Cluster>,
    state: Arc<RwLock<State>>,
    position: watch::Sender<i64>,
    caught_up: watch::Sender<bool>,
    probe: &mut StorageProbe,
) {
    let started = Instant::now();
    let mut last_warning: Option<Instant> = None;
    while !cluster.stop.load(Ordering::Acquire) {
        if probe.due() {
            let ends = consumer.fetch_watermarks(&cluster.storage.topic, 0, STORAGE_PROBE * 2);
            probe.observe(&cluster.storage.topic, ends, *position.borrow());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                apply(&state, message.key(), message.payload(), message.offset());
                position.send_replace(message.offset() + 1);
                metrics::gauge!(metric::KAFKA_REPLAY_OFFSET).set((message.offset() + 1) as f64);
            }
            Some(Err(KafkaError::PartitionEOF(_))) if !*caught_up.borrow() => {
                let state = state.read().expect("registry state lock");
                tracing::info!(offset = *position.borrow(), schemas = state.schema_count(), elapsed = ?started.elapsed(), "replayed the schemas topic to its end");
                caught_up.send_replace(true);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                metrics::counter!(metric::KAFKA_ERRORS, "client" => "reader").increment(1);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("reading the schemas topic: {e}");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

/// Whether the topic the registry lives in is still there: reachable, and at least as long as
/// what this instance has read. A topic deleted (and maybe recreated empty) under a running
/// store, or brokers gone for good, leave the in-memory registry serving what no restart would
/// find again, so the instance says so on `/ready` instead of looking healthy.
struct StorageProbe {
    lost: watch::Sender<Option<String>>,
    last: Option<Instant>,
    failing_since: Option<Instant>,
}

impl StorageProbe {
    fn new(lost: watch::Sender<Option<String>>) -> StorageProbe {
        StorageProbe {
            lost,
            last: None,
            failing_since: None,
        }
    }

    fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= STORAGE_PROBE)
    }

    /// Takes the topic's offsets (or the error reading them) against the reader's position.
    fn observe(&mut self, topic: &str, ends: Result<(i64, i64), KafkaError>, read: i64) {
        let now = Instant::now();
        self.last = Some(now);
        let problem = match ends {
            Ok((_, end)) if end < read => Some(format!(
                "the {topic} topic ends at offset {end}, below the {read} this instance has read: \
                 it was deleted or truncated, and a restart would not find every schema served now"
            )),
            Ok(_) => {
                self.failing_since = None;
                None
            }
            Err(e) => {
                let since = *self.failing_since.get_or_insert(now);
                if now.duration_since(since) >= STORAGE_LOST_AFTER {
                    Some(format!(
                        "cannot reach the {topic} topic for {} s: {e}",
                        now.duration_since(since).as_secs()
                    ))
                } else {
                    // Too soon to tell: whatever was known stands.
                    self.lost.borrow().clone()
                }
            }
        };
        if *self.lost.borrow() != problem {
            match &problem {
                Some(why) => tracing::error!("schema storage lost: {why}"),
                None => tracing::info!("schema storage is back"),
            }
            self.lost.send_replace(problem);
        }
    }
}

/// Applies one consumed record. A record this store cannot use is skipped with a warning (a
/// registry must not stop serving over one foreign record), but an id it names stays burnt.
fn apply(state: &RwLock<State>, key: Option<&[u8]>, value: Option<&[u8]>, offset: i64) {
    let mut state = state.write().expect("registry state lock");
    let outcome = match key.map(|k| Record::from_kafka(k, value)) {
        None => Err("the record has no key".to_owned()),
        Some(Err(e)) => Err(e),
        Some(Ok(None)) => Ok(()),
        Some(Ok(Some(record))) => state
            .apply(&record)
            .map_err(|e| format!("{e} in {:?}", record.key)),
    };
    if let Err(e) = outcome {
        metrics::counter!(metric::KAFKA_RECORDS_SKIPPED).increment(1);
        tracing::warn!(
            offset,
            "skipping a schemas record this store cannot use: {e}"
        );
        let id = value
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .and_then(|v| v["id"].as_u64());
        if let Some(id) = id.and_then(|id| u32::try_from(id).ok()) {
            state.burn_id(id);
        }
    }
    metrics::gauge!(metric::SCHEMAS).set(state.schema_count() as f64);
}

/// One leadership term: the producer that fences the previous leader.
struct Term {
    producer: FutureProducer,
    epoch: u64,
}

/// The election thread: holds group membership, takes over when assigned the partition, steps
/// down when it loses it, and keeps the leader's address fresh while following.
fn elect(
    consumer: BaseConsumer,
    cluster: Arc<Cluster>,
    term: Arc<Mutex<Option<Term>>>,
    runtime: Handle,
) {
    let mut last_refresh: Option<Instant> = None;
    let mut last_failure: Option<Instant> = None;
    let mut fenced_since: Option<Instant> = None;
    while !cluster.stop.load(Ordering::Acquire) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
            metrics::counter!(metric::KAFKA_ERRORS, "client" => "election").increment(1);
            tracing::warn!("election group: {e}");
        }
        let assignment = consumer.assignment().unwrap_or_default();
        let assigned = assignment.count() > 0;
        let holding = term.lock().expect("term lock").is_some();
        // Fenced while still holding the partition for longer than the group needs to move it:
        // nobody else took over (the transaction coordinator fenced a stalled transaction), so
        // this instance must lead again or the registry would stay without a writer.
        let fenced_long = fenced_since.is_some_and(|t: Instant| t.elapsed() > FENCED_GRACE);
        if !assigned || fenced_long {
            cluster.fenced.store(false, Ordering::Release);
        }
        let fenced = cluster.fenced.load(Ordering::Acquire);
        fenced_since = if fenced {
            fenced_since.or(Some(Instant::now()))
        } else {
            None
        };
        if assigned
            && !holding
            && !fenced
            && last_failure.is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            // Held, never consumed through the group: the reader reads the topic.
            let _ = consumer.pause(&assignment);
            match take_over(&consumer, &cluster, &runtime) {
                Ok(new) => {
                    tracing::info!(url = %cluster.storage.advertised_url, "this instance is now the schema store leader");
                    *term.lock().expect("term lock") = Some(new);
                    *cluster.leader_url.lock().expect("leader url lock") =
                        Some(cluster.storage.advertised_url.clone());
                    cluster.leader.store(true, Ordering::Release);
                    metrics::gauge!(metric::KAFKA_LEADER).set(1.0);
                    metrics::counter!(metric::KAFKA_ELECTIONS).increment(1);
                    last_failure = None;
                }
                Err(e) => {
                    tracing::warn!("cannot take over as the leader yet: {e:#}");
                    last_failure = Some(Instant::now());
                }
            }
        } else if (!assigned || fenced) && holding {
            step_down(
                &cluster,
                &term,
                if fenced {
                    "fenced by a newer leader"
                } else {
                    "lost the election partition"
                },
            );
        }
        if !cluster.is_leader() && last_refresh.is_none_or(|t| t.elapsed() > LEADER_REFRESH) {
            refresh_leader_url(&consumer, &cluster);
            last_refresh = Some(Instant::now());
        }
    }
    step_down(&cluster, &term, "shutting down");
    // Dropping the consumer leaves the group, so another instance takes over without waiting
    // for the session timeout.
    drop(consumer);
}

fn step_down(cluster: &Cluster, term: &Mutex<Option<Term>>, why: &str) {
    if term.lock().expect("term lock").take().is_some() {
        tracing::info!("this instance is no longer the schema store leader: {why}");
    }
    cluster.leader.store(false, Ordering::Release);
    metrics::gauge!(metric::KAFKA_LEADER).set(0.0);
}

/// Becomes the writer: fences earlier leaders, writes a NOOP and waits to read it back (the
/// state then holds every committed write), then publishes this instance's URL.
fn take_over(consumer: &BaseConsumer, cluster: &Cluster, runtime: &Handle) -> anyhow::Result<Term> {
    let storage = &cluster.storage;
    let role = Role::TransactionalProducer {
        transactional_id: storage.transactional_id(),
    };
    let mut config = storage
        .kafka
        .client_config(&role, "logpipe-schema-store-writer");
    if !storage.kafka.properties.contains_key("linger.ms") {
        // The writer batches by itself (group commit); waiting to batch again only adds latency.
        config.set("linger.ms", "0");
    }
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    let noop = Record::tombstone(Key::Noop { magic: 0 });
    let offset =
        produce(&producer, &storage.topic, &[noop], runtime).map_err(anyhow::Error::msg)?;
    if !runtime.block_on(cluster.wait_for_position(offset + 1, Duration::from_secs(120))) {
        anyhow::bail!("the reader did not reach the takeover NOOP at offset {offset}");
    }
    let mut published = TopicPartitionList::new();
    published.add_partition_offset(&storage.topic, 0, Offset::Offset(offset + 1))?;
    for mut element in published.elements() {
        element.set_metadata(&storage.advertised_url);
    }
    consumer.commit(&published, CommitMode::Sync)?;
    Ok(Term {
        producer,
        epoch: cluster.terms.fetch_add(1, Ordering::Relaxed) + 1,
    })
}

/// Reads the address the current leader published.
fn refresh_leader_url(consumer: &BaseConsumer, cluster: &Cluster) {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&cluster.storage.topic, 0);
    match consumer.committed_offsets(wanted, Duration::from_secs(2)) {
        Ok(committed) => {
            let url = committed
                .elements()
                .first()
                .map(|e| e.metadata().to_owned())
                .filter(|m| !m.is_empty());
            *cluster.leader_url.lock().expect("leader url lock") = url;
        }
        Err(e) => tracing::debug!("cannot read the leader's address: {e}"),
    }
}

/// Produces records in one transaction and returns the offset of the last one.
fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[Record],
    runtime: &Handle,
) -> Result<i64, String> {
    producer
        .begin_transaction()
        .map_err(|e| format!("cannot begin a transaction: {e}"))?;
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let (key, value) = record.to_kafka();
        let mut message = FutureRecord::to(topic).partition(0).key(&key);
        if let Some(value) = &value {
            message = message.payload(value);
        }
        match producer.send_result(message) {
            Ok(delivery) => deliveries.push(delivery),
            Err((e, _)) => return abort(producer, format!("cannot queue a record: {e}")),
        }
    }
    // Acknowledged before the commit: rdkafka's commit flushes first, and its flush sleeps in
    // 100 ms steps while anything is in flight, which made every write cost 100 ms.
    let mut last = None;
    for delivery in deliveries {
        match runtime.block_on(delivery) {
            Ok(Ok(delivered)) => last = Some(delivered.offset),
            Ok(Err((e, _))) => return abort(producer, format!("a record was not delivered: {e}")),
            Err(_) => return abort(producer, "the producer went away".into()),
        }
    }
    if let Err(e) = producer.commit_transaction(Timeout::After(Duration::from_secs(30))) {
        return abort(producer, format!("cannot commit the transaction: {e}"));
    }
    last.ok_or_else(|| "no record was produced".to_owned())
}

/// Aborts the open transaction (unless the producer is fatally failed, when nothing can be
/// done with it any more) and returns `message` as the error.
fn abort<T>(producer: &FutureProducer, message: String) -> Result<T, String> {
    if producer.client().fatal_error().is_none() {
        let _ = producer.abort_transaction(Duration::from_secs(10));
    }
    Err(message)
}

/// The leader's side of the writer: one transaction per batch, acknowledged once the reader
/// has applied it.
struct KafkaJournal {
    cluster: Arc<Cluster>,
    term: Arc<Mutex<Option<Term>>>,
    seen_epoch: u64,
    runtime: Handle,
}

impl Journal for KafkaJournal {
    fn commit(&mut self, records: &[Record], _public: &RwLock<State>) -> Result<(), Error> {
        let started = Instant::now();
        let term = self.term.lock().expect("term lock");
        let Some(current) = term.as_ref() else {
            return Err(Error::NotLeader);
        };
        if current.epoch != self.seen_epoch {
            // Planned against a state from before this term: plan again.
            return Err(Error::NotLeader);
        }
        let written = produce(
            &current.producer,
            &self.cluster.storage.topic,
            records,
            &self.runtime,
        );
        if let Some((code, reason)) = current.producer.client().fatal_error() {
            // Fenced (or otherwise dead): another instance is the writer now.
            tracing::warn!(
                "the schemas producer failed fatally ({code:?}: {reason}); stepping down"
            );
            self.cluster.fenced.store(true, Ordering::Release);
            self.cluster.leader.store(false, Ordering::Release);
        }
        let offset = written.map_err(|e| {
            metrics::counter!(metric::KAFKA_ERRORS, "client" => "writer").increment(1);
            tracing::error!("cannot write to the schemas topic: {e}");
            Error::Store(format!("Error while writing to the schemas topic: {e}"))
        })?;
        drop(term);
        if !self.runtime.block_on(
            self.cluster
                .wait_for_position(offset + 1, READ_BACK_TIMEOUT),
        ) {
            return Err(Error::Store(format!(
                "the write at offset {offset} was not read back within {READ_BACK_TIMEOUT:?}"
            )));
        }
        metrics::histogram!(metric::KAFKA_COMMIT).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::LOG_BATCH_RECORDS).record(records.len() as f64);
        Ok(())
    }

    fn staging_is_stale(&mut self) -> bool {
        let epoch = self
            .term
            .lock()
            .expect("term lock")
            .as_ref()
            .map_or(0, |t| t.epoch);
        let stale = epoch != self.seen_epoch;
        self.seen_epoch = epoch;
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_shorter_than_what_was_read_is_lost_storage() {
        let (tx, rx) = watch::channel(None);
        let mut probe = StorageProbe::new(tx);
        probe.observe("_schemas", Ok((0, 10)), 10);
        assert_eq!(*rx.borrow(), None);
        probe.observe("_schemas", Ok((0, 0)), 10);
        let why = rx.borrow().clone().unwrap_or_default();
        assert!(why.contains("deleted or truncated"), "{why}");
        // A short error changes nothing: the loss stands until the topic holds what was read.
        probe.observe("_schemas", Err(KafkaError::NoMessageReceived), 10);
        assert!(rx.borrow().is_some());
        probe.observe("_schemas", Ok((0, 12)), 10);
        assert_eq!(*rx.borrow(), None);
        probe.observe("_schemas", Err(KafkaError::NoMessageReceived), 12);
        assert_eq!(*rx.borrow(), None, "nor is it a loss yet");
    }
}
