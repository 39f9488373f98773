//! The HTTP API: Confluent Schema Registry's REST surface.
//!
//! Every route is declared once in [`routes`], with its handler, the role it needs and what the
//! OpenAPI document says about it, so the served document, the authorization rules and the
//! router cannot drift apart.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use logpipe_core::auth::{Auth, Denied, Role};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::compat::Level;
use crate::error::Error;
use crate::forward::Forwarder;
use crate::log::{Mode, Record};
use crate::registry::{
    validate_subject, NewSchema, Registry, State as RegistryState, VersionSelector,
};
use crate::schema::{Reference, SchemaType};
use logpipe_core::metric_names::schema_store as metric;
use logpipe_core::openapi::{self, route, QueryParam};

/// The content type of every JSON response, as Confluent sends it.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Request and response media types Confluent accepts.
const JSON_TYPES: [&str; 3] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
];

/// An error response in Confluent's shape: an HTTP status and a body
/// `{"error_code": int, "message": str}`, so clients that branch on codes (40401 vs 40403,
/// 40408) behave as they do against Confluent.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    /// A plain HTTP error whose code is its status, as Confluent's REST layer reports them.
    fn http(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: u32::from(status.as_u16()),
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = confluent_code(&error);
        ApiError {
            status,
            code,
            message: error.to_string(),
        }
    }
}

/// The status and error code Confluent answers each error with.
fn confluent_code(error: &Error) -> (StatusCode, u32) {
    use StatusCode as S;
    match error {
        Error::SubjectNotFound(_) => (S::NOT_FOUND, 40401),
        Error::VersionNotFound(_) => (S::NOT_FOUND, 40402),
        Error::SchemaNotFound | Error::SchemaIdNotFound(_) => (S::NOT_FOUND, 40403),
        Error::SubjectSoftDeleted(_) => (S::NOT_FOUND, 40404),
        Error::SubjectNotSoftDeleted(_) => (S::NOT_FOUND, 40405),
        Error::VersionSoftDeleted { .. } => (S::NOT_FOUND, 40406),
        Error::VersionNotSoftDeleted { .. } => (S::NOT_FOUND, 40407),
        Error::CompatibilityNotConfigured(_) => (S::NOT_FOUND, 40408),
        Error::ModeNotConfigured(_) => (S::NOT_FOUND, 40409),
        Error::Incompatible { .. } => (S::CONFLICT, 40901),
        Error::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, 413),
        Error::InvalidSchema(_) => (S::UNPROCESSABLE_ENTITY, 42201),
        Error::InvalidVersion(_) => (S::UNPROCESSABLE_ENTITY, 42202),
        Error::InvalidCompatibilityLevel => (S::UNPROCESSABLE_ENTITY, 42203),
        Error::InvalidMode(_) => (S::UNPROCESSABLE_ENTITY, 42204),
        Error::NotPermitted(_) => (S::UNPROCESSABLE_ENTITY, 42205),
        Error::ReferenceExists { .. } => (S::UNPROCESSABLE_ENTITY, 42206),
        Error::IdDoesNotMatch(_) => (S::UNPROCESSABLE_ENTITY, 42207),
        Error::InvalidSubject(_) => (S::UNPROCESSABLE_ENTITY, 42208),
        Error::Store(_) => (S::INTERNAL_SERVER_ERROR, 50001),
        Error::ForwardingFailed(_) => (S::INTERNAL_SERVER_ERROR, 50003),
        Error::NotLeader => (S::INTERNAL_SERVER_ERROR, 50004),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message}).to_string();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

/// A refused request: 401 asks for credentials (`WWW-Authenticate`), 403 names the role needed.
fn denied(denied: Denied) -> Response {
    let mut response = ApiError::http(denied.status(), denied.message()).into_response();
    if denied == Denied::Unauthorized {
        let challenge = Denied::challenge("logpipe-schema-store");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).expect("a realm is header text"),
        );
    }
    response
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) registry: Arc<Registry>,
    pub(crate) auth: Arc<Auth>,
    /// With Kafka storage: runs writes at the leader.
    pub(crate) forwarder: Option<Arc<Forwarder>>,
}

/// One route of the API.
pub(crate) type Route = openapi::Route<AppState>;

