//! The `[kafka]` table every service has, the librdkafka settings each client role gets, and the
//! client plumbing services share: reading partitions to their end ([`read_to_end`]), creating
//! topics ([`create_topics`]), a group consumer's rebalances ([`RebalanceLog`]), a record's size
//! against the producer's limit ([`record_size`]) and committing a batch exactly once
//! ([`send_offsets`] and its neighbours).
//!
//! Defaults carry the delivery guarantees (acks=all and idempotence for producers, read_committed
//! for consumers); user properties pass through unchanged for TLS, SASL and tuning, but a property
//! that would silently break a guarantee is rejected at config check time, not discovered in an
//! incident.

mod headers;
mod read_to_end;
mod rebalance;
mod retention;
mod size;
mod topics;
mod transaction;

pub use headers::{produce, HeaderList, Outgoing, TakeHeaders};
pub use read_to_end::{end_reader, partition_count, read_at, read_to_end, EndReader};
pub use rebalance::{GroupEvent, Partition, RebalanceLog};
pub use size::{max_record_bytes, record_size, NO_HEADERS, TOPIC_DEFAULT_MAX_MESSAGE_BYTES};
pub use topics::create_topics;
pub use transaction::{
    batch_offsets, commit_transaction, init_transactions, is_fatal, produce_waiting,
    records_behind, report_lag, rewind, send_offsets, send_waiting, transactional_producer,
};

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};

/// Connection to one Kafka cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap: String,
    /// librdkafka properties passed through unchanged (`security.protocol`, `sasl.*`, `ssl.*`,
    /// tuning). Values may be strings, numbers or booleans.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

/// A librdkafka property value as written in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::String(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// What a client is for; decides its defaults and which overrides are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// At-least-once producer: acks=all, idempotent, never gives up on a record by timeout
    /// (a gap inside a partition would break replay removal downstream).
    Producer,
    /// Exactly-once producer with a stable transactional id.
    TransactionalProducer { transactional_id: String },
    /// Consumer in a group that sees only committed records and commits offsets itself (or in
    /// a transaction), never automatically.
    Consumer { group_id: String },
    /// A [`Role::Consumer`] that subscribes as a static member (KIP-345, `group.instance.id`): a
    /// restarted instance takes its predecessor's place and partitions at once, with no
    /// rebalance and no wait for the dead one's session. On shutdown it does not leave: its
    /// partitions wait a session for it. `instance_id` must be unique in the group (a second
    /// process with the same one fences the first).
    StaticMember {
        group_id: String,
        instance_id: String,
    },
    /// Administrative and metadata client.
    Admin,
}

/// Property names whose override would break a guarantee, with the value that role requires.
fn required(role: &Role) -> &'static [(&'static str, &'static [&'static str])] {
    match role {
        Role::Producer | Role::TransactionalProducer { .. } => &[
            ("acks", &["all", "-1"]),
            ("enable.idempotence", &["true"]),
            ("enable.gapless.guarantee", &["true"]),
        ],
        Role::Consumer { .. } | Role::StaticMember { .. } => &[
            ("isolation.level", &["read_committed"]),
            ("enable.auto.commit", &["false"]),
        ],
        Role::Admin => &[],
    }
}

/// Properties set from other config keys; setting them under `properties` would be ambiguous.
const OWNED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "transactional.id",
];

