//! Rules live in the compacted `_lp.cep.rules` topic: one record per rule version, keyed
//! `<name>@<version>` so compaction keeps every version (`GET /rules/{name}/versions/{v}`), and a
//! deletion is a new version marked deleted, so version numbers never repeat (a match id names
//! its version). Every worker tails the topic and rebuilds its [`RuleSet`] on each change, so a
//! PUT on any worker is applied by all of them within a poll (100 ms), without a restart.
//!
//! A worker does not process events before it has read the topic to its end at start, so a
//! restart never counts events without the rules it had.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::kafka::{create_topics, KafkaConfig, Role};
use logpipe_core::record::CEP_RULES_TOPIC;
use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::rule::Rule;
use crate::ruleset::RuleSet;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// One record of the rules topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredRule {
    pub(crate) name: String,
    pub(crate) version: u32,
    /// RFC 3339; a version counts events whose record is not older (`from: latest`).
    pub(crate) created_at: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) deleted: bool,
    /// The document as given (YAML read as JSON); absent on a deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) document: Option<Value>,
}

impl StoredRule {
    fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub(crate) fn created_at_ms(&self) -> i64 {
        crate::event::parse_event_time(&Value::String(self.created_at.clone())).unwrap_or(0)
    }

    pub(crate) fn compile(&self) -> anyhow::Result<Rule> {
        let document = self.document.as_ref().context("no document")?;
        Ok(Rule::compile(
            &self.name,
            self.version,
            self.created_at_ms(),
            document,
        )?)
    }
}

/// Every version of every rule, as read from the topic.
#[derive(Debug, Default)]
pub(crate) struct RuleBook {
    versions: BTreeMap<String, BTreeMap<u32, StoredRule>>,
}

impl RuleBook {
    pub(crate) fn apply(&mut self, stored: StoredRule) {
        self.versions
            .entry(stored.name.clone())
            .or_default()
            .insert(stored.version, stored);
    }

    /// The latest version of a rule, unless it is a deletion.
    pub(crate) fn current(&self, name: &str) -> Option<&StoredRule> {
        self.versions
            .get(name)?
            .values()
            .next_back()
            .filter(|s| !s.deleted)
    }

    pub(crate) fn version(&self, name: &str, version: u32) -> Option<&StoredRule> {
        self.versions
            .get(name)?
            .get(&version)
            .filter(|s| !s.deleted)
    }

    pub(crate) fn next_version(&self, name: &str) -> u32 {
        self.versions
            .get(name)
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1)
    }

    /// The current version of every rule that is not deleted.
    pub(crate) fn active(&self) -> Vec<&StoredRule> {
        self.versions
            .keys()
            .filter_map(|n| self.current(n))
            .collect()
    }

    /// The rule set of the active versions; a stored document that no longer compiles (written
    /// by a newer worker, say) is left out with an error in the log.
    fn rule_set(&self) -> RuleSet {
        let mut rules = Vec::new();
        for stored in self.active() {
            match stored.compile() {
                Ok(rule) => rules.push(Arc::new(rule)),
                Err(e) => tracing::error!(
                    rule = stored.name,
                    version = stored.version,
                    "stored rule does not compile, not applied: {e:#}"
                ),
            }
        }
        RuleSet::new(rules)
    }
}

/// The worker's view of the rules topic, shared by the API and the pipeline.
pub(crate) struct Rules {
    book: RwLock<RuleBook>,
    /// Next offset read per partition of the rules topic.
    positions: Mutex<BTreeMap<i32, i64>>,
    set: watch::Sender<Arc<RuleSet>>,
    producer: FutureProducer,
    reader: BaseConsumer,
    /// Writes through this worker between choosing their `created_at` and their rule set being
    /// sent to the pipeline (see [`Rules::writes_in_flight`]).
    in_flight: AtomicUsize,
    /// One write at a time, so versions are numbered without gaps on this worker.
    writing: tokio::sync::Mutex<()>,
}

