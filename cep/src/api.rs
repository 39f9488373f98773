//! The rules API, served on the telemetry listener (the contract's table):
//! `PUT/GET/DELETE /rules/{name}`, `GET /rules`, `GET /rules/{name}/versions/{v}`,
//! `GET /rules/{name}/status` and `POST /rules/{name}/test`. Writes need the `write` role when
//! `[auth]` is configured; reads the `read` role.
//!
//! Errors are `{"error": "...", "key": "..."}` with the document key at fault when there is one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use logpipe_core::auth::{Auth, Denied, Role};
use logpipe_core::kafka::KafkaConfig;
use logpipe_core::openapi::{self, route, QueryParam};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::counter::Counter;
use crate::decode::Decoder;
use crate::pipeline::Stats;
use crate::rule::{parse_text, Rule, RuleError};
use crate::rules_store::{now_ms, Rules, StoredRule};
use crate::ruleset::RuleSet;
use crate::sources;
use crate::timed::Track;

/// Most records per partition a rule test reads.
const MAX_TEST_RECORDS: i64 = 100_000;
/// Matches a rule test lists (it counts them all).
const TEST_MATCHES_SHOWN: usize = 100;

/// What the handlers share.
pub(crate) struct Api {
    pub(crate) rules: Arc<Rules>,
    pub(crate) auth: Auth,
    pub(crate) kafka: KafkaConfig,
    pub(crate) decoder: Mutex<Decoder>,
    pub(crate) stats: Stats,
    /// Each source's schema ids and field paths, read from its latest records, kept for
    /// [`SOURCE_FIELDS_TTL`] so that a rules file of many rules reads each source once.
    pub(crate) source_fields: Mutex<HashMap<String, (Instant, SourceFields)>>,
    /// The longest `within` or window span a rule may ask for (ms).
    pub(crate) max_within: i64,
}

/// A source topic's recent schema ids and the field paths their schemas give.
type SourceFields = (BTreeSet<u32>, BTreeSet<String>);

/// How long a source's fields are trusted before its records are read again.
const SOURCE_FIELDS_TTL: Duration = Duration::from_secs(10);

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    key: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            key: None,
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            key: Some(e.key),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        ApiError::new(denied.status(), denied.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(key) = self.key {
            body["key"] = json!(key);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = Denied::challenge("logpipe-cep");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).expect("a realm is header text"),
            );
        }
        response
    }
}

type Answer = Result<Response, ApiError>;

/// A request axum could not take apart (a path, query or body that is not what the route
/// expects), answered as the API's JSON error like every other refusal.
fn refused<R: IntoResponse + std::fmt::Display>(rejection: R) -> ApiError {
    let message = rejection.to_string();
    ApiError::new(rejection.into_response().status(), message)
}

/// One route of the API.
type Route = openapi::Route<Arc<Api>>;

const RECORDS: QueryParam = QueryParam::integer(
    "records",
    "records per partition of each source to test on (1 to 100,000; default 1,000)",
);

/// The whole API: the router and the OpenAPI document both come from this table.
fn routes() -> Vec<Route> {
    use Method as M;
    use Role::*;
    vec![
        route(
            M::GET,
            "/rules",
            Read,
            "Every active rule, current version",
            &[],
            None,
            "RuleList",
            get(list),
        ),
        route(
            M::GET,
            "/rules/{name}",
            Read,
            "A rule's current version",
            &[],
            None,
            "StoredRule",
            get(current),
        ),
        route(
            M::PUT,
            "/rules/{name}",
            Write,
            "Store a new version of a rule (JSON, or YAML as text)",
            &[],
            Some("RuleDocument"),
            "PutAnswer",
            put(put_rule),
        ),
        route(
            M::DELETE,
            "/rules/{name}",
            Write,
            "Delete a rule (a version without a document)",
            &[],
            None,
            "DeleteAnswer",
            delete(delete_rule),
        ),
        route(
            M::GET,
            "/rules/{name}/versions/{version}",
            Read,
            "One version of a rule",
            &[],
            None,
            "StoredRule",
            get(version),
        ),
        route(
            M::GET,
            "/rules/{name}/status",
            Read,
            "What this worker's partitions did with the rule",
            &[],
            None,
            "Status",
            get(status),
        ),
        route(
            M::POST,
            "/rules/{name}/test",
            Read,
            "Run the current version, or the document sent, over recent records; writes nothing",
            &[RECORDS],
            Some("RuleDocument"),
            "TestAnswer",
            post(test),
        ),
    ]
}

