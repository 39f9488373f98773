//! The validator end to end on a dev cluster, next to the mirror copying the same records
//! exactly once, in the same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p logpipe-validator --bench end_to_end`.
//! Environment: `BENCH_RECORDS` (default 200,000), `BENCH_PARTITIONS` (default 4),
//! `BENCH_ROUNDS` (default 2: reference, validator, reference, validator, ...). With
//! `LOGPIPE_BENCH_JSON` set, the rows are also emitted through `logpipe_devkit::benchreport`.
//!
//! One dev cluster (one broker) holds `raw.game`, pre-filled with ~500 B game records from the
//! load generator (5% invalid, as in the tests), with the agent's key and `lp.*` headers,
//! one generated file per partition. Then, reading the same records:
//! 1. reference: `logpipe-mirror` (release build, a process, defaults) copying `raw.game` to
//!    `copy<round>.raw.game` on the same cluster: a read_committed consumer and a transactional
//!    producer committing records and positions together, the same exactly-once work as the
//!    validator's without decoding, checking or encoding anything. The mirror is the ceiling
//!    of an exactly-once hop on this cluster and machine (it copies 0.7x and more of a plain
//!    consumer and producer in its own benchmark);
//! 2. `logpipe-validator` (release build, a process, defaults) with the game route, writing
//!    `clean.game` / `dlq.game`, schemas from a `logpipe-schema-store` process.
//!
//! Each round reads the whole raw topic again (a new mirror name, new validator groups and a new
//! resend-state topic). Both are timed through their metrics, polled every 10 ms, from their
//! first record to their last (start-up, group join and schema fetches are not counted, nor
//! the records of the first poll). The validator's timing counters
//! (`logpipe_validator_{gather,check,commit}_seconds`) are printed as the share of its time each
//! part of a batch took. The ratio reported is of each side's best round, which is the least
//! disturbed by other load; every round is printed. Everything shares two cores with the dev
//! cluster (and, on a loaded machine, with other work): read the ratio, not the absolute numbers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::metric_names::mirror as mirror_names;
use logpipe_core::metric_names::validator as names;
use logpipe_core::record::{header, FileId, RecordId};
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::harness::{free_addr, game_schema_store, write_file, DevCluster, Process};
use logpipe_devkit::loadgen::{self, LoadgenArgs};
use logpipe_devkit::measure::{env, filling_producer, send_polling, Rate};
use logpipe_devkit::prometheus;
use logpipe_validator::ValidatorConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

const RAW: &str = "raw.game";
const CLEAN: &str = "clean.game";
const DLQ: &str = "dlq.game";

/// The generated lines, one file per partition: (partition, host|path key, record id, line).
struct Input {
    records: Vec<(i32, String, RecordId, Vec<u8>)>,
    bytes: usize,
}

fn generate(dir: &Path, records: u64, partitions: i32) -> anyhow::Result<Input> {
    let mut args = LoadgenArgs::new(dir);
    args.files = partitions as usize;
    args.lines = records;
    args.line_size = "500".parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    args.invalid = 0.05;
    let report = loadgen::run(&args, &std::sync::atomic::AtomicBool::new(false))?;
    let mut input = Input {
        records: Vec::new(),
        bytes: 0,
    };
    for (i, file) in report.files.iter().enumerate() {
        let text = std::fs::read(&file.path)?;
        let path = file.path.display().to_string();
        let mut offset = 0u64;
        for line in text.split_inclusive(|b| *b == b'\n') {
            let value = line.strip_suffix(b"\n").unwrap_or(line);
            if !value.is_empty() {
                let id = RecordId {
                    host: "bench-host".into(),
                    file: FileId(i as u64 + 1),
                    offset,
                };
                input.bytes += value.len();
                input.records.push((
                    i as i32 % partitions,
                    format!("bench-host|{path}"),
                    id,
                    value.to_vec(),
                ));
            }
            offset += line.len() as u64;
        }
    }
    Ok(input)
}

/// Fills `raw.game` as the agent would: key, `lp.*` headers, one file per partition.
fn fill(bootstrap: &str, input: &Input) -> anyhow::Result<()> {
    let producer = filling_producer(bootstrap)?;
    for (partition, key, id, value) in &input.records {
        let path = key.split_once('|').map_or("", |(_, p)| p);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: header::PATH,
            value: Some(path.as_bytes()),
        });
        for (name, v) in id.headers() {
            headers = headers.insert(Header {
                key: name,
                value: Some(v.as_bytes()),
            });
        }
        send_polling(
            &producer,
            BaseRecord::<[u8], [u8]>::to(RAW)
                .partition(*partition)
                .key(key.as_bytes())
                .payload(value)
                .headers(headers),
        )?;
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
}