const DELETED: QueryParam = QueryParam::flag("deleted", "include soft-deleted entries");
const PERMANENT: QueryParam =
    QueryParam::flag("permanent", "hard delete (only after a soft delete)");
const VERBOSE: QueryParam = QueryParam::flag("verbose", "return the reasons for incompatibility");
const NORMALIZE: QueryParam = QueryParam::flag("normalize", "ignored");
const FORCE: QueryParam = QueryParam::flag("force", "allow IMPORT with existing subjects");
const SUBJECT_IGNORED: QueryParam = QueryParam::text("subject", "ignored");
const FORMAT_IGNORED: QueryParam = QueryParam::text("format", "ignored");
const SUBJECT_PREFIX: QueryParam =
    QueryParam::text("subjectPrefix", "only subjects starting with this");
const DEFAULT_TO_GLOBAL: QueryParam = QueryParam::flag(
    "defaultToGlobal",
    "fall back to the global setting instead of 404",
);

/// The whole API surface.
pub(crate) fn routes() -> Vec<Route> {
    use Method as M;
    use Role::*;
    vec![
        route(
            M::GET,
            "/",
            Read,
            "Server root (empty object)",
            &[],
            None,
            "Empty",
            on(MethodFilter::GET, root),
        ),
        route(
            M::GET,
            "/schemas/types",
            Read,
            "Supported schema types",
            &[],
            None,
            "StringList",
            on(MethodFilter::GET, schema_types),
        ),
        route(
            M::GET,
            "/schemas/ids/{id}",
            Read,
            "Schema by global id",
            &[SUBJECT_IGNORED, FORMAT_IGNORED],
            None,
            "SchemaById",
            on(MethodFilter::GET, schema_by_id),
        ),
        route(
            M::GET,
            "/schemas/ids/{id}/schema",
            Read,
            "Raw schema by global id",
            &[],
            None,
            "RawSchema",
            on(MethodFilter::GET, raw_schema_by_id),
        ),
        route(
            M::GET,
            "/schemas/ids/{id}/subjects",
            Read,
            "Subjects using a schema id",
            &[DELETED],
            None,
            "StringList",
            on(MethodFilter::GET, subjects_of_id),
        ),
        route(
            M::GET,
            "/schemas/ids/{id}/versions",
            Read,
            "Subject versions using a schema id",
            &[DELETED],
            None,
            "SubjectVersionList",
            on(MethodFilter::GET, versions_of_id),
        ),
        route(
            M::GET,
            "/subjects",
            Read,
            "List subjects",
            &[DELETED, SUBJECT_PREFIX],
            None,
            "StringList",
            on(MethodFilter::GET, list_subjects),
        ),
        route(
            M::POST,
            "/subjects/{subject}",
            Read,
            "Look up a schema under a subject",
            &[DELETED, NORMALIZE],
            Some("RegisterRequest"),
            "SubjectVersion",
            on(MethodFilter::POST, lookup),
        ),
        route(
            M::DELETE,
            "/subjects/{subject}",
            Write,
            "Delete a subject (soft, or permanent after soft)",
            &[PERMANENT],
            None,
            "IntList",
            on(MethodFilter::DELETE, delete_subject),
        ),
        route(
            M::GET,
            "/subjects/{subject}/versions",
            Read,
            "List versions of a subject",
            &[DELETED],
            None,
            "IntList",
            on(MethodFilter::GET, list_versions),
        ),
        route(
            M::POST,
            "/subjects/{subject}/versions",
            Write,
            "Register a schema under a subject",
            &[NORMALIZE],
            Some("RegisterRequest"),
            "RegisterResponse",
            on(MethodFilter::POST, register),
        ),
        route(
            M::GET,
            "/subjects/{subject}/versions/{version}",
            Read,
            "Get a version (number, latest or -1)",
            &[DELETED],
            None,
            "SubjectVersion",
            on(MethodFilter::GET, get_version),
        ),
        route(
            M::DELETE,
            "/subjects/{subject}/versions/{version}",
            Write,
            "Delete a version (soft, or permanent after soft)",
            &[PERMANENT],
            None,
            "Int",
            on(MethodFilter::DELETE, delete_version),
        ),
        route(
            M::GET,
            "/subjects/{subject}/versions/{version}/schema",
            Read,
            "Raw schema of a version",
            &[DELETED],
            None,
            "RawSchema",
            on(MethodFilter::GET, raw_version),
        ),
        route(
            M::GET,
            "/subjects/{subject}/versions/{version}/referencedby",
            Read,
            "Ids of schemas referencing a version",
            &[],
            None,
            "IntList",
            on(MethodFilter::GET, referenced_by),
        ),
        route(
            M::POST,
            "/compatibility/subjects/{subject}/versions/{version}",
            Read,
            "Test compatibility against one version",
            &[VERBOSE],
            Some("RegisterRequest"),
            "CompatibilityResponse",
            on(MethodFilter::POST, compatibility_version),
        ),
        route(
            M::POST,
            "/compatibility/subjects/{subject}/versions",
            Read,
            "Test compatibility against the versions the level selects",
            &[VERBOSE],
            Some("RegisterRequest"),
            "CompatibilityResponse",
            on(MethodFilter::POST, compatibility_all),
        ),
        route(
            M::GET,
            "/config",
            Read,
            "Global compatibility level",
            &[],
            None,
            "ConfigResponse",
            on(MethodFilter::GET, get_global::<Level>),
        ),
        route(
            M::PUT,
            "/config",
            Admin,
            "Set the global compatibility level",
            &[],
            Some("ConfigRequest"),
            "ConfigRequest",
            on(MethodFilter::PUT, put_global::<Level>),
        ),
        route(
            M::DELETE,
            "/config",
            Admin,
            "Reset the global compatibility level to BACKWARD",
            &[],
            None,
            "ConfigResponse",
            on(MethodFilter::DELETE, delete_global::<Level>),
        ),
        route(
            M::GET,
            "/config/{subject}",
            Read,
            "Subject compatibility level (40408 when unset)",
            &[DEFAULT_TO_GLOBAL],
            None,
            "ConfigResponse",
            on(MethodFilter::GET, get_subject_setting::<Level>),
        ),
        route(
            M::PUT,
            "/config/{subject}",
            Admin,
            "Set a subject's compatibility level",
            &[],
            Some("ConfigRequest"),
            "ConfigRequest",
            on(MethodFilter::PUT, put_subject_setting::<Level>),
        ),
        route(
            M::DELETE,
            "/config/{subject}",
            Admin,
            "Remove a subject's compatibility level",
            &[],
            None,
            "ConfigResponse",
            on(MethodFilter::DELETE, delete_subject_setting::<Level>),
        ),
        route(
            M::GET,
            "/mode",
            Read,
            "Global mode",
            &[],
            None,
            "Mode",
            on(MethodFilter::GET, get_global::<Mode>),
        ),
        route(
            M::PUT,
            "/mode",
            Admin,
            "Set the global mode",
            &[FORCE],
            Some("Mode"),
            "Mode",
            on(MethodFilter::PUT, put_global::<Mode>),
        ),
        route(
            M::DELETE,
            "/mode",
            Admin,
            "Reset the global mode to READWRITE",
            &[],
            None,
            "Mode",
            on(MethodFilter::DELETE, delete_global::<Mode>),
        ),
        route(
            M::GET,
            "/mode/{subject}",
            Read,
            "Subject mode (40409 when unset)",
            &[DEFAULT_TO_GLOBAL],
            None,
            "Mode",
            on(MethodFilter::GET, get_subject_setting::<Mode>),
        ),
        route(
            M::PUT,
            "/mode/{subject}",
            Admin,
            "Set a subject's mode",
            &[],
            Some("Mode"),
            "Mode",
            on(MethodFilter::PUT, put_subject_setting::<Mode>),
        ),
        route(
            M::DELETE,
            "/mode/{subject}",
            Admin,
            "Remove a subject's mode",
            &[],
            None,
            "Mode",
            on(MethodFilter::DELETE, delete_subject_setting::<Mode>),
        ),
        route(
            M::GET,
            "/openapi.json",
            Read,
            "This document",
            &[],
            None,
            "OpenApi",
            on(MethodFilter::GET, openapi),
        ),
    ]
}

