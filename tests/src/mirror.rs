//! Shared setup of the mirror's end-to-end tests: a write and a read dev cluster, the mirror's
//! config, producing records with unique ids, and reading the mirror's metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::{free_addr, write_file, DevCluster, Process};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

use crate::{metrics, service};

/// The mirror's state topic for the default name.
pub const STATE_TOPIC: &str = "_lp.mirror.default.state";

/// A write-side and a read-side cluster with `topics` on both and the state topic on the read
/// side, with `shards` partitions.
pub async fn clusters(
    topics: &[(&str, i32)],
    shards: i32,
) -> anyhow::Result<(DevCluster, DevCluster)> {
    clusters_retaining(topics, shards, None).await
}

/// [`clusters`], keeping `retention_bytes` per partition instead of the dev cluster's default.
pub async fn clusters_retaining(
    topics: &[(&str, i32)],
    shards: i32,
    retention_bytes: Option<u64>,
) -> anyhow::Result<(DevCluster, DevCluster)> {
    let write = DevCluster::start_retaining("write", 3, topics, retention_bytes).await?;
    let mut read_topics = topics.to_vec();
    read_topics.push((STATE_TOPIC, shards));
    let read = DevCluster::start_retaining("read", 3, &read_topics, retention_bytes).await?;
    Ok((write, read))
}

/// Writes a mirror config into `dir` and returns its path and telemetry address; `extra` holds
/// top-level keys (a `commit_interval_ms` there replaces the tests' default of 100). The
/// instance is named after the file, so each config is a distinct static member.
pub fn mirror_config(
    dir: &Path,
    name: &str,
    write: &DevCluster,
    read: &DevCluster,
    extra: &str,
) -> anyhow::Result<(PathBuf, SocketAddr)> {
    let addr = free_addr();
    let commit = if extra.contains("commit_interval_ms") {
        ""
    } else {
        "commit_interval_ms = 100\n"
    };
    let instance = Path::new(name)
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    let text = format!(
        "{commit}session_timeout_ms = 3000\ninstance = \"{instance}\"\n{extra}\n\
         [source]\nbootstrap = \"{}\"\n[target]\nbootstrap = \"{}\"\n\
         [topics]\ninclude = [\"raw\\\\..*\"]\nrefresh_interval_ms = 1000\n\
         [telemetry]\nlisten = \"{addr}\"\n",
        write.bootstrap(),
        read.bootstrap()
    );
    Ok((write_file(dir, name, &text)?, addr))
}

/// Starts a mirror and waits until it is ready.
pub async fn start_mirror(config: &Path, addr: SocketAddr) -> anyhow::Result<Process> {
    service::start("logpipe-mirror", config, addr).await
}

/// An idempotent producer to a dev cluster (what the agent uses).
pub fn producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "0")
        .create()?)
}

/// Produces records `ids` (value `id-<n>`, key `k-<n % 7>`) round-robin over `partitions`
/// partitions and waits for every acknowledgement.
pub fn produce_ids(
    producer: &BaseProducer,
    topic: &str,
    partitions: i32,
    ids: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    for id in ids {
        let value = format!("id-{id:09}");
        let key = format!("k-{}", id % 7);
        let mut record = BaseRecord::to(topic)
            .partition((id % partitions as u64) as i32)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// Values of a topic's records, per partition, in offset order.
pub fn values_by_partition(records: &[OwnedMessage]) -> BTreeMap<i32, Vec<Vec<u8>>> {
    let mut map: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for record in records {
        map.entry(record.partition())
            .or_default()
            .push(record.payload().unwrap_or_default().to_vec());
    }
    map
}

/// Asserts that every id in `0..count` appears exactly once in `records`.
pub fn assert_exactly_once(records: &[OwnedMessage], count: u64) {
    let mut seen = vec![0u32; count as usize];
    for record in records {
        let value = std::str::from_utf8(record.payload().expect("a value")).expect("utf-8");
        let id: usize = value
            .strip_prefix("id-")
            .and_then(|n| n.parse().ok())
            .expect("an id-<n> value");
        seen[id] += 1;
    }
    let missing = seen.iter().filter(|n| **n == 0).count();
    let duplicated = seen.iter().filter(|n| **n > 1).count();
    assert_eq!(
        (missing, duplicated),
        (0, 0),
        "{missing} ids missing and {duplicated} duplicated out of {count}"
    );
    assert_eq!(records.len() as u64, count);
}

/// Number of committed records of a topic on a cluster (sum of high watermarks minus low).
pub fn record_count(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            topic,
            p,
            Duration::from_secs(10),
        )?;
        total += high - low;
    }
    Ok(total)
}

/// Produces ids `0..count` to `topic` in the background, in chunks with pauses, so that records
/// keep flowing while a test kills things.
pub fn background_load(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: u64,
    chunk: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer = producer(&bootstrap)?;
        let mut next = 0;
        while next < count {
            let end = (next + chunk).min(count);
            produce_ids(&producer, &topic, partitions, next..end)?;
            next = end;
            std::thread::sleep(pause);
        }
        Ok(())
    })
}

/// Waits until the mirror at `addr` has committed source positions summing to `count` (every
/// record of a topic that started empty).
pub async fn wait_committed(
    addr: SocketAddr,
    topic: &str,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let labels = [("topic", topic)];
    let committed = || metrics::sum(addr, mirror::COMMITTED_OFFSET, &labels);
    if logpipe_devkit::harness::wait_until(timeout, || async {
        committed().await == Some(count as f64)
    })
    .await
    .is_err()
    {
        anyhow::bail!(
            "the mirror committed {:?} of {count} records within {timeout:?}",
            committed().await
        );
    }
    Ok(())
}

/// The exactly-once check: the target topic holds every id once, and each target partition
/// holds exactly the source partition's records in the source's order.
pub async fn assert_mirrored(
    write: &DevCluster,
    read: &DevCluster,
    topic: &str,
    count: u64,
) -> anyhow::Result<()> {
    let target = read.read_topic(topic, Duration::from_secs(60)).await?;
    assert_exactly_once(&target, count);
    let source = write.read_topic(topic, Duration::from_secs(60)).await?;
    assert_eq!(
        values_by_partition(&source),
        values_by_partition(&target),
        "every partition holds the source's records in order"
    );
    Ok(())
}

/// Adds a process's logs to an error, so a failed wait explains itself.
pub trait WithLogs<T> {
    fn logs_of(self, process: &Process) -> anyhow::Result<T>;
}

impl<T> WithLogs<T> for anyhow::Result<T> {
    fn logs_of(self, process: &Process) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{e:#}\n{}", process.logs()))
    }
}
