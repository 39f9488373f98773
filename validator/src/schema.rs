//! A schema from the store, compiled once per id into what checks and encodes records:
//! an [`AvroPlan`] for AVRO schemas, a JSON Schema validator for JSON schemas. Output is the
//! Confluent wire format, so any Confluent-compatible deserializer reads clean records.

use logpipe_core::wire;
use logpipe_schema_client::SchemaType;
use serde_json::Value;

use crate::avro::{AvroPlan, ConvertError, Converted, ExtraFields};
use crate::doc::Doc;
use crate::reason::Reason;

/// A schema ready to check and encode records.
pub struct CompiledSchema {
    pub id: u32,
    checker: Checker,
}

enum Checker {
    Avro(AvroPlan),
    Json(jsonschema::Validator),
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.checker {
            Checker::Avro(_) => "AVRO",
            Checker::Json(_) => "JSON",
        };
        write!(f, "CompiledSchema {{ id: {}, type: {kind} }}", self.id)
    }
}

impl CompiledSchema {
    /// Compiles a schema's text; the error says why the schema cannot be used.
    pub fn compile(id: u32, schema_type: SchemaType, text: &str) -> Result<CompiledSchema, String> {
        let checker = match schema_type {
            SchemaType::Avro => Checker::Avro(AvroPlan::parse(text).map_err(|e| e.to_string())?),
            SchemaType::Json => {
                let schema: Value = serde_json::from_str(text)
                    .map_err(|e| format!("JSON schema is not JSON: {e}"))?;
                Checker::Json(
                    jsonschema::validator_for(&schema)
                        .map_err(|e| format!("not a valid JSON Schema: {e}"))?,
                )
            }
        };
        Ok(CompiledSchema { id, checker })
    }

