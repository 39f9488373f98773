//! `logpipe-validator`: checks every raw record on the read cluster against its schema and
//! writes it, exactly once, to its clean topic (Confluent wire format) or its dead-letter topic
//! (original bytes plus `lp.error.*` headers), removing the agents' resends on the way.
//!
//! The crate's API is the service ([`ValidatorService`], [`ValidatorConfig`]), the DLQ replay
//! command ([`replay`]) and, for benchmarks, the record parser and encoder ([`Doc`],
//! [`CompiledSchema`]).
//!
//! Modules: `doc` (records parsed borrowing their strings), `avro` (JSON -> Avro encoder plans),
//! `schema` (compiled schemas, wire format), `schema_cache` (compiled schemas in front of
//! [`logpipe_schema_client`]), `route` (routes and subject strategies), `reason` (the bounded
//! kinds of dead-letter reasons), `verdict` (one record's check), `resend_filter` (removing the
//! agents' resends), `topics` (creating the topics it writes to), `placement` (each output
//! record's topic name and partition), `pipeline` (the exactly-once loop), `replay` (the DLQ
//! replay command), `metrics` (names and descriptions).

mod avro;
mod doc;
mod metrics;
mod pipeline;
mod placement;
mod reason;
pub mod replay;
mod resend_filter;
mod route;
mod schema;
mod schema_cache;
mod topics;
mod verdict;

pub use avro::ExtraFields;
pub use doc::Doc;
pub use logpipe_schema_client::{BasicAuth, SchemaType};
pub use route::{RouteConfig, SubjectStrategy};
pub use schema::CompiledSchema;

use std::time::Duration;

use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use logpipe_schema_client::Client;
use serde::Deserialize;

use crate::pipeline::{Mode, Pipeline, Settings};
use crate::resend_filter::ResendFilter;
use crate::route::Routes;
use crate::schema_cache::SchemaCache;
use crate::verdict::Checker;

/// `logpipe-validator`'s config (see the README for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Base URL of the Confluent-compatible schema store.
    pub schema_store: String,
    /// HTTP basic auth for the schema store (`${ENV}` references work).
    #[serde(default)]
    pub schema_store_auth: Option<BasicAuth>,
    /// How long a `latest` subject lookup is trusted before it is asked again.
    #[serde(default = "default_schema_refresh_ms")]
    pub schema_refresh_ms: u64,
    /// Timeout of one schema store request.
    #[serde(default = "default_schema_timeout_ms")]
    pub schema_timeout_ms: u64,
    /// Consumer group shared by the instances.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Transactional id; stable per instance, so that a restarted instance fences its zombie.
    /// Default `<group_id>-<host name>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Compacted topic holding the resend filter's state. Default
    /// `_lp.validator.<group_id>.replay-state` (see [`logpipe_core::record::resend_state_topic`]).
    /// `replay_state_topic`, the key's old name, is still read for one release.
    #[serde(default, alias = "replay_state_topic")]
    pub resend_state_topic: Option<String>,
    /// The resend filter's entries of a file not seen for this long are expired.
    /// `replay_state_ttl_hours`, the key's old name, is still read for one release.
    #[serde(
        default = "default_resend_state_ttl_hours",
        alias = "replay_state_ttl_hours"
    )]
    pub resend_state_ttl_hours: u64,
    /// At most this many records per transaction.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Checking loops in this process, each its own consumer-group member with its own
    /// transactional id (`<transactional_id>-<n>` after the first), so that more partitions than
    /// one core can check are checked on several, each partition by one loop in order. Default:
    /// the cores available to the process.
    #[serde(default)]
    pub workers: Option<usize>,
    /// At most this many input bytes (record values) per transaction.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// At most this long gathering one batch; a batch ends earlier, once nothing more has been
    /// fetched, so an idle pipeline commits each record at once.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// How often the topic list is read to find new raw topics.
    #[serde(default = "default_topic_refresh_ms")]
    pub topic_refresh_ms: u64,
    /// Create missing clean, DLQ and resend-state topics through the admin API (see
    /// the README for why this is the default).
    #[serde(default = "default_create_topics")]
    pub create_topics: bool,
    /// The read-side cluster.
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub routes: Vec<RouteConfig>,
}

fn default_schema_refresh_ms() -> u64 {
    2_000
}
fn default_schema_timeout_ms() -> u64 {
    5_000
}
fn default_group_id() -> String {
    "logpipe-validator".into()
}
fn default_resend_state_ttl_hours() -> u64 {
    7 * 24
}
fn default_batch_records() -> usize {
    5_000
}
fn default_batch_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_batch_ms() -> u64 {
    100
}
fn default_topic_refresh_ms() -> u64 {
    10_000
}
fn default_create_topics() -> bool {
    true
}

