//! The rule document (YAML or JSON; the contract in the README) and its compiled form.
//!
//! A document is checked in two passes: serde reads it into [`RuleDocument`] with unknown keys
//! refused and the failing key's path named (`event_list[0].conditions[1].operator: unknown
//! variant ...`), then [`Rule::compile`] checks what serde cannot (field paths, CEL, counts, one key
//! per rule) and names the key the same way. The event-time keys are read by `timing`. Aggregate
//! rules (`group_by`, `aggregates`, `alert`) are refused with a message saying so rather than
//! accepted and ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use crate::condition::{Condition, ConditionDoc};
use crate::expr::Expr;
use crate::field::FieldPath;
use crate::timing::{self, From, Timing, TimingDoc};

/// Most steps a rule may have (a step set is a bit mask in the re-keyed records).
pub(crate) const MAX_STEPS: usize = 32;
/// Most occurrences one step may ask for.
const MAX_COUNT: u64 = 1_000_000_000;
/// The event-time field read when the document names none.
const DEFAULT_EVENT_TIME: &str = "event_time";

/// `source`: one topic or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// How often a key may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Repeat {
    /// Once per key: a mission.
    #[default]
    Once,
    /// Each time the steps are satisfied again; the counts start over after each match.
    Every,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputDoc {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    value: Option<Value>,
}

/// One step as written: conditions (the seed's shape) or a CEL `when`, and a count.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    /// The seed's per-step source topic.
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    conditions: Vec<ConditionDoc>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    /// The seed's per-step key.
    #[serde(default)]
    keyed: Option<String>,
}

/// A rule document as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDocument {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    source: Option<OneOrMany>,
    #[serde(default, alias = "keyed")]
    key: Option<String>,
    #[serde(default)]
    event_time: Option<String>,
    #[serde(default)]
    max_out_of_order: Option<Value>,
    #[serde(default)]
    allowed_lateness: Option<Value>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    schedule: Option<Value>,
    #[serde(default)]
    event_list: Vec<StepDoc>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    ordered: Option<bool>,
    #[serde(default)]
    within: Option<Value>,
    #[serde(default)]
    window: Option<Value>,
    #[serde(default)]
    group_by: Option<Value>,
    #[serde(default)]
    aggregates: Option<Value>,
    #[serde(default)]
    alert: Option<Value>,
    #[serde(default)]
    repeat: Repeat,
    #[serde(default)]
    output: OutputDoc,
}

/// Why a document is not a rule: the key at fault (`event_list[0].count`, or `document` for
/// the whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

pub(crate) fn error(key: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        message: message.into(),
    }
}

/// What a step tests.
#[derive(Debug)]
pub(crate) enum Predicate {
    Conditions(Vec<Condition>),
    When(Expr),
}

/// A compiled step.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) predicate: Predicate,
    pub(crate) count: u32,
    /// Only events of this topic count for the step (the seed's per-step `topic`).
    pub(crate) topic: Option<String>,
}

impl Step {
    pub(crate) fn holds(&self, topic: &str, event: &Value) -> bool {
        if self.topic.as_deref().is_some_and(|t| t != topic) {
            return false;
        }
        match &self.predicate {
            Predicate::Conditions(conditions) => conditions.iter().all(|c| c.holds(event)),
            Predicate::When(expr) => expr.holds(event),
        }
    }
}

/// A compiled rule version.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) version: u32,
    /// Events whose record is older than this are not counted (`from: latest`).
    pub(crate) created_at_ms: i64,
    pub(crate) sources: Vec<String>,
    pub(crate) key: FieldPath,
    pub(crate) event_time: FieldPath,
    pub(crate) steps: Vec<Step>,
    pub(crate) repeat: Repeat,
    pub(crate) output_topic: String,
    pub(crate) output_value: Value,
    /// Event-time settings; `None` for a rule that counts events as they arrive.
    pub(crate) timing: Option<Timing>,
    /// Where the version starts reading its sources.
    pub(crate) from: From,
    /// Per source partition (`<topic>/<partition>`), the history a replay of this version
    /// reads, `[start, end)`, as stored with it; empty for `from: latest`.
    pub(crate) replay: BTreeMap<String, [i64; 2]>,
    /// The partitions of `replay` with some history to read.
    pub(crate) replay_sources: Vec<String>,
    /// Per source topic and partition, the offset from which the live lane counts this version
    /// (the end of its replayed history).
    live_from: HashMap<String, HashMap<i32, i64>>,
}

