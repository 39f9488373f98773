//! JSON -> Avro binary, compiled once per schema.
//!
//! A schema is turned into an [`AvroPlan`] (a tree of [`Node`]s with records in a table, so
//! recursive types work) when its id is first seen; each record is then encoded by walking the
//! plan and the parsed JSON together, writing Avro binary straight into a reused buffer. Nothing
//! resolves names or builds an `apache_avro::Value` per record: that path rebuilt a resolved
//! schema per call and cost ~90% of encode time.
//!
//! The rules (each has a table-driven test below):
//! - records by field name; a missing field takes its default (pre-encoded at compile time) or
//!   is invalid; extra fields are dropped and counted, or rejected ([`ExtraFields`]);
//! - null, boolean, int and long (integers only, range-checked), float, double, string;
//! - bytes and fixed from a string of code points U+0000..U+00FF (Avro's JSON encoding), fixed
//!   with the exact size;
//! - enum symbols; arrays; maps; nested records;
//! - unions: `{"<branch name>": value}` (Avro's JSON encoding) picks that branch; a bare value
//!   picks the first branch it fits;
//! - logical types: timestamp-millis/micros/nanos (and local-) from an integer or an RFC 3339
//!   string, date from `YYYY-MM-DD` or an integer, time-millis/micros from an integer in the day,
//!   uuid checked, decimal from a string or a number (no rounding: more fractional digits than
//!   the scale, or more digits than the precision, is invalid).
//!
//! Every failure carries the JSON Pointer of the failing field.

use std::collections::HashMap;
use std::str::FromStr;

use apache_avro::schema::{Name, RecordSchema, Schema};
use bigdecimal::BigDecimal;
use serde_json::Value;

use crate::doc::{Doc, Object};

use crate::reason::Reason;

/// What to do with JSON fields the record schema does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraFields {
    /// Leave them out of the Avro record and count them (the default: producers may add fields
    /// before the schema does).
    #[default]
    Drop,
    /// Dead-letter the record.
    Reject,
}

/// A record that does not fit its schema: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {reason}")]
pub struct ConvertError {
    /// JSON Pointer (RFC 6901) of the failing field; empty for the whole document.
    pub pointer: String,
    /// The failure's kind (the metric label).
    pub kind: Reason,
    pub reason: String,
}

/// A schema that cannot be compiled into a plan.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("not a valid Avro schema: {0}")]
    Parse(#[from] apache_avro::Error),
    #[error("{0}")]
    Unsupported(String),
}

/// An Avro schema compiled for encoding JSON records.
#[derive(Debug)]
pub struct AvroPlan {
    root: Node,
    records: Vec<RecordPlan>,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Fixed(usize),
    Enum(std::sync::Arc<EnumPlan>),
    Array(Box<Node>),
    Map(Box<Node>),
    /// Index into [`AvroPlan::records`].
    Record(usize),
    Union(Box<[Branch]>),
    Date,
    TimeMillis,
    TimeMicros,
    /// Timestamps: units per second (1_000, 1_000_000 or 1_000_000_000).
    Timestamp(i64),
    Uuid,
    Decimal {
        precision: u64,
        scale: i64,
        fixed: Option<usize>,
    },
}

#[derive(Debug)]
struct EnumPlan {
    name: String,
    symbols: Vec<String>,
}

#[derive(Debug, Clone)]
struct Branch {
    /// The names the `{"<name>": value}` form may use: the type name, and for named types the
    /// full and the simple name.
    names: Vec<String>,
    node: Node,
}

#[derive(Debug)]
struct RecordPlan {
    name: String,
    fields: Vec<FieldPlan>,
}

#[derive(Debug)]
struct FieldPlan {
    name: String,
    node: Node,
    /// The default's Avro encoding, computed once.
    default: Option<Box<[u8]>>,
}

/// The outcome of one successful conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Converted {
    /// JSON fields left out because the schema does not have them.
    pub dropped_fields: usize,
}

impl AvroPlan {
    /// Parses and compiles a schema given as Avro JSON text.
    pub fn parse(schema: &str) -> Result<AvroPlan, CompileError> {
        AvroPlan::compile(&Schema::parse_str(schema)?)
    }

    /// Compiles a parsed schema.
    pub fn compile(schema: &Schema) -> Result<AvroPlan, CompileError> {
        let mut compiler = Compiler::default();
        let root = compiler.node(schema)?;
        let mut plan = AvroPlan {
            root,
            records: Vec::with_capacity(compiler.records.len()),
        };
        let mut pending_defaults = Vec::new();
        for (index, record) in compiler.records.into_iter().enumerate() {
            let record = record.expect("every reserved record is compiled");
            let mut fields = Vec::with_capacity(record.fields.len());
            for (field_index, (name, node, default)) in record.fields.into_iter().enumerate() {
                if let Some(default) = default {
                    pending_defaults.push((index, field_index, default));
                }
                fields.push(FieldPlan {
                    name,
                    node,
                    default: None,
                });
            }
            plan.records.push(RecordPlan {
                name: record.name,
                fields,
            });
        }
        // Defaults are encoded once every record exists, so a default may use any record type.
        for (record, field, default) in pending_defaults {
            let plan_field = &plan.records[record].fields[field];
            let mut out = Vec::new();
            let node = match &plan_field.node {
                // A union's default is a value of its first branch.
                Node::Union(branches) => {
                    write_long(&mut out, 0);
                    &branches[0].node
                }
                node => node,
            };
            let mut encoder = Encoder {
                plan: &plan,
                extra: ExtraFields::Reject,
                dropped: 0,
            };
            encoder
                .encode(node, &Doc::of(&default), &mut out)
                .map_err(|f| {
                    let e = f.finish();
                    CompileError::Unsupported(format!(
                        "default of field {}.{} does not fit its type: {}",
                        plan.records[record].name, plan_field.name, e
                    ))
                })?;
            plan.records[record].fields[field].default = Some(out.into_boxed_slice());
        }
        Ok(plan)
    }

