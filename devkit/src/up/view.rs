//! Turning scrapes into what `up` shows: per hop records/s, totals and lag, dead letters by
//! stage and reason, the CEP worker's matches per rule, schema store requests/s, each service's
//! health; as a screen (redrawn on
//! the terminal's alternate screen) or as one plain `key=value` line per interval.
//!
//! Counters restart at zero when a service restarts (`up` restarts crashed ones). Totals here
//! are therefore accumulated from the increases seen between scrapes, the way Prometheus'
//! `increase()` treats a reset, so they keep growing across crashes. They are a live picture;
//! the exact count is the reconciliation at the end, which reads the topics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::sampler::{Health, Scrape};
use crate::pipeline::Component;
use logpipe_core::metric_names::{agent, cep, mirror, schema_store, validator};

/// A counter accumulated across resets, with its rate over the last interval.
#[derive(Debug, Clone, Copy, Default)]
struct Accumulated {
    last: Option<f64>,
    total: f64,
    rate: f64,
}

impl Accumulated {
    /// Takes the counter's current value (`None`: not seen this time) after `dt`.
    fn observe(&mut self, value: Option<f64>, dt: f64) {
        let Some(value) = value else {
            self.rate = 0.0;
            return;
        };
        let increase = match self.last {
            Some(last) if value >= last => value - last,
            // First sight, or a restart reset the counter: everything counted since is new.
            _ => value,
        };
        self.total += increase;
        // At first sight the increase spans the whole life of the counter, not `dt`.
        self.rate = if dt > 0.0 && self.last.is_some() {
            increase / dt
        } else {
            0.0
        };
        self.last = Some(value);
    }
}

/// One hop of the pipeline as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub name: &'static str,
    /// Short key for the plain line.
    pub key: &'static str,
    pub rate: f64,
    pub total: u64,
    pub lag: Lag,
}

/// What is not through a hop yet; `None` when unknown (its service is down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lag {
    /// The hop has no lag of its own (the generator).
    NotApplicable,
    /// Bytes written to files and not yet acknowledged by the write cluster.
    Bytes(Option<f64>),
    /// Records behind, as the service reports it.
    Records(Option<f64>),
}

impl Lag {
    fn value(self) -> Option<f64> {
        match self {
            Lag::NotApplicable => None,
            Lag::Bytes(v) | Lag::Records(v) => v.map(|v| v.max(0.0).round()),
        }
    }

    fn describe(self) -> String {
        match (self, self.value()) {
            (Lag::NotApplicable, _) => String::new(),
            (_, None) => "? (service down)".into(),
            (Lag::Bytes(_), Some(b)) => format!("{} unsent", bytes(b)),
            (Lag::Records(_), Some(n)) => format!("{n} records"),
        }
    }
}

/// One service's row.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRow {
    pub name: &'static str,
    pub health: Health,
    pub pid: Option<u32>,
    pub starts: u32,
}

/// The CEP worker's part of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct CepFrame {
    /// Per rule: matches written so far and per second.
    pub matches: BTreeMap<String, (u64, f64)>,
    pub lag: Lag,
}

/// Everything shown for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub elapsed: Duration,
    pub hops: Vec<Hop>,
    /// (stage, reason) -> dead letters so far.
    pub dead_letters: BTreeMap<(String, String), u64>,
    pub resends_dropped: u64,
    /// When the pipeline runs a CEP worker.
    pub cep: Option<CepFrame>,
    pub store_rate: f64,
    pub store_total: u64,
    pub services: Vec<ServiceRow>,
    pub write_cluster_up: bool,
    pub read_cluster_up: bool,
}

/// Keeps the accumulated counters between scrapes.
pub struct Tracker {
    started: Instant,
    previous: Option<Instant>,
    counters: BTreeMap<String, Accumulated>,
}

