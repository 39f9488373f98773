//! Mirror throughput in exactly-once mode, next to ceilings measured in the same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p logpipe-mirror --bench throughput`
//! (needs `kcat` on PATH). Environment: `BENCH_PARTITIONS` (default 16), `BENCH_MB` (total
//! megabytes per record size, default 320). Both dev clusters are started retaining twice a
//! partition's share of the data set (plus slack), so nothing is deleted before it is read and
//! the data set can be large enough for steady state to dominate start-up. The clusters hold
//! everything in memory: the read side holds two copies (kcat's and the mirror's).
//! `BENCH_CEILING_ROUNDS` (default 3): rounds of each ceiling, the fastest counts.
//! `BENCH_SIZES` (record sizes, default `200,1024`), `BENCH_SHARDS` (default 4) and
//! `BENCH_MIRROR_CONFIG` (top-level TOML lines added to the mirror's config, e.g.
//! `commit_interval_ms = 1000`) are for tuning runs. With `LOGPIPE_BENCH_JSON` set, each row is
//! also emitted through `logpipe_devkit::benchreport`.
//!
//! For each record size (200 B, 1 KB), on two dev clusters (write and read side, one broker each):
//! 1. plain producers: as many idempotent rdkafka producers as the mirror has shards, each
//!    warmed up and sending to its share of the partitions, fill the source topic, then another
//!    topic nobody reads in each further round (ceiling 1: the fastest round);
//! 2. plain consumers: as many assign-mode rdkafka consumers, each reading its share, drain the
//!    source topic, once per round (ceiling 2: the fastest round);
//! 3. `kcat -C | kcat -P`: the naive pipe copies the source topic to another target topic;
//! 4. the mirror (release build, exactly once, default commit interval and buffer) copies the
//!    source topic; measured from its first committed record to its last, so start-up (group
//!    join) is not counted; peak RSS read from `/proc`, mean commit latency from its metrics.
//!
//! Producer, consumer, kcat and mirror share two cores with the clusters, so the ratios, not
//! the absolute numbers, are what this measures. A ceiling phase lasts about a second, and one
//! such burst can fall below what the clients do at best (the mirror once measured 1.18x its
//! "ceiling"): hence the fastest of several rounds, so a ceiling is one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::metric_names::mirror as names;
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::harness::{free_addr, wait_until_every, write_file, DevCluster, Process};
use logpipe_devkit::measure::{
    cpu_seconds, env, filling_producer, peak_rss_mib, reader, send_polling,
    waited_children_cpu_seconds, warm_up_polling, Rate,
};
use logpipe_devkit::prometheus;
use logpipe_mirror::MirrorConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const SOURCE: &str = "raw.bench";
/// Where ceiling 1 sends its first record, so that its clock starts warm and `SOURCE` holds only
/// the records the mirror copies.
const WARM_UP: &str = "bench.warm-up";
const KCAT_TARGET: &str = "kcat.bench";
/// A plain producer serves its delivery reports after every this many records.
const DELIVERIES_EVERY: usize = 1024;
/// How often the mirror's record count is read at the ends of its timed copy.
const CLOSE: Duration = Duration::from_millis(10);
/// Where the plain producers' rounds after the first go: not copied, not read.
const CEILING_ROUNDS_TOPIC: &str = "ceiling.bench";

/// The fastest of a ceiling's rounds (each one's rate goes to stderr, beside the table).
fn fastest(
    what: &str,
    size: usize,
    rounds: impl Iterator<Item = anyhow::Result<Rate>>,
) -> anyhow::Result<Rate> {
    let mut best: Option<Rate> = None;
    for (round, rate) in rounds.enumerate() {
        let rate = rate?;
        eprintln!(
            "{size} B, {what}, round {}: {:.0} rec/s",
            round + 1,
            rate.records_per_s()
        );
        if best.is_none_or(|b| rate.records_per_s() > b.records_per_s()) {
            best = Some(rate);
        }
    }
    best.context("no ceiling round ran (BENCH_CEILING_ROUNDS = 0?)")
}