    /// Encodes a JSON document as Avro binary, appending to `out`. On error `out` is left as it
    /// was.
    pub fn encode(
        &self,
        value: &Doc<'_>,
        extra: ExtraFields,
        out: &mut Vec<u8>,
    ) -> Result<Converted, ConvertError> {
        let start = out.len();
        let mut encoder = Encoder {
            plan: self,
            extra,
            dropped: 0,
        };
        match encoder.encode(&self.root, value, out) {
            Ok(()) => Ok(Converted {
                dropped_fields: encoder.dropped,
            }),
            Err(fail) => {
                out.truncate(start);
                Err(fail.finish())
            }
        }
    }
}

/// A record while compiling: fields hold their default JSON until every record exists.
struct PendingRecord {
    name: String,
    fields: Vec<(String, Node, Option<Value>)>,
}

#[derive(Default)]
struct Compiler {
    records: Vec<Option<PendingRecord>>,
    /// Named types by full name, for `Ref`s.
    named: HashMap<String, Node>,
}

fn fullname(name: &Name) -> String {
    name.fullname(None)
}

impl Compiler {
    fn node(&mut self, schema: &Schema) -> Result<Node, CompileError> {
        Ok(match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::String => Node::String,
            Schema::Bytes => Node::Bytes,
            Schema::Fixed(fixed) => self.define(&fixed.name, Node::Fixed(fixed.size)),
            Schema::Duration => Node::Fixed(12),
            Schema::Enum(e) => self.define(
                &e.name,
                Node::Enum(std::sync::Arc::new(EnumPlan {
                    name: fullname(&e.name),
                    symbols: e.symbols.clone(),
                })),
            ),
            Schema::Array(array) => Node::Array(Box::new(self.node(&array.items)?)),
            Schema::Map(map) => Node::Map(Box::new(self.node(&map.types)?)),
            Schema::Record(record) => self.record(record)?,
            Schema::Union(union) => {
                let mut branches = Vec::with_capacity(union.variants().len());
                for variant in union.variants() {
                    branches.push(Branch {
                        names: branch_names(variant),
                        node: self.node(variant)?,
                    });
                }
                Node::Union(branches.into_boxed_slice())
            }
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::Timestamp(1_000),
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::Timestamp(1_000_000),
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::Timestamp(1_000_000_000),
            Schema::Uuid => Node::Uuid,
            Schema::Decimal(decimal) => {
                let fixed = match decimal.inner.as_ref() {
                    Schema::Fixed(fixed) => {
                        self.define(&fixed.name, Node::Fixed(fixed.size));
                        Some(fixed.size)
                    }
                    _ => None,
                };
                Node::Decimal {
                    precision: decimal.precision as u64,
                    scale: decimal.scale as i64,
                    fixed,
                }
            }
            Schema::BigDecimal => {
                return Err(CompileError::Unsupported(
                    "the big-decimal logical type is not supported".into(),
                ))
            }
            Schema::Ref { name } => self.named.get(&fullname(name)).cloned().ok_or_else(|| {
                CompileError::Unsupported(format!("reference to undefined type {}", fullname(name)))
            })?,
        })
    }

    fn define(&mut self, name: &Name, node: Node) -> Node {
        self.named.insert(fullname(name), node.clone());
        node
    }

    fn record(&mut self, record: &RecordSchema) -> Result<Node, CompileError> {
        // Reserve the slot first so that fields may refer to the record itself.
        let index = self.records.len();
        self.records.push(None);
        let node = self.define(&record.name, Node::Record(index));
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            fields.push((
                field.name.clone(),
                self.node(&field.schema)?,
                field.default.clone(),
            ));
        }
        self.records[index] = Some(PendingRecord {
            name: fullname(&record.name),
            fields,
        });
        Ok(node)
    }
}

/// Names usable in the `{"<name>": value}` union form for a branch.
fn branch_names(schema: &Schema) -> Vec<String> {
    let named = |name: &Name| {
        let full = fullname(name);
        if full == name.name {
            vec![full]
        } else {
            vec![full, name.name.clone()]
        }
    };
    match schema {
        Schema::Record(r) => named(&r.name),
        Schema::Enum(e) => named(&e.name),
        Schema::Fixed(f) => named(&f.name),
        Schema::Ref { name } => named(name),
        Schema::Decimal(d) => match d.inner.as_ref() {
            Schema::Fixed(f) => named(&f.name),
            _ => vec!["bytes".into()],
        },
        Schema::Duration => vec!["fixed".into()],
        Schema::Null => vec!["null".into()],
        Schema::Boolean => vec!["boolean".into()],
        Schema::Int | Schema::Date | Schema::TimeMillis => vec!["int".into()],
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => vec!["long".into()],
        Schema::Float => vec!["float".into()],
        Schema::Double => vec!["double".into()],
        Schema::Bytes | Schema::BigDecimal => vec!["bytes".into()],
        Schema::String | Schema::Uuid => vec!["string".into()],
        Schema::Array(_) => vec!["array".into()],
        Schema::Map(_) => vec!["map".into()],
        Schema::Union(_) => Vec::new(),
    }
}

