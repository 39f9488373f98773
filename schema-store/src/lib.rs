//! logpipe-schema-store: a Confluent Schema Registry compatible schema store.
//!
//! The crate's API is what the binary, the tests and the benchmark need: the config, a
//! [`Server`] to bind and run, the [`SchemaStore`] service, and the auth config with password
//! hashing. Inside, one module per idea:
//!
//! - `api`: the REST surface (routes, content negotiation, handlers) and the only place that
//!   knows HTTP statuses and Confluent error codes;
//! - `registry`: subjects, versions, global ids, configs and modes, and the write operations;
//!   `error`: what they can fail with, as domain errors;
//! - `log`: Confluent's `_schemas` record format and the local fsynced append-only log;
//! - `kafka_storage`: the registry in a `_schemas` topic shared by several instances, with one
//!   elected writer; `forward`: followers forward writes to it;
//! - `schema`: AVRO and JSON Schema parsing and the stored (canonical) form;
//! - `compat`: compatibility levels, Avro schema resolution, JSON Schema compatibility;
//! - `openapi`: the served OpenAPI document (basic auth with roles is
//!   [`logpipe_core::auth`]; which route needs which role is `api`'s route table);
//! - `metrics`: what the store's metrics mean.

mod api;
mod compat;
mod error;
mod forward;
mod kafka_storage;
mod log;
mod metrics;
mod openapi;
mod ordered_json;
mod registry;
mod schema;

pub use logpipe_core::auth::{hash_password, hash_password_command, AuthConfig, Role, UserConfig};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use logpipe_core::auth::Auth;
use logpipe_core::http::HttpServer;
use logpipe_core::kafka::{KafkaConfig, Role as KafkaRole};
use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::forward::Forwarder;
use crate::kafka_storage::{Cluster, KafkaStorage};
use crate::registry::Registry;

/// The schema store's config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaStoreConfig {
    /// Address of the Confluent-compatible API (separate from telemetry).
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    /// The Kafka cluster holding the `_schemas` topic (storage.kind = "kafka").
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Local,
    Kafka,
}

/// The `[storage]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// Directory of the local log (kind = "local").
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// kind = "kafka": the topic (default `_schemas`, what Confluent and Karapace use).
    #[serde(default)]
    pub topic: Option<String>,
    /// kind = "kafka": this registry's name, for its election group and transactional id
    /// (`_lp.schema-store.<cluster>`); default `default`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// kind = "kafka": the URL the other instances forward writes to; default
    /// `http://<listen>` (required when `listen` is a wildcard address).
    #[serde(default)]
    pub advertised_url: Option<String>,
    /// kind = "kafka": replication factor when the store creates the topic; default -1 (the
    /// broker's default).
    #[serde(default)]
    pub replication_factor: Option<i32>,
}

impl SchemaStoreConfig {
    /// The Kafka storage settings with their defaults (kind = "kafka" only).
    pub(crate) fn kafka_storage(&self) -> anyhow::Result<KafkaStorage> {
        let kafka = self.kafka.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "storage.kind = \"kafka\" needs a [kafka] table (bootstrap, properties)"
            )
        })?;
        let advertised_url = match &self.storage.advertised_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.listen.ip().is_unspecified() => {
                anyhow::bail!("storage.advertised_url is required when listen ({}) is a wildcard address: the other instances forward writes to it", self.listen)
            }
            None => format!("http://{}", self.listen),
        };
        Ok(KafkaStorage {
            kafka,
            topic: self
                .storage
                .topic
                .clone()
                .unwrap_or_else(|| "_schemas".to_owned()),
            cluster: self
                .storage
                .cluster
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            advertised_url,
            replication_factor: self.storage.replication_factor.unwrap_or(-1),
        })
    }
}

