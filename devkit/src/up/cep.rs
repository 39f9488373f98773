//! `up`'s CEP worker: the rules it runs, waiting for it to catch up once the pipeline has
//! drained (and, for event-time rules, for its watermark to pass the last events), and the
//! check of its matches and late events against [`crate::cep_oracle`].

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

use crate::cep_oracle::{self, CepReconciliation, MatchReader, RuleSpec};
use crate::pipeline::{Component, Pipeline};
use crate::prometheus;
use logpipe_core::metric_names::cep as metrics;
use logpipe_core::record::{CEP_MATCHES_TOPIC, INTERNAL_PREFIX};

/// Pause between two looks at the worker while it drains.
const DRAIN_POLL: Duration = Duration::from_secs(2);

/// The seed rules shipped with the devkit (`devkit/rules/game.yaml`).
pub fn seed_rules() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/game.yaml"))
}

/// The names of the rules in a rules file (a YAML list of documents).
pub fn rule_names(yaml: &str) -> anyhow::Result<Vec<String>> {
    let documents: Vec<Value> =
        serde_yaml_ng::from_str(yaml).context("a rules file is a YAML list of rule documents")?;
    documents
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            doc.get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("rule [{i}] has no name"))
        })
        .collect()
}

/// A rule's current version as `GET /rules/{name}` answers.
#[derive(Debug, Deserialize)]
struct StoredRule {
    name: String,
    version: u64,
    /// RFC 3339.
    created_at: String,
    document: Value,
}

impl StoredRule {
    fn spec(&self) -> anyhow::Result<RuleSpec> {
        let created = humantime::parse_rfc3339_weak(&self.created_at)
            .with_context(|| format!("rule {}: created_at {:?}", self.name, self.created_at))?;
        let created_at_ms = created
            .duration_since(UNIX_EPOCH)
            .context("created_at before 1970")?
            .as_millis() as i64;
        RuleSpec::from_document(&self.document, Some(self.version), created_at_ms)
    }
}

/// What the worker shows of its progress at one look.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Progress {
    /// Records behind on the source topics; `None` before it has any. (The repartition
    /// topics are left out: with event-time rules they get watermark markers every few seconds
    /// while the sources are silent, so their lag is seldom zero at a look.)
    lag: Option<f64>,
    /// Matches read from the matches topic so far.
    matches: usize,
    /// Matches the worker says it wrote.
    emitted: Option<f64>,
}

impl Progress {
    fn from_metrics(text: &str, matches: usize) -> Progress {
        let samples = prometheus::parse(text);
        let sources: Vec<f64> = samples
            .iter()
            .filter(|s| {
                s.name == metrics::CONSUMER_LAG_RECORDS
                    && !s
                        .label("topic")
                        .is_some_and(|t| t.starts_with(INTERNAL_PREFIX))
            })
            .map(|s| s.value)
            .collect();
        Progress {
            lag: (!sources.is_empty()).then(|| sources.iter().sum()),
            matches,
            emitted: prometheus::sum(&samples, metrics::RULE_MATCHES_EMITTED, &[]),
        }
    }

    /// Caught up: nothing left to read, every match the worker says it wrote read back (it
    /// counts a match once its transaction has committed), and nothing written since the
    /// previous look.
    fn drained_since(&self, previous: Option<&Progress>) -> bool {
        self.lag == Some(0.0)
            && self
                .emitted
                .is_none_or(|emitted| self.matches as f64 >= emitted)
            && previous == Some(self)
    }
}

/// An event-time rule emits once its watermark passes its events. After the last record the
/// watermark moves on when the source partitions count as idle and follow the wall clock, so
/// every result is out once each timed rule's watermark (from its status) has passed the time
/// the load stopped, plus the rule's `allowed_lateness`, and no event waits for it any more
/// (every one released and evaluated: the status says so directly, whatever the watermark).
#[derive(Debug)]
struct Watermarks {
    /// (rule, the watermark it must reach, epoch ms).
    wanted: Vec<(String, i64)>,
}

impl Watermarks {
    fn new(rules: &[RuleSpec], stopped_ms: i64) -> Watermarks {
        let wanted = rules
            .iter()
            .filter_map(|r| {
                let lateness = r.allowed_lateness()?;
                Some((r.name.clone(), stopped_ms + lateness.as_millis() as i64))
            })
            .collect();
        Watermarks { wanted }
    }

