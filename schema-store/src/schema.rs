//! Schema types, parsing and the stored (canonical) form.
//!
//! Confluent keeps the *string* a schema parses back to, not the text a client sent: for Avro
//! that is Java's `Schema.toString()` (compact, fixed key order, `{"type":"string"}` becomes
//! `"string"`, namespaces written only where they change, custom properties in document order),
//! for JSON Schema it is the compact JSON. Two registrations that differ only in whitespace or key
//! order therefore share one id, here as in Confluent. Validity is decided by `apache-avro` and
//! `jsonschema`; this module only re-emits what they accepted.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ordered_json::Json;

/// The schema types this store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum SchemaType {
    Avro,
    Json,
}

impl SchemaType {
    pub(crate) const ALL: [SchemaType; 2] = [SchemaType::Avro, SchemaType::Json];

    /// Parses the `schemaType` request field; absent means AVRO, as in Confluent.
    pub(crate) fn from_request(value: Option<&str>) -> Result<SchemaType, String> {
        match value.map(str::to_ascii_uppercase).as_deref() {
            None | Some("AVRO") => Ok(SchemaType::Avro),
            Some("JSON") => Ok(SchemaType::Json),
            Some(other) => Err(format!(
                "Invalid schema type {other}: this store supports AVRO and JSON"
            )),
        }
    }

    pub(crate) fn is_avro(&self) -> bool {
        *self == SchemaType::Avro
    }

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
        }
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference from one schema to a version of another subject, named as the referring schema
/// names it (for Avro, the referenced type's full name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Reference {
    pub(crate) name: String,
    pub(crate) subject: String,
    pub(crate) version: i32,
}

/// A schema parsed for compatibility checks.
#[derive(Debug)]
pub(crate) enum Parsed {
    Avro(AvroParsed),
    Json(serde_json::Value),
}

/// An Avro schema and the named types its references bring in.
#[derive(Debug)]
pub(crate) struct AvroParsed {
    pub(crate) schema: apache_avro::Schema,
    pub(crate) referenced: Vec<apache_avro::Schema>,
}

/// A schema that another references: the reference's name and the stored text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Referenced {
    /// For Avro the referenced type's full name; for JSON Schema the URI (often relative, like
    /// `address.json`) that the referring schema's `$ref` uses.
    pub(crate) name: String,
    pub(crate) text: String,
}

/// Parses `text` as `schema_type`, with `referenced` everything it references (transitively,
/// dependencies first). Returns the stored form and the parsed schema; the error is the
/// parser's message, for a 42201.
pub(crate) fn parse(
    schema_type: SchemaType,
    text: &str,
    referenced: &[Referenced],
) -> Result<(String, Parsed), String> {
    match schema_type {
        SchemaType::Avro => {
            let texts: Vec<&str> = referenced.iter().map(|r| r.text.as_str()).collect();
            let (schema, referenced_schemas) =
                apache_avro::Schema::parse_str_with_list(text, &texts)
                    .map_err(|e| format!("Invalid schema: {}", error_chain(&e)))?;
            let tree = Json::parse(text).map_err(|e| format!("Invalid schema: {e}"))?;
            let mut known = HashSet::new();
            for r in &texts {
                let tree = Json::parse(r).map_err(|e| format!("Invalid referenced schema: {e}"))?;
                collect_names(&tree, None, &mut known);
            }
            let canonical = AvroCanonical { known }.schema(&tree, None).to_compact();
            Ok((
                canonical,
                Parsed::Avro(AvroParsed {
                    schema,
                    referenced: referenced_schemas,
                }),
            ))
        }
        SchemaType::Json => {
            let tree = Json::parse(text).map_err(|e| format!("Invalid schema: {e}"))?;
            let value = tree.to_value();
            if !matches!(
                value,
                serde_json::Value::Object(_) | serde_json::Value::Bool(_)
            ) {
                return Err("Invalid schema: a JSON Schema is an object or a boolean".into());
            }
            jsonschema::meta::validate(&value).map_err(|e| format!("Invalid schema: {e}"))?;
            let references = JsonReferences::new(referenced)?;
            jsonschema::options()
                .with_retriever(references)
                .build(&value)
                .map_err(|e| format!("Invalid schema: {e}"))?;
            Ok((tree.to_compact(), Parsed::Json(value)))
        }
    }
}

