//! Rows into an Arrow record batch, column by column, straight from their values.
//!
//! A row is its cells in the table's column order. [`crate::columns::fit`] has already shaped
//! every cell to its column (numbers for timestamps, dates and times, a decimal's unscaled
//! integer text, bytes as hex), so appending cannot fail here; a batch is built without
//! serializing the rows into JSON text and parsing them again (what arrow-json's decoder does,
//! which took more of the loader's time than the Parquet encoding).

use std::sync::Arc;

use deltalake::arrow::array::builder::NullBufferBuilder;
use deltalake::arrow::array::{
    new_null_array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListArray, MapArray, RecordBatch,
    StringBuilder, StructArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, FieldRef, Fields, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use serde_json::Value;

/// A row: one cell per column of the table, in its order.
pub(crate) type Row = Vec<Value>;

/// `rows` (each of `schema`'s columns, in order) as one record batch.
pub(crate) fn build(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let mut column = Column::new(field.data_type(), rows.len());
            for row in rows {
                column.append(row.get(i).unwrap_or(&Value::Null));
            }
            column.finish()
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// One column being built.
enum Column {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Decimal(Decimal128Builder, u8, i8),
    List {
        item: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        items: Box<Column>,
    },
    Map {
        entry: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        keys: StringBuilder,
        values: Box<Column>,
    },
    Struct {
        fields: Fields,
        nulls: NullBufferBuilder,
        children: Vec<Column>,
    },
    /// A type rows never hold a value of (Avro `null`): only its length.
    Nulls(DataType, usize),
}

impl Column {
    fn new(ty: &DataType, capacity: usize) -> Column {
        match ty {
            DataType::Boolean => Column::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int32 => Column::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Column::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Column::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Column::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Utf8 => Column::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Binary => Column::Binary(BinaryBuilder::with_capacity(capacity, capacity)),
            DataType::Date32 => Column::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Column::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                tz.clone(),
            ),
            DataType::Decimal128(precision, scale) => Column::Decimal(
                Decimal128Builder::with_capacity(capacity),
                *precision,
                *scale,
            ),
            DataType::List(item) => Column::List {
                item: item.clone(),
                offsets: offsets(capacity),
                nulls: NullBufferBuilder::new(capacity),
                items: Box::new(Column::new(item.data_type(), capacity)),
            },
            DataType::Map(entry, _) => match entry.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => Column::Map {
                    entry: entry.clone(),
                    offsets: offsets(capacity),
                    nulls: NullBufferBuilder::new(capacity),
                    keys: StringBuilder::new(),
                    values: Box::new(Column::new(kv[1].data_type(), capacity)),
                },
                _ => Column::Nulls(ty.clone(), 0),
            },
            DataType::Struct(fields) => Column::Struct {
                fields: fields.clone(),
                nulls: NullBufferBuilder::new(capacity),
                children: fields
                    .iter()
                    .map(|f| Column::new(f.data_type(), capacity))
                    .collect(),
            },
            other => Column::Nulls(other.clone(), 0),
        }
    }

    /// Appends `value`, shaped to this column by `fit` (anything else is null).
    fn append(&mut self, value: &Value) {
        match self {
            Column::Boolean(b) => b.append_option(value.as_bool()),
            Column::Int32(b) => b.append_option(value.as_i64().and_then(|n| n.try_into().ok())),
            Column::Int64(b) => b.append_option(value.as_i64()),
            Column::Float32(b) => b.append_option(value.as_f64().map(|x| x as f32)),
            Column::Float64(b) => b.append_option(value.as_f64()),
            Column::Utf8(b) => b.append_option(value.as_str()),
            Column::Binary(b) => b.append_option(value.as_str().and_then(unhex)),
            Column::Date32(b) => b.append_option(value.as_i64().and_then(|n| n.try_into().ok())),
            Column::Timestamp(b, _) => b.append_option(value.as_i64()),
            Column::Decimal(b, ..) => {
                b.append_option(value.as_str().and_then(|s| s.parse::<i128>().ok()))
            }
            Column::List {
                offsets,
                nulls,
                items,
                ..
            } => {
                let mut len = 0;
                if let Value::Array(values) = value {
                    values.iter().for_each(|v| items.append(v));
                    len = values.len();
                }
                push_offset(offsets, len);
                nulls.append(value.is_array());
            }
            Column::Map {
                offsets,
                nulls,
                keys,
                values,
                ..
            } => {
                let mut len = 0;
                if let Value::Object(entries) = value {
                    for (k, v) in entries {
                        keys.append_value(k);
                        values.append(v);
                    }
                    len = entries.len();
                }
                push_offset(offsets, len);
                nulls.append(value.is_object());
            }
            Column::Struct {
                fields,
                nulls,
                children,
            } => {
                for (field, child) in fields.iter().zip(children) {
                    child.append(value.get(field.name()).unwrap_or(&Value::Null));
                }
                nulls.append(value.is_object());
            }
            Column::Nulls(_, len) => *len += 1,
        }
    }

    fn finish(self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Column::Boolean(mut b) => Arc::new(b.finish()),
            Column::Int32(mut b) => Arc::new(b.finish()),
            Column::Int64(mut b) => Arc::new(b.finish()),
            Column::Float32(mut b) => Arc::new(b.finish()),
            Column::Float64(mut b) => Arc::new(b.finish()),
            Column::Utf8(mut b) => Arc::new(b.finish()),
            Column::Binary(mut b) => Arc::new(b.finish()),
            Column::Date32(mut b) => Arc::new(b.finish()),
            Column::Timestamp(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Column::Decimal(mut b, precision, scale) => {
                Arc::new(b.finish().with_precision_and_scale(precision, scale)?)
            }
            Column::List {
                item,
                offsets,
                mut nulls,
                items,
            } => Arc::new(ListArray::try_new(
                item,
                OffsetBuffer::new(offsets.into()),
                items.finish()?,
                nulls.finish(),
            )?),
            Column::Map {
                entry,
                offsets,
                mut nulls,
                mut keys,
                values,
            } => {
                let DataType::Struct(kv) = entry.data_type() else {
                    unreachable!("a map column is made of struct entries")
                };
                let entries = StructArray::try_new(
                    kv.clone(),
                    vec![Arc::new(keys.finish()), values.finish()?],
                    None,
                )?;
                Arc::new(MapArray::try_new(
                    entry,
                    OffsetBuffer::new(offsets.into()),
                    entries,
                    nulls.finish(),
                    false,
                )?)
            }
            Column::Struct {
                fields,
                mut nulls,
                children,
            } => Arc::new(StructArray::try_new(
                fields,
                children
                    .into_iter()
                    .map(Column::finish)
                    .collect::<Result<_, _>>()?,
                nulls.finish(),
            )?),
            Column::Nulls(ty, len) => new_null_array(&ty, len),
        })
    }
}