/// `GET /openapi.json`, built from [`routes`].
fn openapi_document() -> Value {
    let routes = routes();
    openapi::build(&crate::openapi::api(), routes.iter().map(|r| &r.operation))
}

pub(crate) fn router(api: Arc<Api>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        router = router.route(route.operation.path, route.handler);
    }
    router
        .route("/openapi.json", get(|| async { Json(openapi_document()) }))
        .with_state(api)
}

fn stored_json(stored: &StoredRule) -> Value {
    let mut value = json!({"name": stored.name, "version": stored.version, "created_at": stored.created_at, "document": stored.document});
    if !stored.replay.is_empty() {
        value["replay"] = json!(stored.replay);
    }
    value
}

impl Api {
    /// Checks a document and stores it as a new version. With `unless_same`, a document equal to
    /// the current version's is not stored again (rules files applied at every start).
    pub(crate) async fn put_rule(
        &self,
        name: &str,
        document: Value,
        unless_same: bool,
    ) -> Result<(StoredRule, Vec<String>, bool), ApiError> {
        let rule = Rule::compile(name, 0, 0, &document)?;
        if let Some((key, span)) = rule.timing.as_ref().and_then(|t| t.span()) {
            if span > self.max_within {
                return Err(RuleError {
                    key: key.to_owned(),
                    message: format!(
                        "{} is longer than this worker's max_within ({}): every partial match needs a bound",
                        humantime::format_duration(Duration::from_millis(span as u64)),
                        humantime::format_duration(Duration::from_millis(self.max_within as u64)),
                    ),
                }
                .into());
            }
        }
        if unless_same {
            if let Some(current) = self.rules.book().current(name) {
                if current.document.as_ref() == Some(&document) {
                    return Ok((current.clone(), Vec::new(), false));
                }
            }
        }
        let warnings = self.check_fields(&rule).await?;
        let replay = if rule.from == crate::timing::From::Latest {
            Default::default()
        } else {
            let (kafka, sources, from) = (self.kafka.clone(), rule.sources.clone(), rule.from);
            tokio::task::spawn_blocking(move || crate::replay::boundaries(&kafka, &sources, from))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("finding where the replay starts: {e:#}"),
                    )
                })?
        };
        let stored = self
            .rules
            .write(name, Some(document), replay)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
        Ok((stored, warnings, true))
    }

    /// A source's fields, from the cache or its latest records; a source without records is
    /// read again next time.
    async fn source_fields(&self, topic: &str) -> Result<SourceFields, ApiError> {
        let mut cache = self.source_fields.lock().await;
        if let Some((read, fields)) = cache.get(topic) {
            if read.elapsed() < SOURCE_FIELDS_TTL {
                return Ok(fields.clone());
            }
        }
        let mut decoder = self.decoder.lock().await;
        let fields = sources::fields(&self.kafka, &mut decoder, topic)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the schemas of {topic}: {e:#}"),
                )
            })?;
        if !fields.0.is_empty() {
            cache.insert(topic.to_owned(), (Instant::now(), fields.clone()));
        }
        Ok(fields)
    }

    /// Every field the rule reads must be a field of a schema its sources' records were written
    /// with. A source with no records yet cannot be checked: that is a warning, not an error.
    async fn check_fields(&self, rule: &Rule) -> Result<Vec<String>, ApiError> {
        let mut known: Vec<(String, BTreeSet<u32>, BTreeSet<String>)> = Vec::new();
        let mut warnings = Vec::new();
        for topic in &rule.sources {
            let (ids, paths) = self.source_fields(topic).await?;
            if ids.is_empty() {
                warnings.push(format!("{topic} has no records yet: the rule's fields were not checked against its schemas"));
            } else {
                known.push((topic.clone(), ids, paths));
            }
        }
        if known.is_empty() {
            return Ok(warnings);
        }
        for (key, field) in rule.fields() {
            if !known
                .iter()
                .any(|(_, _, paths)| sources::has_field(paths, &field))
            {
                let seen: Vec<String> = known
                    .iter()
                    .map(|(t, ids, _)| {
                        format!(
                            "{t} (schema ids {})",
                            ids.iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                    .collect();
                return Err(ApiError::from(RuleError {
                    key,
                    message: format!(
                        "{field:?} is not a field of the schemas of {}",
                        seen.join(", ")
                    ),
                }));
            }
        }
        Ok(warnings)
    }
}

async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Answer {
    api.auth.authorize(&headers, Role::Read)?;
    let book = api.rules.book();
    let all: Vec<Value> = book.active().into_iter().map(stored_json).collect();
    Ok(Json(all).into_response())
}

async fn current(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Answer {
    api.auth.authorize(&headers, Role::Read)?;
    let Path(name) = name.map_err(refused)?;
    let book = api.rules.book();
    let stored = book.current(&name).ok_or_else(|| not_found(&name))?;
    Ok(Json(stored_json(stored)).into_response())
}

async fn version(
    State(api): State<Arc<Api>>,
    path: Result<Path<(String, u32)>, PathRejection>,
    headers: HeaderMap,
) -> Answer {
    api.auth.authorize(&headers, Role::Read)?;
    let Path((name, version)) = path.map_err(refused)?;
    let book = api.rules.book();
    let stored = book.version(&name, version).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("rule {name:?} has no version {version}"),
        )
    })?;
    Ok(Json(stored_json(stored)).into_response())
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no rule {name:?}"))
}