const AGENT_ACKED: &str = agent::LINES_ACKED;
const AGENT_LAG: &str = agent::FILE_LAG;
const MIRROR_RECORDS: &str = mirror::RECORDS;
const MIRROR_LAG: &str = mirror::OFFSET_LAG_RECORDS;
const VALID: &str = validator::RECORDS_VALID;
const INVALID: &str = validator::RECORDS_INVALID;
const VALIDATOR_LAG: &str = validator::CONSUMER_LAG_RECORDS;
/// The validator exports its resend counter under the old name until the rename is released;
/// the alias is exported beside the new name for one release, so it works before and after.
const RESENDS: &str = validator::RESENDS_DROPPED;
const CEP_MATCHES: &str = cep::RULE_MATCHES_EMITTED;
const CEP_LAG: &str = cep::CONSUMER_LAG_RECORDS;

impl Tracker {
    pub fn new(started: Instant) -> Tracker {
        Tracker {
            started,
            previous: Some(started),
            counters: BTreeMap::new(),
        }
    }

    fn observe(&mut self, key: &str, value: Option<f64>, dt: f64) -> Accumulated {
        let counter = self.counters.entry(key.to_owned()).or_default();
        counter.observe(value, dt);
        *counter
    }

    /// Observes one counter per group of labels (`group` -> value, summed over the rest) under
    /// `prefix|group`. Groups seen before but absent now (service down or restarted) are observed
    /// as missing, so their rate drops to zero and a restart's reset is recognised.
    fn observe_groups(
        &mut self,
        prefix: &str,
        mut groups: BTreeMap<String, f64>,
        dt: f64,
    ) -> BTreeMap<String, Accumulated> {
        let known: Vec<String> = self
            .counters
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('|'))
            .map(str::to_owned)
            .collect();
        for key in known {
            groups.entry(key).or_insert(f64::NAN);
        }
        groups
            .into_iter()
            .map(|(group, value)| {
                let value = (!value.is_nan()).then_some(value);
                let counter = self.observe(&format!("{prefix}|{group}"), value, dt);
                (group, counter)
            })
            .collect()
    }

    /// Folds a scrape in and returns what to show. `services` gives each component's pid and
    /// number of starts, which the supervisor knows.
    pub fn frame(&mut self, scrape: &Scrape, services: &[(Component, Option<u32>, u32)]) -> Frame {
        let dt = self.previous.map_or(0.0, |p| {
            scrape.at.saturating_duration_since(p).as_secs_f64()
        });
        self.previous = Some(scrape.at);
        let agent = scrape.service(Component::Agent);
        let mirror = scrape.service(Component::Mirror);
        let validator = scrape.service(Component::Validator);
        let store = scrape.service(Component::SchemaStore);

        let generated = self.observe("generated", Some(scrape.generated as f64), dt);
        // The write cluster's watermarks survive agent crashes; the agent's counter is the
        // fallback while a broker is down.
        let acked = self.observe(AGENT_ACKED, agent.sum(AGENT_ACKED, &[]), dt);
        let written = match scrape.write_records {
            Some(records) => self.observe("write_records", Some(records as f64), dt),
            None => acked,
        };
        let mirrored = self.observe(MIRROR_RECORDS, mirror.sum(MIRROR_RECORDS, &[]), dt);
        let clean = self.observe(VALID, validator.sum(VALID, &[]), dt);
        let mut dead_letters = BTreeMap::new();
        let mut dlq_rate = 0.0;
        let mut dlq_total = 0.0;
        let mut groups: BTreeMap<String, f64> = BTreeMap::new();
        for sample in validator.samples.iter().filter(|s| s.name == INVALID) {
            let stage = sample.label("stage").unwrap_or("?");
            let reason = sample.label("reason").unwrap_or("");
            *groups.entry(format!("{stage}|{reason}")).or_default() += sample.value;
        }
        for (group, counter) in self.observe_groups("dlq", groups, dt) {
            let (stage, reason) = group.split_once('|').expect("stage|reason");
            dlq_rate += counter.rate;
            dlq_total += counter.total;
            dead_letters.insert(
                (stage.to_owned(), reason.to_owned()),
                counter.total.round() as u64,
            );
        }
        let cep = scrape
            .services
            .iter()
            .find(|s| s.component == Component::Cep)
            .map(|worker| {
                let mut groups: BTreeMap<String, f64> = BTreeMap::new();
                for sample in worker.samples.iter().filter(|s| s.name == CEP_MATCHES) {
                    let rule = sample.label("rule").unwrap_or("?").to_owned();
                    *groups.entry(rule).or_default() += sample.value;
                }
                CepFrame {
                    matches: self
                        .observe_groups("cep", groups, dt)
                        .into_iter()
                        .map(|(rule, c)| (rule, (c.total.round() as u64, c.rate)))
                        .collect(),
                    lag: Lag::Records(worker.sum(CEP_LAG, &[])),
                }
            });
        let resends = self.observe(RESENDS, validator.sum(RESENDS, &[]), dt);
        // The summary's request count is its `_count` series.
        let store_requests = format!("{}_count", schema_store::HTTP_REQUEST);
        let requests = self.observe(&store_requests, store.sum(&store_requests, &[]), dt);

        let validator_lag = Lag::Records(validator.sum(VALIDATOR_LAG, &[]));
        let dead = Accumulated {
            last: None,
            total: dlq_total,
            rate: dlq_rate,
        };
        let hop = |name, key, counter: Accumulated, lag| Hop {
            name,
            key,
            rate: counter.rate,
            total: counter.total.round() as u64,
            lag,
        };
        let hops = vec![
            hop(
                "generator -> files",
                "generated",
                generated,
                Lag::NotApplicable,
            ),
            hop(
                "files -> write cluster (agent)",
                "write",
                written,
                Lag::Bytes(agent.sum(AGENT_LAG, &[])),
            ),
            hop(
                "write -> read cluster (mirror)",
                "mirrored",
                mirrored,
                Lag::Records(mirror.sum(MIRROR_LAG, &[])),
            ),
            hop(
                "read cluster -> clean (validator)",
                "clean",
                clean,
                validator_lag,
            ),
            hop(
                "read cluster -> DLQ (validator)",
                "dlq",
                dead,
                validator_lag,
            ),
        ];
        let services = services
            .iter()
            .map(|&(component, pid, starts)| ServiceRow {
                name: component.name(),
                health: scrape.service(component).health.clone(),
                pid,
                starts,
            })
            .collect();
        Frame {
            elapsed: scrape.at.saturating_duration_since(self.started),
            hops,
            dead_letters,
            resends_dropped: resends.total as u64,
            cep,
            store_rate: requests.rate,
            store_total: requests.total as u64,
            services,
            write_cluster_up: scrape.write_records.is_some(),
            read_cluster_up: scrape.read_cluster_up,
        }
    }
}

