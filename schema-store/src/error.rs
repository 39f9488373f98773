//! What can go wrong in the registry and its storage, as domain errors: they know nothing of
//! HTTP, so the registry is tested without a server, and the API alone decides which status and
//! Confluent error code each one gets ([`crate::api`]).
//!
//! The messages are Confluent's, word for word, because clients show them and some match on
//! them.

/// A registry, storage or request error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// `version` is a number or `latest`.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// A schema looked up by content under a subject.
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Schema {0} not found")]
    SchemaIdNotFound(u32),
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete \
         permanently"
    )]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently \
         deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    CompatibilityNotConfigured(String),
    #[error("Subject '{0}' does not have subject-level mode configured")]
    ModeNotConfigured(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \
         \"{subject}\", details: [{}]",
        .messages.join(", ")
    )]
    Incompatible {
        subject: String,
        messages: Vec<String>,
    },
    #[error("{0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between \
         [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, \
         backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel,
    #[error("Invalid mode {0}. Valid values are READWRITE, READONLY and IMPORT")]
    InvalidMode(String),
    /// The mode forbids the write, or the write would overwrite something.
    #[error("{0}")]
    NotPermitted(String),
    #[error(
        "One or more references exist to the schema {{subject={subject},version={version}}}: \
         referenced by schema ids {by:?}"
    )]
    ReferenceExists {
        subject: String,
        version: u32,
        by: Vec<u32>,
    },
    /// An explicit id (IMPORT mode) that conflicts with the registry.
    #[error("{0}")]
    IdDoesNotMatch(String),
    #[error(
        "The specified subject {0:?} is not valid: it is empty or contains control characters"
    )]
    InvalidSubject(String),
    /// This instance may not write and knows no leader to ask.
    #[error("This instance is not the schema store leader and no leader is known; retry")]
    NotLeader,
    /// A write could not be run at the leader.
    #[error("{0}")]
    ForwardingFailed(String),
    /// A request body over the configured limit.
    #[error("Request body is larger than the configured limit (max_body_bytes)")]
    BodyTooLarge,
    /// The storage failed or holds something it cannot use.
    #[error("{0}")]
    Store(String),
}
