//! JSON Schema compatibility: is every document valid under the writer schema also valid under
//! the reader schema? (BACKWARD: the new schema accepts everything the old one accepted.)
//!
//! JSON Schema has no resolution rules, so this is a conservative structural check of the
//! keywords that change what a schema accepts: `type` (integer widens to number), `enum` and
//! `const`, numeric and length bounds, `multipleOf`, `pattern`, `format`, `uniqueItems`,
//! `required`, `properties` against `additionalProperties` (a property the writer may emit freely
//! in an open content model must be accepted by the reader), `items`, `anyOf`/`oneOf` branch by
//! branch. Keywords it cannot compare (`allOf`, `not`, `$ref`, `patternProperties`, `if`/`then`)
//! must be unchanged. A false "incompatible" is possible; a false "compatible" is what it avoids.

use serde_json::{Map, Value};

/// The reasons a reader schema does not accept everything the writer schema accepts.
pub(crate) fn can_read(writer: &Value, reader: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(writer, reader, "", &mut errors);
    errors
}

const LOWER_BOUNDS: [&str; 5] = [
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
];
const UPPER_BOUNDS: [&str; 5] = [
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
];
const MUST_BE_EQUAL: [&str; 10] = [
    "pattern",
    "format",
    "allOf",
    "not",
    "$ref",
    "patternProperties",
    "if",
    "then",
    "else",
    "prefixItems",
];

fn accepts_everything(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.keys().all(|k| {
            matches!(
                k.as_str(),
                "title" | "description" | "$schema" | "$id" | "$comment" | "default" | "examples"
            )
        }),
        _ => false,
    }
}

fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// The schema a property not listed in `properties` must satisfy.
fn additional(schema: &Map<String, Value>) -> Value {
    schema
        .get("additionalProperties")
        .cloned()
        .unwrap_or(Value::Bool(true))
}

fn object_items(schema: &Map<String, Value>) -> Option<&Value> {
    schema.get("items").filter(|i| !i.is_array())
}

fn check(writer: &Value, reader: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "#" } else { path };
    if writer == reader || accepts_everything(reader) || *writer == Value::Bool(false) {
        return;
    }
    let empty = Map::new();
    let (w, r) = match (writer, reader) {
        (_, Value::Bool(false)) => {
            errors.push(format!("{at}: the reader accepts nothing"));
            return;
        }
        (Value::Bool(true), Value::Object(r)) => (&empty, r),
        (Value::Object(w), Value::Object(r)) => (w, r),
        _ => {
            errors.push(format!("{at}: not a schema"));
            return;
        }
    };

    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(reader_branches)) = r.get(key) {
            let writer_branches: Vec<Value> = match w.get(key) {
                Some(Value::Array(b)) => b.clone(),
                _ => vec![without(w, key)],
            };
            let reader_rest = without(r, key);
            for (i, wb) in writer_branches.iter().enumerate() {
                let fits = reader_branches.iter().any(|rb| can_read(wb, rb).is_empty());
                if !fits {
                    errors.push(format!(
                        "{at}/{key}: writer branch {i} is accepted by no reader branch"
                    ));
                }
                check(wb, &reader_rest, path, errors);
            }
            return;
        }
        if let Some(Value::Array(writer_branches)) = w.get(key) {
            let writer_rest = without(w, key);
            for (i, wb) in writer_branches.iter().enumerate() {
                let mut branch_errors = Vec::new();
                check(
                    &merge(&writer_rest, wb),
                    reader,
                    &format!("{path}/{key}/{i}"),
                    &mut branch_errors,
                );
                errors.extend(branch_errors);
            }
            return;
        }
    }

    if let Some(rt) = types(r) {
        match types(w) {
            None => errors.push(format!(
                "{at}: the reader requires type {rt:?} where the writer allowed any type"
            )),
            Some(wt) => {
                for t in wt {
                    let widened = t == "integer" && rt.contains(&"number");
                    if !rt.contains(&t) && !widened {
                        errors.push(format!(
                            "{at}: type {t} is no longer accepted (reader types {rt:?})"
                        ));
                    }
                }
            }
        }
    }

    if let Some(Value::Array(reader_values)) = r.get("enum") {
        match (w.get("enum"), w.get("const")) {
            (Some(Value::Array(writer_values)), _) => {
                let removed: Vec<String> = writer_values
                    .iter()
                    .filter(|v| !reader_values.contains(v))
                    .map(Value::to_string)
                    .collect();
                if !removed.is_empty() {
                    errors.push(format!("{at}: enum values removed: {}", removed.join(", ")));
                }
            }
            (_, Some(c)) if reader_values.contains(c) => {}
            _ => errors.push(format!(
                "{at}: the reader restricts values to an enum the writer did not have"
            )),
        }
    }
    if let Some(c) = r.get("const") {
        if w.get("const") != Some(c) {
            errors.push(format!("{at}: the reader requires const {c}"));
        }
    }

    for key in LOWER_BOUNDS {
        if let Some(rb) = r.get(key).and_then(Value::as_f64) {
            match w.get(key).and_then(Value::as_f64) {
                Some(wb) if wb >= rb => {}
                Some(wb) => errors.push(format!("{at}: {key} raised from {wb} to {rb}")),
                None => errors.push(format!("{at}: {key} {rb} added")),
            }
        }
    }
    for key in UPPER_BOUNDS {
        if let Some(rb) = r.get(key).and_then(Value::as_f64) {
            match w.get(key).and_then(Value::as_f64) {
                Some(wb) if wb <= rb => {}
                Some(wb) => errors.push(format!("{at}: {key} lowered from {wb} to {rb}")),
                None => errors.push(format!("{at}: {key} {rb} added")),
            }
        }
    }
    if let Some(rm) = r.get("multipleOf").and_then(Value::as_f64) {
        let ok = w
            .get("multipleOf")
            .and_then(Value::as_f64)
            .is_some_and(|wm| (wm / rm).fract() == 0.0);
        if !ok {
            errors.push(format!(
                "{at}: multipleOf {rm} is stricter than the writer's"
            ));
        }
    }
    for key in MUST_BE_EQUAL {
        if r.get(key).is_some() && r.get(key) != w.get(key) {
            errors.push(format!("{at}: {key} changed"));
        }
    }
    if r.get("uniqueItems") == Some(&Value::Bool(true))
        && w.get("uniqueItems") != Some(&Value::Bool(true))
    {
        errors.push(format!("{at}: uniqueItems added"));
    }

    if let Some(Value::Array(required)) = r.get("required") {
        let writer_required = w
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for name in required.iter().filter(|n| !writer_required.contains(n)) {
            errors.push(format!("{at}/required: property {name} became required"));
        }
    }

    properties(w, r, path, errors);

    if object_items(w).is_some() || object_items(r).is_some() {
        let any = Value::Bool(true);
        check(
            object_items(w).unwrap_or(&any),
            object_items(r).unwrap_or(&any),
            &format!("{path}/items"),
            errors,
        );
    }
}

