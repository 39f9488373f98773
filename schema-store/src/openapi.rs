//! What the schema store's OpenAPI document says beyond its route table: components, the rules
//! of path parameters, and links. `core::openapi` builds the document.

use logpipe_core::openapi::{Api, Links};
use serde_json::{json, Value};

/// What a path parameter may be: a request the document allows is one the API accepts.
fn path_schema(name: &str) -> Value {
    match name {
        // Confluent's rule: not empty, no control characters (42208 otherwise).
        "subject" => {
            json!({"type": "string", "minLength": 1, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"})
        }
        "version" => json!({"oneOf": [
            {"type": "integer", "minimum": 1, "maximum": i32::MAX},
            {"type": "string", "enum": ["latest"]}
        ]}),
        "id" => json!({"type": "integer", "minimum": 0, "maximum": i32::MAX}),
        _ => json!({"type": "string"}),
    }
}

/// Where a registration's answer leads (with the values it hands on), so a stateful client or
/// fuzzer can chain it to the reads and deletes of what it created.
const LINKS: &[(&str, Links)] = &[(
    "POST /subjects/{subject}/versions",
    &[
        (
            "SchemaById",
            "GET /schemas/ids/{id}",
            &[("id", "$response.body#/id")],
        ),
        (
            "SubjectsOfId",
            "GET /schemas/ids/{id}/subjects",
            &[("id", "$response.body#/id")],
        ),
        (
            "VersionsOfId",
            "GET /schemas/ids/{id}/versions",
            &[("id", "$response.body#/id")],
        ),
        (
            "Versions",
            "GET /subjects/{subject}/versions",
            &[("subject", "$request.path.subject")],
        ),
        (
            "LatestVersion",
            "GET /subjects/{subject}/versions/{version}",
            &[("subject", "$request.path.subject"), ("version", "latest")],
        ),
        (
            "DeleteLatestVersion",
            "DELETE /subjects/{subject}/versions/{version}",
            &[("subject", "$request.path.subject"), ("version", "latest")],
        ),
        (
            "DeleteSubject",
            "DELETE /subjects/{subject}",
            &[("subject", "$request.path.subject")],
        ),
    ],
)];

/// The schema store's part of its document; bodies are `content_type`.
pub(crate) fn api(content_type: &'static str) -> Api {
    Api {
        title: "logpipe-schema-store",
        version: env!("CARGO_PKG_VERSION"),
        description: "Confluent Schema Registry compatible API (AVRO and JSON schemas). Errors are {error_code, message} with Confluent's codes.",
        content_type,
        components: components(),
        path_schema,
        links: LINKS,
    }
}

fn components() -> Value {
    // Ids and versions are 32-bit, as in Confluent's API.
    let int32 = |description: &str| json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX, "description": description});
    let reference = json!({"type": "object", "required": ["name", "subject", "version"], "properties": {
        "name": {"type": "string"}, "subject": {"type": "string"}, "version": int32("the referenced version")}});
    json!({
        "Empty": {"type": "object"},
        "Int": {"type": "integer"},
        "IntList": {"type": "array", "items": {"type": "integer"}},
        "StringList": {"type": "array", "items": {"type": "string"}},
        "RawSchema": {"type": "string", "description": "the schema text itself"},
        "Reference": reference,
        "Error": {"type": "object", "properties": {"error_code": {"type": "integer"}, "message": {"type": "string"}}},
        "SchemaById": {"type": "object", "required": ["schema"], "properties": {
            "schema": {"type": "string"},
            "schemaType": {"type": "string", "enum": ["JSON"], "description": "absent for AVRO"},
            "references": {"type": "array", "items": {"$ref": "#/components/schemas/Reference"}}}},
        "SubjectVersion": {"type": "object", "required": ["subject", "version", "id", "schema"], "properties": {
            "subject": {"type": "string"}, "version": {"type": "integer"}, "id": {"type": "integer"},
            "schemaType": {"type": "string", "enum": ["JSON"], "description": "absent for AVRO"},
            "references": {"type": "array", "items": {"$ref": "#/components/schemas/Reference"}},
            "schema": {"type": "string"}}},
        "SubjectVersionList": {"type": "array", "items": {"type": "object", "properties": {"subject": {"type": "string"}, "version": {"type": "integer"}}}},
        "RegisterRequest": {"type": "object", "required": ["schema"], "description": "unknown fields (metadata, ruleSet...) are ignored", "properties": {
            "schema": {"type": "string"},
            "schemaType": {"type": "string", "enum": ["AVRO", "JSON"], "default": "AVRO"},
            "references": {"type": "array", "items": {"$ref": "#/components/schemas/Reference"}},
            "id": int32("IMPORT mode only"),
            "version": int32("IMPORT mode only")}},
        "RegisterResponse": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "CompatibilityResponse": {"type": "object", "properties": {"is_compatible": {"type": "boolean"}, "messages": {"type": "array", "items": {"type": "string"}}}},
        "ConfigRequest": {"type": "object", "properties": {"compatibility": {"$ref": "#/components/schemas/Level"}}},
        "ConfigResponse": {"type": "object", "properties": {"compatibilityLevel": {"$ref": "#/components/schemas/Level"}}},
        "Level": {"type": "string", "enum": ["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"]},
        "Mode": {"type": "object", "properties": {"mode": {"type": "string", "enum": ["READWRITE", "READONLY", "IMPORT"]}}},
        "OpenApi": {"type": "object"}
    })
}
