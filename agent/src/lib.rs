//! `logpipe-agent`: tails log files and ships every line to the write-side Kafka cluster,
//! at least once, with crash-safe checkpoints (see README.md for the guarantees and config).
//!
//! The API is the service ([`AgentService`], run by `main.rs`), its configuration
//! ([`AgentConfig`]), and the producer settings ([`client_config`]) the benchmark reuses for
//! its plain-producer ceiling. Inside:
//!
//! - `config`: the TOML config and its validation;
//! - `discovery`: globs, directory watches, polling fall-back;
//! - `identity`: which file's contents a position belongs to;
//! - `lines`: splitting bytes into lines with offsets;
//! - `tailer`: one open file and its acknowledgement tracking;
//! - `files`: the table of open files and remembered positions;
//! - `rotation`: recognising rotated, truncated and copied files;
//! - `delivery`: the producer and its delivery reports;
//! - `checkpoint`: durable positions;
//! - `agent`: the loop that ties them together, and its flow control;
//! - `metrics`: what the agent reports to the outside (systemd notifications come from
//!   `core::systemd`, sent from the tailing loop itself).

mod agent;
mod checkpoint;
mod config;
mod delivery;
mod discovery;
mod files;
mod identity;
mod lines;
mod metrics;
mod rotation;
mod tailer;

use logpipe_core::service::{Context, Service};

pub use config::{AgentConfig, InputConfig, StartAt, WatchMode};
pub use delivery::{client_config, line_headers};

use crate::agent::{Agent, Event};

/// The service, for `logpipe_core::service::main`.
pub struct AgentService;

impl Service for AgentService {
    const NAME: &'static str = "logpipe-agent";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/agent.toml";
    const NOTIFIES_SYSTEMD: bool = true;
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
        let mut reloads = ctx.clone();
        loop {
            tokio::select! {
                result = &mut agent => return result?,
                _ = ctx.shutdown.cancelled() => {
                    let _ = forward.send(Event::Shutdown);
                    return agent.await?;
                }
                config = reloads.next_reload::<AgentConfig>() => match config {
                    Some(config) => {
                        let _ = forward.send(Event::Reload(Box::new(config)));
                    }
                    None => {
                        // No more reloads can come: wait for the end alone.
                        ctx.shutdown.cancelled().await;
                        let _ = forward.send(Event::Shutdown);
                        return agent.await?;
                    }
                },
            }
        }
    }
}
