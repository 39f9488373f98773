//! The mirror's config (`[source]`, `[target]`, `[topics]`, `[loop_guard]`, `[telemetry]` and a
//! few top-level keys) and the topic selection it implies.
//!
//! Durations are integer milliseconds (`*_ms`), as in every logpipe config.

use std::time::Duration;

use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::record::{check_topic_name, mirror_state_topic, TopicTemplate};
use logpipe_core::telemetry::TelemetryConfig;
use regex::RegexSet;
use serde::Deserialize;

/// `logpipe-mirror`'s config (see the crate docs and README for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Names this mirror flow: its transactional ids, its assignment group and its state topic
    /// derive from it, so two flows into one target cluster must have different names.
    #[serde(default = "defaults::name")]
    pub name: String,
    /// The write-side cluster, read only: the mirror never writes to it.
    pub source: KafkaConfig,
    /// The read-side cluster: mirrored records, positions and the assignment group live here.
    pub target: KafkaConfig,
    pub topics: TopicsConfig,
    /// The longest a shard's transaction (records plus positions) stays open while records keep
    /// coming; a shard that has nothing more to copy commits at once. Lower bounds the latency
    /// under load, higher means fewer, larger transactions (fewer markers) under load.
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Upper bound of buffered record bytes in this process (fetched but not yet produced, plus
    /// produced but not yet acknowledged), shared by all shards. When it is reached the mirror
    /// stops fetching until the target catches up.
    #[serde(default = "defaults::max_buffer_bytes")]
    pub max_buffer_bytes: u64,
    /// What to do when retention on the source deleted records the mirror had not copied yet.
    #[serde(default)]
    pub on_data_loss: DataLossPolicy,
    /// Whether to create missing target topics (and add missing partitions) with the admin API.
    /// When this is off or the target refuses, the mirror says exactly what to create.
    #[serde(default = "defaults::yes")]
    pub create_topics: bool,
    /// Number of shards (units of work with their own transactional id), used only when the
    /// mirror creates its state topic: the state topic's partition count *is* the shard count.
    #[serde(default = "defaults::shards")]
    pub shards: i32,
    /// How long an instance may be silent before the others take over its shards.
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// This instance's stable name in the flow (default: the host name). The shard group knows
    /// the instance by it (static membership), so a restarted instance takes its shards back at
    /// once instead of after a session; instances on one host need distinct names.
    #[serde(default)]
    pub instance: Option<String>,
    /// Optional provenance header, to run mirrors in both directions without loops.
    pub loop_guard: Option<LoopGuard>,
    pub telemetry: TelemetryConfig,
}

/// Which topics to mirror and what they are called on the target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Regexes over source topic names (whole-name matches).
    pub include: Vec<String>,
    /// Regexes over source topic names; a topic matching one of these is not mirrored even when
    /// it matches `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leaves out topics whose name starts with `_` (`__consumer_offsets`, `_schemas`, `_lp.*`)
    /// unless turned off.
    #[serde(default = "defaults::yes")]
    pub exclude_internal: bool,
    /// Target topic name template with `{topic}` (e.g. `"dc1.{topic}"`); identity when absent.
    pub rename: Option<TopicTemplate>,
    /// How often both clusters' metadata is read: new topics and partitions are mirrored within
    /// about this long.
    #[serde(default = "defaults::refresh_interval_ms")]
    pub refresh_interval_ms: u64,
}

/// Policy when a committed source position is below the source's log-start offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataLossPolicy {
    /// Stop mirroring that partition (the alarm stays raised) until an operator decides.
    #[default]
    Stop,
    /// Count and log the lost records, then continue from the earliest record still retained.
    ResumeFromEarliest,
}

/// The loop guard: mirrored records get a provenance header naming the source cluster (unless
/// they already carry one), and records whose provenance is the target cluster are not copied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopGuard {
    /// Id of the source (write-side) cluster, written into the header.
    pub source_id: String,
    /// Id of the target cluster: records that came from it are not copied back.
    pub target_id: String,
}

mod defaults {
    pub fn name() -> String {
        "default".into()
    }
    /// Under load a commit's flush and round trips leave the target idle for ~100 ms at 1 KB
    /// records: with 200 ms transactions that was a third of the time (0.63-0.85x the ceiling at
    /// 1 KB), with 500 ms the mirror copies at the plain consumer's rate. A caught-up shard
    /// commits at once, so the latency at a trickle does not depend on it.
    pub fn commit_interval_ms() -> u64 {
        500
    }
    pub fn max_buffer_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn shards() -> i32 {
        8
    }
    /// A dead instance's shards move within seconds; 6 s is the shortest session a broker
    /// accepts by default (`group.min.session.timeout.ms`), as for every group consumer.
    pub fn session_timeout_ms() -> u64 {
        6_000
    }
    pub fn refresh_interval_ms() -> u64 {
        2_000
    }
}

