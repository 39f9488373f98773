//! What the worker carries of an event from the clean topic to a match: its unique id and place
//! ([`EventRef`]), and the re-keyed record ([`Rekeyed`]) that takes the rules it satisfied to the
//! worker owning its key.
//!
//! Rules are evaluated where the event is read (the first stage); only the outcome crosses the
//! repartition topic, so the second stage counts without decoding or evaluating again, and an
//! event that satisfies no rule is never re-keyed at all.

use serde::{Deserialize, Serialize};

/// An event's unique id and where it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventRef {
    /// `<host>/<file>/<offset>` from the record's `lp.*` headers (the record contract's id);
    /// `<topic>/<partition>/<offset>` for a record without them.
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Event time in epoch milliseconds: the rule's event-time field, else the record timestamp.
    pub(crate) event_time: i64,
}

/// One rule version whose steps an event satisfied, as a bit mask of step indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hit {
    pub(crate) rule: String,
    #[serde(rename = "v")]
    pub(crate) version: u32,
    #[serde(rename = "s")]
    pub(crate) steps: u32,
    /// The event time by this rule's event-time field, when it differs from the event's.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<i64>,
}

/// The value of a record on a repartition topic; its key is the rule key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rekeyed {
    pub(crate) hits: Vec<Hit>,
    pub(crate) event: EventRef,
}

/// An event time as RFC 3339 with milliseconds, as matches write it.
pub(crate) fn rfc3339(ms: i64) -> String {
    let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// Reads an event-time field: epoch milliseconds (a number, or digits) or RFC 3339 text.
pub(crate) fn parse_event_time(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.parse::<i64>().ok().or_else(|| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn event_times_read_both_forms_and_print_rfc3339() {
        assert_eq!(
            parse_event_time(&json!(1_700_000_000_123i64)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_event_time(&json!("1700000000123")),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_event_time(&json!("2023-11-14T22:13:20.123Z")),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_event_time(&json!("yesterday")), None);
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn rekeyed_records_are_compact_json() {
        let record = Rekeyed {
            hits: vec![Hit {
                rule: "r".into(),
                version: 2,
                steps: 0b101,
                time: None,
            }],
            event: EventRef {
                id: "h/00ab/10".into(),
                topic: "clean.game".into(),
                partition: 1,
                offset: 9,
                event_time: 5,
            },
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(r#""hits":[{"rule":"r","v":2,"s":5}]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Rekeyed>(&text).unwrap(), record);
    }
}