/// The mirror's config: `BENCH_MIRROR_CONFIG`'s lines, then both clusters and the telemetry
/// address.
fn mirror_config(source: &str, target: &str, telemetry: std::net::SocketAddr) -> String {
    format!(
        "{}\n[source]\nbootstrap = \"{source}\"\n[target]\nbootstrap = \"{target}\"\n[topics]\ninclude = [\"raw\\\\..*\"]\n[telemetry]\nlisten = \"{telemetry}\"\n",
        std::env::var("BENCH_MIRROR_CONFIG").unwrap_or_default(),
    )
}

/// The state topic the mirror will use (created with the read cluster, which does not serve
/// CreateTopics), named by the mirror's own config (`name` may be set in `BENCH_MIRROR_CONFIG`).
fn state_topic() -> anyhow::Result<String> {
    let config: MirrorConfig = toml::from_str(&mirror_config("unused:1", "unused:1", free_addr()))
        .context("the mirror config (BENCH_MIRROR_CONFIG)")?;
    Ok(config.state_topic())
}

/// Printable values (kcat's pipe is line-based), distinct per record.
fn value(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("{i:012}-").into_bytes();
    let mut x = i as u64 | 1;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Whether partition `p` belongs to ceiling client `client` of `clients`: the ceilings split the
/// partitions among as many clients as the mirror has shards, as the mirror does, so that they
/// measure what the same number of the same clients can do (one client is one librdkafka broker
/// thread, which four shards outrun).
fn owns(p: i32, client: i32, clients: i32) -> bool {
    p % clients == client
}

/// Sends `values` (made by the caller before the clock and the CPU count start: the ceiling is
/// the producers', not the generator's) round-robin over the partitions.
fn fill(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    clients: i32,
    values: &[Vec<u8>],
    size: usize,
) -> anyhow::Result<Rate> {
    let records = values.len();
    let start = std::sync::Barrier::new(clients as usize + 1);
    let elapsed = std::thread::scope(|scope| -> anyhow::Result<Duration> {
        let senders: Vec<_> = (0..clients)
            .map(|client| {
                let start = &start;
                scope.spawn(move || -> anyhow::Result<()> {
                    let producer = filling_producer(bootstrap)?;
                    warm_up_polling(&producer, WARM_UP)?;
                    start.wait();
                    let mut sent = 0usize;
                    for (i, v) in values.iter().enumerate() {
                        // Round-robin: every partition gets the same share, which the clusters'
                        // retention is sized for.
                        let partition = i as i32 % partitions;
                        if owns(partition, client, clients) {
                            send_polling(
                                &producer,
                                BaseRecord::<(), [u8]>::to(topic)
                                    .partition(partition)
                                    .payload(&v[..]),
                            )?;
                            sent += 1;
                            // Delivery reports served as they come, as the mirror's shards do,
                            // not all at once in the final flush.
                            if sent.is_multiple_of(DELIVERIES_EVERY) {
                                producer.poll(Duration::ZERO);
                            }
                        }
                    }
                    Ok(producer.flush(Duration::from_secs(120))?)
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        for sender in senders {
            sender.join().expect("ceiling producer thread")?;
        }
        Ok(started.elapsed())
    })?;
    Ok(Rate {
        records,
        bytes: records * size,
        elapsed,
    })
}

fn drain(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    clients: i32,
    records: usize,
    size: usize,
) -> anyhow::Result<Rate> {
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let readers: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let consumer = reader(bootstrap, "bench", topic, partitions, &[])?;
                    let mut mine = TopicPartitionList::new();
                    for p in (0..partitions).filter(|p| owns(*p, client, clients)) {
                        mine.add_partition_offset(topic, p, Offset::Beginning)?;
                    }
                    consumer.assign(&mine)?;
                    let expected = (0..records)
                        .filter(|i| owns(*i as i32 % partitions, client, clients))
                        .count();
                    let mut seen = 0;
                    while seen < expected {
                        match consumer.poll(Duration::from_secs(10)) {
                            Some(Ok(_)) => seen += 1,
                            Some(Err(e)) => anyhow::bail!("plain consumer: {e}"),
                            None => anyhow::bail!(
                                "plain consumer {client} stalled at {seen} of {expected}"
                            ),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for reader in readers {
            reader.join().expect("ceiling consumer thread")?;
        }
        Ok(())
    })?;
    Ok(Rate {
        records,
        bytes: records * size,
        elapsed: started.elapsed(),
    })
}

fn kcat_pipe(source: &str, target: &str, records: usize, size: usize) -> anyhow::Result<Rate> {
    let started = Instant::now();
    let mut consumer = Command::new("kcat")
        .args([
            "-C",
            "-b",
            source,
            "-t",
            SOURCE,
            "-e",
            "-q",
            "-o",
            "beginning",
            "-X",
            "isolation.level=read_committed",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let status = Command::new("kcat")
        .args([
            "-P",
            "-b",
            target,
            "-t",
            KCAT_TARGET,
            "-X",
            "enable.idempotence=true",
            "-X",
            "linger.ms=10",
        ])
        .stdin(consumer.stdout.take().expect("piped stdout"))
        .status()?;
    consumer.wait()?;
    anyhow::ensure!(status.success(), "kcat -P failed: {status}");
    Ok(Rate {
        records,
        bytes: records * size,
        elapsed: started.elapsed(),
    })
}

/// One client for every scrape: a new one per scrape cost the bench process about half a
/// millisecond of CPU, beside the mirror it measures.
async fn metric(http: &reqwest::Client, addr: std::net::SocketAddr, name: &str) -> f64 {
    prometheus::total(&prometheus::scrape(http, addr).await, name)
}

/// CPU used by each process of a phase: this process (plain producer, plain consumer, kcat), the
/// two dev clusters, and the mirror.
#[derive(Default, Clone, Copy)]
struct Cpu {
    bench: f64,
    write: f64,
    read: f64,
    mirror: f64,
}

impl Cpu {
    fn now(write: &mut DevCluster, read: &mut DevCluster) -> Cpu {
        let pid = |cluster: &mut DevCluster| cluster.process().map(|p| p.pid());
        Cpu {
            // This process, with the kcat pair it waited for.
            bench: cpu_seconds(None) + waited_children_cpu_seconds(),
            write: pid(write).map_or(0.0, |pid| cpu_seconds(Some(pid))),
            read: pid(read).map_or(0.0, |pid| cpu_seconds(Some(pid))),
            mirror: 0.0,
        }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            bench: self.bench - start.bench,
            write: self.write - start.write,
            read: self.read - start.read,
            mirror: self.mirror - start.mirror,
        }
    }

    fn total(&self) -> f64 {
        self.bench + self.write + self.read + self.mirror
    }

    /// A phase of `rounds` rounds, per round.
    fn per_round(self, rounds: usize) -> Cpu {
        let n = rounds.max(1) as f64;
        Cpu {
            bench: self.bench / n,
            write: self.write / n,
            read: self.read / n,
            mirror: self.mirror / n,
        }
    }
}

/// What the mirror phase measured.
struct Mirrored {
    rate: Rate,
    peak_rss_mib: f64,
    /// Mean of `logpipe_mirror_commit_latency_seconds` over the run, in ms.
    commit_ms: f64,
    commits: f64,
    /// CPU of every process while the mirror was timed.
    cpu: Cpu,
}

async fn mirror(
    write: &mut DevCluster,
    read: &mut DevCluster,
    records: usize,
    size: usize,
) -> anyhow::Result<Mirrored> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr();
    let config = write_file(
        dir.path(),
        "mirror.toml",
        &mirror_config(write.bootstrap(), read.bootstrap(), addr),
    )?;
    let mut process = Process::start(
        "logpipe-mirror",
        &["run", "--config", config.to_str().unwrap()],
    )?;
    process.wait_ready(addr, Duration::from_secs(60)).await?;
    let http = reqwest::Client::new();
    // Both ends seen within 10 ms: at 1 KB the timed copy lasts under a second, and 50 ms polls
    // moved single runs by several percent either way.
    wait_until_every(CLOSE, Duration::from_secs(120), || async {
        metric(&http, addr, names::RECORDS).await > 0.0
    })
    .await?;
    let started = Instant::now();
    let cpu_start = Cpu {
        mirror: cpu_seconds(Some(process.pid())),
        ..Cpu::now(write, read)
    };
    // Records of the first commit were copied before `started`: count only those after it.
    let before = metric(&http, addr, names::RECORDS).await as usize;
    wait_until_every(CLOSE, Duration::from_secs(600), || async {
        metric(&http, addr, names::RECORDS).await >= records as f64
    })
    .await?;
    let elapsed = started.elapsed();
    let cpu = Cpu {
        mirror: cpu_seconds(Some(process.pid())),
        ..Cpu::now(write, read)
    }
    .since(cpu_start);
    let peak_rss_mib = peak_rss_mib(process.pid());
    let commits = metric(&http, addr, &format!("{}_count", names::COMMIT_LATENCY)).await;
    let commit_ms = metric(&http, addr, &format!("{}_sum", names::COMMIT_LATENCY)).await * 1000.0
        / commits.max(1.0);
    process.terminate(Duration::from_secs(30)).await?;
    let copied = records - before.min(records);
    Ok(Mirrored {
        rate: Rate {
            records: copied,
            bytes: copied * size,
            elapsed,
        },
        peak_rss_mib,
        commit_ms,
        commits,
        cpu,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let partitions: i32 = env("BENCH_PARTITIONS", 16);
    let megabytes: usize = env("BENCH_MB", 320);
    let rounds: usize = env("BENCH_CEILING_ROUNDS", 3);
    // Twice a partition's share (compression and batching overheads differ per writer) plus
    // slack, so retention never deletes what a phase has still to read.
    let retention = (2 * megabytes * 1_000_000 / partitions as usize + 16 * 1024 * 1024) as u64;
    println!(
        "# logpipe-mirror throughput (exactly once) vs ceilings, {partitions} partitions, {megabytes} MB per size, \
         retention {} MiB per partition\n",
        retention / (1024 * 1024)
    );
    println!(
        "| record | plain producer (fastest of {rounds}) | plain consumer (fastest of {rounds}) | kcat -C \\| kcat -P | mirror | mirror / min(ceilings) | mirror / kcat | \
         mirror peak RSS | mirror commits (mean latency) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cpu_rows = Vec::new();
    let shards: i32 = env("BENCH_SHARDS", 4);
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "200,1024".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("BENCH_SIZES is a comma-separated list of record sizes in bytes")?;
    let state_topic = state_topic()?;
    for size in sizes {
        let records = megabytes * 1_000_000 / size;
        let mut write = DevCluster::start_retaining(
            "write",
            1,
            &[
                (SOURCE, partitions),
                (WARM_UP, 1),
                (CEILING_ROUNDS_TOPIC, partitions),
            ],
            Some(retention),
        )
        .await?;
        let read_topics = [
            (SOURCE, partitions),
            (KCAT_TARGET, partitions),
            (state_topic.as_str(), shards),
        ];
        let mut read =
            DevCluster::start_retaining("read", 1, &read_topics, Some(retention)).await?;
        let (w, r) = (write.bootstrap().to_owned(), read.bootstrap().to_owned());
        let values: Vec<Vec<u8>> = (0..records).map(|i| value(i, size)).collect();
        let mut cpu = Cpu::now(&mut write, &mut read);
        let mut phase_cpu = |write: &mut DevCluster, read: &mut DevCluster| {
            let now = Cpu::now(write, read);
            let used = now.since(cpu);
            cpu = now;
            used
        };
        // The values come back to be freed after the producers' CPU is counted.
        let (produced, values) = tokio::task::spawn_blocking(move || {
            let rate = fastest(
                "plain producer",
                size,
                (0..rounds).map(|round| {
                    let topic = if round == 0 {
                        SOURCE
                    } else {
                        CEILING_ROUNDS_TOPIC
                    };
                    fill(&w, topic, partitions, shards, &values, size)
                }),
            );
            (rate, values)
        })
        .await?;
        let produced_cpu = phase_cpu(&mut write, &mut read).per_round(rounds);
        drop(values);
        let produced = produced?;
        let w = write.bootstrap().to_owned();
        let consumed = tokio::task::spawn_blocking(move || {
            fastest(
                "plain consumer",
                size,
                (0..rounds).map(|_| drain(&w, SOURCE, partitions, shards, records, size)),
            )
        })
        .await??;
        let consumed_cpu = phase_cpu(&mut write, &mut read).per_round(rounds);
        let w = write.bootstrap().to_owned();
        let piped = tokio::task::spawn_blocking(move || kcat_pipe(&w, &r, records, size)).await??;
        let piped_cpu = phase_cpu(&mut write, &mut read);
        let mirrored = mirror(&mut write, &mut read, records, size).await?;
        let ceiling = produced.records_per_s().min(consumed.records_per_s());
        let cell = |r: &Rate| format!("{:.0} rec/s, {:.1} MB/s", r.records_per_s(), r.mb_per_s());
        let rate = &mirrored.rate;
        println!(
            "| {size} B x {records} | {} | {} | {} | {} | {:.2}x | {:.2}x | {:.0} MiB (budget 256 MiB) | {:.0} ({:.0} ms) |",
            cell(&produced),
            cell(&consumed),
            cell(&piped),
            cell(rate),
            rate.records_per_s() / ceiling,
            rate.records_per_s() / piped.records_per_s(),
            mirrored.peak_rss_mib,
            mirrored.commits,
            mirrored.commit_ms,
        );
        for (phase, rate, cpu) in [
            ("plain producer", &produced, produced_cpu),
            ("plain consumer", &consumed, consumed_cpu),
            ("kcat -C \\| kcat -P", &piped, piped_cpu),
            ("mirror", &mirrored.rate, mirrored.cpu),
        ] {
            // CPU seconds per 100 MB of record bytes moved.
            let per = |seconds: f64| seconds * 100e6 / rate.bytes.max(1) as f64;
            cpu_rows.push(format!(
                "| {size} B | {phase} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                per(cpu.bench),
                per(cpu.write),
                per(cpu.read),
                per(cpu.mirror),
                per(cpu.total())
            ));
        }
        report(size, &produced, &consumed, &piped, &mirrored)?;
    }
    println!("\nCPU seconds per 100 MB moved, by process (the machine has 2 cores; other load is not counted):\n");
    println!("| record | phase | bench process (producer, consumer, kcat) | write cluster | read cluster | mirror | total |");
    println!("|---|---|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
    }
    Ok(())
}

/// Emits the rows of one record size for the combined benchmark report.
fn report(
    size: usize,
    produced: &Rate,
    consumed: &Rate,
    piped: &Rate,
    mirrored: &Mirrored,
) -> anyhow::Result<()> {
    let case = format!("{size} B records, exactly once");
    let (ceiling_name, ceiling) = if produced.records_per_s() <= consumed.records_per_s() {
        ("plain producer (smaller ceiling)", produced.records_per_s())
    } else {
        ("plain consumer (smaller ceiling)", consumed.records_per_s())
    };
    let rate = mirrored.rate.records_per_s();
    let mirror = |reference: &str, value: f64, target: f64| {
        Row::new("mirror", &case, "logpipe-mirror", rate, "rec/s")
            .against(reference, value)
            .target(target)
            .extra("mb_per_s", mirrored.rate.mb_per_s())
            .extra("commit_ms", mirrored.commit_ms)
            .emit()
    };
    mirror(ceiling_name, ceiling, 0.7)?;
    mirror("kcat -C | kcat -P", piped.records_per_s(), 3.0)?;
    Row::new(
        "mirror",
        &case,
        "logpipe-mirror peak RSS",
        mirrored.peak_rss_mib,
        "MiB",
    )
    .target_at_most(256.0)
    .emit()
}
