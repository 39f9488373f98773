//! Writes on a follower: forwarded over HTTP to the leader, with the caller's credentials, and
//! answered once this instance has caught up with the write (read-your-writes on the instance
//! the client asked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;
use crate::kafka_storage::Cluster;
use logpipe_core::metric_names::schema_store as metric;

/// Marks a forwarded request: an instance that is not the leader answers it with 50004
/// instead of forwarding it again, so a stale view of the leader cannot make a loop.
pub(crate) const FORWARDED: &str = "x-logpipe-forwarded";
/// On a write's response: the topic position after which the write is visible.
pub(crate) const POSITION: &str = "x-logpipe-schemas-position";

/// How long a write may wait for a leader (an election after a leader died takes about the
/// election group's session timeout).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a forwarded write waits for this instance's reader to catch up with it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs writes here when this instance leads, else at the leader.
#[derive(Debug)]
pub(crate) struct Forwarder {
    cluster: Arc<Cluster>,
    client: reqwest::Client,
    max_body_bytes: usize,
}

impl Forwarder {
    pub(crate) fn new(cluster: Arc<Cluster>, max_body_bytes: usize) -> anyhow::Result<Forwarder> {
        let client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .build()?;
        Ok(Forwarder {
            cluster,
            client,
            max_body_bytes,
        })
    }

    /// A write request: handled here (its response carries [`POSITION`]) when this instance is
    /// the leader, forwarded otherwise.
    pub(crate) async fn write(&self, request: Request, next: Next) -> Result<Response, Error> {
        if self.cluster.is_leader() {
            let mut response = next.run(request).await;
            response
                .headers_mut()
                .insert(POSITION, HeaderValue::from(self.cluster.position()));
            return Ok(response);
        }
        if request.headers().contains_key(FORWARDED) {
            return Err(Error::NotLeader);
        }
        let response = self.forward(request).await;
        let outcome = if response.is_ok() { "ok" } else { "failed" };
        metrics::counter!(metric::KAFKA_FORWARDED, "outcome" => outcome).increment(1);
        response
    }

    async fn forward(&self, request: Request) -> Result<Response, Error> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| Error::BodyTooLarge)?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let deadline = Instant::now() + FORWARD_TIMEOUT;
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
