//! The topics the validator writes to, made to exist before it writes.
//!
//! It writes the clean and dead-letter topic of every raw topic it reads, and its resend-state
//! changelog. The validator **creates the missing ones** through the admin API (`create_topics`,
//! on by default), because the alternatives are worse: a transaction into a topic that does not
//! exist fails on every batch (the validator would stall on a typo'd template), and a broker's
//! auto-creation uses the broker's defaults, which for the changelog means a topic that deletes
//! old resend-filter state instead of compacting it. Clean and DLQ topics get the raw topic's
//! partition count (so a key's records stay together as on the raw side), the changelog one
//! compacted partition; the replication factor and every other setting are the cluster's
//! defaults (CreateTopics with replication factor -1: Kafka 2.4 or later). Operators who manage
//! topics themselves set `create_topics = false`.
//!
//! A cluster may refuse CreateTopics (ACLs) or not serve it. That is logged
//! with the command an operator would run, and the topic is then looked up with a producer's
//! metadata request, which lets a broker with `auto.create.topics.enable` create it: if it
//! exists after that, the validator goes on (warning that a changelog created that way must be
//! made compacted). A raw topic whose outputs still do not exist is not read, and `/ready`
//! reports `topics` not ready naming the missing topics, until they appear.
//!
//! The broker checks whole record batches against a topic's `max.message.bytes`, and the
//! producer fills batches up to its own `message.max.bytes`: a validator allowed larger records
//! than an output topic takes would fail every transaction into it. So topics it creates get
//! the producer's limit when that is above Kafka's default, and an existing output topic whose
//! limit is below the producer's is treated like a missing one: its raw topic is not read and
//! `/ready` names the topic and the command that raises its limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use logpipe_core::kafka::{create_topics, KafkaConfig, Role, TOPIC_DEFAULT_MAX_MESSAGE_BYTES};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a topic the admin API reported created may take to show in metadata.
const PROPAGATION: Duration = Duration::from_secs(5);

/// A topic the validator needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Needed {
    pub(crate) name: String,
    pub(crate) partitions: i32,
    pub(crate) compacted: bool,
}

impl Needed {
    /// Its configs: compacted or not, and a `max.message.bytes` to take batches of
    /// `max_message_bytes` when that is above Kafka's default.
    fn configs(&self, max_message_bytes: usize) -> Vec<(&'static str, String)> {
        let mut configs = Vec::new();
        if self.compacted {
            configs.push(("cleanup.policy", "compact".to_owned()));
        }
        if max_message_bytes > TOPIC_DEFAULT_MAX_MESSAGE_BYTES {
            configs.push(("max.message.bytes", max_message_bytes.to_string()));
        }
        configs
    }
}

/// Creates missing topics (when allowed) and says which are still missing.
pub(crate) struct TopicMaker {
    admin: AdminClient<DefaultClientContext>,
    create: bool,
    bootstrap: String,
    /// The producer's `message.max.bytes`: output topics must take batches this large.
    max_message_bytes: usize,
    /// Output topics whose `max.message.bytes` was read and found large enough.
    fits: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Set when the cluster did not answer a CreateTopics request at all (not served): later
    /// topics go straight to the auto-creation lookup instead of waiting for the request to
    /// time out again.
    not_served: AtomicBool,
}

impl TopicMaker {
    /// `create = false`: never create, only report. `max_message_bytes`: the producer's.
    pub(crate) fn new(
        kafka: &KafkaConfig,
        create: bool,
        max_message_bytes: usize,
    ) -> anyhow::Result<TopicMaker> {
        Ok(TopicMaker {
            admin: kafka
                .client_config(&Role::Admin, "logpipe-validator-admin")
                .create()?,
            create,
            bootstrap: kafka.bootstrap.clone(),
            max_message_bytes,
            fits: Default::default(),
            not_served: AtomicBool::new(false),
        })
    }

    /// Whether missing topics are created (and looked up with auto-creation allowed).
    pub(crate) fn creates(&self) -> bool {
        self.create
    }