impl KafkaConfig {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap: bootstrap.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the table for a role: a bootstrap list, no property that another key owns, and no
    /// override that breaks the role's guarantee.
    pub fn validate(&self, role: &Role) -> Result<(), String> {
        if self
            .bootstrap
            .split(',')
            .map(str::trim)
            .any(|s| s.is_empty() || !s.contains(':'))
        {
            return Err(format!(
                "kafka.bootstrap {:?} must be a comma-separated list of host:port",
                self.bootstrap
            ));
        }
        for (name, value) in &self.properties {
            if OWNED.contains(&name.as_str()) {
                return Err(format!("kafka.properties.\"{name}\" is set by logpipe; use kafka.bootstrap and the service's own keys"));
            }
            if let Some((_, allowed)) = required(role).iter().find(|(n, _)| n == name) {
                let value = value.to_string();
                if !allowed.contains(&value.as_str()) {
                    return Err(format!(
                        "kafka.properties.\"{name}\" = {value:?} would break logpipe's delivery guarantee; it must be {}",
                        allowed.join(" or ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The librdkafka config for a role: logpipe's defaults, then the user's properties.
    pub fn client_config(&self, role: &Role, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", client_id);
        for (name, value) in defaults(role) {
            config.set(*name, *value);
        }
        match role {
            Role::TransactionalProducer { transactional_id } => {
                config.set("transactional.id", transactional_id);
            }
            Role::Consumer { group_id } => {
                config.set("group.id", group_id);
            }
            Role::StaticMember {
                group_id,
                instance_id,
            } => {
                config
                    .set("group.id", group_id)
                    .set("group.instance.id", instance_id);
            }
            Role::Producer | Role::Admin => {}
        }
        for (name, value) in &self.properties {
            config.set(name, value.to_string());
        }
        config
    }
}

fn defaults(role: &Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::Producer => &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("enable.gapless.guarantee", "true"),
            ("message.timeout.ms", "0"),
            ("compression.type", "lz4"),
            ("linger.ms", "20"),
            ("batch.size", "1048576"),
        ],
        Role::TransactionalProducer { .. } => &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.type", "lz4"),
            ("linger.ms", "10"),
            ("batch.size", "1048576"),
            ("transaction.timeout.ms", "60000"),
        ],
        // A dead member's partitions move on within seconds, not librdkafka's 45 s: 6 s is the
        // shortest session a broker accepts by default (`group.min.session.timeout.ms`).
        // Heartbeats come from librdkafka's own thread, so a long batch does not end a session.
        // Once a partition's read-ahead queue is full, librdkafka fetches it again only after
        // `fetch.queue.backoff.ms` (1 s by default), long after a busy reader has drained it:
        // every service then waits on fetches with work to do (the validator spent 35-40% of its
        // time waiting for records with 1 s, 26% with 10 ms, and moved 10-30% more records).
        Role::Consumer { .. } | Role::StaticMember { .. } => &[
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
            ("fetch.queue.backoff.ms", "10"),
        ],
        Role::Admin => &[],
    }
}

/// Whether a client error event only reports a partition's end. With `enable.partition.eof`,
/// librdkafka reports an end both as the poll result a reader waits for and as a client error
/// event, which rdkafka's default context logs at ERROR level: noise, not an error.
pub fn is_partition_end(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
    )
}

/// The context of a consumer that reads to partition ends: client errors are logged as rdkafka's
/// default context logs them (target `librdkafka`), except a partition's end.
pub struct EndIsNotAnError;

impl ClientContext for EndIsNotAnError {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_end(&error) {
            tracing::error!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ConsumerContext for EndIsNotAnError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_end_is_told_from_errors() {
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }

    fn with(props: &[(&str, PropertyValue)]) -> KafkaConfig {
        let mut config = KafkaConfig::new("127.0.0.1:9092,127.0.0.1:9093");
        config.properties = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        config
    }

    #[test]
    fn producer_defaults_are_safe() {
        let config = KafkaConfig::new("k:9092").client_config(&Role::Producer, "agent");
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("message.timeout.ms"), Some("0"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(config.get("client.id"), Some("agent"));
    }

    #[test]
    fn transactional_producer_gets_its_id() {
        let role = Role::TransactionalProducer {
            transactional_id: "mirror-0".into(),
        };
        let config = KafkaConfig::new("k:9092").client_config(&role, "mirror");
        assert_eq!(config.get("transactional.id"), Some("mirror-0"));
        assert_eq!(config.get("acks"), Some("all"));
    }

    #[test]
    fn consumer_defaults_are_read_committed_without_auto_commit() {
        let config = KafkaConfig::new("k:9092").client_config(
            &Role::Consumer {
                group_id: "g".into(),
            },
            "v",
        );
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("group.instance.id"), None);
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
    }

    #[test]
    fn a_static_member_gets_its_instance_id_and_the_consumer_guarantees() {
        let role = Role::StaticMember {
            group_id: "g".into(),
            instance_id: "g-host1".into(),
        };
        let config = KafkaConfig::new("k:9092").client_config(&role, "v");
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("group.instance.id"), Some("g-host1"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        let owned = with(&[("group.instance.id", PropertyValue::String("x".into()))]);
        assert!(owned
            .validate(&role)
            .unwrap_err()
            .contains("set by logpipe"));
        let unsafe_commit = with(&[("enable.auto.commit", PropertyValue::Bool(true))]);
        assert!(unsafe_commit.validate(&role).is_err());
    }

    #[test]
    fn user_properties_pass_through_and_win_over_tuning_defaults() {
        let config = with(&[
            ("compression.type", PropertyValue::String("zstd".into())),
            ("linger.ms", PropertyValue::Integer(50)),
            (
                "enable.ssl.certificate.verification",
                PropertyValue::Bool(false),
            ),
        ]);
        config.validate(&Role::Producer).unwrap();
        let client = config.client_config(&Role::Producer, "agent");
        assert_eq!(client.get("compression.type"), Some("zstd"));
        assert_eq!(client.get("linger.ms"), Some("50"));
        assert_eq!(
            client.get("enable.ssl.certificate.verification"),
            Some("false")
        );
    }

    #[test]
    fn guarantee_breaking_overrides_are_rejected() {
        let err = with(&[("acks", PropertyValue::Integer(1))])
            .validate(&Role::Producer)
            .unwrap_err();
        assert!(err.contains("acks") && err.contains("all"), "{err}");
        assert!(with(&[("acks", PropertyValue::Integer(-1))])
            .validate(&Role::Producer)
            .is_ok());
        let err = with(&[(
            "isolation.level",
            PropertyValue::String("read_uncommitted".into()),
        )])
        .validate(&Role::Consumer {
            group_id: "g".into(),
        })
        .unwrap_err();
        assert!(err.contains("isolation.level"), "{err}");
        // The same property is fine where no guarantee depends on it.
        assert!(with(&[("acks", PropertyValue::Integer(1))])
            .validate(&Role::Admin)
            .is_ok());
    }

    #[test]
    fn owned_properties_and_bad_bootstrap_are_rejected() {
        let err = with(&[("bootstrap.servers", PropertyValue::String("x:1".into()))])
            .validate(&Role::Admin)
            .unwrap_err();
        assert!(err.contains("bootstrap.servers"), "{err}");
        assert!(KafkaConfig::new("kafka-1")
            .validate(&Role::Admin)
            .unwrap_err()
            .contains("host:port"));
        assert!(KafkaConfig::new("a:1,,b:2").validate(&Role::Admin).is_err());
    }

    #[test]
    fn reads_from_toml_with_mixed_value_types() {
        let config: KafkaConfig = toml::from_str(
            "bootstrap = \"k:9092\"\n[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"queue.buffering.max.kbytes\" = 65536\n\"socket.keepalive.enable\" = true\n",
        )
        .unwrap();
        let client = config.client_config(&Role::Admin, "x");
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("queue.buffering.max.kbytes"), Some("65536"));
        assert_eq!(client.get("socket.keepalive.enable"), Some("true"));
        assert!(toml::from_str::<KafkaConfig>("bootstrap = \"k:1\"\nbootstrapp = 1\n").is_err());
    }
}
