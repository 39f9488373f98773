//! The exactly-once hops commit as soon as they have nothing more to read: a record crossing an
//! idle pipeline waits for no timer. The mirror's `commit_interval_ms`, the validator's and the
//! CEP worker's `batch_ms` only bound how long a transaction stays open under load; here each
//! is set far beyond the time a record is given to arrive, so a hop that waited for it would
//! fail.

use std::time::{Duration, Instant};

use logpipe_core::metric_names::validator;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::metrics;

/// Each record must be visible downstream this soon after it was acknowledged upstream...
const WITHIN: Duration = Duration::from_secs(5);
/// ...except the first, which also waits for the service to start work on its partition.
const FIRST_WITHIN: Duration = Duration::from_secs(30);

fn bound(record: u64) -> Duration {
    if record == 0 {
        FIRST_WITHIN
    } else {
        WITHIN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_commits_a_lone_record_without_waiting_for_its_interval() -> anyhow::Result<()> {
    use logpipe_tests::mirror::*;
    const TOPIC: &str = "raw.lone";
    let (write, read) = clusters(&[(TOPIC, 1)], 1).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(
        dir.path(),
        "mirror.toml",
        &write,
        &read,
        "commit_interval_ms = 600000",
    )?;
    let mirror = start_mirror(&config, addr).await?;
    let producer = producer(write.bootstrap())?;
    for id in 0..3 {
        produce_ids(&producer, TOPIC, 1, id..id + 1)?;
        let sent = Instant::now();
        wait_committed(addr, TOPIC, id + 1, bound(id))
            .await
            .logs_of(&mirror)?;
        eprintln!(
            "record {id}: committed {:?} after it was written",
            sent.elapsed()
        );
    }
    assert_mirrored(&write, &read, TOPIC, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_commits_a_lone_record_without_waiting_for_its_batch_time(
) -> anyhow::Result<()> {
    use logpipe_tests::validator::*;
    let stack = Stack::start(&[]).await?;
    stack.register_game_schemas().await?;
    let (_report, files) = generate(stack.dir.path(), "lone", 3, 1)?;
    let (config, telemetry) = stack.validator_config("lone", "batch_ms = 600000", GAME_ROUTE)?;
    let _validator = stack.validator(&config, telemetry).await?;
    let processed = || async {
        metrics::total(telemetry, validator::RECORDS_VALID).await
            + metrics::total(telemetry, validator::RECORDS_INVALID).await
    };
    for line in 0..3 {
        stack.produce(RAW, &files, line..line + 1).await?;
        let sent = Instant::now();
        wait_until(bound(line as u64), || async {
            processed().await >= (line + 1) as f64
        })
        .await?;
        eprintln!(
            "line {line}: committed {:?} after it was written",
            sent.elapsed()
        );
    }
    let written = read_clean(&stack, CLEAN).await?.len() + read_dlq(&stack, DLQ).await?.len();
    assert_eq!(written, 3, "each line once in clean or the DLQ");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cep_worker_commits_lone_events_without_waiting_for_its_batch_time(
) -> anyhow::Result<()> {
    use logpipe_tests::cep::*;
    use logpipe_tests::service;
    use logpipe_tests::validator::{Stack, CLEAN};
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "idle", "w1", "batch_ms = 600000", "")?;
    let _worker = service::start(CEP, &config, telemetry).await?;
    RulesApi::new(telemetry)?.seed().await?;
    let progress = Progress::new(&stack, "idle")?;
    let mut written = 0;
    for round in 0..6 {
        // The first three rounds also wait for the worker's group to settle: it subscribes to
        // the clean topic, then to the repartition topics its rules create (a rebalance each;
        // measured: 4-6 s each, then well under a second).
        let within = if round < 3 { FIRST_WITHIN } else { WITHIN };
        let game = Game::generate(round, 40, 5, 0);
        let files = game.lines(&schemas)?;
        written += stack
            .produce(CLEAN, &files, 0..Game::longest(&files))
            .await? as i64;
        let sent = Instant::now();
        progress.wait_clean_committed(written, within).await?;
        eprintln!(
            "round {round}: committed {:?} after it was written",
            sent.elapsed()
        );
    }
    Ok(())
}
