//! `logpipe-cep`: complex event processing over the clean topics. Operators define rules at run
//! time over HTTP ("5 PVP wins -> 30 gems"); the workers of one consumer group count them per key
//! and write each match exactly once.
//!
//! The crate's API is the service ([`CepService`], [`CepConfig`]) and the rule error type.
//!
//! Modules, in the order an event meets them: `decode` (wire format to JSON through the schema
//! store), `field`, `condition`, `expr` and `rule` (the rule document and what its steps test),
//! `ruleset` (the active rules, indexed), `event` (what is carried of an event, re-keyed),
//! `counter` and `state` (keyed counting and its changelog), `matches` (the match record),
//! `pipeline` (the exactly-once loop), `rules_store` (the rules topic), `sources` (what the
//! source topics hold), `api` (the HTTP API) and `openapi` (its document), `metrics`.

mod api;
mod clock;
mod condition;
mod counter;
mod decode;
mod event;
mod expr;
mod field;
mod matches;
mod metrics;
mod openapi;
mod pipeline;
mod replay;
mod rule;
mod rules_store;
mod ruleset;
mod sources;
mod state;
mod timed;
mod timing;

pub use rule::RuleError;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_core::auth::{Auth, AuthConfig};
use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use logpipe_schema_client::{BasicAuth, Client};
use serde::Deserialize;
use serde_json::Value;

use crate::api::Api;
use crate::decode::Decoder;
use crate::pipeline::{Settings, Worker};
use crate::rules_store::Rules;

/// `logpipe-cep`'s config (see the README for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CepConfig {
    /// Base URL of the Confluent-compatible schema store.
    pub schema_store: String,
    /// HTTP basic auth for the schema store.
    #[serde(default)]
    pub schema_store_auth: Option<BasicAuth>,
    /// Consumer group of the workers, and the prefix of their transactional ids and internal
    /// topics.
    #[serde(default = "default_group")]
    pub group: String,
    /// This worker's stable name in the group (default: the host name); its transactional id is
    /// `<group>-<instance>`, so a restarted worker fences its zombie. Workers on one host need
    /// distinct names.
    #[serde(default)]
    pub instance: Option<String>,
    /// Rule documents (a YAML list, or JSON array) applied at start: a rule whose stored current
    /// version has the same document keeps that version and its state.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Partitions of the repartition, changelog and output topics the workers create: the most
    /// workers that can share the counting.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// At most this many records per transaction.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// At most this long gathering one batch, which ends earlier once nothing more has been
    /// fetched (a match takes two batches from its last event).
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// A caught-up source partition without records for this long stops holding timed rules'
    /// watermarks back: its clock follows the wall clock minus this.
    #[serde(
        default = "default_idle_timeout",
        with = "logpipe_core::config::duration_text"
    )]
    pub idle_timeout: Duration,
    /// At most one watermark marker per this interval (a timed rule's result waits up to it).
    #[serde(
        default = "default_watermark_interval",
        with = "logpipe_core::config::duration_text"
    )]
    pub watermark_interval: Duration,
    /// How long a sequence (`ordered: true`) without `within` may wait for its next step.
    #[serde(
        default = "default_within",
        with = "logpipe_core::config::duration_text"
    )]
    pub default_within: Duration,
    /// The longest `within` or window a rule may ask for: the bound of every partial match.
    #[serde(
        default = "default_max_within",
        with = "logpipe_core::config::duration_text"
    )]
    pub max_within: Duration,
    /// Timeout of one schema store request.
    #[serde(default = "default_schema_timeout_ms")]
    pub schema_timeout_ms: u64,
    /// The read-side cluster.
    pub kafka: KafkaConfig,
    /// `/metrics`, `/health`, `/ready` and the rules API.
    pub telemetry: TelemetryConfig,
    /// Basic auth for the rules API, as the schema store's; without it the API is open.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

