//! `logpipe-mirror`: a shell until issue 6 lands. It loads and checks its config, so `check`
//! and the deployment checks work, but `run` refuses to start rather than pretend to work.

use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use serde::Deserialize;
use logpipe_core::kafka::{KafkaConfig, Role};

/// `logpipe-mirror`'s config (see ARCHITECTURE.md, "Config shapes").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The write-side cluster, read only.
    pub source: KafkaConfig,
    /// The read-side cluster.
    pub target: KafkaConfig,
    pub topics: TopicsConfig,
    pub telemetry: TelemetryConfig,
}

/// Which topics to mirror: regexes, exclude wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl ServiceConfig for MirrorConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.source.validate(&Role::Consumer { group_id: String::new() }).map_err(|e| anyhow::anyhow!("source: {e}"))?;
        self.target
            .validate(&Role::TransactionalProducer { transactional_id: String::new() })
            .map_err(|e| anyhow::anyhow!("target: {e}"))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "mirror topics matching {:?} (excluding {:?}) from {} to {}",
            self.topics.include, self.topics.exclude, self.source.bootstrap, self.target.bootstrap
        )
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The service, for `logpipe_core::service::main`.
pub struct MirrorService;

impl Service for MirrorService {
    const NAME: &'static str = "logpipe-mirror";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/mirror.toml";
    type Config = MirrorConfig;

    async fn run(_config: MirrorConfig, _ctx: Context) -> anyhow::Result<()> {
        anyhow::bail!("logpipe-mirror is not implemented yet")
    }
}
