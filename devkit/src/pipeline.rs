//! The whole pipeline on one machine: a write and a read dev cluster, the schema store with the
//! game schemas, the mirror, the validator and an agent tailing a log directory, and optionally a
//! CEP worker and a lake loader over the clean topics, each service a real process with its own
//! config and log file under one state directory.
//!
//! This is what `logpipe-dev up`, the end-to-end fault suite and the end-to-end benchmark share,
//! so that all three exercise the same wiring. Services can be killed, terminated and restarted
//! with the same config (same ports, same state), which is what crash tests need.
//!
//! Layout of `state_dir`:
//! - `logs/`: the agent's input directory (`logs/*.log`), where the load generator writes;
//! - `<service>.toml`: each service's config; `<service>.log`: its output, every run appended;
//! - `agent/`: the agent's checkpoints; `schema-store/`: the store's data; `lake/game`: the lake
//!   loader's Delta table of `clean.game`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use logpipe_core::record::{self, TopicTemplate};

use crate::harness::{bin_path, free_addr, DevCluster, Process};

/// The stream every pipeline carries: `raw.game` -> `clean.game` / `dlq.game`.
const STREAM: &str = "game";
/// The mirror's name (its state topic, transactional ids and group derive from it).
const MIRROR_NAME: &str = "pipeline";
/// The validator's consumer group (its replay-state topic derives from it).
const VALIDATOR_GROUP: &str = "logpipe-validator";
/// The CEP worker's consumer group (its internal topics and transactional id derive from it).
pub const CEP_GROUP: &str = "logpipe-cep";
/// The lake loader's table of the stream.
pub const LAKE_TABLE: &str = "game";
/// The lake loader's table of the stream's dead letters.
pub const LAKE_DEAD_LETTER_TABLE: &str = "game_dead_letters";
/// How long a service may take to answer `/ready` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What to start. `state_dir` has no sensible default and must be set by the caller.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Everything lives here (see the module documentation); created if missing.
    pub state_dir: PathBuf,
    /// Brokers per dev cluster.
    pub brokers: i32,
    /// Partitions of `raw.game` (on both clusters; also of `clean.game`, `dlq.game` and the
    /// mirror's state topic, i.e. its shards).
    pub partitions: i32,
    /// Also run a CEP worker (`logpipe-cep`, group [`CEP_GROUP`]) over the clean topics, with
    /// the rule documents of this file (a YAML list).
    pub cep_rules: Option<PathBuf>,
    /// The CEP worker's `idle_timeout`: how long a source partition without records holds back
    /// its watermark, i.e. how soon after the last event its event-time rules emit; default:
    /// the worker's own.
    pub cep_idle_timeout: Option<Duration>,
    /// Also run a lake loader (`logpipe-lake`) loading the clean topic into the Delta table
    /// [`Pipeline::lake_table`].
    pub lake: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            state_dir: PathBuf::new(),
            brokers: 3,
            partitions: 4,
            cep_rules: None,
            cep_idle_timeout: None,
            lake: false,
        }
    }
}

/// One of the pipeline's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Agent,
    Mirror,
    Validator,
    SchemaStore,
    /// Only with [`PipelineOptions::cep_rules`].
    Cep,
    /// Only with [`PipelineOptions::lake`].
    Lake,
}

impl Component {
    /// The services every pipeline runs, in pipeline order (the order `stop` terminates them in).
    pub const ALL: [Component; 4] = [
        Component::Agent,
        Component::Mirror,
        Component::Validator,
        Component::SchemaStore,
    ];

    /// Every service a pipeline may run, in pipeline order (see [`Pipeline::components`]).
    pub const EVERY: [Component; 6] = [
        Component::Agent,
        Component::Mirror,
        Component::Validator,
        Component::Cep,
        Component::Lake,
        Component::SchemaStore,
    ];