/// The reference: `logpipe-mirror` (release build, a process, defaults) copying the same raw
/// records within the cluster (renamed to `copy<round>.raw.game`): a read_committed consumer
/// and a transactional producer, exactly once, with nothing to decode, check or encode. Timed
/// like the validator, from its first copied record to its last, through its metrics.
async fn mirror(
    dir: &Path,
    round: usize,
    bootstrap: &str,
    records: usize,
    bytes_per_record: f64,
) -> anyhow::Result<Rate> {
    let telemetry = free_addr();
    let config = write_file(
        dir,
        &format!("mirror-{round}.toml"),
        &format!(
            "name = \"bench{round}\"\n\
             [source]\nbootstrap = \"{bootstrap}\"\n[target]\nbootstrap = \"{bootstrap}\"\n\
             [topics]\ninclude = [\"raw\\\\.game\"]\nrename = \"copy{round}.{{topic}}\"\n\
             [telemetry]\nlisten = \"{telemetry}\"\n"
        ),
    )?;
    let mut process = start("logpipe-mirror", &config, telemetry).await?;
    let timed = timed(&mut process, telemetry, records, bytes_per_record, |page| {
        prometheus::total(page, mirror_names::RECORDS) as usize
    })
    .await?;
    process.terminate(Duration::from_secs(30)).await?;
    Ok(timed.0)
}

/// Starts a service (release build) with `config` and waits until it is ready.
async fn start(binary: &str, config: &Path, telemetry: SocketAddr) -> anyhow::Result<Process> {
    let mut process = Process::start(binary, &["run", "--config", config.to_str().unwrap()])?;
    process
        .wait_ready(telemetry, Duration::from_secs(60))
        .await?;
    Ok(process)
}

