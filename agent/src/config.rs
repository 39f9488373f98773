//! The agent's configuration: what to tail (`[[inputs]]`), where to ship it (`[kafka]`), where
//! checkpoints live, and the knobs that bound memory and latency.
//!
//! Durations are integer milliseconds (`*_ms`) so a config reads the same everywhere and needs no
//! unit parser. Every default is chosen so that the agent loses nothing out of the box.

use std::path::PathBuf;
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::record::{check_topic_name, KeyStrategy};
use logpipe_core::service::ServiceConfig;
use logpipe_core::telemetry::TelemetryConfig;
use serde::Deserialize;

/// `logpipe-agent`'s config (every key is described in the crate README).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where checkpoints live (one `checkpoints.json`).
    pub state_dir: PathBuf,
    /// The write-side cluster.
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    /// Host name put in `lp.host` and the default key; the system host name when unset. Set it
    /// when host names are not unique or change (containers), since it is part of record ids.
    #[serde(default)]
    pub host: Option<String>,
    /// Upper bound of the memory held by records read but not yet acknowledged by Kafka: each
    /// record is charged its line, key and header bytes plus librdkafka's per-record overhead
    /// (`delivery::RECORD_OVERHEAD`). Reading stops at the budget: the files are the buffer.
    #[serde(default = "defaults::inflight_bytes")]
    pub inflight_bytes: u64,
    /// How often acknowledged offsets are written to `state_dir` (at most this much is resent
    /// after a crash).
    #[serde(default = "defaults::checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Full re-glob of every input, on top of file system notifications.
    #[serde(default = "defaults::rescan_interval_ms")]
    pub rescan_interval_ms: u64,
    /// Re-glob and stat interval when notifications are unavailable (or `watch = "poll"`).
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// `auto`: notifications on directories, falling back to polling when they fail;
    /// `poll`: polling only (NFS and other file systems without notifications).
    #[serde(default)]
    pub watch: WatchMode,
    /// A file rotated away or deleted is read to its end; once it has not grown for this long
    /// its partial last line (if any) is shipped and, when every record is acknowledged, the
    /// handle is closed.
    #[serde(default = "defaults::detached_idle_ms")]
    pub detached_idle_ms: u64,
    /// Most rotated-away or deleted files kept open at once. Past it the oldest is closed before
    /// it is finished: a counted and logged drop (`logpipe_agent_detached_evicted_total`).
    #[serde(default = "defaults::max_detached_files")]
    pub max_detached_files: usize,
    /// How long a SIGTERM may wait for Kafka to acknowledge what was read before the final
    /// checkpoint is written (unacknowledged lines are read again at the next start).
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// What to tail and where to ship it.
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
}

/// How directories are watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    #[default]
    Auto,
    Poll,
}

/// Where to start in files that already exist when the agent starts for the first time (no
/// checkpoint file). Files that appear later are always read from their beginning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

/// One `[[inputs]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Absolute glob patterns (`*` stays within one directory, `**` crosses directories).
    pub paths: Vec<String>,
    /// Globs of paths to leave alone even though `paths` match them (e.g. `*.gz`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Kafka topic, `raw.<stream>`.
    pub topic: String,
    /// Record key; default `<host>|<path>`, which keeps a file's lines in one partition.
    #[serde(default)]
    pub key: KeyStrategy,
    #[serde(default)]
    pub start_at: StartAt,
    /// Longer lines are cut to this many bytes and flagged with `lp.truncated`.
    #[serde(default = "defaults::max_line_bytes")]
    pub max_line_bytes: usize,
    /// Label of this input in metrics; the topic by default.
    #[serde(default)]
    pub name: Option<String>,
}