    /// The command that creates `topic`, for operators (Apache Kafka's CLI).
    pub(crate) fn command(&self, topic: &Needed) -> String {
        let configs: String = topic
            .configs(self.max_message_bytes)
            .iter()
            .map(|(name, value)| format!(" --config {name}={value}"))
            .collect();
        format!(
            "kafka-topics --bootstrap-server {} --create --topic {} --partitions {}{configs}",
            self.bootstrap, topic.name, topic.partitions
        )
    }

    /// Of `topics` (existing output topics), those whose `max.message.bytes` is below the
    /// producer's `message.max.bytes`, each with an operator-facing sentence. A topic found
    /// large enough is not asked again; one whose configs cannot be read is let through (the
    /// producer's own check still bounds each record).
    pub(crate) async fn too_small(&self, topics: &[String]) -> Vec<(String, String)> {
        if self.max_message_bytes <= TOPIC_DEFAULT_MAX_MESSAGE_BYTES {
            // Every topic takes at least Kafka's default unless someone lowered it on purpose.
            return Vec::new();
        }
        let unchecked: Vec<&String> = {
            let fits = self.fits.lock().expect("fits lock");
            topics.iter().filter(|t| !fits.contains(*t)).collect()
        };
        if unchecked.is_empty() {
            return Vec::new();
        }
        let resources: Vec<ResourceSpecifier<'_>> = unchecked
            .iter()
            .map(|t| ResourceSpecifier::Topic(t))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let described = match self.admin.describe_configs(&resources, &options).await {
            Ok(described) => described,
            Err(e) => {
                tracing::warn!("could not read the output topics' max.message.bytes: {e}");
                return Vec::new();
            }
        };
        let mut small = Vec::new();
        for (topic, result) in unchecked.into_iter().zip(described) {
            let limit = result.ok().and_then(|resource| {
                resource
                    .get("max.message.bytes")?
                    .value
                    .as_deref()?
                    .parse::<usize>()
                    .ok()
            });
            match limit {
                Some(limit) if limit < self.max_message_bytes => {
                    let sentence = format!(
                        "topic {topic} takes batches of at most {limit} bytes (max.message.bytes), below the validator's message.max.bytes of {}: every transaction into it would fail, so its raw topic is not read; raise it (kafka-configs --bootstrap-server {} --alter --entity-type topics --entity-name {topic} --add-config max.message.bytes={}) or lower message.max.bytes",
                        self.max_message_bytes, self.bootstrap, self.max_message_bytes
                    );
                    tracing::error!("{sentence}");
                    small.push((topic.clone(), sentence));
                }
                _ => {
                    self.fits.lock().expect("fits lock").insert(topic.clone());
                }
            }
        }
        small
    }

    /// Makes `needed` exist where it can. `exists` answers whether a topic exists now (the
    /// caller's metadata lookup, which may let the broker auto-create it). Returns the topics
    /// still missing, each with an operator-facing sentence.
    pub(crate) async fn ensure(
        &self,
        needed: &[Needed],
        exists: impl Fn(&str) -> bool,
    ) -> Vec<(Needed, String)> {
        if needed.is_empty() {
            return Vec::new();
        }
        let refused = self.create(needed).await;
        // A topic just created (or auto-created by the lookup) may take a moment to show.
        let deadline = Instant::now()
            + if self.creates() {
                PROPAGATION
            } else {
                Duration::ZERO
            };
        let mut found: Vec<bool> = needed.iter().map(|t| exists(&t.name)).collect();
        while found.contains(&false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (topic, found) in needed.iter().zip(found.iter_mut()).filter(|(_, f)| !**f) {
                *found = exists(&topic.name);
            }
        }
        let mut missing = Vec::new();
        for (topic, found) in needed.iter().zip(found) {
            let why = refused.get(&topic.name);
            match (found, why) {
                (true, None) if self.creates() => tracing::info!(topic = topic.name, partitions = topic.partitions, compacted = topic.compacted, "created topic"),
                (true, None) => {}
                (true, Some(why)) if topic.compacted => tracing::warn!(
                    topic = topic.name,
                    "could not create the topic through the admin API ({why}); the cluster created it with its defaults: it must be compacted (kafka-configs --bootstrap-server {} --alter --entity-type topics --entity-name {} --add-config cleanup.policy=compact)",
                    self.bootstrap,
                    topic.name
                ),
                (true, Some(why)) => tracing::warn!(
                    topic = topic.name,
                    "could not create the topic through the admin API ({why}); the cluster created it with its defaults"
                ),
                (false, why) => {
                    let because = match why {
                        Some(why) => format!("could not be created ({why})"),
                        None if self.creates() => "was created but does not show in the metadata yet".to_owned(),
                        None => "is not created by the validator (create_topics = false)".to_owned(),
                    };
                    let sentence = format!(
                        "topic {} does not exist on {} and {because}; create it: {}",
                        topic.name,
                        self.bootstrap,
                        self.command(topic)
                    );
                    tracing::error!("{sentence}");
                    missing.push((topic.clone(), sentence));
                }
            }
        }
        missing
    }

