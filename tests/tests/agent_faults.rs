//! The agent end to end under faults, with generated game logs: rotation under load, kill -9
//! while writing, and every broker down for a while. Each test reconciles by the generator's
//! event ids (what was written) and by record ids (what downstream deduplicates on).
//!
//! Sizes are scaled to fit the CI budget on two cores with debug builds (see the agent's README).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use logpipe_core::metric_names::agent;
use logpipe_core::record::RecordId;
use logpipe_devkit::harness::{wait_until, Process};
use logpipe_devkit::loadgen::{self, LoadgenArgs, Report, Rotation};
use logpipe_tests::agent::{append, as_set, lines, Collector, Setup};
use logpipe_tests::service;

/// Writes generated logs in a blocking task.
fn loadgen(
    dir: &Path,
    run_id: &str,
    lines: u64,
    rate: f64,
    files: usize,
    rotate: Rotation,
) -> tokio::task::JoinHandle<anyhow::Result<Report>> {
    let mut args = LoadgenArgs::new(dir);
    args.files = files;
    args.lines = lines;
    args.rate = rate;
    args.rotate = rotate;
    args.rotate_bytes = 1_000_000;
    args.run_id = Some(run_id.to_owned());
    args.invalid = 0.05;
    tokio::task::spawn_blocking(move || loadgen::run(&args, &AtomicBool::new(false)))
}

/// What the consumer saw, reconciled with what was written.
struct Reconciled {
    lost: usize,
    duplicates: usize,
    /// Event ids that arrived under more than one record id (downstream could not remove
    /// their replays).
    unstable: usize,
}

fn reconcile(collector: &Collector, written: &HashSet<String>) -> Reconciled {
    let mut ids: HashMap<String, HashSet<RecordId>> = HashMap::new();
    let records = collector.records();
    for record in &records {
        let event = loadgen::event_id(&record.value)
            .expect("generated lines carry event ids")
            .to_owned();
        ids.entry(event).or_default().insert(record.id.clone());
    }
    Reconciled {
        lost: written.iter().filter(|e| !ids.contains_key(*e)).count(),
        duplicates: records.len() - ids.len(),
        unstable: ids.values().filter(|r| r.len() > 1).count(),
    }
}

async fn wait_for_all(
    collector: &Collector,
    written: &HashSet<String>,
    timeout: Duration,
) -> Reconciled {
    let _ = wait_until(timeout, || async {
        reconcile(collector, written).lost == 0
    })
    .await;
    reconcile(collector, written)
}

fn lost_with_prefix(collector: &Collector, written: &HashSet<String>, prefix: &str) -> usize {
    let seen: HashSet<String> = collector
        .records()
        .iter()
        .filter_map(|r| loadgen::event_id(&r.value).map(str::to_owned))
        .collect();
    written
        .iter()
        .filter(|e| e.starts_with(prefix) && !seen.contains(*e))
        .count()
}

fn written(reports: &[&Report]) -> HashSet<String> {
    reports.iter().flat_map(|r| r.event_ids()).collect()
}

/// A running agent on `brokers` brokers (with `extra` top-level config) whose input is every
/// subdirectory of the log dir, one load generator's files each, and a collector of what it
/// produces.
async fn agent_over_subdirectories(
    brokers: i32,
    extra: &str,
) -> anyhow::Result<(Setup, Process, Collector)> {
    let setup = Setup::new(brokers, extra, "").await?;
    let text = std::fs::read_to_string(&setup.config)?.replace("/logs/*.log", "/logs/*/*.log");
    std::fs::write(&setup.config, text)?;
    let agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    Ok((setup, agent, collector))
}

/// Issue test 1, scaled: 100,000 lines into 10 files while the agent runs, rename+create
/// rotation every ~1 MB on five files and copytruncate on the other five.
#[tokio::test]
async fn rotation_under_load_loses_nothing() -> anyhow::Result<()> {
    let (setup, mut agent, collector) = agent_over_subdirectories(1, "").await?;
    let rename = loadgen(
        &setup.logs.join("rename"),
        "rn",
        50_000,
        10_000.0,
        5,
        Rotation::Rename,
    );
    let copy = loadgen(
        &setup.logs.join("copy"),
        "ct",
        50_000,
        10_000.0,
        5,
        Rotation::Copytruncate,
    );
    let (rename, copy) = (rename.await??, copy.await??);
    assert!(
        rename.rotations >= 5 && copy.rotations >= 5,
        "{} {}",
        rename.summary(),
        copy.summary()
    );
    let written = written(&[&rename, &copy]);
    let result = wait_for_all(&collector, &written, Duration::from_secs(60)).await;
    eprintln!(
        "rotation under load: {} lines written, {} rotations; lost {} (rename {}, copytruncate {}), duplicates {}",
        written.len(),
        rename.rotations + copy.rotations,
        result.lost,
        lost_with_prefix(&collector, &written, "rn-"),
        lost_with_prefix(&collector, &written, "ct-"),
        result.duplicates
    );
    assert_eq!(result.lost, 0);
    assert_eq!(result.duplicates, 0, "no restart: nothing is sent twice");
    assert!(setup.metric(agent::ROTATIONS).await >= 5.0);
    assert!(setup.metric(agent::TRUNCATIONS).await >= 5.0);
    agent.ensure_running()?;
    service::stop(&mut agent).await?;
    Ok(())
}

