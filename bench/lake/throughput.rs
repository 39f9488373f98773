//! The lake loader on a dev cluster next to a plain decoding consumer of the same clean records,
//! in the same run: rows per second into a local Delta table, the loader's peak memory at the
//! default flush size, and the size of the files it writes against the configured target.
//!
//! Run: `cargo build --release --bins && cargo bench -p logpipe-lake --bench throughput`.
//! Environment: `BENCH_RECORDS` (default 2,000,000), `BENCH_RECORD_BYTES` (500: game records
//! padded as the load generator pads its lines), `BENCH_PARTITIONS` (4), `BENCH_FILE_MIB` (16:
//! the `flush_bytes` of the file-size round). With
//! `LOGPIPE_BENCH_JSON` set, the rows are also emitted through `logpipe_devkit::benchreport`.
//!
//! One dev cluster (one broker, in memory) and a `logpipe-schema-store` with the game schemas;
//! `clean.game` filled with records as the validator writes them (`logpipe_devkit::clean`), event
//! times of one day. Then, each reading every record:
//! 1. the ceiling: a read_committed consumer with the loader's consumer settings decoding every
//!    record (wire format, Avro, JSON values), first to last record;
//! 2. the loader with the default table config (flush 128 MiB or 60 s) into a table on local
//!    disk: timed like the ceiling from its first record (`logpipe_lake_records_read_total`
//!    above 0, polled every 10 ms), until it has exited after SIGTERM, sent once it has read
//!    every record, which commits what it holds; its peak RSS (`VmHWM`, polled until it exits)
//!    and CPU. Its time from start to exit is reported beside: it adds the group's join, which
//!    a new group waits out for the broker's `group.initial.rebalance.delay.ms` (3 s on the dev
//!    cluster as on Kafka), before either consumer gets a record;
//! 3. the loader with `flush_bytes = BENCH_FILE_MIB` into a second table: the sizes of the files
//!    committed under steady load against that target, and its peak RSS at its end against at
//!    half its records (memory that grows with commits rises in the second half). Left out: the files of a few rows each
//!    that the commits widening the table close (as each of the five schemas' first record
//!    arrives, every partition's open file is committed), and every partition's last file
//!    (closed at shutdown).
//!
//! Both tables are then read back (the Delta log's `add` actions) and must hold every record.
//!
//! Everything shares two cores with the dev cluster: read the ratios, not the absolute numbers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deltalake::kernel::LogicalFileView;
use futures::TryStreamExt as _;
use logpipe_core::kafka::Role;
use logpipe_core::metric_names::lake as names;
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::clean::{decoding_ceiling, fill, now_ms, Encoder};
use logpipe_devkit::harness::{free_addr, game_schema_store, write_file, DevCluster, Process};
use logpipe_devkit::measure::{cpu_seconds, env, peak_rss_mib, Rate};
use logpipe_devkit::prometheus;
use logpipe_lake::LakeConfig;

const CLEAN: &str = "clean.game";
const BENCH: &str = "lake";
const CEILING: &str = "read_committed consumer + Avro decode";
const STALL: Duration = Duration::from_secs(900);
/// More rows than a file closed by a widening commit holds: those commits come within the first
/// records of each schema.
const WIDENING_ROWS: usize = 1_000;
/// The peak RSS target at the default flush size.
const RSS_MIB: f64 = 512.0;
/// How much the peak RSS of the round with small files (the most commits) may rise in its second
/// half: what each commit left behind would show here.
const COMMIT_GROWTH: f64 = 1.2;