impl ValidatorConfig {
    pub fn transactional_id(&self) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.group_id, logpipe_core::service::host_name()))
    }

    pub fn resend_state_topic(&self) -> String {
        self.resend_state_topic
            .clone()
            .unwrap_or_else(|| logpipe_core::record::resend_state_topic(&self.group_id))
    }

    /// The schema checker for these routes and this store.
    pub(crate) fn checker(&self) -> anyhow::Result<Checker> {
        let routes = Routes::new(&self.routes)?;
        let client = Client::new(
            &self.schema_store,
            self.schema_store_auth.as_ref(),
            Duration::from_millis(self.schema_timeout_ms),
        )?;
        Ok(Checker::new(
            routes,
            SchemaCache::new(client, Duration::from_millis(self.schema_refresh_ms)),
        ))
    }

    /// The number of checking loops.
    pub(crate) fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The settings of loop `worker` (0 for the replay command); `group_suffix` separates the
    /// replay command's group from the service's. The first loop keeps the instance's
    /// transactional id, so that it fences what a validator of one loop left open.
    pub(crate) fn settings(&self, group_suffix: &str, worker: usize) -> Settings {
        let (worker_suffix, kafka_check) = match worker {
            0 => (String::new(), "kafka".to_owned()),
            n => (format!("-{n}"), format!("kafka.{n}")),
        };
        Settings {
            kafka: self.kafka.clone(),
            kafka_check,
            group_id: format!("{}{group_suffix}", self.group_id),
            transactional_id: format!("{}{group_suffix}{worker_suffix}", self.transactional_id()),
            batch_records: self.batch_records,
            batch_bytes: self.batch_bytes,
            batch_time: Duration::from_millis(self.batch_ms),
            topic_refresh: Duration::from_millis(self.topic_refresh_ms),
            create_topics: self.create_topics,
        }
    }
}