impl ServiceConfig for SchemaStoreConfig {
    fn validate(&self) -> anyhow::Result<()> {
        match self.storage.kind {
            StorageKind::Kafka => {
                if self.storage.path.is_some() {
                    anyhow::bail!("storage.path is for kind = \"local\"; kind = \"kafka\" keeps everything in the topic");
                }
                let storage = self.kafka_storage()?;
                for role in [
                    KafkaRole::Consumer {
                        group_id: storage.election_group(),
                    },
                    KafkaRole::TransactionalProducer {
                        transactional_id: storage.transactional_id(),
                    },
                ] {
                    storage.kafka.validate(&role).map_err(anyhow::Error::msg)?;
                }
                if storage.topic.is_empty() || storage.cluster.is_empty() {
                    anyhow::bail!("storage.topic and storage.cluster must not be empty");
                }
                // The API is plain HTTP and so is forwarding between instances (TLS, if any, is
                // terminated in front of them).
                if !storage.advertised_url.starts_with("http://") {
                    anyhow::bail!("storage.advertised_url must be an http:// URL (the API this instance serves), got {:?}", storage.advertised_url);
                }
                if !(storage.replication_factor == -1 || storage.replication_factor >= 1) {
                    anyhow::bail!(
                        "storage.replication_factor must be -1 (broker default) or at least 1"
                    );
                }
            }
            StorageKind::Local => {
                match &self.storage.path {
                    None => anyhow::bail!("storage.path is required for kind = \"local\""),
                    Some(path) if !path.is_absolute() => {
                        anyhow::bail!("storage.path must be absolute, got {}", path.display())
                    }
                    Some(_) => {}
                }
                let s = &self.storage;
                if self.kafka.is_some()
                    || s.topic.is_some()
                    || s.cluster.is_some()
                    || s.advertised_url.is_some()
                    || s.replication_factor.is_some()
                {
                    anyhow::bail!("[kafka] and storage.topic/cluster/advertised_url/replication_factor are for kind = \"kafka\"; this config has kind = \"local\"");
                }
            }
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!(
                "max_body_bytes must be at least 1024, got {}",
                self.max_body_bytes
            );
        }
        if self.listen == self.telemetry.listen && self.listen.port() != 0 {
            anyhow::bail!(
                "listen and telemetry.listen must differ (both are {})",
                self.listen
            );
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let auth = match &self.auth {
            None => "auth: none (anyone who can connect may read and write)".to_owned(),
            Some(a) => format!(
                "auth: {} user(s), anonymous read {}",
                a.users.len(),
                if a.anonymous_read {
                    "allowed"
                } else {
                    "denied"
                }
            ),
        };
        let storage = match self.kafka_storage() {
            Ok(k) if self.storage.kind == StorageKind::Kafka => format!(
                "topic {} on {} (created with 1 partition, compacted, if missing); one writer elected through group {}, fenced by transactional id {}; followers forward writes to the leader; this instance is reached at {}",
                k.topic,
                k.kafka.bootstrap,
                k.election_group(),
                k.transactional_id(),
                k.advertised_url
            ),
            _ => format!("local log in {}", self.storage.path.as_ref().map_or("?".into(), |p| p.display().to_string())),
        };
        format!(
            "serve the Confluent Schema Registry API on {}\nstorage: {storage}\n{auth}\nmax request body: {} bytes\ntelemetry on {}",
            self.listen, self.max_body_bytes, self.telemetry.listen
        )
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// A bound API server over an opened registry.
pub struct Server {
    http: HttpServer,
    cluster: Option<Arc<Cluster>>,
    auth: Arc<Auth>,
}

impl Server {
    /// Replays the storage and binds the API address. With Kafka storage, the API is bound only
    /// once the replay has reached the end of the topic, so no instance serves a partial registry.
    pub async fn bind(config: &SchemaStoreConfig) -> anyhow::Result<Server> {
        let (registry, cluster) = match config.storage.kind {
            StorageKind::Local => {
                let path = config
                    .storage
                    .path
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("storage.path is required"))?;
                (
                    tokio::task::spawn_blocking(move || Registry::open(&path)).await??,
                    None,
                )
            }
            StorageKind::Kafka => {
                let (registry, cluster) = kafka_storage::open(config.kafka_storage()?).await?;
                cluster.wait_caught_up().await;
                (registry, Some(cluster))
            }
        };
        let forwarder = cluster
            .as_ref()
            .map(|c| Forwarder::new(Arc::clone(c), config.max_body_bytes))
            .transpose()?
            .map(Arc::new);
        let auth = Arc::new(Auth::new(
            config.auth.clone(),
            logpipe_core::metric_names::schema_store::AUTH_DENIED,
        ));
        let state = AppState {
            registry: Arc::new(registry),
            auth: Arc::clone(&auth),
            forwarder,
        };
        let router = api::router(state, config.max_body_bytes);
        let http = HttpServer::bind(config.listen, "the API", router).await?;
        Ok(Server {
            http,
            cluster,
            auth,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Serves until `shutdown`, then finishes in-flight requests and, with Kafka storage, leaves
    /// the election group so another instance takes over at once.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let served = self.http.serve(shutdown).await;
        if let Some(cluster) = self.cluster {
            tokio::task::spawn_blocking(move || cluster.shutdown()).await?;
        }
        Ok(served?)
    }
}

/// The readiness check of Kafka storage: the topic is reachable and holds what was read.
const READY_STORAGE: &str = "storage";

/// The service the binary runs.
pub struct SchemaStore;

impl Service for SchemaStore {
    const NAME: &'static str = "logpipe-schema-store";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/schema-store.toml";
    type Config = SchemaStoreConfig;

    async fn run(config: SchemaStoreConfig, ctx: Context) -> anyhow::Result<()> {
        metrics::describe();
        ctx.readiness.register("api");
        let server = tokio::select! {
            server = Server::bind(&config) => server?,
            _ = ctx.shutdown.cancelled() => return Ok(()),
        };
        tracing::info!(listen = %server.local_addr(), "schema store API listening");
        ctx.readiness.ready("api");
        if let Some(mut lost) = server.cluster.as_ref().map(|c| c.storage_lost()) {
            let readiness = ctx.readiness.clone();
            tokio::spawn(async move {
                loop {
                    match &*lost.borrow_and_update() {
                        None => readiness.ready(READY_STORAGE),
                        Some(why) => readiness.not_ready(READY_STORAGE, why.clone()),
                    }
                    if lost.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        let auth = Arc::clone(&server.auth);
        let mut reloads = ctx.clone();
        tokio::spawn(async move {
            while let Some(new) = reloads.next_reload::<SchemaStoreConfig>().await {
                auth.replace(new.auth.clone());
                if without_reloadable(&new) != without_reloadable(&config) {
                    tracing::warn!("reload: only [auth] and telemetry.log change while running; the other keys take effect at the next start");
                }
            }
        });
        server.run(ctx.shutdown.clone()).await
    }
}

/// A config without the keys a reload applies, to tell whether a reload asked for more.
fn without_reloadable(config: &SchemaStoreConfig) -> SchemaStoreConfig {
    let mut rest = config.clone();
    rest.auth = None;
    rest.telemetry.log = None;
    rest
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
        let config = load(&format!(
            "{BASE}[storage]\nkind = \"local\"\npath = \"/var/lib/logpipe-schema-store\"\n"
        ))
        .unwrap();
        assert_eq!(config.storage.kind, StorageKind::Local);
        assert_eq!(config.max_body_bytes, default_max_body_bytes());
        assert!(config.describe().contains("auth: none"));
    }

    #[test]
    fn kafka_storage_config_loads_with_defaults_and_names_missing_keys() {
        let config = load(&format!(
            "{BASE}[storage]\nkind = \"kafka\"\n[kafka]\nbootstrap = \"k1:9092,k2:9092\"\n"
        ))
        .unwrap();
        let storage = config.kafka_storage().unwrap();
        assert_eq!(
            (storage.topic.as_str(), storage.advertised_url.as_str()),
            ("_schemas", "http://127.0.0.1:8081")
        );
        assert_eq!(
            storage.election_group(),
            "_lp.schema-store.default.election"
        );
        assert!(
            config
                .describe()
                .contains("topic _schemas on k1:9092,k2:9092"),
            "{}",
            config.describe()
        );
        let err = load(&format!("{BASE}[storage]\nkind = \"kafka\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[kafka]"), "{err}");
        let wildcard = "listen = \"0.0.0.0:8081\"\n[telemetry]\nlisten = \"127.0.0.1:9304\"\n[storage]\nkind = \"kafka\"\n[kafka]\nbootstrap = \"k:1\"\n";
        assert!(load(wildcard)
            .unwrap_err()
            .to_string()
            .contains("advertised_url"));
        let err = load(&format!(
            "{BASE}[storage]\nkind = \"kafka\"\npath = \"/x\"\n[kafka]\nbootstrap = \"k:1\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.path"), "{err}");
        let err = load(&format!("{BASE}[storage]\nkind = \"kafka\"\n[kafka]\nbootstrap = \"k:1\"\n[kafka.properties]\n\"isolation.level\" = \"read_uncommitted\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("isolation.level"), "{err}");
        let err = load(&format!(
            "{BASE}[storage]\nkind = \"local\"\npath = \"/x\"\ntopic = \"_schemas\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("kind = \"kafka\""), "{err}");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = load(&format!(
            "{BASE}[storage]\nkind = \"local\"\npath = \"relative\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.path must be absolute"), "{err}");
        let err = load(&format!(
            "{BASE}[storage]\nkind = \"local\"\npath = \"/x\"\nfsync = false\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("fsync"), "{err}");
        let err = load(&format!("{BASE}[storage]\nkind = \"local\"\npath = \"/x\"\n[auth]\n[[auth.users]]\nname = \"a\"\npassword_hash = \"plain\"\nrole = \"read\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("password_hash"), "{err}");
    }
}
