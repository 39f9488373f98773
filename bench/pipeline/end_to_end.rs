//! End-to-end benchmark of the whole pipeline: log files -> agent -> write cluster -> mirror ->
//! read cluster -> validator -> clean topic, every service a release process on dev clusters
//! (`logpipe_devkit::pipeline`, the same wiring as `logpipe-dev up` and the fault suite).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p logpipe-tests --bench pipeline`
//! (or `bench/run pipeline`). Environment: `BENCH_LINES` (backlog lines, default 600000: with
//! fewer, the agent and the mirror finish early and the validator's share of the window runs
//! with the machine to itself, which is not the steady state of the whole pipeline),
//! `BENCH_LINE_SIZE` (bytes, default 250), `BENCH_PARTITIONS` (4), `BENCH_LATENCY_RATE`
//! (lines/s of the latency phase, default 1000), `BENCH_LATENCY_SECONDS` (20).
//!
//! Three phases, in one run, on the same dev clusters:
//! 1. Reference: a plain rdkafka producer (the shared producer settings every agent starts
//!    from: acks=all, idempotence, lz4, linger 20 ms) sends the same lines from memory to a
//!    topic of the write cluster that nothing mirrors, three times; the median round is the
//!    ceiling of the first hop alone. The pipeline's three hops (two of them transactional) can
//!    only be slower. Then the second reference (`relay.rs`): the same lines written to the
//!    write cluster, then copied twice by plain read_committed consumers and transactional
//!    producers: what two bare transactional hops cost in CPU per line, beside the mirror's and
//!    the validator's, and the rate they reach.
//! 2. Throughput: the lines are written to files outside the agent's directory, then moved in
//!    (rename) at once, so the agent sees a backlog and the generator's own CPU is not in the
//!    measurement. The files are renamed so that their keys land on the partitions in turn, as
//!    the reference's lines do (checked against the raw topic afterwards). A read_committed consumer counts clean records as they become visible; the
//!    steady-state rate is the count between 10 % and 90 % of the lines over the time between
//!    (start-up and the tail excluded). All lines are valid, so every line ends in `clean.game`.
//!    The raw topic's ends on the write cluster (the agent's output) and on the read cluster
//!    (the mirror's, read_committed: the last stable offset) are polled every 5 ms, so the same
//!    rate is reported per hop without a reader consuming every record of each beside the
//!    services being measured.
//!    Each service's CPU (user + system, from `/proc`) from the move to the last clean record,
//!    per million lines, says what a line costs at each hop.
//! 3. Latency: the generator writes at a fixed rate (well under the throughput) for a while; for
//!    each clean record the consumer decodes its `event_time` (set by the generator just before
//!    it writes and flushes the line, ms precision) and takes the time the record became visible
//!    to it minus that. So the latency covers file -> agent (inotify) -> write cluster -> mirror
//!    (transaction commit) -> read cluster -> validator (transaction commit) -> consumer. The
//!    record's own timestamp (the agent's read time, kept through every hop) splits it into the
//!    agent's pick-up and the rest. Two more readers, started where the backlog ends, take the
//!    same measure where the agent's and the mirror's outputs become visible (the raw topic on
//!    the write cluster, and on the read cluster read_committed), so the latency splits hop by
//!    hop. The first 2 s are warm-up and not counted.
//!
//! Everything shares the machine's cores, so compare the ratio and latencies between runs on the
//! same machine, not absolute numbers across machines.

mod relay;

/// The references' clients get the allocator the agent and the validator run with (mimalloc for
/// every allocation, librdkafka's included): with glibc's, the same clients spend more CPU per
/// record and a reference would stop being a ceiling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use apache_avro::types::Value;
use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::record::KeyStrategy;
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::loadgen::{self, LoadgenArgs};
use logpipe_devkit::measure::{
    cpu_seconds, default_partition, env, read_lines, reader, reader_at, send_waiting, warm_up, Ends,
};
use logpipe_devkit::pipeline::{Component, Pipeline, PipelineOptions};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Offset;

const CEILING_TOPIC: &str = "bench.ceiling";
/// Latency-phase lines whose event time falls in this first stretch are warm-up.
const WARM_UP: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Rounds of the reference; its rate is their median.
const CEILING_ROUNDS: usize = 3;

