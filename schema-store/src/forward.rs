//! Writes on a follower: forwarded over HTTP to the leader, with the caller's credentials, and
//! answered once this instance has caught up with the write (read-your-writes on the instance
//! the client asked).
//!
//! A forward that fails after it was sent (a connection reset, a timeout) may have run on the
//! leader, and the follower retries it. Each forwarded write therefore carries an id
//! ([`WRITE_ID`]), the same on every retry, and the leader answers a retry of a write it
//! already ran (or is running) with that write's answer: a retried "delete the latest
//! version" deletes one version, not two. The leader runs a forwarded write to its end even
//! when the follower hangs up, so the answer is there for the retry.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::error::Error;
use crate::kafka_storage::Cluster;
use logpipe_core::metric_names::schema_store as metric;

/// Marks a forwarded request: an instance that is not the leader answers it with 50004
/// instead of forwarding it again, so a stale view of the leader cannot make a loop.
pub(crate) const FORWARDED: &str = "x-logpipe-forwarded";
/// On a write's response: the topic position after which the write is visible.
pub(crate) const POSITION: &str = "x-logpipe-schemas-position";
/// On a forwarded write: the follower's id for it, the same on each retry.
pub(crate) const WRITE_ID: &str = "x-logpipe-write-id";

/// How long a write may wait for a leader (an election after a leader died takes about the
/// election group's session timeout).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a forwarded write waits for this instance's reader to catch up with it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded writes whose answers the leader keeps for retries. Retries come within
/// [`FORWARD_TIMEOUT`] of the first try, when a few hundred writes at most have passed.
const ANSWERS_KEPT: usize = 4096;

/// A write's answer as the leader gave it, kept for a retry.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    position: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
    async fn read(response: Response) -> Answer {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        Answer {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            position: parts.headers.get(POSITION).cloned(),
            body,
        }
    }

    fn response(&self) -> Response {
        let mut response = (self.status, self.body.clone()).into_response();
        let headers = response.headers_mut();
        if let Some(v) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, v.clone());
        }
        if let Some(v) = &self.position {
            headers.insert(POSITION, v.clone());
        }
        response
    }
}

/// The leader's recent forwarded writes by id: each a channel that holds its answer once given.
#[derive(Debug, Default)]
struct Answers {
    by_id: HashMap<String, watch::Receiver<Option<Answer>>>,
    order: VecDeque<String>,
}

impl Answers {
    /// The write's channel, and a sender when this is its first try (the caller runs it).
    fn begin(
        &mut self,
        id: &str,
    ) -> (
        watch::Receiver<Option<Answer>>,
        Option<watch::Sender<Option<Answer>>>,
    ) {
        if let Some(rx) = self.by_id.get(id) {
            return (rx.clone(), None);
        }
        let (tx, rx) = watch::channel(None);
        self.by_id.insert(id.to_owned(), rx.clone());
        self.order.push_back(id.to_owned());
        if self.order.len() > ANSWERS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        (rx, Some(tx))
    }
}

/// Runs writes here when this instance leads, else at the leader.
#[derive(Debug)]
pub(crate) struct Forwarder {
    cluster: Arc<Cluster>,
    client: reqwest::Client,
    max_body_bytes: usize,
    /// Names this process's forwarded writes: unique across instances and restarts.
    id_prefix: String,
    next_id: AtomicU64,
    answers: Mutex<Answers>,
}