mod defaults {
    /// 32 MiB keeps the agent's peak RSS under 64 MiB at full speed, and is still ~5x what
    /// linger plus acknowledgement latency need at 100 MB/s (README, "Memory and CPU").
    pub(crate) fn inflight_bytes() -> u64 {
        32 << 20
    }
    pub(crate) fn checkpoint_interval_ms() -> u64 {
        1000
    }
    pub(crate) fn rescan_interval_ms() -> u64 {
        10_000
    }
    pub(crate) fn poll_interval_ms() -> u64 {
        250
    }
    pub(crate) fn detached_idle_ms() -> u64 {
        2000
    }
    pub(crate) fn max_detached_files() -> usize {
        256
    }
    pub(crate) fn drain_timeout_ms() -> u64 {
        20_000
    }
    pub(crate) fn max_line_bytes() -> usize {
        1 << 20
    }
}

/// Largest `max_line_bytes` accepted: a record must fit librdkafka's `message.max.bytes` limit
/// (1,000,000,000) with room for headers.
const MAX_LINE_LIMIT: usize = 512 << 20;

impl InputConfig {
    /// The metrics label of this input.
    pub(crate) fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.topic)
    }

    /// Compiles `paths` and `exclude` into matchers.
    pub(crate) fn compile(&self) -> anyhow::Result<CompiledInput> {
        let matchers = self
            .paths
            .iter()
            .map(|p| glob(p).map(|g| g.compile_matcher()))
            .collect::<Result<_, _>>()?;
        let mut exclude = GlobSetBuilder::new();
        for pattern in &self.exclude {
            exclude.add(glob(pattern)?);
        }
        Ok(CompiledInput {
            include: matchers,
            exclude: exclude.build()?,
        })
    }
}

/// An input's patterns, ready to match paths.
#[derive(Debug, Clone)]
pub(crate) struct CompiledInput {
    include: Vec<GlobMatcher>,
    exclude: GlobSet,
}

impl CompiledInput {
    pub(crate) fn matches(&self, path: &std::path::Path) -> bool {
        self.include.iter().any(|m| m.is_match(path)) && !self.exclude.is_match(path)
    }
}

fn glob(pattern: &str) -> anyhow::Result<Glob> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| anyhow::anyhow!("glob {pattern:?}: {e}"))
}

impl AgentConfig {
    pub(crate) fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
    pub(crate) fn rescan_interval(&self) -> Duration {
        Duration::from_millis(self.rescan_interval_ms)
    }
    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub(crate) fn detached_idle(&self) -> Duration {
        Duration::from_millis(self.detached_idle_ms)
    }
    pub(crate) fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The host name records carry.
    pub(crate) fn host_name(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(logpipe_core::service::host_name)
    }
}