/// Phase 1: lines/s of a plain, warmed-up producer sending `lines` from memory until all are
/// acknowledged, the median of [`CEILING_ROUNDS`] rounds (each round's rate printed). A round is
/// a burst well under a second; single rounds ranged from 518 k to 1,118 k lines/s within one
/// session, and the ratio with them.
fn ceiling(bootstrap: &str, partitions: i32, lines: &[Vec<u8>]) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = KafkaConfig::new(bootstrap)
        .client_config(&Role::Producer, "bench-ceiling")
        .create()?;
    warm_up(&producer, CEILING_TOPIC)?;
    let mut rounds = Vec::with_capacity(CEILING_ROUNDS);
    for _ in 0..CEILING_ROUNDS {
        let started = Instant::now();
        for (i, line) in lines.iter().enumerate() {
            send_waiting(
                &producer,
                BaseRecord::<(), [u8]>::to(CEILING_TOPIC)
                    .partition(i as i32 % partitions)
                    .payload(line.as_slice()),
            )?;
        }
        producer.flush(Duration::from_secs(300))?;
        rounds.push(lines.len() as f64 / started.elapsed().as_secs_f64());
    }
    let shown: Vec<String> = rounds.iter().map(|r| format!("{r:.0}")).collect();
    println!("reference rounds, lines/s: {}", shown.join(", "));
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[CEILING_ROUNDS / 2])
}

/// What the reader threads report.
enum Seen {
    /// The throughput phase: a count of records reached in a hop's output (every 1 % of the
    /// backlog), and when.
    Progress(Hop, u64, Instant),
    /// The latency phase: (line written -> visible, agent read -> visible) in ms, for one record.
    Latency(i64, i64),
    /// The latency phase, an earlier hop: line written -> visible in that hop's output, in ms.
    Hop(Hop, i64),
}

/// The hops, each measured where its output becomes visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Hop {
    /// The agent: the raw topic on the write cluster.
    Agent,
    /// The mirror: the raw topic on the read cluster (read_committed: after its commit).
    Mirror,
    /// The validator: the clean topic (read_committed).
    Validator,
}

impl Hop {
    const ALL: [Hop; 3] = [Hop::Agent, Hop::Mirror, Hop::Validator];

    fn name(self) -> &'static str {
        match self {
            Hop::Agent => "agent",
            Hop::Mirror => "mirror",
            Hop::Validator => "validator",
        }
    }
}

/// Lines/s of a hop's output between 10 % and 90 % of `lines` (start-up and tail excluded), from
/// its progress reports (count, when).
fn steady_rate(progress: &[(u64, Instant)], lines: u64) -> f64 {
    let at = |fraction: f64| {
        progress
            .iter()
            .find(|(count, _)| *count as f64 >= lines as f64 * fraction)
            .copied()
            .expect("progress reaches the end")
    };
    let ((low, t_low), (high, t_high)) = (at(0.1), at(0.9));
    (high - low) as f64 / (t_high - t_low).as_secs_f64()
}

/// How often a raw topic's ends are polled in the throughput phase.
const END_POLL: Duration = Duration::from_millis(5);

/// A raw topic: the agent's output on the write cluster, the mirror's on the read cluster.
struct RawHop {
    hop: Hop,
    bootstrap: String,
    topic: String,
    partitions: i32,
}

