//! `logpipe-lake`: clean topics into Delta Lake tables (Parquet on S3 or a local disk), exactly
//! once, readable by every Delta reader unchanged.
//!
//! The crate's API is the service ([`LakeService`], [`LakeConfig`]).
//!
//! Modules, in the order a record meets them: `schemas` (the wire format's schema id to the
//! writer schema and its columns, cached), `columns` (schema types as Arrow types, values fitted
//! to them), `dead_letters` (a `dlq.*` record's columns, for dead-letter tables), `rows` (a
//! record as its table row, with the columns of its place), `batch` (rows as Arrow arrays),
//! `files` (a partition's open files, written beside the loop), `table` (the Delta table:
//! positions, widening, commits), `loader` (the loop: read, write, commit, seek), `compact`
//! (small files of closed days merged), `metrics`.

mod batch;
mod columns;
mod compact;
mod dead_letters;
mod files;
mod letter;
mod loader;
mod metrics;
mod read;
mod rows;
mod schemas;
mod table;

use std::collections::HashMap;
use std::time::Duration;

use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use logpipe_schema_client::{BasicAuth, Client};
use serde::Deserialize;

/// `logpipe-lake`'s config (see the README for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// Base URL of the Confluent-compatible schema store.
    pub schema_store: String,
    /// HTTP basic auth for the schema store.
    #[serde(default)]
    pub schema_store_auth: Option<BasicAuth>,
    /// Prefix of the consumer groups: each table is loaded by the group `<group>.<table>`, whose
    /// name is also in the table's transaction ids.
    #[serde(default = "default_group")]
    pub group: String,
    /// This loader's stable name in its groups (default: the host name); loaders on one host
    /// need distinct names.
    #[serde(default)]
    pub instance: Option<String>,
    /// Timeout of one schema store request.
    #[serde(default = "default_schema_timeout_ms")]
    pub schema_timeout_ms: u64,
    /// The read-side cluster (clean topics in, `dlq.lake.<table>` out).
    pub kafka: KafkaConfig,
    pub tables: Vec<TableConfig>,
    /// `/metrics`, `/health`, `/ready`.
    pub telemetry: TelemetryConfig,
}

/// One Delta table and the topics loaded into it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The table's name: in its consumer group, transaction ids, metrics and dead-letter topic.
    pub name: String,
    /// Clean (or, with `kind = "dead_letters"`, dead-letter) topics whose records become the
    /// table's rows.
    pub topics: Vec<String>,
    /// What the topics hold: clean records (columns from their schemas) or dead letters (fixed
    /// columns from the `lp.error.*` headers and the raw value).
    #[serde(default)]
    pub kind: TableKind,
    /// `s3://bucket/prefix`, `file:///path` or a local path.
    pub uri: String,
    /// Partition columns: `["dt"]` (the event's UTC date, the default), none, or columns of the
    /// table (text, integers, booleans or dates), e.g. `["dt", "platform"]`. Small files of
    /// closed days are compacted only when `dt` is one of them.
    #[serde(default = "default_partition_by")]
    pub partition_by: Vec<String>,
    /// The field holding the event's time, for `dt`: an Avro timestamp, RFC 3339 text or epoch
    /// milliseconds. Without it, `dt` is the date of the record's Kafka timestamp.
    #[serde(default)]
    pub event_time: Option<String>,
    /// A commit once a partition's Parquet reaches this many bytes ...
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: u64,
    /// ... or once its oldest uncommitted row is this old, whichever comes first.
    #[serde(
        default = "default_flush_age",
        with = "logpipe_core::config::duration_text"
    )]
    pub flush_age: Duration,
    /// How often the small files of closed days are merged into files of `flush_bytes` ...
    #[serde(
        default = "default_compact_interval",
        with = "logpipe_core::config::duration_text"
    )]
    pub compact_interval: Duration,
    /// ... a day being closed once it ended this long ago.
    #[serde(
        default = "default_compact_after",
        with = "logpipe_core::config::duration_text"
    )]
    pub compact_after: Duration,
    /// How often files no table version references (replaced by compaction, or written by a
    /// loader that never committed them) are removed once older than the table's retention.
    #[serde(
        default = "default_vacuum_interval",
        with = "logpipe_core::config::duration_text"
    )]
    pub vacuum_interval: Duration,
    /// Object store options (endpoint, region, credentials; see the README).
    #[serde(default)]
    pub storage: HashMap<String, String>,
}

/// What a table's topics hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// Clean records in the Confluent wire format.
    #[default]
    Clean,
    /// Dead letters (`dlq.*`): raw lines or refused records with the `lp.error.*` headers.
    DeadLetters,
}