/// A loader config of the table `name` in `dir`, its own group.
fn loader_config(
    dir: &Path,
    store: &str,
    bootstrap: &str,
    name: &str,
    flush_bytes: Option<u64>,
) -> anyhow::Result<(PathBuf, SocketAddr, PathBuf)> {
    let telemetry = free_addr();
    let table = dir.join(format!("table-{name}"));
    let flush = flush_bytes.map_or(String::new(), |b| format!("flush_bytes = {b}\n"));
    let text = format!(
        "schema_store = \"{store}\"\ngroup = \"bench\"\ninstance = \"bench\"\n\
         [kafka]\nbootstrap = \"{bootstrap}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
         [[tables]]\nname = \"{name}\"\ntopics = [\"{CLEAN}\"]\nuri = \"{}\"\nevent_time = \"event_time\"\n{flush}",
        table.display()
    );
    let path = write_file(dir, &format!("lake-{name}.toml"), &text)?;
    Ok((path, telemetry, table))
}

/// What a loader round measured.
struct Round {
    /// From its first record to its exit.
    rate: Rate,
    /// From its start to its exit.
    span: Duration,
    peak_rss_mib: f64,
    /// The peak RSS once it had read half the records.
    half_rss_mib: f64,
    cpu_s: f64,
    files: Vec<File>,
}

/// One committed Parquet file of the table.
struct File {
    bytes: i64,
    rows: usize,
    partition: i64,
    first_offset: i64,
}