/// A failure on its way up: path segments are pushed innermost first.
#[derive(Debug)]
struct Fail {
    reversed_path: Vec<Segment>,
    kind: Reason,
    reason: String,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Fail {
    fn new(kind: Reason, reason: impl Into<String>) -> Fail {
        Fail {
            reversed_path: Vec::new(),
            kind,
            reason: reason.into(),
        }
    }

    fn at_key(mut self, key: &str) -> Fail {
        self.reversed_path.push(Segment::Key(key.to_owned()));
        self
    }

    fn at_index(mut self, index: usize) -> Fail {
        self.reversed_path.push(Segment::Index(index));
        self
    }

    fn finish(self) -> ConvertError {
        let mut pointer = String::new();
        for segment in self.reversed_path.iter().rev() {
            pointer.push('/');
            match segment {
                Segment::Key(key) => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
                Segment::Index(i) => pointer.push_str(&i.to_string()),
            }
        }
        ConvertError {
            pointer,
            kind: self.kind,
            reason: self.reason,
        }
    }
}

fn expected(what: &str, value: &Doc) -> Fail {
    Fail::new(
        Reason::WrongType,
        format!("expected {what}, got {}", value.kind()),
    )
}

struct Encoder<'p> {
    plan: &'p AvroPlan,
    extra: ExtraFields,
    dropped: usize,
}

