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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use logpipe_core::kafka::{create_topics, KafkaConfig, Role};
use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
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
    /// The command that creates it, for operators (Apache Kafka's CLI).
    pub(crate) fn command(&self, bootstrap: &str) -> String {
        let config = if self.compacted {
            " --config cleanup.policy=compact"
        } else {
            ""
        };
        format!("kafka-topics --bootstrap-server {bootstrap} --create --topic {} --partitions {}{config}", self.name, self.partitions)
    }
}

/// Creates missing topics (when allowed) and says which are still missing.
pub(crate) struct TopicMaker {
    admin: Option<AdminClient<DefaultClientContext>>,
    bootstrap: String,
    /// Set when the cluster did not answer a CreateTopics request at all (not served): later
    /// topics go straight to the auto-creation lookup instead of waiting for the request to
    /// time out again.
    not_served: AtomicBool,
}

impl TopicMaker {
    /// `create = false`: never create, only report.
    pub(crate) fn new(kafka: &KafkaConfig, create: bool) -> anyhow::Result<TopicMaker> {
        let admin = if create {
            Some(
                kafka
                    .client_config(&Role::Admin, "logpipe-validator-admin")
                    .create()?,
            )
        } else {
            None
        };
        Ok(TopicMaker {
            admin,
            bootstrap: kafka.bootstrap.clone(),
            not_served: AtomicBool::new(false),
        })
    }

    /// Whether missing topics are created (and looked up with auto-creation allowed).
    pub(crate) fn creates(&self) -> bool {
        self.admin.is_some()
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
                        topic.command(&self.bootstrap)
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
        let Some(admin) = &self.admin else {
            return BTreeMap::new();
        };
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
        let new: Vec<NewTopic<'_>> = needed
            .iter()
            .map(|t| {
                let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
                if t.compacted {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        match create_topics(admin, &new, ADMIN_TIMEOUT).await {
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
        let state = Needed {
            name: "_lp.validator.v.replay-state".into(),
            partitions: 1,
            compacted: true,
        };
        assert_eq!(
            state.command("k:9092"),
            "kafka-topics --bootstrap-server k:9092 --create --topic _lp.validator.v.replay-state --partitions 1 --config cleanup.policy=compact"
        );
        let clean = Needed {
            name: "clean.game".into(),
            partitions: 4,
            compacted: false,
        };
        assert!(clean
            .command("k:9092")
            .ends_with("--topic clean.game --partitions 4"));
    }

    #[tokio::test]
    async fn without_creation_missing_topics_are_reported_with_the_command() {
        let maker = TopicMaker::new(&KafkaConfig::new("127.0.0.1:9"), false).unwrap();
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
