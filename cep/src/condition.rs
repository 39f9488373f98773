//! One condition of a rule step, in the seed's shape:
//! `{field: gameCode, value: 1302, type: integer, operator: equals}`.
//!
//! The `type` says how the rule's value and the event's field are compared; an event whose field
//! cannot be read as that type does not satisfy the condition (it never fails the event). When the
//! type is absent it is taken from the value as written.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::field::FieldPath;

/// The comparison a condition makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Operator {
    #[default]
    Equals,
    NotEquals,
    Gt,
    Gte,
    Lt,
    Lte,
    /// The field's value is one of the listed values (`value` is a list).
    In,
    /// A string field contains the value, or an array field has it as an element.
    Contains,
    /// The field is present (`value: false`: absent).
    Exists,
}

/// How values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ValueType {
    String,
    #[serde(alias = "int", alias = "long")]
    Integer,
    #[serde(alias = "double", alias = "number")]
    Float,
    #[serde(alias = "boolean")]
    Bool,
}

/// A condition as written in a rule document.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionDoc {
    pub(crate) field: String,
    #[serde(default)]
    pub(crate) value: Value,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<ValueType>,
    #[serde(default)]
    pub(crate) operator: Operator,
}

/// A typed constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Typed {
    /// Reads a value as `kind`; the seed writes `value: "1302"` as well as `value: 1302`.
    fn read(value: &Value, kind: ValueType) -> Option<Typed> {
        match (kind, value) {
            (ValueType::String, Value::String(s)) => Some(Typed::Str(s.clone())),
            (ValueType::String, Value::Number(n)) => Some(Typed::Str(n.to_string())),
            (ValueType::String, Value::Bool(b)) => Some(Typed::Str(b.to_string())),
            (ValueType::Integer, Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Typed::Int),
            (ValueType::Integer, Value::String(s)) => s.trim().parse().ok().map(Typed::Int),
            (ValueType::Float, Value::Number(n)) => n.as_f64().map(Typed::Float),
            (ValueType::Float, Value::String(s)) => s.trim().parse().ok().map(Typed::Float),
            (ValueType::Bool, Value::Bool(b)) => Some(Typed::Bool(*b)),
            (ValueType::Bool, Value::String(s)) => s.trim().parse().ok().map(Typed::Bool),
            _ => None,
        }
    }

    /// The type a value has as written, for conditions without `type`.
    fn infer(value: &Value) -> Option<ValueType> {
        match value {
            Value::String(_) => Some(ValueType::String),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(ValueType::Integer),
            Value::Number(_) => Some(ValueType::Float),
            Value::Bool(_) => Some(ValueType::Bool),
            _ => None,
        }
    }

    fn compare(&self, other: &Typed) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Typed::Str(a), Typed::Str(b)) => Some(a.cmp(b)),
            (Typed::Int(a), Typed::Int(b)) => Some(a.cmp(b)),
            (Typed::Float(a), Typed::Float(b)) => a.partial_cmp(b),
            (Typed::Bool(a), Typed::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The key under which the rule index files an `equals` on this value; an event's field is
    /// looked up under the same key ([`index_keys`]).
    pub(crate) fn index_key(&self) -> Option<String> {
        match self {
            Typed::Str(s) => Some(format!("s:{s}")),
            Typed::Int(i) => Some(format!("i:{i}")),
            Typed::Bool(b) => Some(format!("b:{b}")),
            Typed::Float(_) => None,
        }
    }
}

/// The index keys an event's field value can satisfy an indexed `equals` under: as written, and
/// (for strings that read as numbers or booleans, and integral numbers) as the other types an
/// `equals` may compare it as.
pub(crate) fn index_keys(value: &Value) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    for kind in [ValueType::String, ValueType::Integer, ValueType::Bool] {
        if let Some(key) = Typed::read(value, kind).and_then(|t| t.index_key()) {
            keys.push(key);
        }
    }
    keys
}

/// What a condition compares against.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    One(Typed),
    List(Vec<Typed>),
    Presence(bool),
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) field: FieldPath,
    operator: Operator,
    kind: ValueType,
    operand: Operand,
}

