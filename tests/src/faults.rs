//! Faults injected into a running pipeline and the load written meanwhile, shared by the fault
//! suite (a test) and the long fault run (a benchmark-style program): each fault waits until
//! the pipeline has recovered, so a schedule of them is a sequence of proven recoveries.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use logpipe_core::metric_names::{agent, cep, lake, mirror, schema_store, validator};
use logpipe_devkit::harness::wait_until;
use logpipe_devkit::loadgen::{self, LoadgenArgs, Report};
use logpipe_devkit::pipeline::{Component, Pipeline, PipelineOptions};
use logpipe_devkit::prometheus;
use rand::rngs::StdRng;
use rand::Rng as _;

/// How long a service may take to show progress after a restart or an outage, before the suite
/// gives up and shows its log.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon a service restarted after kill -9 must be making progress, with default settings
/// (issue 19): a group member comes back without waiting for librdkafka's default 45 s session
/// (which took ~130 s over two kills). The group consumers are static members: a restarted one
/// takes its predecessor's place and partitions without a rebalance (mock patch 0010, as Kafka
/// with KIP-345), so what is left is the service's own start.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// The CEP worker's `idle_timeout` in the suite: longer than any stall the suite injects (a
/// service down up to 2 s and back within [`RECOVERY_BOUND`]). A caught-up source partition
/// without records for the idle timeout lets the watermark follow the wall clock, so a shorter
/// one (`cargo dev up`'s 3 s) judges the records of a longer stall late: one run saw the mirror
/// take 6.5 s and 201 on-time events go to `cep.late`. Operators size it the same way.
pub const CEP_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed agent stays down at most, waiting for a rotation (at the fault suite's
/// 200 lines/s they come every ~1.3 s).
pub const ROTATION_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a service, keep it down a while, restart it and see it make progress.
    Kill(Component),
    /// Take one broker of a cluster down for a while, then up, and see records flow again.
    BrokerOutage(Side),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(c) => write!(f, "kill -9 {c}"),
            Fault::BrokerOutage(side) => write!(f, "broker outage on the {side:?} cluster"),
        }
    }
}

/// Starts the whole pipeline (agent, mirror, validator, schema store on two dev clusters; with
/// `cep`, also a CEP worker running the seed rules, as `cargo dev up` does) in `dir`; returns
/// it with the brokers per cluster, which broker outages pick from.
pub async fn start_pipeline(dir: &std::path::Path, cep: bool) -> anyhow::Result<(Pipeline, i32)> {
    let options = PipelineOptions {
        state_dir: dir.to_owned(),
        cep_rules: cep.then(logpipe_devkit::up::cep::seed_rules),
        cep_idle_timeout: cep.then_some(CEP_IDLE_TIMEOUT),
        ..PipelineOptions::default()
    };
    let brokers = options.brokers;
    let pipeline = Pipeline::start(options)
        .await
        .context("starting the pipeline")?;
    Ok((pipeline, brokers))
}