fn default_group() -> String {
    "logpipe-lake".into()
}
fn default_schema_timeout_ms() -> u64 {
    5_000
}
impl TableConfig {
    /// Whether the table is partitioned by the event's day (a file per day is open, and closed
    /// days are compacted).
    pub(crate) fn by_day(&self) -> bool {
        self.partition_by.iter().any(|c| c == rows::DT)
    }
}

fn default_partition_by() -> Vec<String> {
    vec![rows::DT.into()]
}
fn default_flush_bytes() -> u64 {
    128 << 20
}
fn default_flush_age() -> Duration {
    Duration::from_secs(60)
}
fn default_compact_interval() -> Duration {
    Duration::from_secs(3_600)
}
fn default_compact_after() -> Duration {
    Duration::from_secs(86_400)
}
fn default_vacuum_interval() -> Duration {
    Duration::from_secs(3_600)
}

/// The loader's consumer settings over logpipe's consumer defaults (the user's properties win):
/// librdkafka reads ahead up to 64 MiB and 100,000 records per consumer by default. A loader is
/// slower than its broker, so that read-ahead is memory it holds for nothing (~150 MiB of the
/// benchmark's peak); with these two and the defaults' 10 ms fetch back-off a plain consumer
/// was 2.7x as fast in the benchmark.
const READ_AHEAD: &[(&str, &str)] = &[
    ("queued.max.messages.kbytes", "16384"),
    ("queued.min.messages", "10000"),
];

/// The librdkafka config a loader's consumer (`role`) reads with.
pub fn consumer_config(kafka: &KafkaConfig, role: &Role) -> rdkafka::ClientConfig {
    let mut config = kafka.client_config(role, "logpipe-lake");
    for (name, value) in READ_AHEAD {
        if !kafka.properties.contains_key(*name) {
            config.set(*name, *value);
        }
    }
    config
}

impl LakeConfig {
    fn instance(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(logpipe_core::service::host_name)
    }

    /// The consumer group loading `table`.
    fn group_of(&self, table: &TableConfig) -> String {
        format!("{}.{}", self.group, table.name)
    }

    fn client(&self) -> anyhow::Result<Client> {
        Client::new(
            &self.schema_store,
            self.schema_store_auth.as_ref(),
            Duration::from_millis(self.schema_timeout_ms),
        )
    }
}

impl ServiceConfig for LakeConfig {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.group.is_empty(), "group is empty");
        anyhow::ensure!(!self.tables.is_empty(), "tables: no table to load");
        self.client()?;
        self.kafka
            .validate(&Role::Producer)
            .map_err(anyhow::Error::msg)?;
        let mut names = std::collections::HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}] ({})", table.name);
            anyhow::ensure!(
                names.insert(&table.name),
                "{at}: a second table of that name"
            );
            logpipe_core::record::check_topic_name(&logpipe_core::record::lake_dlq_topic(
                &table.name,
            ))
            .map_err(|e| anyhow::anyhow!("{at}: name: {e}"))?;
            self.kafka
                .validate(&Role::StaticMember {
                    group_id: self.group_of(table),
                    instance_id: self.instance(),
                })
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!table.topics.is_empty(), "{at}: topics is empty");
            for topic in &table.topics {
                logpipe_core::record::check_topic_name(topic)
                    .map_err(|e| anyhow::anyhow!("{at}: topics: {e}"))?;
            }
            anyhow::ensure!(
                table.kind == TableKind::Clean || table.event_time.is_none(),
                "{at}: event_time: dead letters are dated by their Kafka timestamp (they may not hold a readable event)"
            );
            let mut seen = std::collections::BTreeSet::new();
            for column in &table.partition_by {
                anyhow::ensure!(
                    seen.insert(column),
                    "{at}: partition_by names {column} twice"
                );
                anyhow::ensure!(
                    !rows::per_record(column),
                    "{at}: partition_by: {column} is each record's own: a directory per record"
                );
            }
            if table.kind == TableKind::DeadLetters {
                let columns = rows::table_fields(&dead_letters::fields());
                if let Some(why) = table::unpartitionable(&columns, &table.partition_by) {
                    anyhow::bail!("{at}: partition_by: {why} (a dead-letter table's)");
                }
            }
            anyhow::ensure!(
                table.flush_bytes >= 1 << 20,
                "{at}: flush_bytes is below 1 MiB"
            );
            anyhow::ensure!(
                !table.flush_age.is_zero()
                    && !table.vacuum_interval.is_zero()
                    && !table.compact_interval.is_zero(),
                "{at}: flush_age, compact_interval and vacuum_interval must be positive"
            );
            table::location(&table.uri).map_err(|e| anyhow::anyhow!("{at}: uri: {e}"))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "read {} (static member {}), schemas from {}; telemetry on {}\n",
            self.kafka.bootstrap,
            self.instance(),
            self.schema_store,
            self.telemetry.listen
        );
        for table in &self.tables {
            out.push_str(&format!(
                "table {}: {} of {} -> {} as group {}, partitioned by [{}], dt from {}, a commit per {} MiB or {} per partition; records that do not fit -> {}\n",
                table.name,
                match table.kind {
                    TableKind::Clean => "clean records",
                    TableKind::DeadLetters => "dead letters",
                },
                table.topics.join(", "),
                table.uri,
                self.group_of(table),
                table.partition_by.join(", "),
                table.event_time.as_deref().unwrap_or("the Kafka timestamp"),
                table.flush_bytes >> 20,
                humantime::format_duration(table.flush_age),
                logpipe_core::record::lake_dlq_topic(&table.name),
            ));
        }
        out
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The service, for `logpipe_core::service::main`.
pub struct LakeService;

