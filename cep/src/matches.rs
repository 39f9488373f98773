//! The match record: what a rule emits when a key satisfies it, as the contract spells it, with a
//! deterministic id (a hash of the rule name, version, key and the contributing events' ids) so
//! that a consumer granting rewards can dedupe by it, and a restarted worker emits the same id.

use logpipe_core::record::{cep_header, CEP_LATE_TOPIC};
use serde_json::{json, Value};

use crate::counter::Completed;
use crate::event::{rfc3339, EventRef};
use crate::rule::Rule;
use crate::state::Late;

/// A match ready to be produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Match {
    pub(crate) topic: String,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: [(&'static str, String); 3],
}

/// The match id: 32 hex digits.
pub(crate) fn match_id(rule: &str, version: u32, key: &str, chain: u64) -> String {
    let text = format!("{rule}\x1f{version}\x1f{key}\x1f{chain:016x}");
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// Builds the match of `rule` for `key`, completed by the event `last`.
pub(crate) fn build(rule: &Rule, key: &str, completed: &Completed, last: &EventRef) -> Match {
    let id = match_id(&rule.name, rule.version, key, completed.chain);
    let value = json!({
        "rule": rule.name,
        "version": rule.version,
        "key": key,
        "match_id": id,
        "window": completed.window.map_or(Value::Null, |(start, end)| json!({
            "start": rfc3339(start),
            "end": rfc3339(end),
        })),
        "first_event_time": rfc3339(completed.first_ms),
        "last_event_time": rfc3339(completed.last_ms),
        "event_count": completed.events,
        "events": [{
            "id": last.id,
            "topic": last.topic,
            "partition": last.partition,
            "offset": last.offset,
            "event_time": rfc3339(last.event_time),
        }],
        "output": rule.output_value,
    });
    Match {
        topic: rule.output_topic.clone(),
        key: key.to_owned(),
        value: serde_json::to_vec(&value).expect("a JSON value serializes"),
        headers: [
            (cep_header::RULE, rule.name.clone()),
            (cep_header::VERSION, rule.version.to_string()),
            (cep_header::MATCH_ID, id),
        ],
    }
}

/// The `cep.late` record of a timed rule's event that came after the rule's watermark passed
/// it: keyed like a match, with the rule, its version and how late it was in headers.
pub(crate) fn late(rule: &Rule, key: &str, event: &EventRef, late: Late) -> Match {
    uncounted(
        rule,
        key,
        event,
        json!({"late_by_ms": late.by_ms, "watermark": rfc3339(late.watermark)}),
        (cep_header::LATE_BY_MS, late.by_ms.to_string()),
    )
}

/// The `cep.late` record of a timed rule's event its key could not hold (the key's state with it
/// would be a changelog record of `bytes`, more than the producer takes): the event is not
/// counted, and says so, with the reason in a header instead of how late it was.
pub(crate) fn state_full(rule: &Rule, key: &str, event: &EventRef, bytes: usize) -> Match {
    uncounted(
        rule,
        key,
        event,
        json!({"refused": KEY_STATE_FULL, "state_bytes": bytes}),
        (cep_header::REFUSED, KEY_STATE_FULL.to_owned()),
    )
}

/// A `cep.late` record: the rule, its version, the key and the event, plus `why` it was not
/// counted (value fields) and the header that says so.
fn uncounted(
    rule: &Rule,
    key: &str,
    event: &EventRef,
    why: serde_json::Value,
    header: (&'static str, String),
) -> Match {
    let mut value = json!({
        "rule": rule.name,
        "version": rule.version,
        "key": key,
        "event": {
            "id": event.id,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "event_time": rfc3339(event.event_time),
        },
    });
    if let (Some(value), serde_json::Value::Object(why)) = (value.as_object_mut(), why) {
        value.extend(why);
    }
    Match {
        topic: CEP_LATE_TOPIC.to_owned(),
        key: key.to_owned(),
        value: serde_json::to_vec(&value).expect("a JSON value serializes"),
        headers: [
            (cep_header::RULE, rule.name.clone()),
            (cep_header::VERSION, rule.version.to_string()),
            header,
        ],
    }
}

/// Why an event was refused: its key's held state is full.
const KEY_STATE_FULL: &str = "key_state_full";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_spells_the_contract() {
        let doc = crate::rule::parse_text("source: clean.game\nkey: player_id\noutput: {value: {reward: gem, amount: 30}}\nevent_list:\n- {conditions: [{field: e, value: x}], count: 5}\n", false).unwrap();
        let rule = Rule::compile("pvp", 3, 0, &doc).unwrap();
        let last = EventRef {
            id: "h/00ff/120".into(),
            topic: "clean.game".into(),
            partition: 2,
            offset: 77,
            event_time: 1_700_000_000_500,
        };
        let completed = Completed {
            chain: 42,
            events: 5,
            first_ms: 1_700_000_000_000,
            last_ms: 1_700_000_000_500,
            window: None,
        };
        let m = build(&rule, "p-1", &completed, &last);
        assert_eq!(m.topic, "cep.matches");
        assert_eq!(m.key, "p-1");
        let value: Value = serde_json::from_slice(&m.value).unwrap();
        assert_eq!(value["rule"], "pvp");
        assert_eq!(value["version"], 3);
        assert_eq!(value["window"], Value::Null);
        assert_eq!(value["first_event_time"], "2023-11-14T22:13:20Z");
        assert_eq!(value["events"][0]["id"], "h/00ff/120");
        assert_eq!(value["output"], json!({"reward": "gem", "amount": 30}));
        assert_eq!(value["match_id"], m.headers[2].1);
        assert_eq!(m.headers[0], ("lp.cep.rule", "pvp".to_owned()));
        // The id depends on every part.
        let id = match_id("pvp", 3, "p-1", 42);
        assert_eq!(id.len(), 32);
        for other in [
            match_id("pvq", 3, "p-1", 42),
            match_id("pvp", 4, "p-1", 42),
            match_id("pvp", 3, "p-2", 42),
            match_id("pvp", 3, "p-1", 43),
        ] {
            assert_ne!(id, other);
        }
    }
}