fn default_group() -> String {
    "logpipe-cep".into()
}
fn default_partitions() -> i32 {
    12
}
fn default_batch_records() -> usize {
    5_000
}
fn default_batch_ms() -> u64 {
    25
}
fn default_schema_timeout_ms() -> u64 {
    5_000
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_watermark_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_within() -> Duration {
    Duration::from_secs(3_600)
}
fn default_max_within() -> Duration {
    Duration::from_secs(7 * 86_400)
}

impl CepConfig {
    pub fn transactional_id(&self) -> String {
        let instance = self
            .instance
            .clone()
            .unwrap_or_else(logpipe_core::service::host_name);
        format!("{}-{instance}", self.group)
    }

    fn client(&self) -> anyhow::Result<Client> {
        Client::new(
            &self.schema_store,
            self.schema_store_auth.as_ref(),
            Duration::from_millis(self.schema_timeout_ms),
        )
    }

    /// The rules file's documents, each with its name.
    fn rules_file_documents(&self) -> anyhow::Result<Vec<(String, Value)>> {
        let Some(path) = &self.rules_file else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("rules_file {}", path.display()))?;
        let documents: Vec<Value> = serde_yaml_ng::from_str(&text).with_context(|| {
            format!(
                "rules_file {}: not a YAML list of rule documents",
                path.display()
            )
        })?;
        let mut named = Vec::new();
        for (i, document) in documents.into_iter().enumerate() {
            let name = document
                .get("name")
                .and_then(Value::as_str)
                .with_context(|| {
                    format!("rules_file {} [{i}]: a rule needs a name", path.display())
                })?
                .to_owned();
            rule::Rule::compile(&name, 1, 0, &document)
                .with_context(|| format!("rules_file {} [{i}] ({name})", path.display()))?;
            named.push((name, document));
        }
        Ok(named)
    }
}

