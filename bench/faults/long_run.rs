//! The long fault run: millions of lines through the whole pipeline (agent -> write cluster ->
//! mirror -> read cluster -> validator -> clean and dead-letter topics, with the schema store)
//! while a fault strikes every 20 s: kill -9 of a random service, or a broker of either cluster
//! down for a few seconds. Each fault waits until the pipeline has recovered (the killed service
//! making progress again, records flowing through the cluster again), as in the fault suite;
//! then the generator stops, the pipeline drains, and the clean and dead-letter topics must hold
//! every written line exactly once (lost 0, duplicated 0, misrouted 0).
//!
//! Not a CI test (it runs for about half an hour): `bench/run faults`, or
//! `cargo build --release --workspace --bins && cargo bench -p logpipe-tests --bench faults`.
//! Environment: `LOGPIPE_LONG_LINES` (default 10000000), `LOGPIPE_LONG_RATE` (lines/s, default
//! 8000: below the pipeline's throughput on 2 cores, so the faults, not a backlog, are what it
//! survives), `LOGPIPE_LONG_FAULT_EVERY` (seconds, default 20), `LOGPIPE_FAULT_SEED` (replays a
//! schedule). Half the lines are rotated by rename, half by copytruncate; 5 % are invalid.
//! Release binaries, dev clusters of 3 brokers each.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::loadgen::{LoadgenArgs, Rotation};
use logpipe_devkit::measure::env;
use logpipe_devkit::pipeline::Component;
use logpipe_devkit::reconcile::wait_drained;
use logpipe_tests::faults::{inject, start_pipeline, Fault, Generator, Side};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Files written in parallel.
const FILES: usize = 3;
/// Each file rotates about this often (a killed agent stays down until one rotated), whatever
/// the rate: lines are ~250 B.
const ROTATE_EVERY_SECS: f64 = 8.0;
/// The services a kill picks from: all the pipeline runs.
const KILLABLE: [Component; 4] = Component::ALL;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let lines: u64 = env("LOGPIPE_LONG_LINES", 10_000_000);
    let rate: f64 = env("LOGPIPE_LONG_RATE", 8_000.0);
    let every = Duration::from_secs(env("LOGPIPE_LONG_FAULT_EVERY", 20));
    let seed: u64 = match std::env::var("LOGPIPE_FAULT_SEED") {
        Ok(s) => s.parse().context("LOGPIPE_FAULT_SEED is a number")?,
        Err(_) => rand::random(),
    };
    eprintln!(
        "long fault run: {lines} lines at {rate} lines/s, a fault every {every:?}, LOGPIPE_FAULT_SEED={seed}"
    );
    let dir = tempfile::Builder::new()
        .prefix("logpipe-long-faults-")
        .tempdir()?;
    let started = Instant::now();
    let result = run(lines, rate, every, seed, dir.path()).await;
    match result {
        Ok(outcome) => {
            eprintln!(
                "long fault run: LOGPIPE_FAULT_SEED={seed} passed in {:.0?}",
                started.elapsed()
            );
            outcome.emit(lines, rate, every)
        }
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!(
                "long fault run failed (LOGPIPE_FAULT_SEED={seed}); state and logs kept in {}",
                kept.display()
            )))
        }
    }
}

/// What a run proved.
struct Outcome {
    written: u64,
    lost: u64,
    duplicated: u64,
    misrouted: u64,
    faults: Vec<(Fault, Duration)>,
    drained_in: Duration,
    elapsed: Duration,
}

