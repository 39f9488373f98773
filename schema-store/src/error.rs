//! API errors in Confluent's shape: an HTTP status and a body `{"error_code": int, "message": str}`
//! with Confluent's codes and messages, so clients that branch on codes (40401 vs 40403, 40408)
//! behave as they do against Confluent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::CONTENT_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A plain HTTP error whose code is its status, as Confluent's REST layer reports them.
    pub fn http(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::new(status, u32::from(status.as_u16()), message)
    }

    pub fn subject_not_found(subject: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    pub fn version_not_found(version: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }
    pub fn schema_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    pub fn schema_id_not_found(id: u32) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        )
    }
    pub fn subject_soft_deleted(subject: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40404,
            format!(
                "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"),
        )
    }
    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, 40407, format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"))
    }
    pub fn subject_compatibility_not_configured(subject: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    pub fn subject_mode_not_configured(subject: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40409,
            format!("Subject '{subject}' does not have subject-level mode configured"),
        )
    }
    pub fn incompatible(subject: &str, messages: &[String]) -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            40901,
            format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", messages.join(", ")),
        )
    }
    pub fn invalid_schema(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }
    pub fn invalid_version(version: &str) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
        )
    }
    pub fn invalid_compatibility_level() -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive",
        )
    }
    pub fn invalid_mode(mode: &str) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42204,
            format!("Invalid mode {mode}. Valid values are READWRITE, READONLY and IMPORT"),
        )
    }
    pub fn not_permitted(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 42205, message)
    }
    pub fn reference_exists(subject: &str, version: u32, by: &[u32]) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42206,
            format!("One or more references exist to the schema {{subject={subject},version={version}}}: referenced by schema ids {by:?}"),
        )
    }
    pub fn id_does_not_match(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 42207, message)
    }
    pub fn invalid_subject(subject: &str) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 42208, format!("The specified subject {subject:?} is not valid: it is empty or contains control characters"))
    }
    /// Confluent's "unknown leader": this instance may not write and knows no leader to ask.
    pub fn not_leader() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50004,
            "This instance is not the schema store leader and no leader is known; retry",
        )
    }
    /// Confluent's "request forwarding failed".
    pub fn forwarding_failed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 50003, message)
    }
    pub fn store(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"error_code": self.code, "message": self.message}).to_string();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}