fn offsets(capacity: usize) -> Vec<i32> {
    let mut offsets = Vec::with_capacity(capacity + 1);
    offsets.push(0);
    offsets
}

fn push_offset(offsets: &mut Vec<i32>, len: usize) {
    let last = *offsets.last().expect("offsets start at 0");
    offsets.push(last + len as i32);
}

/// Bytes from their hex text (how `columns::avro_json` writes Avro bytes).
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::Array;
    use deltalake::arrow::datatypes::{Field, Schema};
    use deltalake::arrow::json::ReaderBuilder;
    use serde_json::json;

    /// Every type a table column can have, built from cells as `fit` leaves them, against the
    /// same rows read by arrow-json (the decoder this replaces) as JSON objects.
    #[test]
    fn rows_become_the_arrays_arrow_json_would_build() {
        let pos = DataType::Struct(vec![Field::new("x", DataType::Float64, true)].into());
        let list = DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)));
        let map = crate::columns::map_of(DataType::Int64);
        let columns = [
            ("b", DataType::Boolean),
            ("i", DataType::Int32),
            ("l", DataType::Int64),
            ("f", DataType::Float32),
            ("d", DataType::Float64),
            ("s", DataType::Utf8),
            ("day", DataType::Date32),
            ("ts", crate::columns::timestamp()),
            ("tags", list),
            ("attrs", map),
            ("pos", pos),
            ("kafka_topic", DataType::Utf8),
        ];
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), *n != "kafka_topic"))
                .collect::<Vec<_>>(),
        ));
        let rows = [
            json!([true, 1, 2, 1.5, 2.5, "a", 3, 1_700_000_000_000_000i64, ["x", "y"],
                   {"k": 1, "j": null}, {"x": 0.5}, "clean.game"]),
            json!([null, null, null, null, null, null, null, null, null, null, null, "t"]),
            json!([false, -1, -2, 0.0, -0.0, "", 0, 0, [], {}, {}, "t"]),
        ];
        let cells: Vec<Row> = rows.iter().map(|r| r.as_array().unwrap().clone()).collect();
        let built = build(&schema, &cells).unwrap();

        let objects: Vec<Value> = rows
            .iter()
            .map(|r| {
                let cells = r.as_array().unwrap();
                Value::Object(
                    columns
                        .iter()
                        .zip(cells)
                        .map(|((n, _), v)| ((*n).to_owned(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder().unwrap();
        decoder.serialize(&objects).unwrap();
        let expected = decoder.flush().unwrap().unwrap();
        assert_eq!(built, expected);
        assert_eq!(built.column(0).null_count(), 1);
    }

    #[test]
    fn decimals_and_bytes_come_from_their_text() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new("raw", DataType::Binary, true),
        ]));
        let rows = vec![vec![json!("-12345"), json!("00ab10")], vec![json!(null); 2]];
        let built = build(&schema, &rows).unwrap();
        let price = built
            .column(0)
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Decimal128Array>()
            .unwrap();
        assert_eq!(price.value_as_string(0), "-123.45");
        assert!(price.is_null(1));
        let raw = built
            .column(1)
            .as_any()
            .downcast_ref::<deltalake::arrow::array::BinaryArray>()
            .unwrap();
        assert_eq!(raw.value(0), [0x00, 0xab, 0x10]);
        assert!(raw.is_null(1));
    }
}