    /// CreateTopics for all of `needed`; returns why each refused one was refused.
    async fn create(&self, needed: &[Needed]) -> BTreeMap<String, String> {
        if !self.create {
            return BTreeMap::new();
        }
        if self.not_served.load(Ordering::Relaxed) {
            return needed
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        "the cluster does not serve CreateTopics".to_owned(),
                    )
                })
                .collect();
        }
        let configs: Vec<Vec<(&str, String)>> = needed
            .iter()
            .map(|t| t.configs(self.max_message_bytes))
            .collect();
        let new: Vec<NewTopic<'_>> = needed
            .iter()
            .zip(&configs)
            .map(|(t, configs)| {
                configs.iter().fold(
                    NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1)),
                    |topic, (name, value)| topic.set(name, value),
                )
            })
            .collect();
        match create_topics(&self.admin, &new, ADMIN_TIMEOUT).await {
            Ok(results) => results
                .into_iter()
                .filter_map(|(topic, result)| Some((topic, result.err()?.to_string())))
                .collect(),
            Err(e) => {
                tracing::warn!(
                    "{} did not answer CreateTopics ({e}); missing topics are left to the cluster's auto-creation from now on",
                    self.bootstrap
                );
                self.not_served.store(true, Ordering::Relaxed);
                needed
                    .iter()
                    .map(|t| (t.name.clone(), format!("CreateTopics: {e}")))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_says_what_to_create() {
        let maker = |max| TopicMaker::new(&KafkaConfig::new("k:9092"), false, max).unwrap();
        let state = Needed {
            name: "_lp.validator.v.replay-state".into(),
            partitions: 1,
            compacted: true,
        };
        assert_eq!(
            maker(1_000_000).command(&state),
            "kafka-topics --bootstrap-server k:9092 --create --topic _lp.validator.v.replay-state --partitions 1 --config cleanup.policy=compact"
        );
        let clean = Needed {
            name: "clean.game".into(),
            partitions: 4,
            compacted: false,
        };
        assert!(maker(1_000_000)
            .command(&clean)
            .ends_with("--topic clean.game --partitions 4"));
        assert!(
            maker(4_000_000)
                .command(&clean)
                .ends_with("--topic clean.game --partitions 4 --config max.message.bytes=4000000"),
            "a producer allowed more than Kafka's default needs topics that take it"
        );
    }

    #[tokio::test]
    async fn without_creation_missing_topics_are_reported_with_the_command() {
        let maker = TopicMaker::new(&KafkaConfig::new("127.0.0.1:9"), false, 1_000_000).unwrap();
        let needed = [
            Needed {
                name: "clean.a".into(),
                partitions: 2,
                compacted: false,
            },
            Needed {
                name: "dlq.a".into(),
                partitions: 2,
                compacted: false,
            },
        ];
        let missing = maker.ensure(&needed, |t| t == "dlq.a").await;
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].0.name, "clean.a");
        assert!(
            missing[0].1.contains("create_topics = false")
                && missing[0].1.contains("--topic clean.a --partitions 2"),
            "{}",
            missing[0].1
        );
    }
}