impl Rules {
    /// Creates the topic if needed, connects, and reads the topic to its end.
    pub(crate) async fn open(kafka: &KafkaConfig, client_id: &str) -> anyhow::Result<Arc<Rules>> {
        let admin: AdminClient<DefaultClientContext> = kafka
            .client_config(&Role::Admin, client_id)
            .create()
            .context("creating the admin client")?;
        let topic = NewTopic::new(CEP_RULES_TOPIC, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        for (name, result) in create_topics(&admin, &[topic], KAFKA_TIMEOUT).await? {
            if let Err(code) = result {
                anyhow::bail!("cannot create the rules topic {name}: {code}");
            }
        }
        let mut producer_config = kafka.client_config(&Role::Producer, client_id);
        // A rule write answers an HTTP request: it fails after a bound instead of waiting forever.
        producer_config.set("message.timeout.ms", "10000");
        let producer: FutureProducer = producer_config
            .create()
            .context("creating the rules producer")?;
        let mut reader_config = kafka.client_config(
            &Role::Consumer {
                group_id: format!("{client_id}.rules"),
            },
            client_id,
        );
        reader_config.set("enable.partition.eof", "false");
        let reader: BaseConsumer = reader_config
            .create()
            .context("creating the rules reader")?;
        // A topic just created may take a moment to show its partitions in metadata.
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        let mut assignment = TopicPartitionList::new();
        while assignment.count() == 0 {
            let metadata = reader
                .fetch_metadata(Some(CEP_RULES_TOPIC), KAFKA_TIMEOUT)
                .context("reading the rules topic's metadata")?;
            for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
                for p in t.partitions() {
                    assignment.add_partition_offset(CEP_RULES_TOPIC, p.id(), Offset::Beginning)?;
                }
            }
            anyhow::ensure!(
                assignment.count() > 0 || Instant::now() < deadline,
                "{CEP_RULES_TOPIC} has no partitions"
            );
            if assignment.count() == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        reader
            .assign(&assignment)
            .context("assigning the rules topic")?;
        let (set, _) = watch::channel(Arc::new(RuleSet::default()));
        let rules = Arc::new(Rules {
            book: RwLock::new(RuleBook::default()),
            positions: Mutex::new(BTreeMap::new()),
            set,
            producer,
            reader,
            in_flight: AtomicUsize::new(0),
            writing: tokio::sync::Mutex::new(()),
        });
        let started = Instant::now();
        let loading = rules.clone();
        tokio::task::spawn_blocking(move || loading.catch_up(Duration::from_secs(60)))
            .await
            .context("reading the rules")??;
        tracing::info!(rules = rules.book().active().len(), elapsed = ?started.elapsed(), "rules read");
        Ok(rules)
    }

    /// Tails the topic until shutdown, applying every change (run on a thread of its own).
    pub(crate) fn tail(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            self.poll(Duration::from_millis(100));
        }
    }

    /// Whether a rule write through this worker is in flight. A version counts the records not
    /// older than its `created_at`, so the pipeline must not count records gathered meanwhile
    /// with the rules it had. When none is, every write that completed has sent its rule set,
    /// and any write that starts later takes a `created_at` later than the records fetched so
    /// far.
    pub(crate) fn writes_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<RuleSet>> {
        self.set.subscribe()
    }

