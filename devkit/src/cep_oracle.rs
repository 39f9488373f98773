//! What a CEP worker should have matched, worked out independently of it, and the comparison
//! with what it wrote to its matches topic.
//!
//! The rules' semantics are written here again on purpose, by hand and for the subset of the
//! rule document the seed rules use (`devkit/rules/`), so that a mistake in the worker does not
//! hide behind the same mistake in its check:
//! - a rule sees the events of its `source` topics whose record timestamp is at or after its
//!   version's `created_at`, grouped by the value of its `key` field (events without it are
//!   skipped);
//! - each step counts the events satisfying it (its `conditions`, all of them, or its `when`);
//!   an event satisfying several steps counts for each;
//! - one step of count N: `repeat: every` matches floor(n / N) times, `repeat: once`
//!   min(1, floor(n / N)); several steps, `repeat: once`: one match when every step reached its
//!   count. Several steps with `repeat: every` depend on the order of events across partitions
//!   and are refused in an untimed rule, as are the parts of a document this oracle does not
//!   model.
//!
//! A rule with `ordered`, `within`, `window`, `schedule`, `max_out_of_order` or
//! `allowed_lateness` is timed: its events are kept, and each key's are evaluated at the end in
//! the order of (event time, event id), the events the worker wrote to `cep.late` left out:
//! - `ordered` + `within`: a match at the earliest event that ends, within `within` of its
//!   first event, a subsequence of the events after the previous match that takes each step
//!   `count` times in the steps' order;
//! - `within` alone: a match at the earliest event whose last `within` (events after the
//!   previous match) hold every step's count;
//! - `window` (tumbling, sliding, session, events) and no window at all: the counting above,
//!   in event-time order, started afresh in each window.
//!
//! These are worked out by brute force (each candidate end event tried in turn), which is slow
//! but hard to get wrong.
//!
//! `when` is read as comparisons of a field with a literal (`==`, `!=`, `<`, `<=`, `>`, `>=`)
//! joined by `&&` and `||` (`&&` binding tighter), without parentheses.
//!
//! Found matches are compared by rule and key; a match id seen twice is a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use rdkafka::message::Headers as _;
use rdkafka::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::harness::TopicReader;
use crate::reconcile::CleanDecoder;
use logpipe_core::record::{RecordId, CEP_LATE_TOPIC};

/// How long one topic may take to be read to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the late topic may take to appear: the worker makes it only when it has a late
/// event to write.
const LATE_TOPIC_WAIT: Duration = Duration::from_secs(5);
/// Keys listed per rule whose count is off.
const SHOWN_KEYS: usize = 5;
/// The watermark's lag behind the highest event time when a rule does not say.
const DEFAULT_MAX_OUT_OF_ORDER_MS: i64 = 5_000;

/// One clean record as the rules see it: where it is, its timestamp and its fields.
#[derive(Debug, Clone, Copy)]
pub struct CleanEvent<'a> {
    pub topic: &'a str,
    /// `<lp.host>/<lp.file>/<lp.offset>`, which orders events of equal event time.
    pub id: &'a str,
    /// The record's Kafka timestamp, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub fields: &'a Map<String, Value>,
}

/// How often a key may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Once,
    Every,
}

/// How a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// As what a field and a literal are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Float,
    Bool,
}

/// `field op literal`, the literal read as `kind`.
#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    field: String,
    op: Op,
    kind: Kind,
    literal: Value,
    /// A `when` comparison (CEL): the field must have the literal's JSON type (a number for a
    /// number); a condition reads `"3"` as the integer 3.
    strict: bool,
}

/// One step: satisfied by an event for which one of the groups holds entirely.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    any_of: Vec<Vec<Comparison>>,
    count: u64,
}

/// A rule version as the oracle models it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    /// The version the worker gave this document, when known; found matches of another version
    /// are not judged.
    pub version: Option<u64>,
    /// The version's `created_at`, in milliseconds since the epoch.
    pub created_at_ms: i64,
    pub repeat: Repeat,
    sources: Vec<String>,
    key: String,
    steps: Vec<Step>,
    /// `None`: an untimed rule, whose counts fold event by event in any order.
    timing: Option<Timing>,
}

/// What makes a rule timed.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    /// The field an event's time is read from (RFC 3339 or epoch millis); the record's
    /// timestamp when it is missing or unreadable.
    event_time: String,
    grouping: Grouping,
    /// `schedule`: only events with `starts_at <= time < ends_at` count.
    starts_at_ms: i64,
    ends_at_ms: i64,
    /// How far the watermark trails the highest event time.
    max_out_of_order_ms: i64,
    /// How far behind the watermark an event may still be.
    allowed_lateness_ms: i64,
}

/// How a timed rule's events form matches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grouping {
    /// `ordered: true` and `within`: the steps in order, within a span.
    Sequence { within_ms: i64 },
    /// `within` alone: every step's count within a span.
    Within { within_ms: i64 },
    /// `window`, or none: the untimed counting, afresh in each window.
    Windows(Window),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Window {
    /// One window holding all of a key's events.
    All,
    /// `[k * size, (k + 1) * size)`.
    Tumbling { size_ms: i64 },
    /// `[k * every, k * every + size)`, overlapping.
    Sliding { size_ms: i64, every_ms: i64 },
    /// The key's rule events with at most `gap` between consecutive ones.
    Session { gap_ms: i64 },
    /// The key's rule events in runs of this many.
    Events(usize),
}

