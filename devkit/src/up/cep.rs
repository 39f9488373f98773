//! `up`'s CEP worker: the rules it runs, waiting for it to catch up once the pipeline has
//! drained (and, for event-time rules, for its watermark to pass the last events), and the
//! check of its matches and late events against [`crate::cep_oracle`].

use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

use crate::cep_oracle::{self, CepReconciliation, MatchReader, RuleSpec};
use crate::pipeline::{Component, Pipeline};
use crate::prometheus;
use logpipe_core::metric_names::cep as metrics;
use logpipe_core::record::CEP_MATCHES_TOPIC;

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
    /// Records behind over every assigned partition; `None` before it has any.
    lag: Option<f64>,
    /// Matches read from the matches topic so far.
    matches: usize,
    /// Matches the worker says it wrote.
    emitted: Option<f64>,
}

impl Progress {
    fn from_metrics(text: &str, matches: usize) -> Progress {
        let samples = prometheus::parse(text);
        Progress {
            lag: prometheus::sum(&samples, metrics::CONSUMER_LAG_RECORDS, &[]),
            matches,
            emitted: prometheus::sum(&samples, metrics::RULE_MATCHES_EMITTED, &[]),
        }
    }

    /// Caught up: nothing left to read, and nothing written since the previous look.
    fn drained_since(&self, previous: Option<&Progress>) -> bool {
        self.lag == Some(0.0) && previous == Some(self)
    }
}

/// How long the worker must have had nothing to read before every result is out. An
/// event-time rule emits once the watermark passes its events; after the last record, the
/// watermark moves on only when the partitions count as idle (`idle_timeout`) and follow the
/// clock, and trails by the rule's `max_out_of_order`.
#[derive(Debug)]
struct Quiet {
    needed: Duration,
    /// Since when the worker has had no lag.
    since: Option<Instant>,
}

impl Quiet {
    fn new(rules: &[RuleSpec], idle_timeout: Duration) -> Quiet {
        let needed = rules
            .iter()
            .filter_map(RuleSpec::max_out_of_order)
            .max()
            .map_or(Duration::ZERO, |most| idle_timeout + most + DRAIN_POLL);
        Quiet {
            needed,
            since: None,
        }
    }

    /// Whether the worker, as seen `at`, has had no lag for long enough.
    fn long_enough(&mut self, progress: &Progress, at: Instant) -> bool {
        if progress.lag != Some(0.0) {
            self.since = None;
            return false;
        }
        at.duration_since(*self.since.get_or_insert(at)) >= self.needed
    }
}

/// Once the pipeline has drained: waits (up to `timeout`) until the CEP worker has caught up
/// and, with event-time rules, for its `idle_timeout` and their `max_out_of_order` more; then
/// compares its matches with what the rules call for, read from the clean topics, leaving out
/// the events it judged late.
pub async fn reconcile(
    pipeline: &Pipeline,
    rules_file: &std::path::Path,
    idle_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<CepReconciliation> {
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
    let mut quiet = Quiet::new(&rules, idle_timeout);
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
        let quiet_enough = quiet.long_enough(&now, Instant::now());
        if now.drained_since(previous.as_ref()) && quiet_enough {
            break;
        }
        if Instant::now() + DRAIN_POLL >= deadline {
            anyhow::bail!(
                "the CEP worker did not catch up within {}s (last seen: lag {:?}, {} matches read)",
                timeout.as_secs(),
                now.lag,
                now.matches
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
    Ok(cep_oracle::compare(&expected, reader.found()))
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
        let unassigned = Progress::from_metrics("", 0);
        assert_eq!(unassigned.lag, None);
        assert!(!unassigned.drained_since(Some(&unassigned)));
    }

    #[test]
    fn event_time_rules_are_waited_for_their_watermark_after_the_lag_is_gone() {
        let yaml = std::fs::read_to_string(seed_rules()).unwrap();
        let seed = RuleSpec::from_yaml_list(&yaml, |_| Some((None, 0))).unwrap();
        let idle = Duration::from_secs(3);
        let caught_up = Progress {
            lag: Some(0.0),
            matches: 0,
            emitted: None,
        };
        let behind = Progress {
            lag: Some(1.0),
            ..caught_up
        };
        let t0 = Instant::now();
        let mut quiet = Quiet::new(&seed, idle);
        // 3 s idle + 5 s max_out_of_order + one look.
        assert_eq!(quiet.needed, Duration::from_secs(10));
        assert!(!quiet.long_enough(&behind, t0));
        assert!(!quiet.long_enough(&caught_up, t0 + Duration::from_secs(1)));
        assert!(!quiet.long_enough(&caught_up, t0 + Duration::from_secs(10)));
        assert!(quiet.long_enough(&caught_up, t0 + Duration::from_secs(11)));
        // Lag again: the quiet starts over.
        assert!(!quiet.long_enough(&behind, t0 + Duration::from_secs(12)));
        assert!(!quiet.long_enough(&caught_up, t0 + Duration::from_secs(13)));
        let untimed: Vec<RuleSpec> = seed.into_iter().take(4).collect();
        assert!(Quiet::new(&untimed, idle).long_enough(&caught_up, t0));
    }
}