/// The API router with content negotiation, authorization and the body size limit.
pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut router = Router::new();
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for Route {
        operation: r,
        handler,
    } in routes()
    {
        // The latency histogram doubles as the request count; its handle is made once per
        // route so the hot path does no metric lookups.
        let timing = metrics::histogram!(metric::HTTP_REQUEST, "method" => r.method.to_string(), "route" => r.path);
        let guard = RouteGuard {
            state: state.clone(),
            role: r.role,
            route: r.path,
            timing,
        };
        let handler = handler.layer(middleware::from_fn_with_state(guard, authorize));
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(handler),
            None => by_path.push((r.path, handler)),
        }
    }
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::http(StatusCode::NOT_FOUND, "HTTP 404 Not Found") })
        .method_not_allowed_fallback(|| async {
            ApiError::http(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTP 405 Method Not Allowed",
            )
        })
        .layer(middleware::from_fn(negotiate))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// What each route's middleware knows about its route.
#[derive(Clone)]
struct RouteGuard {
    state: AppState,
    role: Role,
    route: &'static str,
    timing: metrics::Histogram,
}

/// Per route: checks the caller's role, then times the request and counts error responses.
async fn authorize(State(guard): State<RouteGuard>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // Permanent deletes destroy data: they need the admin role, soft deletes only write.
    let permanent = request.method() == Method::DELETE
        && request
            .uri()
            .query()
            .is_some_and(|q| q.contains("permanent=true"));
    let role = if permanent { Role::Admin } else { guard.role };
    let response = match (
        guard.state.auth.authorize(request.headers(), role),
        &guard.state.forwarder,
    ) {
        (Ok(()), Some(forwarder)) if role >= Role::Write => forwarder
            .write(request, next)
            .await
            .unwrap_or_else(|e| ApiError::from(e).into_response()),
        (Ok(()), _) => next.run(request).await,
        (Err(refused), _) => denied(refused),
    };
    guard.timing.record(started.elapsed().as_secs_f64());
    if !response.status().is_success() {
        let status = response.status().as_u16().to_string();
        metrics::counter!(metric::HTTP_ERRORS, "route" => guard.route, "status" => status)
            .increment(1);
    }
    response
}

fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// 406 when `Accept` names nothing we produce; 415 when a body has another content type.
async fn negotiate(request: Request, next: Next) -> Response {
    if let Some(accept) = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    {
        let acceptable = accept.split(',').map(media_type).any(|m| {
            m.is_empty() || m == "*/*" || m == "application/*" || JSON_TYPES.contains(&m.as_str())
        });
        if !acceptable {
            metrics::counter!(metric::REQUESTS_REJECTED, "reason" => "not_acceptable").increment(1);
            return ApiError::http(StatusCode::NOT_ACCEPTABLE, "HTTP 406 Not Acceptable")
                .into_response();
        }
    }
    if matches!(*request.method(), Method::POST | Method::PUT) {
        if let Some(content_type) = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            if !JSON_TYPES.contains(&media_type(content_type).as_str()) {
                metrics::counter!(metric::REQUESTS_REJECTED, "reason" => "unsupported_media_type")
                    .increment(1);
                return ApiError::http(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "HTTP 415 Unsupported Media Type",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// A JSON response with Confluent's content type.
fn reply<T: Serialize>(value: &T) -> Response {
    raw_reply(serde_json::to_vec(value).expect("responses serialize"))
}

/// A body that is JSON already (a stored schema's text), with Confluent's content type.
fn raw_reply(body: impl Into<axum::body::Body>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body.into(),
    )
        .into_response()
}

/// A JSON request body: size-limited, with invalid JSON answered 400 and the parser's message.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                metrics::counter!(metric::REQUESTS_REJECTED, "reason" => "too_large").increment(1);
                Error::BodyTooLarge.into()
            } else {
                ApiError::http(
                    StatusCode::BAD_REQUEST,
                    format!("Cannot read the request body: {e}"),
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            metrics::counter!(metric::REQUESTS_REJECTED, "reason" => "bad_json").increment(1);
            ApiError::http(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}"))
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
/// Query parameters; unknown ones are ignored, as in Confluent.
struct Flags {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    verbose: bool,
    #[serde(default)]
    default_to_global: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    subject_prefix: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Flags {
    type Rejection = ApiError;

    /// A malformed query (`?deleted=maybe`) is a 400 in Confluent's error shape.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Flags, ApiError> {
        Query::<Flags>::try_from_uri(&parts.uri)
            .map(|Query(flags)| flags)
            .map_err(|e| {
                ApiError::http(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid query parameters: {}", e.body_text()),
                )
            })
    }
}

/// `POST /subjects/{s}/versions` and friends. Unknown fields (metadata, ruleSet...) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Reference>>,
    id: Option<i64>,
    version: Option<i64>,
}

impl SchemaRequest {
    fn into_new(self) -> Result<NewSchema, Error> {
        let schema = self
            .schema
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Error::InvalidSchema("Empty schema".into()))?;
        let schema_type =
            SchemaType::from_request(self.schema_type.as_deref()).map_err(Error::InvalidSchema)?;
        let id = self
            .id
            .filter(|i| *i > 0)
            .map(|i| u32::try_from(i).map_err(|_| Error::InvalidSchema(format!("Invalid id {i}"))))
            .transpose()?;
        let version = match self.version.filter(|v| *v > 0) {
            Some(v) => match VersionSelector::parse(&v.to_string())? {
                VersionSelector::Number(n) => Some(n),
                VersionSelector::Latest => None,
            },
            None => None,
        };
        Ok(NewSchema {
            schema,
            schema_type,
            references: self.references.unwrap_or_default(),
            id,
            version,
        })
    }
}

fn parse_id(text: &str) -> Result<u32, Error> {
    text.parse().map_err(|_| Error::SchemaNotFound)
}

fn subject_path(subject: &str) -> Result<&str, Error> {
    validate_subject(subject)?;
    Ok(subject)
}

async fn root() -> Response {
    reply(&json!({}))
}

async fn schema_types() -> Response {
    reply(&SchemaType::ALL.map(|t| t.as_str()))
}

async fn schema_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let registry = state.registry.read();
    let schema = registry.schema_by_id(id)?;
    let mut body = serde_json::Map::new();
    if !schema.schema_type.is_avro() {
        body.insert("schemaType".into(), json!(schema.schema_type));
    }
    if !schema.references.is_empty() {
        body.insert("references".into(), json!(schema.references));
    }
    body.insert("schema".into(), json!(schema.schema));
    metrics::counter!(metric::LOOKUPS, "by" => "id").increment(1);
    Ok(reply(&body))
}

async fn raw_schema_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(raw_reply(
        state.registry.read().schema_by_id(id)?.schema.clone(),
    ))
}