impl Condition {
    /// Compiles a condition; the error says what is wrong with it (the caller names the key).
    pub(crate) fn compile(doc: &ConditionDoc) -> Result<Condition, String> {
        let field = FieldPath::parse(&doc.field)?;
        if doc.operator == Operator::Exists {
            let present = match &doc.value {
                Value::Null => true,
                Value::Bool(b) => *b,
                other => return Err(format!("exists takes value true or false, not {other}")),
            };
            return Ok(Condition {
                field,
                operator: doc.operator,
                kind: doc.kind.unwrap_or(ValueType::String),
                operand: Operand::Presence(present),
            });
        }
        let written = match (&doc.operator, &doc.value) {
            (Operator::In, Value::Array(items)) if items.is_empty() => {
                return Err("operator in has an empty list".into())
            }
            (Operator::In, Value::Array(items)) => items[0].clone(),
            (Operator::In, other) => {
                return Err(format!("operator in takes a list of values, not {other}"))
            }
            (_, v) => v.clone(),
        };
        let kind = match doc.kind.or_else(|| Typed::infer(&written)) {
            Some(kind) => kind,
            None => return Err(format!("value {} has no type; give `type`", doc.value)),
        };
        let read = |v: &Value| {
            Typed::read(v, kind)
                .ok_or_else(|| format!("value {v} is not a {kind:?}").to_lowercase())
        };
        let operand = match &doc.value {
            Value::Array(items) if doc.operator == Operator::In => {
                Operand::List(items.iter().map(read).collect::<Result<_, _>>()?)
            }
            v => Operand::One(read(v)?),
        };
        Ok(Condition {
            field,
            operator: doc.operator,
            kind,
            operand,
        })
    }

    /// The value an `equals` condition compares with, for the rule index.
    pub(crate) fn indexable(&self) -> Option<String> {
        match (&self.operator, &self.operand) {
            (Operator::Equals, Operand::One(value)) => value.index_key(),
            _ => None,
        }
    }

    /// Whether the event satisfies the condition.
    pub(crate) fn holds(&self, event: &Value) -> bool {
        let found = self.field.get(event);
        if let Operand::Presence(present) = self.operand {
            return found.is_some() == present;
        }
        let Some(found) = found else {
            return false;
        };
        if self.operator == Operator::Contains {
            return self.contains(found);
        }
        let Some(actual) = Typed::read(found, self.kind) else {
            return false;
        };
        use std::cmp::Ordering::*;
        match &self.operand {
            Operand::One(want) => {
                let Some(order) = actual.compare(want) else {
                    return false;
                };
                match self.operator {
                    Operator::Equals => order == Equal,
                    Operator::NotEquals => order != Equal,
                    Operator::Gt => order == Greater,
                    Operator::Gte => order != Less,
                    Operator::Lt => order == Less,
                    Operator::Lte => order != Greater,
                    Operator::In | Operator::Contains | Operator::Exists => false,
                }
            }
            Operand::List(items) => items.iter().any(|i| actual.compare(i) == Some(Equal)),
            Operand::Presence(_) => false,
        }
    }