impl Encoder<'_> {
    fn encode(&mut self, node: &Node, value: &Doc, out: &mut Vec<u8>) -> Result<(), Fail> {
        match node {
            Node::Null => match value {
                Doc::Null => Ok(()),
                _ => Err(expected("null", value)),
            },
            Node::Boolean => match value {
                Doc::Bool(b) => {
                    out.push(u8::from(*b));
                    Ok(())
                }
                _ => Err(expected("a boolean", value)),
            },
            Node::Int => {
                write_long(out, int_in(value, i32::MIN as i64, i32::MAX as i64, "int")?);
                Ok(())
            }
            Node::Long => {
                write_long(out, integer(value, "long")?);
                Ok(())
            }
            Node::Float => {
                let f = number(value, "float")?;
                let narrowed = f as f32;
                if narrowed.is_infinite() {
                    return Err(Fail::new(
                        Reason::OutOfRange,
                        format!("{f} is out of range for float"),
                    ));
                }
                out.extend_from_slice(&narrowed.to_le_bytes());
                Ok(())
            }
            Node::Double => {
                out.extend_from_slice(&number(value, "double")?.to_le_bytes());
                Ok(())
            }
            Node::String => {
                write_bytes(out, string(value, "a string")?.as_bytes());
                Ok(())
            }
            Node::Bytes => {
                write_bytes(out, &latin1(value)?);
                Ok(())
            }
            Node::Fixed(size) => {
                let bytes = latin1(value)?;
                if bytes.len() != *size {
                    return Err(Fail::new(
                        Reason::WrongSize,
                        format!("expected {size} bytes, got {}", bytes.len()),
                    ));
                }
                out.extend_from_slice(&bytes);
                Ok(())
            }
            Node::Enum(e) => {
                let symbol = string(value, "an enum symbol")?;
                match e.symbols.iter().position(|s| s == symbol) {
                    Some(i) => {
                        write_long(out, i as i64);
                        Ok(())
                    }
                    None => Err(Fail::new(
                        Reason::UnknownSymbol,
                        format!(
                            "{symbol:?} is not a symbol of enum {} ({})",
                            e.name,
                            e.symbols.join(", ")
                        ),
                    )),
                }
            }
            Node::Array(items) => {
                let Doc::Array(array) = value else {
                    return Err(expected("an array", value));
                };
                if !array.is_empty() {
                    write_long(out, array.len() as i64);
                    for (i, item) in array.iter().enumerate() {
                        self.encode(items, item, out).map_err(|f| f.at_index(i))?;
                    }
                }
                write_long(out, 0);
                Ok(())
            }
            Node::Map(values) => {
                let Doc::Object(map) = value else {
                    return Err(expected("an object (map)", value));
                };
                if !map.is_empty() {
                    write_long(out, map.len() as i64);
                    for (key, item) in map.iter() {
                        write_bytes(out, key.as_bytes());
                        self.encode(values, item, out).map_err(|f| f.at_key(key))?;
                    }
                }
                write_long(out, 0);
                Ok(())
            }
            Node::Record(index) => {
                let Doc::Object(object) = value else {
                    return Err(expected("an object (record)", value));
                };
                self.record(&self.plan.records[*index], object, out)
            }
            Node::Union(branches) => self.union(branches, value, out),
            Node::Date => {
                let days = match value {
                    Doc::String(s) => date_days(s)?,
                    _ => int_in(
                        value,
                        i32::MIN as i64,
                        i32::MAX as i64,
                        "a date (YYYY-MM-DD or days since 1970-01-01)",
                    )?,
                };
                write_long(out, days);
                Ok(())
            }
            Node::TimeMillis => {
                write_long(out, int_in(value, 0, 86_400_000 - 1, "time-millis")?);
                Ok(())
            }
            Node::TimeMicros => {
                write_long(out, int_in(value, 0, 86_400_000_000 - 1, "time-micros")?);
                Ok(())
            }
            Node::Timestamp(per_second) => {
                let t = match value {
                    Doc::String(s) => timestamp(s, *per_second)?,
                    _ => integer(value, "a timestamp (integer or RFC 3339 string)")?,
                };
                write_long(out, t);
                Ok(())
            }
            Node::Uuid => {
                let s = string(value, "a UUID string")?;
                uuid::Uuid::try_parse(s).map_err(|e| {
                    Fail::new(Reason::BadFormat, format!("{s:?} is not a UUID: {e}"))
                })?;
                write_bytes(out, s.as_bytes());
                Ok(())
            }
            Node::Decimal {
                precision,
                scale,
                fixed,
            } => {
                let bytes = decimal(value, *precision, *scale)?;
                match fixed {
                    None => write_bytes(out, &bytes),
                    Some(size) => {
                        if bytes.len() > *size {
                            return Err(Fail::new(
                                Reason::WrongSize,
                                format!(
                                    "decimal needs {} bytes; the fixed type has {size}",
                                    bytes.len()
                                ),
                            ));
                        }
                        let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
                        out.extend(std::iter::repeat_n(fill, size - bytes.len()));
                        out.extend_from_slice(&bytes);
                    }
                }
                Ok(())
            }
        }
    }

    fn record(
        &mut self,
        record: &RecordPlan,
        object: &Object<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        let mut present = 0;
        let mut next = 0;
        for field in &record.fields {
            match object.get_from(&field.name, &mut next) {
                Some(value) => {
                    present += 1;
                    self.encode(&field.node, value, out)
                        .map_err(|f| f.at_key(&field.name))?;
                }
                None => match &field.default {
                    Some(default) => out.extend_from_slice(default),
                    None => {
                        return Err(Fail::new(Reason::MissingField, "required field is missing")
                            .at_key(&field.name))
                    }
                },
            }
        }
        let extra = object.len() - present;
        if extra > 0 {
            if self.extra == ExtraFields::Reject {
                let key = object
                    .keys()
                    .find(|k| !record.fields.iter().any(|f| f.name == *k))
                    .expect("an extra key exists");
                return Err(Fail::new(
                    Reason::ExtraField,
                    format!(
                        "field is not in record {} (extra fields are rejected)",
                        record.name
                    ),
                )
                .at_key(key));
            }
            self.dropped += extra;
        }
        Ok(())
    }

    fn union(&mut self, branches: &[Branch], value: &Doc, out: &mut Vec<u8>) -> Result<(), Fail> {
        // Avro's JSON encoding: {"<branch name>": value}.
        if let Doc::Object(object) = value {
            if object.len() == 1 {
                let (name, inner) = object.iter().next().expect("one entry");
                if let Some(i) = branches
                    .iter()
                    .position(|b| b.names.iter().any(|n| n == name))
                {
                    write_long(out, i as i64);
                    return self
                        .encode(&branches[i].node, inner, out)
                        .map_err(|f| f.at_key(name));
                }
            }
        }
        // A bare value: the first branch it fits. Keep the failure that got deepest, as it is
        // the most useful one (a record branch missing one field, not "not null").
        let start = out.len();
        let mut best: Option<Fail> = None;
        for (i, branch) in branches.iter().enumerate() {
            if !could_fit(&branch.node, value) {
                continue;
            }
            write_long(out, i as i64);
            match self.encode(&branch.node, value, out) {
                Ok(()) => return Ok(()),
                Err(fail) => {
                    out.truncate(start);
                    if best
                        .as_ref()
                        .is_none_or(|b| fail.reversed_path.len() > b.reversed_path.len())
                    {
                        best = Some(fail);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| {
            let names: Vec<&str> = branches
                .iter()
                .filter_map(|b| b.names.first().map(String::as_str))
                .collect();
            Fail::new(
                Reason::NoUnionBranch,
                format!(
                    "{} does not match any branch of union [{}]",
                    value.kind(),
                    names.join(", ")
                ),
            )
        }))
    }
}

/// Whether the JSON kind of `value` can be a value of `node` at all; spares trying branches that
/// cannot match.
fn could_fit(node: &Node, value: &Doc) -> bool {
    matches!(
        (node, value),
        (Node::Null, Doc::Null)
            | (Node::Boolean, Doc::Bool(_))
            | (
                Node::Int
                    | Node::Long
                    | Node::Float
                    | Node::Double
                    | Node::TimeMillis
                    | Node::TimeMicros,
                Doc::Number(_)
            )
            | (
                Node::Date | Node::Timestamp(_) | Node::Decimal { .. },
                Doc::Number(_) | Doc::String(_)
            )
            | (
                Node::String | Node::Bytes | Node::Fixed(_) | Node::Enum(_) | Node::Uuid,
                Doc::String(_)
            )
            | (Node::Array(_), Doc::Array(_))
            | (Node::Map(_) | Node::Record(_), Doc::Object(_))
            | (Node::Union(_), _)
    )
}

fn integer(value: &Doc, what: &str) -> Result<i64, Fail> {
    match value {
        Doc::Number(n) => match n.as_i64() {
            Some(i) => Ok(i),
            None if n.is_u64() => Err(Fail::new(
                Reason::OutOfRange,
                format!("{n} is out of range for {what}"),
            )),
            None => Err(Fail::new(
                Reason::WrongType,
                format!("expected an integer ({what}), got {n}"),
            )),
        },
        _ => Err(expected(&format!("an integer ({what})"), value)),
    }
}

fn int_in(value: &Doc, min: i64, max: i64, what: &str) -> Result<i64, Fail> {
    let i = integer(value, what)?;
    if i < min || i > max {
        return Err(Fail::new(
            Reason::OutOfRange,
            format!("{i} is out of range for {what} ({min}..={max})"),
        ));
    }
    Ok(i)
}

fn number(value: &Doc, what: &str) -> Result<f64, Fail> {
    value
        .as_f64()
        .ok_or_else(|| expected(&format!("a number ({what})"), value))
}

fn string<'v>(value: &'v Doc, what: &str) -> Result<&'v str, Fail> {
    value.as_str().ok_or_else(|| expected(what, value))
}

/// Avro's JSON form of bytes: each character is one byte (U+0000..U+00FF).
fn latin1(value: &Doc) -> Result<Vec<u8>, Fail> {
    let s = string(value, "a string of bytes")?;
    s.chars()
        .map(|c| {
            u8::try_from(c as u32).map_err(|_| {
                Fail::new(
                    Reason::BadFormat,
                    format!("character {c:?} is not a byte (U+0000..U+00FF)"),
                )
            })
        })
        .collect()
}