impl Outcome {
    fn emit(&self, lines: u64, rate: f64, every: Duration) -> anyhow::Result<()> {
        let case = format!(
            "{} M lines at {rate} lines/s, a fault every {} s",
            lines as f64 / 1e6,
            every.as_secs()
        );
        let kills = |c: Component| {
            self.faults
                .iter()
                .filter(|(f, _)| *f == Fault::Kill(c))
                .count()
        };
        let slowest = |c: Component| {
            self.faults
                .iter()
                .filter(|(f, _)| *f == Fault::Kill(c))
                .map(|(_, took)| took.as_secs_f64())
                .fold(0.0, f64::max)
        };
        let outages = self
            .faults
            .iter()
            .filter(|(f, _)| matches!(f, Fault::BrokerOutage(_)))
            .count();
        let mut lost = Row::new("faults", &case, "lines lost", self.lost as f64, "lines")
            .target_at_most(0.0)
            .extra("written", self.written)
            .extra("duplicated", self.duplicated)
            .extra("misrouted", self.misrouted)
            .extra("broker outages", outages as u64)
            .extra("drained in s", self.drained_in.as_secs_f64())
            .extra("run s", self.elapsed.as_secs_f64());
        for c in KILLABLE {
            lost = lost
                .extra(&format!("kill -9 {c}"), kills(c) as u64)
                .extra(&format!("{c} slowest fault s"), slowest(c));
        }
        lost.emit()?;
        Row::new(
            "faults",
            &case,
            "lines duplicated",
            self.duplicated as f64,
            "lines",
        )
        .target_at_most(0.0)
        .emit()
    }
}

async fn run(
    lines: u64,
    rate: f64,
    every: Duration,
    seed: u64,
    dir: &std::path::Path,
) -> anyhow::Result<Outcome> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut pipeline, brokers) = start_pipeline(dir, false).await?;
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut reports = Vec::new();
    for (rotation, run_id) in [(Rotation::Rename, "ren"), (Rotation::Copytruncate, "ct")] {
        let mut args = LoadgenArgs::new(pipeline.log_dir());
        args.files = FILES;
        // Unbounded, stopped once half the lines are written: a fault's recovery check needs
        // lines still coming.
        args.lines = 0;
        args.rate = rate;
        args.invalid = 0.05;
        args.rotate = rotation;
        args.rotate_bytes = (rate * 250.0 / FILES as f64 * ROTATE_EVERY_SECS) as u64;
        args.seed = rng.random();
        args.run_id = Some(format!("{run_id}{seed}"));
        let progress = args.progress.clone();
        let generator = Generator::start(args);
        let mut next = Instant::now() + every;
        while progress.load(Ordering::Relaxed) < lines / 2 {
            ensure!(!generator.is_finished(), "the load generator stopped");
            tokio::time::sleep(Duration::from_millis(200)).await;
            if Instant::now() < next {
                continue;
            }
            let fault = if rng.random_range(0..6) == 0 {
                Fault::BrokerOutage(if rng.random() {
                    Side::Write
                } else {
                    Side::Read
                })
            } else {
                Fault::Kill(KILLABLE[rng.random_range(0..KILLABLE.len())])
            };
            let at = Instant::now();
            inject(&mut pipeline, fault, &mut rng, brokers)
                .await
                .with_context(|| format!("fault {} ({fault})", faults.len() + 1))?;
            let took = at.elapsed();
            faults.push((fault, took));
            eprintln!(
                "{:>6.0}s fault {}: {fault}: recovered in {took:.1?}; {} of {} lines written",
                started.elapsed().as_secs_f64(),
                faults.len(),
                progress.load(Ordering::Relaxed),
                lines / 2
            );
            for c in Component::ALL {
                ensure!(
                    pipeline.is_running(c),
                    "{c} died after {fault}\n{}",
                    pipeline.logs(c)
                );
            }
            next = Instant::now() + every;
        }
        let report = generator
            .finish()
            .await
            .context("the load generator failed")?;
        eprintln!("{}", report.summary());
        reports.push(report);
    }
    let (store, read) = (
        pipeline.schema_store_url(),
        pipeline.read_cluster().bootstrap().to_owned(),
    );
    let (clean, dlq) = (pipeline.clean_topics(), pipeline.dlq_topics());
    let drain = Instant::now();
    let r = wait_drained(
        &read,
        &store,
        &clean,
        &dlq,
        &reports,
        Duration::from_secs(1800),
    )
    .await?;
    let drained_in = drain.elapsed();
    eprintln!("drained in {drained_in:.1?}: {r}");
    let outcome = Outcome {
        written: r.written,
        lost: r.lost.len() as u64,
        duplicated: r.duplicated.len() as u64,
        misrouted: r.misrouted.len() as u64,
        faults,
        drained_in,
        elapsed: started.elapsed(),
    };
    ensure!(r.is_exact(), "not exact: {r}");
    pipeline.stop(Duration::from_secs(60)).await?;
    Ok(outcome)
}
