//! A record as its table row: its fields (a clean record's schema's, or a dead letter's), then the columns of its place (the
//! agent's record id and where Kafka kept it), then `dt`, the date it is partitioned by.
//!
//! `dt` is the event's UTC date, so a late event lands in its own day; the event time is read
//! from the configured field (an Avro timestamp, epoch milliseconds or RFC 3339 text), or is the
//! record's Kafka timestamp when no field is configured.

use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Fields};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::columns::timestamp;

/// The partition column: the event's date, `YYYY-MM-DD`.
pub(crate) const DT: &str = "dt";

/// The columns logpipe adds after the schema's fields, in order.
pub(crate) fn place_columns() -> Fields {
    vec![
        Field::new("lp_host", DataType::Utf8, true),
        Field::new("lp_file", DataType::Utf8, true),
        Field::new("lp_offset", DataType::Int64, true),
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_timestamp", timestamp(), true),
        // Null on a dead-letter table's rows.
        Field::new("schema_id", DataType::Int64, true),
        Field::new(DT, DataType::Utf8, false),
    ]
    .into()
}

/// A field of the schema that has a name logpipe gives a column of its own.
pub(crate) fn clashes(fields: &Fields) -> Option<String> {
    let place = place_columns();
    fields
        .iter()
        .find(|f| place.find(f.name()).is_some())
        .map(|f| f.name().clone())
}

/// Where a record was read and what the agent named it.
pub(crate) struct Place<'a> {
    pub(crate) id: Option<logpipe_core::record::RecordId>,
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Milliseconds since the epoch.
    pub(crate) timestamp: Option<i64>,
    /// The writer schema's id (none for a dead letter).
    pub(crate) schema_id: Option<u32>,
}

/// Where a row's event time is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EventTime<'a> {
    /// A field; `micros`: its numbers are a timestamp column's microseconds, else milliseconds.
    Field { name: &'a str, micros: bool },
    /// The record's Kafka timestamp.
    Kafka,
}

/// The row of a record whose schema fields are `fields` (already fitted to their columns), and
/// its `dt`.
pub(crate) fn row(
    mut fields: Map<String, Value>,
    place: &Place<'_>,
    event_time: EventTime<'_>,
) -> Result<(Map<String, Value>, String), String> {
    let millis = match event_time {
        EventTime::Field { name, micros } => event_millis(fields.get(name), micros)
            .ok_or_else(|| format!("the event time field {name} is missing or not a time"))?,
        EventTime::Kafka => place
            .timestamp
            .ok_or("the record has no Kafka timestamp to date it by")?,
    };
    let dt = date_of(millis).ok_or_else(|| format!("event time {millis} ms is out of range"))?;
    if let Some(id) = &place.id {
        fields.insert("lp_host".into(), id.host.clone().into());
        fields.insert("lp_file".into(), id.file.to_hex().into());
        fields.insert("lp_offset".into(), (id.offset as i64).into());
    }
    fields.insert("kafka_topic".into(), place.topic.into());
    fields.insert("kafka_partition".into(), place.partition.into());
    fields.insert("kafka_offset".into(), place.offset.into());
    if let Some(ms) = place.timestamp {
        fields.insert("kafka_timestamp".into(), (ms.saturating_mul(1_000)).into());
    }
    if let Some(id) = place.schema_id {
        fields.insert("schema_id".into(), id.into());
    }
    fields.insert(DT.into(), dt.clone().into());
    Ok((fields, dt))
}

/// An event time as epoch milliseconds: a timestamp column's microseconds (what an Avro
/// timestamp became), a number of milliseconds, or RFC 3339 text.
fn event_millis(value: Option<&Value>, micros: bool) -> Option<i64> {
    match value? {
        Value::Number(n) if micros => n.as_i64().map(|us| us.div_euclid(1_000)),
        Value::Number(n) => n.as_i64(),
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        _ => None,
    }
}

/// The UTC date of `millis` since the epoch, `YYYY-MM-DD`.
pub(crate) fn date_of(millis: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// The table's columns for a schema's `fields`.
pub(crate) fn table_fields(fields: &Fields) -> Fields {
    let mut all: Vec<Arc<Field>> = fields.iter().cloned().collect();
    all.extend(place_columns().iter().cloned());
    all.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logpipe_core::record::{FileId, RecordId};
    use serde_json::json;

    fn place() -> Place<'static> {
        Place {
            id: Some(RecordId {
                host: "h1".into(),
                file: FileId(0xab),
                offset: 42,
            }),
            topic: "clean.game",
            partition: 3,
            offset: 99,
            timestamp: Some(1_764_892_800_000), // 2025-12-05T00:00:00Z
            schema_id: Some(7),
        }
    }

    #[test]
    fn a_row_carries_its_place_and_its_days_date() {
        let fields = json!({"event_time": 1_764_892_799_999_000i64, "x": 1});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let at = EventTime::Field {
            name: "event_time",
            micros: true,
        };
        let (row, dt) = row(fields, &place(), at).unwrap();
        assert_eq!(
            dt, "2025-12-04",
            "the event's day, not the Kafka timestamp's"
        );
        assert_eq!(
            Value::Object(row),
            json!({
                "event_time": 1_764_892_799_999_000i64, "x": 1,
                "lp_host": "h1", "lp_file": "00000000000000ab", "lp_offset": 42,
                "kafka_topic": "clean.game", "kafka_partition": 3, "kafka_offset": 99,
                "kafka_timestamp": 1_764_892_800_000_000i64, "schema_id": 7, "dt": "2025-12-04"
            })
        );
    }

    #[test]
    fn the_event_time_is_read_from_text_or_falls_back_to_kafka() {
        let at = EventTime::Field {
            name: "at",
            micros: false,
        };
        let Value::Object(text) = json!({"at": "2026-01-02T23:59:59+01:00"}) else {
            unreachable!()
        };
        assert_eq!(row(text, &place(), at).unwrap().1, "2026-01-02");
        let Value::Object(millis) = json!({"at": 1_764_892_800_000i64}) else {
            unreachable!()
        };
        assert_eq!(row(millis, &place(), at).unwrap().1, "2025-12-05");
        assert_eq!(
            row(Map::new(), &place(), EventTime::Kafka).unwrap().1,
            "2025-12-05"
        );
        let Value::Object(bad) = json!({"at": "yesterday"}) else {
            unreachable!()
        };
        assert!(row(bad, &place(), at).unwrap_err().contains("not a time"));
        assert!(row(Map::new(), &place(), at)
            .unwrap_err()
            .contains("missing"));
    }

    #[test]
    fn schema_fields_may_not_take_logpipes_column_names() {
        let fields: Fields = vec![Field::new("dt", DataType::Utf8, true)].into();
        assert_eq!(clashes(&fields).as_deref(), Some("dt"));
        let fields: Fields = vec![Field::new("level", DataType::Utf8, true)].into();
        assert_eq!(clashes(&fields), None);
        assert_eq!(table_fields(&fields).len(), 1 + place_columns().len());
    }
}
