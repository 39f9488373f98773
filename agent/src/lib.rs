//! `logpipe-agent`: a shell until issue 3 lands. It loads and checks its config, so `check`
//! and the deployment checks work, but `run` refuses to start rather than pretend to work.

use logpipe_core::service::{Context, Service, ServiceConfig};
use logpipe_core::telemetry::TelemetryConfig;
use serde::Deserialize;
use std::path::PathBuf;

use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::record::check_topic_name;

/// `logpipe-agent`'s config (see ARCHITECTURE.md, "Config shapes").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where checkpoints live.
    pub state_dir: PathBuf,
    /// The write-side cluster.
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    /// What to tail and where to ship it.
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
}

/// One `[[inputs]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub paths: Vec<String>,
    pub topic: String,
}

impl ServiceConfig for AgentConfig {
    fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate(&Role::Producer).map_err(anyhow::Error::msg)?;
        for (i, input) in self.inputs.iter().enumerate() {
            check_topic_name(&input.topic).map_err(|e| anyhow::anyhow!("inputs[{i}].topic: {e}"))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let inputs: Vec<String> = self.inputs.iter().map(|i| format!("  {:?} -> {}", i.paths, i.topic)).collect();
        format!("ship to {} with checkpoints in {}:\n{}", self.kafka.bootstrap, self.state_dir.display(), inputs.join("\n"))
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The service, for `logpipe_core::service::main`.
pub struct AgentService;

impl Service for AgentService {
    const NAME: &'static str = "logpipe-agent";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/agent.toml";
    type Config = AgentConfig;

    async fn run(_config: AgentConfig, _ctx: Context) -> anyhow::Result<()> {
        anyhow::bail!("logpipe-agent is not implemented yet")
    }
}