impl Forwarder {
    pub(crate) fn new(cluster: Arc<Cluster>, max_body_bytes: usize) -> anyhow::Result<Forwarder> {
        let client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .build()?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Forwarder {
            id_prefix: format!("{}/{started:x}", cluster.advertised_url()),
            cluster,
            client,
            max_body_bytes,
            next_id: AtomicU64::new(0),
            answers: Mutex::default(),
        })
    }

    /// A write request: handled here (its response carries [`POSITION`]) when this instance is
    /// the leader, forwarded otherwise.
    pub(crate) async fn write(&self, request: Request, next: Next) -> Result<Response, Error> {
        if self.cluster.is_leader() {
            let id = request
                .headers()
                .get(WRITE_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let Some(id) = id else {
                return Ok(run_here(&self.cluster, request, next).await);
            };
            return self.run_once(&id, request, next).await;
        }
        if request.headers().contains_key(FORWARDED) {
            return Err(Error::NotLeader);
        }
        let response = self.forward(request).await;
        let outcome = if response.is_ok() { "ok" } else { "failed" };
        metrics::counter!(metric::KAFKA_FORWARDED, "outcome" => outcome).increment(1);
        response
    }

    /// Runs a forwarded write once per id: a retry gets the first try's answer.
    async fn run_once(&self, id: &str, request: Request, next: Next) -> Result<Response, Error> {
        let (mut answer, first) = self.answers.lock().expect("answers lock").begin(id);
        match first {
            Some(tx) => {
                // To its end even if the follower hangs up: its retry waits for this answer.
                let cluster = Arc::clone(&self.cluster);
                tokio::spawn(async move {
                    let response = run_here(&cluster, request, next).await;
                    tx.send_replace(Some(Answer::read(response).await));
                });
            }
            None => {
                metrics::counter!(metric::KAFKA_FORWARDED_RETRIES).increment(1);
                tracing::info!(
                    id,
                    "a forwarded write came again: answering with its first answer"
                );
            }
        }
        let answered = answer
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Store("the write stopped before it answered".into()))?;
        Ok(answered.as_ref().expect("waited for").response())
    }

    async fn forward(&self, request: Request) -> Result<Response, Error> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| Error::BodyTooLarge)?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let id = format!(
            "{}/{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut last_error = "no leader is known".to_owned();
        loop {
            // Our own URL when this instance has become the leader meanwhile: the request then
            // comes back to it and runs locally.
            if let Some(url) = self.cluster.leader_url() {
                let mut outgoing = self
                    .client
                    .request(
                        parts.method.clone(),
                        format!("{}{path}", url.trim_end_matches('/')),
                    )
                    .header(FORWARDED, "1")
                    .header(WRITE_ID, &id)
                    .body(body.clone());
                for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
                    if let Some(value) = parts.headers.get(&name) {
                        outgoing = outgoing.header(name, value);
                    }
                }
                match self.relay(outgoing.send().await).await {
                    Ok(response) => return Ok(response),
                    Err(e) => last_error = format!("{url}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!("cannot forward a write to the leader: {last_error}");
                return Err(Error::ForwardingFailed(format!(
                    "Error while forwarding the request to the leader: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's answer, once this instance has read up to the position it reports. Errors
    /// when the target could not be reached or is not the leader (worth retrying).
    async fn relay(&self, sent: reqwest::Result<reqwest::Response>) -> Result<Response, String> {
        let response = sent.map_err(|e| e.to_string())?;
        let status = response.status();
        let position = response
            .headers()
            .get(POSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if status == StatusCode::INTERNAL_SERVER_ERROR
            && serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|b| b["error_code"] == 50004)
        {
            return Err("not the leader".into());
        }
        if let Some(position) = position {
            if !self
                .cluster
                .wait_for_position(position, CATCH_UP_TIMEOUT)
                .await
            {
                tracing::warn!(
                    position,
                    "answering a forwarded write before this instance has read it back"
                );
            }
        }
        let mut relayed = (status, body).into_response();
        if let Some(content_type) = content_type {
            relayed
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        Ok(relayed)
    }
}

/// Runs a write on the leader; its answer carries the position it is visible after.
async fn run_here(cluster: &Cluster, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(POSITION, HeaderValue::from(cluster.position()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_id_runs_once_and_old_ids_are_forgotten() {
        let mut answers = Answers::default();
        assert!(answers.begin("a").1.is_some(), "the first try runs");
        assert!(answers.begin("a").1.is_none(), "a retry waits for it");
        for n in 0..ANSWERS_KEPT {
            assert!(answers.begin(&n.to_string()).1.is_some());
        }
        assert_eq!(answers.by_id.len(), ANSWERS_KEPT);
        assert!(
            answers.begin("a").1.is_some(),
            "forgotten after ANSWERS_KEPT others"
        );
    }
}
