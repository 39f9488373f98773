//! Field paths into an event: `player_id`, or dots for nesting (`member.playerId`), as rules name
//! them in `key`, `event_time` and conditions.

use std::fmt;

use serde_json::Value;

/// A dotted path into a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FieldPath {
    text: String,
    parts: Vec<String>,
}

impl FieldPath {
    /// Parses a path; every segment must be a non-empty run of letters, digits, `_` or `-` (Avro
    /// and JSON field names as games write them), so that a key path can name a topic.
    pub(crate) fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() {
            return Err("field path is empty".into());
        }
        let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        if let Some(bad) = parts.iter().find(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(format!(
                "field path {text:?} has segment {bad:?}; segments are letters, digits, '_' and '-', separated by '.'"
            ));
        }
        Ok(FieldPath {
            text: text.to_owned(),
            parts,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path, if the event has one (JSON null counts as absent).
    pub(crate) fn get<'a>(&self, event: &'a Value) -> Option<&'a Value> {
        let mut at = event;
        for part in &self.parts {
            at = at.as_object()?.get(part)?;
        }
        (!at.is_null()).then_some(at)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The longest key: a key travels in every re-keyed record, match and state entry, and one
/// taken from an event's field unchecked could make a record too large for the producer, which
/// would stall the partition (a player or server id is a few dozen bytes).
pub(crate) const MAX_KEY_BYTES: usize = 1024;

/// A key value as text: strings as they are, numbers and booleans as JSON writes them. Objects,
/// arrays, null and strings over [`MAX_KEY_BYTES`] are not keys.
pub(crate) fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.len() > MAX_KEY_BYTES => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_reach_nested_fields_and_null_is_absent() {
        let event = json!({"player_id": "p-1", "member": {"playerId": 7, "gone": null}});
        let cases = [
            ("player_id", Some(json!("p-1"))),
            ("member.playerId", Some(json!(7))),
            ("member.gone", None),
            ("member.nothing", None),
            ("player_id.deeper", None),
        ];
        for (path, want) in cases {
            let got = FieldPath::parse(path).unwrap().get(&event).cloned();
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a/b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_text() {
        assert_eq!(key_text(&json!("p-1")).as_deref(), Some("p-1"));
        assert_eq!(key_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(key_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(key_text(&json!({"a": 1})), None);
        assert_eq!(key_text(&json!(null)), None);
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(key_text(&json!(longest)).as_deref(), Some(longest.as_str()));
        assert_eq!(key_text(&json!(format!("{longest}k"))), None);
    }
}