/// The subject versions using schema `id` (40403 when there is no such id).
fn usages_of(state: &AppState, id: &str, deleted: bool) -> Result<Vec<(String, u32)>, Error> {
    let id = parse_id(id)?;
    let registry = state.registry.read();
    registry.schema_by_id(id)?;
    Ok(registry.usages(id, deleted))
}

async fn subjects_of_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Flags,
) -> Result<Response, ApiError> {
    let mut subjects: Vec<String> = usages_of(&state, &id, query.deleted)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(reply(&subjects))
}

async fn versions_of_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Flags,
) -> Result<Response, ApiError> {
    let usages: Vec<_> = usages_of(&state, &id, query.deleted)?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(reply(&usages))
}

async fn list_subjects(State(state): State<AppState>, query: Flags) -> Response {
    let flags = query;
    reply(
        &state
            .registry
            .read()
            .subjects(flags.subject_prefix.as_deref().unwrap_or(""), flags.deleted),
    )
}

async fn list_versions(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> Result<Response, ApiError> {
    Ok(reply(
        &state
            .registry
            .read()
            .versions(subject_path(&subject)?, query.deleted)?,
    ))
}

async fn get_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> Result<Response, ApiError> {
    let selector = VersionSelector::parse(&version)?;
    metrics::counter!(metric::LOOKUPS, "by" => "version").increment(1);
    Ok(reply(&state.registry.read().subject_version(
        subject_path(&subject)?,
        selector,
        query.deleted,
    )?))
}

async fn raw_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> Result<Response, ApiError> {
    let selector = VersionSelector::parse(&version)?;
    let found =
        state
            .registry
            .read()
            .subject_version(subject_path(&subject)?, selector, query.deleted)?;
    Ok(raw_reply(found.schema))
}

async fn referenced_by(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let selector = VersionSelector::parse(&version)?;
    let registry = state.registry.read();
    let (version, _) = registry.version(subject_path(&subject)?, selector, true)?;
    Ok(reply(&registry.referenced_by(&subject, version)))
}

async fn register(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let new = request.into_new()?;
    let result = state
        .registry
        .write(move |registry| registry.register(&subject, &new))
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(Error::Incompatible { .. }) => "incompatible",
        Err(_) => "error",
    };
    metrics::counter!(metric::REGISTRATIONS, "outcome" => outcome).increment(1);
    Ok(reply(&json!({"id": result?})))
}

