//! The active rule versions, indexed for the first stage: for each source topic, the steps whose
//! conditions include an `equals` are filed under that field and value, so an event is tested only
//! against the steps its own field values can satisfy, plus the steps that cannot be indexed
//! (CEL `when`, only ranges). With 1,000 rules on `event == ...` an event costs a few lookups,
//! not 1,000 evaluations.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::condition::index_keys;
use crate::field::FieldPath;
use crate::rule::{Predicate, Rule};

/// (rule index, step index).
type StepRef = (usize, usize);

#[derive(Debug, Default)]
struct TopicIndex {
    /// Per field: index key of the value -> steps with an `equals` on it.
    indexed: Vec<(FieldPath, HashMap<String, Vec<StepRef>>)>,
    /// Steps tested on every event of the topic.
    scan: Vec<StepRef>,
}

/// An immutable set of rule versions; a change of rules builds a new one.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    rules: Vec<Arc<Rule>>,
    topics: HashMap<String, TopicIndex>,
    /// Per source topic, the event-time fields its timed rules read: the clocks the first
    /// stage keeps for each of its partitions.
    clocks: HashMap<String, Vec<FieldPath>>,
}

impl RuleSet {
    pub(crate) fn new(mut rules: Vec<Arc<Rule>>) -> RuleSet {
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let mut topics: HashMap<String, TopicIndex> = HashMap::new();
        for (r, rule) in rules.iter().enumerate() {
            for (s, step) in rule.steps.iter().enumerate() {
                let step_topics: Vec<&String> = match &step.topic {
                    Some(topic) => vec![topic],
                    None => rule.sources.iter().collect(),
                };
                let filed_under = match &step.predicate {
                    Predicate::Conditions(conditions) => conditions
                        .iter()
                        .find_map(|c| c.indexable().map(|key| (c.field.clone(), key))),
                    Predicate::When(_) => None,
                };
                for topic in step_topics {
                    let index = topics.entry(topic.clone()).or_default();
                    match &filed_under {
                        Some((field, key)) => {
                            let at = match index.indexed.iter().position(|(f, _)| f == field) {
                                Some(at) => at,
                                None => {
                                    index.indexed.push((field.clone(), HashMap::new()));
                                    index.indexed.len() - 1
                                }
                            };
                            index.indexed[at]
                                .1
                                .entry(key.clone())
                                .or_default()
                                .push((r, s));
                        }
                        None => index.scan.push((r, s)),
                    }
                }
            }
        }
        let mut clocks: HashMap<String, Vec<FieldPath>> = HashMap::new();
        for rule in rules.iter().filter(|r| r.timing.is_some()) {
            for topic in &rule.sources {
                let paths = clocks.entry(topic.clone()).or_default();
                if !paths.contains(&rule.event_time) {
                    paths.push(rule.event_time.clone());
                }
            }
        }
        RuleSet {
            rules,
            topics,
            clocks,
        }
    }

    /// The event-time fields timed rules read from `topic`.
    pub(crate) fn clock_paths(&self, topic: &str) -> &[FieldPath] {
        self.clocks.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Every key path some timed rule counts by: the repartition topics that carry watermarks.
    pub(crate) fn timed_key_paths(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .filter(|r| r.timing.is_some())
            .map(|r| r.key.as_str().to_owned())
            .collect()
    }

    pub(crate) fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The version of `name` that is active, if it is `version`.
    pub(crate) fn get(&self, name: &str, version: u32) -> Option<&Arc<Rule>> {
        self.rules
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.rules[i])
            .filter(|r| r.version == version)
    }

    /// Every topic some rule reads.
    pub(crate) fn sources(&self) -> BTreeSet<String> {
        self.topics.keys().cloned().collect()
    }

    /// Every key path some rule counts by.
    pub(crate) fn key_paths(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .map(|r| r.key.as_str().to_owned())
            .collect()
    }

