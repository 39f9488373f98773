//! The cache in front of the schema store (reached through [`logpipe_schema_client::Client`]).
//!
//! Compiled schemas are cached by id (ids are immutable, so two subjects or versions sharing a
//! schema share one compiled plan) and subject lookups by subject and version. A `latest` lookup
//! is refreshed after `refresh` (default 2 s), so a newly registered version is used within a few
//! seconds; a pinned version never changes. "Not found" answers are cached for the same time, so
//! a stream of records naming an unknown subject does not turn into a stream of requests.
//!
//! A store that cannot be reached (connection errors, timeouts, 5xx, auth failures) is never the
//! record's fault: lookups then fail with [`LookupError::Unavailable`] and the pipeline pauses
//! and retries; a stale cached answer is used meanwhile when there is one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_schema_client::{Client, RegisteredSchema, SchemaType, Version};

use crate::metrics as names;
use crate::reason::Reason;
use crate::schema::CompiledSchema;

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

impl From<logpipe_schema_client::LookupError> for LookupError {
    fn from(e: logpipe_schema_client::LookupError) -> LookupError {
        use logpipe_schema_client::LookupError as Client;
        match e {
            Client::Unavailable(why) => LookupError::Unavailable(why),
            Client::NotFound(why) => LookupError::Problem(Reason::UnknownSubject, why),
            Client::Unusable(why) => LookupError::Problem(Reason::UnusableSchema, why),
        }
    }
}

struct SubjectEntry {
    found: Result<Arc<CompiledSchema>, (Reason, String)>,
    fetched: Instant,
    /// The subject's hit counter, registered once: registering it per record (a label string
    /// built and the recorder's registry searched) cost as much as the lookup itself.
    hits: metrics::Counter,
}

/// Compiled schemas by id and subject lookups by subject and version.
pub(crate) struct SchemaCache {
    client: Client,
    refresh: Duration,
    by_id: HashMap<u32, Arc<CompiledSchema>>,
    /// Each subject's looked-up versions (one, in practice: its route's). Keyed by the shared
    /// name so that a lookup borrows the record's subject and a hit hands the name out without
    /// copying it.
    by_subject: HashMap<Arc<str>, Vec<(Version, SubjectEntry)>, foldhash::fast::RandomState>,
    /// Whether the last request reached the store; drives `/ready`.
    reachable: bool,
}

impl SchemaCache {
    pub(crate) fn new(client: Client, refresh: Duration) -> SchemaCache {
        SchemaCache {
            client,
            refresh,
            by_id: HashMap::new(),
            by_subject: HashMap::default(),
            reachable: true,
        }
    }

    /// Whether the store answered the last request made to it.
    pub(crate) fn reachable(&self) -> bool {
        self.reachable
    }