    pub(crate) fn book(&self) -> std::sync::RwLockReadGuard<'_, RuleBook> {
        self.book.read().expect("rule book lock")
    }

    /// Reads what is available now; rebuilds the rule set when something changed.
    fn poll(&self, wait: Duration) {
        let mut changed = false;
        // Published after the rule set: a write that sees its position read sees its rules sent.
        let mut positions = BTreeMap::new();
        let mut next = self.reader.poll(wait);
        while let Some(result) = next {
            match result {
                Ok(message) => {
                    positions.insert(message.partition(), message.offset() + 1);
                    match message.payload().map(serde_json::from_slice::<StoredRule>) {
                        Some(Ok(stored)) => {
                            tracing::info!(
                                rule = stored.name,
                                version = stored.version,
                                deleted = stored.deleted,
                                "rule change"
                            );
                            self.book.write().expect("rule book lock").apply(stored);
                            changed = true;
                        }
                        Some(Err(e)) => tracing::error!(
                            offset = message.offset(),
                            "unreadable record in {CEP_RULES_TOPIC}, skipped: {e}"
                        ),
                        None => {}
                    }
                }
                Err(e) => tracing::warn!("reading {CEP_RULES_TOPIC}: {e}"),
            }
            next = self.reader.poll(Duration::ZERO);
        }
        if changed {
            let set = self.book().rule_set();
            self.set.send_replace(Arc::new(set));
        }
        self.positions
            .lock()
            .expect("positions lock")
            .extend(positions);
    }

    /// Reads until every partition's position is at its end as of now.
    fn catch_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let metadata = self
            .reader
            .fetch_metadata(Some(CEP_RULES_TOPIC), KAFKA_TIMEOUT)?;
        // (low, high) per partition now; an empty partition is read already.
        let mut ends = BTreeMap::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let marks = self
                    .reader
                    .fetch_watermarks(CEP_RULES_TOPIC, p.id(), KAFKA_TIMEOUT)?;
                ends.insert(p.id(), marks);
            }
        }
        loop {
            let behind = {
                let positions = self.positions.lock().expect("positions lock");
                ends.iter().any(|(p, (low, high))| {
                    high > low && positions.get(p).copied().unwrap_or(*low) < *high
                })
            };
            if !behind {
                // Nothing read means nothing changed: publish the (possibly empty) set once.
                self.set.send_replace(Arc::new(self.book().rule_set()));
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{CEP_RULES_TOPIC} was not read to its end within {timeout:?}"
            );
            self.poll(Duration::from_millis(100));
        }
    }

    /// Writes a new version (a document, or a deletion) and waits until this worker applied it.
    pub(crate) async fn write(
        &self,
        name: &str,
        document: Option<Value>,
    ) -> anyhow::Result<StoredRule> {
        let _writing = self.writing.lock().await;
        let _in_flight = InFlight::start(&self.in_flight);
        let stored = StoredRule {
            name: name.to_owned(),
            version: self.book().next_version(name),
            created_at: crate::event::rfc3339(now_ms()),
            deleted: document.is_none(),
            document,
        };
        let key = stored.key();
        let value = serde_json::to_vec(&stored)?;
        let delivery = self
            .producer
            .send(
                FutureRecord::to(CEP_RULES_TOPIC).key(&key).payload(&value),
                KAFKA_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing {key} to {CEP_RULES_TOPIC}: {e}"))?;
        let (partition, offset) = (delivery.partition, delivery.offset);
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        while self
            .positions
            .lock()
            .expect("positions lock")
            .get(&partition)
            .copied()
            .unwrap_or(0)
            <= offset
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{key} was written but not read back within {KAFKA_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(stored)
    }
}

/// One rule write in flight, until dropped (also when the write fails).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(writes: &'a AtomicUsize) -> InFlight<'a> {
        writes.fetch_add(1, Ordering::SeqCst);
        InFlight(writes)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(name: &str, version: u32, document: Option<Value>) -> StoredRule {
        StoredRule {
            name: name.into(),
            version,
            created_at: "2026-12-04T00:00:00.000Z".into(),
            deleted: document.is_none(),
            document,
        }
    }

    #[test]
    fn versions_continue_through_deletions() {
        let doc = json!({"source": "clean.game", "key": "player_id", "when": "event == \"login\""});
        let mut book = RuleBook::default();
        assert_eq!(book.next_version("r"), 1);
        book.apply(stored("r", 1, Some(doc.clone())));
        book.apply(stored("r", 2, Some(doc.clone())));
        assert_eq!(book.current("r").unwrap().version, 2);
        assert!(book.version("r", 1).is_some());
        book.apply(stored("r", 3, None));
        assert!(book.current("r").is_none());
        assert!(book.active().is_empty());
        assert_eq!(book.next_version("r"), 4);
        book.apply(stored("s", 1, Some(doc)));
        let set = book.rule_set();
        assert_eq!(set.rules().len(), 1);
        assert_eq!(set.rules()[0].created_at_ms, 1_796_342_400_000);
    }

    #[test]
    fn records_round_trip_without_empty_fields() {
        let deletion = stored("r", 3, None);
        let text = serde_json::to_string(&deletion).unwrap();
        assert_eq!(
            text,
            r#"{"name":"r","version":3,"created_at":"2026-12-04T00:00:00.000Z","deleted":true}"#
        );
        assert_eq!(serde_json::from_str::<StoredRule>(&text).unwrap(), deletion);
        assert_eq!(deletion.key(), "r@3");
    }
}