async fn put_rule(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Answer {
    api.auth.authorize(&headers, Role::Write)?;
    let body = body.map_err(refused)?;
    let Path(name) = name.map_err(refused)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let document = parse_text(&body, json)?;
    let (stored, warnings, _) = api.put_rule(&name, document, false).await?;
    Ok(Json(json!({"name": stored.name, "version": stored.version, "created_at": stored.created_at, "warnings": warnings})).into_response())
}

async fn delete_rule(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Answer {
    api.auth.authorize(&headers, Role::Write)?;
    let Path(name) = name.map_err(refused)?;
    if api.rules.book().current(&name).is_none() {
        return Err(not_found(&name));
    }
    let stored = api
        .rules
        .write(&name, None, Default::default())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(
        Json(json!({"name": stored.name, "version": stored.version, "deleted": true}))
            .into_response(),
    )
}

async fn status(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Answer {
    api.auth.authorize(&headers, Role::Read)?;
    let Path(name) = name.map_err(refused)?;
    let stored = api
        .rules
        .book()
        .current(&name)
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    let stats = api
        .stats
        .lock()
        .expect("stats lock")
        .get(&(name.clone(), stored.version))
        .cloned()
        .unwrap_or_default();
    let rule = stored.compile().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored version: {e:#}"),
        )
    })?;
    // Schedules are in event time: judged by this worker's watermark, else the wall clock.
    let now = stats.watermark.unwrap_or_else(now_ms);
    let state = match &rule.timing {
        Some(t) if t.starts_at.is_some_and(|s| now < s) => "scheduled",
        Some(t) if t.ends_at.is_some_and(|e| now >= e) => "ended",
        _ => "active",
    };
    Ok(Json(json!({
        "name": name,
        "version": stored.version,
        "state": state,
        "scope": "this worker (its partitions)",
        "events_seen": stats.events_seen,
        "events_matched": stats.events_matched,
        "matches_emitted": stats.matches_emitted,
        "keys_held": stats.keys_held,
        "late_events": stats.late_events,
        "events_held": stats.events_held,
        "events_waiting": stats.events_waiting,
        "watermark": stats.watermark.map(crate::event::rfc3339),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct TestQuery {
    /// Records per partition of each source (default 1,000).
    records: Option<i64>,
}

/// Runs the current version (or the document in the body, if any) over the last records of its
/// sources with empty state, and shows what it would emit; writes nothing.
async fn test(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<TestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Answer {
    api.auth.authorize(&headers, Role::Read)?;
    let body = body.map_err(refused)?;
    let Query(query) = query.map_err(refused)?;
    let Path(name) = name.map_err(refused)?;
    let document = if body.trim().is_empty() {
        api.rules
            .book()
            .current(&name)
            .and_then(|s| s.document.clone())
            .ok_or_else(|| not_found(&name))?
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        parse_text(&body, json)?
    };
    let rule = Arc::new(Rule::compile(&name, 0, 0, &document)?);
    let per_partition = query.records.unwrap_or(1_000).clamp(1, MAX_TEST_RECORDS);
    let set = RuleSet::new(vec![rule.clone()]);
    let mut decoder = api.decoder.lock().await;
    let mut counters: HashMap<String, Counter> = HashMap::new();
    let mut tracks: HashMap<String, Track> = HashMap::new();
    let (mut read, mut undecodable, mut matched, mut emitted) = (0u64, 0u64, 0u64, 0u64);
    let mut shown = Vec::new();
    let mut hits = Vec::new();
    for topic in &rule.sources {
        let records = sources::recent(&api.kafka, topic, per_partition)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading {topic}: {e:#}"),
                )
            })?;
        for record in records {
            read += 1;
            let Ok(event) = decoder.decode(&record.value).await else {
                undecodable += 1;
                continue;
            };
            // A test sees the records as the version's history: the live filter does not apply.
            set.evaluate_rule(0, topic, &event, &mut hits);
            let Some((_, steps)) = hits.first() else {
                continue;
            };
            let Some(key) = rule.key.get(&event).and_then(crate::field::key_text) else {
                continue;
            };
            matched += 1;
            let event_ref = crate::event::EventRef {
                id: record.id.clone().unwrap_or_else(|| {
                    format!("{}/{}/{}", record.topic, record.partition, record.offset)
                }),
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                event_time: rule
                    .event_time
                    .get(&event)
                    .and_then(crate::event::parse_event_time)
                    .unwrap_or(record.timestamp),
            };
            if let Some(timing) = &rule.timing {
                if timing.scheduled(event_ref.event_time) {
                    tracks.entry(key).or_default().hold(*steps, event_ref);
                }
                continue;
            }
            if let Some(completed) = counters
                .entry(key.clone())
                .or_default()
                .advance(&rule, *steps, &event_ref)
            {
                emitted += 1;
                if shown.len() < TEST_MATCHES_SHOWN {
                    let m = crate::matches::build(&rule, &key, &completed, &event_ref);
                    shown.push(serde_json::from_slice::<Value>(&m.value).unwrap_or(Value::Null));
                }
            }
        }
    }
    // A timed rule sees the records read as if the watermark had passed them all.
    let within = rule
        .timing
        .as_ref()
        .and_then(|t| t.within)
        .unwrap_or(api.max_within);
    for (key, track) in &mut tracks {
        for (completed, last) in track.release(&rule, within, i64::MAX) {
            emitted += 1;
            if shown.len() < TEST_MATCHES_SHOWN {
                let m = crate::matches::build(&rule, key, &completed, &last);
                shown.push(serde_json::from_slice::<Value>(&m.value).unwrap_or(Value::Null));
            }
        }
    }
    Ok(Json(json!({
        "records_read": read,
        "undecodable": undecodable,
        "events_matched": matched,
        "keys": counters.len() + tracks.len(),
        "matches": emitted,
        "shown": shown,
    }))
    .into_response())
}