    /// Short name: `agent`, `mirror`, `validator`, `schema-store`, `cep`, `lake` (also its config
    /// and log file names).
    pub fn name(self) -> &'static str {
        match self {
            Component::Agent => "agent",
            Component::Mirror => "mirror",
            Component::Validator => "validator",
            Component::SchemaStore => "schema-store",
            Component::Cep => "cep",
            Component::Lake => "lake",
        }
    }

    /// The service's binary.
    pub fn binary(self) -> &'static str {
        match self {
            Component::Agent => "logpipe-agent",
            Component::Mirror => "logpipe-mirror",
            Component::Validator => "logpipe-validator",
            Component::SchemaStore => "logpipe-schema-store",
            Component::Cep => "logpipe-cep",
            Component::Lake => "logpipe-lake",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One service: its config, telemetry address and, while started, its process.
struct Service {
    component: Component,
    config: PathBuf,
    telemetry: SocketAddr,
    log: PathBuf,
    /// The last process started (possibly exited, kept for its status).
    process: Option<Process>,
    starts: u32,
}

impl Service {
    fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_status().is_none())
    }

    /// Starts the service (appending a marker to its log) and waits until it is ready.
    async fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            bail!("{} is already running", self.component);
        }
        self.starts += 1;
        let marker = format!(
            "=== logpipe-dev: start {} of {} ===\n",
            self.starts,
            self.component.binary()
        );
        append(&self.log, &marker)?;
        let mut command = Command::new(bin_path(self.component.binary())?);
        command.arg("run").arg("--config").arg(&self.config);
        let mut process = Process::spawn_logging_to(self.component.binary(), command, &self.log)?;
        let ready = process.wait_ready(self.telemetry, READY_TIMEOUT).await;
        self.process = Some(process);
        ready
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A TOML basic string (JSON's string escapes are valid TOML).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// The running pipeline. Every process is killed when it is dropped; [`Pipeline::stop`] stops
/// them gracefully instead.
pub struct Pipeline {
    options: PipelineOptions,
    write: DevCluster,
    read: DevCluster,
    store_api: SocketAddr,
    raw: String,
    clean: String,
    dlq: String,
    /// Indexed by [`Component::index`].
    services: Vec<Service>,
    http: reqwest::Client,
}

impl Pipeline {
    /// Starts write + read dev clusters, the schema store with the game schemas registered
    /// (subjects `game.<event>`), the validator, the mirror (write -> read) and the agent tailing
    /// `<state_dir>/logs/*.log` into `raw.game` on the write cluster; returns once every service
    /// answers `/ready`.
    pub async fn start(options: PipelineOptions) -> anyhow::Result<Pipeline> {
        anyhow::ensure!(
            !options.state_dir.as_os_str().is_empty(),
            "PipelineOptions::state_dir must be set"
        );
        anyhow::ensure!(options.brokers >= 1, "at least one broker per cluster");
        anyhow::ensure!(options.partitions >= 1, "at least one partition");
        let state = options.state_dir.clone();
        for dir in [
            state.clone(),
            state.join("logs"),
            state.join("agent"),
            state.join("schema-store"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let raw = record::raw_topic(STREAM);
        let clean = TopicTemplate::clean_default().render(&raw);
        let dlq = TopicTemplate::dlq_default().render(&raw);
        let mirror_state = record::mirror_state_topic(MIRROR_NAME);
        let replay_state = record::resend_state_topic(VALIDATOR_GROUP);
        let n = options.partitions;
        // The dev clusters keep every record (up to their memory budget), so nothing a run
        // writes is deleted before it is reconciled.
        let write = DevCluster::start_as("write", options.brokers, &[(&raw, n)]).await?;
        let lake_dlq = record::lake_dlq_topic(LAKE_TABLE);
        let lake_dead_dlq = record::lake_dlq_topic(LAKE_DEAD_LETTER_TABLE);
        let read_topics = [
            (raw.as_str(), n),
            (mirror_state.as_str(), n),
            (clean.as_str(), n),
            (dlq.as_str(), n),
            (replay_state.as_str(), 1),
            (lake_dlq.as_str(), 1),
            (lake_dead_dlq.as_str(), 1),
        ];
        let read = DevCluster::start_as("read", options.brokers, &read_topics).await?;

        let store_api = free_addr();
        let cep_rules = match &options.cep_rules {
            Some(path) => Some(
                std::fs::canonicalize(path)
                    .with_context(|| format!("the CEP rules file {}", path.display()))?,
            ),
            None => None,
        };
        let configs = ServiceConfigs {
            state: &state,
            write: write.bootstrap(),
            read: read.bootstrap(),
            store_api,
            raw: &raw,
            replay_state: &replay_state,
            cep_rules: cep_rules.as_deref(),
            cep_idle_timeout: options.cep_idle_timeout,
            partitions: n,
            clean: &clean,
            dlq: &dlq,
        };
        let mut services = Vec::new();
        for component in Component::EVERY {
            if (component == Component::Cep && cep_rules.is_none())
                || (component == Component::Lake && !options.lake)
            {
                continue;
            }
            let telemetry = free_addr();
            let config = state.join(format!("{}.toml", component.name()));
            std::fs::write(&config, configs.render(component, telemetry))
                .with_context(|| format!("writing {}", config.display()))?;
            let log = state.join(format!("{}.log", component.name()));
            services.push(Service {
                component,
                config,
                telemetry,
                log,
                process: None,
                starts: 0,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut pipeline = Pipeline {
            options,
            write,
            read,
            store_api,
            raw,
            clean,
            dlq,
            services,
            http,
        };
        pipeline.service(Component::SchemaStore).start().await?;
        pipeline.register_schemas().await?;
        // The CEP worker before the agent: its rules then count every line the agent reads.
        for component in [
            Component::Validator,
            Component::Cep,
            Component::Lake,
            Component::Mirror,
            Component::Agent,
        ] {
            if pipeline.has(component) {
                pipeline.service(component).start().await?;
            }
        }
        Ok(pipeline)
    }

    /// Whether this pipeline runs `c` (every one but the CEP worker and the lake loader, which
    /// are optional).
    pub fn has(&self, c: Component) -> bool {
        self.services.iter().any(|s| s.component == c)
    }

    /// The services this pipeline runs, in pipeline order.
    pub fn components(&self) -> Vec<Component> {
        Component::EVERY
            .into_iter()
            .filter(|&c| self.has(c))
            .collect()
    }

    fn get(&self, c: Component) -> &Service {
        self.services
            .iter()
            .find(|s| s.component == c)
            .unwrap_or_else(|| panic!("this pipeline does not run {c}"))
    }

    fn service(&mut self, c: Component) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.component == c)
            .unwrap_or_else(|| panic!("this pipeline does not run {c}"))
    }

    /// Registers the load generator's Avro schemas (idempotent: the same schema gets its id back).
    async fn register_schemas(&self) -> anyhow::Result<()> {
        crate::harness::register_game_schemas(&self.http, &self.schema_store_url()).await?;
        Ok(())
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// The agent's input directory: write `*.log` files here.
    pub fn log_dir(&self) -> PathBuf {
        self.options.state_dir.join("logs")
    }

    /// A service's output file (every run appended, with a marker line per start).
    pub fn log_file(&self, c: Component) -> PathBuf {
        self.get(c).log.clone()
    }

    /// A service's config file.
    pub fn config_file(&self, c: Component) -> PathBuf {
        self.get(c).config.clone()
    }

    pub fn write_cluster(&self) -> &DevCluster {
        &self.write
    }

    pub fn read_cluster(&self) -> &DevCluster {
        &self.read
    }

    /// A service's telemetry address (`/metrics`, `/health`, `/ready`).
    pub fn telemetry(&self, c: Component) -> SocketAddr {
        self.get(c).telemetry
    }

    /// The schema store's API (Confluent Schema Registry REST).
    pub fn schema_store_url(&self) -> String {
        format!("http://{}", self.store_api)
    }

    pub fn raw_topic(&self) -> &str {
        &self.raw
    }

    pub fn clean_topics(&self) -> Vec<String> {
        vec![self.clean.clone()]
    }

    pub fn dlq_topics(&self) -> Vec<String> {
        vec![self.dlq.clone()]
    }

    /// Where the lake loader keeps its Delta table of the clean topic.
    pub fn lake_table(&self) -> PathBuf {
        lake_table(&self.options.state_dir)
    }

    /// Where the lake loader keeps its Delta table of the dead-letter topic.
    pub fn lake_dead_letter_table(&self) -> PathBuf {
        lake_dead_letter_table(&self.options.state_dir)
    }

    /// How many times a service has been started (1 after [`Pipeline::start`]).
    pub fn starts(&self, c: Component) -> u32 {
        self.get(c).starts
    }

    /// The process id of the service's last process, if it was started.
    pub fn pid(&self, c: Component) -> Option<u32> {
        self.get(c).process.as_ref().map(Process::pid)
    }

    /// Whether the service's process is alive.
    pub fn is_running(&mut self, c: Component) -> bool {
        self.service(c).running()
    }

    /// SIGKILL: the crash case. Returns once the process is gone.
    pub fn kill9(&mut self, c: Component) -> anyhow::Result<()> {
        let process = self
            .service(c)
            .process
            .as_mut()
            .with_context(|| format!("{c} was never started"))?;
        process.kill9()?;
        Ok(())
    }

    /// Starts a stopped (killed or terminated) service again with the same config and waits
    /// until it is ready.
    pub async fn restart(&mut self, c: Component) -> anyhow::Result<()> {
        self.service(c).start().await
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; fails if the exit is not clean.
    pub async fn terminate(&mut self, c: Component, timeout: Duration) -> anyhow::Result<()> {
        let process = self
            .service(c)
            .process
            .as_mut()
            .with_context(|| format!("{c} was never started"))?;
        let status = process.terminate(timeout).await?;
        if !status.success() {
            bail!("{c} exited with {status} after SIGTERM\n{}", process.logs());
        }
        Ok(())
    }

    /// The last output of a service's log file, for error messages.
    pub fn logs(&self, c: Component) -> String {
        self.get(c)
            .process
            .as_ref()
            .map(Process::logs)
            .unwrap_or_default()
    }

    /// A service's `/metrics` text.
    pub async fn metrics(&self, c: Component) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.telemetry(c));
        Ok(self
            .http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Records the mirror and the validator say retention deleted before they read them (the
    /// validator's counter since its last start, the mirror's per-partition gauge): the part of
    /// a reconciliation's losses that is retention's, not the pipeline's.
    pub async fn records_lost_to_retention(&self) -> u64 {
        use logpipe_core::metric_names::{mirror, validator};
        let mut total = 0.0;
        for (c, name) in [
            (Component::Mirror, mirror::DATA_LOSS_RECORDS),
            (Component::Validator, validator::RECORDS_LOST_TO_RETENTION),
        ] {
            if let Ok(text) = self.metrics(c).await {
                total += crate::prometheus::total(&text, name);
            }
        }
        total as u64
    }

    /// Stops everything gracefully: SIGTERM to the services in pipeline order (agent, mirror,
    /// validator, CEP worker, store, each waited for up to `timeout`), then the clusters. Every
    /// process is stopped even when one fails; the first failure is returned.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        let mut first_error = None;
        for c in self.components() {
            if self.is_running(c) {
                if let Err(e) = self.terminate(c, timeout).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        for cluster in [&mut self.write, &mut self.read] {
            if let Some(process) = cluster.process() {
                if let Err(e) = process.terminate(timeout).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn lake_table(state: &Path) -> PathBuf {
    state.join("lake").join(LAKE_TABLE)
}

fn lake_dead_letter_table(state: &Path) -> PathBuf {
    state.join("lake").join(LAKE_DEAD_LETTER_TABLE)
}

/// A regex matching exactly one topic name (the services match regexes against whole names).
fn exact_regex(topic: &str) -> String {
    topic.replace('.', "\\.")
}

/// Everything the service configs are made of.
struct ServiceConfigs<'a> {
    state: &'a Path,
    write: &'a str,
    read: &'a str,
    store_api: SocketAddr,
    raw: &'a str,
    replay_state: &'a str,
    cep_rules: Option<&'a Path>,
    cep_idle_timeout: Option<Duration>,
    partitions: i32,
    clean: &'a str,
    dlq: &'a str,
}

impl ServiceConfigs<'_> {
    fn render(&self, component: Component, telemetry: SocketAddr) -> String {
        let telemetry = format!("[telemetry]\nlisten = \"{telemetry}\"\n");
        match component {
            // Checkpoints every 500 ms: a crash replays less (the validator drops replays anyway).
            Component::Agent => format!(
                "state_dir = {}\ncheckpoint_interval_ms = 500\n[kafka]\nbootstrap = {}\n{telemetry}\
                 [[inputs]]\npaths = [{}]\ntopic = {}\n",
                toml_path(&self.state.join("agent")),
                toml_str(self.write),
                toml_path(&self.state.join("logs").join("*.log")),
                toml_str(self.raw),
            ),
            // `start` makes every read-side topic before the services run, so the mirror creates
            // none. Sessions keep their defaults: the fault suite holds the services to them.
            Component::Mirror => format!(
                "name = {}\ncreate_topics = false\n\
                 [source]\nbootstrap = {}\n[target]\nbootstrap = {}\n\
                 [topics]\ninclude = [{}]\nrefresh_interval_ms = 1000\n{telemetry}",
                toml_str(MIRROR_NAME),
                toml_str(self.write),
                toml_str(self.read),
                toml_str(&exact_regex(self.raw)),
            ),
            Component::Validator => format!(
                "schema_store = {}\ngroup_id = {}\ntransactional_id = {}\nresend_state_topic = {}\n\
                 topic_refresh_ms = 1000\n[kafka]\nbootstrap = {}\n{telemetry}\
                 [[routes]]\ntopics = {}\nsubject = {{ field = \"event\", prefix = \"game.\" }}\n",
                toml_str(&format!("http://{}", self.store_api)),
                toml_str(VALIDATOR_GROUP),
                toml_str(&format!("{VALIDATOR_GROUP}-pipeline")),
                toml_str(self.replay_state),
                toml_str(self.read),
                toml_str(&exact_regex(self.raw)),
            ),
            Component::SchemaStore => format!(
                "listen = \"{}\"\n[storage]\nkind = \"local\"\npath = {}\n{telemetry}",
                self.store_api,
                toml_path(&self.state.join("schema-store")),
            ),
            // Its internal and output topics get the clean topics' partitions.
            Component::Cep => format!(
                "{}schema_store = {}\ngroup = {}\ninstance = \"dev\"\nrules_file = {}\npartitions = {}\n\
                 [kafka]\nbootstrap = {}\n{telemetry}",
                self.cep_idle_timeout.map_or_else(String::new, |idle| format!(
                    "idle_timeout = {}\n",
                    toml_str(&humantime::format_duration(idle).to_string())
                )),
                toml_str(&format!("http://{}", self.store_api)),
                toml_str(CEP_GROUP),
                self.cep_rules.map_or_else(|| "\"\"".into(), toml_path),
                self.partitions,
                toml_str(self.read),
            ),
            // Commits every 5 s rather than every minute, so rows show up while one watches.
            Component::Lake => format!(
                "schema_store = {}
instance = \"dev\"
[kafka]
bootstrap = {}
{telemetry}                 [[tables]]
name = {}
topics = [{}]
uri = {}
event_time = \"event_time\"
flush_age = \"5s\"
[[tables]]
name = {}
topics = [{}]
uri = {}
kind = \"dead_letters\"
flush_age = \"5s\"
",
                toml_str(&format!("http://{}", self.store_api)),
                toml_str(self.read),
                toml_str(LAKE_TABLE),
                toml_str(self.clean),
                toml_path(&lake_table(self.state)),
                toml_str(LAKE_DEAD_LETTER_TABLE),
                toml_str(self.dlq),
                toml_path(&lake_dead_letter_table(self.state)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_shared_topics_and_quote_paths() {
        let configs = ServiceConfigs {
            state: Path::new("/tmp/a \"b\""),
            write: "127.0.0.1:1",
            read: "127.0.0.1:2",
            store_api: "127.0.0.1:3".parse().unwrap(),
            raw: "raw.game",
            replay_state: "_lp.validator.logpipe-validator.replay-state",
            cep_rules: Some(Path::new("/r/game.yaml")),
            cep_idle_timeout: Some(Duration::from_secs(3)),
            partitions: 4,
            clean: "clean.game",
            dlq: "dlq.game",
        };
        let telemetry: SocketAddr = "127.0.0.1:4".parse().unwrap();
        let agent = configs.render(Component::Agent, telemetry);
        assert!(
            agent.contains(r#"paths = ["/tmp/a \"b\"/logs/*.log"]"#),
            "{agent}"
        );
        assert!(agent.contains("bootstrap = \"127.0.0.1:1\""));
        let mirror = configs.render(Component::Mirror, telemetry);
        assert!(mirror.contains(r#"include = ["raw\\.game"]"#), "{mirror}");
        let validator = configs.render(Component::Validator, telemetry);
        assert!(
            validator.contains("schema_store = \"http://127.0.0.1:3\""),
            "{validator}"
        );
        assert!(validator.contains("bootstrap = \"127.0.0.1:2\""));
        let cep = configs.render(Component::Cep, telemetry);
        for line in [
            "schema_store = \"http://127.0.0.1:3\"",
            "group = \"logpipe-cep\"",
            "rules_file = \"/r/game.yaml\"",
            "partitions = 4",
            "idle_timeout = \"3s\"",
            "bootstrap = \"127.0.0.1:2\"",
            "listen = \"127.0.0.1:4\"",
        ] {
            assert!(cep.contains(line), "{line} not in {cep}");
        }
        let lake = configs.render(Component::Lake, telemetry);
        for line in [
            "schema_store = \"http://127.0.0.1:3\"",
            "topics = [\"clean.game\"]",
            r#"uri = "/tmp/a \"b\"/lake/game""#,
            "topics = [\"dlq.game\"]",
            r#"uri = "/tmp/a \"b\"/lake/game_dead_letters""#,
            "kind = \"dead_letters\"",
            "bootstrap = \"127.0.0.1:2\"",
        ] {
            assert!(lake.contains(line), "{line} not in {lake}");
        }
    }
}