/// Reads a document's text: JSON when it looks like JSON (or says so), YAML otherwise (JSON is
/// YAML too, but serde_json's errors are clearer for it).
pub(crate) fn parse_text(text: &str, json: bool) -> Result<Value, RuleError> {
    let value: Value = if json || text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| error("document", format!("not JSON: {e}")))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| error("document", format!("not YAML: {e}")))?
    };
    if !value.is_object() {
        return Err(error("document", "a rule document is a mapping of keys"));
    }
    Ok(value)
}

/// Checks a rule name: `[a-z0-9._-]`, 1 to 100 characters.
pub(crate) fn check_name(name: &str) -> Result<(), RuleError> {
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(error(
            "name",
            format!("{name:?} is not a rule name: 1 to 100 of a-z, 0-9, '.', '_', '-'"),
        ));
    }
    Ok(())
}

impl Rule {
    /// Compiles a document as version `version` of rule `name`, created at `created_at_ms`.
    pub(crate) fn compile(
        name: &str,
        version: u32,
        created_at_ms: i64,
        document: &Value,
    ) -> Result<Rule, RuleError> {
        check_name(name)?;
        let doc: RuleDocument = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            // The document itself, or a key with an empty name (unknown at the top level).
            let key = if path == "." || path.is_empty() {
                "document".to_owned()
            } else {
                path
            };
            error(key, e.into_inner().to_string())
        })?;
        if let Some(written) = &doc.name {
            if written != name {
                return Err(error(
                    "name",
                    format!("the document says {written:?} but is stored as {name:?}"),
                ));
            }
        }
        refuse_aggregate_keys(&doc)?;
        let mut step_docs = doc.event_list.clone();
        match (&doc.when, step_docs.is_empty()) {
            (Some(when), true) => step_docs.push(StepDoc {
                topic: None,
                conditions: Vec::new(),
                when: Some(when.clone()),
                count: None,
                keyed: None,
            }),
            (Some(_), false) => {
                return Err(error(
                    "when",
                    "give `when` inside each step of event_list, or alone without event_list",
                ))
            }
            (None, true) => {
                return Err(error(
                    "event_list",
                    "a rule needs at least one step (event_list) or a `when`",
                ))
            }
            (None, false) => {}
        }
        if step_docs.len() > MAX_STEPS {
            return Err(error(
                "event_list",
                format!("{} steps; at most {MAX_STEPS}", step_docs.len()),
            ));
        }
        let mut key_text = doc.key.clone();
        let mut sources: Vec<String> = match &doc.source {
            None => Vec::new(),
            Some(OneOrMany::One(topic)) => vec![topic.clone()],
            Some(OneOrMany::Many(topics)) => topics.clone(),
        };
        let mut steps = Vec::with_capacity(step_docs.len());
        for (i, step) in step_docs.iter().enumerate() {
            // A lone top-level `when` is the only step: its errors name `when` as written.
            let lone = doc.event_list.is_empty();
            let at = |key: &str| {
                if lone {
                    key.to_owned()
                } else {
                    format!("event_list[{i}].{key}")
                }
            };
            if let Some(keyed) = &step.keyed {
                match &key_text {
                    Some(key) if key != keyed => {
                        return Err(error(
                            at("keyed"),
                            format!(
                                "{keyed:?} differs from the rule's key {key:?}; a rule has one key"
                            ),
                        ))
                    }
                    _ => key_text = Some(keyed.clone()),
                }
            }
            if let Some(topic) = &step.topic {
                logpipe_core::record::check_topic_name(topic).map_err(|e| error(at("topic"), e))?;
                if !sources.contains(topic) {
                    sources.push(topic.clone());
                }
            }
            let count = step.count.unwrap_or(1);
            if count == 0 || count > MAX_COUNT {
                return Err(error(
                    at("count"),
                    format!("{count}: from 1 to {MAX_COUNT}"),
                ));
            }
            let predicate = match (&step.when, step.conditions.is_empty()) {
                (Some(_), false) => {
                    return Err(error(at("when"), "give conditions or when, not both"))
                }
                (None, true) => {
                    return Err(error(at("conditions"), "a step needs conditions or a when"))
                }
                (Some(when), true) => {
                    Predicate::When(Expr::compile(when).map_err(|e| error(at("when"), e))?)
                }
                (None, false) => Predicate::Conditions(
                    step.conditions
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            Condition::compile(c)
                                .map_err(|e| error(format!("event_list[{i}].conditions[{j}]"), e))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            steps.push(Step {
                predicate,
                count: count as u32,
                topic: step.topic.clone(),
            });
        }
        if sources.is_empty() {
            return Err(error("source", "name the topic(s) the rule reads (source)"));
        }
        for topic in &sources {
            logpipe_core::record::check_topic_name(topic).map_err(|e| error("source", e))?;
        }
        let key_text = key_text.ok_or_else(|| {
            error(
                "key",
                "a rule counts per key: name the field (key, or the seed's keyed)",
            )
        })?;
        let key = FieldPath::parse(&key_text).map_err(|e| error("key", e))?;
        let event_time = FieldPath::parse(doc.event_time.as_deref().unwrap_or(DEFAULT_EVENT_TIME))
            .map_err(|e| error("event_time", e))?;
        let output_topic = doc
            .output
            .topic
            .clone()
            .unwrap_or_else(|| logpipe_core::record::CEP_MATCHES_TOPIC.to_owned());
        logpipe_core::record::check_topic_name(&output_topic)
            .map_err(|e| error("output.topic", e))?;
        if output_topic.starts_with(logpipe_core::record::INTERNAL_PREFIX) {
            return Err(error(
                "output.topic",
                "internal topics (_lp.) are not outputs",
            ));
        }
        let timing = Timing::parse(
            &TimingDoc {
                ordered: doc.ordered,
                within: doc.within.as_ref(),
                window: doc.window.as_ref(),
                schedule: doc.schedule.as_ref(),
                max_out_of_order: doc.max_out_of_order.as_ref(),
                allowed_lateness: doc.allowed_lateness.as_ref(),
            },
            steps.len(),
        )?;
        let from = timing::parse_from(doc.from.as_deref())?;
        if from != From::Latest && timing.is_none() {
            return Err(error(
                "from",
                "a replay needs event time: give the rule a `window`, `within`, `schedule` or `max_out_of_order` so its old events are ordered by when they happened",
            ));
        }
        Ok(Rule {
            name: name.to_owned(),
            version,
            created_at_ms,
            sources,
            key,
            event_time,
            steps,
            repeat: doc.repeat,
            output_topic,
            output_value: doc
                .output
                .value
                .clone()
                .unwrap_or(Value::Object(Default::default())),
            timing,
            from,
            replay: BTreeMap::new(),
            replay_sources: Vec::new(),
            live_from: HashMap::new(),
        })
    }

    /// Sets the history a replay of this version reads (from the stored version).
    pub(crate) fn set_replay(&mut self, replay: BTreeMap<String, [i64; 2]>) {
        self.replay_sources = replay
            .iter()
            .filter(|(_, [start, end])| start < end)
            .map(|(source, _)| source.clone())
            .collect();
        self.live_from.clear();
        for (source, [_, end]) in &replay {
            if let Some((topic, partition)) = source.rsplit_once('/') {
                if let Ok(partition) = partition.parse() {
                    self.live_from
                        .entry(topic.to_owned())
                        .or_default()
                        .insert(partition, *end);
                }
            }
        }
        self.replay = replay;
    }

    /// Whether the live lane counts a record for this version: from the end of its replayed
    /// history on, or (no replay, or a partition added since) from the version's creation on.
    pub(crate) fn counts_live(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        record_ms: i64,
    ) -> bool {
        match self.live_from.get(topic).and_then(|p| p.get(&partition)) {
            Some(end) => offset >= *end,
            None => record_ms >= self.created_at_ms,
        }
    }

    /// The event fields the rule reads, with the document key that names each: a PUT checks
    /// them against the source's registered schemas.
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![("key".to_owned(), self.key.as_str().to_owned())];
        for (i, step) in self.steps.iter().enumerate() {
            match &step.predicate {
                Predicate::Conditions(conditions) => {
                    for (j, c) in conditions.iter().enumerate() {
                        fields.push((
                            format!("event_list[{i}].conditions[{j}].field"),
                            c.field.as_str().to_owned(),
                        ));
                    }
                }
                Predicate::When(expr) => {
                    for v in expr.variables() {
                        fields.push((format!("event_list[{i}].when"), v.clone()));
                    }
                }
            }
        }
        fields
    }
}

