//! The CEP worker's timed rules (event time) on a dev cluster, next to a plain decoding consumer
//! of the same clean records, in the same run: a sequence's throughput with shuffled event
//! times, the catch-up of a `from: earliest` replay, the partial-match state per key, and a
//! million unfinished sequences dropped once `within` has passed.
//!
//! Run: `cargo build --release --bins && cargo bench -p logpipe-cep --bench event_time`.
//! Environment: `BENCH_RECORDS` (default 500,000: the sequence round), `BENCH_PLAYERS`
//! (100,000), `BENCH_PARTITIONS` (4), `BENCH_REPLAY_RECORDS` (2,000,000: what `clean.game` holds
//! for the replay, the sequence round's records included), `BENCH_BOUND_KEYS` (1,000,000; 0
//! skips), `BENCH_POLL_MS` (100) and `BENCH_FETCH_WAIT_MS` (10) as in the `throughput`
//! benchmark. With `LOGPIPE_BENCH_JSON` set, the rows are also emitted through
//! `logpipe_devkit::benchreport`.
//!
//! One dev cluster (one broker, in memory) and a `logpipe-schema-store` with the game schemas;
//! records as the `throughput` benchmark writes them, with event times [`STEP_MS`] apart by
//! sequence number, each shuffled forward by up to [`JITTER_MS`] (under the rules' 5 s
//! `max_out_of_order`, so the disorder within a partition never makes an event late), the whole
//! history ending a minute before the run starts:
//! 1. sequence: a rule `login` then `level_up` of the same `player_id`, `ordered: true`,
//!    `within: 1h`, repeat every, stored before `BENCH_RECORDS` records are written to
//!    `clean.game`; the ceiling (read_committed consumer decoding every record as the worker
//!    does, first to last record) and then a worker of a fresh group, timed from its first to
//!    its last event counted (`logpipe_cep_events_total`);
//! 2. state: once that round has settled, `logpipe_cep_state_bytes` / `logpipe_cep_rule_keys_held`
//!    (most keys then hold a partial match: a login without its level_up), the worker's RSS over
//!    that of a worker holding no key, and the changelog's last record per key;
//! 3. replay: `clean.game` is filled up to `BENCH_REPLAY_RECORDS`, the ceiling reads them all,
//!    a worker of a fresh group with a rule that never matches reads them as live records (so
//!    its group stands at the end, as a running worker's does), and then the same sequence rule
//!    is PUT with `from: earliest`. Timed from the PUT's answer until the rule's watermark
//!    (`GET /rules/{name}/status`) reaches the history's last event times minus
//!    `max_out_of_order`: then every replayed event has been counted by the second stage (the
//!    watermark markers follow the events through the repartition topic). The `replay done` log
//!    lines of the first stage are timed too;
//! 4. bound: `BENCH_BOUND_KEYS` distinct keys each start a sequence (`within: 1m`) and never
//!    finish it; then one event per partition on other keys, two minutes later in event time and
//!    satisfying no step, moves the watermark: time until no key is held, and the state bytes.
//!
//! Everything shares two cores with the dev cluster: read the ratios, not the absolute numbers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::{
    batches, ceiling, delete_rules, fetch_wait, first_event, last_event, settle, worker_config,
    worker_with_rule, CLEAN, STALL,
};
use logpipe_cep::CepConfig;
use logpipe_core::metric_names::cep as names;
use logpipe_core::record::cep_state_topic;
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::clean::{event_of, fill, now_ms, Encoder};
use logpipe_devkit::harness::{game_schema_store, scan_topic, DevCluster, Process};
use logpipe_devkit::measure::{env, rss_mib, Rate};
use logpipe_devkit::prometheus;
use rdkafka::Message;

const BOUND: &str = "clean.bound";
const SEQUENCE_RULE: &str = "et-sequence";
const REPLAY_RULE: &str = "et-replay";
const KEEPER_RULE: &str = "et-keeper";
const BOUND_RULE: &str = "et-bound";
/// Event time between consecutive records.
const STEP_MS: i64 = 10;
/// Most a record's event time is moved forward: under `max_out_of_order`.
const JITTER_MS: u64 = 4_000;
const MAX_OUT_OF_ORDER_MS: i64 = 5_000;
/// The worker's default `idle_timeout`: a caught-up silent partition's clock follows the wall
/// clock minus this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the bound round waits for the unfinished sequences to be dropped.
const DROP_TIMEOUT: Duration = Duration::from_secs(180);
const BENCH: &str = "cep-event-time";
const CEILING: &str = "read_committed consumer + Avro decode";

