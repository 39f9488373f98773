//! logpipe-schema-store: a Confluent Schema Registry compatible schema store.
//!
//! - [`api`]: the REST surface (routes, content negotiation, handlers);
//! - [`registry`]: subjects, versions, global ids, configs and modes, and the write operations;
//! - [`log`]: Confluent's `_schemas` record format and the local fsynced append-only log;
//! - [`schema`]: AVRO and JSON Schema parsing and the stored (canonical) form;
//! - [`compat`]: compatibility levels, Avro schema resolution, JSON Schema compatibility;
//! - [`auth`]: basic auth with roles; [`openapi`]: the served OpenAPI document.

pub mod api;
pub mod auth;
pub mod compat;
pub mod error;
pub mod log;
pub mod openapi;
pub mod ordered_json;
pub mod registry;
pub mod schema;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::auth::{Auth, AuthConfig};
use crate::registry::Registry;

/// The schema store's config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaStoreConfig {
    /// Address of the Confluent-compatible API (separate from telemetry).
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub telemetry: TelemetryConfig,
    /// Basic auth; without it the API is open to anyone who can reach it.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Largest request body accepted; larger ones get HTTP 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

/// Where the registry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Local,
    Kafka,
}

/// The `[storage]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// Directory of the local log (kind = "local").
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl ServiceConfig for SchemaStoreConfig {
    fn validate(&self) -> anyhow::Result<()> {
        match self.storage.kind {
            StorageKind::Kafka => anyhow::bail!(
                "storage.kind = \"kafka\" is not available in this version of logpipe-schema-store; use kind = \"local\" with a path"
            ),
            StorageKind::Local => match &self.storage.path {
                None => anyhow::bail!("storage.path is required for kind = \"local\""),
                Some(path) if !path.is_absolute() => anyhow::bail!("storage.path must be absolute, got {}", path.display()),
                Some(_) => {}
            },
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!("max_body_bytes must be at least 1024, got {}", self.max_body_bytes);
        }
        if self.listen == self.telemetry.listen && self.listen.port() != 0 {
            anyhow::bail!("listen and telemetry.listen must differ (both are {})", self.listen);
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let auth = match &self.auth {
            None => "auth: none (anyone who can connect may read and write)".to_owned(),
            Some(a) => format!("auth: {} user(s), anonymous read {}", a.users.len(), if a.anonymous_read { "allowed" } else { "denied" }),
        };
        format!(
            "serve the Confluent Schema Registry API on {}\nstorage: local log in {}\n{auth}\nmax request body: {} bytes\ntelemetry on {}",
            self.listen,
            self.storage.path.as_ref().map_or("?".into(), |p| p.display().to_string()),
            self.max_body_bytes,
            self.telemetry.listen
        )
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// A bound API server over an opened registry.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
}

impl Server {
    /// Replays the storage and binds the API address.
    pub async fn bind(config: &SchemaStoreConfig) -> anyhow::Result<Server> {
        let path = config.storage.path.clone().ok_or_else(|| anyhow::anyhow!("storage.path is required"))?;
        let registry = tokio::task::spawn_blocking(move || Registry::open(&path)).await??;
        let state = AppState { registry: Arc::new(registry), auth: Arc::new(Auth::new(config.auth.clone())) };
        let listener = TcpListener::bind(config.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        Ok(Server { listener, router: api::router(state, config.max_body_bytes) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown`, then finishes in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
        Ok(())
    }
}

/// The service the binary runs.
pub struct SchemaStore;

impl Service for SchemaStore {
    const NAME: &'static str = "logpipe-schema-store";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/schema-store.toml";
    type Config = SchemaStoreConfig;

    async fn run(config: SchemaStoreConfig, ctx: Context) -> anyhow::Result<()> {
        ctx.readiness.register("api");
        let server = Server::bind(&config).await?;
        tracing::info!(listen = %server.local_addr(), "schema store API listening");
        ctx.readiness.ready("api");
        server.run(ctx.shutdown.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use logpipe_core::service::load_config;

    use super::*;

    fn load(text: &str) -> anyhow::Result<SchemaStoreConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.toml");
        std::fs::write(&path, text).unwrap();
        load_config(Path::new(&path))
    }

    const BASE: &str = "listen = \"127.0.0.1:8081\"\n[telemetry]\nlisten = \"127.0.0.1:9304\"\n";

    #[test]
    fn local_storage_config_loads() {
        let config = load(&format!("{BASE}[storage]\nkind = \"local\"\npath = \"/var/lib/logpipe-schema-store\"\n")).unwrap();
        assert_eq!(config.storage.kind, StorageKind::Local);
        assert_eq!(config.max_body_bytes, default_max_body_bytes());
        assert!(config.describe().contains("auth: none"));
    }

    #[test]
    fn kafka_storage_is_rejected_clearly() {
        let err = load(&format!("{BASE}[storage]\nkind = \"kafka\"\n")).unwrap_err().to_string();
        assert!(err.contains("not available"), "{err}");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = load(&format!("{BASE}[storage]\nkind = \"local\"\npath = \"relative\"\n")).unwrap_err().to_string();
        assert!(err.contains("storage.path must be absolute"), "{err}");
        let err = load(&format!("{BASE}[storage]\nkind = \"local\"\npath = \"/x\"\nfsync = false\n")).unwrap_err().to_string();
        assert!(err.contains("fsync"), "{err}");
        let err = load(&format!("{BASE}[storage]\nkind = \"local\"\npath = \"/x\"\n[auth]\n[[auth.users]]\nname = \"a\"\npassword_hash = \"plain\"\nrole = \"read\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("password_hash"), "{err}");
    }
}