/// The keys of aggregate rules: refused, with the reason, until they work.
fn refuse_aggregate_keys(doc: &RuleDocument) -> Result<(), RuleError> {
    const LATER: &str = "is not supported by this version of logpipe-cep (aggregate rules come with a later one); remove it";
    let given: [(&str, bool); 3] = [
        ("group_by", doc.group_by.is_some()),
        ("aggregates", doc.aggregates.is_some()),
        ("alert", doc.alert.is_some()),
    ];
    match given.iter().find(|(_, given)| *given) {
        Some((key, _)) => Err(error(*key, LATER)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;
    use serde_json::json;

    use super::*;

    const SEED: &str = r#"
event_list:
- topic: sample-access
  conditions:
  - {field: event, value: kill, type: string, operator: equals}
  - {field: gameCode, value: 1302, type: integer, operator: equals}
  - {field: useSkill, value: true, type: bool, operator: equals}
  count: 3
  keyed: member.playerId
"#;

    fn compile(text: &str) -> Result<Rule, RuleError> {
        Rule::compile("r", 1, 0, &parse_text(text, false)?)
    }

    /// A rule document's keys and values, CEL fragments among them.
    const WORDS: &[&str] = &[
        "name",
        "source",
        "key",
        "keyed",
        "event_time",
        "max_out_of_order",
        "allowed_lateness",
        "from",
        "schedule",
        "starts_at",
        "ends_at",
        "event_list",
        "when",
        "ordered",
        "within",
        "window",
        "tumbling",
        "sliding",
        "every",
        "session",
        "events",
        "group_by",
        "aggregates",
        "alert",
        "repeat",
        "once",
        "output",
        "topic",
        "conditions",
        "field",
        "value",
        "type",
        "operator",
        "count",
        "equals",
        "not_equals",
        "greater_than",
        "string",
        "integer",
        "bool",
        "latest",
        "earliest",
        "2026-12-05T10:00:00Z",
        "1h",
        "5s",
        "0s",
        "-1m",
        "99999999d",
        "clean.game",
        "member.playerId",
        "event",
        "kill",
        "event == 'kill'",
        "n > 3 &&",
        "size(tags) > 1",
        "((((",
        "1 / 0",
        "a.b.c[0]",
        "has(a.b)",
        "'\\u",
        "x ? y :",
    ];

    /// An object with some of `keys`, their values from the vocabulary.
    fn object(
        keys: &'static [&'static str],
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Map<String, Value>> {
        proptest::collection::vec(
            (
                proptest::sample::select(keys).prop_map(str::to_owned),
                logpipe_devkit::fuzz::json_value(WORDS),
            ),
            0..keys.len(),
        )
        .prop_map(serde_json::Map::from_iter)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Whatever a rule document holds, it compiles or is refused with the key at fault and
        /// why, never a panic: documents from the rule vocabulary (steps, windows, CEL
        /// conditions) and any text the API could be sent.
        #[test]
        fn any_rule_document_compiles_or_is_refused_with_its_key(
            document in proptest::prop_oneof![
                logpipe_devkit::fuzz::json_value(WORDS),
                (
                    object(&["source", "key", "event_time", "max_out_of_order", "allowed_lateness", "from", "schedule", "when", "ordered", "within", "window", "repeat"]),
                    proptest::collection::vec(
                        (
                            object(&["topic", "count", "keyed", "when"]),
                            proptest::collection::vec(object(&["field", "value", "type", "operator"]), 0..3),
                        ),
                        0..4,
                    ),
                )
                    .prop_map(|(mut document, steps)| {
                        document.entry("source").or_insert("clean.game".into());
                        let steps = steps
                            .into_iter()
                            .map(|(mut step, conditions)| {
                                let conditions = conditions.into_iter().map(Value::Object).collect();
                                step.insert("conditions".into(), Value::Array(conditions));
                                Value::Object(step)
                            })
                            .collect();
                        document.insert("event_list".into(), Value::Array(steps));
                        Value::Object(document)
                    }),
            ],
            text in logpipe_devkit::fuzz::hostile_text(WORDS),
        ) {
            if let Err(e) = Rule::compile("r", 1, 0, &document) {
                proptest::prop_assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
            }
            let text = String::from_utf8_lossy(&text);
            for json in [false, true] {
                if let Err(e) = parse_text(&text, json).and_then(|doc| Rule::compile("r", 1, 0, &doc)) {
                    proptest::prop_assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn the_seeds_shape_works_verbatim() {
        let rule = compile(SEED).unwrap();
        assert_eq!(rule.sources, ["sample-access"]);
        assert_eq!(rule.key.as_str(), "member.playerId");
        assert_eq!(rule.steps.len(), 1);
        assert_eq!(rule.steps[0].count, 3);
        assert_eq!(rule.repeat, Repeat::Once);
        assert_eq!(rule.output_topic, "cep.matches");
        let kill = json!({"event": "kill", "gameCode": 1302, "useSkill": true});
        assert!(rule.steps[0].holds("sample-access", &kill));
        assert!(!rule.steps[0].holds("other", &kill));
        assert_eq!(
            rule.fields()
                .iter()
                .map(|(_, f)| f.as_str())
                .collect::<Vec<_>>(),
            ["member.playerId", "event", "gameCode", "useSkill"]
        );
    }

    #[test]
    fn the_contracts_shape_works_in_yaml_and_json() {
        let yaml = r#"
name: pvp-5-wins
source: clean.game
key: player_id
event_list:
  - conditions:
      - {field: event, value: pvp_win, type: string, operator: equals}
    count: 5
  - when: 'event == "level_up" && level == 3'
repeat: every
output:
  topic: cep.rewards
  value: {reward: gem, amount: 30}
"#;
        let rule = Rule::compile("pvp-5-wins", 2, 7, &parse_text(yaml, false).unwrap()).unwrap();
        assert_eq!((rule.version, rule.created_at_ms), (2, 7));
        assert_eq!(rule.repeat, Repeat::Every);
        assert_eq!(rule.output_topic, "cep.rewards");
        assert_eq!(rule.output_value, json!({"reward": "gem", "amount": 30}));
        assert!(rule.steps[1].holds("clean.game", &json!({"event": "level_up", "level": 3})));
        let json = serde_json::to_string(&parse_text(yaml, false).unwrap()).unwrap();
        let again = Rule::compile("pvp-5-wins", 2, 7, &parse_text(&json, true).unwrap()).unwrap();
        assert_eq!(again.steps.len(), 2);
        let shorthand = compile("source: [clean.a, clean.b]\nkey: k\nwhen: 'x == 1'\n").unwrap();
        assert_eq!(shorthand.sources, ["clean.a", "clean.b"]);
        assert_eq!(shorthand.steps.len(), 1);
    }

    #[test]
    fn bad_documents_name_the_key() {
        let base = "source: clean.game\nkey: player_id\n";
        let table = [
            ("source: clean.game\nkey: p\nevent_list:\n- conditions: [{field: e, value: 1, operator: eq}]\n", "event_list[0].conditions[0].operator"),
            (&format!("{base}event_list:\n- conditions: [{{field: e, value: x}}]\n  count: 0\n"), "event_list[0].count"),
            (&format!("{base}event_list:\n- when: 'event == '\n"), "event_list[0].when"),
            (&format!("{base}event_list:\n- conditions: [{{field: e, value: x}}]\n  keyed: other\n"), "event_list[0].keyed"),
            (&format!("{base}event_list: []\n"), "event_list"),
            (&format!("{base}evnt_list: []\n"), "evnt_list"),
            (&format!("{base}event_list:\n- count: 2\n"), "event_list[0].conditions"),
            ("key: p\nevent_list:\n- conditions: [{field: e, value: x}]\n", "source"),
            ("source: clean.game\nevent_list:\n- conditions: [{field: e, value: x}]\n", "key"),
            (&format!("{base}ordered: true\nwithin: 1h\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "ordered"),
            (&format!("{base}window: {{tumbling: 1x}}\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "window.tumbling"),
            (&format!("{base}from: earliest\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "from"),
            (&format!("{base}group_by: [server]\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "group_by"),
            (&format!("{base}output: {{topic: _lp.x}}\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "output.topic"),
            (&format!("{base}repeat: twice\nevent_list:\n- conditions: [{{field: e, value: x}}]\n"), "repeat"),
            (&format!("name: other\n{base}event_list:\n- conditions: [{{field: e, value: x}}]\n"), "name"),
            ("- a\n- b\n", "document"),
            ("key: [unclosed\n", "document"),
            (&format!("{base}when: 'event == '\n"), "when"),
        ];
        for (text, key) in table {
            let err = compile(text).unwrap_err();
            assert_eq!(err.key, key, "{text}\n=> {err}");
        }
        assert!(check_name("pvp-5-wins.v2").is_ok());
        assert_eq!(check_name("PvP").unwrap_err().key, "name");
    }
}