impl Service for LakeService {
    const NAME: &'static str = "logpipe-lake";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/lake.toml";
    type Config = LakeConfig;

    async fn run(config: LakeConfig, ctx: Context) -> anyhow::Result<()> {
        metrics::describe();
        table::register_object_stores();
        let mut loaders = tokio::task::JoinSet::new();
        for table in &config.tables {
            let settings = loader::Settings {
                kafka: config.kafka.clone(),
                group: config.group_of(table),
                instance: config.instance(),
                table: table.clone(),
            };
            let client = config.client()?;
            let ctx = ctx.clone();
            loaders.spawn(async move { loader::run(settings, client, ctx).await });
        }
        let mut result = Ok(());
        while let Some(done) = loaders.join_next().await {
            let done = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = done {
                tracing::error!("{e:#}");
                ctx.shutdown.cancel();
                result = Err(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> anyhow::Result<LakeConfig> {
        let config: LakeConfig =
            logpipe_core::config::parse(Path::new("lake.toml"), text, |_| None)?;
        config.validate()?;
        Ok(config)
    }

    const BASE: &str = "schema_store = \"http://127.0.0.1:8081\"\n[kafka]\nbootstrap = \"127.0.0.1:9092\"\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn the_contracts_minimal_config_gets_defaults() {
        let config = parse(&format!(
            "{BASE}[[tables]]\nname = \"game\"\ntopics = [\"clean.game\"]\nuri = \"/var/lib/logpipe/lake/game\"\n"
        ))
        .unwrap();
        let table = &config.tables[0];
        assert_eq!(config.group_of(table), "logpipe-lake.game");
        assert_eq!(table.partition_by, ["dt"]);
        assert_eq!(table.flush_bytes, 128 << 20);
        assert_eq!(table.flush_age, Duration::from_secs(60));
        assert!(config.describe().contains("dlq.lake.game"));
    }

    #[test]
    fn bad_tables_are_refused_by_key() {
        let cases = [
            ("", "tables"),
            (
                "[[tables]]\nname = \"g\"\ntopics = []\nuri = \"/t\"\n",
                "topics is empty",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"/t\"\npartition_by = [\"kafka_offset\"]\n",
                "a directory per record",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"/t\"\npartition_by = [\"dt\", \"dt\"]\n",
                "dt twice",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"dlq.g\"]\nuri = \"/t\"\nkind = \"dead_letters\"\npartition_by = [\"level\"]\n",
                "level is not one of its columns",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"/t\"\nflush_age = \"soon\"\n",
                "write it like",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"ftp://x/t\"\n",
                "uri",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"/a\"\n[[tables]]\nname = \"g\"\ntopics = [\"clean.h\"]\nuri = \"/b\"\n",
                "second table",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"dlq.g\"]\nuri = \"/t\"\nkind = \"dead_letters\"\nevent_time = \"event_time\"\n",
                "event_time: dead letters are dated by their Kafka timestamp",
            ),
            (
                "[[tables]]\nname = \"g\"\ntopics = [\"dlq.g\"]\nuri = \"/t\"\nkind = \"raw\"\n",
                "kind",
            ),
        ];
        for (tables, want) in cases {
            let err = format!("{:#}", parse(&format!("{BASE}{tables}")).unwrap_err());
            assert!(err.contains(want), "{tables}: {err}");
        }
    }

    #[test]
    fn the_consumer_reads_ahead_little_unless_told_otherwise() {
        let config = parse(&format!(
            "{BASE}[kafka.properties]\n\"queued.min.messages\" = \"500\"\n[[tables]]\nname = \"g\"\ntopics = [\"clean.g\"]\nuri = \"/t\"\n"
        ))
        .unwrap();
        let role = Role::Consumer {
            group_id: "g".into(),
        };
        let consumer = consumer_config(&config.kafka, &role);
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(
            consumer.get("queued.min.messages"),
            Some("500"),
            "the user's value wins"
        );
    }
}
