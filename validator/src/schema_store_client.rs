//! The schema store, seen through the Confluent Schema Registry REST API only (so Confluent and
//! Karapace work too), and the cache in front of it.
//!
//! Compiled schemas are cached by id (ids are immutable, so two subjects or versions sharing a
//! schema share one compiled plan) and subject lookups by subject and version. A `latest` lookup is refreshed after `refresh` (default 2 s), so a newly registered
//! version is used within a few seconds; a pinned version never changes. "Not found" answers are
//! cached for the same time, so a stream of records naming an unknown subject does not turn into
//! a stream of requests.
//!
//! A store that cannot be reached (connection errors, timeouts, 5xx, auth failures) is never the
//! record's fault: lookups then fail with [`LookupError::Unavailable`] and the pipeline pauses
//! and retries; a stale cached answer is used meanwhile when there is one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::metrics as names;
use crate::reason::Reason;
use crate::schema::{CompiledSchema, SchemaType};

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LookupError {
    /// The store could not answer; retry later, never dead-letter for this.
    #[error("schema store unavailable: {0}")]
    Unavailable(String),
    /// The store answered: the subject or version does not exist
    /// ([`Reason::UnknownSubject`]), or its schema is unusable ([`Reason::UnusableSchema`]).
    #[error("{1}")]
    Problem(Reason, String),
}

/// Which version of a subject a route uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Version {
    #[default]
    Latest,
    Pinned(u32),
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Pinned(v) => write!(f, "{v}"),
        }
    }
}

/// A client of the Confluent REST API.
#[derive(Debug, Clone)]
pub(crate) struct SchemaStoreClient {
    base: reqwest::Url,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
}

const ACCEPT: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";

#[derive(Deserialize)]
struct SubjectVersion {
    id: u32,
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    error_code: Option<i64>,
    message: Option<String>,
}

impl SchemaStoreClient {
    pub(crate) fn new(
        base: &str,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> anyhow::Result<SchemaStoreClient> {
        let mut base = reqwest::Url::parse(base)
            .map_err(|e| anyhow::anyhow!("schema_store {base:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("schema_store {base} must be an http or https URL");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(SchemaStoreClient {
            base,
            http,
            credentials,
        })
    }

    /// `GET /subjects/{subject}/versions/{version|latest}`: (id, type, schema).
    pub(crate) async fn subject_version(
        &self,
        subject: &str,
        version: Version,
    ) -> Result<(u32, SchemaType, String), LookupError> {
        let found: SubjectVersion = self
            .get(&["subjects", subject, "versions", &version.to_string()])
            .await?;
        let schema_type = SchemaType::from_api(found.schema_type.as_deref())
            .map_err(|e| LookupError::Problem(Reason::UnusableSchema, e))?;
        Ok((found.id, schema_type, found.schema))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, LookupError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base")
            .pop_if_empty()
            .extend(segments);
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, ACCEPT);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                LookupError::Unavailable(format!("GET {url}: unexpected answer: {e}"))
            });
        }
        let error: Option<ApiError> = serde_json::from_slice(&body).ok();
        let message = error
            .as_ref()
            .map(|e| {
                format!(
                    "{} (error {})",
                    e.message.as_deref().unwrap_or(""),
                    e.error_code.unwrap_or(0)
                )
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        // Only "this does not exist" is an answer about the record; anything else (auth, server
        // errors, a proxy's page) is the store's or the config's problem.
        if status == reqwest::StatusCode::NOT_FOUND && error.is_some() {
            Err(LookupError::Problem(
                Reason::UnknownSubject,
                format!("GET {url}: {message}"),
            ))
        } else {
            Err(LookupError::Unavailable(format!(
                "GET {url}: {status}: {message}"
            )))
        }
    }
}

struct SubjectEntry {
    found: Result<Arc<CompiledSchema>, (Reason, String)>,
    fetched: Instant,
}

/// Compiled schemas by id and subject lookups by (subject, version).
pub(crate) struct SchemaCache {
    client: SchemaStoreClient,
    refresh: Duration,
    by_id: HashMap<u32, Arc<CompiledSchema>>,
    by_subject: HashMap<(String, Version), SubjectEntry>,
    /// Whether the last request reached the store; drives `/ready`.
    reachable: bool,
}

