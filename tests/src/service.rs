//! Starting a logpipe service the way an operator does: `<binary> run --config <file>`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_devkit::harness::Process;

/// How long a service may take to report ready: a cold start joins groups and reads state.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to stop gracefully: its last commit and flush.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `binary run --config <config>` without waiting for it, for tests that watch it start.
pub fn spawn(binary: &str, config: &Path) -> anyhow::Result<Process> {
    let config = config.to_str().context("config path is not UTF-8")?;
    Process::start(binary, &["run", "--config", config])
}

/// Starts `binary run --config <config>` and waits until its telemetry at `telemetry` says
/// ready; a service that never does fails the test with its logs.
pub async fn start(binary: &str, config: &Path, telemetry: SocketAddr) -> anyhow::Result<Process> {
    let mut process = spawn(binary, config)?;
    process.wait_ready(telemetry, READY_TIMEOUT).await?;
    Ok(process)
}

/// Stops a service with SIGTERM and fails unless it exits successfully in time: a graceful
/// shutdown is part of what every test checks.
pub async fn stop(process: &mut Process) -> anyhow::Result<()> {
    let status = process.terminate(STOP_TIMEOUT).await?;
    anyhow::ensure!(status.success(), "exited with {status}\n{}", process.logs());
    Ok(())
}
