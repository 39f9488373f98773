//! The writer schemas of clean records by id, fetched from the schema store on first use and kept
//! (ids are immutable), each with the table columns it gives; and a record's payload decoded
//! with its writer schema into the cells of its row.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value as AvroValue;
use apache_avro::{GenericSingleObjectReader, Schema as Avro};
use deltalake::arrow::datatypes::Fields;
use logpipe_schema_client::{Client, LookupError, SchemaType};
use serde_json::Value;

use crate::batch::Row;
use crate::columns;
use crate::rows::Layout;

/// How a record's payload is read.
pub(crate) enum Format {
    Avro(Box<GenericSingleObjectReader>),
    Json,
}

/// The header apache-avro's single-object reader expects: none, the wire format's is read
/// before. That reader resolves the schema's names once; `from_avro_datum` resolves them for
/// every record (5% of the loader's time in the benchmark).
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// A writer schema and the columns it gives.
pub(crate) struct Writer {
    pub(crate) id: u32,
    format: Format,
    /// The schema's fields as columns, or why it has none (its records are dead letters): not
    /// a record, or a field with the name of a column logpipe adds.
    pub(crate) fields: Result<Fields, String>,
}

/// Why a record's schema could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// The store did not answer: retry later, the record is not at fault.
    #[error("{0}")]
    Unavailable(String),
    /// The store has no usable schema under that id: the record is a dead letter.
    #[error("{0}")]
    Unusable(String),
}

pub(crate) struct Schemas {
    client: Client,
    writers: HashMap<u32, Arc<Writer>>,
}

impl Schemas {
    pub(crate) fn new(client: Client) -> Schemas {
        Schemas {
            client,
            writers: HashMap::new(),
        }
    }

    pub(crate) async fn writer(&mut self, id: u32) -> Result<Arc<Writer>, SchemaError> {
        if let Some(writer) = self.writers.get(&id) {
            return Ok(writer.clone());
        }
        let found = self.client.schema_by_id(id).await.map_err(|e| match e {
            LookupError::Unavailable(why) => SchemaError::Unavailable(why),
            LookupError::NotFound(why) | LookupError::Unusable(why) => {
                SchemaError::Unusable(format!("schema id {id}: {why}"))
            }
        })?;
        let writer = match found.schema_type {
            SchemaType::Avro => match Avro::parse_str(&found.schema).and_then(|schema| {
                let fields = columns::avro_fields(&schema);
                let reader = GenericSingleObjectReader::new_with_header_builder(schema, NoHeader)?;
                Ok((fields, reader))
            }) {
                Ok((fields, reader)) => Writer {
                    id,
                    fields,
                    format: Format::Avro(Box::new(reader)),
                },
                Err(e) => Writer {
                    id,
                    fields: Err(format!("schema id {id} is not valid Avro: {e}")),
                    format: Format::Json,
                },
            },
            SchemaType::Json => Writer {
                id,
                fields: serde_json::from_str(&found.schema)
                    .map_err(|e| format!("schema id {id} is not JSON: {e}"))
                    .and_then(|schema| columns::json_schema_fields(&schema)),
                format: Format::Json,
            },
        };
        let writer = Arc::new(Writer {
            fields: writer
                .fields
                .and_then(|fields| match crate::rows::clashes(&fields) {
                    Some(name) => Err(format!(
                        "schema id {id} has a field {name}, a column logpipe adds"
                    )),
                    None => Ok(fields),
                }),
            ..writer
        });
        self.writers.insert(id, writer.clone());
        Ok(writer)
    }
}

impl Writer {
    /// The payload's fields as the cells of its row in the table of `layout` (which has a
    /// column of each of the writer's fields), each fitted to its column.
    pub(crate) fn decode(&self, payload: &[u8], layout: &Layout) -> Result<Row, String> {
        match &self.format {
            Format::Avro(reader) => {
                let mut bytes = payload;
                match reader
                    .read_value(&mut bytes)
                    .map_err(|e| format!("not Avro of schema id {}: {e}", self.id))?
                {
                    AvroValue::Record(fields) => layout.cells(
                        fields
                            .into_iter()
                            .map(|(name, value)| (name, columns::avro_json(value))),
                    ),
                    _ => Err(format!("schema id {} is not a record", self.id)),
                }
            }
            Format::Json => match serde_json::from_slice(payload)
                .map_err(|e| format!("not JSON of schema id {}: {e}", self.id))?
            {
                Value::Object(fields) => layout.cells(fields),
                other => Err(format!("the record is {}, not an object", kind_of(&other))),
            },
        }
    }
}

/// What a JSON value is, for an error (not the value: it may be large).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