impl SchemaCache {
    pub(crate) fn new(client: SchemaStoreClient, refresh: Duration) -> SchemaCache {
        SchemaCache {
            client,
            refresh,
            by_id: HashMap::new(),
            by_subject: HashMap::new(),
            reachable: true,
        }
    }

    /// Whether the store answered the last request made to it.
    pub(crate) fn reachable(&self) -> bool {
        self.reachable
    }

    /// The schema a subject's records are checked against.
    pub(crate) async fn subject(
        &mut self,
        subject: &str,
        version: Version,
    ) -> Result<Arc<CompiledSchema>, LookupError> {
        let key = (subject.to_owned(), version);
        let stale = match self.by_subject.get(&key) {
            Some(entry) => {
                let fresh = entry.fetched.elapsed() < self.refresh
                    || (version != Version::Latest && entry.found.is_ok());
                if fresh {
                    metrics::counter!(names::SCHEMA_CACHE_HITS, "subject" => subject.to_owned())
                        .increment(1);
                    return entry
                        .found
                        .clone()
                        .map_err(|(kind, reason)| LookupError::Problem(kind, reason));
                }
                entry.found.clone().ok()
            }
            None => None,
        };
        metrics::counter!(names::SCHEMA_CACHE_MISSES, "subject" => subject.to_owned()).increment(1);
        let found = match self.client.subject_version(subject, version).await {
            Ok((id, schema_type, text)) => Ok(self.compiled(id, schema_type, &text)),
            Err(LookupError::Problem(kind, reason)) => Err((kind, reason)),
            Err(unavailable @ LookupError::Unavailable(_)) => {
                self.reachable = false;
                // Keep working with what we had; the refresh is retried on the next record.
                return stale.ok_or(unavailable);
            }
        };
        self.reachable = true;
        let found = found.and_then(|compiled| compiled);
        if let (Some(old), Ok(new)) = (&stale, &found) {
            if old.id != new.id {
                tracing::info!(
                    subject,
                    old = old.id,
                    new = new.id,
                    "subject has a new schema version"
                );
            }
        }
        self.by_subject.insert(
            key,
            SubjectEntry {
                found: found.clone(),
                fetched: Instant::now(),
            },
        );
        found.map_err(|(kind, reason)| LookupError::Problem(kind, reason))
    }

    fn compiled(
        &mut self,
        id: u32,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<Arc<CompiledSchema>, (Reason, String)> {
        if let Some(found) = self.by_id.get(&id) {
            return Ok(found.clone());
        }
        let compiled = Arc::new(CompiledSchema::compile(id, schema_type, text).map_err(|e| {
            (
                Reason::UnusableSchema,
                format!("schema id {id} cannot be used: {e}"),
            )
        })?);
        self.by_id.insert(id, compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    use super::*;

    /// A tiny Confluent-compatible server with canned answers: subject `s` has versions 1 and 2
    /// (ids 10 and 11); `latest` answers whichever `latest` says. Counts requests.
    #[derive(Clone, Default)]
    pub(crate) struct Canned {
        pub(crate) latest: Arc<std::sync::Mutex<u32>>,
        pub(crate) requests: Arc<AtomicUsize>,
        pub(crate) fail: Arc<std::sync::atomic::AtomicBool>,
    }

    pub(crate) const V1: &str =
        r#"{"type":"record","name":"E","fields":[{"name":"a","type":"int"}]}"#;
    pub(crate) const V2: &str = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"int"},{"name":"b","type":["null","string"],"default":null}]}"#;