impl RuleSpec {
    /// Reads a rule document (as parsed from YAML or JSON). Refuses what it does not model.
    pub fn from_document(
        document: &Value,
        version: Option<u64>,
        created_at_ms: i64,
    ) -> anyhow::Result<RuleSpec> {
        let doc = document.as_object().context("a rule document is a map")?;
        let name = text(doc, "name")?.context("the rule has no name")?;
        let named = |e: anyhow::Error| e.context(format!("rule {name}"));
        for key in doc.keys() {
            if ![
                "name",
                "source",
                "key",
                "event_list",
                "repeat",
                "output",
                "event_time",
                "ordered",
                "within",
                "window",
                "schedule",
                "max_out_of_order",
                "allowed_lateness",
            ]
            .contains(&key.as_str())
            {
                return Err(named(anyhow::anyhow!(
                    "`{key}` is not modelled by the oracle"
                )));
            }
        }
        let sources = match doc.get("source") {
            Some(Value::String(topic)) => vec![topic.clone()],
            Some(Value::Array(topics)) => topics
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .context("`source` is a topic or a list of topics")
                .map_err(named)?,
            _ => return Err(named(anyhow::anyhow!("`source` is missing"))),
        };
        let key = text(doc, "key")
            .and_then(|k| k.context("`key` is missing"))
            .map_err(named)?;
        let repeat = match text(doc, "repeat").map_err(named)?.as_deref() {
            None | Some("once") => Repeat::Once,
            Some("every") => Repeat::Every,
            Some(other) => return Err(named(anyhow::anyhow!("unknown repeat `{other}`"))),
        };
        let steps = doc
            .get("event_list")
            .and_then(Value::as_array)
            .context("`event_list` is a list of steps")
            .map_err(named)?
            .iter()
            .enumerate()
            .map(|(i, step)| {
                read_step(step).with_context(|| format!("rule {name}: event_list[{i}]"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if steps.is_empty() {
            return Err(named(anyhow::anyhow!("`event_list` is empty")));
        }
        let timing = read_timing(doc).map_err(named)?;
        if timing.is_none() && steps.len() > 1 && repeat == Repeat::Every {
            return Err(named(anyhow::anyhow!(
                "several steps with `repeat: every` depend on the order of events; not modelled"
            )));
        }
        if timing.is_some() && steps.len() > 64 {
            return Err(named(anyhow::anyhow!(
                "more than 64 steps in a timed rule; not modelled"
            )));
        }
        Ok(RuleSpec {
            name,
            version,
            created_at_ms,
            repeat,
            sources,
            key,
            steps,
            timing,
        })
    }

    /// The rule documents of a YAML list (a rules file), each with its version's creation time.
    pub fn from_yaml_list(
        yaml: &str,
        created_at_ms: impl Fn(&str) -> Option<(Option<u64>, i64)>,
    ) -> anyhow::Result<Vec<RuleSpec>> {
        let documents: Vec<Value> =
            serde_yaml_ng::from_str(yaml).context("a rules file is a YAML list of rules")?;
        documents
            .iter()
            .map(|doc| {
                let name = doc.get("name").and_then(Value::as_str).unwrap_or_default();
                let (version, at) = created_at_ms(name)
                    .with_context(|| format!("no creation time for rule {name:?}"))?;
                RuleSpec::from_document(doc, version, at)
            })
            .collect()
    }

    /// How far a timed rule's watermark trails the events: after the last event, the worker
    /// emits its results no sooner than this (and its idle timeout) later. `None` when untimed.
    pub fn max_out_of_order(&self) -> Option<Duration> {
        self.timing
            .as_ref()
            .map(|t| Duration::from_millis(t.max_out_of_order_ms.max(0) as u64))
    }

    /// A timed rule's `allowed_lateness`: its events are evaluated once its watermark is this
    /// much past them. `None` when untimed.
    pub fn allowed_lateness(&self) -> Option<Duration> {
        self.timing
            .as_ref()
            .map(|t| Duration::from_millis(t.allowed_lateness_ms.max(0) as u64))
    }

    /// The key an event has for this rule, if it is one the rule sees.
    fn key_of(&self, event: &CleanEvent<'_>) -> Option<String> {
        if event.timestamp_ms < self.created_at_ms || !self.sources.iter().any(|s| s == event.topic)
        {
            return None;
        }
        match field(event.fields, &self.key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// The matches a key with these step counts has made.
    fn matches(&self, counts: &[u64]) -> u64 {
        let full: Vec<u64> = self
            .steps
            .iter()
            .zip(counts)
            .map(|(step, n)| n / step.count)
            .collect();
        match (self.repeat, full.as_slice()) {
            (Repeat::Every, [one]) => *one,
            (Repeat::Every, _) => unreachable!("refused when read"),
            (Repeat::Once, _) => u64::from(full.iter().all(|f| *f >= 1)),
        }
    }

    /// An event's time for this timed rule.
    fn event_time_ms(timing: &Timing, event: &CleanEvent<'_>) -> i64 {
        match field(event.fields, &timing.event_time) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => rfc3339_ms(s),
            _ => None,
        }
        .unwrap_or(event.timestamp_ms)
    }

    /// The matches a key of this timed rule has made with these events (in any order).
    fn timed_matches(&self, events: &[TimedEvent]) -> u64 {
        let timing = self.timing.as_ref().expect("timed events of a timed rule");
        let mut events: Vec<&TimedEvent> = events
            .iter()
            .filter(|e| {
                !e.late
                    && e.steps != 0
                    && (timing.starts_at_ms..timing.ends_at_ms).contains(&e.time_ms)
            })
            .collect();
        events.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
        match timing.grouping {
            Grouping::Sequence { within_ms } => {
                // Each step's index once per occurrence it needs: [0, 0, 1] for counts 2, 1.
                let pattern: Vec<usize> = (0..self.steps.len())
                    .flat_map(|i| std::iter::repeat_n(i, self.steps[i].count as usize))
                    .collect();
                self.earliest_ends(&events, within_ms, |span| {
                    // Taking each step at its first chance never leaves a later step fewer.
                    let taken = span.iter().fold(0, |next, e| {
                        next + usize::from(next < pattern.len() && e.satisfies(pattern[next]))
                    });
                    taken == pattern.len()
                })
            }
            Grouping::Within { within_ms } => self.earliest_ends(&events, within_ms, |span| {
                self.steps.iter().enumerate().all(|(i, step)| {
                    span.iter().filter(|e| e.satisfies(i)).count() as u64 >= step.count
                })
            }),
            Grouping::Windows(window) => window
                .split(&events)
                .iter()
                .map(|events| self.counted_matches(events))
                .sum(),
        }
    }

    /// Matches of a rule whose match ends at the earliest event `e` for which `holds` the
    /// events since the previous match with a time in `[e - within, e]`: each end tried in turn.
    fn earliest_ends(
        &self,
        events: &[&TimedEvent],
        within_ms: i64,
        holds: impl Fn(&[&TimedEvent]) -> bool,
    ) -> u64 {
        let mut matches = 0;
        let mut start = 0;
        for end in 0..events.len() {
            let from = (start..=end)
                .find(|&i| events[i].time_ms >= events[end].time_ms - within_ms)
                .unwrap_or(end);
            if holds(&events[from..=end]) {
                matches += 1;
                if self.repeat == Repeat::Once {
                    break;
                }
                start = end + 1;
            }
        }
        matches
    }

    /// The untimed counting over events in order: each step counts up to its count; when all
    /// have theirs, a match, then (`every`) the counts start over.
    fn counted_matches(&self, events: &[&TimedEvent]) -> u64 {
        let mut counts = vec![0; self.steps.len()];
        let mut matches = 0;
        for e in events {
            for (i, step) in self.steps.iter().enumerate() {
                if e.satisfies(i) && counts[i] < step.count {
                    counts[i] += 1;
                }
            }
            if self.steps.iter().zip(&counts).all(|(s, n)| *n >= s.count) {
                matches += 1;
                if self.repeat == Repeat::Once {
                    break;
                }
                counts.fill(0);
            }
        }
        matches
    }
}

impl Window {
    /// The windows' events, each in the order given (event-time order).
    fn split<'e>(&self, events: &[&'e TimedEvent]) -> Vec<Vec<&'e TimedEvent>> {
        let mut by_start: BTreeMap<i64, Vec<&TimedEvent>> = BTreeMap::new();
        match *self {
            Window::All => return vec![events.to_vec()],
            Window::Events(n) => return events.chunks(n).map(<[_]>::to_vec).collect(),
            Window::Session { gap_ms } => {
                let mut sessions: Vec<Vec<&TimedEvent>> = Vec::new();
                for e in events {
                    match sessions.last_mut() {
                        Some(session)
                            if e.time_ms - session.last().expect("not empty").time_ms <= gap_ms =>
                        {
                            session.push(e)
                        }
                        _ => sessions.push(vec![e]),
                    }
                }
                return sessions;
            }
            Window::Tumbling { size_ms } => {
                for e in events {
                    by_start
                        .entry(e.time_ms.div_euclid(size_ms))
                        .or_default()
                        .push(e);
                }
            }
            Window::Sliding { size_ms, every_ms } => {
                for e in events {
                    // The windows k with k * every <= time < k * every + size.
                    let first = (e.time_ms - size_ms).div_euclid(every_ms) + 1;
                    for k in first..=e.time_ms.div_euclid(every_ms) {
                        by_start.entry(k).or_default().push(e);
                    }
                }
            }
        }
        by_start.into_values().collect()
    }
}

/// The timed part of a rule document; `None` for an untimed rule.
fn read_timing(doc: &Map<String, Value>) -> anyhow::Result<Option<Timing>> {
    let ordered = match doc.get("ordered") {
        None => false,
        Some(Value::Bool(ordered)) => *ordered,
        Some(other) => bail!("`ordered` is not a boolean: {other}"),
    };
    let duration = |key: &str| -> anyhow::Result<Option<i64>> {
        doc.get(key)
            .map(|d| duration_ms(d).with_context(|| format!("`{key}`")))
            .transpose()
    };
    let within = duration("within")?;
    let max_out_of_order = duration("max_out_of_order")?;
    let allowed_lateness = duration("allowed_lateness")?;
    let window = doc
        .get("window")
        .map(|w| read_window(w).context("`window`"))
        .transpose()?;
    let schedule = doc
        .get("schedule")
        .map(|s| read_schedule(s).context("`schedule`"))
        .transpose()?;
    if !ordered
        && within.is_none()
        && window.is_none()
        && schedule.is_none()
        && max_out_of_order.is_none()
        && allowed_lateness.is_none()
    {
        return Ok(None);
    }
    let grouping = match (ordered, within, window) {
        (_, Some(_), Some(_)) => bail!("`within` with `window` is not modelled by the oracle"),
        (true, None, _) => bail!("`ordered` needs `within`"),
        (true, Some(within_ms), None) => Grouping::Sequence { within_ms },
        (false, Some(within_ms), None) => Grouping::Within { within_ms },
        (false, None, window) => Grouping::Windows(window.unwrap_or(Window::All)),
    };
    if let Grouping::Sequence { within_ms } | Grouping::Within { within_ms } = grouping {
        anyhow::ensure!(within_ms > 0, "`within` must be positive");
    }
    let (starts_at_ms, ends_at_ms) = schedule.unwrap_or((i64::MIN, i64::MAX));
    let event_time = text(doc, "event_time")?.unwrap_or_else(|| "event_time".into());
    Ok(Some(Timing {
        event_time,
        grouping,
        starts_at_ms,
        ends_at_ms,
        max_out_of_order_ms: max_out_of_order.unwrap_or(DEFAULT_MAX_OUT_OF_ORDER_MS),
        allowed_lateness_ms: allowed_lateness.unwrap_or(0),
    }))
}

/// `5s`, `2m`, `1h`, `500ms`, `1d` in milliseconds.
fn duration_ms(value: &Value) -> anyhow::Result<i64> {
    let text = value.as_str().context("a duration is a string like `5s`")?;
    let duration = humantime::parse_duration(text).with_context(|| format!("`{text}`"))?;
    i64::try_from(duration.as_millis()).context("the duration is too long")
}

fn read_window(value: &Value) -> anyhow::Result<Window> {
    let doc = value.as_object().context("a window is a map")?;
    let mut keys: Vec<&str> = doc.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let positive = |key: &str| -> anyhow::Result<i64> {
        let ms = duration_ms(&doc[key]).with_context(|| format!("`{key}`"))?;
        anyhow::ensure!(ms > 0, "`{key}` must be positive");
        Ok(ms)
    };
    Ok(match keys.as_slice() {
        ["tumbling"] => Window::Tumbling {
            size_ms: positive("tumbling")?,
        },
        ["every", "sliding"] => Window::Sliding {
            size_ms: positive("sliding")?,
            every_ms: positive("every")?,
        },
        ["session"] => Window::Session {
            gap_ms: positive("session")?,
        },
        ["events"] => Window::Events(
            doc["events"]
                .as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| usize::try_from(n).ok())
                .context("`events` is a positive integer")?,
        ),
        _ => bail!("a window is {{tumbling}}, {{sliding, every}}, {{session}} or {{events}}"),
    })
}

/// `{starts_at, ends_at}` (RFC 3339; either may be left out) in milliseconds.
fn read_schedule(value: &Value) -> anyhow::Result<(i64, i64)> {
    let doc = value.as_object().context("a schedule is a map")?;
    let mut bounds = (i64::MIN, i64::MAX);
    for (key, value) in doc {
        let at = value
            .as_str()
            .and_then(rfc3339_ms)
            .with_context(|| format!("`{key}` is not an RFC 3339 time"))?;
        match key.as_str() {
            "starts_at" => bounds.0 = at,
            "ends_at" => bounds.1 = at,
            other => bail!("`{other}` is not a schedule key"),
        }
    }
    Ok(bounds)
}

/// An RFC 3339 time in milliseconds since the epoch, with `Z` or a `+hh:mm` offset.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let at = text.len().checked_sub(6)?;
    let (utc, offset_ms) = match (text.get(..at), text.get(at..)) {
        (Some(local), Some(offset))
            if offset.starts_with(['+', '-']) && offset.as_bytes()[3] == b':' =>
        {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..].parse().ok()?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (format!("{local}Z"), sign * (hours * 60 + minutes) * 60_000)
        }
        _ => (text.to_owned(), 0),
    };
    let utc = humantime::parse_rfc3339_weak(&utc).ok()?;
    let ms = i64::try_from(utc.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(ms - offset_ms)
}

