//! One record's way through validation, without Kafka: parse, route, choose the subject, fetch
//! the schema, check and encode. The result is a clean value for the clean topic or a dead
//! letter's reason; only an unavailable schema store is an error (the caller pauses and retries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use logpipe_core::record::ErrorStage;

use crate::doc::Doc;
use crate::reason::Reason;
use crate::route::{Route, Routes};
use crate::schema_cache::{LookupError, SchemaCache};

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its wire-format value is in the caller's buffer.
    Clean {
        topic: Arc<str>,
        subject: Arc<str>,
        schema_id: u32,
        dropped_fields: usize,
        /// The route's DLQ topic, should the clean record turn out too large to write.
        dlq: Arc<str>,
    },
    Dead(DeadLetter),
}

/// Why a record is dead-lettered, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    /// The DLQ topic; `None` when no route covers the source topic (the caller's fallback).
    pub(crate) topic: Option<Arc<str>>,
    pub(crate) stage: ErrorStage,
    /// The failure's kind: the bounded metric label.
    pub(crate) kind: Reason,
    /// Human-readable; the `lp.error.reason` header.
    pub(crate) reason: String,
    pub(crate) pointer: Option<String>,
    pub(crate) subject: Option<Arc<str>>,
    pub(crate) schema_id: Option<u32>,
}

/// Where one source topic's records go, worked out once per topic rather than per record: the
/// route is found by matching regexes, the output topics rendered from templates.
struct Target {
    route: Route,
    clean: Arc<str>,
    dlq: Arc<str>,
}

/// Checks records against their routes and schemas.
pub(crate) struct Checker {
    routes: Routes,
    cache: SchemaCache,
    /// Each source topic's target; `None` for a topic no route covers.
    targets: HashMap<String, Option<Target>, foldhash::fast::RandomState>,
}

impl Checker {
    pub(crate) fn new(routes: Routes, cache: SchemaCache) -> Checker {
        Checker {
            routes,
            cache,
            targets: HashMap::default(),
        }
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Puts reloaded routes in force for the records checked from now on.
    pub(crate) fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
        self.targets.clear();
    }

    /// Whether the schema store answered the last request.
    pub(crate) fn store_reachable(&self) -> bool {
        self.cache.reachable()
    }

