//! `GET /openapi.json`: an OpenAPI 3 document generated from the API's route table, so it
//! describes exactly the surface the router serves. The table hands each route's [`Operation`]
//! in; this module knows nothing else of the API.

use axum::http::Method;
use logpipe_core::auth::Role;
use serde_json::{json, Map, Value};

/// What the document says about one route.
pub(crate) struct Operation {
    pub(crate) method: Method,
    /// In axum's syntax, which is OpenAPI's: `/subjects/{subject}`.
    pub(crate) path: &'static str,
    pub(crate) role: Role,
    pub(crate) summary: &'static str,
    /// Query parameters: (name, description).
    pub(crate) query: &'static [(&'static str, &'static str)],
    /// Request body component, if any.
    pub(crate) body: Option<&'static str>,
    /// Success response component.
    pub(crate) response: &'static str,
}

/// The document of `operations`, whose bodies have the media type `content_type`.
pub(crate) fn build<'a>(
    operations: impl IntoIterator<Item = &'a Operation>,
    content_type: &str,
) -> Value {
    let mut paths = Map::new();
    for route in operations {
        let mut parameters: Vec<Value> = path_parameters(route.path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, description)| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})));
        let mut operation = json!({
            "summary": route.summary,
            "x-required-role": match route.role { Role::Read => "read", Role::Write => "write", Role::Admin => "admin" },
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{}", route.response)}}}},
                "default": {"description": "Error", "content": {content_type: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if let Some(body) = route.body {
            operation["requestBody"] = json!({"required": true, "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "logpipe-schema-store",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Confluent Schema Registry compatible API (AVRO and JSON schemas). Errors are {error_code, message} with Confluent's codes."
        },
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": components()
        },
        "security": [{"basic": []}],
        "paths": paths
    })
}

/// `{name}` segments of a path.
pub(crate) fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn components() -> Value {
    let reference = json!({"type": "object", "required": ["name", "subject", "version"], "properties": {
        "name": {"type": "string"}, "subject": {"type": "string"}, "version": {"type": "integer"}}});
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
            "id": {"type": "integer", "description": "IMPORT mode only"},
            "version": {"type": "integer", "description": "IMPORT mode only"}}},
        "RegisterResponse": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "CompatibilityResponse": {"type": "object", "properties": {"is_compatible": {"type": "boolean"}, "messages": {"type": "array", "items": {"type": "string"}}}},
        "ConfigRequest": {"type": "object", "properties": {"compatibility": {"$ref": "#/components/schemas/Level"}}},
        "ConfigResponse": {"type": "object", "properties": {"compatibilityLevel": {"$ref": "#/components/schemas/Level"}}},
        "Level": {"type": "string", "enum": ["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"]},
        "Mode": {"type": "object", "properties": {"mode": {"type": "string", "enum": ["READWRITE", "READONLY", "IMPORT"]}}},
        "OpenApi": {"type": "object"}
    })
}
