//! `GET /openapi.json`: an OpenAPI 3 document generated from the route table in [`crate::api`],
//! so it describes exactly the surface the router serves.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::api::routes;
use crate::auth::Role;

/// The document, built once.
pub(crate) fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

fn build() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let mut parameters: Vec<Value> = path_parameters(route.path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, description)| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})));
        let mut operation = json!({
            "summary": route.summary,
            "x-required-role": match route.role { Role::Read => "read", Role::Write => "write", Role::Admin => "admin" },
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": {crate::api::CONTENT_TYPE: {"schema": {"$ref": format!("#/components/schemas/{}", route.response)}}}},
                "default": {"description": "Error", "content": {crate::api::CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if let Some(body) = route.body {
            operation["requestBody"] = json!({"required": true, "content": {crate::api::CONTENT_TYPE: {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let document = document();
        let paths = document["paths"].as_object().unwrap();
        let mut documented = 0;
        for (path, item) in paths {
            documented += item.as_object().unwrap().len();
            for (_, operation) in item.as_object().unwrap() {
                // Every $ref resolves.
                for reference in [
                    &operation["responses"]["200"]["content"][crate::api::CONTENT_TYPE]["schema"]
                        ["$ref"],
                    &operation["requestBody"]["content"][crate::api::CONTENT_TYPE]["schema"]
                        ["$ref"],
                ] {
                    if let Some(r) = reference.as_str() {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(
                            document["components"]["schemas"].get(name).is_some(),
                            "{path}: dangling {r}"
                        );
                    }
                }
            }
        }
        let routes = routes();
        assert_eq!(documented, routes.len());
        for route in &routes {
            let operation = &paths[route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {} is not documented",
                route.method,
                route.path
            );
            let params: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(params, path_parameters(route.path).collect::<Vec<_>>());
        }
    }
}