    /// Checks a record read from `topic`. On [`Verdict::Clean`] the wire-format value has been
    /// appended to `out`; otherwise `out` is unchanged.
    /// `now`: the caller's clock, read once per batch (see [`SchemaCache::subject`]).
    pub(crate) async fn check(
        &mut self,
        topic: &str,
        raw: &[u8],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Verdict, LookupError> {
        let dead = |topic: Option<Arc<str>>, stage, kind, reason: String| DeadLetter {
            topic,
            stage,
            kind,
            reason,
            pointer: None,
            subject: None,
            schema_id: None,
        };
        if !self.targets.contains_key(topic) {
            let target = self.routes.find(topic).map(|route| Target {
                route: route.clone(),
                clean: route.clean.render(topic).into(),
                dlq: route.dlq.render(topic).into(),
            });
            self.targets.insert(topic.to_owned(), target);
        }
        let Some(Target { route, clean, dlq }) = &self.targets[topic] else {
            return Ok(Verdict::Dead(dead(
                None,
                ErrorStage::Route,
                Reason::NoRoute,
                format!("no route covers topic {topic}"),
            )));
        };
        let dlq = dlq.clone();
        let value = match Doc::parse(raw) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Verdict::Dead(dead(
                    Some(dlq),
                    ErrorStage::Parse,
                    Reason::MalformedJson,
                    format!("not JSON: {e}"),
                )))
            }
        };
        let subject = match route.subject.subject(topic, &value) {
            Ok(subject) => subject,
            Err(no) => {
                return Ok(Verdict::Dead(DeadLetter {
                    pointer: no.pointer,
                    ..dead(Some(dlq), ErrorStage::Route, Reason::NoSubject, no.reason)
                }))
            }
        };
        let (schema, subject) = match self.cache.subject(&subject, route.version, now).await {
            Ok(found) => found,
            Err(LookupError::Problem(kind, reason)) => {
                return Ok(Verdict::Dead(DeadLetter {
                    subject: Some(subject.into()),
                    ..dead(Some(dlq), ErrorStage::Schema, kind, reason)
                }))
            }
            Err(unavailable) => return Err(unavailable),
        };
        match schema.write(&value, raw, route.extra_fields, out) {
            Ok(converted) => Ok(Verdict::Clean {
                topic: clean.clone(),
                subject,
                schema_id: schema.id,
                dropped_fields: converted.dropped_fields,
                dlq,
            }),
            Err(e) => Ok(Verdict::Dead(DeadLetter {
                topic: Some(dlq),
                stage: ErrorStage::Validate,
                kind: e.kind,
                reason: e.reason,
                pointer: Some(e.pointer),
                subject: Some(subject),
                schema_id: Some(schema.id),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::route::RouteConfig;
    use logpipe_schema_client::Client;

    use crate::schema_cache::tests::{serve, Canned};

    async fn checker(base: &str) -> Checker {
        #[derive(serde::Deserialize)]
        struct File {
            routes: Vec<RouteConfig>,
        }
        let file: File = toml::from_str(
            "[[routes]]\ntopics = \"raw\\\\.ev\"\nsubject = { field = \"kind\" }\n[[routes]]\ntopics = \"raw\\\\.s\"\nsubject = { fixed = \"s\" }\n",
        )
        .unwrap();
        let cache = SchemaCache::new(
            Client::new(base, None, Duration::from_secs(2)).unwrap(),
            Duration::from_secs(5),
        );
        Checker::new(Routes::new(&file.routes).unwrap(), cache)
    }

    #[tokio::test]
    async fn each_stage_is_reported() {
        let canned = Canned::default();
        *canned.latest.lock().unwrap() = 1;
        let mut checker = checker(&serve(canned).await).await;
        let mut out = Vec::new();

        let clean = checker
            .check("raw.s", br#"{"a": 1, "x": 2}"#, &mut out, Instant::now())
            .await
            .unwrap();
        assert_eq!(
            clean,
            Verdict::Clean {
                topic: "clean.s".into(),
                subject: "s".into(),
                schema_id: 10,
                dropped_fields: 1,
                dlq: "dlq.s".into(),
            }
        );
        assert_eq!(out, [0, 0, 0, 0, 10, 2]);

        let stage = |v: Verdict| match v {
            Verdict::Dead(d) => (d.stage, d.kind, d.pointer, d.topic),
            other => panic!("expected a dead letter, got {other:?}"),
        };
        let dlq: Option<Arc<str>> = Some("dlq.s".into());
        assert_eq!(
            stage(
                checker
                    .check("raw.s", b"{\"a\":", &mut out, Instant::now())
                    .await
                    .unwrap()
            ),
            (ErrorStage::Parse, Reason::MalformedJson, None, dlq.clone())
        );
        assert_eq!(
            stage(
                checker
                    .check("raw.s", br#"{"a": "1"}"#, &mut out, Instant::now())
                    .await
                    .unwrap()
            ),
            (
                ErrorStage::Validate,
                Reason::WrongType,
                Some("/a".into()),
                dlq.clone()
            )
        );
        assert_eq!(
            stage(
                checker
                    .check("raw.s", br#"{"x": 1}"#, &mut out, Instant::now())
                    .await
                    .unwrap()
            ),
            (
                ErrorStage::Validate,
                Reason::MissingField,
                Some("/a".into()),
                dlq.clone()
            )
        );
        assert_eq!(
            stage(
                checker
                    .check("raw.ev", br#"{"a": 1}"#, &mut out, Instant::now())
                    .await
                    .unwrap()
            ),
            (
                ErrorStage::Route,
                Reason::NoSubject,
                Some("/kind".into()),
                Some("dlq.ev".into())
            )
        );
        assert_eq!(
            stage(
                checker
                    .check(
                        "raw.ev",
                        br#"{"kind": "unknown"}"#,
                        &mut out,
                        Instant::now()
                    )
                    .await
                    .unwrap()
            ),
            (
                ErrorStage::Schema,
                Reason::UnknownSubject,
                None,
                Some("dlq.ev".into())
            )
        );
        assert_eq!(
            stage(
                checker
                    .check("raw.none", b"{}", &mut out, Instant::now())
                    .await
                    .unwrap()
            ),
            (ErrorStage::Route, Reason::NoRoute, None, None)
        );
        assert_eq!(out.len(), 6, "dead letters add nothing to the clean buffer");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_not_a_dead_letter() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut checker = checker(&format!("http://127.0.0.1:{port}")).await;
        let result = checker
            .check("raw.s", br#"{"a": 1}"#, &mut Vec::new(), Instant::now())
            .await;
        assert!(
            matches!(result, Err(LookupError::Unavailable(_))),
            "{result:?}"
        );
        assert!(!checker.store_reachable());
    }
}