impl RawHop {
    /// The throughput phase: polls where the topic's partitions end for a read_committed reader
    /// (the last stable offset) every [`END_POLL`] and reports how many records they hold, until
    /// they hold `backlog`. Not read record by record: two readers consuming the whole backlog
    /// took about a tenth of the machine's CPU from the services being measured. Offsets count
    /// the agent's records exactly (it does not write transactions); the mirror's also count one
    /// marker per partition and transaction, reported after the run.
    fn count(
        &self,
        backlog: u64,
        stop: &AtomicBool,
        out: &mpsc::Sender<Seen>,
    ) -> anyhow::Result<()> {
        let ends = Ends::new(
            &self.bootstrap,
            "bench-pipeline-hop",
            &self.topic,
            self.partitions,
        )?;
        let mut reported = 0;
        while reported < backlog && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let count = (ends.now()?.iter().sum::<i64>().max(0) as u64).min(backlog);
            if count > reported {
                reported = count;
                if out
                    .send(Seen::Progress(self.hop, count, Instant::now()))
                    .is_err()
                {
                    break;
                }
            }
            std::thread::sleep(END_POLL);
        }
        Ok(())
    }

    /// Each partition's end now.
    fn ends(&self) -> anyhow::Result<Vec<i64>> {
        Ends::new(
            &self.bootstrap,
            "bench-pipeline-hop",
            &self.topic,
            self.partitions,
        )?
        .now()
    }

    /// The latency phase: reads the records after `from` (each partition's end after the
    /// backlog) and reports each one's latency, its JSON line's `event_time` to the moment it
    /// became visible.
    fn latency(
        &self,
        from: &[i64],
        stop: &AtomicBool,
        out: &mpsc::Sender<Seen>,
    ) -> anyhow::Result<()> {
        let start: Vec<Offset> = from.iter().map(|o| Offset::Offset(*o)).collect();
        let consumer = reader_at(
            &self.bootstrap,
            "bench-pipeline-hop",
            &self.topic,
            &start,
            &[("fetch.wait.max.ms", "10")],
        )?;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(message) => message.with_context(|| format!("reading {}", self.topic))?,
            };
            let visible = now_ms();
            let line: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default())?;
            let event_time = line["event_time"]
                .as_str()
                .context("a line without event_time")?;
            let written = humantime::parse_rfc3339(event_time)?
                .duration_since(UNIX_EPOCH)?
                .as_millis() as i64;
            if out.send(Seen::Hop(self.hop, visible - written)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The clean topic's reader.
struct CleanReader {
    bootstrap: String,
    topic: String,
    partitions: i32,
    schema_store: String,
    /// Records of the throughput phase, only counted.
    backlog: u64,
}

impl CleanReader {
    /// Reads the topic from the beginning as a read_committed consumer: counts the first
    /// `backlog` records (reporting progress), then decodes every later record's event time. Runs
    /// until `stop` is set or the channel is closed.
    fn run(
        &self,
        stop: &AtomicBool,
        out: &mpsc::Sender<Seen>,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        let CleanReader {
            bootstrap,
            topic,
            partitions,
            schema_store,
            backlog,
        } = self;
        let (partitions, backlog) = (*partitions, *backlog);
        let consumer = reader(
            bootstrap,
            "bench-pipeline",
            topic,
            partitions,
            &[("fetch.wait.max.ms", "10")],
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut schemas: HashMap<u32, apache_avro::Schema> = HashMap::new();
        let step = (backlog / 100).max(1);
        let mut count = 0u64;
        let mut next_report = step;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(message) => message.with_context(|| format!("reading {topic}"))?,
            };
            let visible = now_ms();
            count += 1;
            if count <= backlog {
                if count == next_report || count == backlog {
                    next_report += step;
                    let _ = out.send(Seen::Progress(Hop::Validator, count, Instant::now()));
                }
                continue;
            }
            let event_time =
                event_time(message.payload().unwrap_or_default(), &mut schemas, |id| {
                    runtime.block_on(fetch_schema(&http, schema_store, id))
                })?;
            let read_time = match message.timestamp() {
                Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => ms,
                Timestamp::NotAvailable => bail!("clean record without a timestamp"),
            };
            if out
                .send(Seen::Latency(visible - event_time, visible - read_time))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

/// The `event_time` (ms since the epoch) of a clean record: Confluent wire format, Avro datum
/// decoded with the writer schema fetched from the store by id, as any consumer would.
fn event_time(
    value: &[u8],
    schemas: &mut HashMap<u32, apache_avro::Schema>,
    fetch: impl FnOnce(u32) -> anyhow::Result<apache_avro::Schema>,
) -> anyhow::Result<i64> {
    let (id, mut datum) = logpipe_core::wire::parse(value)?;
    let schema = match schemas.entry(id) {
        std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
        std::collections::hash_map::Entry::Vacant(new) => new.insert(fetch(id)?),
    };
    let Value::Record(fields) = apache_avro::from_avro_datum(schema, &mut datum, None)? else {
        bail!("schema {id} is not a record");
    };
    match fields.into_iter().find(|(name, _)| name == "event_time") {
        Some((_, Value::TimestampMillis(ms))) | Some((_, Value::Long(ms))) => Ok(ms),
        other => bail!("no event_time in a clean record: {other:?}"),
    }
}

/// The writer schema of an id, from the schema store's Confluent API.
async fn fetch_schema(
    http: &reqwest::Client,
    store: &str,
    id: u32,
) -> anyhow::Result<apache_avro::Schema> {
    let body: serde_json::Value = http
        .get(format!("{store}/schemas/ids/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let text = body["schema"]
        .as_str()
        .with_context(|| format!("schema {id}: {body}"))?;
    Ok(apache_avro::Schema::parse_str(text)?)
}

/// The `q` quantile (0..=1) of sorted values.
fn quantile(sorted: &[i64], q: f64) -> f64 {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
        .map_or(f64::NAN, |v| *v as f64)
}

/// Where the backlog's `files` go in the agent's directory `dir`: names chosen so that the files'
/// keys (`<host>|<path>`, the agent's default) land on the partitions in turn, as the reference
/// spreads its lines. With the files' own names, where they land depends on the temporary
/// directory's random name: all four on one partition left one mirror shard and one validator
/// loop doing the whole pipeline's work in some runs, and the ratio varied 3x between runs.
fn spread_names(dir: &std::path::Path, files: usize, partitions: i32) -> Vec<std::path::PathBuf> {
    let host = logpipe_core::service::host_name();
    (0..files)
        .map(|i| {
            (0..)
                .map(|n| dir.join(format!("tput-{i}-{n}.log")))
                .find(|path| {
                    let key = KeyStrategy::HostPath
                        .key(&host, &path.to_string_lossy(), b"")
                        .expect("host|path is a key");
                    default_partition(&key, partitions) == i as i32 % partitions
                })
                .expect("some name lands on each partition")
        })
        .collect()
}

/// Generated lines, as `loadgen` writes them, into `dir`.
fn generate(
    dir: &std::path::Path,
    run_id: &str,
    lines: u64,
    size: usize,
    rate: f64,
    duration: Option<f64>,
) -> anyhow::Result<loadgen::Report> {
    let mut args = LoadgenArgs::new(dir);
    args.files = 4;
    args.lines = lines;
    args.line_size = size.to_string().parse().map_err(anyhow::Error::msg)?;
    args.rate = rate;
    args.duration = duration;
    args.run_id = Some(run_id.to_owned());
    loadgen::run(&args, &AtomicBool::new(false))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: a benchmark is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "pipeline: a benchmark; run it with `cargo bench -p logpipe-tests --bench pipeline`"
        );
        return Ok(());
    }
    let lines: u64 = env("BENCH_LINES", 600_000);
    let size: usize = env("BENCH_LINE_SIZE", 250);
    let partitions: i32 = env("BENCH_PARTITIONS", 4);
    let latency_rate: f64 = env("BENCH_LATENCY_RATE", 1000.0);
    let latency_seconds: f64 = env("BENCH_LATENCY_SECONDS", 20.0);
    let work = tempfile::Builder::new()
        .prefix("logpipe-pipeline-bench-")
        .tempdir()?;
    let options = PipelineOptions {
        state_dir: work.path().join("pipeline"),
        brokers: 1,
        partitions,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options)
        .await
        .context("starting the pipeline (cargo build --release --workspace --bins first)")?;
    pipeline
        .write_cluster()
        .create_topic(CEILING_TOPIC, partitions)
        .await?;
    pipeline
        .write_cluster()
        .create_topic(relay::TOPICS[0], partitions)
        .await?;
    for topic in &relay::TOPICS[1..] {
        pipeline
            .read_cluster()
            .create_topic(topic, partitions)
            .await?;
    }

    // The backlog is written beside the agent's directory first.
    let staging = work.path().join("staging");
    let written = tokio::task::spawn_blocking({
        let staging = staging.clone();
        move || generate(&staging, "tput", lines, size, 0.0, None)
    })
    .await??;
    let in_memory = read_lines(&staging)?;
    anyhow::ensure!(
        in_memory.len() as u64 == written.lines,
        "read back {} of {} lines",
        in_memory.len(),
        written.lines
    );

    // Phase 1: the reference, while the pipeline is idle.
    let bootstrap = pipeline.write_cluster().bootstrap().to_owned();
    let in_memory = std::sync::Arc::new(in_memory);
    let reference = tokio::task::spawn_blocking({
        let in_memory = in_memory.clone();
        move || ceiling(&bootstrap, partitions, &in_memory)
    })
    .await??;
    println!("reference: plain producer from memory: {reference:.0} lines/s (median round)");
    let (write, read) = (
        pipeline.write_cluster().bootstrap().to_owned(),
        pipeline.read_cluster().bootstrap().to_owned(),
    );
    let relayed =
        tokio::task::spawn_blocking(move || relay::relay(&write, &read, partitions, &in_memory))
            .await??;
    println!(
        "second reference: two transactional copies by plain clients (relay): {:.0} lines/s (start-up included), \
         {:.1} CPU s per million lines (both copies; a bare first hop writing their backlog {:.1})",
        relayed.rate,
        relayed.cpu_seconds / (lines as f64 / 1e6),
        relayed.first_cpu_seconds / (lines as f64 / 1e6)
    );

    // The consumer reads the clean topic for both phases.
    let (tx, rx) = mpsc::channel();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = CleanReader {
        bootstrap: pipeline.read_cluster().bootstrap().to_owned(),
        topic: pipeline.clean_topics()[0].clone(),
        partitions,
        schema_store: pipeline.schema_store_url(),
        backlog: lines,
    };
    let raw_hops: Vec<std::sync::Arc<RawHop>> = [
        (Hop::Agent, pipeline.write_cluster().bootstrap()),
        (Hop::Mirror, pipeline.read_cluster().bootstrap()),
    ]
    .into_iter()
    .map(|(hop, bootstrap)| {
        std::sync::Arc::new(RawHop {
            hop,
            bootstrap: bootstrap.to_owned(),
            topic: pipeline.raw_topic().to_owned(),
            partitions,
        })
    })
    .collect();
    let counters: Vec<_> = raw_hops
        .iter()
        .map(|raw| {
            let (raw, stop, tx) = (raw.clone(), stop.clone(), tx.clone());
            std::thread::spawn(move || raw.count(lines, &stop, &tx))
        })
        .collect();
    let latency_tx = tx.clone();
    let consumer = std::thread::spawn({
        let (stop, runtime) = (stop.clone(), tokio::runtime::Handle::current());
        move || reader.run(&stop, &tx, &runtime)
    });

    // Phase 2: the backlog moves into the agent's directory at once.
    let cpu = |pipeline: &Pipeline| -> Vec<(Component, f64)> {
        pipeline
            .components()
            .into_iter()
            .map(|c| (c, cpu_seconds(pipeline.pid(c))))
            .collect()
    };
    let cpu_before = cpu(&pipeline);
    let moved = Instant::now();
    let names = spread_names(&pipeline.log_dir(), written.files.len(), partitions);
    for (file, name) in written.files.iter().zip(names) {
        std::fs::rename(&file.path, name)?;
    }
    let deadline = moved + Duration::from_secs(900);
    let mut progress: HashMap<Hop, Vec<(u64, Instant)>> = HashMap::new();
    let reached = |progress: &HashMap<Hop, Vec<(u64, Instant)>>, hop| {
        progress
            .get(&hop)
            .and_then(|p| p.last())
            .map_or(0, |(count, _)| *count)
    };
    // The services' CPU is taken when the last clean record is seen; the hops' readers may
    // report their last progress a little later.
    let mut cpu_after = None;
    while Hop::ALL.iter().any(|hop| reached(&progress, *hop) < lines) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Progress(hop, count, at)) => {
                progress.entry(hop).or_default().push((count, at));
                if hop == Hop::Validator && count == lines {
                    cpu_after = Some(cpu(&pipeline));
                }
            }
            Ok(Seen::Latency(..) | Seen::Hop(..)) => {
                bail!("a record beyond the backlog before its end")
            }
            Err(_) => {
                let got: Vec<String> = Hop::ALL
                    .iter()
                    .map(|hop| format!("{} {}", hop.name(), reached(&progress, *hop)))
                    .collect();
                bail!(
                    "within 900 s the hops' outputs got only {} of {lines} lines",
                    got.join(", ")
                )
            }
        }
    }
    let cpu_spent: Vec<(Component, f64)> = cpu_after
        .expect("the clean topic reached the backlog")
        .into_iter()
        .zip(&cpu_before)
        .map(|((c, after), (_, before))| (c, after - before))
        .collect();
    for counter in counters {
        counter
            .join()
            .map_err(|_| anyhow::anyhow!("raw counter thread panicked"))??;
    }
    // Phase 3's raw readers start where the backlog ends (all of it is visible once the clean
    // topic holds it), at offsets, so nothing of phase 3 is missed.
    let mut hop_readers = Vec::new();
    for raw in &raw_hops {
        let ends = raw.ends()?;
        match raw.hop {
            Hop::Agent => {
                println!("the backlog's records per raw partition: {ends:?}");
                anyhow::ensure!(
                    written.files.len() < partitions as usize || ends.iter().all(|n| *n > 0),
                    "the backlog's files did not land on every partition: {ends:?}"
                );
            }
            Hop::Mirror => println!(
                "the mirror's transaction markers among its offsets: {}",
                ends.iter().sum::<i64>() - lines as i64
            ),
            Hop::Validator => {}
        }
        let (raw, stop, tx) = (raw.clone(), stop.clone(), latency_tx.clone());
        hop_readers.push(std::thread::spawn(move || raw.latency(&ends, &stop, &tx)));
    }
    drop(latency_tx);
    let hop_rates: Vec<(Hop, f64)> = Hop::ALL
        .iter()
        .map(|hop| (*hop, steady_rate(&progress[hop], lines)))
        .collect();
    let steady = steady_rate(&progress[&Hop::Validator], lines);
    let last_clean = progress[&Hop::Validator].last().expect("progress").1;
    let overall = lines as f64 / (last_clean - moved).as_secs_f64();
    println!(
        "throughput: {steady:.0} lines/s at steady state (10-90 %), {overall:.0} lines/s from the move to the last clean record"
    );
    let per_hop: Vec<String> = hop_rates
        .iter()
        .map(|(hop, rate)| format!("{} {rate:.0}", hop.name()))
        .collect();
    println!(
        "each hop's output at steady state (10-90 %), lines/s: {}",
        per_hop.join(", ")
    );
    let per_million = |seconds: f64| seconds / (lines as f64 / 1e6);
    let spent: Vec<String> = cpu_spent
        .iter()
        .map(|(c, s)| format!("{c} {:.1}", per_million(*s)))
        .collect();
    println!(
        "CPU seconds per million lines, the move to the last clean record: {}",
        spent.join(", ")
    );

    // Phase 3: latency at a fixed rate.
    let log_dir = pipeline.log_dir();
    let latency_run = tokio::task::spawn_blocking(move || {
        generate(
            &log_dir,
            "lat",
            0,
            size,
            latency_rate,
            Some(latency_seconds),
        )
    })
    .await??;
    let mut total = Vec::new();
    let mut pickup = Vec::new();
    let (mut agent, mut mirror) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(300);
    let warm_up_records = (latency_rate * WARM_UP.as_secs_f64()) as u64;
    let mut seen = 0u64;
    while seen < latency_run.lines {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Latency(line_ms, read_ms)) => {
                seen += 1;
                if seen > warm_up_records {
                    total.push(line_ms);
                    pickup.push(line_ms - read_ms);
                }
            }
            // Each hop's own first lines are its warm-up.
            Ok(Seen::Hop(hop, ms)) => match hop {
                Hop::Agent => agent.push(ms),
                Hop::Mirror => mirror.push(ms),
                Hop::Validator => bail!("the clean topic's latency comes as Latency"),
            },
            Ok(Seen::Progress(..)) => {}
            Err(_) => bail!(
                "the latency phase got {seen} of {} lines within 300 s",
                latency_run.lines
            ),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rx);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    for hop_reader in hop_readers {
        hop_reader
            .join()
            .map_err(|_| anyhow::anyhow!("raw reader thread panicked"))??;
    }
    let hops: Vec<(&str, Vec<i64>)> = [("agent", agent), ("mirror", mirror)]
        .into_iter()
        .map(|(name, mut samples)| {
            let warm_up = warm_up_records.min(samples.len() as u64) as usize;
            samples.drain(..warm_up);
            samples.sort_unstable();
            (name, samples)
        })
        .collect();
    total.sort_unstable();
    pickup.sort_unstable();
    let (p50, p99, max) = (
        quantile(&total, 0.5),
        quantile(&total, 0.99),
        quantile(&total, 1.0),
    );
    let pickup_p50 = quantile(&pickup, 0.5);
    println!(
        "latency at {latency_rate:.0} lines/s: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms over {} lines \
         (line written -> agent read, p50 {pickup_p50:.0} ms)",
        total.len()
    );

    let case = format!("~{size} B lines, {lines} backlog, {partitions} partitions");
    Row::new(
        "pipeline",
        &case,
        "file -> clean topic, steady state",
        steady,
        "lines/s",
    )
    .against("plain producer from memory (first hop only)", reference)
    .target(0.3)
    .extra("from_move_to_last_lines_per_s", overall.round())
    .emit()?;
    // The two transactional hops' cost per line against two bare copies': what the services'
    // own work adds to the client's (lower is better).
    let transactional: f64 = cpu_spent
        .iter()
        .filter(|(c, _)| matches!(c, Component::Mirror | Component::Validator))
        .map(|(_, s)| per_million(*s))
        .sum();
    Row::new(
        "pipeline",
        &case,
        "mirror + validator: CPU seconds per million lines",
        transactional,
        "s",
    )
    .against(
        "relay: two transactional copies by plain clients",
        per_million(relayed.cpu_seconds),
    )
    .extra("relay_lines_per_s", relayed.rate.round())
    .extra(
        "bare_first_hop_cpu_s_per_million_lines",
        per_million(relayed.first_cpu_seconds),
    )
    .emit()?;
    for (hop, rate) in &hop_rates {
        Row::new(
            "pipeline",
            &case,
            &format!("visible after the {}, steady state", hop.name()),
            *rate,
            "lines/s",
        )
        .against("plain producer from memory (first hop only)", reference)
        .emit()?;
    }
    for (c, seconds) in &cpu_spent {
        Row::new(
            "pipeline",
            &case,
            &format!("{c}: CPU seconds per million lines"),
            per_million(*seconds),
            "s",
        )
        .extra("cpu_s", *seconds)
        .emit()?;
    }
    let case = format!("~{size} B lines at {latency_rate:.0} lines/s");
    Row::new(
        "pipeline",
        &case,
        "line written -> clean record visible, p50",
        p50,
        "ms",
    )
    .target_at_most(100.0)
    .extra("samples", total.len() as u64)
    .extra("agent_pickup_p50_ms", pickup_p50)
    .emit()?;
    Row::new(
        "pipeline",
        &case,
        "line written -> clean record visible, p99",
        p99,
        "ms",
    )
    .target_at_most(300.0)
    .extra("max_ms", max)
    .emit()?;
    // Each hop's output, cumulative from the line's writing: the differences are the hops' own.
    for (name, samples) in &hops {
        let (hop_p50, hop_p99) = (quantile(samples, 0.5), quantile(samples, 0.99));
        println!("  visible after the {name}: p50 {hop_p50:.0} ms, p99 {hop_p99:.0} ms");
        for (q, value) in [("p50", hop_p50), ("p99", hop_p99)] {
            Row::new(
                "pipeline",
                &case,
                &format!("line written -> visible after the {name}, {q}"),
                value,
                "ms",
            )
            .extra("samples", samples.len() as u64)
            .emit()?;
        }
    }
    // Rows first: a service that exits badly on SIGTERM must not cost the measurements.
    pipeline.stop(Duration::from_secs(30)).await?;
    Ok(())
}