/// `1.2 MiB`-style sizes.
fn bytes(n: f64) -> String {
    let n = n.max(0.0);
    if n < 1024.0 {
        format!("{n:.0} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

/// `a,b,c` for the plain line, `-` when there is nothing.
fn comma_list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn cluster_state(up: bool) -> &'static str {
    if up {
        "ok"
    } else {
        "unreachable"
    }
}

impl Frame {
    /// The plain line for `--no-tui`: `key=value` pairs, one line per interval.
    pub fn line(&self) -> String {
        let mut line = format!("t={}s", self.elapsed.as_secs());
        for hop in &self.hops {
            let _ = write!(
                line,
                " {}={} {}_per_s={:.0}",
                hop.key, hop.total, hop.key, hop.rate
            );
        }
        // One lag per service: the DLQ hop shares the validator's.
        for (key, hop) in ["agent_lag_bytes", "mirror_lag", "validator_lag"]
            .iter()
            .zip(&self.hops[1..4])
        {
            let value = hop
                .lag
                .value()
                .map_or_else(|| "?".to_owned(), |v| v.to_string());
            let _ = write!(line, " {key}={value}");
        }
        let dlq: Vec<String> = self
            .dead_letters
            .iter()
            .map(|((stage, reason), n)| {
                if reason.is_empty() {
                    format!("{stage}:{n}")
                } else {
                    format!("{stage}/{reason}:{n}")
                }
            })
            .collect();
        let _ = write!(line, " dlq_by_reason={}", comma_list(&dlq));
        if let Some(cep) = &self.cep {
            let matches: Vec<String> = cep
                .matches
                .iter()
                .map(|(rule, (total, _))| format!("{rule}:{total}"))
                .collect();
            let lag = cep
                .lag
                .value()
                .map_or_else(|| "?".to_owned(), |v| v.to_string());
            let _ = write!(line, " matches={} cep_lag={lag}", comma_list(&matches));
        }
        let _ = write!(
            line,
            " resends_dropped={} store_req_per_s={:.1}",
            self.resends_dropped, self.store_rate
        );
        let health: Vec<String> = self
            .services
            .iter()
            .map(|s| format!("{}:{}", s.name, s.health.label()))
            .collect();
        let _ = write!(
            line,
            " health={} clusters=write:{},read:{}",
            health.join(","),
            cluster_state(self.write_cluster_up),
            cluster_state(self.read_cluster_up)
        );
        line
    }

    /// The screen: a table per hop, dead letters, store, services.
    pub fn screen(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "running {}s\n", self.elapsed.as_secs());
        let _ = writeln!(s, "{:<36} {:>10} {:>12}  lag", "hop", "records/s", "total");
        for hop in &self.hops {
            let _ = writeln!(
                s,
                "{:<36} {:>10.0} {:>12}  {}",
                hop.name,
                hop.rate,
                hop.total,
                hop.lag.describe()
            );
        }
        let _ = writeln!(s, "\ndead letters by stage / reason");
        if self.dead_letters.is_empty() {
            let _ = writeln!(s, "  (none yet)");
        }
        for ((stage, reason), n) in &self.dead_letters {
            let _ = writeln!(s, "  {:<10} {:<24} {:>10}", stage, reason, n);
        }
        let _ = writeln!(
            s,
            "agent resends dropped by the validator: {}",
            self.resends_dropped
        );
        if let Some(cep) = &self.cep {
            let _ = writeln!(
                s,
                "\nCEP matches by rule (cep.matches)    lag {}",
                cep.lag.describe()
            );
            if cep.matches.is_empty() {
                let _ = writeln!(s, "  (none yet)");
            }
            for (rule, (total, rate)) in &cep.matches {
                let _ = writeln!(s, "  {:<24} {:>10.1}/s {:>10}", rule, rate, total);
            }
        }
        let _ = writeln!(
            s,
            "schema store: {:.1} requests/s ({} total)\n",
            self.store_rate, self.store_total
        );
        let _ = writeln!(
            s,
            "{:<14} {:<28} {:>8} {:>7}",
            "service", "health", "pid", "starts"
        );
        for service in &self.services {
            let pid = service
                .pid
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            let _ = writeln!(
                s,
                "{:<14} {:<28} {:>8} {:>7}",
                service.name,
                service.health.label(),
                pid,
                service.starts
            );
        }
        let _ = writeln!(
            s,
            "{:<14} {}\n{:<14} {}",
            "write cluster",
            cluster_state(self.write_cluster_up),
            "read cluster",
            cluster_state(self.read_cluster_up)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus;
    use crate::up::sampler::ServiceScrape;

    fn scrape(at: Instant, generated: u64, validator: &str, validator_up: bool) -> Scrape {
        let services = Component::ALL
            .iter()
            .map(|&component| {
                let (health, samples) = match component {
                    Component::Validator if !validator_up => (Health::Down, Vec::new()),
                    Component::Validator => (Health::Ready, prometheus::parse(validator)),
                    _ => (Health::Ready, Vec::new()),
                };
                ServiceScrape {
                    component,
                    health,
                    samples,
                }
            })
            .collect();
        Scrape {
            at,
            generated,
            services,
            write_records: Some(generated),
            read_cluster_up: true,
        }
    }

    #[test]
    fn totals_survive_counter_resets_and_rates_follow_increases() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        let pids = [(Component::Validator, Some(7), 1)];
        let page = |valid: u32, parse: u32| {
            format!(
                "{VALID}{{topic=\"raw.game\",subject=\"game.login\"}} {valid}\n\
                 {INVALID}{{topic=\"raw.game\",stage=\"parse\",reason=\"malformed_json\"}} {parse}\n"
            )
        };
        let f1 = tracker.frame(
            &scrape(t0 + Duration::from_secs(1), 100, &page(90, 10), true),
            &pids,
        );
        assert_eq!(f1.hops[3].total, 90);
        assert_eq!(f1.hops[3].rate, 0.0, "no rate from a single sight");
        assert_eq!(
            f1.dead_letters[&("parse".into(), "malformed_json".into())],
            10
        );
        // The validator is down for a scrape, then back with its counters reset.
        let f2 = tracker.frame(&scrape(t0 + Duration::from_secs(2), 200, "", false), &pids);
        assert_eq!(f2.hops[3].total, 90);
        assert_eq!(f2.hops[3].rate, 0.0);
        assert_eq!(f2.hops[3].lag, Lag::Records(None));
        assert_eq!(f2.services[0].health, Health::Down);
        let f3 = tracker.frame(
            &scrape(t0 + Duration::from_secs(4), 300, &page(50, 4), true),
            &pids,
        );
        assert_eq!(f3.hops[3].total, 140);
        assert_eq!(f3.hops[3].rate, 25.0);
        assert_eq!(f3.hops[4].total, 14);
        assert_eq!(f3.hops[0].total, 300);
        assert_eq!(f3.hops[0].rate, 50.0);
        let line = f3.line();
        assert!(
            line.starts_with("t=4s generated=300 generated_per_s=50"),
            "{line}"
        );
        assert!(line.contains(" clean=140 clean_per_s=25"), "{line}");
        assert!(line.contains(" dlq=14 "), "{line}");
        assert!(
            line.contains(" dlq_by_reason=parse/malformed_json:14 "),
            "{line}"
        );
        assert!(line.contains("validator:ready"), "{line}");
        assert!(
            line.contains(" agent_lag_bytes=? mirror_lag=? validator_lag=? "),
            "{line}"
        );
        assert!(f2.line().contains(" validator_lag=? "), "{}", f2.line());
        let screen = f3.screen();
        assert!(screen.contains("malformed_json"), "{screen}");
    }

    #[test]
    fn cep_matches_are_shown_per_rule_across_restarts() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        let with_cep = |at: Instant, page: &str| {
            let mut s = scrape(at, 0, "", true);
            s.services.push(ServiceScrape {
                component: Component::Cep,
                health: Health::Ready,
                samples: prometheus::parse(page),
            });
            s
        };
        let page = |a: u32, b: u32, lag: u32| {
            format!(
                "{CEP_MATCHES}{{rule=\"a\"}} {a}\n{CEP_MATCHES}{{rule=\"b\"}} {b}\n\
                 {CEP_LAG}{{topic=\"clean.game\",partition=\"0\"}} {lag}\n"
            )
        };
        let f1 = tracker.frame(&with_cep(t0 + Duration::from_secs(1), &page(4, 1, 7)), &[]);
        assert!(
            f1.line().contains(" matches=a:4,b:1 cep_lag=7 "),
            "{}",
            f1.line()
        );
        // Restarted: its counters start again from zero.
        let f2 = tracker.frame(&with_cep(t0 + Duration::from_secs(3), &page(2, 1, 0)), &[]);
        let cep = f2.cep.clone().expect("a CEP worker runs");
        assert_eq!(cep.matches["a"], (6, 1.0));
        assert_eq!(cep.matches["b"], (1, 0.0));
        assert_eq!(cep.lag, Lag::Records(Some(0.0)));
        assert!(
            f2.line().contains(" matches=a:6,b:1 cep_lag=0 "),
            "{}",
            f2.line()
        );
        let screen = f2.screen();
        assert!(screen.contains("CEP matches by rule"), "{screen}");
        let without = tracker.frame(&scrape(t0 + Duration::from_secs(4), 0, "", true), &[]);
        assert!(without.cep.is_none());
        assert!(!without.line().contains("matches="));
    }
}