fn text(doc: &Map<String, Value>, key: &str) -> anyhow::Result<Option<String>> {
    match doc.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bail!("`{key}` is not a string: {other}"),
    }
}

fn read_step(step: &Value) -> anyhow::Result<Step> {
    let doc = step.as_object().context("a step is a map")?;
    for key in doc.keys() {
        if !["conditions", "when", "count"].contains(&key.as_str()) {
            bail!("`{key}` is not modelled by the oracle");
        }
    }
    let count = match doc.get("count") {
        None => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .context("`count` is a positive integer")?,
    };
    let any_of = match (doc.get("conditions"), doc.get("when")) {
        (Some(conditions), None) => vec![conditions
            .as_array()
            .context("`conditions` is a list")?
            .iter()
            .enumerate()
            .map(|(i, c)| read_condition(c).with_context(|| format!("conditions[{i}]")))
            .collect::<anyhow::Result<Vec<_>>>()?],
        (None, Some(Value::String(when))) => parse_when(when).context("when")?,
        _ => bail!("a step has either `conditions` or a `when` string"),
    };
    Ok(Step { any_of, count })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionDoc {
    field: String,
    value: Value,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    operator: Option<String>,
}

fn read_condition(condition: &Value) -> anyhow::Result<Comparison> {
    let doc = ConditionDoc::deserialize(condition)?;
    let op = match doc.operator.as_deref().unwrap_or("equals") {
        "equals" => Op::Eq,
        "not_equals" => Op::Ne,
        "lt" => Op::Lt,
        "lte" => Op::Le,
        "gt" => Op::Gt,
        "gte" => Op::Ge,
        other => bail!("operator `{other}` is not modelled by the oracle"),
    };
    let kind = match doc.kind.as_deref() {
        None => kind_of(&doc.value).context("the value has no comparable type")?,
        Some("string") => Kind::String,
        Some("integer" | "int" | "long") => Kind::Integer,
        Some("float" | "double" | "number") => Kind::Float,
        Some("bool" | "boolean") => Kind::Bool,
        Some(other) => bail!("unknown type `{other}`"),
    };
    Ok(Comparison {
        field: doc.field,
        op,
        kind,
        literal: doc.value,
        strict: false,
    })
}

/// The type a literal has as written.
fn kind_of(value: &Value) -> Option<Kind> {
    match value {
        Value::String(_) => Some(Kind::String),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Kind::Integer),
        Value::Number(_) => Some(Kind::Float),
        Value::Bool(_) => Some(Kind::Bool),
        _ => None,
    }
}

/// `a == "x" && b >= 3 || c != true`: OR of ANDs of comparisons.
fn parse_when(when: &str) -> anyhow::Result<Vec<Vec<Comparison>>> {
    when.split("||")
        .map(|group| group.split("&&").map(parse_comparison).collect())
        .collect()
}

fn parse_comparison(text: &str) -> anyhow::Result<Comparison> {
    let text = text.trim();
    // Two-character operators first, so `<=` is not read as `<`.
    let (at, op, len) = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(symbol, op)| text.find(symbol).map(|at| (at, *op, symbol.len())))
    .with_context(|| format!("`{text}` is not a comparison"))?;
    let field = text[..at].trim();
    let literal = text[at + len..].trim();
    if field.is_empty()
        || !field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        bail!("`{field}` is not a field name (the oracle reads `field op literal` only)");
    }
    let literal: Value = if let Some(s) = literal
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
    {
        Value::String(s.to_owned())
    } else {
        serde_json::from_str(literal)
            .with_context(|| format!("`{literal}` is not a literal the oracle reads"))?
    };
    let kind = kind_of(&literal).with_context(|| format!("`{literal}` cannot be compared"))?;
    Ok(Comparison {
        field: field.to_owned(),
        op,
        kind,
        literal,
        strict: true,
    })
}