async fn lookup(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let new = request.into_new()?;
    metrics::counter!(metric::LOOKUPS, "by" => "schema").increment(1);
    Ok(reply(&state.registry.read().lookup(
        &subject,
        new.schema_type,
        &new.schema,
        &new.references,
        query.deleted,
    )?))
}

async fn delete_subject(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let permanent = query.permanent;
    Ok(reply(
        &state
            .registry
            .write(move |registry| registry.delete_subject(&subject, permanent))
            .await?,
    ))
}

async fn delete_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let selector = VersionSelector::parse(&version)?;
    let permanent = query.permanent;
    Ok(reply(
        &state
            .registry
            .write(move |registry| registry.delete_version(&subject, selector, permanent))
            .await?,
    ))
}

/// `is_compatible` (and with `verbose`, the reasons) of a candidate against one version of a
/// subject or the versions its level selects.
fn compatibility_reply(
    state: &AppState,
    subject: &str,
    version: Option<&str>,
    request: SchemaRequest,
    verbose: bool,
) -> Result<Response, ApiError> {
    validate_subject(subject)?;
    let selector = version.map(VersionSelector::parse).transpose()?;
    let registry = state.registry.read();
    let new = request.into_new()?;
    if let Some(selector) = selector {
        registry.version(subject, selector, false)?;
    }
    let (_, _, parsed) = registry.prepare(new.schema_type, &new.schema, &new.references)?;
    let messages = registry.compatibility(subject, selector, &parsed)?;
    let mut body = json!({"is_compatible": messages.is_empty()});
    if verbose {
        body["messages"] = json!(messages);
    }
    Ok(reply(&body))
}

async fn compatibility_version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    query: Flags,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    compatibility_reply(&state, &subject, Some(&version), request, query.verbose)
}

async fn compatibility_all(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    compatibility_reply(&state, &subject, None, request, query.verbose)
}

/// Compatibility levels and modes have the same shape: a global value with a default and
/// optional per-subject values, read, set and removed the same way.
trait Setting: Copy + Serialize + Send + Sync + 'static {
    /// The field of GET and DELETE replies (`compatibilityLevel`, `mode`).
    const FIELD: &'static str;
    /// The field of PUT requests and replies (`compatibility`, `mode`).
    const PUT_FIELD: &'static str;
    fn global(state: &RegistryState) -> Self;
    fn subject(state: &RegistryState, subject: &str) -> Option<Self>;
    fn record(subject: Option<&str>, value: Option<Self>) -> Record;
    fn not_configured(subject: &str) -> Error;
    fn parse(body: &Value) -> Result<Self, Error>;
    /// Refuses a new global value the state does not allow.
    fn check_global(_state: &RegistryState, _value: Self, _force: bool) -> Result<(), Error> {
        Ok(())
    }
}

impl Setting for Level {
    const FIELD: &'static str = "compatibilityLevel";
    const PUT_FIELD: &'static str = "compatibility";
    fn global(state: &RegistryState) -> Level {
        state.global_level()
    }
    fn subject(state: &RegistryState, subject: &str) -> Option<Level> {
        state.subject_level(subject)
    }
    fn record(subject: Option<&str>, value: Option<Level>) -> Record {
        RegistryState::config_record(subject, value)
    }
    fn not_configured(subject: &str) -> Error {
        Error::CompatibilityNotConfigured(subject.to_owned())
    }
    fn parse(body: &Value) -> Result<Level, Error> {
        // Confluent accepts the PUT field and, from some clients, the GET field.
        let text = body["compatibility"]
            .as_str()
            .or(body["compatibilityLevel"].as_str())
            .ok_or(Error::InvalidCompatibilityLevel)?;
        text.parse().map_err(|_| Error::InvalidCompatibilityLevel)
    }
}