/// Injects one fault and waits until the pipeline recovers from it: a killed service is
/// restarted (the agent only after a file rotated while it was down) and must be making
/// progress within [`RECOVERY_BOUND`]; after a broker outage records flow through that cluster
/// again.
pub async fn inject(
    pipeline: &mut Pipeline,
    fault: Fault,
    rng: &mut StdRng,
    brokers: i32,
) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(c) => {
            let starts = pipeline.starts(c);
            let rotated = rotated_files(&pipeline.log_dir())?;
            pipeline.kill9(c)?;
            ensure!(!pipeline.is_running(c), "{c} still runs after SIGKILL");
            if c == Component::Agent {
                // A file rotates while nobody reads it: the agent must find the rest of it after
                // its restart (renamed away, or in the copy of a copytruncate). Only one
                // rotation: a file created and rotated away again while the agent is down is
                // never seen by it (nor by any tailer).
                let log_dir = pipeline.log_dir();
                wait_until(ROTATION_TIMEOUT, || async {
                    rotated_files(&log_dir).is_ok_and(|n| n > rotated)
                })
                .await
                .context("no rotation while the agent was down")?;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
            }
            let restarted = Instant::now();
            pipeline.restart(c).await?;
            ensure!(pipeline.starts(c) == starts + 1, "{c} was restarted");
            // Counters start at zero in the new process: any count is its own progress.
            let (metrics, at_least) = progress_metrics(c);
            wait_for(pipeline, c, metrics, at_least).await?;
            let took = restarted.elapsed();
            eprintln!("{c}: progress {took:.1?} after its restart");
            ensure!(
                took <= RECOVERY_BOUND,
                "{c} made no progress until {took:.1?} after its restart (bound {RECOVERY_BOUND:?})\n{}",
                pipeline.logs(c)
            );
            Ok(())
        }
        Fault::BrokerOutage(side) => {
            let broker = rng.random_range(1..=brokers);
            let (cluster, watched) = match side {
                Side::Write => (pipeline.write_cluster(), Component::Agent),
                Side::Read => (pipeline.read_cluster(), Component::Validator),
            };
            cluster.broker_down(broker).await?;
            let outage = Duration::from_millis(rng.random_range(1_000..4_000));
            tokio::time::sleep(outage).await;
            cluster
                .broker_up(broker)
                .await
                .with_context(|| format!("bringing broker {broker} back"))?;
            // Records flow through that cluster again after the outage.
            let (metrics, _) = progress_metrics(watched);
            let before = metric(pipeline, watched, metrics).await;
            wait_for(pipeline, watched, metrics, before + 1.0).await
        }
    }
}

/// The counters showing a component's progress, and the count a fresh process must reach.
fn progress_metrics(c: Component) -> (&'static [&'static str], f64) {
    match c {
        Component::Agent => (&[agent::LINES_ACKED], 1.0),
        Component::Mirror => (&[mirror::RECORDS], 1.0),
        Component::Validator => (&[validator::RECORDS_VALID, validator::RECORDS_INVALID], 1.0),
        // The store must have its five schemas back from its log (its gauge), and serve.
        Component::SchemaStore => (&[schema_store::SCHEMAS], 5.0),
        Component::Cep => (&[cep::EVENTS], 1.0),
        Component::Lake => (&[lake::ROWS], 1.0),
    }
}

/// Rotated log files (`game-<n>.log.<k>`) in the log directory: grows with every rotation.
fn rotated_files(dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        if !entry?.file_name().to_string_lossy().ends_with(".log") {
            n += 1;
        }
    }
    Ok(n)
}

async fn metric(pipeline: &Pipeline, c: Component, names: &[&str]) -> f64 {
    match pipeline.metrics(c).await {
        Ok(text) => names
            .iter()
            .map(|name| prometheus::total(&text, name))
            .sum(),
        Err(_) => 0.0,
    }
}

async fn wait_for(
    pipeline: &Pipeline,
    c: Component,
    names: &[&str],
    at_least: f64,
) -> anyhow::Result<()> {
    if wait_until(PROGRESS_TIMEOUT, || async {
        metric(pipeline, c, names).await >= at_least
    })
    .await
    .is_err()
    {
        bail!(
            "{c}: {names:?} = {} < {at_least} within {PROGRESS_TIMEOUT:?}\n{}",
            metric(pipeline, c, names).await,
            pipeline.logs(c)
        );
    }
    Ok(())
}

/// The load generator on a thread, writing until told to stop (or its line count).
pub struct Generator {
    stop: Arc<AtomicBool>,
    thread: tokio::task::JoinHandle<anyhow::Result<Report>>,
}

/// A failed run must not leave the generator writing (the runtime waits for it at exit).
impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Generator {
    pub fn start(args: LoadgenArgs) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = tokio::task::spawn_blocking(move || loadgen::run(&args, &flag));
        Generator { stop, thread }
    }

    /// Whether it stopped by itself (its line count written, or an error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops it and returns what it wrote.
    pub async fn finish(mut self) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.thread).await?
    }
}