    /// The schema a subject's records are checked against, and the subject's shared name.
    /// `now` is the caller's clock, read once per batch rather than per record: a `latest`
    /// answer is used for at most `refresh` plus one batch.
    pub(crate) async fn subject(
        &mut self,
        subject: &str,
        version: Version,
        now: Instant,
    ) -> Result<(Arc<CompiledSchema>, Arc<str>), LookupError> {
        let (name, stale) = match self.by_subject.get_key_value(subject) {
            Some((name, versions)) => match versions.iter().find(|(v, _)| *v == version) {
                Some((_, entry)) => {
                    let fresh = now.saturating_duration_since(entry.fetched) < self.refresh
                        || (version != Version::Latest && entry.found.is_ok());
                    if fresh {
                        entry.hits.increment(1);
                        return match &entry.found {
                            Ok(schema) => Ok((schema.clone(), name.clone())),
                            Err((kind, reason)) => Err(LookupError::Problem(*kind, reason.clone())),
                        };
                    }
                    (name.clone(), entry.found.clone().ok())
                }
                None => (name.clone(), None),
            },
            None => (Arc::from(subject), None),
        };
        metrics::counter!(names::SCHEMA_CACHE_MISSES, "subject" => subject.to_owned()).increment(1);
        let found = match self
            .client
            .subject_version(subject, version)
            .await
            .map_err(LookupError::from)
        {
            Ok(RegisteredSchema {
                id,
                schema_type,
                schema,
            }) => Ok(self.compiled(id, schema_type, &schema)),
            Err(LookupError::Problem(kind, reason)) => Err((kind, reason)),
            Err(unavailable @ LookupError::Unavailable(_)) => {
                self.reachable = false;
                // Keep working with what we had; the refresh is retried on the next record.
                return stale.map(|schema| (schema, name)).ok_or(unavailable);
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
        let entry = SubjectEntry {
            found: found.clone(),
            fetched: Instant::now(),
            hits: metrics::counter!(names::SCHEMA_CACHE_HITS, "subject" => subject.to_owned()),
        };
        let versions = self.by_subject.entry(name.clone()).or_default();
        match versions.iter_mut().find(|(v, _)| *v == version) {
            Some((_, old)) => *old = entry,
            None => versions.push((version, entry)),
        }
        found
            .map(|schema| (schema, name))
            .map_err(|(kind, reason)| LookupError::Problem(kind, reason))
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

    /// A lookup now, as the loop makes one at a batch's start.
    async fn lookup(
        cache: &mut SchemaCache,
        subject: &str,
        version: Version,
    ) -> Result<(Arc<CompiledSchema>, Arc<str>), LookupError> {
        cache.subject(subject, version, Instant::now()).await
    }

    /// The id of the schema a lookup now finds.
    async fn id(cache: &mut SchemaCache, subject: &str, version: Version) -> u32 {
        lookup(cache, subject, version).await.unwrap().0.id
    }

    fn cache(base: &str, refresh: Duration) -> SchemaCache {
        SchemaCache::new(
            Client::new(base, None, Duration::from_secs(2)).unwrap(),
            refresh,
        )
    }

    #[tokio::test]
    async fn latest_is_cached_then_refreshed() {
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut cache = cache(&serve(canned.clone()).await, Duration::from_millis(300));
        assert_eq!(id(&mut cache, "s", Version::Latest).await, 10);
        assert_eq!(id(&mut cache, "s", Version::Latest).await, 10);
        assert_eq!(
            canned.requests.load(Ordering::SeqCst),
            1,
            "the second lookup is a cache hit"
        );
        *canned.latest.lock().unwrap() = 2;
        // Bounded wait for the refresh interval to pass.
        let deadline = Instant::now() + Duration::from_secs(5);
        while id(&mut cache, "s", Version::Latest).await != 11 {
            assert!(Instant::now() < deadline, "new version not picked up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Pinned versions are fetched once; the compiled schema is shared by id.
        let pinned = lookup(&mut cache, "s", Version::Pinned(1)).await.unwrap();
        assert_eq!(pinned.0.id, 10);
        let before = canned.requests.load(Ordering::SeqCst);
        let again = lookup(&mut cache, "s", Version::Pinned(1)).await.unwrap();
        assert!(Arc::ptr_eq(&pinned.0, &again.0));
        assert_eq!(&*again.1, "s");
        assert_eq!(canned.requests.load(Ordering::SeqCst), before);
    }

    /// The loop passes its batch's start time: freshness follows that clock, not a clock read
    /// per lookup.
    #[tokio::test]
    async fn freshness_is_judged_by_the_callers_clock() {
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut cache = cache(&serve(canned.clone()).await, Duration::from_secs(60));
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        cache.subject("s", Version::Latest, start).await.unwrap();
        *canned.latest.lock().unwrap() = 2;
        let (schema, _) = cache.subject("s", Version::Latest, at(59)).await.unwrap();
        assert_eq!((schema.id, canned.requests.load(Ordering::SeqCst)), (10, 1));
        let (schema, _) = cache.subject("s", Version::Latest, at(61)).await.unwrap();
        assert_eq!((schema.id, canned.requests.load(Ordering::SeqCst)), (11, 2));
    }

    #[tokio::test]
    async fn not_found_is_a_problem_and_is_cached() {
        let canned = Canned::default();
        let mut cache = cache(&serve(canned.clone()).await, Duration::from_secs(60));
        let err = lookup(&mut cache, "nope", Version::Latest)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LookupError::Problem(Reason::UnknownSubject, m) if m.contains("40401")),
            "{err:?}"
        );
        assert!(matches!(
            lookup(&mut cache, "s", Version::Pinned(7)).await,
            Err(LookupError::Problem(Reason::UnknownSubject, _))
        ));
        lookup(&mut cache, "nope", Version::Latest)
            .await
            .unwrap_err();
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
            lookup(&mut cache, "s", Version::Latest).await,
            Err(LookupError::Unavailable(_))
        ));
        assert!(!cache.reachable());

        // A store answering 5xx is unavailable too; a stale answer is used meanwhile.
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut cache = self::cache(&serve(canned.clone()).await, Duration::from_millis(1));
        assert_eq!(id(&mut cache, "s", Version::Latest).await, 10);
        canned.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(id(&mut cache, "s", Version::Latest).await, 10);
        assert!(!cache.reachable());
        assert!(matches!(
            lookup(&mut cache, "other", Version::Latest).await,
            Err(LookupError::Unavailable(_))
        ));
        canned.fail.store(false, Ordering::SeqCst);
        lookup(&mut cache, "s", Version::Latest).await.unwrap();
        assert!(cache.reachable());
    }
}
