//! An in-process schema store on a loopback port, for the API tests.

#![allow(dead_code)]

use std::net::SocketAddr;

use logpipe_core::telemetry::TelemetryConfig;
use logpipe_schema_store::AuthConfig;
use logpipe_schema_store::{SchemaStoreConfig, Server, StorageConfig, StorageKind};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const CT: &str = "application/vnd.schemaregistry.v1+json";

pub struct Store {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn config(
    dir: &std::path::Path,
    auth: Option<AuthConfig>,
    max_body_bytes: usize,
) -> SchemaStoreConfig {
    SchemaStoreConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        storage: StorageConfig {
            kind: StorageKind::Local,
            path: Some(dir.to_owned()),
            ..StorageConfig::default()
        },
        kafka: None,
        telemetry: TelemetryConfig::on_port(0),
        auth,
        max_body_bytes,
    }
}

impl Store {
    pub async fn start() -> Store {
        Store::start_with(None, 64 * 1024, tempfile::tempdir().unwrap()).await
    }

    pub async fn start_with(
        auth: Option<AuthConfig>,
        max_body_bytes: usize,
        dir: tempfile::TempDir,
    ) -> Store {
        let server = Server::bind(&config(dir.path(), auth, max_body_bytes))
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Store {
            base,
            client: reqwest::Client::new(),
            dir,
            shutdown,
            task,
        }
    }

    /// Stops the server and returns its storage directory, for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, for tests that set their own headers.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.request(Method::GET, path)).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.request(Method::GET, path).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Sends `body` as `content_type`.
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        send(
            self.request(method, path)
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send_body(Method::POST, path, CT, body.to_string())
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send_body(Method::PUT, path, CT, body.to_string())
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send(self.request(Method::DELETE, path)).await
    }

    /// Registers and returns the id, panicking with the body on failure.
    pub async fn register(&self, subject: &str, body: Value) -> u64 {
        let (status, reply) = self
            .post(&format!("/subjects/{subject}/versions"), &body)
            .await;
        assert_eq!(status, 200, "register {subject}: {reply}");
        reply["id"].as_u64().unwrap()
    }
}

/// Sends a request and reads its status and body (JSON, or the text as a JSON string).
pub async fn send(request: RequestBuilder) -> (u16, Value) {
    response(request.send().await.unwrap()).await
}

pub async fn response(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Asserts a Confluent error: HTTP status and error_code.
#[track_caller]
pub fn assert_error(reply: &(u16, Value), status: u16, code: u64) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error_code"].as_u64(), Some(code), "{}", reply.1);
    assert!(
        reply.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        reply.1
    );
}

pub fn avro_record(name: &str, fields: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","fields":[{fields}]}}"#)
}
