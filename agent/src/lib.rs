//! `logpipe-agent`: tails log files and ships every line to the write-side Kafka cluster,
//! at least once, with crash-safe checkpoints (see README.md for the guarantees and config).
//!
//! - [`config`]: the TOML config and its validation;
//! - [`discovery`]: globs, directory watches, polling fall-back;
//! - [`identity`]: which file's contents a position belongs to;
//! - [`lines`]: splitting bytes into lines with offsets;
//! - [`tailer`]: one open file and its acknowledgement tracking;
//! - [`delivery`]: the producer and its delivery reports;
//! - [`checkpoint`]: durable positions;
//! - [`agent`]: the loop that ties them together;
//! - [`metrics`], [`systemd`]: what the agent reports to the outside.

pub mod agent;
pub mod checkpoint;
pub mod config;
pub mod delivery;
pub mod discovery;
mod files;
pub mod identity;
pub mod lines;
pub mod metrics;
mod rotation;
pub mod systemd;
pub mod tailer;

use logpipe_core::service::{Context, Service};

pub use config::{AgentConfig, InputConfig};

use crate::agent::{Agent, Event};

/// The service, for `logpipe_core::service::main`.
pub struct AgentService;

impl Service for AgentService {
    const NAME: &'static str = "logpipe-agent";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/agent.toml";
    type Config = AgentConfig;

    async fn run(config: AgentConfig, ctx: Context) -> anyhow::Result<()> {
        metrics::describe();
        let (events_tx, events) = std::sync::mpsc::channel();
        let forward = events_tx.clone();
        let readiness = ctx.readiness.clone();
        // The loop does blocking file I/O: it gets its own thread.
        let mut agent = tokio::task::spawn_blocking(move || {
            Agent::new(config, events_tx, events, readiness)?.run()
        });
        let mut reload = ctx.reload.clone();
        loop {
            tokio::select! {
                result = &mut agent => return result?,
                _ = ctx.shutdown.cancelled() => {
                    let _ = forward.send(Event::Shutdown);
                    return agent.await?;
                }
                changed = reload.changed() => {
                    if changed.is_err() {
                        // No more reloads can come: wait for the end alone.
                        ctx.shutdown.cancelled().await;
                        let _ = forward.send(Event::Shutdown);
                        return agent.await?;
                    }
                    match ctx.reload_config::<AgentConfig>() {
                        Ok(config) => {
                            let _ = forward.send(Event::Reload(Box::new(config)));
                        }
                        Err(e) => tracing::error!("reload refused, keeping the running configuration: {e:#}"),
                    }
                }
            }
        }
    }
}