impl ServiceConfig for ValidatorConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.kafka
            .validate(&Role::Consumer {
                group_id: self.group_id.clone(),
            })
            .map_err(anyhow::Error::msg)?;
        self.kafka
            .validate(&Role::TransactionalProducer {
                transactional_id: self.transactional_id(),
            })
            .map_err(anyhow::Error::msg)?;
        self.checker()?;
        logpipe_core::record::check_topic_name(&self.resend_state_topic())
            .map_err(|e| anyhow::anyhow!("resend_state_topic: {e}"))?;
        if self.group_id.is_empty() {
            anyhow::bail!("group_id is empty");
        }
        if self.workers == Some(0) {
            anyhow::bail!("workers must be at least 1");
        }
        if self.batch_records == 0 || self.batch_bytes == 0 || self.batch_ms == 0 {
            anyhow::bail!("batch_records, batch_bytes and batch_ms must be positive");
        }
        if self.schema_refresh_ms > 5_000 {
            tracing::warn!(
                "schema_refresh_ms = {}: new schema versions take that long to be used",
                self.schema_refresh_ms
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "read {} as group {} with {} checking loop(s) (static member and transactional id {}, then -1, -2, ...), schemas from {} (refresh {} ms), resend state in {}; {}\n",
            self.kafka.bootstrap,
            self.group_id,
            self.workers(),
            self.transactional_id(),
            self.schema_store,
            self.schema_refresh_ms,
            self.resend_state_topic(),
            if self.create_topics { "missing clean/DLQ/resend-state topics are created" } else { "topics are not created (create_topics = false)" }
        );
        let max = logpipe_core::kafka::max_record_bytes(&self.kafka.client_config(
            &Role::TransactionalProducer {
                transactional_id: self.transactional_id(),
            },
            "logpipe-validator",
        ));
        text.push_str(&format!(
            "outputs up to {max} bytes each (the producer's message.max.bytes): a larger clean record or dead letter is written as a dead letter without the record, which stays in its raw topic\n"
        ));
        if max > logpipe_core::kafka::TOPIC_DEFAULT_MAX_MESSAGE_BYTES {
            text.push_str(&format!(
                "output topics must take batches of {max} bytes: topics the validator creates get max.message.bytes = {max}; a raw topic whose existing clean or DLQ topic takes less is not read (/ready says which)\n"
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            text.push_str(&format!(
                "route {}: topics /{}/ subject {:?} version {} extra fields {:?} -> clean {} / dlq {}\n",
                i + 1,
                r.topics,
                r.subject,
                r.version.0,
                r.extra_fields,
                r.clean.as_str(),
                r.dlq.as_str()
            ));
        }
        text
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The config without the keys a reload applies, to tell whether a reload asked for more
/// (as text: not every type in it compares).
fn without_reloadable(config: &ValidatorConfig) -> String {
    let mut rest = config.clone();
    rest.routes.clear();
    rest.telemetry.log = None;
    format!("{rest:?}")
}

/// The service, for `logpipe_core::service::main`.
pub struct ValidatorService;

impl Service for ValidatorService {
    const NAME: &'static str = "logpipe-validator";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/validator.toml";
    const EXTRA_COMMANDS: &'static [(&'static str, &'static str)] = &[("replay", replay::ABOUT)];
    type Config = ValidatorConfig;

    async fn run(config: ValidatorConfig, ctx: Context) -> anyhow::Result<()> {
        metrics::describe();
        let ttl = Duration::from_secs(config.resend_state_ttl_hours * 3600);
        let mut reload_senders = Vec::new();
        let mut loops = tokio::task::JoinSet::new();
        for worker in 0..config.workers() {
            let (routes, reloads) = tokio::sync::mpsc::unbounded_channel();
            reload_senders.push(routes);
            let mode = Mode::Live {
                filter: ResendFilter::new(ttl),
                state_topic: config.resend_state_topic(),
                reloads,
            };
            let settings = config.settings("", worker);
            // Each loop its own schema cache: no lock between loops on the hot path.
            let checker = config.checker()?;
            let (readiness, shutdown) = (ctx.readiness.clone(), ctx.shutdown.clone());
            loops.spawn(async move {
                let pipeline =
                    Pipeline::connect(settings, mode, checker, readiness, shutdown).await?;
                if let Some(pipeline) = pipeline {
                    pipeline.run().await?;
                }
                anyhow::Ok(())
            });
        }
        let running = config.clone();
        let mut signals = ctx.clone();
        tokio::spawn(async move {
            while let Some(new) = signals.next_reload::<ValidatorConfig>().await {
                // Validated already, so the routes compile.
                if let Ok(new_routes) = Routes::new(&new.routes) {
                    for routes in &reload_senders {
                        let _ = routes.send(new_routes.clone());
                    }
                }
                if without_reloadable(&new) != without_reloadable(&running) {
                    tracing::warn!("reload: only routes and telemetry.log change while running; the other keys take effect at the next start");
                }
            }
        });
        // One loop failing ends the service (the others are dropped with the set).
        while let Some(ended) = loops.join_next().await {
            anyhow::Context::context(ended, "a checking loop panicked")??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> anyhow::Result<ValidatorConfig> {
        let config: ValidatorConfig =
            logpipe_core::config::parse(Path::new("v.toml"), text, |_| None)?;
        config.validate()?;
        Ok(config)
    }

    const BASE: &str = "schema_store = \"http://127.0.0.1:8081\"\n[kafka]\nbootstrap = \"127.0.0.1:9092\"\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_minimal_config_gets_defaults() {
        let config = parse(&format!(
            "{BASE}[[routes]]\ntopics = \"raw\\\\..*\"\nsubject = \"topic\"\n"
        ))
        .unwrap();
        assert_eq!(config.group_id, "logpipe-validator");
        assert_eq!(
            config.resend_state_topic(),
            "_lp.validator.logpipe-validator.replay-state"
        );
        assert!(config.transactional_id().starts_with("logpipe-validator-"));
        assert_eq!(
            config.settings(".replay", 0).group_id,
            "logpipe-validator.replay"
        );
        assert!(config.describe().contains("route 1: topics /raw\\..*/"));
        assert!(config
            .describe()
            .contains("outputs up to 1000000 bytes each"));
        assert!(!config.describe().contains("must take batches"));
        let large = parse(&format!(
            "{BASE}[kafka.properties]\n\"message.max.bytes\" = 4000000\n[[routes]]\ntopics = \"raw\"\nsubject = \"topic\"\n"
        ))
        .unwrap();
        assert!(large
            .describe()
            .contains("topics the validator creates get max.message.bytes = 4000000"));
    }

    #[test]
    fn the_resend_state_keys_are_also_read_by_their_old_names() {
        let routes = "[[routes]]\ntopics = \"raw\"\nsubject = \"topic\"\n";
        for key in ["resend", "replay"] {
            let config = parse(&format!(
                "{key}_state_topic = \"_lp.s\"\n{key}_state_ttl_hours = 2\n{BASE}{routes}"
            ))
            .unwrap();
            assert_eq!(config.resend_state_topic(), "_lp.s");
            assert_eq!(config.resend_state_ttl_hours, 2);
        }
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = parse(&format!(
            "{BASE}[[routes]]\ntopics = \"raw\"\nsubject = \"topic\"\nclen = \"x\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("clen"), "{err}");
        let err = parse(BASE).unwrap_err().to_string();
        assert!(err.contains("routes"), "{err}");
        let err = parse(&format!("routes = []\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no [[routes]]"), "{err}");
        let bad_url = BASE.replace("http://127.0.0.1:8081", "127.0.0.1:8081");
        assert!(parse(&format!(
            "{bad_url}[[routes]]\ntopics = \"a\"\nsubject = \"topic\"\n"
        ))
        .is_err());
        let unsafe_kafka = format!("{BASE}[kafka.properties]\n\"isolation.level\" = \"read_uncommitted\"\n[[routes]]\ntopics = \"a\"\nsubject = \"topic\"\n");
        // [kafka.properties] after [telemetry] is still the kafka table.
        assert!(parse(&unsafe_kafka)
            .unwrap_err()
            .to_string()
            .contains("isolation.level"));
    }
}