/// Scrapes a service's metrics every 10 ms: from the first record `done` counts to the last of
/// `records`; returns the rate and the first and last metrics pages.
async fn timed(
    process: &mut Process,
    telemetry: SocketAddr,
    records: usize,
    bytes_per_record: f64,
    done: impl Fn(&str) -> usize,
) -> anyhow::Result<(Rate, String, String)> {
    let http = reqwest::Client::new();
    let (started, before, first) = loop {
        let text = prometheus::scrape(&http, telemetry).await;
        let n = done(&text);
        if n > 0 {
            break (Instant::now(), n, text);
        }
        anyhow::ensure!(
            process.try_status().is_none(),
            "the service exited:\n{}",
            process.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stall = Instant::now() + Duration::from_secs(600);
    let last = loop {
        let text = prometheus::scrape(&http, telemetry).await;
        if done(&text) >= records {
            break text;
        }
        anyhow::ensure!(
            Instant::now() < stall,
            "stalled at {} of {records}",
            done(&text)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed();
    let moved = records - before.min(records);
    let rate = Rate {
        records: moved,
        bytes: (moved as f64 * bytes_per_record) as usize,
        elapsed,
    };
    Ok((rate, first, last))
}

fn processed(page: &str) -> usize {
    (prometheus::total(page, names::RECORDS_VALID)
        + prometheus::total(page, names::RECORDS_INVALID)
        + prometheus::total(page, names::RESENDS_DROPPED)) as usize
}

/// What the validator run measured.
struct Validated {
    timed: Rate,
    /// Share of the checking loops' time spent gathering, checking and committing batches.
    shares: [f64; 3],
    batches: f64,
}

async fn validator(
    config: &Path,
    telemetry: SocketAddr,
    records: usize,
    bytes_per_record: f64,
) -> anyhow::Result<Validated> {
    let mut process = start("logpipe-validator", config, telemetry).await?;
    let parts = [names::GATHER, names::CHECK, names::COMMIT].map(|p| format!("{p}_sum"));
    let (timed, first, text) = timed(
        &mut process,
        telemetry,
        records,
        bytes_per_record,
        processed,
    )
    .await?;
    let batches = prometheus::total(&text, &format!("{}_count", names::BATCH));
    // Of the loops' time together (each checking loop counts its own).
    let spent = parts.map(|p| prometheus::total(&text, &p) - prometheus::total(&first, &p));
    let all: f64 = spent.iter().sum();
    let shares = spent.map(|s| if all > 0.0 { s / all } else { 0.0 });
    process.terminate(Duration::from_secs(30)).await?;
    Ok(Validated {
        timed,
        shares,
        batches,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let records: usize = env("BENCH_RECORDS", 200_000);
    let partitions: i32 = env("BENCH_PARTITIONS", 4);
    let rounds: usize = env("BENCH_ROUNDS", 2).max(1);
    let dir = tempfile::tempdir()?;
    let input = generate(dir.path(), records as u64, partitions)?;
    let records = input.records.len();
    let input_bytes = input.bytes;
    let bytes_per_record = input_bytes as f64 / records as f64;
    // Each partition keeps what every round writes to it (uncompressed), with room to spare.
    let retention = ((rounds + 1) * input_bytes / partitions as usize + 16 * 1024 * 1024) as u64;
    let groups: Vec<String> = (1..=rounds).map(|r| format!("bench{r}")).collect();
    let states: Vec<String> = groups
        .iter()
        .map(|g| logpipe_core::record::resend_state_topic(g))
        .collect();
    let mut topics = vec![(RAW, partitions), (CLEAN, partitions), (DLQ, partitions)];
    topics.extend(states.iter().map(|s| (s.as_str(), 1)));
    let cluster = DevCluster::start_retaining("read", 1, &topics, Some(retention)).await?;
    let bootstrap = cluster.bootstrap().to_owned();
    let (mut store, store_url, _) = game_schema_store(dir.path()).await?;

    let filled = Instant::now();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || fill(&b, &input)).await??;
    println!(
        "# logpipe-validator end to end vs logpipe-mirror copying the same records\n\n\
         {records} game records of {bytes_per_record:.0} B on average (5% invalid), {partitions} partitions, one dev broker; \
         raw topic filled in {:.1} s; {rounds} rounds\n",
        filled.elapsed().as_secs_f64()
    );
    println!("| round | logpipe-mirror (reference), first to last record | logpipe-validator, first to last record | ratio | validator time: gather / check / commit |");
    println!("|---|---|---|---|---|");
    let cell = Rate::summary;
    let mut best: Option<(Rate, Validated)> = None;
    let mut batch_bounds = (0, 0);
    for (round, group) in groups.iter().enumerate() {
        let telemetry = free_addr();
        let config_text = format!(
            "schema_store = \"{store_url}\"\ngroup_id = \"{group}\"\ntransactional_id = \"{group}-1\"\n\
             [kafka]\nbootstrap = \"{bootstrap}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
             [[routes]]\ntopics = \"raw\\\\.game\"\nsubject = {{ field = \"event\", prefix = \"game.\" }}\n"
        );
        let config_path = write_file(dir.path(), &format!("validator-{group}.toml"), &config_text)?;
        let config: ValidatorConfig = logpipe_core::service::load_config(&config_path)?;
        batch_bounds = (config.batch_records, config.batch_ms);
        let reference =
            mirror(dir.path(), round + 1, &bootstrap, records, bytes_per_record).await?;
        let validated = validator(&config_path, telemetry, records, bytes_per_record).await?;
        let [gather, check, commit] = validated.shares.map(|s| s * 100.0);
        println!(
            "| {} | {} | {} | {:.2}x | {gather:.0}% / {check:.0}% / {commit:.0}% ({:.0} batches) |",
            round + 1,
            cell(&reference),
            cell(&validated.timed),
            validated.timed.records_per_s() / reference.records_per_s(),
            validated.batches
        );
        best = Some(match best {
            None => (reference, validated),
            Some((r, v)) => (
                if reference.records_per_s() > r.records_per_s() {
                    reference
                } else {
                    r
                },
                if validated.timed.records_per_s() > v.timed.records_per_s() {
                    validated
                } else {
                    v
                },
            ),
        });
    }
    store.terminate(Duration::from_secs(20)).await?;
    let (reference, validated) = best.context("no round ran")?;
    let ratio = validated.timed.records_per_s() / reference.records_per_s();
    println!(
        "\nbest rounds: mirror {:.0} rec/s ({:.1} MB/s), validator {:.0} rec/s ({:.1} MB/s): **{ratio:.2}x** (target >= 0.6x); \
         validator batch_records = {}, batch_ms = {}",
        reference.records_per_s(),
        reference.mb_per_s(),
        validated.timed.records_per_s(),
        validated.timed.mb_per_s(),
        batch_bounds.0,
        batch_bounds.1
    );
    Row::new(
        "validator",
        "end to end, ~500 B game records, exactly once",
        "logpipe-validator",
        validated.timed.records_per_s(),
        "rec/s",
    )
    .against(
        "logpipe-mirror copying the same records, exactly once",
        reference.records_per_s(),
    )
    .target(0.6)
    .extra("mb_per_s", validated.timed.mb_per_s())
    .extra("reference_mb_per_s", reference.mb_per_s())
    .emit()?;
    Ok(())
}
