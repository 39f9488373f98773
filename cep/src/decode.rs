//! Clean records back into events: the Confluent wire format read with the writer schema fetched
//! from the schema store by id (cached: ids never change), Avro binary or JSON, as a JSON value the
//! rules read. Several schema ids in one topic are simply several cache entries.
//!
//! Also what a PUT checks a rule's fields against: the field paths of a schema.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use logpipe_schema_client::{Client, LookupError, SchemaType};
use serde_json::Value;

/// A writer schema, ready to read records.
#[derive(Debug)]
pub(crate) enum Writer {
    Avro(Schema),
    Json(Value),
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The store could not answer: retry later, the record is not at fault.
    #[error("{0}")]
    Unavailable(String),
    /// The record is not in the wire format, or its bytes do not fit its schema.
    #[error("{0}")]
    Malformed(String),
    /// The store has no such schema id, or one this worker cannot read.
    #[error("{0}")]
    UnknownSchema(String),
}

impl DecodeError {
    /// The bounded label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            DecodeError::Unavailable(_) => "unavailable",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownSchema(_) => "unknown_schema",
        }
    }
}

/// Writer schemas by id, fetched on first use.
pub(crate) struct Decoder {
    client: Client,
    writers: HashMap<u32, Arc<Writer>>,
}

impl Decoder {
    pub(crate) fn new(client: Client) -> Decoder {
        Decoder {
            client,
            writers: HashMap::new(),
        }
    }

    /// The writer schema of `id`, from the cache or the store.
    pub(crate) async fn writer(&mut self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        if let Some(writer) = self.writers.get(&id) {
            return Ok(writer.clone());
        }
        let found = self.client.schema_by_id(id).await.map_err(|e| match e {
            LookupError::Unavailable(why) => DecodeError::Unavailable(why),
            LookupError::NotFound(why) | LookupError::Unusable(why) => {
                DecodeError::UnknownSchema(format!("schema id {id}: {why}"))
            }
        })?;
        let writer = match found.schema_type {
            SchemaType::Avro => Writer::Avro(Schema::parse_str(&found.schema).map_err(|e| {
                DecodeError::UnknownSchema(format!("schema id {id} is not valid Avro: {e}"))
            })?),
            SchemaType::Json => Writer::Json(serde_json::from_str(&found.schema).map_err(|e| {
                DecodeError::UnknownSchema(format!("schema id {id} is not JSON: {e}"))
            })?),
        };
        let writer = Arc::new(writer);
        self.writers.insert(id, writer.clone());
        Ok(writer)
    }

    /// Reads a clean record's value.
    pub(crate) async fn decode(&mut self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let (id, body) = logpipe_core::wire::parse(bytes)
            .map_err(|e| DecodeError::Malformed(format!("not the Confluent wire format: {e}")))?;
        let writer = self.writer(id).await?;
        read(&writer, body).map_err(|e| DecodeError::Malformed(format!("schema id {id}: {e}")))
    }
}

/// Reads a record body with its writer schema.
fn read(writer: &Writer, mut body: &[u8]) -> Result<Value, String> {
    match writer {
        Writer::Avro(schema) => {
            let value = apache_avro::from_avro_datum(schema, &mut body, None)
                .map_err(|e| format!("Avro: {e}"))?;
            Value::try_from(value).map_err(|e| format!("Avro value as JSON: {e}"))
        }
        Writer::Json(_) => serde_json::from_slice(body).map_err(|e| format!("JSON: {e}")),
    }
}

/// Every field path a schema gives its records (`member.playerId` for nested records), for
/// checking a rule's fields at PUT time.
pub(crate) fn field_paths(writer: &Writer) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    match writer {
        Writer::Avro(schema) => avro_paths(schema, "", &mut paths),
        Writer::Json(schema) => json_paths(schema, "", &mut paths),
    }
    paths
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn avro_paths(schema: &Schema, prefix: &str, out: &mut BTreeSet<String>) {
    match schema {
        Schema::Record(record) => {
            for field in &record.fields {
                let path = join(prefix, &field.name);
                out.insert(path.clone());
                avro_paths(&field.schema, &path, out);
            }
        }
        Schema::Union(union) => {
            for variant in union.variants() {
                avro_paths(variant, prefix, out);
            }
        }
        _ => {}
    }
}

fn json_paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            let path = join(prefix, name);
            out.insert(path.clone());
            json_paths(sub, &path, out);
        }
    }
    for combinator in ["allOf", "anyOf", "oneOf"] {
        for sub in schema
            .get(combinator)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            json_paths(sub, prefix, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Record;
    use serde_json::json;

    use super::*;

    const AVRO: &str = r#"{"type": "record", "name": "E", "fields": [
        {"name": "event", "type": "string"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "member", "type": ["null", {"type": "record", "name": "M", "fields": [{"name": "playerId", "type": "string"}]}], "default": null}
    ]}"#;

    #[test]
    fn avro_records_read_as_json() {
        let schema = Schema::parse_str(AVRO).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("event", "kill");
        record.put(
            "event_time",
            apache_avro::types::Value::TimestampMillis(1_700_000_000_000),
        );
        let member = Schema::parse_str(r#"{"type": "record", "name": "M", "fields": [{"name": "playerId", "type": "string"}]}"#).unwrap();
        let mut inner = Record::new(&member).unwrap();
        inner.put("playerId", "m-1");
        record.put(
            "member",
            apache_avro::types::Value::Union(1, Box::new(inner.into())),
        );
        let body = apache_avro::to_avro_datum(&schema, record).unwrap();
        let value = read(&Writer::Avro(schema), &body).unwrap();
        assert_eq!(
            value,
            json!({"event": "kill", "event_time": 1_700_000_000_000i64, "member": {"playerId": "m-1"}})
        );
        assert!(read(&Writer::Json(json!({})), b"{not json").is_err());
    }

    #[test]
    fn field_paths_cover_nested_records_and_properties() {
        let avro = field_paths(&Writer::Avro(Schema::parse_str(AVRO).unwrap()));
        assert_eq!(
            avro.into_iter().collect::<Vec<_>>(),
            ["event", "event_time", "member", "member.playerId"]
        );
        let json_schema = json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}, "anyOf": [{"properties": {"c": {}}}]});
        let paths = field_paths(&Writer::Json(json_schema));
        assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["a", "a.b", "c"]);
    }
}