/// Days from 1970-01-01 to a `YYYY-MM-DD` date.
fn date_days(s: &str) -> Result<i64, Fail> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]");
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    let date = time::Date::parse(s, FORMAT).map_err(|e| {
        Fail::new(
            Reason::BadFormat,
            format!("{s:?} is not a YYYY-MM-DD date: {e}"),
        )
    })?;
    Ok(date.to_julian_day() as i64 - UNIX_EPOCH_JULIAN_DAY)
}

/// An RFC 3339 timestamp in units of `1 / per_second` seconds since the epoch, rounded down.
fn timestamp(s: &str, per_second: i64) -> Result<i64, Fail> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Fail::new(
                Reason::BadFormat,
                format!("{s:?} is not an RFC 3339 timestamp: {e}"),
            )
        })?;
    let nanos_per_unit = 1_000_000_000 / per_second as i128;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(nanos_per_unit)).map_err(|_| {
        Fail::new(
            Reason::OutOfRange,
            format!("{s:?} is out of range for the timestamp"),
        )
    })
}

/// A decimal's unscaled value as big-endian two's complement bytes (minimal length).
fn decimal(value: &Doc, precision: u64, scale: i64) -> Result<Vec<u8>, Fail> {
    let text = match value {
        Doc::String(s) => s.to_string(),
        Doc::Number(n) => n.to_string(),
        _ => return Err(expected("a decimal (string or number)", value)),
    };
    let d = BigDecimal::from_str(&text).map_err(|e| {
        Fail::new(
            Reason::BadFormat,
            format!("{text:?} is not a decimal number: {e}"),
        )
    })?;
    if d.normalized().fractional_digit_count() > scale {
        return Err(Fail::new(
            Reason::WrongSize,
            format!("{text} has more than {scale} digits after the point"),
        ));
    }
    let scaled = d.with_scale(scale);
    if scaled.digits() > precision {
        return Err(Fail::new(
            Reason::WrongSize,
            format!(
                "{text} has more than {precision} digits (precision {precision}, scale {scale})"
            ),
        ));
    }
    let (unscaled, _) = scaled.into_bigint_and_scale();
    Ok(unscaled.to_signed_bytes_be())
}