fn properties(
    w: &Map<String, Value>,
    r: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    let no_properties = Map::new();
    let wp = w
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&no_properties);
    let rp = r
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&no_properties);
    let (wa, ra) = (additional(w), additional(r));
    for (name, ws) in wp {
        let p = format!("{path}/properties/{name}");
        match rp.get(name) {
            Some(rs) => check(ws, rs, &p, errors),
            None if ra == Value::Bool(false) => errors.push(format!(
                "{p}: property removed while the reader forbids additional properties"
            )),
            None => check(ws, &ra, &p, errors),
        }
    }
    for (name, rs) in rp.iter().filter(|(name, _)| !wp.contains_key(*name)) {
        let mut added = Vec::new();
        check(&wa, rs, &format!("{path}/properties/{name}"), &mut added);
        if !added.is_empty() {
            errors.push(format!("{path}/properties/{name}: property added to an open content model (the writer may already emit it with any value)"));
        }
    }
    if w.contains_key("additionalProperties") || r.contains_key("additionalProperties") {
        check(&wa, &ra, &format!("{path}/additionalProperties"), errors);
    }
}

fn without(schema: &Map<String, Value>, key: &str) -> Value {
    let mut rest = schema.clone();
    rest.remove(key);
    Value::Object(rest)
}

/// A combinator branch with the keywords of its parent schema (which apply to it as well).
fn merge(parent: &Value, branch: &Value) -> Value {
    match (parent, branch) {
        (Value::Object(p), Value::Object(b)) => {
            let mut merged = p.clone();
            merged.extend(b.clone());
            Value::Object(merged)
        }
        _ => branch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(props: Value) -> Value {
        json!({"type": "object", "properties": props})
    }

    /// (writer, reader, does the reader accept everything the writer accepts)
    fn table() -> Vec<(Value, Value, bool)> {
        vec![
            // Types.
            (json!({"type": "string"}), json!({"type": "string"}), true),
            (json!({"type": "string"}), json!({"type": "integer"}), false),
            (json!({"type": "integer"}), json!({"type": "number"}), true),
            (json!({"type": "number"}), json!({"type": "integer"}), false),
            (
                json!({"type": "string"}),
                json!({"type": ["string", "null"]}),
                true,
            ),
            (
                json!({"type": ["string", "null"]}),
                json!({"type": "string"}),
                false,
            ),
            (json!({}), json!({"type": "string"}), false),
            (json!({"type": "string"}), json!({}), true),
            (json!({"type": "string"}), json!(true), true),
            (json!(true), json!({"type": "object"}), false),
            (json!({"type": "string"}), json!(false), false),
            (json!(false), json!({"type": "string"}), true),
            // Properties and open/closed content.
            (
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}, "b": {}})),
                true,
            ),
            (
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
                false,
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
                obj(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
                true,
            ),
            (
                obj(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}})),
                true,
            ),
            (
                obj(json!({"a": {"type": "string"}, "b": {"type": "string"}})),
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}),
                false,
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "additionalProperties": false}),
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "number"}}),
                true,
            ),
            // An open writer may emit any extra property; a reader constraining extras rejects some.
            (
                obj(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "number"}}),
                false,
            ),
            (
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "integer"}})),
                false,
            ),
            (
                obj(json!({"a": {"type": "integer"}})),
                obj(json!({"a": {"type": "number"}})),
                true,
            ),
            // additionalProperties itself.
            (
                json!({"type": "object"}),
                json!({"type": "object", "additionalProperties": false}),
                false,
            ),
            (
                json!({"type": "object", "additionalProperties": false}),
                json!({"type": "object"}),
                true,
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                false,
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                json!({"type": "object", "additionalProperties": {"type": "number"}}),
                true,
            ),
            // Required.
            (
                json!({"type": "object", "required": ["a"]}),
                json!({"type": "object"}),
                true,
            ),
            (
                json!({"type": "object"}),
                json!({"type": "object", "required": ["a"]}),
                false,
            ),
            (
                json!({"type": "object", "required": ["a", "b"]}),
                json!({"type": "object", "required": ["b"]}),
                true,
            ),
            // Enums and const.
            (
                json!({"enum": ["a", "b"]}),
                json!({"enum": ["a", "b", "c"]}),
                true,
            ),
            (
                json!({"enum": ["a", "b", "c"]}),
                json!({"enum": ["a", "b"]}),
                false,
            ),
            (
                json!({"type": "string"}),
                json!({"type": "string", "enum": ["a"]}),
                false,
            ),
            (
                json!({"type": "string", "enum": ["a"]}),
                json!({"type": "string"}),
                true,
            ),
            (json!({"const": "a"}), json!({"enum": ["a", "b"]}), true),
            // Numeric bounds.
            (
                json!({"type": "integer", "minimum": 5}),
                json!({"type": "integer", "minimum": 0}),
                true,
            ),
            (
                json!({"type": "integer", "minimum": 0}),
                json!({"type": "integer", "minimum": 5}),
                false,
            ),
            (
                json!({"type": "integer", "maximum": 10}),
                json!({"type": "integer", "maximum": 20}),
                true,
            ),
            (
                json!({"type": "integer", "maximum": 20}),
                json!({"type": "integer", "maximum": 10}),
                false,
            ),
            (
                json!({"type": "integer"}),
                json!({"type": "integer", "maximum": 10}),
                false,
            ),
            (
                json!({"type": "integer", "maximum": 10}),
                json!({"type": "integer"}),
                true,
            ),
            // Lengths, items, multipleOf, pattern.
            (
                json!({"type": "string", "maxLength": 10}),
                json!({"type": "string", "maxLength": 5}),
                false,
            ),
            (
                json!({"type": "string", "minLength": 2}),
                json!({"type": "string", "minLength": 1}),
                true,
            ),
            (
                json!({"type": "array", "items": {"type": "integer"}}),
                json!({"type": "array", "items": {"type": "number"}}),
                true,
            ),
            (
                json!({"type": "array", "items": {"type": "number"}}),
                json!({"type": "array", "items": {"type": "integer"}}),
                false,
            ),
            (
                json!({"type": "array", "maxItems": 3}),
                json!({"type": "array", "maxItems": 5}),
                true,
            ),
            (
                json!({"type": "integer", "multipleOf": 4}),
                json!({"type": "integer", "multipleOf": 2}),
                true,
            ),
            (
                json!({"type": "integer", "multipleOf": 2}),
                json!({"type": "integer", "multipleOf": 4}),
                false,
            ),
            (
                json!({"type": "string", "pattern": "^a"}),
                json!({"type": "string", "pattern": "^b"}),
                false,
            ),
            (
                json!({"type": "string", "pattern": "^a"}),
                json!({"type": "string"}),
                true,
            ),
            // Combinators.
            (
                json!({"type": "string"}),
                json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
                true,
            ),
            (
                json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
                json!({"type": "string"}),
                false,
            ),
            (
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
                true,
            ),
            (
                json!({"oneOf": [{"type": "string"}, {"type": "number"}]}),
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                false,
            ),
            // Nested objects.
            (
                obj(json!({"o": obj(json!({"x": {"type": "integer"}}))})),
                obj(
                    json!({"o": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}),
                ),
                false,
            ),
            (
                obj(
                    json!({"o": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}),
                ),
                obj(json!({"o": obj(json!({"x": {"type": "number"}}))})),
                true,
            ),
        ]
    }

    #[test]
    fn compatibility_table() {
        crate::compat::assert_table(&table(), 40, can_read);
    }

    #[test]
    fn messages_carry_a_path() {
        let errors = can_read(
            &obj(json!({"a": {"type": "string"}})),
            &obj(json!({"a": {"type": "integer"}})),
        );
        assert!(
            errors.iter().any(|e| e.starts_with("/properties/a")),
            "{errors:?}"
        );
    }
}
