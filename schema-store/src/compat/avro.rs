//! Avro schema resolution (Avro specification, "Schema Resolution"): can a reader schema read
//! data written with a writer schema?
//!
//! - primitives match themselves; the writer may be promoted: int to long, float or double; long
//!   to float or double; float to double; string to bytes and bytes to string;
//! - records match by unqualified name (or a reader alias); every reader field is either found in
//!   the writer (by name or by a reader field alias) and resolves recursively, or has a default;
//!   writer fields the reader lacks are skipped;
//! - enums match by name; every writer symbol is a reader symbol unless the reader has a default;
//! - fixed match by name and size; arrays by items; maps by values;
//! - a writer union resolves when each of its branches does; a reader union accepts a writer
//!   (non-union) schema when one of its branches does;
//! - logical types resolve as their underlying types (readers then ignore a logical type they
//!   cannot apply, per the spec).
//!
//! Named types are looked up through their definitions (`Schema::Ref`), including types brought in
//! by references; recursive types are assumed compatible when a pair is met again.

use std::collections::{HashMap, HashSet};

use apache_avro::schema::{EnumSchema, FixedSchema, Name, RecordSchema, Schema};

use crate::schema::AvroParsed;

/// The reasons a reader of `reader` cannot read data written with `writer`; empty when it can.
pub(crate) fn can_read(writer: &AvroParsed, reader: &AvroParsed) -> Vec<String> {
    let mut resolver = Resolver {
        writer_names: names(writer),
        reader_names: names(reader),
        in_progress: HashSet::new(),
    };
    let mut errors = Vec::new();
    resolver.check(&writer.schema, &reader.schema, "", &mut errors);
    errors
}

fn names(parsed: &AvroParsed) -> HashMap<String, &Schema> {
    let mut names = HashMap::new();
    for schema in std::iter::once(&parsed.schema).chain(&parsed.referenced) {
        collect(schema, &mut names);
    }
    names
}

fn collect<'a>(schema: &'a Schema, names: &mut HashMap<String, &'a Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), schema);
            r.fields.iter().for_each(|f| collect(&f.schema, names));
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), schema);
        }
        Schema::Fixed(f) => {
            names.insert(f.name.fullname(None), schema);
        }
        Schema::Array(a) => collect(&a.items, names),
        Schema::Map(m) => collect(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect(v, names)),
        Schema::Decimal(d) => collect(&d.inner, names),
        _ => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primitive {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
}

/// A schema as resolution sees it: logical types replaced by their underlying types, names
/// resolved to their definitions.
enum View<'a> {
    Primitive(Primitive),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed { name: Option<&'a Name>, size: usize },
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Unresolved(String),
}

impl View<'_> {
    fn describe(&self) -> String {
        match self {
            View::Primitive(p) => format!("{p:?}").to_ascii_lowercase(),
            View::Record(r) => format!("record {}", r.name.fullname(None)),
            View::Enum(e) => format!("enum {}", e.name.fullname(None)),
            View::Fixed {
                name: Some(n),
                size,
            } => format!("fixed {} (size {size})", n.fullname(None)),
            View::Fixed { name: None, size } => format!("fixed (size {size})"),
            View::Array(_) => "array".to_owned(),
            View::Map(_) => "map".to_owned(),
            View::Union(_) => "union".to_owned(),
            View::Unresolved(n) => format!("unknown type {n}"),
        }
    }
}

fn view<'a>(schema: &'a Schema, names: &HashMap<String, &'a Schema>) -> View<'a> {
    use Primitive as P;
    match schema {
        Schema::Null => View::Primitive(P::Null),
        Schema::Boolean => View::Primitive(P::Boolean),
        Schema::Int | Schema::Date | Schema::TimeMillis => View::Primitive(P::Int),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => View::Primitive(P::Long),
        Schema::Float => View::Primitive(P::Float),
        Schema::Double => View::Primitive(P::Double),
        Schema::Bytes | Schema::BigDecimal => View::Primitive(P::Bytes),
        Schema::String | Schema::Uuid => View::Primitive(P::String),
        Schema::Decimal(d) => view(&d.inner, names),
        Schema::Duration => View::Fixed {
            name: None,
            size: 12,
        },
        Schema::Record(r) => View::Record(r),
        Schema::Enum(e) => View::Enum(e),
        Schema::Fixed(FixedSchema { name, size, .. }) => View::Fixed {
            name: Some(name),
            size: *size,
        },
        Schema::Array(a) => View::Array(&a.items),
        Schema::Map(m) => View::Map(&m.types),
        Schema::Union(u) => View::Union(u.variants()),
        Schema::Ref { name } => match names.get(&name.fullname(None)) {
            Some(schema) => view(schema, names),
            None => View::Unresolved(name.fullname(None)),
        },
    }
}