    async fn version(
        State(c): State<Canned>,
        Path((subject, v)): Path<(String, String)>,
    ) -> (StatusCode, Json<Value>) {
        c.requests.fetch_add(1, Ordering::SeqCst);
        if c.fail.load(Ordering::SeqCst) {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error_code": 50001, "message": "store error"})),
            );
        }
        let v = if v == "latest" {
            *c.latest.lock().unwrap()
        } else {
            v.parse().unwrap_or(0)
        };
        match (subject.as_str(), v) {
            ("s", 1) => (
                StatusCode::OK,
                Json(json!({"subject": "s", "version": 1, "id": 10, "schema": V1})),
            ),
            ("s", 2) => (
                StatusCode::OK,
                Json(
                    json!({"subject": "s", "version": 2, "id": 11, "schema": V2, "schemaType": "AVRO"}),
                ),
            ),
            ("s", _) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error_code": 40402, "message": "Version not found."})),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                Json(json!({"error_code": 40401, "message": "Subject not found."})),
            ),
        }
    }

    /// Serves the canned API on a loopback port; returns its base URL.
    pub(crate) async fn serve(canned: Canned) -> String {
        let app = Router::new()
            .route("/subjects/{subject}/versions/{version}", get(version))
            .with_state(canned);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn cache(base: &str, refresh: Duration) -> SchemaCache {
        SchemaCache::new(
            SchemaStoreClient::new(base, None, Duration::from_secs(2)).unwrap(),
            refresh,
        )
    }

    #[tokio::test]
    async fn latest_is_cached_then_refreshed() {
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut cache = cache(&serve(canned.clone()).await, Duration::from_millis(300));
        assert_eq!(cache.subject("s", Version::Latest).await.unwrap().id, 10);
        assert_eq!(cache.subject("s", Version::Latest).await.unwrap().id, 10);
        assert_eq!(
            canned.requests.load(Ordering::SeqCst),
            1,
            "the second lookup is a cache hit"
        );
        *canned.latest.lock().unwrap() = 2;
        // Bounded wait for the refresh interval to pass.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.subject("s", Version::Latest).await.unwrap().id != 11 {
            assert!(Instant::now() < deadline, "new version not picked up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Pinned versions are fetched once; the compiled schema is shared by id.
        let pinned = cache.subject("s", Version::Pinned(1)).await.unwrap();
        assert_eq!(pinned.id, 10);
        let before = canned.requests.load(Ordering::SeqCst);
        let again = cache.subject("s", Version::Pinned(1)).await.unwrap();
        assert!(Arc::ptr_eq(&pinned, &again));
        assert_eq!(canned.requests.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn not_found_is_a_problem_and_is_cached() {
        let canned = Canned::default();
        let mut cache = cache(&serve(canned.clone()).await, Duration::from_secs(60));
        let err = cache.subject("nope", Version::Latest).await.unwrap_err();
        assert!(
            matches!(&err, LookupError::Problem(Reason::UnknownSubject, m) if m.contains("40401")),
            "{err:?}"
        );
        assert!(matches!(
            cache.subject("s", Version::Pinned(7)).await,
            Err(LookupError::Problem(Reason::UnknownSubject, _))
        ));
        cache.subject("nope", Version::Latest).await.unwrap_err();
        assert_eq!(canned.requests.load(Ordering::SeqCst), 2);
        assert!(cache.reachable());
    }

    #[tokio::test]
    async fn an_unreachable_store_is_unavailable_never_a_problem() {
        // Nothing listens on this port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cache = cache(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(1),
        );
        assert!(matches!(
            cache.subject("s", Version::Latest).await,
            Err(LookupError::Unavailable(_))
        ));
        assert!(!cache.reachable());

        // A store answering 5xx is unavailable too; a stale answer is used meanwhile.
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut cache = self::cache(&serve(canned.clone()).await, Duration::from_millis(1));
        assert_eq!(cache.subject("s", Version::Latest).await.unwrap().id, 10);
        canned.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(cache.subject("s", Version::Latest).await.unwrap().id, 10);
        assert!(!cache.reachable());
        assert!(matches!(
            cache.subject("other", Version::Latest).await,
            Err(LookupError::Unavailable(_))
        ));
        canned.fail.store(false, Ordering::SeqCst);
        cache.subject("s", Version::Latest).await.unwrap();
        assert!(cache.reachable());
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(SchemaStoreClient::new("not a url", None, Duration::from_secs(1)).is_err());
        assert!(SchemaStoreClient::new("ftp://x", None, Duration::from_secs(1)).is_err());
        assert!(
            SchemaStoreClient::new("http://x:8081/registry", None, Duration::from_secs(1)).is_ok()
        );
    }
}
