//! What the rules API's OpenAPI document says beyond its route table: the bodies, and the rules
//! of path parameters. `core::openapi` builds the document from the table in `api`.

use logpipe_core::openapi::Api;
use serde_json::{json, Value};

/// A path parameter's rules: a request the document allows is one the API takes.
fn path_schema(name: &str) -> Value {
    match name {
        // rule::check_name.
        "name" => json!({"type": "string", "pattern": "^[a-z0-9._-]{1,100}$"}),
        "version" => json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        _ => json!({"type": "string"}),
    }
}

/// The CEP worker's part of its document.
pub(crate) fn api() -> Api {
    Api {
        title: "logpipe-cep rules API",
        version: env!("CARGO_PKG_VERSION"),
        description: "Complex event processing rules, defined at run time. A rule document's meaning (fields of the source's schemas, expressions, timing) is checked on PUT: a document that does not hold is a 400 naming the key at fault. Errors are {error, key}.",
        content_type: "application/json",
        components: components(),
        path_schema,
        links: &[],
    }
}

fn components() -> Value {
    let stored = json!({"type": "object", "required": ["name", "version", "created_at"], "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "created_at": {"type": "string"},
        "document": {"description": "absent for a deleted rule's version", "nullable": true, "type": "object"},
        "replay": {"type": "object", "description": "per source partition, the history a replaying version reads: [start, end)"}
    }});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"},
            "key": {"type": "string", "description": "the document key at fault"}}},
        "RuleDocument": {"type": "object", "description": "see the CEP rule document in the architecture", "required": ["source", "event_list"], "properties": {
            "source": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "key": {"type": "string"},
            "event_list": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "ordered": {"type": "boolean"},
            "within": {"type": "string"},
            "window": {"type": "object"},
            "repeat": {"type": "string", "enum": ["once", "every"]},
            "output": {"type": "object"}}},
        "StoredRule": stored,
        "RuleList": {"type": "array", "items": stored},
        "PutAnswer": {"type": "object", "required": ["name", "version", "created_at", "warnings"], "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "created_at": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}}}},
        "DeleteAnswer": {"type": "object", "required": ["name", "version", "deleted"], "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "deleted": {"type": "boolean"}}},
        "Status": {"type": "object", "required": ["name", "version", "state"], "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"},
            "state": {"type": "string", "enum": ["scheduled", "active", "ended"]},
            "scope": {"type": "string"},
            "events_seen": {"type": "integer"}, "events_matched": {"type": "integer"},
            "matches_emitted": {"type": "integer"}, "keys_held": {"type": "integer"},
            "late_events": {"type": "integer"}, "events_held": {"type": "integer"},
            "watermark": {"type": "string", "nullable": true}}},
        "TestAnswer": {"type": "object", "required": ["records_read", "matches"], "properties": {
            "records_read": {"type": "integer"}, "undecodable": {"type": "integer"},
            "events_matched": {"type": "integer"}, "keys": {"type": "integer"},
            "matches": {"type": "integer"}, "shown": {"type": "array", "items": {"type": "object"}}}}
    })
}