/// Whether a writer primitive is read as a reader primitive (identity or a spec promotion).
fn promotes(writer: Primitive, reader: Primitive) -> bool {
    use Primitive::*;
    writer == reader
        || matches!(
            (writer, reader),
            (Int, Long)
                | (Int, Float)
                | (Int, Double)
                | (Long, Float)
                | (Long, Double)
                | (Float, Double)
                | (String, Bytes)
                | (Bytes, String)
        )
}

/// Spec rule for named types: unqualified names equal, or the writer's name is a reader alias.
fn names_match(
    writer: &Name,
    reader: &Name,
    reader_aliases: Option<&Vec<apache_avro::schema::Alias>>,
) -> bool {
    writer.name == reader.name
        || reader_aliases.is_some_and(|aliases| {
            aliases.iter().any(|a| {
                a.name() == writer.name
                    || a.fullname(reader.namespace.clone()) == writer.fullname(None)
            })
        })
}

struct Resolver<'a> {
    writer_names: HashMap<String, &'a Schema>,
    reader_names: HashMap<String, &'a Schema>,
    in_progress: HashSet<(String, String)>,
}

impl<'a> Resolver<'a> {
    fn check(
        &mut self,
        writer: &'a Schema,
        reader: &'a Schema,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        let w = view(writer, &self.writer_names);
        let r = view(reader, &self.reader_names);
        let at = if path.is_empty() { "/" } else { path };
        match (&w, &r) {
            (View::Unresolved(_), _) | (_, View::Unresolved(_)) => {
                errors.push(format!(
                    "{at}: cannot resolve {} against {}",
                    w.describe(),
                    r.describe()
                ));
            }
            (View::Union(branches), _) => {
                for (i, branch) in branches.iter().enumerate() {
                    let mut branch_errors = Vec::new();
                    self.check(branch, reader, &format!("{path}/{i}"), &mut branch_errors);
                    if !branch_errors.is_empty() {
                        let described = view(branch, &self.writer_names).describe();
                        errors.push(format!("{at}: writer union branch {i} ({described}) is not readable by the reader's {}", r.describe()));
                        errors.extend(branch_errors);
                    }
                }
            }
            (_, View::Union(branches)) => {
                let readable = branches.iter().any(|branch| {
                    let mut scratch = Vec::new();
                    self.check(writer, branch, path, &mut scratch);
                    scratch.is_empty()
                });
                if !readable {
                    errors.push(format!(
                        "{at}: the reader's union has no branch that reads the writer's {}",
                        w.describe()
                    ));
                }
            }
            (View::Primitive(wp), View::Primitive(rp)) => {
                if !promotes(*wp, *rp) {
                    errors.push(format!(
                        "{at}: writer type {} cannot be read as {}",
                        w.describe(),
                        r.describe()
                    ));
                }
            }
            (View::Record(wr), View::Record(rr)) => self.records(wr, rr, path, errors),
            (View::Enum(we), View::Enum(re)) => {
                if !names_match(&we.name, &re.name, re.aliases.as_ref()) {
                    errors.push(format!(
                        "{at}: enum name {} does not match the reader's {}",
                        we.name.fullname(None),
                        re.name.fullname(None)
                    ));
                } else if re.default.is_none() {
                    let missing: Vec<&str> = we
                        .symbols
                        .iter()
                        .filter(|s| !re.symbols.contains(s))
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        errors.push(format!("{at}: the reader's enum {} lacks writer symbols [{}] and has no default", re.name.fullname(None), missing.join(", ")));
                    }
                }
            }
            (View::Fixed { name: wn, size: ws }, View::Fixed { name: rn, size: rs }) => {
                let named_alike = match (wn, rn, &reader) {
                    (Some(wn), Some(rn), Schema::Fixed(f)) => {
                        names_match(wn, rn, f.aliases.as_ref())
                    }
                    (Some(wn), Some(rn), _) => wn.name == rn.name,
                    _ => true,
                };
                if !named_alike {
                    errors.push(format!(
                        "{at}: {} does not match the reader's {} by name",
                        w.describe(),
                        r.describe()
                    ));
                } else if ws != rs {
                    errors.push(format!(
                        "{at}: fixed size {ws} differs from the reader's size {rs}"
                    ));
                }
            }
            (View::Array(wi), View::Array(ri)) => {
                self.check(wi, ri, &format!("{path}/items"), errors)
            }
            (View::Map(wv), View::Map(rv)) => self.check(wv, rv, &format!("{path}/values"), errors),
            _ => errors.push(format!(
                "{at}: writer type {} cannot be read as {}",
                w.describe(),
                r.describe()
            )),
        }
    }

    fn records(
        &mut self,
        writer: &'a RecordSchema,
        reader: &'a RecordSchema,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        let at = if path.is_empty() { "/" } else { path };
        if !names_match(&writer.name, &reader.name, reader.aliases.as_ref()) {
            errors.push(format!(
                "{at}: record name {} does not match the reader's {}",
                writer.name.fullname(None),
                reader.name.fullname(None)
            ));
            return;
        }
        let pair = (writer.name.fullname(None), reader.name.fullname(None));
        if !self.in_progress.insert(pair.clone()) {
            return;
        }
        for field in &reader.fields {
            let field_path = format!("{path}/fields/{}", field.name);
            let found = writer.fields.iter().find(|w| {
                w.name == field.name
                    || field
                        .aliases
                        .as_ref()
                        .is_some_and(|aliases| aliases.contains(&w.name))
            });
            match found {
                Some(w) => self.check(&w.schema, &field.schema, &field_path, errors),
                None if field.default.is_some() => {}
                None => errors.push(format!(
                    "{field_path}: reader field '{}' is missing from the writer and has no default",
                    field.name
                )),
            }
        }
        self.in_progress.remove(&pair);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{parse, Parsed, SchemaType};

    fn avro(text: &str) -> AvroParsed {
        match parse(SchemaType::Avro, text, &[])
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .1
        {
            Parsed::Avro(a) => a,
            Parsed::Json(_) => unreachable!(),
        }
    }

    fn record(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"R","namespace":"n","fields":[{fields}]}}"#)
    }

    /// (writer, reader, can the reader read the writer's data)
    fn table() -> Vec<(String, String, bool)> {
        let p = |s: &str| format!(r#""{s}""#);
        let mut rows: Vec<(String, String, bool)> = Vec::new();
        // Primitives and promotions: every pair of the eight primitives.
        let prims = [
            "null", "boolean", "int", "long", "float", "double", "bytes", "string",
        ];
        let promoted = [
            ("int", "long"),
            ("int", "float"),
            ("int", "double"),
            ("long", "float"),
            ("long", "double"),
            ("float", "double"),
            ("string", "bytes"),
            ("bytes", "string"),
        ];
        for w in prims {
            for r in prims {
                let ok = w == r || promoted.contains(&(w, r));
                rows.push((p(w), p(r), ok));
            }
        }
        let rows_extra: Vec<(String, String, bool)> = vec![
            // Fields added or removed.
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#), true),
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), false),
            (record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), record(r#"{"name":"a","type":"int"}"#), true),
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"b","type":["null","int"],"default":null}"#), true),
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"a","type":"long"}"#), true),
            (record(r#"{"name":"a","type":"long"}"#), record(r#"{"name":"a","type":"int"}"#), false),
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"a","type":"string"}"#), false),
            // Field aliases: the reader renames `a` to `z` and keeps `a` as an alias.
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"z","type":"int","aliases":["a"]}"#), true),
            (record(r#"{"name":"a","type":"int"}"#), record(r#"{"name":"z","type":"int"}"#), false),
            // Record names and record aliases.
            (r#"{"type":"record","name":"A","fields":[]}"#.into(), r#"{"type":"record","name":"B","fields":[]}"#.into(), false),
            (r#"{"type":"record","name":"A","fields":[]}"#.into(), r#"{"type":"record","name":"B","aliases":["A"],"fields":[]}"#.into(), true),
            (r#"{"type":"record","name":"x.A","fields":[]}"#.into(), r#"{"type":"record","name":"y.A","fields":[]}"#.into(), true),
            // Enums.
            (r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(), r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(), true),
            (r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(), r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(), false),
            (r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(), r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#.into(), true),
            (r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(), r#"{"type":"enum","name":"F","symbols":["A"]}"#.into(), false),
            (r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(), r#"{"type":"enum","name":"F","aliases":["E"],"symbols":["A"]}"#.into(), true),
            // Fixed.
            (r#"{"type":"fixed","name":"F","size":4}"#.into(), r#"{"type":"fixed","name":"F","size":4}"#.into(), true),
            (r#"{"type":"fixed","name":"F","size":4}"#.into(), r#"{"type":"fixed","name":"F","size":8}"#.into(), false),
            (r#"{"type":"fixed","name":"F","size":4}"#.into(), r#"{"type":"fixed","name":"G","size":4}"#.into(), false),
            (r#"{"type":"fixed","name":"F","size":4}"#.into(), p("bytes"), false),
            // Arrays and maps.
            (r#"{"type":"array","items":"int"}"#.into(), r#"{"type":"array","items":"long"}"#.into(), true),
            (r#"{"type":"array","items":"long"}"#.into(), r#"{"type":"array","items":"int"}"#.into(), false),
            (r#"{"type":"map","values":"float"}"#.into(), r#"{"type":"map","values":"double"}"#.into(), true),
            (r#"{"type":"map","values":"string"}"#.into(), r#"{"type":"map","values":"int"}"#.into(), false),
            (r#"{"type":"array","items":"int"}"#.into(), r#"{"type":"map","values":"int"}"#.into(), false),
            // Unions.
            (p("int"), r#"["null","int"]"#.into(), true),
            (p("int"), r#"["null","long"]"#.into(), true),
            (p("int"), r#"["null","string"]"#.into(), false),
            (r#"["null","int"]"#.into(), p("int"), false),
            (r#"["null","int"]"#.into(), r#"["null","int","string"]"#.into(), true),
            (r#"["null","int","string"]"#.into(), r#"["null","int"]"#.into(), false),
            (r#"["int","long"]"#.into(), p("double"), true),
            (r#"["int","string"]"#.into(), r#"["string","long"]"#.into(), true),
            // Nested records.
            (
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}"#),
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"},{"name":"y","type":"int","default":0}]}}"#),
                true,
            ),
            (
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}"#),
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}}"#),
                false,
            ),
            (
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"string"}]}}"#),
                record(r#"{"name":"in","type":{"type":"record","name":"I","fields":[{"name":"x","type":"bytes"}]}}"#),
                true,
            ),
            // Recursive type (a linked list) against itself and with an added defaulted field.
            (
                r#"{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","L"]}]}"#.into(),
                r#"{"type":"record","name":"L","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","L"]},{"name":"w","type":"int","default":1}]}"#.into(),
                true,
            ),
            // Logical types resolve as their underlying types.
            (r#"{"type":"int","logicalType":"date"}"#.into(), p("int"), true),
            (r#"{"type":"long","logicalType":"timestamp-millis"}"#.into(), r#"{"type":"int","logicalType":"date"}"#.into(), false),
            (r#"{"type":"string","logicalType":"uuid"}"#.into(), p("string"), true),
            (r#"{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}"#.into(), p("bytes"), true),
        ];
        rows.extend(rows_extra);
        rows
    }

    #[test]
    fn resolution_table() {
        crate::compat::assert_table(&table(), 60, |writer, reader| {
            can_read(&avro(writer), &avro(reader))
        });
    }

    #[test]
    fn messages_name_the_failing_field() {
        let errors = can_read(
            &avro(&record(r#"{"name":"a","type":"int"}"#)),
            &avro(&record(
                r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#,
            )),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("/fields/b") && errors[0].contains("no default"),
            "{errors:?}"
        );
    }

    #[test]
    fn referenced_types_are_resolved() {
        let reference = |text: &str| crate::schema::Referenced {
            name: "a.Address".into(),
            text: text.into(),
        };
        let address = reference(
            r#"{"type":"record","name":"Address","namespace":"a","fields":[{"name":"city","type":"string"}]}"#,
        );
        let address2 = reference(
            r#"{"type":"record","name":"Address","namespace":"a","fields":[{"name":"zip","type":"string"}]}"#,
        );
        let user = r#"{"type":"record","name":"User","namespace":"a","fields":[{"name":"home","type":"Address"}]}"#;
        let with = |r: &crate::schema::Referenced| match parse(
            SchemaType::Avro,
            user,
            std::slice::from_ref(r),
        )
        .unwrap()
        .1
        {
            Parsed::Avro(a) => a,
            Parsed::Json(_) => unreachable!(),
        };
        assert!(can_read(&with(&address), &with(&address)).is_empty());
        let errors = can_read(&with(&address), &with(&address2));
        assert!(
            errors.iter().any(|e| e.contains("/fields/home/fields/zip")),
            "{errors:?}"
        );
    }
}