impl Setting for Mode {
    const FIELD: &'static str = "mode";
    const PUT_FIELD: &'static str = "mode";
    fn global(state: &RegistryState) -> Mode {
        state.global_mode()
    }
    fn subject(state: &RegistryState, subject: &str) -> Option<Mode> {
        state.subject_mode(subject)
    }
    fn record(subject: Option<&str>, value: Option<Mode>) -> Record {
        RegistryState::mode_record(subject, value)
    }
    fn not_configured(subject: &str) -> Error {
        Error::ModeNotConfigured(subject.to_owned())
    }
    fn parse(body: &Value) -> Result<Mode, Error> {
        let text = body["mode"].as_str().unwrap_or_default();
        Mode::parse(text).ok_or_else(|| Error::InvalidMode(text.to_owned()))
    }
    fn check_global(state: &RegistryState, mode: Mode, force: bool) -> Result<(), Error> {
        if mode == Mode::Import && state.has_subjects() && !force {
            return Err(Error::NotPermitted(
                "Cannot import since found existing subjects (use force=true)".into(),
            ));
        }
        Ok(())
    }
}

fn setting_reply<S: Setting>(field: &str, value: S) -> Response {
    let mut body = serde_json::Map::new();
    body.insert(field.to_owned(), json!(value));
    reply(&body)
}

async fn get_global<S: Setting>(State(state): State<AppState>) -> Response {
    setting_reply(S::FIELD, S::global(&state.registry.read()))
}

async fn put_global<S: Setting>(
    State(state): State<AppState>,
    query: Flags,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let value = S::parse(&body)?;
    state
        .registry
        .write(move |r| {
            S::check_global(r, value, query.force)
                .map(|()| ((), vec![S::record(None, Some(value))]))
        })
        .await?;
    Ok(setting_reply(S::PUT_FIELD, value))
}

async fn delete_global<S: Setting>(State(state): State<AppState>) -> Result<Response, ApiError> {
    let previous = state
        .registry
        .write(move |r| Ok((S::global(r), vec![S::record(None, None)])))
        .await?;
    Ok(setting_reply(S::FIELD, previous))
}

async fn get_subject_setting<S: Setting>(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    query: Flags,
) -> Result<Response, ApiError> {
    let registry = state.registry.read();
    let subject = subject_path(&subject)?;
    match (S::subject(&registry, subject), query.default_to_global) {
        (Some(value), _) => Ok(setting_reply(S::FIELD, value)),
        (None, true) => Ok(setting_reply(S::FIELD, S::global(&registry))),
        (None, false) => Err(S::not_configured(subject).into()),
    }
}

async fn put_subject_setting<S: Setting>(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let value = S::parse(&body)?;
    state
        .registry
        .write(move |_| Ok(((), vec![S::record(Some(&subject), Some(value))])))
        .await?;
    Ok(setting_reply(S::PUT_FIELD, value))
}

async fn delete_subject_setting<S: Setting>(
    State(state): State<AppState>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    validate_subject(&subject)?;
    let previous = state
        .registry
        .write(move |r| match S::subject(r, &subject) {
            Some(value) => Ok((value, vec![S::record(Some(&subject), None)])),
            None => Err(Error::SubjectNotFound(subject)),
        })
        .await?;
    Ok(setting_reply(S::FIELD, previous))
}

async fn openapi() -> Response {
    reply(openapi_document())
}