/// A field by a dotted path.
fn field<'v>(fields: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut value = fields.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A value read as `kind`, if it can be.
#[derive(Debug, PartialEq, PartialOrd)]
enum Typed {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

fn typed(value: &Value, kind: Kind) -> Option<Typed> {
    match (kind, value) {
        (Kind::String, Value::String(s)) => Some(Typed::Str(s.clone())),
        (Kind::String, Value::Number(_) | Value::Bool(_)) => Some(Typed::Str(value.to_string())),
        (Kind::Integer, Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Typed::Int),
        (Kind::Integer, Value::String(s)) => s.trim().parse().ok().map(Typed::Int),
        (Kind::Float, Value::Number(n)) => n.as_f64().map(Typed::Float),
        (Kind::Float, Value::String(s)) => s.trim().parse().ok().map(Typed::Float),
        (Kind::Bool, Value::Bool(b)) => Some(Typed::Bool(*b)),
        (Kind::Bool, Value::String(s)) => s.trim().parse().ok().map(Typed::Bool),
        _ => None,
    }
}

impl Comparison {
    /// Whether the event satisfies it; a missing or unreadable field never does.
    fn holds(&self, fields: &Map<String, Value>) -> bool {
        let same_type = |v: &Value| {
            !self.strict || std::mem::discriminant(v) == std::mem::discriminant(&self.literal)
        };
        let (Some(left), Some(right)) = (
            field(fields, &self.field)
                .filter(|v| same_type(v))
                .and_then(|v| typed(v, self.kind)),
            typed(&self.literal, self.kind),
        ) else {
            return false;
        };
        match self.op {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

impl Step {
    fn holds(&self, fields: &Map<String, Value>) -> bool {
        self.any_of
            .iter()
            .any(|group| group.iter().all(|c| c.holds(fields)))
    }
}

/// One event of a timed rule's key, kept until the end.
#[derive(Debug, Clone)]
struct TimedEvent {
    time_ms: i64,
    id: String,
    timestamp_ms: i64,
    /// Bit i: the event satisfies step i.
    steps: u64,
    /// The worker wrote it to the late topic: it does not count.
    late: bool,
}

impl TimedEvent {
    fn satisfies(&self, step: usize) -> bool {
        self.steps & (1 << step) != 0
    }
}

/// What the late topic said, judged against the events the rules saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LateTally {
    /// Per rule (the rules' order), events the worker judged late.
    by_rule: Vec<u64>,
    /// The first late events the generator did not write late, or written late twice.
    wrong: Vec<String>,
    wrong_total: u64,
    /// Late events of rules or versions the oracle was not given.
    not_judged: u64,
}

/// The expected matches: untimed rules folded event by event (one counter per rule, key and
/// step), timed rules' events kept per key and evaluated at the end.
#[derive(Debug, Clone)]
pub struct Expected {
    rules: Vec<RuleSpec>,
    /// (rule index, key) -> events counted per step.
    counts: HashMap<(usize, String), Vec<u64>>,
    /// (rule index, key) -> the timed rule's events, in the order read.
    timed: HashMap<(usize, String), Vec<TimedEvent>>,
    late: LateTally,
    /// Events seen (any topic, any time).
    pub events: u64,
}

impl Expected {
    pub fn new(rules: Vec<RuleSpec>) -> Expected {
        Expected {
            late: LateTally {
                by_rule: vec![0; rules.len()],
                ..LateTally::default()
            },
            rules,
            counts: HashMap::new(),
            timed: HashMap::new(),
            events: 0,
        }
    }

    pub fn rules(&self) -> &[RuleSpec] {
        &self.rules
    }

    pub fn add(&mut self, event: &CleanEvent<'_>) {
        self.events += 1;
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(key) = rule.key_of(event) else {
                continue;
            };
            let satisfied: Vec<bool> = rule.steps.iter().map(|s| s.holds(event.fields)).collect();
            if let Some(timing) = &rule.timing {
                // Kept even when it satisfies no step: the worker may still judge it late.
                self.timed
                    .entry((index, key))
                    .or_default()
                    .push(TimedEvent {
                        time_ms: RuleSpec::event_time_ms(timing, event),
                        id: event.id.to_owned(),
                        timestamp_ms: event.timestamp_ms,
                        steps: (0..).zip(&satisfied).map(|(i, s)| u64::from(*s) << i).sum(),
                        late: false,
                    });
                continue;
            }
            if !satisfied.contains(&true) {
                continue;
            }
            let counts = self
                .counts
                .entry((index, key))
                .or_insert_with(|| vec![0; rule.steps.len()]);
            for (count, hit) in counts.iter_mut().zip(satisfied) {
                *count += u64::from(hit);
            }
        }
    }

    /// Leaves out of the timed rules' events those the worker judged late, and checks each
    /// was written late on purpose: its event time older than its record's timestamp by more
    /// than the rule's `max_out_of_order` (and `allowed_lateness`), which an event written on
    /// time never is.
    pub fn exclude_late(&mut self, late: &[LateEvent]) {
        for record in late {
            let Some(index) = self.rules.iter().position(|r| {
                r.name == record.rule
                    && (r.version.is_none()
                        || record.version.is_none()
                        || r.version == record.version)
            }) else {
                self.late.not_judged += 1;
                continue;
            };
            let rule = &self.rules[index];
            let event = self
                .timed
                .get_mut(&(index, record.key.clone()))
                .and_then(|events| events.iter_mut().find(|e| e.id == record.event.id));
            let wrong = match event {
                None => Some("not an event of this timed rule and key"),
                Some(e) if e.late => Some("late twice"),
                Some(e) => {
                    e.late = true;
                    self.late.by_rule[index] += 1;
                    // Late means behind the watermark, itself behind the events written last.
                    let lateness_ms = rule
                        .timing
                        .as_ref()
                        .map_or(0, |t| t.max_out_of_order_ms + t.allowed_lateness_ms);
                    (e.timestamp_ms - e.time_ms <= lateness_ms).then_some("written on time")
                }
            };
            if let Some(why) = wrong {
                self.late.wrong_total += 1;
                if self.late.wrong.len() < SHOWN_KEYS {
                    self.late.wrong.push(format!(
                        "{} key {} event {} ({why})",
                        rule.name, record.key, record.event.id
                    ));
                }
            }
        }
    }

    /// Expected matches per (rule, key), keys with none left out.
    pub fn matches(&self) -> BTreeMap<(String, String), u64> {
        let untimed = self.counts.iter().map(|((index, key), counts)| {
            let rule = &self.rules[*index];
            (rule, key, rule.matches(counts))
        });
        let timed = self.timed.iter().map(|((index, key), events)| {
            let rule = &self.rules[*index];
            (rule, key, rule.timed_matches(events))
        });
        untimed
            .chain(timed)
            .filter(|(_, _, n)| *n > 0)
            .map(|(rule, key, n)| ((rule.name.clone(), key.clone()), n))
            .collect()
    }
}

/// A record of the late topic, as far as the check needs it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LateEvent {
    pub rule: String,
    pub version: Option<u64>,
    #[serde(deserialize_with = "key_text")]
    pub key: String,
    pub event: LateEventId,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LateEventId {
    /// `<host>/<file>/<offset>`, as [`CleanEvent::id`].
    pub id: String,
}

impl LateEvent {
    pub fn parse(value: &[u8]) -> anyhow::Result<LateEvent> {
        serde_json::from_slice(value)
            .context("a late event is a JSON object with rule, key and event.id")
    }
}

/// A record of the matches topic, as far as the comparison needs it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FoundMatch {
    pub rule: String,
    pub version: Option<u64>,
    /// As the oracle writes keys: a string as is, another value as JSON.
    #[serde(deserialize_with = "key_text")]
    pub key: String,
    pub match_id: String,
}

fn key_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

impl FoundMatch {
    pub fn parse(value: &[u8]) -> anyhow::Result<FoundMatch> {
        serde_json::from_slice(value).context("a match is a JSON object with rule, key, match_id")
    }
}

/// One rule's count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCount {
    pub rule: String,
    pub expected: u64,
    pub found: u64,
    /// Expected and not found, summed over keys.
    pub missing: u64,
    /// Found beyond what was expected, summed over keys.
    pub extra: u64,
    /// The first keys whose count is off: (key, expected, found).
    pub keys_off: Vec<(String, u64, u64)>,
    pub keys_off_total: usize,
    /// Events the worker judged late for this rule (left out of `expected`).
    pub late: u64,
}

/// The outcome of comparing expected and found matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CepReconciliation {
    /// In the rules' order.
    pub rules: Vec<RuleCount>,
    /// Match ids found more than once.
    pub repeated_ids: Vec<String>,
    /// Matches of rules or versions the oracle was not given: counted, not judged.
    pub not_judged: u64,
    /// The first late events that should not have been (see [`Expected::exclude_late`]).
    pub wrongly_late: Vec<String>,
    pub wrongly_late_total: u64,
}

impl CepReconciliation {
    pub fn is_exact(&self) -> bool {
        self.repeated_ids.is_empty()
            && self.wrongly_late_total == 0
            && self.rules.iter().all(|r| r.missing + r.extra == 0)
    }

    pub fn late(&self) -> u64 {
        self.rules.iter().map(|r| r.late).sum()
    }

    pub fn expected(&self) -> u64 {
        self.rules.iter().map(|r| r.expected).sum()
    }

    pub fn found(&self) -> u64 {
        self.rules.iter().map(|r| r.found).sum()
    }
}

/// Compares by rule and key.
pub fn compare(expected: &Expected, found: &[FoundMatch]) -> CepReconciliation {
    let mut found_by: HashMap<(String, String), u64> = HashMap::new();
    let mut ids: HashSet<&str> = HashSet::new();
    let mut repeated = BTreeSet::new();
    let mut not_judged = 0;
    for m in found {
        if !ids.insert(&m.match_id) {
            repeated.insert(m.match_id.clone());
        }
        let judged = expected.rules.iter().any(|r| {
            r.name == m.rule
                && (r.version.is_none() || m.version.is_none() || r.version == m.version)
        });
        if judged {
            *found_by.entry((m.rule.clone(), m.key.clone())).or_default() += 1;
        } else {
            not_judged += 1;
        }
    }
    let expected_by = expected.matches();
    let mut rules: Vec<RuleCount> = expected
        .rules
        .iter()
        .zip(&expected.late.by_rule)
        .map(|(r, late)| RuleCount {
            rule: r.name.clone(),
            late: *late,
            ..RuleCount::default()
        })
        .collect();
    let keys: BTreeSet<&(String, String)> = expected_by.keys().chain(found_by.keys()).collect();
    for rule_key @ (rule, key) in keys {
        let e = expected_by.get(rule_key).copied().unwrap_or(0);
        let f = found_by.get(rule_key).copied().unwrap_or(0);
        let Some(count) = rules.iter_mut().find(|r| &r.rule == rule) else {
            continue;
        };
        count.expected += e;
        count.found += f;
        count.missing += e.saturating_sub(f);
        count.extra += f.saturating_sub(e);
        if e != f {
            count.keys_off_total += 1;
            if count.keys_off.len() < SHOWN_KEYS {
                count.keys_off.push((key.clone(), e, f));
            }
        }
    }
    CepReconciliation {
        rules,
        repeated_ids: repeated.into_iter().collect(),
        not_judged: not_judged + expected.late.not_judged,
        wrongly_late: expected.late.wrong.clone(),
        wrongly_late_total: expected.late.wrong_total,
    }
}