/// Record `seq`'s event time: `STEP_MS` apart, shuffled forward by up to `JITTER_MS`.
fn event_time(base: i64, seq: u64) -> i64 {
    let jitter = (seq.wrapping_mul(0xA24B_AED4_963E_E407) >> 40) % JITTER_MS;
    base + seq as i64 * STEP_MS + jitter as i64
}

fn player(players: u64) -> impl Fn(u64) -> String {
    move |seq| {
        let mix = seq.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 11;
        format!("p-{:06}", mix % players)
    }
}

/// A login, then a level_up of the same player within an hour of event time.
fn sequence_rule(name: &str, from: &str) -> String {
    format!(
        "name: {name}\nsource: {CLEAN}\nkey: player_id\nevent_time: event_time\nordered: true\nwithin: 1h\n\
         max_out_of_order: 5s\nfrom: {from}\nrepeat: every\nevent_list:\n\
         - conditions:\n  - {{field: event, value: login, type: string, operator: equals}}\n\
         - conditions:\n  - {{field: event, value: level_up, type: string, operator: equals}}\n"
    )
}

/// A rule that never matches: it keeps a worker reading `CLEAN` live.
fn keeper_rule() -> String {
    format!(
        "name: {KEEPER_RULE}\nsource: {CLEAN}\nkey: player_id\nevent_list:\n\
         - conditions:\n  - {{field: event, value: never, type: string, operator: equals}}\n"
    )
}

/// Every `k-` player starts a sequence whose second step never comes; `w-` players satisfy
/// no step.
fn bound_rule() -> String {
    format!(
        "name: {BOUND_RULE}\nsource: {BOUND}\nkey: player_id\nevent_time: event_time\nordered: true\nwithin: 1m\n\
         max_out_of_order: 5s\nrepeat: every\nevent_list:\n\
         - conditions:\n  - {{field: player_id, value: k-, type: string, operator: contains}}\n\
         - conditions:\n  - {{field: event, value: quest_done, type: string, operator: equals}}\n"
    )
}

/// A rule document as a one-element rules file.
fn as_list(doc: &str) -> String {
    doc.lines()
        .enumerate()
        .map(|(i, line)| format!("{}{line}\n", if i == 0 { "- " } else { "  " }))
        .collect()
}

fn rule_metric(page: &str, metric: &str, rule: &str) -> f64 {
    prometheus::sum(&prometheus::parse(page), metric, &[("rule", rule)]).unwrap_or(0.0)
}

async fn put_rule(http: &reqwest::Client, telemetry: SocketAddr, doc: &str) -> anyhow::Result<()> {
    let name = doc
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .context("a named rule")?;
    let response = http
        .put(format!("http://{telemetry}/rules/{name}"))
        .header("content-type", "application/yaml")
        .body(doc.to_owned())
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status.is_success(), "PUT /rules/{name}: {status} {body}");
    Ok(())
}