    /// Checks a parsed record and appends its clean value (wire format) to `out`. `raw` is the
    /// record's original bytes, the payload for JSON schemas. The extra-fields policy applies to
    /// Avro records; a JSON Schema says itself whether extra properties are allowed (its
    /// validator walks serde_json's tree, so the record is copied into one for it).
    pub fn write(
        &self,
        value: &Doc<'_>,
        raw: &[u8],
        extra: ExtraFields,
        out: &mut Vec<u8>,
    ) -> Result<Converted, ConvertError> {
        let start = out.len();
        wire::write_header(self.id, out);
        let result = match &self.checker {
            Checker::Avro(plan) => plan.encode(value, extra, out),
            Checker::Json(validator) => match validator.validate(&value.to_value()) {
                Ok(()) => {
                    out.extend_from_slice(raw);
                    Ok(Converted::default())
                }
                Err(e) => Err(ConvertError {
                    pointer: e.instance_path().to_string(),
                    kind: Reason::of_json_schema(e.kind()),
                    reason: e.to_string(),
                }),
            },
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;
    use serde_json::json;

    use super::*;

    /// A schema with a field of every kind the validator encodes.
    const EVERY_KIND: &str = r#"{"type":"record","name":"Event","fields":[
        {"name":"event_id","type":"string"},
        {"name":"n","type":"int"},
        {"name":"big","type":["null","long"],"default":null},
        {"name":"ratio","type":"double","default":0},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["a","b"]},"default":"a"},
        {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
        {"name":"attrs","type":{"type":"map","values":"long"},"default":{}},
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"},"default":0},
        {"name":"day","type":{"type":"int","logicalType":"date"},"default":0},
        {"name":"id","type":{"type":"string","logicalType":"uuid"},"default":"00000000-0000-0000-0000-000000000000"},
        {"name":"price","type":["null",{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}],"default":null},
        {"name":"inner","type":["null",{"type":"record","name":"Inner","fields":[{"name":"x","type":"float"},{"name":"raw","type":{"type":"fixed","name":"F","size":2}}]}],"default":null}
    ]}"#;

    const WORDS: &[&str] = &[
        "event_id",
        "n",
        "big",
        "ratio",
        "kind",
        "tags",
        "attrs",
        "at",
        "day",
        "id",
        "price",
        "inner",
        "x",
        "raw",
        "a",
        "b",
        "2026-12-05",
        "2026-12-05T10:00:00Z",
        "12.34",
        "1e3",
        "00000000-0000-0000-0000-000000000000",
        "ab",
        "\u{ff}\u{1}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Whatever a log line holds, the validator's check ends in a clean value or a reason,
        /// never a panic; and every clean Avro value is a datum of the schema, all of it.
        #[test]
        fn any_line_is_encoded_as_a_datum_of_its_schema_or_refused(
            line in proptest::prop_oneof![
                logpipe_devkit::fuzz::hostile_text(WORDS),
                // Records with the required fields, so that most reach the encoder.
                (
                    logpipe_devkit::fuzz::word(WORDS),
                    -5i64..5,
                    proptest::collection::vec(
                        (logpipe_devkit::fuzz::word(WORDS), logpipe_devkit::fuzz::json_value(WORDS)),
                        0..8,
                    ),
                )
                    .prop_map(|(id, n, fields)| {
                        let mut record = serde_json::Map::from_iter(fields);
                        record.insert("event_id".into(), id.into());
                        record.insert("n".into(), n.into());
                        Value::Object(record).to_string().into_bytes()
                    }),
            ],
            reject in proptest::prelude::any::<bool>(),
        ) {
            let avro = CompiledSchema::compile(7, SchemaType::Avro, EVERY_KIND).unwrap();
            let schema = apache_avro::Schema::parse_str(EVERY_KIND).unwrap();
            let json = CompiledSchema::compile(8, SchemaType::Json, r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0},"tags":{"type":"array","items":{"type":"string","maxLength":3}}},"additionalProperties":false}"#).unwrap();
            let extra = if reject { ExtraFields::Reject } else { ExtraFields::Drop };
            let Ok(value) = Doc::parse(&line) else {
                return Ok(());
            };
            let mut out = Vec::new();
            match avro.write(&value, &line, extra, &mut out) {
                Ok(_) => {
                    let (id, mut datum) = wire::parse(&out).unwrap();
                    proptest::prop_assert_eq!(id, 7);
                    let decoded = apache_avro::from_avro_datum(&schema, &mut datum, None);
                    proptest::prop_assert!(decoded.is_ok(), "{decoded:?} from {value}");
                    proptest::prop_assert!(datum.is_empty(), "bytes left after the datum of {value}");
                }
                Err(e) => {
                    proptest::prop_assert!(!e.reason.is_empty());
                    proptest::prop_assert!(out.is_empty());
                }
            }
            match json.write(&value, &line, extra, &mut out) {
                Ok(_) => proptest::prop_assert_eq!(wire::parse(&out).unwrap(), (8, &line[..])),
                Err(e) => proptest::prop_assert!(!e.reason.is_empty()),
            }
        }
    }

    #[test]
    fn avro_output_is_confluent_wire_format() {
        let schema = CompiledSchema::compile(
            0x0102_0304,
            SchemaType::Avro,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        schema
            .write(
                &Doc::of(&json!({"a": 1})),
                b"{\"a\":1}",
                ExtraFields::Drop,
                &mut out,
            )
            .unwrap();
        assert_eq!(out, wire::encode(0x0102_0304, &[2]));
        let err = schema
            .write(
                &Doc::of(&json!({"a": "x"})),
                b"",
                ExtraFields::Drop,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.pointer, "/a");
        assert_eq!(out.len(), 6, "a failed write leaves the buffer as it was");
    }

    #[test]
    fn json_schema_validates_and_keeps_the_original_bytes() {
        let text = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0},"tags":{"type":"array","items":{"type":"string"}}}}"#;
        let schema = CompiledSchema::compile(9, SchemaType::Json, text).unwrap();
        let raw = br#"{"n": 3,  "tags":["a"]}"#;
        let mut out = Vec::new();
        schema
            .write(
                &Doc::parse(raw).unwrap(),
                raw,
                ExtraFields::Reject,
                &mut out,
            )
            .unwrap();
        assert_eq!(wire::parse(&out), Ok((9, &raw[..])));
        let err = schema
            .write(
                &Doc::of(&json!({"n": 1, "tags": ["a", 2]})),
                b"",
                ExtraFields::Drop,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.pointer, "/tags/1");
        let err = schema
            .write(
                &Doc::of(&json!({"n": -1})),
                b"",
                ExtraFields::Drop,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.pointer, "/n");
        let err = schema
            .write(&Doc::of(&json!({})), b"", ExtraFields::Drop, &mut out)
            .unwrap_err();
        assert_eq!(err.pointer, "");
    }

    #[test]
    fn unusable_schemas_are_errors() {
        assert!(CompiledSchema::compile(1, SchemaType::Avro, r#"{"type":"recrd"}"#).is_err());
        assert!(CompiledSchema::compile(1, SchemaType::Json, r#"{"type": 5}"#).is_err());
        assert!(CompiledSchema::compile(1, SchemaType::Json, "not json").is_err());
    }

    #[test]
    fn the_game_schemas_compile() {
        for name in ["login", "level_up", "purchase", "pvp_win", "reward"] {
            let path = format!(
                "{}/../devkit/schemas/game.{name}.avsc",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).unwrap();
            CompiledSchema::compile(1, SchemaType::Avro, &text)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
}