impl ServiceConfig for AgentConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.kafka
            .validate(&Role::Producer)
            .map_err(anyhow::Error::msg)?;
        if !self.state_dir.is_absolute() {
            anyhow::bail!("state_dir {:?} must be an absolute path", self.state_dir);
        }
        if self
            .host
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.contains('|'))
        {
            anyhow::bail!(
                "host must be non-empty and must not contain '|' (it is part of the record key)"
            );
        }
        for (key, value) in [
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("rescan_interval_ms", self.rescan_interval_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("drain_timeout_ms", self.drain_timeout_ms),
        ] {
            if value == 0 {
                anyhow::bail!("{key} must be above 0");
            }
        }
        if self.inflight_bytes < 1 << 20 {
            anyhow::bail!(
                "inflight_bytes = {} is below 1 MiB; the agent could not batch",
                self.inflight_bytes
            );
        }
        if self.max_detached_files == 0 {
            anyhow::bail!(
                "max_detached_files must be at least 1, or rotated files could not be finished"
            );
        }
        if self.inputs.is_empty() {
            anyhow::bail!("no [[inputs]]: nothing to tail");
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let at = |e: String| anyhow::anyhow!("inputs[{i}].{e}");
            check_topic_name(&input.topic).map_err(|e| at(format!("topic: {e}")))?;
            if input.paths.is_empty() {
                return Err(at("paths is empty".into()));
            }
            for path in input.paths.iter().chain(&input.exclude) {
                if !path.starts_with('/') {
                    return Err(at(format!("paths: {path:?} must be absolute")));
                }
            }
            if input.max_line_bytes == 0 || input.max_line_bytes > MAX_LINE_LIMIT {
                return Err(at(format!(
                    "max_line_bytes must be between 1 and {MAX_LINE_LIMIT}"
                )));
            }
            input.compile().map_err(|e| at(format!("paths: {e:#}")))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "ship to {} as host {:?} with checkpoints in {} (in-flight budget {} MiB, watch {:?}):",
            self.kafka.bootstrap,
            self.host_name(),
            self.state_dir.display(),
            self.inflight_bytes >> 20,
            self.watch
        );
        for input in &self.inputs {
            out.push_str(&format!(
                "\n  {:?} (exclude {:?}) -> {} key {:?}, start at {:?}, lines cut at {} bytes",
                input.paths,
                input.exclude,
                input.topic,
                input.key,
                input.start_at,
                input.max_line_bytes
            ));
        }
        out
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    fn drain_timeout(&self) -> Duration {
        // The agent bounds its own drain; the runner's limit is a backstop above it.
        self.drain() + Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> anyhow::Result<AgentConfig> {
        let config: AgentConfig =
            logpipe_core::config::parse(Path::new("/etc/agent.toml"), text, |_| None)?;
        config.validate()?;
        Ok(config)
    }

    const BASE: &str = "state_dir = \"/var/lib/a\"\n[kafka]\nbootstrap = \"k:9092\"\n[telemetry]\nlisten = \"127.0.0.1:9301\"\n";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let config = parse(&format!(
            "{BASE}[[inputs]]\npaths = [\"/var/log/game/*.log\"]\ntopic = \"raw.game\"\n"
        ))
        .unwrap();
        assert_eq!(config.inflight_bytes, 32 << 20);
        assert_eq!(config.checkpoint_interval_ms, 1000);
        let input = &config.inputs[0];
        assert_eq!(input.max_line_bytes, 1 << 20);
        assert_eq!(input.key, KeyStrategy::HostPath);
        assert_eq!(input.start_at, StartAt::Beginning);
        assert_eq!(input.label(), "raw.game");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse(&format!(
            "{BASE}[[inputs]]\npaths = [\"var/log/*.log\"]\ntopic = \"raw.game\"\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("inputs[0].paths"), "{err:#}");
        let err = parse(&format!(
            "{BASE}[[inputs]]\npaths = [\"/a/*.log\"]\ntopic = \"raw game\"\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("inputs[0].topic"), "{err:#}");
        let err = parse(&format!(
            "{BASE}[[inputs]]\npaths = [\"/a/[.log\"]\ntopic = \"raw.g\"\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("glob"), "{err:#}");
        let err = parse(&format!(
            "{BASE}[[inputs]]\npaths = [\"/a/*.log\"]\ntopic = \"raw.g\"\nstart = \"end\"\n"
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("start"), "{err:#}");
        assert!(parse(BASE)
            .unwrap_err()
            .to_string()
            .contains("no [[inputs]]"));
    }

    #[test]
    fn globs_keep_star_within_a_directory_and_honour_excludes() {
        let input = InputConfig {
            paths: vec!["/logs/*.log".into(), "/deep/**/*.log".into()],
            exclude: vec!["/logs/skip-*.log".into()],
            topic: "raw.x".into(),
            key: KeyStrategy::HostPath,
            start_at: StartAt::Beginning,
            max_line_bytes: 10,
            name: None,
        };
        let compiled = input.compile().unwrap();
        assert!(compiled.matches(Path::new("/logs/a.log")));
        assert!(!compiled.matches(Path::new("/logs/sub/a.log")));
        assert!(!compiled.matches(Path::new("/logs/skip-1.log")));
        assert!(compiled.matches(Path::new("/deep/a.log")));
        assert!(compiled.matches(Path::new("/deep/x/y/a.log")));
    }
}