/// JSON Schema references, served to the validator builder by URI. As in Confluent, a
/// reference's name is the URI a `$ref` resolves to; a relative name (`address.json`) resolves
/// against the default base URI, as a `$ref` in a schema without `$id` does. Nothing is ever
/// fetched from the network: a `$ref` to anything else makes the schema invalid.
struct JsonReferences(std::collections::HashMap<String, serde_json::Value>);

impl JsonReferences {
    fn new(referenced: &[Referenced]) -> Result<JsonReferences, String> {
        let mut by_uri = std::collections::HashMap::new();
        for r in referenced {
            let uri = jsonschema::uri::from_str(&r.name).map_err(|e| {
                format!(
                    "Invalid schema: reference name {:?} is not a URI: {e}",
                    r.name
                )
            })?;
            let value: serde_json::Value = serde_json::from_str(&r.text)
                .map_err(|e| format!("Invalid referenced schema {:?}: {e}", r.name))?;
            by_uri.insert(uri.as_str().to_owned(), value);
        }
        Ok(JsonReferences(by_uri))
    }
}

impl jsonschema::Retrieve for JsonReferences {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        self.0
            .get(uri.as_str())
            .cloned()
            .ok_or_else(|| format!("{} is not among the schema's references", uri.as_str()).into())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];
const SCHEMA_RESERVED: [&str; 10] = [
    "doc",
    "fields",
    "items",
    "name",
    "namespace",
    "size",
    "symbols",
    "values",
    "type",
    "aliases",
];
const FIELD_RESERVED: [&str; 6] = ["default", "doc", "name", "order", "type", "aliases"];

/// A full Avro name split as Java's `Schema.Name` does.
struct Name {
    name: String,
    space: Option<String>,
}

impl Name {
    /// `name` may be a full name; otherwise `namespace` (an empty one means none) or the
    /// enclosing namespace applies.
    fn new(name: &str, namespace: Option<&str>, enclosing: Option<&str>) -> Name {
        match name.rsplit_once('.') {
            Some((space, simple)) => Name {
                name: simple.to_owned(),
                space: Some(space.to_owned()),
            },
            None => {
                let space = namespace
                    .or(enclosing)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                Name {
                    name: name.to_owned(),
                    space,
                }
            }
        }
    }

