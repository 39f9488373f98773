//! A record parsed for checking: a JSON tree whose strings borrow from the record's bytes.
//!
//! serde_json's `Value` copies every key and string into an allocation of its own and keeps an
//! object's members in a B-tree: a ~500 B game event took about thirty allocations to parse and
//! as many frees after, a fifth of the validator's CPU (README, "Where the time goes"). A [`Doc`]
//! borrows every string that has no escapes and keeps an object's members in one vector, in
//! document order; a lookup scans it, which for the few dozen fields of a log record is as fast
//! as a tree. The JSON it accepts, and the errors for JSON it does not, are serde_json's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Doc<'a>>),
    Object(Object<'a>),
}

/// An object's members in document order. A key given twice keeps its last value, in the place
/// of its first, as serde_json's `Value` keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Doc<'a>)>);

/// Up to this many members, a repeated key is found by scanning; beyond, through an index.
const SCANNED_MEMBERS: usize = 32;

/// The members an object has room for before its first reallocation.
const MEMBERS_AT_ONCE: usize = 16;

impl<'a> Doc<'a> {
    /// Parses one JSON document (serde_json's grammar, nesting limit and error messages).
    ///
    /// The record's UTF-8 is checked once, whole: serde_json's slice reader checks each string
    /// on its own, a call per key and value that cost more than one pass over the record. Bytes
    /// that are not UTF-8 go to the slice reader, for serde_json's error with its position.
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<Doc<'a>> {
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// A view of a `Value` (schema defaults, tests), borrowing its strings.
    pub fn of(value: &'a Value) -> Doc<'a> {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(Cow::Borrowed(s)),
            Value::Array(items) => Doc::Array(items.iter().map(Doc::of).collect()),
            Value::Object(map) => Doc::Object(Object(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Doc::of(v)))
                    .collect(),
            )),
        }
    }

    /// The same value as serde_json's tree, for checkers that need one (JSON Schema).
    pub fn to_value(&self) -> Value {
        match self {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(*b),
            Doc::Number(n) => Value::Number(n.clone()),
            Doc::String(s) => Value::String(s.as_ref().to_owned()),
            Doc::Array(items) => Value::Array(items.iter().map(Doc::to_value).collect()),
            Doc::Object(object) => Value::Object(
                object
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Doc::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// A member of an object; `None` for a missing key or a value that is not an object.
    pub fn get(&self, key: &str) -> Option<&Doc<'a>> {
        match self {
            Doc::Object(object) => object.get(key),
            _ => None,
        }
    }

    /// The JSON kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Doc::Null => "null",
            Doc::Bool(_) => "boolean",
            Doc::Number(_) => "number",
            Doc::String(_) => "string",
            Doc::Array(_) => "array",
            Doc::Object(_) => "object",
        }
    }
}

/// Compact JSON, as serde_json prints a `Value` (error messages quote values this way).
impl fmt::Display for Doc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_value().fmt(f)
    }
}

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Doc<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A member looked for at `next` first, then everywhere; on a find, `next` moves past it.
    /// Records mostly list their fields in the schema's order, so looking a schema's fields up
    /// in turn this way compares one key per field instead of scanning from the start each time.
    pub fn get_from(&self, key: &str, next: &mut usize) -> Option<&Doc<'a>> {
        let at = match self.0.get(*next) {
            Some((k, _)) if k == key => *next,
            _ => self.0.iter().position(|(k, _)| k == key)?,
        };
        *next = at + 1;
        Some(&self.0[at].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Doc<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Doc<'de>, D::Error> {
        deserializer.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Doc<'de>, E> {
        Ok(Doc::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Doc<'de>, E> {
        Ok(Number::from_f64(n).map_or(Doc::Null, Doc::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }

    fn visit_none<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
        // serde_json gives no size hint: room for a log record's usual dozen or so members at
        // once, rather than growing through 4, 8 and 16 (a reallocation and copy each, ~3% of
        // the validator's CPU in the pipeline's profile).
        let mut members: Vec<(Cow<'de, str>, Doc<'de>)> = Vec::with_capacity(MEMBERS_AT_ONCE);
        let mut index: Option<HashMap<Cow<'de, str>, usize>> = None;
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            let seen = match &index {
                Some(index) => index.get(&key).copied(),
                None => members.iter().position(|(k, _)| *k == key),
            };
            match seen {
                Some(i) => members[i].1 = value,
                None => {
                    if let Some(index) = &mut index {
                        index.insert(key.clone(), members.len());
                    }
                    members.push((key, value));
                    if index.is_none() && members.len() == SCANNED_MEMBERS {
                        index = Some(
                            members
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (k.clone(), i))
                                .collect(),
                        );
                    }
                }
            }
        }
        Ok(Doc::Object(Object(members)))
    }
}