/// Smallest buffer that still lets every shard hold a few fetches.
const MIN_BUFFER_BYTES: u64 = 16 * 1024 * 1024;

impl MirrorConfig {
    /// Transactional id of a shard: stable, so whoever owns the shard next fences the previous
    /// owner.
    pub fn transactional_id(&self, shard: i32) -> String {
        format!("{}.{shard}", self.group_id())
    }

    /// Group on the target cluster used only to split shards between instances; also the
    /// prefix of the transactional ids.
    pub fn group_id(&self) -> String {
        format!("logpipe-mirror.{}", self.name)
    }

    /// This instance's static member id in the shard group.
    pub fn instance_id(&self) -> String {
        let instance = self
            .instance
            .clone()
            .unwrap_or_else(logpipe_core::service::host_name);
        format!("{}.{instance}", self.group_id())
    }

    /// Compacted topic on the target holding each source partition's committed position.
    pub fn state_topic(&self) -> String {
        mirror_state_topic(&self.name)
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.topics.refresh_interval_ms)
    }

    /// The target topic a source topic is mirrored to.
    pub fn target_topic(&self, source: &str) -> String {
        match &self.topics.rename {
            Some(template) => template.render(source),
            None => source.to_owned(),
        }
    }

    /// Compiled topic selection.
    pub fn selection(&self) -> anyhow::Result<Selection> {
        Selection::new(&self.topics)
    }
}

