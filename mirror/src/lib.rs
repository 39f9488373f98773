//! `logpipe-mirror`: copies selected topics from the write cluster to the read cluster, byte for
//! byte and exactly once, and never writes to the write cluster.
//!
//! # Design
//!
//! **Units of work.** Source partitions are grouped into a fixed number of *shards*:
//! `shard = (fnv1a(topic) + partition) mod shards` (`topology::shard_of`). A shard is the unit
//! of ownership and of transactions: it has one stable transactional id,
//! `logpipe-mirror.<name>.<shard>`, so whoever runs the shard next fences whoever ran it before
//! (`init_transactions`), even a paused zombie that has not noticed it lost the shard.
//!
//! **Positions on the target, in the same transaction.** A Kafka transaction lives in one
//! cluster, so the source positions are stored on the target: in the compacted state topic
//! `_lp.mirror.<name>.state`, one record per source partition per commit, produced inside the
//! transaction that also holds the mirrored records (`state`). We chose the state topic over
//! `send_offsets_to_transaction` to a target-side group because (1) the record can carry the
//! target offset too, which lets a new owner check the target partition's tail (below), (2) no
//! consumer group has to be faked to hold positions of a *different* cluster's partitions, and
//! (3) librdkafka's mock cluster, our test cluster, accepts TxnOffsetCommit but does not store
//! it. The source is read with `read_committed` in assign mode: no source group, no source
//! commits, no writes to the source at all.
//!
//! **Resume.** On start and whenever a shard moves, its new owner fences, reads the positions
//! (read_committed), applies the data-loss policy if a position is below the source log-start
//! offset, and reads the target partitions after the committed target offset. On a real
//! cluster that read finds nothing (an aborted transaction is invisible); on a cluster that
//! does not isolate transactions (the mock cluster shows records of aborted and open
//! transactions) it finds what the crashed owner wrote, and the new owner verifies those
//! records against the next source records instead of writing them again. Records that are not
//! the mirror's copies stop the shard: something else writes to the target partition.
//!
//! **Several instances.** Every instance joins the group `logpipe-mirror.<name>` on the target,
//! subscribed to the state topic, whose partitions are the shards (`membership`). The group
//! coordinator gives each shard to one live instance; when an instance dies, the survivors get
//! its shards after `session_timeout_ms`. The number of shards is the state topic's partition
//! count; change it only with every instance stopped.
//!
//! **Topics.** Include/exclude regexes over whole names (exclude wins; `_`-prefixed topics are
//! excluded unless `exclude_internal = false`); identity names, or `topics.rename` with
//! `{topic}`. Both clusters' metadata is read every `refresh_interval_ms` (default 2 s), so new
//! topics and partitions are mirrored within seconds. Missing target topics are created with
//! the admin API with the source's partition count, min(source replication, target brokers)
//! replicas and the source's values of a documented subset of topic configs
//! (`topology::COPIED_CONFIGS`, read with DescribeConfigs); partitions added on the source are
//! added on the target. If the target refuses, the mirror fails at start (or, for topics
//! appearing later, logs an error every 30 s) naming exactly what to create. Records of a
//! partition are mirrored only once the target has it, at the same partition number.
//!
//! **Fidelity.** Key (null stays null), value (tombstones stay tombstones), all headers in order
//! (repeated names, null values), timestamp and partition number are copied unchanged
//! (`copy`). A LogAppendTime topic is created as one (its `message.timestamp.type` is copied),
//! so its records arrive as LogAppendTime, stamped by the target broker when appended: only a
//! broker can stamp LogAppendTime, so that timestamp is the read side's append time.
//!
//! **Memory.** `max_buffer_bytes` (default 256 MiB) bounds the process: 32 MiB (at most a quarter)
//! is kept for the process itself, the rest is split between shards, and within a shard
//! between librdkafka's producer queue (half), fetch queue and fetch in flight (a quarter each). When the producer queue is full the
//! shard stops reading the source until the target catches up (back-pressure, not growth).
//!
//! **Metrics** (per source topic and partition): `logpipe_mirror_offset_lag_records`,
//! `logpipe_mirror_time_lag_seconds`, `logpipe_mirror_records_total`,
//! `logpipe_mirror_bytes_total` (use `rate()` for per-second values),
//! `logpipe_mirror_last_commit_age_seconds`, `logpipe_mirror_committed_offset`,
//! `logpipe_mirror_data_loss_records`, `logpipe_mirror_data_loss_events_total`,
//! `logpipe_mirror_verified_records_total`; per shard
//! `logpipe_mirror_commit_latency_seconds`, `logpipe_mirror_shard_owned`,
//! `logpipe_mirror_shard_errors_total`; and `logpipe_mirror_shards_owned`,
//! `logpipe_mirror_target_topics_missing`, `logpipe_mirror_loop_skipped_total`. `/ready` is true
//! while both clusters answer metadata requests and every shard the group gave this instance has
//! opened its session (`shards_ready`): from then on the instance copies all it owns.

mod clients;
mod config;
mod config_sync;
mod copy;
mod membership;
mod metrics;
mod shard;
mod shards_ready;
mod state;
mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_core::service::{Context, Service};
use tokio::sync::watch;

pub use crate::config::MirrorConfig;
use crate::metrics as names;
use crate::shard::Shared;
use crate::shards_ready::ShardsReady;
use crate::topology::{missing_message, ScanError, Scanner};

/// The service, for `logpipe_core::service::main`.
pub struct MirrorService;

impl Service for MirrorService {
    const NAME: &'static str = "logpipe-mirror";
    const DEFAULT_CONFIG: &'static str = "/etc/logpipe/mirror.toml";
    type Config = MirrorConfig;