/// Avro `long`/`int`: zig-zag, then base-128 varint.
fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;
    use serde_json::json;

    use super::*;

    /// Encodes `input` with `schema`, decodes the output with apache-avro and returns it.
    fn round_trip(
        schema: &str,
        input: &Value,
        extra: ExtraFields,
    ) -> Result<(Avro, Converted), ConvertError> {
        let plan = AvroPlan::parse(schema).unwrap_or_else(|e| panic!("schema {schema}: {e}"));
        let mut out = vec![0xAA]; // existing content must stay
        let converted = plan.encode(&Doc::of(input), extra, &mut out)?;
        assert_eq!(out[0], 0xAA);
        let parsed = Schema::parse_str(schema).unwrap();
        let mut reader = &out[1..];
        let decoded = apache_avro::from_avro_datum(&parsed, &mut reader, None)
            .unwrap_or_else(|e| panic!("apache-avro cannot decode our output for {input}: {e}"));
        assert!(reader.is_empty(), "trailing bytes after {input}");
        Ok((decoded, converted))
    }

    /// One rule: a schema, inputs that must convert (to the decoded value given), inputs that must
    /// fail (at the pointer given).
    struct Rule {
        name: &'static str,
        schema: &'static str,
        valid: Vec<(Value, Avro)>,
        invalid: Vec<(Value, &'static str)>,
    }

    fn check(rules: Vec<Rule>) {
        for rule in rules {
            // Wrap in a record so that pointers are non-trivial.
            let schema = format!(
                r#"{{"type":"record","name":"T","fields":[{{"name":"f","type":{}}}]}}"#,
                rule.schema
            );
            for (input, want) in rule.valid {
                let doc = json!({ "f": input });
                let (got, _) = round_trip(&schema, &doc, ExtraFields::Reject)
                    .unwrap_or_else(|e| panic!("rule {}: {input} should be valid: {e}", rule.name));
                assert_eq!(
                    got,
                    Avro::Record(vec![("f".into(), want)]),
                    "rule {}: {input}",
                    rule.name
                );
            }
            for (input, pointer) in rule.invalid {
                let doc = json!({ "f": input });
                let plan = AvroPlan::parse(&schema).unwrap();
                let err = plan
                    .encode(&Doc::of(&doc), ExtraFields::Reject, &mut Vec::new())
                    .expect_err(&format!("rule {}: {input} should be invalid", rule.name));
                assert_eq!(err.pointer, pointer, "rule {}: {input}: {err}", rule.name);
            }
        }
    }

    #[test]
    fn primitives() {
        check(vec![
            Rule {
                name: "null",
                schema: r#""null""#,
                valid: vec![(json!(null), Avro::Null)],
                invalid: vec![(json!(0), "/f")],
            },
            Rule {
                name: "boolean",
                schema: r#""boolean""#,
                valid: vec![
                    (json!(true), Avro::Boolean(true)),
                    (json!(false), Avro::Boolean(false)),
                ],
                invalid: vec![(json!("true"), "/f"), (json!(1), "/f")],
            },
            Rule {
                name: "int",
                schema: r#""int""#,
                valid: vec![
                    (json!(0), Avro::Int(0)),
                    (json!(-1), Avro::Int(-1)),
                    (json!(i32::MAX), Avro::Int(i32::MAX)),
                    (json!(i32::MIN), Avro::Int(i32::MIN)),
                ],
                invalid: vec![
                    (json!(i32::MAX as i64 + 1), "/f"),
                    (json!(i32::MIN as i64 - 1), "/f"),
                    (json!(1.5), "/f"),
                    (json!("1"), "/f"),
                ],
            },
            Rule {
                name: "long",
                schema: r#""long""#,
                valid: vec![
                    (json!(i64::MAX), Avro::Long(i64::MAX)),
                    (json!(i64::MIN), Avro::Long(i64::MIN)),
                ],
                invalid: vec![
                    (json!(u64::MAX), "/f"),
                    (json!(0.5), "/f"),
                    (json!(null), "/f"),
                ],
            },
            Rule {
                name: "float",
                schema: r#""float""#,
                valid: vec![(json!(1.5), Avro::Float(1.5)), (json!(3), Avro::Float(3.0))],
                invalid: vec![(json!(1e300), "/f"), (json!("1.5"), "/f")],
            },
            Rule {
                name: "double",
                schema: r#""double""#,
                valid: vec![
                    (json!(1e300), Avro::Double(1e300)),
                    (json!(-2), Avro::Double(-2.0)),
                ],
                invalid: vec![(json!(true), "/f")],
            },
            Rule {
                name: "string",
                schema: r#""string""#,
                valid: vec![
                    (json!(""), Avro::String("".into())),
                    (json!("héllo ✓"), Avro::String("héllo ✓".into())),
                ],
                invalid: vec![(json!(1), "/f"), (json!(["a"]), "/f")],
            },
        ]);
    }

    #[test]
    fn bytes_fixed_and_enums() {
        check(vec![
            Rule {
                name: "bytes",
                schema: r#""bytes""#,
                valid: vec![
                    (json!("a\u{00ff}\u{0000}"), Avro::Bytes(vec![b'a', 0xff, 0])),
                    (json!(""), Avro::Bytes(vec![])),
                ],
                invalid: vec![(json!("\u{0100}"), "/f"), (json!(1), "/f")],
            },
            Rule {
                name: "fixed",
                schema: r#"{"type":"fixed","name":"F2","size":2}"#,
                valid: vec![(json!("\u{0001}\u{0002}"), Avro::Fixed(2, vec![1, 2]))],
                invalid: vec![(json!("abc"), "/f"), (json!("a"), "/f")],
            },
            Rule {
                name: "enum",
                schema: r#"{"type":"enum","name":"Color","symbols":["RED","GREEN"]}"#,
                valid: vec![
                    (json!("GREEN"), Avro::Enum(1, "GREEN".into())),
                    (json!("RED"), Avro::Enum(0, "RED".into())),
                ],
                invalid: vec![
                    (json!("BLUE"), "/f"),
                    (json!("red"), "/f"),
                    (json!(0), "/f"),
                ],
            },
        ]);
    }

    #[test]
    fn arrays_maps_and_nested_records() {
        let inner = Avro::Record(vec![
            ("x".into(), Avro::Int(1)),
            ("tags".into(), Avro::Array(vec![])),
        ]);
        check(vec![
            Rule {
                name: "array",
                schema: r#"{"type":"array","items":"int"}"#,
                valid: vec![
                    (json!([]), Avro::Array(vec![])),
                    (json!([1, 2]), Avro::Array(vec![Avro::Int(1), Avro::Int(2)])),
                ],
                invalid: vec![(json!([1, "2"]), "/f/1"), (json!({}), "/f")],
            },
            Rule {
                name: "map",
                schema: r#"{"type":"map","values":"long"}"#,
                valid: vec![
                    (json!({}), Avro::Map(Default::default())),
                    (
                        json!({"a/b": 1}),
                        Avro::Map([("a/b".to_owned(), Avro::Long(1))].into_iter().collect()),
                    ),
                ],
                // Pointer escaping: "/" is "~1", "~" is "~0".
                invalid: vec![
                    (json!({"a/b": "x"}), "/f/a~1b"),
                    (json!({"~": null}), "/f/~0"),
                    (json!([]), "/f"),
                ],
            },
            Rule {
                name: "nested record",
                schema: r#"{"type":"record","name":"In","fields":[{"name":"x","type":"int"},{"name":"tags","type":{"type":"array","items":"string"},"default":[]}]}"#,
                valid: vec![(json!({"x": 1}), inner)],
                invalid: vec![
                    (json!({"x": "1"}), "/f/x"),
                    (json!({}), "/f/x"),
                    (json!({"x": 1, "tags": [1]}), "/f/tags/0"),
                    (json!("r"), "/f"),
                ],
            },
        ]);
    }

    #[test]
    fn defaults_and_missing_fields() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},
            {"name":"n","type":"int","default":7},
            {"name":"opt","type":["null","string"],"default":null},
            {"name":"color","type":{"type":"enum","name":"C","symbols":["A","B"]},"default":"B"},
            {"name":"raw","type":"bytes","default":"\u00ff"}]}"#;
        let (got, _) = round_trip(schema, &json!({"id": "x"}), ExtraFields::Reject).unwrap();
        assert_eq!(
            got,
            Avro::Record(vec![
                ("id".into(), Avro::String("x".into())),
                ("n".into(), Avro::Int(7)),
                ("opt".into(), Avro::Union(0, Box::new(Avro::Null))),
                ("color".into(), Avro::Enum(1, "B".into())),
                ("raw".into(), Avro::Bytes(vec![0xff])),
            ])
        );
        let err = round_trip(schema, &json!({"n": 1}), ExtraFields::Reject).unwrap_err();
        assert_eq!(
            (err.pointer.as_str(), err.reason.as_str()),
            ("/id", "required field is missing")
        );
        // A default that does not fit its type is a schema error, found when compiling.
        let bad =
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"int","default":"x"}]}"#;
        assert!(matches!(
            AvroPlan::parse(bad),
            Err(CompileError::Parse(_) | CompileError::Unsupported(_))
        ));
    }

    #[test]
    fn unions() {
        let rec =
            r#"{"type":"record","name":"P","namespace":"ns","fields":[{"name":"x","type":"int"}]}"#;
        let schema: &'static str =
            Box::leak(format!(r#"["null","int","string",{rec}]"#).into_boxed_str());
        let p = |x| Avro::Record(vec![("x".into(), Avro::Int(x))]);
        check(vec![
            Rule {
                name: "union",
                schema,
                valid: vec![
                    (json!(null), Avro::Union(0, Box::new(Avro::Null))),
                    (json!(5), Avro::Union(1, Box::new(Avro::Int(5)))),
                    (
                        json!("s"),
                        Avro::Union(2, Box::new(Avro::String("s".into()))),
                    ),
                    (json!({"x": 2}), Avro::Union(3, Box::new(p(2)))),
                    // Avro's JSON encoding: {"<branch>": value}, by type name, full name or simple name.
                    (
                        json!({"string": "t"}),
                        Avro::Union(2, Box::new(Avro::String("t".into()))),
                    ),
                    (json!({"int": 3}), Avro::Union(1, Box::new(Avro::Int(3)))),
                    (json!({"ns.P": {"x": 4}}), Avro::Union(3, Box::new(p(4)))),
                    (json!({"P": {"x": 5}}), Avro::Union(3, Box::new(p(5)))),
                ],
                invalid: vec![
                    (json!(true), "/f"),
                    (json!(1.5), "/f"),
                    // The record branch got deepest: its failure is the one reported.
                    (json!({"x": "no"}), "/f/x"),
                    (json!({"int": "3"}), "/f/int"),
                ],
            },
            Rule {
                name: "union, first matching branch",
                schema: r#"["long","double"]"#,
                valid: vec![
                    (json!(1), Avro::Union(0, Box::new(Avro::Long(1)))),
                    (json!(1.5), Avro::Union(1, Box::new(Avro::Double(1.5)))),
                ],
                invalid: vec![(json!("1"), "/f")],
            },
        ]);
    }

    #[test]
    fn logical_types() {
        check(vec![
            Rule {
                name: "timestamp-millis",
                schema: r#"{"type":"long","logicalType":"timestamp-millis"}"#,
                valid: vec![
                    (
                        json!(1_700_000_000_123i64),
                        Avro::TimestampMillis(1_700_000_000_123),
                    ),
                    (
                        json!("2023-11-14T22:13:20.123Z"),
                        Avro::TimestampMillis(1_700_000_000_123),
                    ),
                    (
                        json!("2023-11-15T00:13:20.123+02:00"),
                        Avro::TimestampMillis(1_700_000_000_123),
                    ),
                    (json!("1969-12-31T23:59:59.999Z"), Avro::TimestampMillis(-1)),
                ],
                invalid: vec![
                    (json!("2023-11-14 22:13:20"), "/f"),
                    (json!("yesterday"), "/f"),
                    (json!(1.5), "/f"),
                ],
            },
            Rule {
                name: "timestamp-micros",
                schema: r#"{"type":"long","logicalType":"timestamp-micros"}"#,
                valid: vec![
                    (
                        json!("2023-11-14T22:13:20.123456Z"),
                        Avro::TimestampMicros(1_700_000_000_123_456),
                    ),
                    (json!(5), Avro::TimestampMicros(5)),
                ],
                invalid: vec![(json!(true), "/f")],
            },
            Rule {
                name: "date",
                schema: r#"{"type":"int","logicalType":"date"}"#,
                valid: vec![
                    (json!("1970-01-02"), Avro::Date(1)),
                    (json!("1969-12-31"), Avro::Date(-1)),
                    (json!("2024-02-29"), Avro::Date(19_782)),
                    (json!(42), Avro::Date(42)),
                ],
                invalid: vec![
                    (json!("2023-02-29"), "/f"),
                    (json!("2024/01/01"), "/f"),
                    (json!(1i64 << 40), "/f"),
                ],
            },
            Rule {
                name: "time-millis",
                schema: r#"{"type":"int","logicalType":"time-millis"}"#,
                valid: vec![(json!(86_399_999), Avro::TimeMillis(86_399_999))],
                invalid: vec![(json!(86_400_000), "/f"), (json!(-1), "/f")],
            },
            Rule {
                name: "uuid",
                schema: r#"{"type":"string","logicalType":"uuid"}"#,
                valid: vec![(
                    json!("550e8400-e29b-41d4-a716-446655440000"),
                    Avro::Uuid(
                        uuid::Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap(),
                    ),
                )],
                invalid: vec![(json!("550e8400-e29b-41d4-a716"), "/f"), (json!(1), "/f")],
            },
            Rule {
                name: "decimal (bytes)",
                schema: r#"{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}"#,
                valid: vec![
                    (json!("123.45"), decimal_value(12345, 5)),
                    (json!("-1.5"), decimal_value(-150, 5)),
                    (json!(7), decimal_value(700, 5)),
                    (json!(0.25), decimal_value(25, 5)),
                    (json!("1.200"), decimal_value(120, 5)),
                ],
                invalid: vec![
                    (json!("1.234"), "/f"),
                    (json!("1234.5"), "/f"),
                    (json!("abc"), "/f"),
                    (json!(true), "/f"),
                ],
            },
            Rule {
                name: "decimal (fixed)",
                schema: r#"{"type":"fixed","name":"D","size":2,"logicalType":"decimal","precision":4,"scale":1}"#,
                valid: vec![
                    (
                        json!("-0.1"),
                        Avro::Decimal(apache_avro::Decimal::from(vec![0xff, 0xff])),
                    ),
                    (
                        json!("999.9"),
                        Avro::Decimal(apache_avro::Decimal::from(vec![0x27, 0x0f])),
                    ),
                ],
                invalid: vec![(json!("1000.0"), "/f")],
            },
        ]);
    }

    fn decimal_value(unscaled: i64, _precision: u64) -> Avro {
        Avro::Decimal(apache_avro::Decimal::from(
            bigdecimal::num_bigint::BigInt::from(unscaled).to_signed_bytes_be(),
        ))
    }

    #[test]
    fn extra_fields_are_dropped_and_counted_or_rejected() {
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"in","type":{"type":"record","name":"I","fields":[]}}]}"#;
        let doc = json!({"a": 1, "b": 2, "in": {"c": 3}});
        let (got, converted) = round_trip(schema, &doc, ExtraFields::Drop).unwrap();
        assert_eq!(
            got,
            Avro::Record(vec![
                ("a".into(), Avro::Int(1)),
                ("in".into(), Avro::Record(vec![]))
            ])
        );
        assert_eq!(converted.dropped_fields, 2);
        let err = round_trip(
            schema,
            &json!({"a": 1, "in": {"c": 3}}),
            ExtraFields::Reject,
        )
        .unwrap_err();
        assert_eq!(err.pointer, "/in/c");
        let err = round_trip(
            schema,
            &json!({"a": 1, "b": 2, "in": {}}),
            ExtraFields::Reject,
        )
        .unwrap_err();
        assert_eq!(err.pointer, "/b");
    }

    #[test]
    fn recursive_records_and_named_references() {
        let schema = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":{"type":"enum","name":"K","symbols":["X","Y"]}},
            {"name":"k2","type":"K"},
            {"name":"next","type":["null","Node"],"default":null}]}"#;
        let doc = json!({"v": "X", "k2": "Y", "next": {"v": "Y", "k2": "X", "next": null}});
        let (got, _) = round_trip(schema, &doc, ExtraFields::Reject).unwrap();
        let leaf = Avro::Record(vec![
            ("v".into(), Avro::Enum(1, "Y".into())),
            ("k2".into(), Avro::Enum(0, "X".into())),
            ("next".into(), Avro::Union(0, Box::new(Avro::Null))),
        ]);
        assert_eq!(
            got,
            Avro::Record(vec![
                ("v".into(), Avro::Enum(0, "X".into())),
                ("k2".into(), Avro::Enum(1, "Y".into())),
                ("next".into(), Avro::Union(1, Box::new(leaf))),
            ])
        );
        let err = round_trip(
            schema,
            &json!({"v": "X", "k2": "X", "next": {"v": "Z", "k2": "X"}}),
            ExtraFields::Reject,
        )
        .unwrap_err();
        assert_eq!(err.pointer, "/next/v");
    }

    #[test]
    fn failures_carry_their_kind() {
        let cases: [(&str, Value, Reason); 12] = [
            (r#""int""#, json!("1"), Reason::WrongType),
            (r#""int""#, json!(1.5), Reason::WrongType),
            (r#""int""#, json!(1u64 << 40), Reason::OutOfRange),
            (r#""float""#, json!(1e300), Reason::OutOfRange),
            (
                r#"{"type":"fixed","name":"F","size":2}"#,
                json!("abc"),
                Reason::WrongSize,
            ),
            (
                r#"{"type":"enum","name":"E","symbols":["A"]}"#,
                json!("B"),
                Reason::UnknownSymbol,
            ),
            (
                r#"{"type":"string","logicalType":"uuid"}"#,
                json!("nope"),
                Reason::BadFormat,
            ),
            (
                r#"{"type":"int","logicalType":"date"}"#,
                json!("2023-02-29"),
                Reason::BadFormat,
            ),
            (
                r#"{"type":"bytes","logicalType":"decimal","precision":3,"scale":1}"#,
                json!("1.25"),
                Reason::WrongSize,
            ),
            (r#"["null","int"]"#, json!("x"), Reason::NoUnionBranch),
            (
                r#"{"type":"record","name":"In","fields":[{"name":"a","type":"int"}]}"#,
                json!({}),
                Reason::MissingField,
            ),
            (
                r#"{"type":"record","name":"In","fields":[]}"#,
                json!({"b": 1}),
                Reason::ExtraField,
            ),
        ];
        for (schema, input, kind) in cases {
            let schema = format!(
                r#"{{"type":"record","name":"T","fields":[{{"name":"f","type":{schema}}}]}}"#
            );
            let err = AvroPlan::parse(&schema)
                .unwrap()
                .encode(
                    &Doc::of(&json!({ "f": input })),
                    ExtraFields::Reject,
                    &mut Vec::new(),
                )
                .unwrap_err();
            assert_eq!(err.kind, kind, "{schema} with {input}: {err}");
        }
    }

    #[test]
    fn root_must_be_an_object_and_failed_encodes_leave_the_buffer() {
        let plan = AvroPlan::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#,
        )
        .unwrap();
        let mut out = b"keep".to_vec();
        let err = plan
            .encode(&Doc::of(&json!([1])), ExtraFields::Drop, &mut out)
            .unwrap_err();
        assert_eq!(err.pointer, "");
        let err = plan
            .encode(&Doc::of(&json!({"a": 5})), ExtraFields::Drop, &mut out)
            .unwrap_err();
        assert_eq!(err.pointer, "/a");
        assert_eq!(out, b"keep");
    }
}
