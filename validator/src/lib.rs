//! `logpipe-validator`: a shell until issue 5 lands. It loads and checks its config, so `check`
//! and the deployment checks work, but `run` refuses to start rather than pretend to work.

pub mod avro;
pub mod schema;

use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use serde::Deserialize;
use logpipe_core::kafka::{KafkaConfig, Role};

/// `logpipe-validator`'s config (see ARCHITECTURE.md, "Config shapes").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Base URL of the schema store.
    pub schema_store: String,
    /// The read-side cluster.
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One `[[routes]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex over raw topic names.
    pub topics: String,
    /// Subject strategy.
    pub subject: toml::Value,
}

impl ServiceConfig for ValidatorConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate(&Role::Consumer { group_id: String::new() }).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("validate {} route(s) on {} against {}", self.routes.len(), self.kafka.bootstrap, self.schema_store)
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The service, for `logpipe_core::service::main`.
pub struct ValidatorService;

impl Service for ValidatorService {
    const NAME: &'static str = "logpipe-validator";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/validator.toml";
    type Config = ValidatorConfig;

    async fn run(_config: ValidatorConfig, _ctx: Context) -> anyhow::Result<()> {
        anyhow::bail!("logpipe-validator is not implemented yet")
    }
}
