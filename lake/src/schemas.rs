//! The writer schemas of clean records by id, fetched from the schema store on first use and kept
//! (ids are immutable), each with the table columns it gives; and a record's payload decoded
//! with its writer schema into the JSON fields of its row.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema as Avro;
use deltalake::arrow::datatypes::{DataType, Fields};
use logpipe_schema_client::{Client, LookupError, SchemaType};
use serde_json::{Map, Value};

use crate::columns;

/// How a record's payload is read.
pub(crate) enum Format {
    Avro(Avro),
    Json,
}

/// A writer schema and the columns it gives.
pub(crate) struct Writer {
    pub(crate) id: u32,
    format: Format,
    /// The schema's fields as columns, or why it has none (its records are dead letters).
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
            SchemaType::Avro => match Avro::parse_str(&found.schema) {
                Ok(schema) => Writer {
                    id,
                    fields: columns::avro_fields(&schema),
                    format: Format::Avro(schema),
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
        let writer = Arc::new(writer);
        self.writers.insert(id, writer.clone());
        Ok(writer)
    }
}

impl Writer {
    /// The payload's fields, each fitted to its column of `fields` (the writer's own, as the
    /// table holds them).
    pub(crate) fn decode(
        &self,
        payload: &[u8],
        fields: &Fields,
    ) -> Result<Map<String, Value>, String> {
        let value = match &self.format {
            Format::Avro(schema) => {
                let mut bytes = payload;
                let value = apache_avro::from_avro_datum(schema, &mut bytes, None)
                    .map_err(|e| format!("not Avro of schema id {}: {e}", self.id))?;
                columns::avro_json(value)
            }
            Format::Json => serde_json::from_slice(payload)
                .map_err(|e| format!("not JSON of schema id {}: {e}", self.id))?,
        };
        match columns::fit(value, &DataType::Struct(fields.clone()))? {
            Value::Object(object) => Ok(object),
            other => Err(format!("the record is {other}, not an object")),
        }
    }
}
