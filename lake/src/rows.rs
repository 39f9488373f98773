//! A record as its table row: its fields (a clean record's schema's, or a dead letter's), then the columns of its place (the
//! agent's record id and where Kafka kept it), then `dt`, the date it is partitioned by.
//!
//! `dt` is the event's UTC date, so a late event lands in its own day; the event time is read
//! from the configured field (an Avro timestamp, epoch milliseconds or RFC 3339 text), or is the
//! record's Kafka timestamp when no field is configured.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Fields};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::batch::Row;
use crate::columns::{fit, timestamp};

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

/// Whether `column` is one of the place columns whose value is each record's own: partitioning
/// by it would make a directory per record.
pub(crate) fn per_record(column: &str) -> bool {
    matches!(column, "lp_offset" | "kafka_offset" | "kafka_timestamp")
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
#[derive(Debug)]
enum EventTime {
    /// A field (`column`: the table's column of it, if any); `micros`: its numbers are a
    /// timestamp column's microseconds, else milliseconds.
    Field {
        name: String,
        column: Option<usize>,
        micros: bool,
    },
    /// The record's Kafka timestamp.
    Kafka,
}

/// The table's columns in their order, and where each is by name: a row is built into its
/// cells directly (kept per table version).
pub(crate) struct Layout {
    fields: Fields,
    index: HashMap<String, usize>,
    /// The column of each of [`place_columns`], in its order.
    place: Vec<Option<usize>>,
    /// The column of the writer schema's n-th field: a decoded record's fields come in the
    /// schema's order, so most find theirs without hashing their name.
    writer: Vec<Option<usize>>,
    event_time: EventTime,
}

impl Layout {
    /// The layout of a table of `fields` for records of a writer schema of `writer` fields,
    /// dated by the field `event_time` (`None`: by their Kafka timestamps).
    pub(crate) fn new(fields: Fields, writer: &Fields, event_time: Option<&str>) -> Layout {
        let index: HashMap<String, usize> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().clone(), i))
            .collect();
        let at = |name: &str| index.get(name).copied();
        let event_time = match event_time {
            Some(name) => EventTime::Field {
                name: name.to_owned(),
                column: at(name),
                micros: fields
                    .find(name)
                    .is_some_and(|(_, f)| matches!(f.data_type(), DataType::Timestamp(..))),
            },
            None => EventTime::Kafka,
        };
        Layout {
            place: place_columns().iter().map(|f| at(f.name())).collect(),
            writer: writer.iter().map(|f| at(f.name())).collect(),
            event_time,
            fields,
            index,
        }
    }

    fn at(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// A record's named values as the cells of its row, each fitted to its column (a name the
    /// table has no column of is left out; the place columns are null until [`row`]).
    pub(crate) fn cells(
        &self,
        named: impl IntoIterator<Item = (String, Value)>,
    ) -> Result<Row, String> {
        let mut cells = vec![Value::Null; self.fields.len()];
        for (n, (name, value)) in named.into_iter().enumerate() {
            let in_order = self.writer.get(n).copied().flatten();
            let column = in_order
                .filter(|i| *self.fields[*i].name() == name)
                .or_else(|| self.at(&name));
            if let Some(i) = column {
                cells[i] =
                    fit(value, self.fields[i].data_type()).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(cells)
    }
}

/// The row of a record whose schema's cells are `cells` (from [`Layout::cells`]), with the
/// columns of its place and its `dt`.
pub(crate) fn row(
    mut cells: Row,
    layout: &Layout,
    place: &Place<'_>,
) -> Result<(Row, String), String> {
    let millis = match &layout.event_time {
        EventTime::Field {
            name,
            column,
            micros,
        } => event_millis(column.map(|i| &cells[i]), *micros)
            .ok_or_else(|| format!("the event time field {name} is missing or not a time"))?,
        EventTime::Kafka => place
            .timestamp
            .ok_or("the record has no Kafka timestamp to date it by")?,
    };
    let dt = date_of(millis).ok_or_else(|| format!("event time {millis} ms is out of range"))?;
    // In the order of `place_columns`. Set (or null) whatever the payload held under these
    // names: they are logpipe's.
    let id = place.id.as_ref();
    let values: [Value; 9] = [
        id.map(|id| id.host.clone()).into(),
        id.map(|id| id.file.to_hex()).into(),
        id.map(|id| id.offset as i64).into(),
        place.topic.into(),
        place.partition.into(),
        place.offset.into(),
        place.timestamp.map(|ms| ms.saturating_mul(1_000)).into(),
        place.schema_id.into(),
        dt.clone().into(),
    ];
    for (at, value) in layout.place.iter().zip(values) {
        if let Some(i) = at {
            cells[*i] = value;
        }
    }
    Ok((cells, dt))
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

    /// A table of `fields` (name, type) and the place columns, dated by `event_time`.
    fn layout(fields: &[(&str, DataType)], event_time: Option<&str>) -> Layout {
        let fields: Fields = fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect();
        Layout::new(table_fields(&fields), &fields, event_time)
    }

    fn cells(layout: &Layout, fields: Value) -> Row {
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        layout.cells(fields).unwrap()
    }

    #[test]
    fn a_row_carries_its_place_and_its_days_date() {
        let columns = [("event_time", timestamp()), ("x", DataType::Int64)];
        let layout = layout(&columns, Some("event_time"));
        // "unknown" (no column) puts "x" out of the writer's order: found by its name.
        let fields = json!({"x": 1, "event_time": 1_764_892_799_999_000i64, "unknown": 2});
        let (row, dt) = row(cells(&layout, fields), &layout, &place()).unwrap();
        assert_eq!(
            dt, "2025-12-04",
            "the event's day, not the Kafka timestamp's"
        );
        assert_eq!(
            Value::Array(row),
            json!([
                1_764_892_799_999_000i64,
                1,
                "h1",
                "00000000000000ab",
                42,
                "clean.game",
                3,
                99,
                1_764_892_800_000_000i64,
                7,
                "2025-12-04"
            ]),
            "the cells in the table's column order, a name it has no column of left out"
        );
    }

    #[test]
    fn cells_are_fitted_to_their_columns() {
        let layout = layout(&[("n", DataType::Int64), ("s", DataType::Utf8)], None);
        let Value::Object(bad) = json!({"n": "seven"}) else {
            unreachable!()
        };
        assert!(layout.cells(bad).unwrap_err().starts_with("n: "));
        assert_eq!(cells(&layout, json!({"s": 5}))[1], json!("5"));
        // A payload field named like a place column does not survive: the place is logpipe's.
        let forged = cells(&layout, json!({"lp_host": "forged", "kafka_offset": 1}));
        let anonymous = Place {
            id: None,
            ..place()
        };
        let (row, _) = row(forged, &layout, &anonymous).unwrap();
        let column = |name| layout.at(name).unwrap();
        assert_eq!(row[column("lp_host")], Value::Null);
        assert_eq!(row[column("kafka_offset")], json!(99));
    }

    #[test]
    fn the_event_time_is_read_from_text_or_falls_back_to_kafka() {
        let columns = [("at", DataType::Utf8), ("ms", DataType::Int64)];
        let (at, ms, kafka) = (
            layout(&columns, Some("at")),
            layout(&columns, Some("ms")),
            layout(&columns, None),
        );
        let dated = |fields: Value, layout: &Layout| row(cells(layout, fields), layout, &place());
        let text = json!({"at": "2026-01-02T23:59:59+01:00"});
        assert_eq!(dated(text, &at).unwrap().1, "2026-01-02");
        let millis = json!({"ms": 1_764_892_800_000i64});
        assert_eq!(dated(millis, &ms).unwrap().1, "2025-12-05");
        assert_eq!(dated(json!({}), &kafka).unwrap().1, "2025-12-05");
        let bad = json!({"at": "yesterday"});
        assert!(dated(bad, &at).unwrap_err().contains("not a time"));
        assert!(dated(json!({}), &at).unwrap_err().contains("missing"));
        let elsewhere = layout(&columns, Some("when"));
        assert!(dated(json!({"at": "2026-01-02T00:00:00Z"}), &elsewhere).is_err());
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
