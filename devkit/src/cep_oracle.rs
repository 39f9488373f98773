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
//!   and are refused, as are the parts of a document this oracle does not model.
//!
//! `when` is read as comparisons of a field with a literal (`==`, `!=`, `<`, `<=`, `>`, `>=`)
//! joined by `&&` and `||` (`&&` binding tighter), without parentheses.
//!
//! Found matches are compared by rule and key; a match id seen twice is a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::harness::TopicReader;
use crate::reconcile::CleanDecoder;

/// How long one topic may take to be read to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(180);
/// Keys listed per rule whose count is off.
const SHOWN_KEYS: usize = 5;

/// One clean record as the rules see it: where it is, its timestamp and its fields.
#[derive(Debug, Clone, Copy)]
pub struct CleanEvent<'a> {
    pub topic: &'a str,
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
            if !["name", "source", "key", "event_list", "repeat", "output"].contains(&key.as_str())
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
        if steps.len() > 1 && repeat == Repeat::Every {
            return Err(named(anyhow::anyhow!(
                "several steps with `repeat: every` depend on the order of events; not modelled"
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

/// The expected matches, folded event by event (memory: one counter per rule, key and step).
#[derive(Debug, Clone)]
pub struct Expected {
    rules: Vec<RuleSpec>,
    /// (rule index, key) -> events counted per step.
    counts: HashMap<(usize, String), Vec<u64>>,
    /// Events seen (any topic, any time).
    pub events: u64,
}

impl Expected {
    pub fn new(rules: Vec<RuleSpec>) -> Expected {
        Expected {
            rules,
            counts: HashMap::new(),
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

    /// Expected matches per (rule, key), keys with none left out.
    pub fn matches(&self) -> BTreeMap<(String, String), u64> {
        self.counts
            .iter()
            .filter_map(|((index, key), counts)| {
                let rule = &self.rules[*index];
                let n = rule.matches(counts);
                (n > 0).then(|| ((rule.name.clone(), key.clone()), n))
            })
            .collect()
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
}

impl CepReconciliation {
    pub fn is_exact(&self) -> bool {
        self.repeated_ids.is_empty() && self.rules.iter().all(|r| r.missing + r.extra == 0)
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
        .map(|r| RuleCount {
            rule: r.name.clone(),
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
        not_judged,
    }
}

impl fmt::Display for CepReconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing: u64 = self.rules.iter().map(|r| r.missing).sum();
        let extra: u64 = self.rules.iter().map(|r| r.extra).sum();
        write!(
            f,
            "matches expected {}, found {}: missing {missing}, extra {extra}, repeated match ids {}",
            self.expected(),
            self.found(),
            self.repeated_ids.len()
        )?;
        if self.not_judged > 0 {
            write!(
                f,
                " ({} matches of other rules or versions not judged)",
                self.not_judged
            )?;
        }
        for r in &self.rules {
            write!(
                f,
                "\n  {:<20} expected {:>7}  found {:>7}  missing {:>5}  extra {:>5}",
                r.rule, r.expected, r.found, r.missing, r.extra
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
                expected.add(&CleanEvent {
                    topic,
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
                "shopper-fighter"
            ]
        );
        let repeats: Vec<Repeat> = rules.iter().map(|r| r.repeat).collect();
        assert_eq!(
            repeats,
            [Repeat::Every, Repeat::Once, Repeat::Every, Repeat::Once]
        );
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
            (&["purchase", "purchase", "pvp_win", "pvp_win"], &[]),
            (
                &["pvp_win", "purchase", "pvp_win", "purchase", "pvp_win"],
                &[("shopper-fighter", 1)],
            ),
            (
                &[&["purchase"; 6][..], &["pvp_win"; 15][..]].concat(),
                &[("pvp-5-wins", 3), ("shopper-fighter", 1)],
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
        assert!(refused(base(json!({"window": "5m"}))).contains("`window` is not modelled"));
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
                "matches expected 4, found 4: missing 0, extra 0, repeated match ids 0 (2 matches"
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
                ("shopper-fighter", 0, 0, 0, 0)
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
}