/// Runs a loader until it has read `records` records, stops it with SIGTERM (it commits what it
/// holds) and reads its table's files.
async fn round(
    config: &Path,
    telemetry: SocketAddr,
    table: &Path,
    records: usize,
    bytes_per_record: f64,
) -> anyhow::Result<Round> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut process = Process::start(
        "logpipe-lake",
        &["run", "--config", config.to_str().context("path")?],
    )?;
    let pid = process.pid();
    // VmHWM only grows: its last reading before the process is gone is its peak (the final
    // commit included, but for the last 20 ms).
    let watch = tokio::spawn(async move {
        let mut last = (0.0, 0.0);
        loop {
            let peak = peak_rss_mib(pid);
            if peak == 0.0 {
                return last;
            }
            last = (peak, cpu_seconds(Some(pid)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    process
        .wait_ready(telemetry, Duration::from_secs(120))
        .await?;
    let mut first = None;
    let mut half_rss_mib = None;
    loop {
        let page = prometheus::scrape(&http, telemetry).await;
        let read = prometheus::total(&page, names::RECORDS_READ) as usize;
        if read > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if read >= records / 2 {
            half_rss_mib.get_or_insert_with(|| peak_rss_mib(pid));
        }
        if read >= records {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < STALL,
            "the loader stalled at {read} of {records}\n{}",
            process.logs()
        );
        process.ensure_running()?;
        let poll = if first.is_some() { 50 } else { 10 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
    let first = first.context("no record read")?;
    let status = process.terminate(Duration::from_secs(300)).await?;
    anyhow::ensure!(
        status.success(),
        "the loader exited {status}\n{}",
        process.logs()
    );
    let span = started.elapsed();
    let elapsed = first.elapsed();
    let (peak_rss_mib, cpu_s) = watch.await?;
    let files = files(table).await?;
    let rows: usize = files.iter().map(|f| f.rows).sum();
    anyhow::ensure!(
        rows == records,
        "the table holds {rows} rows for {records} records"
    );
    Ok(Round {
        rate: Rate {
            records,
            bytes: (records as f64 * bytes_per_record) as usize,
            elapsed,
        },
        span,
        peak_rss_mib,
        half_rss_mib: half_rss_mib.context("no peak RSS at half the records")?,
        cpu_s,
        files,
    })
}

/// The table's live files, from its Delta log: size, rows, and the Kafka partition and first
/// offset their statistics give.
async fn files(table: &Path) -> anyhow::Result<Vec<File>> {
    let url = url::Url::from_directory_path(table)
        .map_err(|()| anyhow::anyhow!("{} is not a directory path", table.display()))?;
    let table = deltalake::open_table(url).await?;
    let views: Vec<LogicalFileView> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await?;
    views
        .iter()
        .map(|f| {
            let stats: serde_json::Value =
                serde_json::from_str(&f.stats().context("a file without statistics")?)?;
            let min = |column: &str| stats["minValues"][column].as_i64().unwrap_or(-1);
            Ok(File {
                bytes: f.size(),
                rows: f.num_records().context("a file without a row count")?,
                partition: min("kafka_partition"),
                first_offset: min("kafka_offset"),
            })
        })
        .collect()
}

/// The files committed under steady load: those the widening commits closed (fewer than
/// [`WIDENING_ROWS`] rows) and every Kafka partition's last (committed at shutdown with whatever
/// was left) left out.
fn steady(files: &[File]) -> Vec<&File> {
    let mut by_partition: BTreeMap<i64, Vec<&File>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.rows >= WIDENING_ROWS) {
        by_partition.entry(f.partition).or_default().push(f);
    }
    by_partition
        .into_values()
        .flat_map(|mut files| {
            files.sort_by_key(|f| f.first_offset);
            files.pop();
            files
        })
        .collect()
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let records: usize = env("BENCH_RECORDS", 2_000_000);
    let partitions: i32 = env("BENCH_PARTITIONS", 4);
    let file_mib: u64 = env("BENCH_FILE_MIB", 16);
    let record_bytes: usize = env("BENCH_RECORD_BYTES", 500);

    let dir = tempfile::tempdir()?;
    let retention = (records as u64 * 600 / partitions as u64 + 64 * 1024 * 1024) as u64;
    let cluster =
        DevCluster::start_retaining("read", 1, &[(CLEAN, partitions)], Some(retention)).await?;
    let bootstrap = cluster.bootstrap().to_owned();
    let (mut store, store_url, ids) = game_schema_store(dir.path()).await?;
    let encoder = Encoder::new(&ids)?.padded_to(record_bytes);

    let filled = Instant::now();
    let (b, e) = (bootstrap.clone(), encoder.clone());
    let bytes_per_record = tokio::task::spawn_blocking(move || {
        let time_ms = now_ms();
        fill(
            &b,
            &e,
            CLEAN,
            0..records as u64,
            partitions,
            |seq| format!("p-{:06}", seq.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 44),
            |seq| time_ms - (seq % 1_000) as i64,
        )
    })
    .await??;
    let fill_s = filled.elapsed().as_secs_f64();

    let (default_config, default_telemetry, default_table) =
        loader_config(dir.path(), &store_url, &bootstrap, "default", None)?;
    let lake: LakeConfig = logpipe_core::service::load_config(&default_config)?;
    let consumer = logpipe_lake::consumer_config(
        &lake.kafka,
        &Role::Consumer {
            group_id: "bench.ceiling".into(),
        },
    );
    let schemas: HashMap<u32, apache_avro::Schema> = encoder.by_id();
    let ceiling = tokio::task::spawn_blocking(move || {
        decoding_ceiling(&consumer, CLEAN, records, &schemas, STALL)
    })
    .await??;

    let default = round(
        &default_config,
        default_telemetry,
        &default_table,
        records,
        bytes_per_record,
    )
    .await?;
    let target = file_mib << 20;
    let (sized_config, sized_telemetry, sized_table) =
        loader_config(dir.path(), &store_url, &bootstrap, "sized", Some(target))?;
    let sized = round(
        &sized_config,
        sized_telemetry,
        &sized_table,
        records,
        bytes_per_record,
    )
    .await?;
    store.terminate(Duration::from_secs(20)).await?;

    println!(
        "# logpipe-lake vs a read_committed consumer decoding the same records\n\n\
         {records} game records of {bytes_per_record:.0} B on average (Avro wire format), {partitions} \
         partitions, one dev broker, a local table; topic filled in {fill_s:.1} s\n"
    );
    println!("| round | rows | rate | ratio to the ceiling | start to exit | peak RSS | CPU, first record to exit | files | mean file |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| ceiling: consume + decode, first to last record | {records} | {} | 1.00x | | | | | |",
        ceiling.summary()
    );
    for (name, r) in [
        (
            "logpipe-lake, default config (flush 128 MiB or 60 s), first record to exit",
            &default,
        ),
        (
            &*format!("logpipe-lake, flush_bytes {file_mib} MiB, first record to exit"),
            &sized,
        ),
    ] {
        let bytes: i64 = r.files.iter().map(|f| f.bytes).sum();
        println!(
            "| {name} | {records} | {} | {:.2}x | {:.1} s ({:.2}x) | {:.0} MiB | {:.0}% | {} | {:.1} MiB |",
            r.rate.summary(),
            r.rate.records_per_s() / ceiling.records_per_s(),
            r.span.as_secs_f64(),
            records as f64 / r.span.as_secs_f64() / ceiling.records_per_s(),
            r.peak_rss_mib,
            r.cpu_s / r.rate.elapsed.as_secs_f64() * 100.0,
            r.files.len(),
            mib(bytes as f64 / r.files.len().max(1) as f64),
        );
    }

    let ratio = default.rate.records_per_s() / ceiling.records_per_s();
    println!(
        "\n- rows/s, first record to exit: {:.0} against {:.0}: **{ratio:.2}x** (target >= 0.5x); \
         start to exit, the group's join included: {:.2}x",
        default.rate.records_per_s(),
        ceiling.records_per_s(),
        records as f64 / default.span.as_secs_f64() / ceiling.records_per_s()
    );
    Row::new(
        BENCH,
        "game records into a local table, default config",
        "logpipe-lake",
        default.rate.records_per_s(),
        "rec/s",
    )
    .against(CEILING, ceiling.records_per_s())
    .target(0.5)
    .extra("cpu_s", default.cpu_s)
    .extra("start_to_exit_s", default.span.as_secs_f64())
    .extra("files", default.files.len() as u64)
    .emit()?;
    println!(
        "- peak RSS at the default flush size: **{:.0} MiB** (target <= {RSS_MIB:.0} MiB)",
        default.peak_rss_mib
    );
    Row::new(
        BENCH,
        "peak RSS at the default flush size",
        "logpipe-lake",
        default.peak_rss_mib,
        "MiB",
    )
    .target_at_most(RSS_MIB)
    .emit()?;
    let growth = sized.peak_rss_mib / sized.half_rss_mib;
    println!(
        "- peak RSS at flush_bytes {file_mib} MiB ({} files): {:.0} MiB at the end, \
         {:.0} MiB at half the records: **{growth:.2}x** (target <= {COMMIT_GROWTH}x: memory must \
         not grow with commits)",
        sized.files.len(),
        sized.peak_rss_mib,
        sized.half_rss_mib,
    );
    Row::new(
        BENCH,
        "peak RSS at the end against at half the records, small files",
        "logpipe-lake",
        growth,
        "x",
    )
    .target_at_most(COMMIT_GROWTH)
    .emit()?;

    let steady = steady(&sized.files);
    let sizes: Vec<f64> = steady.iter().map(|f| f.bytes as f64).collect();
    let worst = sizes
        .iter()
        .map(|s| (s / target as f64 - 1.0).abs())
        .fold(0.0, f64::max);
    let (smallest, largest) = sizes
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    println!(
        "- file size at flush_bytes {file_mib} MiB: {} files under steady load, {:.1} to {:.1} MiB: \
         worst **{:.0}%** off the target (target within 20%); {} files in all",
        sizes.len(),
        mib(smallest),
        mib(largest),
        worst * 100.0,
        sized.files.len()
    );
    anyhow::ensure!(
        !sizes.is_empty(),
        "no file was committed under steady load: raise BENCH_RECORDS or lower BENCH_FILE_MIB"
    );
    Row::new(
        BENCH,
        &format!("file size off flush_bytes ({file_mib} MiB), worst file"),
        "logpipe-lake",
        worst * 100.0,
        "%",
    )
    .target_at_most(20.0)
    .extra("files", sizes.len() as u64)
    .extra("smallest_mib", mib(smallest))
    .extra("largest_mib", mib(largest))
    .emit()?;
    Ok(())
}
