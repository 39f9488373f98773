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
        "Duration": {"description": "whole milliseconds, or text like 500ms, 5s, 2m, 1h, 1d", "oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^ *[0-9]+ ?(ms|s|m|h|d)( *[0-9]+ ?(ms|s|m|h|d))* *$"}]},
        "Condition": {"type": "object", "additionalProperties": false, "required": ["field"], "properties": {
            "field": {"type": "string", "minLength": 1, "description": "field path, dots for nesting"},
            "value": {"description": "the constant compared with (a list for `in`; false for `exists` asks for absence)"},
            "type": {"type": "string", "enum": ["string", "integer", "int", "long", "float", "double", "number", "bool", "boolean"]},
            "operator": {"type": "string", "enum": ["equals", "not_equals", "gt", "gte", "lt", "lte", "in", "contains", "exists"]}}},
        "Step": {"type": "object", "additionalProperties": false, "description": "conditions (all must hold) or a CEL `when`, and how many events", "properties": {
            "conditions": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}},
            "when": {"type": "string", "description": "a CEL expression over the event's fields"},
            "count": {"type": "integer", "minimum": 1},
            "topic": {"type": "string", "description": "the seed's per-step source"},
            "keyed": {"type": "string", "description": "the seed's per-step key"}}},
        "Window": {"type": "object", "additionalProperties": false, "description": "one kind: tumbling, sliding (with every), session or events", "properties": {
            "tumbling": {"$ref": "#/components/schemas/Duration"},
            "sliding": {"$ref": "#/components/schemas/Duration"},
            "every": {"$ref": "#/components/schemas/Duration"},
            "session": {"$ref": "#/components/schemas/Duration"},
            "events": {"type": "integer", "minimum": 1}}},
        "RuleDocument": {"type": "object", "additionalProperties": false, "description": "the CEP rule document of the architecture; its meaning (fields of the source's schemas, expressions, timing) is checked on PUT; `source` may instead be given per step (`topic`), as in the seed", "required": ["event_list"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9._-]{1,100}$"},
            "source": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}]},
            "key": {"type": "string", "description": "field path of the key; `keyed` is the seed's name for it"},
            "keyed": {"type": "string"},
            "event_time": {"type": "string"},
            "max_out_of_order": {"$ref": "#/components/schemas/Duration"},
            "allowed_lateness": {"$ref": "#/components/schemas/Duration"},
            "from": {"type": "string", "description": "latest (default), earliest or an RFC 3339 time"},
            "schedule": {"type": "object", "additionalProperties": false, "properties": {
                "starts_at": {"type": "string", "format": "date-time"},
                "ends_at": {"type": "string", "format": "date-time"}}},
            "event_list": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Step"}},
            "when": {"type": "string"},
            "ordered": {"type": "boolean"},
            "within": {"$ref": "#/components/schemas/Duration"},
            "window": {"$ref": "#/components/schemas/Window"},
            "group_by": {"description": "aggregate rules (not served yet: refused)"},
            "aggregates": {"description": "aggregate rules (not served yet: refused)"},
            "alert": {"description": "aggregate rules (not served yet: refused)"},
            "repeat": {"type": "string", "enum": ["once", "every"]},
            "output": {"type": "object", "additionalProperties": false, "properties": {
                "topic": {"type": "string"},
                "value": {"description": "copied into each match"}}}}},
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
            "events_waiting": {"type": "integer"},
            "watermark": {"type": "string", "nullable": true}}},
        "TestAnswer": {"type": "object", "required": ["records_read", "matches"], "properties": {
            "records_read": {"type": "integer"}, "undecodable": {"type": "integer"},
            "events_matched": {"type": "integer"}, "keys": {"type": "integer"},
            "matches": {"type": "integer"}, "shown": {"type": "array", "items": {"type": "object"}}}}
    })
}