    fn contains(&self, found: &Value) -> bool {
        let Operand::One(want) = &self.operand else {
            return false;
        };
        match (found, want) {
            (Value::String(s), Typed::Str(part)) => s.contains(part.as_str()),
            (Value::Array(items), want) => items.iter().any(|item| {
                Typed::read(item, self.kind)
                    .is_some_and(|t| t.compare(want).is_some_and(|o| o.is_eq()))
            }),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn condition(doc: Value) -> Condition {
        Condition::compile(&serde_json::from_value(doc).unwrap()).unwrap()
    }

    #[test]
    fn the_seeds_conditions_hold_as_written() {
        let event = json!({"event": "kill", "gameCode": 1302, "useSkill": true, "member": {"playerId": "m1"}});
        let table = [
            (
                json!({"field": "event", "value": "kill", "type": "string", "operator": "equals"}),
                true,
            ),
            (
                json!({"field": "gameCode", "value": 1302, "type": "integer", "operator": "equals"}),
                true,
            ),
            (
                json!({"field": "gameCode", "value": "1302", "type": "integer", "operator": "equals"}),
                true,
            ),
            (
                json!({"field": "useSkill", "value": true, "type": "bool", "operator": "equals"}),
                true,
            ),
            (
                json!({"field": "useSkill", "value": false, "type": "bool"}),
                false,
            ),
            (
                json!({"field": "gameCode", "value": 1301, "type": "integer", "operator": "equals"}),
                false,
            ),
            (
                json!({"field": "gameCode", "value": 1302, "operator": "not_equals"}),
                false,
            ),
            (
                json!({"field": "gameCode", "value": 1000, "operator": "gt"}),
                true,
            ),
            (
                json!({"field": "gameCode", "value": 1302, "operator": "gte"}),
                true,
            ),
            (
                json!({"field": "gameCode", "value": 1302, "operator": "lt"}),
                false,
            ),
            (
                json!({"field": "gameCode", "value": 1302.5, "operator": "lte", "type": "float"}),
                true,
            ),
            (
                json!({"field": "gameCode", "value": [1, 1302], "operator": "in"}),
                true,
            ),
            (
                json!({"field": "event", "value": ["login", "logout"], "operator": "in"}),
                false,
            ),
            (
                json!({"field": "event", "value": "il", "operator": "contains"}),
                true,
            ),
            (
                json!({"field": "member.playerId", "operator": "exists"}),
                true,
            ),
            (
                json!({"field": "member.nothing", "operator": "exists"}),
                false,
            ),
            (
                json!({"field": "member.nothing", "operator": "exists", "value": false}),
                true,
            ),
            // A field of another type never satisfies a condition, and never fails the event.
            (
                json!({"field": "event", "value": 3, "type": "integer"}),
                false,
            ),
            (json!({"field": "missing", "value": "x"}), false),
        ];
        for (doc, want) in table {
            assert_eq!(condition(doc.clone()).holds(&event), want, "{doc}");
        }
    }

    #[test]
    fn array_fields_contain_elements() {
        let event = json!({"tags": ["pvp", "ranked"], "ids": [3, 5]});
        assert!(
            condition(json!({"field": "tags", "value": "ranked", "operator": "contains"}))
                .holds(&event)
        );
        assert!(condition(
            json!({"field": "ids", "value": 5, "operator": "contains", "type": "integer"})
        )
        .holds(&event));
        assert!(!condition(
            json!({"field": "ids", "value": 4, "operator": "contains", "type": "integer"})
        )
        .holds(&event));
    }

    #[test]
    fn bad_conditions_say_why() {
        let table = [
            (
                json!({"field": "a", "value": "x", "type": "integer"}),
                "not a integer",
            ),
            (
                json!({"field": "a", "value": "x", "operator": "in"}),
                "list",
            ),
            (
                json!({"field": "a", "value": [], "operator": "in"}),
                "empty",
            ),
            (json!({"field": "a", "value": {"x": 1}}), "no type"),
            (json!({"field": "a..b", "value": 1}), "segment"),
            (
                json!({"field": "a", "value": 3, "operator": "exists"}),
                "true or false",
            ),
        ];
        for (doc, want) in table {
            let err =
                Condition::compile(&serde_json::from_value(doc.clone()).unwrap()).unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
        let unknown = serde_json::from_value::<ConditionDoc>(
            json!({"field": "a", "value": 1, "operator": "eq"}),
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown variant"));
    }

    #[test]
    fn index_keys_cover_every_type_an_equals_reads() {
        assert_eq!(index_keys(&json!("1302")), vec!["s:1302", "i:1302"]);
        assert_eq!(index_keys(&json!(1302)), vec!["s:1302", "i:1302"]);
        assert_eq!(index_keys(&json!(true)), vec!["s:true", "b:true"]);
        let indexed = condition(json!({"field": "gameCode", "value": 1302, "type": "integer"}));
        assert_eq!(indexed.indexable().as_deref(), Some("i:1302"));
        assert_eq!(
            condition(json!({"field": "g", "value": 3, "operator": "gt"})).indexable(),
            None
        );
    }
}
