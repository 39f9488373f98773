//! The shared pipeline launcher end to end, without faults: generated lines (valid and invalid,
//! with rotation) go file -> agent -> write cluster -> mirror -> read cluster -> validator, and
//! every one is found exactly once in clean or DLQ; after a schema fix, a replay of the dead
//! letters keeps the count exact, each replay counted as such; then a graceful stop exits every
//! service 0.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use logpipe_core::metric_names::{agent, validator};
use logpipe_devkit::loadgen::{self, InvalidKind, LoadgenArgs, Rotation};
use logpipe_devkit::pipeline::{Component, Pipeline, PipelineOptions};
use logpipe_devkit::prometheus;
use logpipe_devkit::reconcile::{reconcile, wait_drained};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_lines_reach_clean_or_dlq_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("logpipe-pipeline-smoke-")
        .tempdir()?;
    let options = PipelineOptions {
        state_dir: dir.path().to_owned(),
        ..PipelineOptions::default()
    };
    let mut pipeline = Pipeline::start(options).await?;
    for c in Component::ALL {
        assert!(pipeline.is_running(c), "{c} runs after start");
    }

    let mut args = LoadgenArgs::new(pipeline.log_dir());
    args.files = 3;
    args.lines = 3_000;
    args.invalid = 0.05;
    args.rotate = Rotation::Rename;
    args.rotate_bytes = 100_000;
    // About a rotation per file and second: a file renamed away before the agent has even
    // opened it cannot be tailed by anyone, so the generator must not outrun discovery.
    args.rate = 1_000.0;
    args.run_id = Some("smoke".into());
    let report =
        tokio::task::spawn_blocking(move || loadgen::run(&args, &AtomicBool::new(false))).await??;
    assert!(
        report.rotations > 0 && !report.invalid_lines.is_empty(),
        "{}",
        report.summary()
    );

    let written = [report];
    let store = pipeline.schema_store_url();
    let read = pipeline.read_cluster().bootstrap().to_owned();
    let (clean, dlq) = (pipeline.clean_topics(), pipeline.dlq_topics());
    let r = wait_drained(
        &read,
        &store,
        &clean,
        &dlq,
        &written,
        Duration::from_secs(120),
    )
    .await?;
    assert!(
        r.is_exact(),
        "{r}\n{}",
        logpipe_tests::pipeline::hops(&pipeline, &written).await
    );
    assert_eq!(
        (r.clean + r.dead_letters, r.written_invalid),
        (3_000, written[0].invalid_lines.len() as u64),
        "{r}"
    );

    // Each hop reports the traffic on its telemetry address.
    let agent = pipeline.metrics(Component::Agent).await?;
    assert_eq!(prometheus::total(&agent, agent::LINES_ACKED), 3_000.0);
    let validator = pipeline.metrics(Component::Validator).await?;
    assert_eq!(
        prometheus::total(&validator, validator::RECORDS_VALID),
        r.clean as f64
    );

    // The README tour's "fix a schema" and "replay": with player_id optional, the dead letters
    // of the validate stage are replayed; missing-field lines go to clean, wrong-type lines fail
    // again. Every line is still found once, each replay in place of its dead letter.
    logpipe_tests::pipeline::make_player_id_optional(&store).await?;
    let kinds = &written[0].invalid_by_kind;
    let missing = kinds.get(&InvalidKind::MissingField).copied().unwrap_or(0);
    let wrong_type = kinds.get(&InvalidKind::WrongType).copied().unwrap_or(0);
    assert!(missing > 0 && wrong_type > 0, "{}", written[0].summary());
    assert_eq!(
        logpipe_tests::validator::replay(
            &pipeline.config_file(Component::Validator),
            &dlq[0],
            &["--stage", "validate"],
        )
        .await?,
        (missing, wrong_type)
    );
    let replayed = reconcile(&read, &store, &clean, &dlq, &written).await?;
    assert!(replayed.is_exact(), "{replayed}");
    assert_eq!(
        (replayed.replayed, replayed.replayed_dead),
        (missing, wrong_type),
        "{replayed}"
    );
    assert_eq!(
        replayed.clean + replayed.dead_letters,
        3_000 + missing + wrong_type,
        "{replayed}"
    );

    // Logs are on disk, one file per service.
    for c in Component::ALL {
        let log = std::fs::read_to_string(pipeline.log_file(c))?;
        assert!(
            log.contains("=== logpipe-dev: start 1 of"),
            "{c}'s log has its start marker"
        );
    }
    pipeline.stop(Duration::from_secs(30)).await
}
