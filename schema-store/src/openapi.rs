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
    pub(crate) query: &'static [QueryParam],
    /// Request body component, if any.
    pub(crate) body: Option<&'static str>,
    /// Success response component.
    pub(crate) response: &'static str,
}

/// A query parameter.
pub(crate) struct QueryParam {
    name: &'static str,
    description: &'static str,
    /// `true` or `false`; otherwise any text.
    flag: bool,
}

impl QueryParam {
    pub(crate) const fn flag(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam {
            name,
            description,
            flag: true,
        }
    }

    pub(crate) const fn text(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam {
            name,
            description,
            flag: false,
        }
    }

    fn parameter(&self) -> Value {
        let schema = if self.flag {
            json!({"type": "boolean"})
        } else {
            json!({"type": "string"})
        };
        json!({"name": self.name, "in": "query", "required": false, "description": self.description, "schema": schema})
    }
}

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

/// The document of `operations`, whose bodies have the media type `content_type`.
pub(crate) fn build<'a>(
    operations: impl IntoIterator<Item = &'a Operation>,
    content_type: &str,
) -> Value {
    let mut paths = Map::new();
    for route in operations {
        let mut parameters: Vec<Value> = path_parameters(route.path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_schema(name)}))
            .collect();
        parameters.extend(route.query.iter().map(QueryParam::parameter));
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
    for (from, links) in LINKS {
        let (method, path) = from.split_once(' ').expect("\"METHOD /path\"");
        let Some(operation) = paths
            .get_mut(path)
            .and_then(|item| item.get_mut(method.to_ascii_lowercase()))
        else {
            continue;
        };
        let mut out = Map::new();
        for (name, to, parameters) in *links {
            let (method, path) = to.split_once(' ').expect("\"METHOD /path\"");
            out.insert(
                (*name).to_owned(),
                json!({
                    "operationRef": format!("#/paths/{}/{}", path.replace('~', "~0").replace('/', "~1"), method.to_ascii_lowercase()),
                    "parameters": parameters.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<Map<_, _>>()
                }),
            );
        }
        operation["responses"]["200"]["links"] = Value::Object(out);
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

/// OpenAPI links: where an answer leads (with the values it hands on), so a stateful client or
/// fuzzer can chain a registration to the reads and deletes of what it created.
type Links = &'static [(
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
)];
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

/// `{name}` segments of a path.
pub(crate) fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
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