    async fn run(config: MirrorConfig, ctx: Context) -> anyhow::Result<()> {
        run(Arc::new(config), ctx).await
    }
}

/// Puts a reloaded config's topic selection in force; says which other keys would need a
/// restart.
fn reload(scanner: &Scanner, running: &MirrorConfig, new: &MirrorConfig) {
    match new.selection() {
        Ok(selection) => {
            scanner.select(selection);
            tracing::info!(include = ?new.topics.include, exclude = ?new.topics.exclude, "reload: topic selection in force");
        }
        Err(e) => tracing::error!("reload: topics: {e:#}"),
    }
    if without_reloadable(new) != without_reloadable(running) {
        tracing::warn!("reload: only topics.include, topics.exclude, topics.exclude_internal and telemetry.log change while running; the other keys take effect at the next start");
    }
}

/// The config without the keys a reload applies (as text: not every type in it compares).
fn without_reloadable(config: &MirrorConfig) -> String {
    let mut rest = config.clone();
    rest.topics.include.clear();
    rest.topics.exclude.clear();
    rest.topics.exclude_internal = true;
    rest.telemetry.log = None;
    format!("{rest:?}")
}

/// How often the error about topics the target lacks is repeated while they stay missing.
const MISSING_REPEAT: Duration = Duration::from_secs(30);

async fn run(config: Arc<MirrorConfig>, ctx: Context) -> anyhow::Result<()> {
    metrics::describe();
    ctx.readiness.register("source");
    ctx.readiness.register("target");
    let scanner = Arc::new(Scanner::new(config.clone())?);
    let first = {
        let scanner = scanner.clone();
        tokio::task::spawn_blocking(move || scanner.scan()).await?
    };
    let first = match first {
        Ok(scan) => scan,
        Err(ScanError::Source(e)) => {
            return Err(e.context(format!(
                "reading the source cluster {}",
                config.source.bootstrap
            )))
        }
        Err(ScanError::Target(e)) => {
            return Err(e.context(format!(
                "reading the target cluster {}",
                config.target.bootstrap
            )))
        }
    };
    ctx.readiness.ready("source");
    ctx.readiness.ready("target");
    if !first.missing.is_empty() {
        anyhow::bail!(
            "{}",
            missing_message(&first.missing, &config.target.bootstrap)
        );
    }
    let shards = first.topology.shards;
    tracing::info!(
        shards,
        topics = first.topology.topics.len(),
        "mirroring {:?}",
        first.topology.topics.keys().collect::<Vec<_>>()
    );
    let (topology_tx, topology) = watch::channel(Arc::new(first.topology));
    let shared = Arc::new(Shared {
        config: config.clone(),
        topology,
        ready: ShardsReady::new(ctx.readiness.clone()),
    });

    let stop = ctx.shutdown.child_token();
    let member = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || membership::run(shared, stop))
    };
    tokio::pin!(member);
    let mut tick = tokio::time::interval(config.refresh_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let missing_gauge = ::metrics::gauge!(names::TARGET_TOPICS_MISSING);
    let mut last_missing: (Vec<String>, Option<Instant>) = (Vec::new(), None);
    let mut member_done = false;
    let mut reloads = ctx.clone();
    let mut reloading = true;
    let result = loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break Ok(()),
            new = reloads.next_reload::<MirrorConfig>(), if reloading => match new {
                // Scans at once, so newly selected topics need not wait for the tick.
                Some(new) => reload(&scanner, &config, &new),
                None => {
                    reloading = false;
                    continue;
                }
            },
            joined = &mut member => {
                member_done = true;
                break joined.map_err(anyhow::Error::from).and_then(|r| r).and_then(|()| {
                    anyhow::bail!("the shard assignment member stopped unexpectedly")
                });
            }
            _ = tick.tick() => {}
        }
        let scan = {
            let scanner = scanner.clone();
            tokio::task::spawn_blocking(move || scanner.scan()).await?
        };
        let scan = match scan {
            Ok(scan) => {
                ctx.readiness.ready("source");
                ctx.readiness.ready("target");
                scan
            }
            Err(ScanError::Source(e)) => {
                ctx.readiness.not_ready("source", format!("{e:#}"));
                continue;
            }
            Err(ScanError::Target(e)) => {
                ctx.readiness.ready("source");
                ctx.readiness.not_ready("target", format!("{e:#}"));
                continue;
            }
        };
        if scan.topology.shards != shards {
            break Err(anyhow::anyhow!(
                "the state topic {} now has {} partitions instead of {shards}: the shard count changed while running; stop every instance, then start them again",
                config.state_topic(),
                scan.topology.shards
            ));
        }
        missing_gauge.set(scan.missing.len() as f64);
        let names: Vec<String> = scan.missing.iter().map(ToString::to_string).collect();
        if !names.is_empty()
            && (names != last_missing.0
                || last_missing
                    .1
                    .is_none_or(|at| at.elapsed() >= MISSING_REPEAT))
        {
            tracing::error!(
                "{}; their records wait until then",
                missing_message(&scan.missing, &config.target.bootstrap)
            );
            last_missing = (names, Some(Instant::now()));
        } else if names.is_empty() {
            last_missing = (names, None);
        }
        topology_tx.send_if_modified(|current| {
            let changed = **current != scan.topology;
            if changed {
                tracing::info!(topics = ?scan.topology.topics.keys().collect::<Vec<_>>(), "topics or partitions changed");
                *current = Arc::new(scan.topology.clone());
            }
            changed
        });
    };
    stop.cancel();
    if !member_done {
        // Shards commit their last transaction and the member leaves the group.
        match member.await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => tracing::error!("stopping the shards: {e:#}"),
        }
    }
    result
}
