//! Why a record was dead-lettered, as a small fixed set of kinds.
//!
//! The `lp.error.reason` header is free text (it names fields, values and symbols), which is what
//! a person fixing a producer needs but cannot be a metric label: every distinct message would be
//! a new time series. [`Reason`] is the bounded classification of the same failure, used as the
//! `reason` label of `logpipe_validator_records_invalid_total`, so an operator (or a dashboard
//! reading `/metrics`) can see *what kind* of bad input a stream receives without reading the DLQ.

/// The kind of a dead letter's failure. Each belongs to one [`logpipe_core::record::ErrorStage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// parse: the value is not JSON (or not UTF-8).
    MalformedJson,
    /// parse: the value is not JSON because the agent cut the line at its size limit
    /// (the record has an `lp.truncated` header).
    TooLarge,
    /// route: no route covers the record's topic.
    NoRoute,
    /// route: the field that names the subject is missing or not a non-empty string.
    NoSubject,
    /// schema: the subject (or the route's pinned version of it) does not exist in the store.
    UnknownSubject,
    /// schema: the schema exists but cannot be used (unsupported type or feature).
    UnusableSchema,
    /// validate: a required field is missing.
    MissingField,
    /// validate: a value has the wrong JSON type (a string where a number belongs, ...).
    WrongType,
    /// validate: a number outside its type's range (int, float, time of day) or a JSON Schema
    /// minimum/maximum.
    OutOfRange,
    /// validate: a string in the wrong format (date, timestamp, UUID, decimal, bytes, JSON
    /// Schema `format`/`pattern`).
    BadFormat,
    /// validate: a string that is not one of the enum's symbols (or a JSON Schema `enum`/`const`).
    UnknownSymbol,
    /// validate: a value fits no branch of a union (or a JSON Schema `anyOf`/`oneOf`).
    NoUnionBranch,
    /// validate: a field the schema does not have, with `extra_fields = "reject"` (or a JSON
    /// Schema's `additionalProperties: false`).
    ExtraField,
    /// validate: a size constraint (fixed size, decimal precision, JSON Schema length/item
    /// counts).
    WrongSize,
    /// validate: any other JSON Schema constraint.
    Constraint,
    /// encode: the clean record would exceed the producer's `message.max.bytes`.
    OutputTooLarge,
}

impl Reason {
    /// Every kind, for tests.
    #[cfg(test)]
    const ALL: [Reason; 16] = [
        Reason::MalformedJson,
        Reason::TooLarge,
        Reason::NoRoute,
        Reason::NoSubject,
        Reason::UnknownSubject,
        Reason::UnusableSchema,
        Reason::MissingField,
        Reason::WrongType,
        Reason::OutOfRange,
        Reason::BadFormat,
        Reason::UnknownSymbol,
        Reason::NoUnionBranch,
        Reason::ExtraField,
        Reason::WrongSize,
        Reason::Constraint,
        Reason::OutputTooLarge,
    ];

    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::TooLarge => "too_large",
            Reason::NoRoute => "no_route",
            Reason::NoSubject => "no_subject",
            Reason::UnknownSubject => "unknown_subject",
            Reason::UnusableSchema => "unusable_schema",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::BadFormat => "bad_format",
            Reason::UnknownSymbol => "unknown_symbol",
            Reason::NoUnionBranch => "no_union_branch",
            Reason::ExtraField => "extra_field",
            Reason::WrongSize => "wrong_size",
            Reason::Constraint => "constraint",
            Reason::OutputTooLarge => "output_too_large",
        }
    }

    /// The kind of a JSON Schema validation error.
    pub(crate) fn of_json_schema(kind: &jsonschema::error::ValidationErrorKind) -> Reason {
        use jsonschema::error::ValidationErrorKind as K;
        match kind {
            K::Required { .. } => Reason::MissingField,
            K::Type { .. } => Reason::WrongType,
            K::Minimum { .. }
            | K::Maximum { .. }
            | K::ExclusiveMinimum { .. }
            | K::ExclusiveMaximum { .. }
            | K::MultipleOf { .. } => Reason::OutOfRange,
            K::Format { .. }
            | K::Pattern { .. }
            | K::ContentEncoding { .. }
            | K::ContentMediaType { .. } => Reason::BadFormat,
            K::Enum { .. } | K::Constant { .. } => Reason::UnknownSymbol,
            K::AnyOf { .. } | K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => {
                Reason::NoUnionBranch
            }
            K::AdditionalProperties { .. }
            | K::AdditionalItems { .. }
            | K::UnevaluatedProperties { .. }
            | K::UnevaluatedItems { .. } => Reason::ExtraField,
            K::MinLength { .. }
            | K::MaxLength { .. }
            | K::MinItems { .. }
            | K::MaxItems { .. }
            | K::MinProperties { .. }
            | K::MaxProperties { .. } => Reason::WrongSize,
            _ => Reason::Constraint,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let labels: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn json_schema_errors_are_classified() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer", "minimum": 0}, "tag": {"enum": ["a", "b"]}, "name": {"maxLength": 2}},
            "additionalProperties": false
        });
        let validator = jsonschema::validator_for(&schema).unwrap();
        let kind = |value: serde_json::Value| {
            Reason::of_json_schema(validator.validate(&value).unwrap_err().kind())
        };
        assert_eq!(kind(serde_json::json!({})), Reason::MissingField);
        assert_eq!(kind(serde_json::json!({"id": "1"})), Reason::WrongType);
        assert_eq!(kind(serde_json::json!({"id": -1})), Reason::OutOfRange);
        assert_eq!(
            kind(serde_json::json!({"id": 1, "tag": "c"})),
            Reason::UnknownSymbol
        );
        assert_eq!(
            kind(serde_json::json!({"id": 1, "name": "abc"})),
            Reason::WrongSize
        );
        assert_eq!(
            kind(serde_json::json!({"id": 1, "x": 1})),
            Reason::ExtraField
        );
    }
}