    /// What the first rule not done yet is waiting for, by the worker's status.
    async fn behind(&self, http: &reqwest::Client, url: &str) -> Option<String> {
        for (name, wanted) in &self.wanted {
            let status = rule_status(http, url, name).await.unwrap_or_default();
            if let Some(waiting) = waiting_for(name, *wanted, &status) {
                return Some(waiting);
            }
        }
        None
    }
}

/// Why a timed rule's status (`GET /rules/{name}/status`) says its results are not all out
/// yet: its watermark short of `wanted` (epoch ms), or events still waiting for the watermark
/// (`events_waiting`; partial sequences, also in `events_held`, stay once it has passed).
fn waiting_for(name: &str, wanted: i64, status: &Value) -> Option<String> {
    let at = status["watermark"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    if at.is_none_or(|t| (t.as_millis() as i64) < wanted) {
        return Some(format!(
            "rule {name}'s watermark not past the end of the load"
        ));
    }
    match status["events_waiting"].as_u64() {
        Some(0) => None,
        Some(held) => Some(format!(
            "rule {name} still holding {held} events for its watermark"
        )),
        None => Some(format!("rule {name}'s status shows no events_waiting")),
    }
}

async fn rule_status(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<Value> {
    crate::get_json(http, &format!("{url}/rules/{name}/status")).await
}

/// Once the pipeline has drained: waits (up to `timeout`) until the CEP worker has read its
/// sources and, with event-time rules, until their watermarks have passed the end of the load;
/// then compares its matches with what the rules call for, read from the clean topics, leaving
/// out the events it judged late.
pub async fn reconcile(
    pipeline: &Pipeline,
    rules_file: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<CepReconciliation> {
    let stopped_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("a clock before 1970")?
        .as_millis() as i64;
    let bootstrap = pipeline.read_cluster().bootstrap().to_owned();
    let deadline = Instant::now() + timeout;
    let yaml = std::fs::read_to_string(rules_file)
        .with_context(|| format!("reading {}", rules_file.display()))?;
    let url = format!("http://{}", pipeline.telemetry(Component::Cep));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rules = Vec::new();
    for name in rule_names(&yaml)? {
        let stored: StoredRule = crate::get_json(&http, &format!("{url}/rules/{name}")).await?;
        rules.push(stored.spec()?);
    }
    let watermarks = Watermarks::new(&rules, stopped_ms);
    let mut reader =
        tokio::task::spawn_blocking(move || MatchReader::open(&bootstrap, CEP_MATCHES_TOPIC))
            .await??;
    let mut previous: Option<Progress> = None;
    loop {
        let (back, matches) = tokio::task::spawn_blocking(move || {
            let n = reader.read_new()?.len();
            anyhow::Ok((reader, n))
        })
        .await??;
        reader = back;
        let metrics = pipeline.metrics(Component::Cep).await.unwrap_or_default();
        let now = Progress::from_metrics(&metrics, matches);
        let waiting_for = watermarks.behind(&http, &url).await;
        if now.drained_since(previous.as_ref()) && waiting_for.is_none() {
            break;
        }
        if Instant::now() + DRAIN_POLL >= deadline {
            anyhow::bail!(
                "the CEP worker did not catch up within {}s (last seen: source lag {:?}, {} matches read of {:?} the worker wrote{})",
                timeout.as_secs(),
                now.lag,
                now.matches,
                now.emitted,
                waiting_for.map_or(String::new(), |why| format!(", {why}"))
            );
        }
        previous = Some(now);
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let mut expected = cep_oracle::expected_from_clean(
        pipeline.read_cluster().bootstrap(),
        &pipeline.schema_store_url(),
        &pipeline.clean_topics(),
        rules,
    )
    .await?;
    let bootstrap = pipeline.read_cluster().bootstrap().to_owned();
    let late = tokio::task::spawn_blocking(move || cep_oracle::read_late(&bootstrap)).await??;
    expected.exclude_late(&late);
    let outcome = cep_oracle::compare(&expected, reader.found());
    // What the worker says of a rule that is off, for whoever reads the failure.
    for rule in outcome.rules.iter().filter(|r| r.missing + r.extra > 0) {
        match rule_status(&http, &url, &rule.rule).await {
            Ok(status) => eprintln!("logpipe-dev: rule {} on the worker: {status}", rule.rule),
            Err(e) => eprintln!("logpipe-dev: rule {}: no status: {e:#}", rule.rule),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_rules_file_names_six_rules() {
        let yaml = std::fs::read_to_string(seed_rules()).unwrap();
        assert_eq!(
            rule_names(&yaml).unwrap(),
            [
                "login-hearts",
                "level-3-gems",
                "pvp-5-wins",
                "shopper-fighter",
                "level-3-then-pvp",
                "purchases-2-per-minute"
            ]
        );
        assert!(rule_names("- source: x\n").is_err());
    }

    #[test]
    fn a_stored_rule_becomes_a_spec_with_its_version_and_creation_time() {
        let stored: StoredRule = serde_json::from_value(serde_json::json!({
            "name": "logins", "version": 3, "created_at": "2026-12-04T00:00:00.250Z",
            "document": {"name": "logins", "source": "clean.game", "key": "player_id",
                "event_list": [{"when": "event == \"login\""}], "repeat": "every"}
        }))
        .unwrap();
        let spec = stored.spec().unwrap();
        assert_eq!(
            (spec.version, spec.created_at_ms),
            (Some(3), 1_796_342_400_250)
        );
    }

    #[test]
    fn drained_means_no_lag_and_nothing_new_since_the_last_look() {
        let page = |lag: u32, emitted: u32| {
            format!(
                "{}{{topic=\"clean.game\",partition=\"0\"}} {lag}\n{}{{rule=\"r\"}} {emitted}\n",
                metrics::CONSUMER_LAG_RECORDS,
                metrics::RULE_MATCHES_EMITTED
            )
        };
        let first = Progress::from_metrics(&page(0, 5), 5);
        assert!(!first.drained_since(None));
        assert!(first.drained_since(Some(&first)));
        let behind = Progress::from_metrics(&page(3, 5), 5);
        assert!(!behind.drained_since(Some(&behind)));
        let more = Progress::from_metrics(&page(0, 6), 5);
        assert!(!more.drained_since(Some(&first)));
        // The worker wrote a match the reader has not seen yet, though nothing moved.
        let unread = Progress::from_metrics(&page(0, 6), 5);
        assert!(!unread.drained_since(Some(&unread)));
        let unassigned = Progress::from_metrics("", 0);
        assert_eq!(unassigned.lag, None);
        assert!(!unassigned.drained_since(Some(&unassigned)));
    }

    #[test]
    fn event_time_rules_wait_for_their_watermark_past_the_end_of_the_load() {
        let yaml = std::fs::read_to_string(seed_rules()).unwrap();
        let seed = RuleSpec::from_yaml_list(&yaml, |_| Some((None, 0))).unwrap();
        let watermarks = Watermarks::new(&seed, 1_000);
        assert_eq!(
            watermarks.wanted,
            [
                ("level-3-then-pvp".to_owned(), 1_000),
                ("purchases-2-per-minute".to_owned(), 1_000)
            ]
        );
        let untimed: Vec<RuleSpec> = seed.into_iter().take(4).collect();
        assert!(Watermarks::new(&untimed, 1_000).wanted.is_empty());
    }

    #[test]
    fn a_timed_rule_is_done_past_the_load_with_nothing_held() {
        let status = |watermark: &str, held: u64| serde_json::json!({"watermark": watermark, "events_waiting": held});
        // 2026-12-04T00:00:01Z
        let wanted = 1_796_342_401_000;
        assert_eq!(
            waiting_for("r", wanted, &status("2026-12-04T00:00:01.000Z", 0)),
            None
        );
        assert_eq!(
            waiting_for("r", wanted, &status("2026-12-04T00:00:00.999Z", 0)).as_deref(),
            Some("rule r's watermark not past the end of the load")
        );
        // Past the load by its watermark, and yet still holding events: not done.
        assert_eq!(
            waiting_for("r", wanted, &status("2026-12-04T00:00:05.000Z", 3)).as_deref(),
            Some("rule r still holding 3 events for its watermark")
        );
        assert!(waiting_for("r", wanted, &Value::Null).is_some());
    }

    #[test]
    fn the_repartition_topics_lag_does_not_count() {
        let page = format!(
            "{m}{{topic=\"clean.game\",partition=\"0\"}} 0\n{m}{{topic=\"_lp.cep.repartition.g.player_id\",partition=\"3\"}} 1\n",
            m = metrics::CONSUMER_LAG_RECORDS
        );
        assert_eq!(Progress::from_metrics(&page, 0).lag, Some(0.0));
    }
}