/// An object key, borrowed when it has no escapes (serde's `Cow<str>` would always copy).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Documents whose parse must equal serde_json's `Value`, member order aside.
    #[test]
    fn parses_what_serde_json_parses() {
        let cases: &[&str] = &[
            "null",
            "true",
            "-12",
            "18446744073709551615",
            "1.5e3",
            r#""plain""#,
            r#""esc\"aped \u00e9""#,
            "[1, [2, {}], []]",
            r#"{"a": 1, "b": {"c": [null, "x"]}, "d\n": "e"}"#,
            r#"{"dup": 1, "other": 2, "dup": 3}"#,
        ];
        for text in cases {
            let doc = Doc::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(doc.to_value(), value, "{text}");
            assert_eq!(Doc::of(&value).to_value(), value, "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let doc = Doc::parse(br#"{"key": "value", "k\u0065y2": "v\n"}"#).unwrap();
        let Doc::Object(object) = &doc else {
            panic!("not an object: {doc:?}")
        };
        let kinds: Vec<(bool, bool)> = object
            .0
            .iter()
            .map(|(k, v)| {
                let Doc::String(v) = v else { panic!("{v:?}") };
                (matches!(k, Cow::Borrowed(_)), matches!(v, Cow::Borrowed(_)))
            })
            .collect();
        assert_eq!(kinds, [(true, true), (false, false)]);
    }

    /// A repeated key keeps its last value and its first place, below and above the scan limit.
    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        for members in [3, SCANNED_MEMBERS + 5] {
            let mut text = String::from("{");
            for i in 0..members {
                text.push_str(&format!("\"k{i}\": {i}, "));
            }
            text.push_str("\"k1\": \"last\", \"k0\": \"again\"}");
            let doc = Doc::parse(text.as_bytes()).unwrap();
            let Doc::Object(object) = &doc else {
                panic!("not an object")
            };
            assert_eq!(object.len(), members, "{members} members");
            assert_eq!(object.get("k1"), Some(&Doc::String("last".into())));
            let keys: Vec<&str> = object.keys().take(2).collect();
            assert_eq!(keys, ["k0", "k1"]);
            assert_eq!(doc.get("k0").and_then(Doc::as_str), Some("again"));
        }
    }

    #[test]
    fn errors_are_serde_json_s() {
        for text in [r#"{"a": 1"#, "[1,]", r#"{"a" 1}"#, "", "nul"] {
            let ours = Doc::parse(text.as_bytes()).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Value>(text).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{text:?}");
        }
        // Not UTF-8: serde_json's error names the place.
        for bytes in [&b"{\"a\": \"\xff\"}"[..], b"[\"ok\", \"\xc3\x28\"]"] {
            let ours = Doc::parse(bytes).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Value>(bytes)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs);
            assert!(ours.contains("column"), "{ours}");
        }
    }

    #[test]
    fn members_are_found_from_a_hint_or_anywhere() {
        let doc = Doc::parse(br#"{"a": 1, "b": 2, "c": 3}"#).unwrap();
        let Doc::Object(object) = &doc else {
            panic!("not an object")
        };
        let mut next = 0;
        let found: Vec<Option<String>> = ["a", "b", "missing", "c", "a"]
            .iter()
            .map(|key| object.get_from(key, &mut next).map(Doc::to_string))
            .collect();
        assert_eq!(
            found,
            [Some("1"), Some("2"), None, Some("3"), Some("1")].map(|v| v.map(String::from))
        );
        assert_eq!(next, 1, "after a find, the hint is the next member");
    }

    #[test]
    fn display_is_compact_json() {
        let doc = Doc::parse(br#"{ "a" : [1, "x"] }"#).unwrap();
        assert_eq!(doc.to_string(), r#"{"a":[1,"x"]}"#);
    }
}