    fn full(&self) -> String {
        match &self.space {
            Some(space) => format!("{space}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Java's `getQualified`: the short name where the namespace is the default one.
    fn qualified(&self, default_space: Option<&str>) -> String {
        match &self.space {
            None => self.name.clone(),
            Some(space) if Some(space.as_str()) == default_space => self.name.clone(),
            Some(_) => self.full(),
        }
    }
}

fn named(tree: &Json, enclosing: Option<&str>) -> Option<Name> {
    let name = tree.get("name")?.as_str()?;
    Some(Name::new(
        name,
        tree.get("namespace").and_then(Json::as_str),
        enclosing,
    ))
}

/// Collects the full names a schema defines, so that names referring to them can be qualified.
fn collect_names(tree: &Json, enclosing: Option<&str>, known: &mut HashSet<String>) {
    match tree {
        Json::Array(items) => items
            .iter()
            .for_each(|i| collect_names(i, enclosing, known)),
        Json::Object(_) => {
            let mut space = enclosing.map(str::to_owned);
            if let Some(name) = named(tree, enclosing) {
                known.insert(name.full());
                space = name.space.clone();
            }
            for key in ["type", "items", "values"] {
                if let Some(inner) = tree.get(key) {
                    collect_names(inner, space.as_deref(), known);
                }
            }
            if let Some(Json::Array(fields)) = tree.get("fields") {
                for field in fields {
                    if let Some(t) = field.get("type") {
                        collect_names(t, space.as_deref(), known);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Writes an Avro schema the way Java's `Schema.toString()` does.
struct AvroCanonical {
    known: HashSet<String>,
}

impl AvroCanonical {
    fn schema(&mut self, tree: &Json, space: Option<&str>) -> Json {
        match tree {
            Json::String(name) => Json::String(self.reference(name, space)),
            Json::Array(branches) => {
                Json::Array(branches.iter().map(|b| self.schema(b, space)).collect())
            }
            Json::Object(entries) => match tree.get("type") {
                Some(Json::String(t)) if PRIMITIVES.contains(&t.as_str()) => {
                    let props = props(entries, &SCHEMA_RESERVED);
                    if props.is_empty() {
                        Json::String(t.clone())
                    } else {
                        let mut out = vec![("type".to_owned(), Json::String(t.clone()))];
                        out.extend(props);
                        Json::Object(out)
                    }
                }
                Some(Json::String(t)) => match t.as_str() {
                    "record" | "error" | "enum" | "fixed" => {
                        self.named_type(t, tree, entries, space)
                    }
                    "array" | "map" => {
                        let key = if t == "array" { "items" } else { "values" };
                        let mut out = vec![("type".to_owned(), Json::String(t.clone()))];
                        if let Some(inner) = tree.get(key) {
                            out.push((key.to_owned(), self.schema(inner, space)));
                        }
                        out.extend(props(entries, &SCHEMA_RESERVED));
                        Json::Object(out)
                    }
                    other => Json::String(self.reference(other, space)),
                },
                Some(inner) => self.schema(inner, space),
                None => tree.clone(),
            },
            other => other.clone(),
        }
    }

    fn named_type(
        &mut self,
        kind: &str,
        tree: &Json,
        entries: &[(String, Json)],
        enclosing: Option<&str>,
    ) -> Json {
        let name = named(tree, enclosing).unwrap_or(Name {
            name: String::new(),
            space: None,
        });
        self.known.insert(name.full());
        let mut out = vec![("type".to_owned(), Json::String(kind.to_owned()))];
        out.push(("name".to_owned(), Json::String(name.name.clone())));
        match (&name.space, enclosing) {
            (Some(space), _) if Some(space.as_str()) != enclosing => {
                out.push(("namespace".to_owned(), Json::String(space.clone())))
            }
            (None, Some(_)) => out.push(("namespace".to_owned(), Json::String(String::new()))),
            _ => {}
        }
        let space = name.space.as_deref();
        if let Some(doc @ Json::String(_)) = tree.get("doc") {
            out.push(("doc".to_owned(), doc.clone()));
        }
        let mut reserved = SCHEMA_RESERVED.to_vec();
        match kind {
            "enum" => {
                if let Some(symbols) = tree.get("symbols") {
                    out.push(("symbols".to_owned(), symbols.clone()));
                }
                if let Some(default) = tree.get("default") {
                    out.push(("default".to_owned(), default.clone()));
                }
                reserved.push("default");
            }
            "fixed" => {
                if let Some(size) = tree.get("size") {
                    out.push(("size".to_owned(), size.clone()));
                }
            }
            _ => {
                let fields = match tree.get("fields") {
                    Some(Json::Array(fields)) => {
                        fields.iter().map(|f| self.field(f, space)).collect()
                    }
                    _ => Vec::new(),
                };
                out.push(("fields".to_owned(), Json::Array(fields)));
            }
        }
        out.extend(props(entries, &reserved));
        if let Some(Json::Array(aliases)) = tree.get("aliases") {
            if !aliases.is_empty() {
                let aliases = aliases
                    .iter()
                    .filter_map(Json::as_str)
                    .map(|a| Json::String(Name::new(a, None, space).qualified(space)))
                    .collect();
                out.push(("aliases".to_owned(), Json::Array(aliases)));
            }
        }
        Json::Object(out)
    }

    fn field(&mut self, field: &Json, space: Option<&str>) -> Json {
        let Json::Object(entries) = field else {
            return field.clone();
        };
        let mut out = Vec::new();
        if let Some(name) = field.get("name") {
            out.push(("name".to_owned(), name.clone()));
        }
        if let Some(t) = field.get("type") {
            out.push(("type".to_owned(), self.schema(t, space)));
        }
        if let Some(doc @ Json::String(_)) = field.get("doc") {
            out.push(("doc".to_owned(), doc.clone()));
        }
        if let Some(default) = field.get("default") {
            out.push(("default".to_owned(), default.clone()));
        }
        match field.get("order").and_then(Json::as_str) {
            Some(order) if !order.eq_ignore_ascii_case("ascending") => {
                out.push(("order".to_owned(), Json::String(order.to_ascii_lowercase())))
            }
            _ => {}
        }
        if let Some(Json::Array(aliases)) = field.get("aliases") {
            if !aliases.is_empty() {
                out.push(("aliases".to_owned(), Json::Array(aliases.clone())));
            }
        }
        out.extend(props(entries, &FIELD_RESERVED));
        Json::Object(out)
    }

    /// A type referred to by name: qualified relative to the current namespace.
    fn reference(&self, name: &str, space: Option<&str>) -> String {
        if PRIMITIVES.contains(&name) {
            return name.to_owned();
        }
        let in_space = Name::new(name, None, space);
        if self.known.contains(&in_space.full()) {
            return in_space.qualified(space);
        }
        Name::new(name, None, None).qualified(space)
    }
}

fn props(entries: &[(String, Json)], reserved: &[&str]) -> Vec<(String, Json)> {
    entries
        .iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVRO_WORDS: &[&str] = &[
        "type",
        "name",
        "fields",
        "items",
        "values",
        "symbols",
        "logicalType",
        "precision",
        "scale",
        "size",
        "namespace",
        "default",
        "aliases",
        "doc",
        "record",
        "enum",
        "array",
        "map",
        "fixed",
        "null",
        "boolean",
        "int",
        "long",
        "float",
        "double",
        "bytes",
        "string",
        "decimal",
        "date",
        "uuid",
        "timestamp-millis",
        "R",
        "a",
        "b",
        "ns.R",
    ];
    const JSON_WORDS: &[&str] = &[
        "type",
        "object",
        "properties",
        "required",
        "items",
        "minimum",
        "maximum",
        "enum",
        "const",
        "$ref",
        "#/definitions/x",
        "definitions",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "pattern",
        "[a-",
        "format",
        "date-time",
        "additionalProperties",
        "string",
        "integer",
        "number",
        "array",
        "boolean",
        "null",
        "x",
        "$id",
        "$schema",
    ];

    /// Avro schemas built from the spec's shapes (names may repeat, defaults may not fit:
    /// some are invalid on purpose).
    fn avro_schema() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::json;
        let name = proptest::sample::select(&["R", "S", "ns.T", "a"][..]);
        let leaf = prop_oneof![
            proptest::sample::select(
                &["null", "boolean", "int", "long", "float", "double", "bytes", "string"][..]
            )
            .prop_map(|t| json!(t)),
            proptest::sample::select(&["date", "timestamp-millis", "uuid", "decimal"][..])
                .prop_map(|l| match l {
                    "date" => json!({"type": "int", "logicalType": l}),
                    "timestamp-millis" => json!({"type": "long", "logicalType": l}),
                    "uuid" => json!({"type": "string", "logicalType": l}),
                    _ => json!({"type": "bytes", "logicalType": l, "precision": 9, "scale": 2}),
                }),
            (
                name.clone(),
                proptest::collection::vec(proptest::sample::select(&["a", "b", "c"][..]), 0..3)
            )
                .prop_map(|(n, symbols)| json!({"type": "enum", "name": n, "symbols": symbols})),
            (name.clone(), 0usize..20)
                .prop_map(|(n, size)| json!({"type": "fixed", "name": n, "size": size})),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                inner
                    .clone()
                    .prop_map(|items| json!({"type": "array", "items": items})),
                inner
                    .clone()
                    .prop_map(|values| json!({"type": "map", "values": values})),
                inner.clone().prop_map(|t| json!(["null", t])),
                (
                    name.clone(),
                    proptest::collection::vec(
                        (
                            proptest::sample::select(&["f", "g", "h"][..]),
                            inner,
                            any::<bool>()
                        ),
                        0..4
                    )
                )
                    .prop_map(|(n, fields)| {
                        let fields: Vec<_> = fields
                            .into_iter()
                            .map(|(f, t, default)| {
                                if default {
                                    json!({"name": f, "type": t, "default": null})
                                } else {
                                    json!({"name": f, "type": t})
                                }
                            })
                            .collect();
                        json!({"type": "record", "name": n, "fields": fields})
                    }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// A schema built from Avro's shapes is refused with a reason or stored in a form that
        /// parses to itself and to the same schema.
        #[test]
        fn avro_schemas_are_refused_or_stored_canonically(schema in avro_schema()) {
            let text = schema.to_string();
            if let Ok((stored, Parsed::Avro(parsed))) = parse(SchemaType::Avro, &text, &[]) {
                match parse(SchemaType::Avro, &stored, &[]) {
                    Ok((again, Parsed::Avro(reparsed))) => {
                        proptest::prop_assert_eq!(&again, &stored);
                        proptest::prop_assert_eq!(
                            reparsed.schema.canonical_form(),
                            parsed.schema.canonical_form()
                        );
                    }
                    other => proptest::prop_assert!(false, "{stored} from {text}: {other:?}"),
                }
            }
        }

        /// Whatever a client registers is refused with a reason or stored, never a panic; and
        /// what is stored parses again to itself, so lookups by text find it.
        #[test]
        fn any_document_is_refused_or_stored_in_a_form_that_parses_to_itself(
            avro in logpipe_devkit::fuzz::hostile_text(AVRO_WORDS),
            json in logpipe_devkit::fuzz::hostile_text(JSON_WORDS),
        ) {
            for (schema_type, text) in [(SchemaType::Avro, avro), (SchemaType::Json, json)] {
                let text = String::from_utf8_lossy(&text);
                match parse(schema_type, &text, &[]) {
                    Ok((stored, _)) => {
                        let again = parse(schema_type, &stored, &[]);
                        proptest::prop_assert!(again.is_ok(), "{stored} from {text}: {again:?}");
                        proptest::prop_assert_eq!(again.unwrap().0, stored);
                    }
                    Err(reason) => proptest::prop_assert!(reason.starts_with("Invalid")),
                }
            }
        }
    }

    fn stored(text: &str) -> String {
        parse(SchemaType::Avro, text, &[]).unwrap().0
    }

    #[test]
    fn primitive_objects_collapse_to_names() {
        assert_eq!(stored(r#"{"type": "string"}"#), r#""string""#);
        assert_eq!(stored(r#" "int" "#), r#""int""#);
        assert_eq!(
            stored(r#"{"type":"string","logicalType":"uuid"}"#),
            r#"{"type":"string","logicalType":"uuid"}"#
        );
    }

    #[test]
    fn records_are_written_in_java_order() {
        let text = r#"{
            "fields": [
                {"type": {"type": "long"}, "name": "id", "doc": "the id", "order": "ascending"},
                {"default": null, "name": "tag", "type": ["null", "string"], "aliases": ["label"], "x-owner": "ops"},
                {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "n", "type": "int"}]}},
                {"name": "again", "type": "Inner"},
                {"name": "other", "type": {"type": "enum", "name": "Kind", "namespace": "x.y", "symbols": ["A", "B"], "default": "A"}}
            ],
            "namespace": "com.example", "name": "Event", "type": "record", "aliases": ["com.example.Old", "Older"], "doc": "an event"
        }"#;
        assert_eq!(
            stored(text),
            concat!(
                r#"{"type":"record","name":"Event","namespace":"com.example","doc":"an event","fields":["#,
                r#"{"name":"id","type":"long","doc":"the id"},"#,
                r#"{"name":"tag","type":["null","string"],"default":null,"aliases":["label"],"x-owner":"ops"},"#,
                r#"{"name":"inner","type":{"type":"record","name":"Inner","fields":[{"name":"n","type":"int"}]}},"#,
                r#"{"name":"again","type":"Inner"},"#,
                r#"{"name":"other","type":{"type":"enum","name":"Kind","namespace":"x.y","symbols":["A","B"],"default":"A"}}"#,
                r#"],"aliases":["Old","Older"]}"#
            )
        );
    }

    #[test]
    fn whitespace_and_key_order_do_not_change_the_stored_form() {
        let a = stored(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        let b = stored("{ \"name\" : \"R\",\n \"fields\" : [ { \"type\" : \"int\", \"name\" : \"a\" } ], \"type\" : \"record\" }");
        assert_eq!(a, b);
    }

    #[test]
    fn references_are_written_as_names() {
        let text = r#"{"type":"record","name":"Address","namespace":"com.example","fields":[{"name":"city","type":"string"}]}"#;
        let referenced = vec![Referenced {
            name: "com.example.Address".into(),
            text: text.into(),
        }];
        let (text, _) = parse(
            SchemaType::Avro,
            r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"home","type":"Address"}]}"#,
            &referenced,
        )
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"record","name":"User","namespace":"com.example","fields":[{"name":"home","type":"Address"}]}"#
        );
        let err = parse(
            SchemaType::Avro,
            r#"{"type":"record","name":"U","fields":[{"name":"h","type":"Address"}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(err.starts_with("Invalid schema"), "{err}");
    }

    #[test]
    fn invalid_schemas_carry_the_parser_message() {
        let err = parse(SchemaType::Avro, r#"{"type":"record","name":"R"}"#, &[]).unwrap_err();
        assert!(err.starts_with("Invalid schema: "), "{err}");
        assert!(parse(SchemaType::Avro, "{not json", &[]).is_err());
        let err = parse(SchemaType::Json, r#"{"type": 12}"#, &[]).unwrap_err();
        assert!(err.starts_with("Invalid schema: "), "{err}");
        assert!(parse(SchemaType::Json, "[1]", &[]).is_err());
    }

    #[test]
    fn json_schemas_are_stored_compact_in_document_order() {
        let (text, _) = parse(SchemaType::Json, "{ \"type\": \"object\",\n \"properties\": { \"b\": {\"type\": \"string\"}, \"a\": {} } }", &[]).unwrap();
        assert_eq!(
            text,
            r#"{"type":"object","properties":{"b":{"type":"string"},"a":{}}}"#
        );
    }

    #[test]
    fn json_schema_references_resolve_by_name_and_nothing_else_is_fetched() {
        let address = Referenced {
            name: "address.json".into(),
            text: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
        };
        let customer = r#"{"type":"object","properties":{"home":{"$ref":"address.json"}}}"#;
        assert!(
            parse(SchemaType::Json, customer, &[])
                .unwrap_err()
                .contains("address.json"),
            "an unresolved $ref is invalid"
        );
        let (text, _) = parse(SchemaType::Json, customer, std::slice::from_ref(&address)).unwrap();
        assert_eq!(text, customer);
        let absolute = Referenced {
            name: "https://example.com/address.json".into(),
            ..address
        };
        let remote = r#"{"properties":{"home":{"$ref":"https://example.com/address.json"}}}"#;
        assert!(parse(SchemaType::Json, remote, &[absolute]).is_ok());
        assert!(
            parse(
                SchemaType::Json,
                r#"{"$ref":"https://example.org/elsewhere.json"}"#,
                &[]
            )
            .is_err(),
            "never fetched"
        );
    }

    #[test]
    fn schema_type_names() {
        assert_eq!(SchemaType::from_request(None).unwrap(), SchemaType::Avro);
        assert_eq!(
            SchemaType::from_request(Some("json")).unwrap(),
            SchemaType::Json
        );
        assert!(SchemaType::from_request(Some("PROTOBUF"))
            .unwrap_err()
            .contains("PROTOBUF"));
    }
}