impl fmt::Display for CepReconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing: u64 = self.rules.iter().map(|r| r.missing).sum();
        let extra: u64 = self.rules.iter().map(|r| r.extra).sum();
        write!(
            f,
            "matches expected {}, found {}: missing {missing}, extra {extra}, repeated match ids {}; \
             late events {}, judged late wrongly {}",
            self.expected(),
            self.found(),
            self.repeated_ids.len(),
            self.late(),
            self.wrongly_late_total
        )?;
        if self.not_judged > 0 {
            write!(
                f,
                " ({} matches or late events of other rules or versions not judged)",
                self.not_judged
            )?;
        }
        for r in &self.rules {
            write!(
                f,
                "\n  {:<24} expected {:>7}  found {:>7}  missing {:>5}  extra {:>5}  late {:>5}",
                r.rule, r.expected, r.found, r.missing, r.extra, r.late
            )?;
            if !r.keys_off.is_empty() {
                let shown: Vec<String> = r
                    .keys_off
                    .iter()
                    .map(|(k, e, f)| format!("{k} {e}/{f}"))
                    .collect();
                write!(f, "; keys off (expected/found): {}", shown.join(" "))?;
                if r.keys_off_total > r.keys_off.len() {
                    write!(f, " and {} more", r.keys_off_total - r.keys_off.len())?;
                }
            }
        }
        if !self.repeated_ids.is_empty() {
            let shown: Vec<&str> = self
                .repeated_ids
                .iter()
                .take(SHOWN_KEYS)
                .map(String::as_str)
                .collect();
            write!(f, "\n  repeated match ids: {}", shown.join(" "))?;
        }
        if !self.wrongly_late.is_empty() {
            write!(
                f,
                "\n  judged late wrongly: {}",
                self.wrongly_late.join("; ")
            )?;
            if self.wrongly_late_total > self.wrongly_late.len() as u64 {
                write!(
                    f,
                    " and {} more",
                    self.wrongly_late_total - self.wrongly_late.len() as u64
                )?;
            }
        }
        Ok(())
    }
}

/// Reads the clean topics to their end (read_committed), decoding each record as the
/// reconciliation does, and folds every event into the expectation of `rules`.
pub async fn expected_from_clean(
    read_bootstrap: &str,
    schema_store_url: &str,
    clean: &[String],
    rules: Vec<RuleSpec>,
) -> anyhow::Result<Expected> {
    let mut decoder = CleanDecoder::new(schema_store_url)?;
    let bootstrap = read_bootstrap.to_owned();
    let topics = clean.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut expected = Expected::new(rules);
        for topic in &topics {
            let mut reader = TopicReader::new(&bootstrap, topic, READ_TIMEOUT)?;
            reader.read_new(READ_TIMEOUT, |message| {
                let payload = message.payload().unwrap_or_default();
                let (fields, _) = decoder.decode(payload).with_context(|| {
                    format!(
                        "{topic} partition {} offset {}",
                        message.partition(),
                        message.offset()
                    )
                })?;
                let fields: Map<String, Value> = fields
                    .into_iter()
                    .map(|(name, value)| Ok((name, Value::try_from(value)?)))
                    .collect::<anyhow::Result<_>>()?;
                let headers = message
                    .headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .map(|h| (h.key, h.value));
                let id = RecordId::from_headers(headers)
                    .with_context(|| {
                        format!(
                            "{topic} partition {} offset {}",
                            message.partition(),
                            message.offset()
                        )
                    })?
                    .map(|id| format!("{}/{}/{}", id.host, id.file.to_hex(), id.offset))
                    .unwrap_or_default();
                expected.add(&CleanEvent {
                    topic,
                    id: &id,
                    timestamp_ms: message.timestamp().to_millis().unwrap_or(i64::MIN),
                    fields: &fields,
                });
                Ok(())
            })?;
        }
        Ok(expected)
    })
    .await?
}

/// Reads the late topic (read_committed) to its end; none when the worker never made it.
pub fn read_late(read_bootstrap: &str) -> anyhow::Result<Vec<LateEvent>> {
    let Some(mut reader) =
        TopicReader::new_if_exists(read_bootstrap, CEP_LATE_TOPIC, LATE_TOPIC_WAIT)?
    else {
        return Ok(Vec::new());
    };
    let mut late = Vec::new();
    reader.read_new(READ_TIMEOUT, |message| {
        late.push(
            LateEvent::parse(message.payload().unwrap_or_default()).with_context(|| {
                format!(
                    "{CEP_LATE_TOPIC} partition {} offset {}",
                    message.partition(),
                    message.offset()
                )
            })?,
        );
        Ok(())
    })?;
    Ok(late)
}

/// The matches topic, read a bit more each time (read_committed).
pub struct MatchReader {
    reader: TopicReader,
    found: Vec<FoundMatch>,
}

impl MatchReader {
    /// Blocking: waits up to the read timeout for the topic to exist.
    pub fn open(read_bootstrap: &str, topic: &str) -> anyhow::Result<MatchReader> {
        Ok(MatchReader {
            reader: TopicReader::new(read_bootstrap, topic, READ_TIMEOUT)?,
            found: Vec::new(),
        })
    }

    /// The matches read so far.
    pub fn found(&self) -> &[FoundMatch] {
        &self.found
    }

