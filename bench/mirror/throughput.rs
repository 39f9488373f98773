//! Mirror throughput in exactly-once mode, next to ceilings measured in the same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p logpipe-mirror --bench throughput`
//! (needs `kcat` on PATH). Environment: `BENCH_PARTITIONS` (default 16), `BENCH_MB` (total
//! megabytes per record size, default 40). The dev cluster keeps at most 5 MiB per partition, so
//! keep `BENCH_MB / BENCH_PARTITIONS` at 3 or below, or retention eats records and the consumer
//! phase stalls.
//!
//! For each record size (200 B, 1 KB), on two dev clusters (write and read side, one broker each):
//! 1. plain producer: an idempotent rdkafka producer fills the source topic (ceiling 1);
//! 2. plain consumer: an assign-mode rdkafka consumer drains the source topic (ceiling 2);
//! 3. `kcat -C | kcat -P`: the naive pipe copies the source topic to another target topic;
//! 4. the mirror (release build, exactly once, default commit interval and buffer) copies the
//!    source topic; measured from its first committed record to its last, so start-up (group
//!    join) is not counted; peak RSS read from `/proc`.
//!
//! Producer, consumer, kcat and mirror share two cores with the clusters, so the ratios, not
//! the absolute numbers, are what this measures.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logpipe_devkit::harness::{free_addr, wait_until, write_file, DevCluster, Process};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const SOURCE: &str = "raw.bench";
const KCAT_TARGET: &str = "kcat.bench";
const STATE_TOPIC: &str = "_lp.mirror.default.state";
const SHARDS: i32 = 4;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Rate {
    records: usize,
    bytes: usize,
    elapsed: Duration,
}

impl Rate {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
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

fn fill(bootstrap: &str, topic: &str, partitions: i32, records: usize, size: usize) -> anyhow::Result<Rate> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("batch.size", "1048576")
        .set("compression.type", "lz4")
        .create()?;
    // Values are made before the clock starts: the ceiling is the producer's, not the generator's.
    let values: Vec<Vec<u8>> = (0..records).map(|i| value(i, size)).collect();
    let started = Instant::now();
    for (i, v) in values.iter().enumerate() {
        // Round-robin: every partition gets the same share and stays under the dev cluster's
        // 5 MiB per partition.
        let mut record = BaseRecord::<(), [u8]>::to(topic).partition(i as i32 % partitions).payload(&v[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(Rate { records, bytes: records * size, elapsed: started.elapsed() })
}

fn drain(bootstrap: &str, topic: &str, partitions: i32, records: usize, size: usize) -> anyhow::Result<Rate> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < records {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => anyhow::bail!("plain consumer: {e}"),
            None => anyhow::bail!("plain consumer stalled at {seen} of {records}"),
        }
    }
    Ok(Rate { records, bytes: records * size, elapsed: started.elapsed() })
}

fn kcat_pipe(source: &str, target: &str, records: usize, size: usize) -> anyhow::Result<Rate> {
    let started = Instant::now();
    let mut consumer = Command::new("kcat")
        .args(["-C", "-b", source, "-t", SOURCE, "-e", "-q", "-o", "beginning", "-X", "isolation.level=read_committed"])
        .stdout(Stdio::piped())
        .spawn()?;
    let status = Command::new("kcat")
        .args(["-P", "-b", target, "-t", KCAT_TARGET, "-X", "enable.idempotence=true", "-X", "linger.ms=10"])
        .stdin(consumer.stdout.take().expect("piped stdout"))
        .status()?;
    consumer.wait()?;
    anyhow::ensure!(status.success(), "kcat -P failed: {status}");
    Ok(Rate { records, bytes: records * size, elapsed: started.elapsed() })
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else { return 0.0 };
    let body = response.text().await.unwrap_or_default();
    body.lines()
        .filter_map(|l| l.strip_prefix(name).filter(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter_map(|r| r.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn mirror(write: &DevCluster, read: &DevCluster, records: usize, size: usize) -> anyhow::Result<(Rate, f64)> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr();
    let config = write_file(
        dir.path(),
        "mirror.toml",
        &format!(
            "[source]\nbootstrap = \"{}\"\n[target]\nbootstrap = \"{}\"\n[topics]\ninclude = [\"raw\\\\..*\"]\n[telemetry]\nlisten = \"{addr}\"\n",
            write.bootstrap(),
            read.bootstrap()
        ),
    )?;
    let mut process = Process::start("logpipe-mirror", &["run", "--config", config.to_str().unwrap()])?;
    process.wait_ready(addr, Duration::from_secs(60)).await?;
    wait_until(Duration::from_secs(120), || async { metric(addr, "logpipe_mirror_records_total").await > 0.0 }).await?;
    let started = Instant::now();
    // Records of the first commit were copied before `started`: count only those after it.
    let before = metric(addr, "logpipe_mirror_records_total").await as usize;
    wait_until(Duration::from_secs(600), || async { metric(addr, "logpipe_mirror_records_total").await >= records as f64 }).await?;
    let elapsed = started.elapsed();
    let rss = peak_rss_mb(process.pid());
    process.terminate(Duration::from_secs(30)).await?;
    let copied = records - before.min(records);
    Ok((Rate { records: copied, bytes: copied * size, elapsed }, rss))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let partitions = env("BENCH_PARTITIONS", 16) as i32;
    let megabytes = env("BENCH_MB", 40);
    println!("# logpipe-mirror throughput (exactly once) vs ceilings, {partitions} partitions, {megabytes} MB per size\n");
    println!("| record | plain producer | plain consumer | kcat -C \\| kcat -P | mirror | mirror / min(ceilings) | mirror / kcat | mirror peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    for size in [200usize, 1024] {
        let records = megabytes * 1_000_000 / size;
        let write = DevCluster::start_as("write", 1, &[(SOURCE, partitions)]).await?;
        let read = DevCluster::start_as("read", 1, &[(SOURCE, partitions), (KCAT_TARGET, partitions), (STATE_TOPIC, SHARDS)]).await?;
        let (w, r) = (write.bootstrap().to_owned(), read.bootstrap().to_owned());
        let produced = tokio::task::spawn_blocking(move || fill(&w, SOURCE, partitions, records, size)).await??;
        let w = write.bootstrap().to_owned();
        let consumed = tokio::task::spawn_blocking(move || drain(&w, SOURCE, partitions, records, size)).await??;
        let w = write.bootstrap().to_owned();
        let piped = tokio::task::spawn_blocking(move || kcat_pipe(&w, &r, records, size)).await??;
        let (mirrored, rss) = mirror(&write, &read, records, size).await?;
        let ceiling = produced.records_per_s().min(consumed.records_per_s());
        let cell = |r: &Rate| format!("{:.0} rec/s, {:.1} MB/s", r.records_per_s(), r.mb_per_s());
        println!(
            "| {size} B x {records} | {} | {} | {} | {} | {:.2}x | {:.2}x | {rss:.0} MiB (budget 256 MiB) |",
            cell(&produced),
            cell(&consumed),
            cell(&piped),
            cell(&mirrored),
            mirrored.records_per_s() / ceiling,
            mirrored.records_per_s() / piped.records_per_s(),
        );
    }
    Ok(())
}
