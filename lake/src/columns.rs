//! A registered schema as a table's columns, and a decoded record as a row of them.
//!
//! Avro and JSON Schema types map to the Arrow types Delta Lake stores (timestamps in
//! microseconds, dates as days, decimals as decimal128, maps with string keys). Every column is
//! nullable: a later schema version may drop a field, and a table widened by a new field holds
//! nulls in its older rows. A row is the JSON object arrow-json builds a batch from; [`fit`]
//! shapes a value to its column's type first, so a batch never fails on one record.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::{Name, RecordSchema, Schema as Avro, UnionSchema};
use apache_avro::types::Value as AvroValue;
use deltalake::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// The Julian day of 1970-01-01: Date32 columns count days from it.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// Timestamps are stored as Delta's `timestamp`: microseconds since the epoch, UTC.
pub(crate) fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of an Avro record schema (the top level of a clean record).
pub(crate) fn avro_fields(schema: &Avro) -> Result<Fields, String> {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    let mut path = Vec::new();
    match avro_type(schema, &names, &mut path)? {
        DataType::Struct(fields) => Ok(fields),
        other => Err(format!(
            "the schema is {other}, not a record: a table needs named fields"
        )),
    }
}

fn collect_names(schema: &Avro, names: &mut HashMap<Name, Avro>) {
    match schema {
        Avro::Record(record) => {
            names.insert(record.name.clone(), schema.clone());
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        Avro::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Avro::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Avro::Array(a) => collect_names(&a.items, names),
        Avro::Map(m) => collect_names(&m.types, names),
        Avro::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

fn avro_type(
    schema: &Avro,
    names: &HashMap<Name, Avro>,
    path: &mut Vec<Name>,
) -> Result<DataType, String> {
    Ok(match schema {
        Avro::Null => DataType::Null,
        Avro::Boolean => DataType::Boolean,
        Avro::Int => DataType::Int32,
        Avro::Long => DataType::Int64,
        Avro::Float => DataType::Float32,
        Avro::Double => DataType::Float64,
        Avro::Bytes | Avro::Fixed(_) => DataType::Binary,
        Avro::String | Avro::Enum(_) | Avro::Uuid | Avro::BigDecimal | Avro::Duration => {
            DataType::Utf8
        }
        Avro::Decimal(d) if d.precision <= 38 => {
            DataType::Decimal128(d.precision as u8, d.scale as i8)
        }
        Avro::Decimal(_) => DataType::Utf8,
        Avro::Date => DataType::Date32,
        // Delta has no time of day: microseconds since midnight.
        Avro::TimeMillis | Avro::TimeMicros => DataType::Int64,
        Avro::TimestampMillis | Avro::TimestampMicros | Avro::TimestampNanos => timestamp(),
        Avro::LocalTimestampMillis | Avro::LocalTimestampMicros | Avro::LocalTimestampNanos => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        Avro::Array(a) => DataType::List(Arc::new(Field::new(
            "element",
            avro_type(&a.items, names, path)?,
            true,
        ))),
        Avro::Map(m) => map_of(avro_type(&m.types, names, path)?),
        Avro::Union(u) => match non_null(u) {
            Some(only) => avro_type(only, names, path)?,
            // A union of several types has no one column type: its JSON text.
            None => DataType::Utf8,
        },
        Avro::Record(RecordSchema { name, fields, .. }) => {
            if path.contains(name) {
                return Err(format!(
                    "record {name} contains itself: a recursive type has no table columns"
                ));
            }
            path.push(name.clone());
            let mut columns = Vec::with_capacity(fields.len());
            for field in fields {
                columns.push(Field::new(
                    &field.name,
                    avro_type(&field.schema, names, path)?,
                    true,
                ));
            }
            path.pop();
            DataType::Struct(columns.into())
        }
        Avro::Ref { name } => {
            let named = names
                .get(name)
                .ok_or_else(|| format!("the schema names {name} without defining it"))?;
            avro_type(named, names, path)?
        }
    })
}

/// The one non-null branch of a union (`["null", T]`), if that is what it is.
fn non_null(union: &UnionSchema) -> Option<&Avro> {
    let mut others = union.variants().iter().filter(|v| **v != Avro::Null);
    match (others.next(), others.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// A map column with text keys.
pub(crate) fn map_of(values: DataType) -> DataType {
    let entries = Field::new(
        "key_value",
        DataType::Struct(
            vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", values, true),
            ]
            .into(),
        ),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The columns of a JSON Schema object schema: its `properties`, with their declared types.
pub(crate) fn json_schema_fields(schema: &Value) -> Result<Fields, String> {
    match json_type(schema, schema, 0)? {
        DataType::Struct(fields) => Ok(fields),
        other => Err(format!(
            "the schema is {other}, not an object with properties: a table needs named fields"
        )),
    }
}

fn json_type(schema: &Value, root: &Value, depth: usize) -> Result<DataType, String> {
    if depth > 64 {
        return Err("the schema nests deeper than 64 levels (a recursive $ref?)".into());
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .ok_or_else(|| {
                format!("$ref {reference}: only references inside the schema are read")
            })?;
        return json_type(target, root, depth + 1);
    }
    let declared: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => vec![],
    };
    let format = schema.get("format").and_then(Value::as_str);
    Ok(match declared.as_slice() {
        ["string"] if format == Some("date-time") => timestamp(),
        ["string"] if format == Some("date") => DataType::Date32,
        ["string"] => DataType::Utf8,
        ["integer"] => DataType::Int64,
        ["number"] => DataType::Float64,
        ["integer", "number"] | ["number", "integer"] => DataType::Float64,
        ["boolean"] => DataType::Boolean,
        ["array"] => match schema.get("items") {
            Some(items) if items.is_object() => DataType::List(Arc::new(Field::new(
                "element",
                json_type(items, root, depth + 1)?,
                true,
            ))),
            _ => DataType::Utf8,
        },
        ["object"] => match schema.get("properties").and_then(Value::as_object) {
            Some(properties) if !properties.is_empty() => {
                let mut columns = Vec::with_capacity(properties.len());
                for (name, property) in properties {
                    columns.push(Field::new(
                        name,
                        json_type(property, root, depth + 1)?,
                        true,
                    ));
                }
                DataType::Struct(columns.into())
            }
            // An object without declared properties: its JSON text.
            _ => DataType::Utf8,
        },
        // Anything else (several types, no type, oneOf): the value's JSON text.
        _ => DataType::Utf8,
    })
}

/// An Avro value as the JSON arrow-json reads into its column: timestamps and times in
/// microseconds, bytes as hex, decimals as their decimal text, unions as their branch.
pub(crate) fn avro_json(value: AvroValue) -> Value {
    match value {
        AvroValue::Null => Value::Null,
        AvroValue::Boolean(b) => Value::Bool(b),
        AvroValue::Int(i) => i.into(),
        AvroValue::Long(i) => i.into(),
        AvroValue::Float(x) => f64::from(x).into(),
        AvroValue::Double(x) => x.into(),
        AvroValue::Bytes(b) | AvroValue::Fixed(_, b) => hex(&b).into(),
        AvroValue::String(s) | AvroValue::Enum(_, s) => s.into(),
        AvroValue::Uuid(u) => u.to_string().into(),
        AvroValue::Union(_, inner) => avro_json(*inner),
        AvroValue::Array(items) => items.into_iter().map(avro_json).collect(),
        AvroValue::Map(entries) => entries
            .into_iter()
            .map(|(k, v)| (k, avro_json(v)))
            .collect::<Map<_, _>>()
            .into(),
        AvroValue::Record(fields) => fields
            .into_iter()
            .map(|(k, v)| (k, avro_json(v)))
            .collect::<Map<_, _>>()
            .into(),
        AvroValue::Date(days) => days.into(),
        AvroValue::TimeMillis(ms) => (i64::from(ms) * 1_000).into(),
        AvroValue::TimeMicros(us) => us.into(),
        AvroValue::TimestampMillis(ms) | AvroValue::LocalTimestampMillis(ms) => {
            ms.saturating_mul(1_000).into()
        }
        AvroValue::TimestampMicros(us) | AvroValue::LocalTimestampMicros(us) => us.into(),
        AvroValue::TimestampNanos(ns) | AvroValue::LocalTimestampNanos(ns) => {
            ns.div_euclid(1_000).into()
        }
        AvroValue::Decimal(d) => match <Vec<u8>>::try_from(d) {
            Ok(bytes) => unscaled_text(&bytes).into(),
            Err(_) => Value::Null,
        },
        AvroValue::BigDecimal(d) => d.to_string().into(),
        AvroValue::Duration(d) => format!(
            "P{}M{}DT{}ms",
            u32::from(d.months()),
            u32::from(d.days()),
            u32::from(d.millis())
        )
        .into(),
    }
}

/// A decimal's two's-complement big-endian unscaled bytes as an integer's text (the column's
/// scale is the schema's).
fn unscaled_text(bytes: &[u8]) -> String {
    if bytes.len() > 16 {
        return "NaN".into();
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    i128::from_be_bytes(buf).to_string()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Shapes `value` to a column of type `ty`, as `batch` appends it: a value a text column cannot
/// take as it is becomes its JSON text, struct fields the column does not have are dropped,
/// date-times and dates given as text become microseconds and days. Errors say why the value
/// cannot be stored in the column at all: this is the one check, so a batch never fails on one
/// record.
pub(crate) fn fit(value: Value, ty: &DataType) -> Result<Value, String> {
    Ok(match (value, ty) {
        (Value::Null, _) => Value::Null,
        (Value::String(s), DataType::Utf8) => Value::String(s),
        (other, DataType::Utf8) => Value::String(other.to_string()),
        (Value::Object(mut object), DataType::Struct(fields)) => {
            let mut out = Map::with_capacity(fields.len());
            for field in fields {
                if let Some(v) = object.remove(field.name()) {
                    let v =
                        fit(v, field.data_type()).map_err(|e| format!("{}: {e}", field.name()))?;
                    out.insert(field.name().clone(), v);
                }
            }
            Value::Object(out)
        }
        (Value::Array(items), DataType::List(element)) => Value::Array(
            items
                .into_iter()
                .map(|v| fit(v, element.data_type()))
                .collect::<Result<_, _>>()?,
        ),
        (Value::Object(entries), DataType::Map(entry, _)) => {
            let value_type = match entry.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => kv[1].data_type().clone(),
                other => return Err(format!("map entries of type {other}")),
            };
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, fit(v, &value_type)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        (Value::String(unscaled), DataType::Decimal128(precision, _)) => {
            match unscaled.parse::<i128>() {
                Ok(n) if n.unsigned_abs() < 10u128.pow(u32::from(*precision)) => {
                    Value::String(unscaled)
                }
                _ => return Err(format!("{unscaled} is not a decimal of {precision} digits")),
            }
        }
        (v @ Value::Bool(_), DataType::Boolean) => v,
        (v @ Value::Number(_), t) if t.is_numeric() || t.is_temporal() => {
            if matches!(
                t,
                DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(..)
            ) && !v.is_i64()
            {
                return Err(format!("{v} is not an integer"));
            }
            v
        }
        (Value::String(text), DataType::Timestamp(..)) => OffsetDateTime::parse(&text, &Rfc3339)
            .ok()
            .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000).ok())
            .ok_or_else(|| format!("{text} is not an RFC 3339 date-time"))?
            .into(),
        (Value::String(text), DataType::Date32) => {
            Date::parse(&text, format_description!("[year]-[month]-[day]"))
                .map(|day| i64::from(day.to_julian_day() - UNIX_EPOCH_JULIAN_DAY))
                .map_err(|_| format!("{text} is not a date (YYYY-MM-DD)"))?
                .into()
        }
        (v @ Value::String(_), DataType::Binary) => v,
        (v, t) => {
            let mut text = v.to_string();
            if text.len() > 40 {
                text.truncate(text.floor_char_boundary(37));
                text.push_str("...");
            }
            return Err(format!("{text} does not fit a {t} column"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn avro(text: &str) -> Avro {
        Avro::parse_str(text).unwrap()
    }

    #[test]
    fn avro_types_become_delta_types() {
        let schema = avro(
            r#"{"type":"record","name":"e","fields":[
              {"name":"b","type":"boolean"},
              {"name":"i","type":"int"},
              {"name":"l","type":"long"},
              {"name":"f","type":"float"},
              {"name":"d","type":"double"},
              {"name":"s","type":"string"},
              {"name":"opt","type":["null","string"]},
              {"name":"raw","type":"bytes"},
              {"name":"kind","type":{"type":"enum","name":"k","symbols":["A","B"]}},
              {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"day","type":{"type":"int","logicalType":"date"}},
              {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
              {"name":"tags","type":{"type":"array","items":"string"}},
              {"name":"attrs","type":{"type":"map","values":"long"}},
              {"name":"pos","type":{"type":"record","name":"p","fields":[{"name":"x","type":"double"}]}},
              {"name":"again","type":["null","p"]},
              {"name":"either","type":["int","string"]}
            ]}"#,
        );
        let fields = avro_fields(&schema).unwrap();
        let types: Vec<(String, DataType)> = fields
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let pos = DataType::Struct(vec![Field::new("x", DataType::Float64, true)].into());
        let expected = vec![
            ("b", DataType::Boolean),
            ("i", DataType::Int32),
            ("l", DataType::Int64),
            ("f", DataType::Float32),
            ("d", DataType::Float64),
            ("s", DataType::Utf8),
            ("opt", DataType::Utf8),
            ("raw", DataType::Binary),
            ("kind", DataType::Utf8),
            ("ts", timestamp()),
            ("day", DataType::Date32),
            ("price", DataType::Decimal128(10, 2)),
            (
                "tags",
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            ),
            ("attrs", map_of(DataType::Int64)),
            ("pos", pos.clone()),
            ("again", pos),
            ("either", DataType::Utf8),
        ];
        assert_eq!(
            types,
            expected
                .into_iter()
                .map(|(n, t)| (n.to_owned(), t))
                .collect::<Vec<_>>()
        );
        assert!(fields.iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn schemas_without_columns_are_refused() {
        assert!(avro_fields(&avro(r#""string""#))
            .unwrap_err()
            .contains("not a record"));
        let recursive = avro(
            r#"{"type":"record","name":"node","fields":[{"name":"next","type":["null","node"]}]}"#,
        );
        assert!(avro_fields(&recursive)
            .unwrap_err()
            .contains("contains itself"));
        assert!(json_schema_fields(&json!({"type": "string"}))
            .unwrap_err()
            .contains("not an object"));
    }

    #[test]
    fn json_schema_types_become_delta_types() {
        let schema = json!({
            "type": "object",
            "definitions": {"pos": {"type": "object", "properties": {"x": {"type": "number"}}}},
            "properties": {
                "s": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "day": {"type": "string", "format": "date"},
                "n": {"type": ["integer", "null"]},
                "x": {"type": "number"},
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "pos": {"$ref": "#/definitions/pos"},
                "free": {"type": "object"},
                "any": {}
            }
        });
        let fields = json_schema_fields(&schema).unwrap();
        let get = |n: &str| fields.find(n).unwrap().1.data_type().clone();
        assert_eq!(get("s"), DataType::Utf8);
        assert_eq!(get("at"), timestamp());
        assert_eq!(get("day"), DataType::Date32);
        assert_eq!(get("n"), DataType::Int64);
        assert_eq!(get("x"), DataType::Float64);
        assert_eq!(get("ok"), DataType::Boolean);
        assert_eq!(
            get("tags"),
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)))
        );
        assert_eq!(
            get("pos"),
            DataType::Struct(vec![Field::new("x", DataType::Float64, true)].into())
        );
        assert_eq!(get("free"), DataType::Utf8);
        assert_eq!(get("any"), DataType::Utf8);
    }

    #[test]
    fn avro_values_become_the_json_their_columns_read() {
        let cases: Vec<(AvroValue, Value)> = vec![
            (
                AvroValue::TimestampMillis(1_700_000_000_123),
                json!(1_700_000_000_123_000i64),
            ),
            (AvroValue::TimestampNanos(1_500), json!(1)),
            (AvroValue::TimeMillis(2), json!(2_000)),
            (AvroValue::Bytes(vec![0, 0xab, 0x10]), json!("00ab10")),
            (AvroValue::Union(1, Box::new(AvroValue::Long(7))), json!(7)),
            (AvroValue::Enum(1, "B".into()), json!("B")),
            (
                AvroValue::Decimal(apache_avro::Decimal::from(vec![0xff, 0xfb])),
                json!("-5"),
            ),
            (
                AvroValue::Record(vec![(
                    "a".into(),
                    AvroValue::Array(vec![AvroValue::Int(1)]),
                )]),
                json!({"a": [1]}),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(avro_json(value.clone()), expected, "{value:?}");
        }
    }

    #[test]
    fn values_fit_their_columns_or_say_why_not() {
        let pos = DataType::Struct(vec![Field::new("x", DataType::Float64, true)].into());
        let cases: Vec<(Value, DataType, Result<Value, &str>)> = vec![
            (json!({"k": 1}), DataType::Utf8, Ok(json!("{\"k\":1}"))),
            (json!(5), DataType::Utf8, Ok(json!("5"))),
            (
                json!({"x": 1.5, "extra": true}),
                pos.clone(),
                Ok(json!({"x": 1.5})),
            ),
            (json!("-5"), DataType::Decimal128(10, 3), Ok(json!("-5"))),
            (
                json!("12345"),
                DataType::Decimal128(4, 2),
                Err("not a decimal of 4 digits"),
            ),
            (
                json!("2026-01-02T00:00:01.5+01:00"),
                timestamp(),
                Ok(json!(1_767_308_401_500_000i64)),
            ),
            (json!("yesterday"), timestamp(), Err("not an RFC 3339")),
            (json!("1970-01-03"), DataType::Date32, Ok(json!(2))),
            (json!("1970-13-03"), DataType::Date32, Err("not a date")),
            (json!(1.5), DataType::Int64, Err("not an integer")),
            (json!("x"), DataType::Int64, Err("does not fit")),
            (
                json!({"x": "y"}),
                pos,
                Err("x: \"y\" does not fit a Float64"),
            ),
            (
                json!([1, "a"]),
                DataType::List(Arc::new(Field::new("element", DataType::Int64, true))),
                Err("does not fit"),
            ),
            (json!(null), DataType::Int64, Ok(json!(null))),
        ];
        for (value, ty, expected) in cases {
            match (fit(value.clone(), &ty), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{value} as {ty}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{value} as {ty}: {got}"),
                (got, want) => panic!("{value} as {ty}: got {got:?}, want {want:?}"),
            }
        }
    }
}