/// Issue test 2: kill -9 five times at random points while writing goes on. Nothing is lost,
/// replays are bounded by what one checkpoint interval holds, and a replayed line always
/// carries the id it had the first time (so downstream removes it).
#[tokio::test]
async fn kill9_repeatedly_loses_nothing_and_resends_keep_their_ids() -> anyhow::Result<()> {
    const RATE: f64 = 8_000.0;
    let (setup, mut agent, collector) = agent_over_subdirectories(1, "").await?;
    let writer = loadgen(
        &setup.logs.join("game"),
        "k9",
        64_000,
        RATE,
        4,
        Rotation::Rename,
    );
    let mut seed = 0x9e37_79b9_u64;
    let kills = 5;
    for _ in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(600 + (seed >> 33) % 700)).await;
        agent.kill9()?;
        agent = setup.start().await?;
    }
    let report = writer.await??;
    let written = written(&[&report]);
    let result = wait_for_all(&collector, &written, Duration::from_secs(60)).await;
    eprintln!(
        "kill -9 x{kills}: {} lines written; lost {}, duplicates {}, replays under a new id {}",
        written.len(),
        result.lost,
        result.duplicates,
        result.unstable
    );
    assert_eq!(result.lost, 0);
    assert_eq!(
        result.unstable, 0,
        "a replayed line must keep its (host, file, offset) id"
    );
    // One checkpoint interval (1 s) plus what was in flight, per kill.
    let bound = kills * (2.0 * RATE) as usize;
    assert!(
        result.duplicates <= bound,
        "{} duplicates > {bound}",
        result.duplicates
    );
    collector.check_ids_are_stable()?;
    Ok(())
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Issue test 3, scaled: every broker down for 10 s while 12 MB of lines are written, then up.
/// Reading stops at the in-flight budget (memory stays bounded) and nothing is lost.
#[tokio::test]
async fn all_brokers_down_then_up_loses_nothing_within_the_budget() -> anyhow::Result<()> {
    const BUDGET: u64 = 4 << 20;
    let (setup, mut agent, collector) =
        agent_over_subdirectories(3, &format!("inflight_bytes = {BUDGET}")).await?;
    let warm_up = loadgen(&setup.logs.join("a"), "up", 2_000, 0.0, 2, Rotation::None).await??;
    let mut written = written(&[&warm_up]);
    assert_eq!(
        wait_for_all(&collector, &written, Duration::from_secs(30))
            .await
            .lost,
        0
    );
    let baseline = rss_bytes(agent.pid());

    for broker in 1..=3 {
        setup.cluster.broker_down(broker).await?;
    }
    let outage = loadgen(
        &setup.logs.join("b"),
        "down",
        48_000,
        0.0,
        4,
        Rotation::None,
    )
    .await??;
    written.extend(outage.event_ids());
    let mut peak_rss = 0;
    let mut peak_inflight: f64 = 0.0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        peak_rss = peak_rss.max(rss_bytes(agent.pid()));
        peak_inflight = peak_inflight.max(setup.metric(agent::INFLIGHT_BYTES).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.ensure_running()?;
    let during = collector.count();
    for broker in 1..=3 {
        setup.cluster.broker_up(broker).await?;
    }
    let result = wait_for_all(&collector, &written, Duration::from_secs(90)).await;
    eprintln!(
        "brokers down 10 s: {} bytes written meanwhile, {during} records seen before recovery; rss {} -> peak {} bytes, \
         peak in flight {peak_inflight}; lost {}, duplicates {}",
        outage.bytes, baseline, peak_rss, result.lost, result.duplicates
    );
    assert_eq!(result.lost, 0);
    assert!(
        outage.bytes > 2 * BUDGET,
        "the outage must outgrow the budget to test it"
    );
    // The budget plus one read chunk and a record's overhead rounding.
    assert!(
        peak_inflight <= (BUDGET + (2 << 20)) as f64,
        "in flight {peak_inflight} over budget"
    );
    assert!(
        peak_rss < baseline + 3 * BUDGET + (16 << 20),
        "rss {peak_rss} grew past the budget (baseline {baseline})"
    );
    service::stop(&mut agent).await?;
    Ok(())
}

/// A delivery that fails for good (the broker rejects a batch) makes the agent rebuild its
/// producer and resend from the acknowledged offsets: nothing is skipped.
#[tokio::test]
async fn rejected_batches_rebuild_the_producer_and_lose_nothing() -> anyhow::Result<()> {
    let setup = Setup::new(1, "", "").await?;
    let mut agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    let first = lines("before-errors", 500);
    append(&setup.log("a.log"), &first);
    collector
        .wait_for_values(&as_set(&first), Duration::from_secs(30))
        .await?;
    setup
        .cluster
        .request_errors(
            "Produce",
            &["INVALID_RECORD", "INVALID_RECORD", "INVALID_RECORD"],
        )
        .await?;
    let second = lines("during-errors", 2000);
    append(&setup.log("a.log"), &second);
    let mut expected = as_set(&first);
    expected.extend(as_set(&second));
    collector
        .wait_for_values(&expected, Duration::from_secs(60))
        .await?;
    assert!(
        setup.metric(agent::PRODUCER_REBUILDS).await >= 1.0,
        "{}",
        setup.metrics().await?
    );
    collector.check_ids_are_stable()?;
    agent.ensure_running()?;
    Ok(())
}

/// The agent's `/ready` answer: (ready, body).
async fn readiness(setup: &Setup) -> anyhow::Result<(bool, String)> {
    let response = reqwest::get(format!("http://{}/ready", setup.telemetry)).await?;
    let ready = response.status().is_success();
    Ok((ready, response.text().await?))
}

/// Every line's record ids: a line under two ids is one downstream cannot remove.
fn ids_per_line(collector: &Collector) -> HashMap<Vec<u8>, HashSet<RecordId>> {
    let mut out: HashMap<Vec<u8>, HashSet<RecordId>> = HashMap::new();
    for record in collector.records() {
        out.entry(record.value).or_default().insert(record.id);
    }
    out
}

/// Issue 19: the state directory fills up. Files already checkpointed go on shipping; a new
/// file waits (its id is not on disk: sent now, a crash would send it again under another id);
/// `/ready` and the metrics say why; a kill -9 meanwhile loses nothing and duplicates no line
/// under a second id; when space comes back, everything goes on without a restart.
#[tokio::test]
async fn a_full_state_disk_stops_checkpoints_not_shipping_and_loses_nothing() -> anyhow::Result<()>
{
    let setup = Setup::new(1, "", "").await?;
    let Some(disk) = logpipe_devkit::disk::Tmpfs::mount(&setup.state, 64)? else {
        return Ok(());
    };
    let a = setup.log("a.log");
    let mut written: Vec<String> = lines("a1", 200);
    append(&a, &written);
    let mut agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    collector
        .wait_for_values(&as_set(&written), Duration::from_secs(30))
        .await?;

    let filler = disk.fill()?;
    let errors_before = setup.metric(agent::CHECKPOINT_ERRORS).await;
    let new_file: Vec<String> = lines("b", 200);
    append(&setup.log("b.log"), &new_file);
    written.extend(new_file.iter().cloned());
    wait_until(Duration::from_secs(30), || async {
        setup.metric(agent::OPEN_FILES).await >= 2.0
            && setup.metric(agent::CHECKPOINT_ERRORS).await >= errors_before + 2.0
    })
    .await?;
    let (ready, why) = readiness(&setup).await?;
    assert!(
        !ready && why.contains("checkpoint") && why.contains("space"),
        "/ready must say the checkpoint cannot be written: {why}"
    );
    // The checkpointed file ships on; the new one has not sent a line.
    let more = lines("a2", 200);
    append(&a, &more);
    written.extend(more.iter().cloned());
    collector
        .wait_for_values(&as_set(&more), Duration::from_secs(30))
        .await?;
    let b_seen = collector
        .records()
        .iter()
        .filter(|r| r.text().contains("\"b-"))
        .count();
    assert_eq!(b_seen, 0, "a file whose id is not on disk must not send");

    // A crash while the disk is full, a restart once there is space again.
    agent.kill9()?;
    std::fs::remove_file(&filler)?;
    agent = setup.start().await?;
    collector
        .wait_for_values(&as_set(&written), Duration::from_secs(30))
        .await?;
    assert_eq!(
        setup.metric(agent::CHECKPOINT_ERRORS).await,
        0.0,
        "the checkpoint left by the full disk reads back whole"
    );

    // Full again, and space back without a restart: the new file goes once there is room.
    let filler = disk.fill()?;
    let late_file: Vec<String> = lines("c", 200);
    append(&setup.log("c.log"), &late_file);
    written.extend(late_file.iter().cloned());
    wait_until(Duration::from_secs(30), || async {
        setup.metric(agent::CHECKPOINT_ERRORS).await >= 1.0
    })
    .await?;
    assert!(!readiness(&setup).await?.0);
    std::fs::remove_file(&filler)?;
    collector
        .wait_for_values(&as_set(&written), Duration::from_secs(30))
        .await?;
    wait_until(Duration::from_secs(10), || async {
        readiness(&setup).await.is_ok_and(|(ready, _)| ready)
    })
    .await?;

    let ids = ids_per_line(&collector);
    let twice: Vec<_> = ids.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} lines arrived under two ids, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert_eq!(ids.len(), written.len(), "every line arrived");
    service::stop(&mut agent).await?;
    drop(disk);
    Ok(())
}