/// The served OpenAPI document, built once from the route table.
fn openapi_document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let routes = routes();
        openapi::build(
            &crate::openapi::api(CONTENT_TYPE),
            routes.iter().map(|r| &r.operation),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let document = openapi_document();
        let paths = document["paths"].as_object().unwrap();
        let mut documented = 0;
        for (path, item) in paths {
            documented += item.as_object().unwrap().len();
            for (_, operation) in item.as_object().unwrap() {
                // Every $ref resolves.
                for reference in [
                    &operation["responses"]["200"]["content"][CONTENT_TYPE]["schema"]["$ref"],
                    &operation["requestBody"]["content"][CONTENT_TYPE]["schema"]["$ref"],
                ] {
                    if let Some(r) = reference.as_str() {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(
                            document["components"]["schemas"].get(name).is_some(),
                            "{path}: dangling {r}"
                        );
                    }
                }
            }
        }
        let routes = routes();
        assert_eq!(documented, routes.len());
        for Route {
            operation: route, ..
        } in &routes
        {
            let operation = &paths[route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {} is not documented",
                route.method,
                route.path
            );
            let params: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                params,
                openapi::path_parameters(route.path).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn domain_errors_get_confluents_statuses_codes_and_messages() {
        let subject = || "s".to_owned();
        let cases = [
            (
                Error::SubjectNotFound(subject()),
                404,
                40401,
                "Subject 's' not found.",
            ),
            (
                Error::VersionNotFound("3".into()),
                404,
                40402,
                "Version 3 not found.",
            ),
            (Error::SchemaNotFound, 404, 40403, "Schema not found"),
            (Error::SchemaIdNotFound(9), 404, 40403, "Schema 9 not found"),
            (
                Error::SubjectSoftDeleted(subject()),
                404,
                40404,
                "Subject 's' was soft deleted.Set permanent=true to delete permanently",
            ),
            (
                Error::SubjectNotSoftDeleted(subject()),
                404,
                40405,
                "Subject 's' was not deleted first before being permanently deleted",
            ),
            (
                Error::VersionSoftDeleted {
                    subject: subject(),
                    version: 2,
                },
                404,
                40406,
                "Subject 's' Version 2 was soft deleted.Set permanent=true to delete permanently",
            ),
            (
                Error::VersionNotSoftDeleted {
                    subject: subject(),
                    version: 2,
                },
                404,
                40407,
                "Subject 's' Version 2 was not deleted first before being permanently deleted",
            ),
            (
                Error::CompatibilityNotConfigured(subject()),
                404,
                40408,
                "Subject 's' does not have subject-level compatibility configured",
            ),
            (
                Error::ModeNotConfigured(subject()),
                404,
                40409,
                "Subject 's' does not have subject-level mode configured",
            ),
            (
                Error::Incompatible {
                    subject: subject(),
                    messages: vec!["a".into(), "b".into()],
                },
                409,
                40901,
                "Schema being registered is incompatible with an earlier schema for subject \
                 \"s\", details: [a, b]",
            ),
            (Error::InvalidSchema("bad".into()), 422, 42201, "bad"),
            (
                Error::InvalidVersion("x".into()),
                422,
                42202,
                "The specified version 'x' is not a valid version id. Allowed values are \
                 between [1, 2^31-1] and the string \"latest\"",
            ),
            (
                Error::InvalidCompatibilityLevel,
                422,
                42203,
                "Invalid compatibility level. Valid values are none, backward, forward, full, \
                 backward_transitive, forward_transitive, and full_transitive",
            ),
            (
                Error::InvalidMode("X".into()),
                422,
                42204,
                "Invalid mode X. Valid values are READWRITE, READONLY and IMPORT",
            ),
            (Error::NotPermitted("no".into()), 422, 42205, "no"),
            (
                Error::ReferenceExists {
                    subject: subject(),
                    version: 1,
                    by: vec![4, 5],
                },
                422,
                42206,
                "One or more references exist to the schema {subject=s,version=1}: referenced \
                 by schema ids [4, 5]",
            ),
            (Error::IdDoesNotMatch("id".into()), 422, 42207, "id"),
            (
                Error::InvalidSubject("\n".into()),
                422,
                42208,
                "The specified subject \"\\n\" is not valid: it is empty or contains control \
                 characters",
            ),
            (
                Error::BodyTooLarge,
                413,
                413,
                "Request body is larger than the configured limit (max_body_bytes)",
            ),
            (Error::Store("disk".into()), 500, 50001, "disk"),
            (Error::ForwardingFailed("down".into()), 500, 50003, "down"),
            (
                Error::NotLeader,
                500,
                50004,
                "This instance is not the schema store leader and no leader is known; retry",
            ),
        ];
        for (error, status, code, message) in cases {
            let api = ApiError::from(error);
            assert_eq!(
                (api.status.as_u16(), api.code, api.message.as_str()),
                (status, code, message)
            );
        }
    }

    #[tokio::test]
    async fn error_bodies_are_confluents_shape() {
        let response = ApiError::from(Error::SubjectNotFound("s".into())).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error_code": 40401, "message": "Subject 's' not found."})
        );
    }

    #[test]
    fn refusals_ask_for_credentials_or_name_the_role() {
        let unauthorized = denied(Denied::Unauthorized);
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert!(unauthorized
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
        let forbidden = denied(Denied::Forbidden {
            user: "app".into(),
            needed: Role::Admin,
        });
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(!forbidden.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