/// The rule's watermark on this worker (epoch ms), from its status.
async fn watermark(
    http: &reqwest::Client,
    telemetry: SocketAddr,
    rule: &str,
) -> anyhow::Result<Option<i64>> {
    let status: serde_json::Value = http
        .get(format!("http://{telemetry}/rules/{rule}/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let Some(text) = status["watermark"].as_str() else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// Polls the rule metric `metric` until `done` holds for its value or `timeout` has passed; its
/// value then.
async fn wait_metric(
    http: &reqwest::Client,
    process: &mut Process,
    telemetry: SocketAddr,
    (metric, rule): (&str, &str),
    timeout: Duration,
    done: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = rule_metric(&prometheus::scrape(http, telemetry).await, metric, rule);
        if done(value) || Instant::now() >= deadline {
            return Ok(value);
        }
        process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The changelog's last record per key of `rule`: (keys with state, mean bytes of key + value).
fn changelog_per_key(bootstrap: &str, group: &str, rule: &str) -> anyhow::Result<(usize, f64)> {
    let marker = format!("\u{1f}{rule}\u{1f}");
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    scan_topic(
        bootstrap,
        &cep_state_topic(group),
        Duration::from_secs(300),
        |m| {
            let key = m.key().unwrap_or_default();
            if String::from_utf8_lossy(key).contains(&marker) {
                match m.payload() {
                    Some(value) => last.insert(key.to_vec(), key.len() + value.len()),
                    None => last.remove(key),
                };
            }
            Ok(())
        },
    )?;
    let bytes: usize = last.values().sum();
    Ok((last.len(), bytes as f64 / last.len().max(1) as f64))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let records: u64 = env("BENCH_RECORDS", 500_000);
    let players: u64 = env("BENCH_PLAYERS", 100_000);
    let partitions: i32 = env("BENCH_PARTITIONS", 4);
    let replay_records: u64 = env("BENCH_REPLAY_RECORDS", 2_000_000).max(records);
    let bound_keys: u64 = env("BENCH_BOUND_KEYS", 1_000_000);

    let dir = tempfile::tempdir()?;
    // Each partition keeps everything written to it in this run, with room to spare.
    let retention = replay_records.max(bound_keys) * 400 / partitions as u64 + 64 * 1024 * 1024;
    let mut cluster = DevCluster::start_retaining(
        "read",
        1,
        &[(CLEAN, partitions), (BOUND, partitions)],
        Some(retention),
    )
    .await?;
    let bootstrap = cluster.bootstrap().to_owned();
    let cluster_rss =
        |cluster: &mut DevCluster| cluster.process().map_or(0.0, |p| rss_mib(p.pid()));
    let (mut store, store_url, ids) = game_schema_store(dir.path()).await?;
    let encoder = Encoder::new(&ids)?;
    let schemas = encoder.by_id();
    let http = reqwest::Client::new();
    let base = now_ms() - replay_records as i64 * STEP_MS - 60_000;
    let hits = |seqs: std::ops::Range<u64>| {
        seqs.filter(|s| matches!(event_of(*s), "login" | "level_up"))
            .count()
    };

    // 1. The sequence: stored first (a version counts only records not older than itself).
    let (_, mut loader) = worker_with_rule(
        dir.path(),
        &store_url,
        &bootstrap,
        "bench-et-rules",
        &as_list(&sequence_rule(SEQUENCE_RULE, "latest")),
    )
    .await?;
    loader.terminate(Duration::from_secs(30)).await?;
    let filled = Instant::now();
    let (b, e) = (bootstrap.clone(), encoder.clone());
    let bytes_per_record = tokio::task::spawn_blocking(move || {
        fill(
            &b,
            &e,
            CLEAN,
            0..records,
            partitions,
            player(players),
            |s| event_time(base, s),
        )
    })
    .await??;
    let fill_s = filled.elapsed().as_secs_f64();
    let group = "bench-et-sequence";
    let config = worker_config(dir.path(), &store_url, &bootstrap, group, None, None)?;
    let cep: CepConfig = logpipe_core::service::load_config(&config.path)?;
    let s = schemas.clone();
    let sequence_ceiling = tokio::task::spawn_blocking(move || {
        ceiling(&cep, "bench-et-sequence.ceiling", records as usize, &s)
    })
    .await??;
    let mut process = common::start(&config)?;
    process
        .wait_ready(config.telemetry, Duration::from_secs(120))
        .await?;
    let (started, before) = first_event(&http, &mut process, config.telemetry, CLEAN).await?;
    let cpu_before = logpipe_devkit::measure::cpu_seconds(Some(process.pid()));
    let batch_before = batches(&prometheus::scrape(&http, config.telemetry).await);
    let batch_after = batches(
        &last_event(
            &http,
            &mut process,
            config.telemetry,
            CLEAN,
            records as usize,
        )
        .await?,
    );
    let elapsed = started.elapsed();
    let cpu_s = logpipe_devkit::measure::cpu_seconds(Some(process.pid())) - cpu_before;
    let moved = records as usize - before.min(records as usize);
    let timed = Rate {
        records: moved,
        bytes: (moved as f64 * bytes_per_record) as usize,
        elapsed,
    };
    // Read before `IDLE_TIMEOUT` passes: the silent partitions' clocks then follow the wall
    // clock, an hour past these events, and drop every partial match.
    let page = settle(&http, config.telemetry, names::RULE_KEYS_HELD).await;
    let keys = rule_metric(&page, names::RULE_KEYS_HELD, SEQUENCE_RULE);
    let held = rule_metric(&page, names::RULE_EVENTS_HELD, SEQUENCE_RULE);
    let state_bytes = prometheus::total(&page, names::STATE_BYTES);
    let matches = rule_metric(&page, names::RULE_MATCHES_EMITTED, SEQUENCE_RULE);
    let late = rule_metric(&page, names::RULE_EVENTS_LATE, SEQUENCE_RULE);
    let rss = rss_mib(process.pid());
    let (b, g) = (bootstrap.clone(), group.to_owned());
    let (changelog_keys, changelog_per) =
        tokio::task::spawn_blocking(move || changelog_per_key(&b, &g, SEQUENCE_RULE)).await??;
    delete_rules(
        &http,
        config.telemetry,
        [SEQUENCE_RULE.to_owned()].into_iter(),
    )
    .await?;
    process.terminate(Duration::from_secs(30)).await?;
    let ratio = timed.records_per_s() / sequence_ceiling.records_per_s();
    let sequence_batches = batch_after[0] - batch_before[0];
    let sequence_batch_ms = (batch_after[1] - batch_before[1]) / sequence_batches.max(1.0) * 1e3;
    println!(
        "# logpipe-cep timed rules vs a read_committed consumer decoding the same records\n\n\
         {records} game records of {bytes_per_record:.0} B on average, {players} players, {partitions} partitions, \
         one dev broker, workers' fetch.wait.max.ms {}; event times {STEP_MS} ms apart, shuffled forward by up to \
         {JITTER_MS} ms; filled in {fill_s:.1} s\n",
        fetch_wait().map_or("librdkafka's default".into(), |ms| format!("{ms} ms")),
    );
    println!("| case | ceiling: consume + decode | logpipe-cep | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| 2-step sequence, {} hits of {records} records | {} | {} | **{ratio:.2}x** | >= 0.5x: {} |",
        hits(0..records),
        sequence_ceiling.summary(),
        timed.summary(),
        if ratio >= 0.5 { "met" } else { "**not met**" }
    );
    Row::new(
        BENCH,
        "2-step sequence, shuffled event time",
        "logpipe-cep",
        timed.records_per_s(),
        "rec/s",
    )
    .against(CEILING, sequence_ceiling.records_per_s())
    .target(0.5)
    .extra("worker_cpu_share", cpu_s / elapsed.as_secs_f64())
    .extra("matches", matches)
    .extra("late", late)
    .emit()?;

    // 2. The replay: the rest of the history, a worker standing at its end, then the rule.
    let filled = Instant::now();
    let (b, e) = (bootstrap.clone(), encoder.clone());
    tokio::task::spawn_blocking(move || {
        fill(
            &b,
            &e,
            CLEAN,
            records..replay_records,
            partitions,
            player(players),
            |s| event_time(base, s),
        )
    })
    .await??;
    let replay_fill_s = filled.elapsed().as_secs_f64();
    let cluster_after_fill = cluster_rss(&mut cluster);
    let ceiling_config = worker_config(
        dir.path(),
        &store_url,
        &bootstrap,
        "bench-et-replay-ceiling",
        None,
        None,
    )?;
    let cep: CepConfig = logpipe_core::service::load_config(&ceiling_config.path)?;
    let s = schemas.clone();
    let replay_ceiling = tokio::task::spawn_blocking(move || {
        ceiling(&cep, "bench-et-replay.ceiling", replay_records as usize, &s)
    })
    .await??;
    let (config, mut process) = worker_with_rule(
        dir.path(),
        &store_url,
        &bootstrap,
        "bench-et-replay",
        &as_list(&keeper_rule()),
    )
    .await?;
    last_event(
        &http,
        &mut process,
        config.telemetry,
        CLEAN,
        replay_records as usize,
    )
    .await?;
    // The replayed partitions follow the live clock once done; a caught-up live partition has
    // one only after `IDLE_TIMEOUT` of silence. Waiting it out here keeps it out of the timing.
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(2)).await;
    let rss_no_keys = rss_mib(process.pid());
    // Every replayed event has been counted once the watermark reaches the slowest partition's
    // last event time minus max_out_of_order.
    let mut last_times = vec![i64::MIN; partitions as usize];
    for seq in 0..replay_records {
        let p = (seq % partitions as u64) as usize;
        last_times[p] = last_times[p].max(event_time(base, seq));
    }
    let end_watermark =
        last_times.iter().copied().min().context("no partition")? - MAX_OUT_OF_ORDER_MS;
    let put = Instant::now();
    put_rule(
        &http,
        config.telemetry,
        &sequence_rule(REPLAY_RULE, "earliest"),
    )
    .await?;
    let started = Instant::now();
    let put_s = started.duration_since(put).as_secs_f64();
    let cpu_before = logpipe_devkit::measure::cpu_seconds(Some(process.pid()));
    let batch_before = batches(&prometheus::scrape(&http, config.telemetry).await);
    let stall = Instant::now() + STALL;
    let mut read_s = None;
    let replayed = loop {
        if read_s.is_none() && process.logs().matches("replay done").count() >= partitions as usize
        {
            read_s = Some(started.elapsed().as_secs_f64());
        }
        if watermark(&http, config.telemetry, REPLAY_RULE)
            .await?
            .is_some_and(|w| w >= end_watermark)
        {
            break started.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < stall,
            "the replay stalled\n{}",
            process.logs()
        );
        process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replay_cpu_s = logpipe_devkit::measure::cpu_seconds(Some(process.pid())) - cpu_before;
    let page = prometheus::scrape(&http, config.telemetry).await;
    let batch_after = batches(&page);
    let replay_batches = batch_after[0] - batch_before[0];
    let replay_batch_ms = (batch_after[1] - batch_before[1]) / replay_batches.max(1.0) * 1e3;
    let replay_matches = rule_metric(&page, names::RULE_MATCHES_EMITTED, REPLAY_RULE);
    let replay_late = rule_metric(&page, names::RULE_EVENTS_LATE, REPLAY_RULE);
    let replay_rss = rss_mib(process.pid());
    delete_rules(
        &http,
        config.telemetry,
        [REPLAY_RULE.to_owned(), KEEPER_RULE.to_owned()].into_iter(),
    )
    .await?;
    process.terminate(Duration::from_secs(30)).await?;
    let replay_rate = Rate {
        records: replay_records as usize,
        bytes: (replay_records as f64 * bytes_per_record) as usize,
        elapsed: replayed,
    };
    let replay_ratio = replay_rate.records_per_s() / replay_ceiling.records_per_s();
    println!(
        "| replay `from: earliest` of {replay_records} records ({} hits), PUT to every event counted | {} | {} | **{replay_ratio:.2}x** | none (at the ceiling's speed) |",
        hits(0..replay_records),
        replay_ceiling.summary(),
        replay_rate.summary(),
    );
    Row::new(
        BENCH,
        "replay from: earliest",
        "logpipe-cep",
        replay_rate.records_per_s(),
        "rec/s",
    )
    .against(CEILING, replay_ceiling.records_per_s())
    .extra("records", replay_records)
    .extra("first_stage_done_s", read_s.unwrap_or(f64::NAN))
    .extra("worker_cpu_share", replay_cpu_s / replayed.as_secs_f64())
    .extra("matches", replay_matches)
    .emit()?;

    // State per key, from the sequence round.
    let per_key = state_bytes / keys.max(1.0);
    let rss_per_key = (rss - rss_no_keys) * 1024.0 * 1024.0 / keys.max(1.0);
    println!(
        "\nsequence round: {matches:.0} matches, {late:.0} late events, worker CPU {:.0}% of the span, \
         {sequence_batches:.0} batches of {sequence_batch_ms:.0} ms on average; \
         settled: {keys:.0} keys held ({held:.0} partial matches and events waiting for the watermark), \
         **{per_key:.0} B of state per key** ({state_bytes:.0} B); RSS {rss:.0} MiB against {rss_no_keys:.0} MiB \
         for a worker holding no key: {rss_per_key:.0} B per key; changelog: {changelog_keys} keys, \
         {changelog_per:.0} B per key (key + last value)",
        cpu_s / elapsed.as_secs_f64() * 100.0
    );
    Row::new(
        BENCH,
        "partial match state per key",
        "logpipe_cep_state_bytes / keys held",
        per_key,
        "B",
    )
    .extra("keys", keys)
    .extra("rss_bytes_per_key", rss_per_key)
    .extra("changelog_bytes_per_key", changelog_per)
    .emit()?;
    println!(
        "\nreplay: {replay_records} records filled in {:.1} s ({replay_fill_s:.1} s for the last {}); dev broker RSS \
         {cluster_after_fill:.0} MiB; PUT answered in {put_s:.2} s; first stage done with every partition (`replay done`) \
         at {}; watermark at the history's end at **{:.1} s**: {:.0} rec/s, {replay_matches:.0} matches, \
         {replay_late:.0} late; worker CPU {:.0}% of the span, RSS {replay_rss:.0} MiB; \
         {replay_batches:.0} batches of {replay_batch_ms:.0} ms on average",
        fill_s + replay_fill_s,
        replay_records - records,
        read_s.map_or("?".to_owned(), |s| format!("{s:.1} s")),
        replayed.as_secs_f64(),
        replay_rate.records_per_s(),
        replay_cpu_s / replayed.as_secs_f64() * 100.0
    );

    // 4. A million sequences that never finish.
    if bound_keys > 0 {
        let group = "bench-et-bound";
        let (config, mut process) = worker_with_rule(
            dir.path(),
            &store_url,
            &bootstrap,
            group,
            &as_list(&bound_rule()),
        )
        .await?;
        // An hour ahead of the wall clock, so that only these events move the watermark (an idle
        // partition's clock follows the wall clock, which stays behind them).
        let bound_base = now_ms() + 3_600_000;
        let spread_ms = 50_000;
        let filled = Instant::now();
        let (b, e) = (bootstrap.clone(), encoder.clone());
        tokio::task::spawn_blocking(move || {
            fill(
                &b,
                &e,
                BOUND,
                0..bound_keys,
                partitions,
                |s| format!("k-{s:07}"),
                |s| bound_base + (s * spread_ms / bound_keys) as i64,
            )
        })
        .await??;
        let bound_fill_s = filled.elapsed().as_secs_f64();
        let target = bound_keys as f64;
        let held = wait_metric(
            &http,
            &mut process,
            config.telemetry,
            (names::RULE_KEYS_HELD, BOUND_RULE),
            STALL,
            |held| held >= target,
        )
        .await?;
        anyhow::ensure!(
            held >= target,
            "{held} keys held of {bound_keys}\n{}",
            process.logs()
        );
        let count_s = filled.elapsed().as_secs_f64();
        let page = prometheus::scrape(&http, config.telemetry).await;
        let bytes_before = prometheus::total(&page, names::STATE_BYTES);
        let rss_before = rss_mib(process.pid());
        // Two minutes past the last start in event time: one event per partition, no step.
        let ticked = Instant::now();
        let (b, e) = (bootstrap.clone(), encoder.clone());
        tokio::task::spawn_blocking(move || {
            fill(
                &b,
                &e,
                BOUND,
                bound_keys..bound_keys + partitions as u64,
                partitions,
                |s| format!("w-{s}"),
                |_| bound_base + spread_ms as i64 + 120_000,
            )
        })
        .await??;
        let remaining = wait_metric(
            &http,
            &mut process,
            config.telemetry,
            (names::RULE_KEYS_HELD, BOUND_RULE),
            DROP_TIMEOUT,
            |held| held == 0.0,
        )
        .await?;
        let dropped_s = ticked.elapsed().as_secs_f64();
        let page = prometheus::scrape(&http, config.telemetry).await;
        let bytes_after = prometheus::total(&page, names::STATE_BYTES);
        let bound_late = rule_metric(&page, names::RULE_EVENTS_LATE, BOUND_RULE);
        let rss_after = rss_mib(process.pid());
        delete_rules(&http, config.telemetry, [BOUND_RULE.to_owned()].into_iter()).await?;
        process.terminate(Duration::from_secs(60)).await?;
        println!(
            "\nbound: {bound_keys} keys each start a sequence (within 1m) and never finish it: filled in {bound_fill_s:.1} s, \
             all held after {count_s:.1} s ({bytes_before:.0} B of state, {:.0} B per key, RSS {rss_before:.0} MiB); \
             events 2 min later in event time on other keys: **{remaining:.0} keys held after {dropped_s:.1} s**, \
             state {bytes_after:.0} B, RSS {rss_after:.0} MiB, {bound_late:.0} late; dev broker RSS {:.0} MiB",
            bytes_before / target,
            cluster_rss(&mut cluster)
        );
        Row::new(
            BENCH,
            "1 M unfinished sequences, within passed",
            "keys held",
            remaining,
            "keys",
        )
        .target_at_most(0.0)
        .extra("drop_s", dropped_s)
        .extra("state_bytes_after", bytes_after)
        .extra("state_bytes_before", bytes_before)
        .emit()?;
    }
    store.terminate(Duration::from_secs(20)).await?;
    Ok(())
}
