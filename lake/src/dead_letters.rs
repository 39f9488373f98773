//! A dead letter (a `dlq.*` record: the raw line as the agent read it, or the record a stage
//! refused, with the `lp.error.*` headers saying why) as its table row, for tables of
//! `kind = "dead_letters"`: one column per dead-letter header, the agent's `lp.path` and
//! `lp.truncated`, and the value as text. Dead letters have no schema of their own (they are
//! there because they did not fit one), so the columns are fixed.

use deltalake::arrow::datatypes::{DataType, Field, Fields};
use logpipe_core::record::{error_header, header};
use serde_json::{Map, Value};

/// A header's column: `lp.error.reason` -> `error_reason`, `lp.path` -> `lp_path`.
fn column_of(name: &str) -> String {
    match name.strip_prefix("lp.error.") {
        Some(rest) => format!("error_{rest}"),
        None => name.replace('.', "_"),
    }
}

/// The type of a header's column: the numbers are numbers, the rest text.
fn type_of(name: &str) -> DataType {
    match name {
        error_header::PARTITION => DataType::Int32,
        error_header::SCHEMA_ID | error_header::OFFSET | error_header::OMITTED => DataType::Int64,
        header::TRUNCATED => DataType::Int64,
        _ => DataType::Utf8,
    }
}

/// The headers that become columns (the record id's go to the place columns).
fn headers() -> impl Iterator<Item = &'static str> {
    error_header::ALL
        .into_iter()
        .chain([header::PATH, header::TRUNCATED])
}

/// The columns of a dead letter, before the place columns every row gets.
pub(crate) fn fields() -> Fields {
    headers()
        .map(|h| Field::new(column_of(h), type_of(h), true))
        .chain([
            // The value as UTF-8 text, invalid sequences replaced; `value_is_utf8` says whether
            // it was text (the dead-letter topic keeps the exact bytes).
            Field::new("value", DataType::Utf8, true),
            Field::new("value_is_utf8", DataType::Boolean, true),
        ])
        .collect()
}

/// A dead letter's columns from its headers and value; headers absent or not of their column's
/// type are null.
pub(crate) fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
) -> Map<String, Value> {
    let mut row = Map::new();
    for (name, bytes) in headers {
        let Some(wanted) = self::headers().find(|h| *h == name) else {
            continue;
        };
        let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) else {
            continue;
        };
        let cell = match type_of(wanted) {
            DataType::Utf8 => Value::from(text),
            _ => match text.trim().parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => continue,
            },
        };
        row.insert(column_of(wanted), cell);
    }
    if let Some(value) = value {
        let text = String::from_utf8_lossy(value);
        row.insert(
            "value_is_utf8".into(),
            matches!(text, std::borrow::Cow::Borrowed(_)).into(),
        );
        row.insert("value".into(), text.into_owned().into());
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_are_the_dead_letter_headers_then_the_value() {
        let names: Vec<String> = fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            [
                "error_stage",
                "error_reason",
                "error_path",
                "error_subject",
                "error_schema_id",
                "error_topic",
                "error_partition",
                "error_offset",
                "error_omitted",
                "lp_path",
                "lp_truncated",
                "value",
                "value_is_utf8"
            ]
        );
    }

    #[test]
    fn a_dead_letter_as_its_row() {
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Headers, Option<&[u8]>, Value); 4] = [
            (
                &[
                    ("lp.error.stage", b"parse"),
                    ("lp.error.reason", b"not JSON: expected value"),
                    ("lp.error.partition", b"3"),
                    ("lp.error.offset", b"17"),
                    ("lp.path", b"/var/log/game/a.log"),
                    ("lp.host", b"h1"),
                ],
                Some(b"{oops"),
                json!({"error_stage": "parse", "error_reason": "not JSON: expected value",
                       "error_partition": 3, "error_offset": 17, "lp_path": "/var/log/game/a.log",
                       "value": "{oops", "value_is_utf8": true}),
            ),
            // Invalid UTF-8 is kept as text with the replacement character, and said.
            (
                &[("lp.error.stage", b"utf8")],
                Some(b"a\xffb"),
                json!({"error_stage": "utf8", "value": "a\u{fffd}b", "value_is_utf8": false}),
            ),
            // A number header that is not a number is null, not a failed row.
            (
                &[("lp.error.offset", b"x"), ("lp.truncated", b"1048577")],
                None,
                json!({"lp_truncated": 1_048_577}),
            ),
            (&[], Some(b""), json!({"value": "", "value_is_utf8": true})),
        ];
        for (headers, value, expected) in cases {
            let row = decode(headers.iter().map(|(k, v)| (*k, Some(*v))), value);
            assert_eq!(Value::Object(row), expected, "{headers:?}");
        }
    }
}