    /// The steps an event satisfies, as (rule index, step mask) per rule, in `out` (cleared
    /// first). Rule versions created after the record's timestamp do not see it.
    pub(crate) fn evaluate(
        &self,
        topic: &str,
        event: &Value,
        record_ms: i64,
        out: &mut Vec<(usize, u32)>,
    ) {
        out.clear();
        let Some(index) = self.topics.get(topic) else {
            return;
        };
        let mut test = |(r, s): StepRef| {
            let rule = &self.rules[r];
            if record_ms < rule.created_at_ms || !rule.steps[s].holds(topic, event) {
                return;
            }
            match out.iter_mut().find(|(seen, _)| *seen == r) {
                Some((_, mask)) => *mask |= 1 << s,
                None => out.push((r, 1 << s)),
            }
        };
        for (field, by_value) in &index.indexed {
            let Some(value) = field.get(event) else {
                continue;
            };
            for key in index_keys(value) {
                for step in by_value.get(&key).into_iter().flatten() {
                    test(*step);
                }
            }
        }
        for step in &index.scan {
            test(*step);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(name: &str, created_at_ms: i64, yaml: &str) -> Arc<Rule> {
        let doc = crate::rule::parse_text(yaml, false).unwrap();
        Arc::new(Rule::compile(name, 1, created_at_ms, &doc).unwrap())
    }

    fn set() -> RuleSet {
        RuleSet::new(vec![
            rule("pvp", 0, "source: clean.game\nkey: player_id\nevent_list:\n- conditions: [{field: event, value: pvp_win}]\n  count: 5\n"),
            rule("level-3", 0, "source: clean.game\nkey: player_id\nevent_list:\n- when: 'event == \"level_up\" && level == 3'\n"),
            rule("mixed", 0, "source: [clean.game, clean.shop]\nkey: player_id\nevent_list:\n- conditions: [{field: event, value: purchase}, {field: quantity, value: 2, operator: gte}]\n- conditions: [{field: event, value: pvp_win}]\n"),
            rule("late", 10_000, "source: clean.game\nkey: player_id\nevent_list:\n- conditions: [{field: event, value: login}]\n"),
            rule("code", 0, "source: clean.game\nkey: member.playerId\nevent_list:\n- conditions: [{field: gameCode, value: 1302, type: integer}]\n"),
        ])
    }

    fn hits<'a>(set: &'a RuleSet, topic: &str, event: Value, at: i64) -> Vec<(&'a str, u32)> {
        let mut out = Vec::new();
        set.evaluate(topic, &event, at, &mut out);
        let mut named: Vec<(&str, u32)> = out
            .iter()
            .map(|(r, m)| (set.rules()[*r].name.as_str(), *m))
            .collect();
        named.sort();
        named
    }

    #[test]
    fn events_hit_the_steps_they_satisfy() {
        let set = set();
        type Case<'a> = (&'a str, Value, i64, Vec<(&'a str, u32)>);
        let table: [Case; 8] = [
            (
                "clean.game",
                json!({"event": "pvp_win"}),
                0,
                vec![("mixed", 0b10), ("pvp", 1)],
            ),
            (
                "clean.game",
                json!({"event": "level_up", "level": 3}),
                0,
                vec![("level-3", 1)],
            ),
            (
                "clean.game",
                json!({"event": "level_up", "level": 4}),
                0,
                vec![],
            ),
            (
                "clean.shop",
                json!({"event": "purchase", "quantity": 2}),
                0,
                vec![("mixed", 1)],
            ),
            (
                "clean.shop",
                json!({"event": "purchase", "quantity": 1}),
                0,
                vec![],
            ),
            ("clean.game", json!({"event": "login"}), 9_999, vec![]),
            (
                "clean.game",
                json!({"event": "login"}),
                10_000,
                vec![("late", 1)],
            ),
            (
                "clean.game",
                json!({"gameCode": "1302"}),
                0,
                vec![("code", 1)],
            ),
        ];
        for (topic, event, at, want) in table {
            assert_eq!(
                hits(&set, topic, event.clone(), at),
                want,
                "{topic} {event}"
            );
        }
        assert!(hits(&set, "clean.other", json!({"event": "pvp_win"}), 0).is_empty());
    }

    #[test]
    fn the_index_files_equals_and_scans_the_rest() {
        let set = set();
        let game = &set.topics["clean.game"];
        assert_eq!(game.scan.len(), 1, "only the CEL step is scanned");
        assert_eq!(
            set.sources().into_iter().collect::<Vec<_>>(),
            ["clean.game", "clean.shop"]
        );
        assert_eq!(
            set.key_paths().into_iter().collect::<Vec<_>>(),
            ["member.playerId", "player_id"]
        );
        assert!(set.get("pvp", 1).is_some());
        assert!(set.get("pvp", 2).is_none());
        assert!(set.get("nope", 1).is_none());
    }
}