    /// Blocking: reads what was committed since the last read; returns the matches so far.
    pub fn read_new(&mut self) -> anyhow::Result<&[FoundMatch]> {
        let MatchReader { reader, found } = self;
        let topic = reader.topic().to_owned();
        reader.read_new(READ_TIMEOUT, |message| {
            let m =
                FoundMatch::parse(message.payload().unwrap_or_default()).with_context(|| {
                    format!(
                        "{topic} partition {} offset {}",
                        message.partition(),
                        message.offset()
                    )
                })?;
            found.push(m);
            Ok(())
        })?;
        Ok(&self.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEED: &str = include_str!("../rules/game.yaml");
    /// The seed rules' versions were created at this time.
    const T0: i64 = 1_000;

    fn seed() -> Vec<RuleSpec> {
        RuleSpec::from_yaml_list(SEED, |_| Some((Some(1), T0))).unwrap()
    }

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// Folds (timestamp, fields) events of `clean.game` into the seed rules' expectation.
    fn expect(events: &[(i64, Value)]) -> Expected {
        let mut expected = Expected::new(seed());
        for (at, value) in events {
            expected.add(&CleanEvent {
                topic: "clean.game",
                id: "h/0/0",
                timestamp_ms: *at,
                fields: &fields(value.clone()),
            });
        }
        expected
    }

    fn game(player: &str, event: &str) -> Value {
        json!({"event_id": "r-0", "event": event, "player_id": player})
    }

    fn level(player: &str, level: i64) -> Value {
        json!({"event": "level_up", "player_id": player, "level": level, "previous_level": level - 1})
    }

    fn matches(expected: &Expected) -> Vec<(String, String, u64)> {
        expected
            .matches()
            .into_iter()
            .map(|((r, k), n)| (r, k, n))
            .collect()
    }

    fn m(rule: &str, key: &str, n: u64) -> (String, String, u64) {
        (rule.into(), key.into(), n)
    }

    #[test]
    fn the_seed_rules_are_read() {
        let rules = seed();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "login-hearts",
                "level-3-gems",
                "pvp-5-wins",
                "shopper-fighter",
                "level-3-then-pvp",
                "purchases-2-per-minute"
            ]
        );
        let repeats: Vec<Repeat> = rules.iter().map(|r| r.repeat).collect();
        assert_eq!(
            repeats,
            [
                Repeat::Every,
                Repeat::Once,
                Repeat::Every,
                Repeat::Once,
                Repeat::Once,
                Repeat::Once
            ]
        );
        let groupings: Vec<Option<Grouping>> = rules
            .iter()
            .map(|r| r.timing.as_ref().map(|t| t.grouping))
            .collect();
        assert_eq!(
            groupings[3..],
            [
                None,
                Some(Grouping::Sequence { within_ms: 120_000 }),
                Some(Grouping::Windows(Window::Tumbling { size_ms: 60_000 }))
            ]
        );
        assert_eq!(rules[4].max_out_of_order(), Some(Duration::from_secs(5)));
        assert_eq!(rules[0].max_out_of_order(), None);
        assert_eq!(
            rules[3].steps.iter().map(|s| s.count).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(rules[1].steps[0].any_of[0].len(), 2);
    }

    #[test]
    fn counts_per_rule_and_key_follow_the_table() {
        // (events of player a, expected matches per rule)
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, u64)]);
        let table: &[Case<'_>] = &[
            (&[], &[]),
            (&["login"], &[("login-hearts", 1)]),
            (&["login", "login", "login"], &[("login-hearts", 3)]),
            (&["pvp_win"; 4], &[]),
            (&["pvp_win"; 5], &[("pvp-5-wins", 1)]),
            (&["pvp_win"; 9], &[("pvp-5-wins", 1)]),
            (&["pvp_win"; 10], &[("pvp-5-wins", 2)]),
            (
                &["purchase", "purchase", "pvp_win", "pvp_win"],
                &[("purchases-2-per-minute", 1)],
            ),
            (
                &["pvp_win", "purchase", "pvp_win", "purchase", "pvp_win"],
                &[("purchases-2-per-minute", 1), ("shopper-fighter", 1)],
            ),
            (
                &[&["purchase"; 6][..], &["pvp_win"; 15][..]].concat(),
                &[
                    ("pvp-5-wins", 3),
                    ("purchases-2-per-minute", 1),
                    ("shopper-fighter", 1),
                ],
            ),
            (&["reward", "level_up"], &[]),
        ];
        for (events, want) in table {
            let events: Vec<(i64, Value)> = events.iter().map(|e| (T0, game("a", e))).collect();
            let got = matches(&expect(&events));
            let want: Vec<_> = want.iter().map(|(r, n)| m(r, "a", *n)).collect();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "events {events:?}");
        }
    }

    #[test]
    fn level_3_counts_once_per_player() {
        let events = [
            (T0, level("a", 2)),
            (T0, level("a", 3)),
            (T0, level("a", 3)), // a new character reaching 3 again
            (T0, level("b", 4)),
            (T0, json!({"event": "login", "player_id": "c", "level": 3})),
            (
                T0,
                json!({"event": "level_up", "player_id": "d", "level": "3"}),
            ),
            (
                T0,
                json!({"event": "level_up", "player_id": "e", "level": 3.0}),
            ),
        ];
        assert_eq!(
            matches(&expect(&events)),
            [
                m("level-3-gems", "a", 1),
                m("level-3-gems", "e", 1),
                m("login-hearts", "c", 1)
            ]
        );
    }

    #[test]
    fn events_before_the_version_other_topics_and_keyless_events_do_not_count() {
        let mut expected = expect(&[
            (T0 - 1, game("a", "login")),
            (T0, game("a", "login")),
            (T0 + 5, json!({"event": "login"})),
            (T0 + 5, json!({"event": "login", "player_id": null})),
            (T0 + 5, json!({"event": "login", "player_id": 7})),
        ]);
        expected.add(&CleanEvent {
            topic: "clean.other",
            id: "h/0/1",
            timestamp_ms: T0,
            fields: &fields(game("a", "login")),
        });
        assert_eq!(
            matches(&expected),
            [m("login-hearts", "7", 1), m("login-hearts", "a", 1)]
        );
        assert_eq!(expected.events, 6);
    }

    #[test]
    fn conditions_and_when_compare_by_type() {
        let rule = |step: Value| {
            RuleSpec::from_document(
                &json!({"name": "r", "source": ["t"], "key": "k", "event_list": [step]}),
                None,
                0,
            )
            .unwrap()
        };
        let holds = |rule: &RuleSpec, event: Value| rule.steps[0].holds(&fields(event));
        let gte = rule(json!({"conditions": [
            {"field": "n", "value": 10, "type": "integer", "operator": "gte"},
            {"field": "s.code", "value": "1302", "type": "integer"}
        ]}));
        assert!(holds(&gte, json!({"n": 10, "s": {"code": 1302}})));
        assert!(holds(&gte, json!({"n": "12", "s": {"code": "1302"}})));
        assert!(!holds(&gte, json!({"n": 9, "s": {"code": 1302}})));
        assert!(!holds(&gte, json!({"n": 10})));
        assert!(!holds(&gte, json!({"n": "x", "s": {"code": 1302}})));
        let when = rule(json!({"when": "a == 'x' && n > 2.5 || b != true"}));
        assert!(holds(&when, json!({"a": "x", "n": 3, "b": true})));
        assert!(!holds(&when, json!({"a": "x", "n": 2, "b": true})));
        assert!(holds(&when, json!({"b": false})));
        assert!(holds(&when, json!({"a": "x", "n": 3.5})));
        assert!(
            !holds(&when, json!({"a": "x", "n": "3"})),
            "CEL: a string is no number"
        );
        assert!(!holds(&when, json!({"a": "y", "b": "false"})));
    }

    #[test]
    fn what_is_not_modelled_is_refused_with_its_place() {
        let refused = |doc: Value| {
            RuleSpec::from_document(&doc, None, 0)
                .unwrap_err()
                .chain()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(": ")
        };
        let base = |extra: Value| {
            let mut doc = json!({"name": "r", "source": "t", "key": "k",
                "event_list": [{"when": "a == 1"}]});
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            doc
        };
        assert!(
            refused(base(json!({"group_by": ["server"]}))).contains("`group_by` is not modelled")
        );
        assert!(refused(base(json!({"window": "5m"}))).contains("a window is a map"));
        assert!(
            refused(base(json!({"window": {"tumbling": "1m", "every": "1m"}})))
                .contains("a window is")
        );
        assert!(refused(base(json!({"ordered": true}))).contains("`ordered` needs `within`"));
        assert!(
            refused(base(json!({"within": "1m", "window": {"session": "1m"}})))
                .contains("`within` with `window`")
        );
        assert!(refused(base(json!({"within": "soon"}))).contains("`within`"));
        assert!(refused(base(json!({"schedule": {"starts_at": "monday"}})))
            .contains("`starts_at` is not an RFC 3339 time"));
        assert!(refused(base(json!({"repeat": "every", "event_list": [
            {"when": "a == 1"}, {"when": "b == 1"}
        ]})))
        .contains("several steps"));
        let e = refused(base(json!({"event_list": [{"when": "f(a)"}]})));
        assert!(
            e.contains("event_list[0]") && e.contains("not a comparison"),
            "{e}"
        );
        let e = refused(base(json!({"event_list": [{"conditions": [
            {"field": "a", "value": [1], "operator": "in"}
        ]}]})));
        assert!(e.contains("conditions[0]") && e.contains("`in`"), "{e}");
        assert!(refused(base(
            json!({"event_list": [{"when": "a == 1", "count": 0}]})
        ))
        .contains("positive"));
        assert!(refused(base(json!({"event_list": []}))).contains("empty"));
        assert!(RuleSpec::from_yaml_list(SEED, |name| {
            (name != "pvp-5-wins").then_some((None, 0))
        })
        .unwrap_err()
        .to_string()
        .contains("pvp-5-wins"));
    }

    fn found(rule: &str, key: &str, id: &str) -> FoundMatch {
        FoundMatch {
            rule: rule.into(),
            version: Some(1),
            key: key.into(),
            match_id: id.into(),
        }
    }

    #[test]
    fn found_matches_are_compared_by_rule_and_key() {
        let expected = expect(&[
            (T0, game("a", "login")),
            (T0, game("a", "login")),
            (T0, game("b", "login")),
            (T0, level("a", 3)),
        ]);
        let exact = compare(
            &expected,
            &[
                found("login-hearts", "a", "1"),
                found("login-hearts", "b", "2"),
                found("login-hearts", "a", "3"),
                found("level-3-gems", "a", "4"),
                found("someone-elses", "a", "5"),
                FoundMatch {
                    version: Some(2),
                    ..found("login-hearts", "a", "6")
                },
            ],
        );
        assert!(exact.is_exact(), "{exact}");
        assert_eq!(
            (exact.expected(), exact.found(), exact.not_judged),
            (4, 4, 2)
        );
        let text = exact.to_string();
        assert!(
            text.starts_with(
                "matches expected 4, found 4: missing 0, extra 0, repeated match ids 0; \
                 late events 0, judged late wrongly 0 (2 matches or late events"
            ),
            "{text}"
        );
        // b's login matched on a's key, a's level 3 twice with one id, and pvp out of nowhere.
        let off = compare(
            &expected,
            &[
                found("login-hearts", "a", "1"),
                found("login-hearts", "a", "2"),
                found("login-hearts", "a", "3"),
                found("level-3-gems", "a", "4"),
                found("level-3-gems", "a", "4"),
                found("pvp-5-wins", "c", "5"),
            ],
        );
        assert!(!off.is_exact());
        assert_eq!(off.repeated_ids, ["4"]);
        let by_rule: Vec<(&str, u64, u64, u64, u64)> = off
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.expected, r.found, r.missing, r.extra))
            .collect();
        assert_eq!(
            by_rule,
            [
                ("login-hearts", 3, 3, 1, 1),
                ("level-3-gems", 1, 2, 0, 1),
                ("pvp-5-wins", 0, 1, 0, 1),
                ("shopper-fighter", 0, 0, 0, 0),
                ("level-3-then-pvp", 0, 0, 0, 0),
                ("purchases-2-per-minute", 0, 0, 0, 0)
            ]
        );
        let text = off.to_string();
        assert!(
            text.contains("keys off (expected/found): a 2/3 b 1/0"),
            "{text}"
        );
        assert!(text.contains("repeated match ids: 4"), "{text}");
    }

    #[test]
    fn a_match_record_is_read_from_its_json() {
        let value = json!({"rule": "pvp-5-wins", "version": 1, "key": "p-000001",
            "match_id": "m-1", "window": null, "first_event_time": "2026-01-01T00:00:00.000Z",
            "last_event_time": "2026-01-01T00:00:01.000Z", "events": [], "output": {"reward": "gem"}});
        let m = FoundMatch::parse(value.to_string().as_bytes()).unwrap();
        assert_eq!(
            m,
            FoundMatch {
                version: Some(1),
                ..found("pvp-5-wins", "p-000001", "m-1")
            }
        );
        assert!(FoundMatch::parse(b"{\"rule\":\"x\"}").is_err());
        let numeric = json!({"rule": "r", "key": 7, "match_id": "m"}).to_string();
        assert_eq!(FoundMatch::parse(numeric.as_bytes()).unwrap().key, "7");
    }

    /// Steps `x` then `y` (by the field `event`) and whatever `extra` adds to the document.
    fn timed_rule(extra: Value) -> RuleSpec {
        let mut doc = json!({"name": "t", "source": "clean.game", "key": "player_id",
            "event_list": [{"when": "event == 'x'"}, {"when": "event == 'y'"}]});
        doc.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        RuleSpec::from_document(&doc, None, 0).unwrap()
    }

    /// Adds player `a`'s events (event time in ms, event) in the order given, the i-th with
    /// event id `h/0/<i>` and its event time as record timestamp; the rule's matches for `a`.
    fn timed_matches(rule: &RuleSpec, events: &[(i64, &str)]) -> u64 {
        let mut expected = Expected::new(vec![rule.clone()]);
        for (i, (at, event)) in events.iter().enumerate() {
            expected.add(&CleanEvent {
                topic: "clean.game",
                id: &format!("h/0/{i}"),
                timestamp_ms: *at,
                fields: &fields(json!({"event": event, "player_id": "a", "event_time": at})),
            });
        }
        expected
            .matches()
            .get(&("t".into(), "a".into()))
            .copied()
            .unwrap_or(0)
    }

    type TimedCase<'a> = (Value, &'a [(i64, &'a str)], u64);

    fn check_timed(table: &[TimedCase<'_>]) {
        for (extra, events, want) in table {
            let rule = timed_rule(extra.clone());
            assert_eq!(
                timed_matches(&rule, events),
                *want,
                "rule {extra} events {events:?}"
            );
        }
    }

    #[test]
    fn a_sequence_takes_its_steps_in_event_time_order_within_its_span() {
        let once = json!({"ordered": true, "within": "10s"});
        let every = json!({"ordered": true, "within": "10s", "repeat": "every"});
        let x2 = json!({"ordered": true, "within": "10s", "repeat": "every",
            "event_list": [{"when": "event == 'x'", "count": 2}, {"when": "event == 'y'"}]});
        check_timed(&[
            (once.clone(), &[(0, "x"), (5_000, "y")], 1),
            (once.clone(), &[(0, "y"), (5_000, "x")], 0),
            // Read in the other order, the same events in event time.
            (once.clone(), &[(5_000, "y"), (0, "x")], 1),
            (once.clone(), &[(0, "x"), (10_000, "y")], 1),
            (once.clone(), &[(0, "x"), (10_001, "y")], 0),
            (once.clone(), &[(0, "x"), (9_000, "z"), (10_001, "y")], 0),
            (
                once.clone(),
                &[(0, "x"), (10_001, "y"), (12_000, "x"), (13_000, "y")],
                1,
            ),
            (once.clone(), &[(0, "x"), (1, "y"), (2, "x"), (3, "y")], 1),
            // Equal times: the event id decides ("h/0/0" before "h/0/1").
            (once.clone(), &[(7, "y"), (7, "x")], 0),
            (once.clone(), &[(7, "x"), (7, "y")], 1),
            (every.clone(), &[(0, "x"), (1, "y"), (2, "x"), (3, "y")], 2),
            // After a match the next starts after its last event: the second x is used up.
            (every.clone(), &[(0, "x"), (1, "x"), (2, "y"), (3, "y")], 1),
            (every, &[(0, "x"), (20_000, "x"), (25_000, "y")], 1),
            (x2.clone(), &[(0, "x"), (1, "y"), (2, "x"), (3, "y")], 1),
            (x2.clone(), &[(0, "x"), (1, "y"), (2, "y"), (3, "x")], 0),
            (x2, &[(0, "x"), (9_000, "x"), (11_000, "y")], 0),
        ]);
    }

    #[test]
    fn within_without_order_needs_every_step_in_its_span() {
        let once = json!({"within": "10s"});
        let every = json!({"within": "10s", "repeat": "every"});
        check_timed(&[
            (once.clone(), &[(0, "y"), (5_000, "x")], 1),
            (once.clone(), &[(0, "y"), (10_000, "x")], 1),
            (once.clone(), &[(0, "y"), (10_001, "x")], 0),
            (once.clone(), &[(0, "y"), (10_001, "x"), (15_000, "y")], 1),
            (once, &[(0, "x"), (1, "y"), (2, "y"), (3, "x")], 1),
            (every.clone(), &[(0, "x"), (1, "y"), (2, "y"), (3, "x")], 2),
            (every, &[(0, "x"), (1, "x"), (2, "y"), (3, "y")], 1),
        ]);
    }

    #[test]
    fn windows_count_afresh_each() {
        let two_x = |window: Value, repeat: &str| {
            json!({"window": window, "repeat": repeat,
                "event_list": [{"when": "event == 'x'", "count": 2}]})
        };
        let tumbling = two_x(json!({"tumbling": "1m"}), "once");
        let sliding = two_x(json!({"sliding": "10s", "every": "5s"}), "once");
        let session = two_x(json!({"session": "5s"}), "once");
        let events = two_x(json!({"events": 3}), "once");
        check_timed(&[
            (tumbling.clone(), &[(0, "x"), (59_999, "x")], 1),
            (tumbling.clone(), &[(59_999, "x"), (60_000, "x")], 0),
            (tumbling.clone(), &[(-1, "x"), (0, "x")], 0),
            (
                tumbling.clone(),
                &[(0, "x"), (1, "x"), (2, "x"), (60_000, "x"), (60_001, "x")],
                2,
            ),
            (two_x(json!({"tumbling": "1m"}), "every"), &[(0, "x"); 5], 2),
            // Windows [-5 s, 5 s), [0, 10 s), [5 s, 15 s), ...
            (sliding.clone(), &[(4_000, "x"), (6_000, "x")], 1),
            (
                sliding.clone(),
                &[(4_000, "x"), (6_000, "x"), (8_000, "x")],
                2,
            ),
            (sliding.clone(), &[(1_000, "x"), (4_999, "x")], 2),
            (sliding, &[(0, "x"), (10_000, "x")], 0),
            (session.clone(), &[(0, "x"), (5_000, "x")], 1),
            (session.clone(), &[(0, "x"), (5_001, "x")], 0),
            // Only rule events make a session.
            (session.clone(), &[(0, "x"), (3_000, "z"), (6_000, "x")], 0),
            (
                session,
                &[(0, "x"), (4_000, "x"), (8_000, "x"), (12_000, "x")],
                1,
            ),
            (events.clone(), &[(0, "x"); 6], 2),
            (
                events.clone(),
                &[(0, "x"), (1, "z"), (2, "x"), (3, "x"), (4, "x")],
                1,
            ),
            (
                events,
                &[(0, "x"), (1, "x"), (2, "x"), (3, "x"), (4, "x")],
                2,
            ),
        ]);
    }

    #[test]
    fn without_a_window_timed_rules_count_in_event_time_order_within_the_schedule() {
        // Several steps with `every`: defined once the order is the event time.
        let every = json!({"max_out_of_order": "5s", "repeat": "every"});
        let scheduled = json!({"schedule": {"starts_at": "1970-01-01T00:00:10Z",
            "ends_at": "1970-01-01T09:00:20+09:00"}});
        check_timed(&[
            (every.clone(), &[(0, "x"), (1, "x"), (2, "y"), (3, "y")], 1),
            (every.clone(), &[(3, "y"), (0, "x"), (2, "x"), (1, "y")], 2),
            (scheduled.clone(), &[(9_999, "x"), (10_000, "y")], 0),
            (scheduled.clone(), &[(10_000, "x"), (19_999, "y")], 1),
            (scheduled, &[(10_000, "x"), (20_000, "y")], 0),
        ]);
    }

    #[test]
    fn event_time_is_rfc_3339_or_millis_or_else_the_record_timestamp() {
        let rule = timed_rule(json!({"ordered": true, "within": "1s", "event_time": "at"}));
        let timing = rule.timing.as_ref().unwrap();
        let time = |at: Value| {
            RuleSpec::event_time_ms(
                timing,
                &CleanEvent {
                    topic: "clean.game",
                    id: "",
                    timestamp_ms: 42,
                    fields: &fields(json!({ "at": at })),
                },
            )
        };
        assert_eq!(time(json!(1_000)), 1_000);
        assert_eq!(time(json!("1970-01-01T00:00:01.500Z")), 1_500);
        assert_eq!(time(json!("1970-01-01T01:00:01+01:00")), 1_000);
        assert_eq!(time(json!("1970-01-01T00:00:01-00:30")), 1_801_000);
        assert_eq!(time(json!("yesterday")), 42);
        assert_eq!(time(json!(true)), 42);
        assert_eq!(time(Value::Null), 42);
    }

    #[test]
    fn the_order_events_are_read_in_does_not_change_any_rule() {
        use rand::seq::SliceRandom as _;
        use rand::{Rng as _, SeedableRng as _};
        let extra = [
            json!({"name": "within", "source": "clean.game", "key": "player_id",
                "within": "30s", "repeat": "every", "event_list": [
                    {"when": "event == 'purchase'"}, {"when": "event == 'pvp_win'", "count": 2}]}),
            json!({"name": "sliding", "source": "clean.game", "key": "player_id",
                "window": {"sliding": "40s", "every": "15s"}, "repeat": "every",
                "event_list": [{"when": "event == 'pvp_win'", "count": 2}]}),
            json!({"name": "session", "source": "clean.game", "key": "player_id",
                "window": {"session": "10s"}, "event_list": [
                    {"when": "event == 'login'"}, {"when": "event == 'purchase'"}]}),
            json!({"name": "events", "source": "clean.game", "key": "player_id",
                "window": {"events": 4}, "repeat": "every", "event_list": [
                    {"when": "event == 'login'"}, {"when": "event == 'pvp_win'"}]}),
        ];
        let mut rules = seed();
        rules.extend(
            extra
                .iter()
                .map(|doc| RuleSpec::from_document(doc, None, 0).unwrap()),
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut levels: HashMap<&str, i64> = HashMap::new();
        let events: Vec<(String, i64, Value)> = (0..3000)
            .map(|i| {
                let player = ["a", "b", "c", "d"][rng.random_range(0..4)];
                let at = T0 + rng.random_range(0..600_000);
                let event = ["login", "level_up", "purchase", "pvp_win"][rng.random_range(0..4)];
                let mut value = json!({"event": event, "player_id": player, "event_time": at});
                if event == "level_up" {
                    let level = levels.entry(player).or_insert(1);
                    *level = *level % 5 + 1;
                    value["level"] = json!(*level);
                }
                (format!("h/{}/{i}", i % 3), at, value)
            })
            .collect();
        let expect_in = |events: &[(String, i64, Value)]| {
            let mut expected = Expected::new(rules.clone());
            for (id, at, value) in events {
                expected.add(&CleanEvent {
                    topic: "clean.game",
                    id,
                    timestamp_ms: *at,
                    fields: &fields(value.clone()),
                });
            }
            expected.matches()
        };
        let reference = expect_in(&events);
        for name in [
            "level-3-then-pvp",
            "purchases-2-per-minute",
            "within",
            "sliding",
            "session",
            "events",
        ] {
            assert!(
                reference.keys().filter(|(r, _)| r == name).count() >= 2,
                "{name} matches too rarely to tell: {reference:?}"
            );
        }
        let mut shuffled = events.clone();
        for _ in 0..5 {
            shuffled.shuffle(&mut rng);
            assert_eq!(expect_in(&shuffled), reference);
        }
    }

    #[test]
    fn late_events_are_left_out_and_must_have_been_written_late() {
        const AT: i64 = 1_800_000_000_000;
        let rules = seed();
        let mut expected = Expected::new(rules);
        // (id, event time, record timestamp, event): a's pvp win came 10 minutes late.
        let events = [
            ("h/0/0", AT, AT, level("a", 3)),
            ("h/0/1", AT + 1_000, AT + 601_000, game("a", "pvp_win")),
            ("h/0/2", AT, AT, level("b", 3)),
            ("h/0/3", AT + 2_000, AT + 2_000, game("b", "pvp_win")),
        ];
        for (id, time, timestamp, mut value) in events {
            value["event_time"] = json!(time);
            expected.add(&CleanEvent {
                topic: "clean.game",
                id,
                timestamp_ms: timestamp,
                fields: &fields(value),
            });
        }
        let late = |rule: &str, key: &str, id: &str| LateEvent {
            rule: rule.into(),
            version: Some(1),
            key: key.into(),
            event: LateEventId { id: id.into() },
        };
        let sequence = |e: &Expected| {
            e.matches()
                .into_iter()
                .filter(|((r, _), _)| r == "level-3-then-pvp")
                .map(|((_, k), n)| (k, n))
                .collect::<Vec<_>>()
        };
        assert_eq!(sequence(&expected), [("a".into(), 1), ("b".into(), 1)]);
        let mut judged = expected.clone();
        judged.exclude_late(&[late("level-3-then-pvp", "a", "h/0/1")]);
        assert_eq!(sequence(&judged), [("b".to_owned(), 1)]);
        let outcome = compare(
            &judged,
            &[
                found("level-3-then-pvp", "b", "m1"),
                found("level-3-gems", "a", "m2"),
                found("level-3-gems", "b", "m3"),
            ],
        );
        assert!(outcome.is_exact(), "{outcome}");
        assert_eq!((outcome.late(), outcome.rules[4].late), (1, 1));
        assert!(outcome
            .to_string()
            .contains("late events 1, judged late wrongly 0"));

        let mut wrong = expected;
        wrong.exclude_late(&[
            late("level-3-then-pvp", "a", "h/0/1"),
            late("level-3-then-pvp", "a", "h/0/1"),
            late("level-3-then-pvp", "b", "h/0/3"),
            late("level-3-then-pvp", "b", "h/0/9"),
            late("login-hearts", "a", "h/0/1"),
            late("someone-elses", "a", "h/0/1"),
        ]);
        assert_eq!(sequence(&wrong), []);
        let outcome = compare(&wrong, &[]);
        assert!(!outcome.is_exact());
        assert_eq!((outcome.wrongly_late_total, outcome.not_judged), (4, 1));
        let text = outcome.to_string();
        for why in [
            "a event h/0/1 (late twice)",
            "b event h/0/3 (written on time)",
            "b event h/0/9 (not an event",
            "login-hearts key a event h/0/1 (not an event",
        ] {
            assert!(text.contains(why), "{why} not in {text}");
        }
    }

    #[test]
    fn a_late_record_is_read_from_its_json() {
        let value = json!({"rule": "r", "version": 2, "key": 7, "late_by_ms": 600_000,
            "event": {"id": "h/00ff/12", "topic": "clean.game", "partition": 1, "offset": 3,
                "event_time": "2026-01-01T00:00:00.000Z"}});
        let late = LateEvent::parse(value.to_string().as_bytes()).unwrap();
        assert_eq!(
            (
                late.rule.as_str(),
                late.version,
                late.key.as_str(),
                late.event.id.as_str()
            ),
            ("r", Some(2), "7", "h/00ff/12")
        );
        assert!(LateEvent::parse(b"{\"rule\":\"r\",\"key\":\"k\"}").is_err());
    }
}