impl logpipe_core::service::ServiceConfig for MirrorConfig {
    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::{bail, Context};
        self.source
            .validate(&Role::Consumer {
                group_id: String::new(),
            })
            .map_err(|e| anyhow::anyhow!("source: {e}"))?;
        self.target
            .validate(&Role::TransactionalProducer {
                transactional_id: String::new(),
            })
            .map_err(|e| anyhow::anyhow!("target: {e}"))?;
        check_topic_name(&self.state_topic())
            .map_err(|e| anyhow::anyhow!("name {:?}: {e}", self.name))?;
        self.selection().context("topics")?;
        if let Some(template) = &self.topics.rename {
            if !template.as_str().contains("{topic}") {
                bail!(
                    "topics.rename {:?} must contain {{topic}}: with {{stream}} alone, `raw.x` and `x` would land in one target topic",
                    template.as_str()
                );
            }
        }
        if self.source.bootstrap == self.target.bootstrap && self.topics.rename.is_none() {
            bail!("source and target are the same cluster and topics.rename is not set: the mirror would copy topics onto themselves");
        }
        if self.commit_interval_ms == 0 || self.topics.refresh_interval_ms == 0 {
            bail!("commit_interval_ms and topics.refresh_interval_ms must be positive");
        }
        if self.max_buffer_bytes < MIN_BUFFER_BYTES {
            bail!(
                "max_buffer_bytes = {} is below the minimum of {MIN_BUFFER_BYTES}",
                self.max_buffer_bytes
            );
        }
        if !(1..=1024).contains(&self.shards) {
            bail!("shards = {} must be 1..=1024", self.shards);
        }
        if self.session_timeout_ms < 3_000 {
            bail!("session_timeout_ms = {} is below 3000: instances would lose their shards on every pause", self.session_timeout_ms);
        }
        if let Some(guard) = &self.loop_guard {
            if guard.source_id.is_empty()
                || guard.target_id.is_empty()
                || guard.source_id == guard.target_id
            {
                bail!(
                    "loop_guard.source_id and loop_guard.target_id must be non-empty and different"
                );
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "mirror {:?}: topics matching {:?} (excluding {:?}{}) from {} to {}{}\n",
            self.name,
            self.topics.include,
            self.topics.exclude,
            if self.topics.exclude_internal {
                " and internal `_` topics"
            } else {
                ""
            },
            self.source.bootstrap,
            self.target.bootstrap,
            match &self.topics.rename {
                Some(t) => format!(", renamed by {:?}", t.as_str()),
                None => String::new(),
            },
        );
        text.push_str(&format!(
            "exactly once: transactional ids {}.<shard>, positions in {}, shard group {} (as {}); commit every {} ms; buffer <= {} bytes; on data loss: {:?}",
            self.group_id(),
            self.state_topic(),
            self.group_id(),
            self.instance_id(),
            self.commit_interval_ms,
            self.max_buffer_bytes,
            self.on_data_loss,
        ));
        text
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Compiled include/exclude regexes: a topic is selected when an include matches the whole
/// name and no exclude does (exclude wins), and it is not internal (unless allowed).
#[derive(Debug, Clone)]
pub struct Selection {
    include: RegexSet,
    exclude: RegexSet,
    exclude_internal: bool,
}

impl Selection {
    fn new(topics: &TopicsConfig) -> anyhow::Result<Selection> {
        // Anchored so that `raw\..*` does not also select `xraw.y`: regexes name whole topics.
        let anchored = |patterns: &[String], key: &str| {
            for pattern in patterns {
                regex::Regex::new(pattern)
                    .map_err(|e| anyhow::anyhow!("{key}: {pattern:?} is not a valid regex: {e}"))?;
            }
            RegexSet::new(patterns.iter().map(|p| format!("^(?:{p})$")))
                .map_err(anyhow::Error::from)
        };
        if topics.include.is_empty() {
            anyhow::bail!("include is empty: nothing would be mirrored");
        }
        Ok(Selection {
            include: anchored(&topics.include, "include")?,
            exclude: anchored(&topics.exclude, "exclude")?,
            exclude_internal: topics.exclude_internal,
        })
    }

    pub fn selects(&self, topic: &str) -> bool {
        !(self.exclude_internal && topic.starts_with('_'))
            && self.include.is_match(topic)
            && !self.exclude.is_match(topic)
    }
}

#[cfg(test)]
mod tests {
    use logpipe_core::service::ServiceConfig;

    use super::*;

    fn parse(extra: &str) -> anyhow::Result<MirrorConfig> {
        let text = format!(
            "{extra}\n[source]\nbootstrap = \"w:9092\"\n[target]\nbootstrap = \"r:9092\"\n[telemetry]\nlisten = \"127.0.0.1:0\"\n[topics]\ninclude = [\"raw\\\\..*\", \"_lp.x\"]\nexclude = [\"raw\\\\.secret.*\"]\n"
        );
        let config: MirrorConfig = toml::from_str(&text)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn selection_exclude_wins_and_internal_is_out_by_default() {
        let config = parse("").unwrap();
        let selection = config.selection().unwrap();
        assert!(selection.selects("raw.game"));
        assert!(
            !selection.selects("raw.secret.keys"),
            "exclude wins over include"
        );
        assert!(!selection.selects("xraw.game"), "regexes match whole names");
        assert!(
            !selection.selects("_lp.x"),
            "internal topics are excluded by default"
        );
        assert!(!selection.selects("clean.game"));
    }

    #[test]
    fn internal_topics_can_be_allowed() {
        let mut config = parse("").unwrap();
        config.topics.exclude_internal = false;
        assert!(config.selection().unwrap().selects("_lp.x"));
    }

    #[test]
    fn defaults_and_derived_names() {
        let config = parse("").unwrap();
        assert_eq!(config.on_data_loss, DataLossPolicy::Stop);
        assert_eq!(config.max_buffer_bytes, 256 * 1024 * 1024);
        assert_eq!(config.state_topic(), "_lp.mirror.default.state");
        assert_eq!(config.transactional_id(3), "logpipe-mirror.default.3");
        assert_eq!(config.target_topic("raw.game"), "raw.game");
        let renamed = parse("name = \"eu\"\non_data_loss = \"resume-from-earliest\"").unwrap();
        assert_eq!(renamed.on_data_loss, DataLossPolicy::ResumeFromEarliest);
        assert_eq!(renamed.group_id(), "logpipe-mirror.eu");
        let named = parse("name = \"eu\"\ninstance = \"m2\"").unwrap();
        assert_eq!(named.instance_id(), "logpipe-mirror.eu.m2");
        assert!(config.instance_id().starts_with("logpipe-mirror.default."));
    }

    #[test]
    fn rename_template_needs_topic() {
        let mut config = parse("").unwrap();
        config.topics.rename = Some(TopicTemplate::try_from("dc1.{topic}".to_owned()).unwrap());
        assert_eq!(config.target_topic("raw.game"), "dc1.raw.game");
        config.validate().unwrap();
        config.topics.rename = Some(TopicTemplate::try_from("dc1.{stream}".to_owned()).unwrap());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("{topic}"));
    }

    #[test]
    fn bad_values_are_named() {
        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        assert!(err("max_buffer_bytes = 1000").contains("max_buffer_bytes"));
        assert!(
            err("on_data_loss = \"ignore\"").contains("on_data_loss")
                || err("on_data_loss = \"ignore\"").contains("unknown variant")
        );
        assert!(err("shards = 0").contains("shards"));
        assert!(err("nope = 1").contains("nope"));
        assert!(err("[loop_guard]\nsource_id = \"a\"\ntarget_id = \"a\"").contains("loop_guard"));
        let mut config = parse("").unwrap();
        config.topics.include = vec!["raw.(".into()];
        assert!(format!("{:#}", config.validate().unwrap_err()).contains("not a valid regex"));
    }
}
