//! Compatibility levels and checks.
//!
//! Both type-specific checkers answer one question: can a reader using schema R read every datum
//! written with schema W? The levels then pick the direction and the versions to check against:
//! BACKWARD means the new schema reads data written with the old one, FORWARD the reverse, FULL
//! both; the plain levels check against the latest version only, the `_TRANSITIVE` ones against
//! every (non-deleted) version.

pub(crate) mod avro;
pub(crate) mod json;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::schema::Parsed;

/// The seven Confluent compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    /// The level a registry has when nothing is configured, as in Confluent.
    pub(crate) const DEFAULT: Level = Level::Backward;

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    pub(crate) fn is_transitive(&self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(&self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(&self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();

    /// Case-insensitive, as Confluent accepts `backward` as well as `BACKWARD`.
    fn from_str(s: &str) -> Result<Level, ()> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).map_err(|_| ())
    }
}

/// Why `new` cannot replace the schemas in `previous` (newest first) under `level`; empty when it
/// can. Only the newest is checked unless the level is transitive. Schemas of another type than
/// `new` are reported as incompatible: a subject does not change type.
pub(crate) fn check(level: Level, new: &Parsed, previous: &[&Parsed]) -> Vec<String> {
    let against = if level.is_transitive() {
        previous
    } else {
        &previous[..previous.len().min(1)]
    };
    let mut messages = Vec::new();
    for old in against {
        if level.backward() {
            messages.extend(
                can_read(old, new)
                    .into_iter()
                    .map(|m| format!("BACKWARD: {m}")),
            );
        }
        if level.forward() {
            messages.extend(
                can_read(new, old)
                    .into_iter()
                    .map(|m| format!("FORWARD: {m}")),
            );
        }
    }
    messages
}

/// Whether a reader with `reader` reads all data written with `writer`; the reasons if not.
pub(crate) fn can_read(writer: &Parsed, reader: &Parsed) -> Vec<String> {
    match (writer, reader) {
        (Parsed::Avro(w), Parsed::Avro(r)) => avro::can_read(w, r),
        (Parsed::Json(w), Parsed::Json(r)) => json::can_read(w, r),
        _ => vec!["the schema type differs from the existing schema's".to_owned()],
    }
}

/// Runs a table of (writer, reader, whether the reader reads the writer's data) rows through a
/// schema type's `can_read` and reports every wrong row at once.
#[cfg(test)]
fn assert_table<S: fmt::Display>(
    rows: &[(S, S, bool)],
    min_rows: usize,
    can_read: impl Fn(&S, &S) -> Vec<String>,
) {
    assert!(rows.len() >= min_rows, "{} rows", rows.len());
    let mut failures = Vec::new();
    for (writer, reader, expected) in rows {
        let errors = can_read(writer, reader);
        if errors.is_empty() != *expected {
            failures.push(format!(
                "writer {writer} reader {reader}: expected {expected}, got {errors:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{parse, SchemaType};

    fn avro(text: &str) -> Parsed {
        parse(SchemaType::Avro, text, &[]).unwrap().1
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(
            "full_transitive".parse::<Level>(),
            Ok(Level::FullTransitive)
        );
        assert_eq!("BACKWARD".parse::<Level>(), Ok(Level::Backward));
        assert!("sideways".parse::<Level>().is_err());
    }

    #[test]
    fn levels_choose_direction_and_depth() {
        let v1 = avro(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        // v2 adds a field without default: a reader of v2 cannot read v1 data (not backward),
        // but a reader of v1 can read v2 data (forward).
        let v2 = avro(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}"#,
        );
        // v3 keeps b but gives it a default: compatible both ways with v2, only forward with v1.
        let v3 = avro(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int","default":0}]}"#,
        );
        assert!(!check(Level::Backward, &v2, &[&v1]).is_empty());
        assert!(check(Level::Forward, &v2, &[&v1]).is_empty());
        assert!(!check(Level::Full, &v2, &[&v1]).is_empty());
        assert!(check(Level::None, &v2, &[&v1]).is_empty());
        let v4 = avro(
            r#"{"type":"record","name":"R","fields":[{"name":"b","type":"int","default":0}]}"#,
        );
        // v4 drops `a`: fine for a v4 reader of v3 data (backward), fine against v1 too.
        assert!(check(Level::Backward, &v4, &[&v3, &v2, &v1]).is_empty());
        // Forward: v3 readers need `a`, which v4 does not write.
        assert!(!check(Level::Forward, &v4, &[&v3]).is_empty());
        let v5 = avro(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1},{"name":"c","type":"string"}]}"#,
        );
        // Against the latest (v4) only: v5 reader reads v4 data? `c` has no default: not backward.
        assert!(!check(Level::Backward, &v5, &[&v4]).is_empty());
        let v6 = avro(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#);
        // v6 reads v1 (int promoted to long) but not v4 (no `a`, no default) : only transitive sees v4.
        assert!(check(Level::Backward, &v6, &[&v1]).is_empty());
        assert!(!check(Level::BackwardTransitive, &v6, &[&v1, &v4]).is_empty());
        assert!(check(Level::Backward, &v6, &[&v1, &v4]).is_empty());
    }
}