impl ServiceConfig for CepConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.kafka
            .validate(&Role::Consumer {
                group_id: self.group.clone(),
            })
            .map_err(anyhow::Error::msg)?;
        self.kafka
            .validate(&Role::TransactionalProducer {
                transactional_id: self.transactional_id(),
            })
            .map_err(anyhow::Error::msg)?;
        self.client()?;
        for topic in [
            logpipe_core::record::cep_state_topic(&self.group),
            logpipe_core::record::cep_repartition_topic(&self.group, "key"),
        ] {
            logpipe_core::record::check_topic_name(&topic)
                .map_err(|e| anyhow::anyhow!("group: {e}"))?;
        }
        anyhow::ensure!(!self.group.is_empty(), "group is empty");
        anyhow::ensure!(
            (1..=10_000).contains(&self.partitions),
            "partitions must be from 1 to 10000"
        );
        anyhow::ensure!(
            self.batch_records > 0 && self.batch_ms > 0,
            "batch_records and batch_ms must be positive"
        );
        anyhow::ensure!(
            !self.idle_timeout.is_zero() && !self.default_within.is_zero(),
            "idle_timeout and default_within must be positive"
        );
        anyhow::ensure!(
            self.default_within <= self.max_within,
            "default_within ({:?}) is longer than max_within ({:?})",
            self.default_within,
            self.max_within
        );
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        self.rules_file_documents()?;
        Ok(())
    }

    fn describe(&self) -> String {
        let rules = self
            .rules_file_documents()
            .map(|docs| {
                docs.into_iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!(
            "read {} as group {} (static member and transactional id {}), schemas from {}; state in {} ({} partitions); rules API on {} ({}); rules file: {}\n",
            self.kafka.bootstrap,
            self.group,
            self.transactional_id(),
            self.schema_store,
            logpipe_core::record::cep_state_topic(&self.group),
            self.partitions,
            self.telemetry.listen,
            if self.auth.is_some() { "writes need credentials" } else { "open: no [auth]" },
            match &self.rules_file {
                Some(path) => format!("{} ({rules})", path.display()),
                None => "none".into(),
            }
        )
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Puts the `rules_file`'s rules in force (at start and on SIGHUP); a rule whose document is
/// unchanged is not written again.
async fn apply_rules_file(api: &Api, config: &CepConfig) -> anyhow::Result<()> {
    for (name, document) in config.rules_file_documents()? {
        let (stored, warnings, written) = api
            .put_rule(&name, document, true)
            .await
            .map_err(|e| anyhow::anyhow!("rules_file: rule {name}: {e:?}"))?;
        tracing::info!(
            rule = name,
            version = stored.version,
            written,
            ?warnings,
            "rules file applied"
        );
    }
    Ok(())
}

/// The service, for `logpipe_core::service::main`.
pub struct CepService;

impl Service for CepService {
    const NAME: &'static str = "logpipe-cep";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/cep.toml";
    type Config = CepConfig;

    async fn run(config: CepConfig, ctx: Context) -> anyhow::Result<()> {
        metrics::describe();
        ctx.readiness.register("rules");
        ctx.readiness.register(pipeline::READY_KAFKA);
        let rules = loop {
            match Rules::open(&config.kafka, &config.transactional_id()).await {
                Ok(rules) => break rules,
                Err(e) => {
                    tracing::warn!("opening the rules topic: {e:#}; retrying");
                    ctx.readiness.not_ready("rules", format!("{e:#}"));
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        };
        let tail = {
            let rules = rules.clone();
            let shutdown = ctx.shutdown.clone();
            std::thread::spawn(move || rules.tail(shutdown))
        };
        let stats = pipeline::Stats::default();
        let api = Arc::new(Api {
            rules: rules.clone(),
            auth: Auth::new(config.auth.clone(), metrics::AUTH_DENIED),
            kafka: config.kafka.clone(),
            decoder: tokio::sync::Mutex::new(Decoder::new(config.client()?)),
            stats: stats.clone(),
            source_fields: Default::default(),
            max_within: config.max_within.as_millis() as i64,
        });
        apply_rules_file(&api, &config).await?;
        // The API serves before the check passes: a client that waited for /ready must not get
        // a 404 for a rule it PUTs (a CI run did, between these two steps).
        ctx.routes.install(api::router(Arc::clone(&api)));
        ctx.readiness.ready("rules");
        let mut reloads = ctx.clone();
        tokio::spawn(async move {
            while let Some(new) = reloads.next_reload::<CepConfig>().await {
                api.auth.replace(new.auth.clone());
                match apply_rules_file(&api, &new).await {
                    Ok(()) => tracing::info!("reload: [auth], telemetry.log and rules_file applied; the other keys take effect at the next start"),
                    Err(e) => tracing::error!("reload: {e:#}"),
                }
            }
        });
        let settings = Settings {
            kafka: config.kafka.clone(),
            group: config.group.clone(),
            transactional_id: config.transactional_id(),
            partitions: config.partitions,
            batch_records: config.batch_records,
            batch_time: Duration::from_millis(config.batch_ms),
            idle_timeout: config.idle_timeout,
            watermark_interval: config.watermark_interval,
            default_within: config.default_within.as_millis() as i64,
        };
        let worker = Worker::connect(
            settings,
            rules.clone(),
            Decoder::new(config.client()?),
            stats,
            ctx.readiness.clone(),
            ctx.shutdown.clone(),
        )
        .await?;
        let result = match worker {
            Some(worker) => worker.run().await,
            None => Ok(()),
        };
        ctx.shutdown.cancel();
        let _ = tokio::task::spawn_blocking(move || tail.join()).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> anyhow::Result<CepConfig> {
        let config: CepConfig = logpipe_core::config::parse(Path::new("cep.toml"), text, |_| None)?;
        config.validate()?;
        Ok(config)
    }

    const BASE: &str = "schema_store = \"http://127.0.0.1:8081\"\n[kafka]\nbootstrap = \"127.0.0.1:9092\"\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_minimal_config_gets_defaults() {
        let config = parse(BASE).unwrap();
        assert_eq!(config.group, "logpipe-cep");
        assert_eq!(config.partitions, 12);
        assert!(config.transactional_id().starts_with("logpipe-cep-"));
        assert!(
            config.describe().contains("_lp.cep.state.logpipe-cep"),
            "{}",
            config.describe()
        );
    }

    #[test]
    fn a_rules_file_is_checked_with_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, "- name: logins\n  source: clean.game\n  key: player_id\n  when: 'event == \"login\"'\n").unwrap();
        let config = parse(&format!("rules_file = {:?}\n{BASE}", path)).unwrap();
        assert!(config.describe().contains("(logins)"));
        std::fs::write(&path, "- name: logins\n  source: clean.game\n  key: player_id\n  event_list:\n  - {conditions: [{field: e, value: 1}], count: 0}\n").unwrap();
        let err = format!(
            "{:#}",
            parse(&format!("rules_file = {:?}\n{BASE}", path)).unwrap_err()
        );
        assert!(
            err.contains("event_list[0].count") && err.contains("logins"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = parse(&format!("partitons = 3\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitons"), "{err}");
        assert!(parse(&format!("partitions = 0\n{BASE}")).is_err());
        let err = format!(
            "{:#}",
            parse(&format!("group = \"a b\"\n{BASE}")).unwrap_err()
        );
        assert!(err.contains("group"), "{err}");
    }
}
