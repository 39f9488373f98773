//! What the benchmarks in `bench/` measure with: their sizing from the
//! environment, a records/bytes/time rate, the generated lines read back, and a process's CPU time
//! and memory from `/proc`. Each benchmark used to carry its own copy of these; one copy means
//! every benchmark counts CPU ticks and peak RSS the same way, so their rows compare.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer as _, ProducerContext,
    ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// A benchmark size from the environment variable `name`, or `default` when it is unset or does
/// not parse: benchmarks run with defaults under `cargo bench` and are resized by `bench/run` or
/// by hand without editing code.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records (and their bytes) moved in a span of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub records: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

impl Rate {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// `12345 rec/s, 6.2 MB/s (500000 rec in 40.50 s)`: how the benchmarks' tables show a rate.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} rec/s, {:.1} MB/s ({} rec in {:.2} s)",
            self.records_per_s(),
            self.mb_per_s(),
            self.records,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The lines of every file of a directory (the load generator's `*.log` files), without their
/// terminators, files in name order: the reference senders send the same lines from memory that
/// the service under test reads from the files.
pub fn read_lines(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        paths.push(entry?.path());
    }
    paths.sort();
    let mut lines = Vec::new();
    for path in paths {
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        lines.extend(
            data.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    Ok(lines)
}

/// Sends one record through a threaded producer, waiting while its queue is full: a reference
/// sender measures how fast the client drains, so a full queue is back-pressure, not an error.
// rdkafka's `send` hands the record back in its `Err` (so it can be retried): large by design.
#[allow(clippy::result_large_err)]
pub fn send_waiting<C, K, P>(
    producer: &ThreadedProducer<C>,
    record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> anyhow::Result<()>
where
    C: ProducerContext + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    retry_while_full(
        record,
        |r| producer.send(r),
        || std::thread::sleep(Duration::from_millis(1)),
    )
}

/// Sends one record to `topic` and waits for it, so that a reference sender's clock starts warm:
/// an idempotent librdkafka producer sends nothing until it holds a producer id, which it
/// requests on a 500 ms timer after start (or on its first metadata answer). Timed cold, a
/// ~1 s reference run is mostly that wait, and the services it is compared with, which start
/// their producers while they set up, beat their own "ceiling".
pub fn warm_up(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
) -> anyhow::Result<()> {
    send_waiting(producer, warm_up_record(topic))?;
    Ok(producer.flush(Duration::from_secs(60))?)
}

/// [`warm_up`] for a [`BaseProducer`].
pub fn warm_up_polling(producer: &BaseProducer, topic: &str) -> anyhow::Result<()> {
    send_polling(producer, warm_up_record(topic))?;
    Ok(producer.flush(Duration::from_secs(60))?)
}

fn warm_up_record(topic: &str) -> BaseRecord<'_, (), [u8]> {
    BaseRecord::to(topic).payload(b"warm-up".as_slice())
}

/// The partition librdkafka's default partitioner (`consistent_random`: CRC32 of the key, modulo
/// the partition count) gives a record with key `key`: where a producer with default settings,
/// the agent's, writes it. A benchmark that must spread keyed records like its reference spreads
/// unkeyed ones asks here instead of copying the hash.
pub fn default_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(!key.is_empty() && partitions > 0, "a key and partitions");
    // SAFETY: the consistent partitioners read only `key` (`keylen` bytes) and the count; the
    // topic handle and opaques are unused by them, and a non-empty key never takes the random
    // branch.
    unsafe {
        rdkafka::bindings::rd_kafka_msg_partitioner_consistent_random(
            std::ptr::null(),
            key.as_ptr().cast(),
            key.len(),
            partitions,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// The producer benchmarks fill their input topics with before the clock starts (idempotent,
/// lz4, 1 MiB batches, 10 ms linger): fast, so the set-up is short, and one setting for every
/// benchmark, so their inputs are batched and compressed alike.
pub fn filling_producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("batch.size", "1048576")
        .set("compression.type", "lz4")
        .create()?)
}

/// [`send_waiting`] for a [`BaseProducer`], which has no thread of its own: while the queue is
/// full it serves delivery reports (`poll`) so that the queue drains.
// rdkafka's `send` hands the record back in its `Err` (so it can be retried): large by design.
#[allow(clippy::result_large_err)]
pub fn send_polling<C, K, P>(
    producer: &BaseProducer<C>,
    record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> anyhow::Result<()>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    retry_while_full(
        record,
        |r| producer.send(r),
        || producer.poll(Duration::from_millis(5)),
    )
}

/// Calls `send` until it takes the record, calling `wait` whenever the queue is full.
fn retry_while_full<R>(
    mut record: R,
    mut send: impl FnMut(R) -> Result<(), (KafkaError, R)>,
    mut wait: impl FnMut(),
) -> anyhow::Result<()> {
    loop {
        match send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                wait();
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// A read_committed consumer assigned every partition of `topic` from the beginning, with no
/// commits, plus `settings`: how a benchmark counts what became visible downstream without
/// joining a group (no rebalance pause in the measurement).
pub fn reader(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<BaseConsumer> {
    let beginning = vec![Offset::Beginning; partitions.max(0) as usize];
    reader_at(bootstrap, group, topic, &beginning, settings)
}

/// [`reader`] from `start[p]` in each partition `p`: a benchmark that reads only what comes after
/// a point (its earlier phase) starts there instead of reading the topic again.
pub fn reader_at(
    bootstrap: &str,
    group: &str,
    topic: &str,
    start: &[Offset],
    settings: &[(&str, &str)],
) -> anyhow::Result<BaseConsumer> {
    let consumer = unassigned_reader(bootstrap, group, settings)?;
    let mut assignment = TopicPartitionList::new();
    for (p, offset) in start.iter().enumerate() {
        assignment.add_partition_offset(topic, p as i32, *offset)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn unassigned_reader(
    bootstrap: &str,
    group: &str,
    settings: &[(&str, &str)],
) -> anyhow::Result<BaseConsumer> {
    let mut config = crate::harness::read_committed_config(bootstrap, group);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    Ok(config.create()?)
}

/// Where each partition of a topic ends for a read_committed reader (its last stable offset):
/// what a benchmark polls to see a hop's output grow without reading it, so that measuring
/// costs one request per poll instead of a consumer's CPU for every record.
pub struct Ends {
    consumer: BaseConsumer,
    wanted: TopicPartitionList,
}

impl Ends {
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Ends> {
        let mut wanted = TopicPartitionList::new();
        for p in 0..partitions {
            wanted.add_partition_offset(topic, p, Offset::End)?;
        }
        Ok(Ends {
            consumer: unassigned_reader(bootstrap, group, &[])?,
            wanted,
        })
    }

    /// Each partition's end now, in partition order (one ListOffsets request for all of them).
    pub fn now(&self) -> anyhow::Result<Vec<i64>> {
        let found = self
            .consumer
            .offsets_for_times(self.wanted.clone(), Duration::from_secs(10))?;
        found
            .elements()
            .iter()
            .map(|e| match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(end)) => Ok(end),
                (result, offset) => anyhow::bail!(
                    "the end of {} [{}]: {offset:?} {result:?}",
                    e.topic(),
                    e.partition()
                ),
            })
            .collect()
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) of a process so far, `None` for this process; 0 when it cannot be
/// read (the process is gone).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    stat_seconds(pid).map_or(0.0, |[user, system, _, _]| user + system)
}

/// CPU seconds (user + system) of this process's children that it waited for (a `kcat` pair run
/// to completion): the kernel adds them to the parent only once they are reaped.
pub fn waited_children_cpu_seconds() -> f64 {
    stat_seconds(None).map_or(0.0, |[_, _, user, system]| user + system)
}

fn stat_seconds(pid: Option<u32>) -> Option<[f64; 4]> {
    parse_stat(&std::fs::read_to_string(proc_path(pid, "stat")).ok()?)
}

/// utime, stime, cutime, cstime of a `/proc/<pid>/stat` line, in seconds.
fn parse_stat(stat: &str) -> Option<[f64; 4]> {
    // After the command name (which may contain spaces and parentheses): state is field 3,
    // utime 14, stime 15, cutime 16, cstime 17 (1-based, whole line).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest
        .split_whitespace()
        .skip(11)
        .map(|f| f.parse::<f64>().map(|t| t / CLOCK_TICKS));
    let mut next = || fields.next()?.ok();
    Some([next()?, next()?, next()?, next()?])
}

/// Peak resident memory (`VmHWM`) of a process in MiB, 0 when it cannot be read.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resident memory now (`VmRSS`) of a process in MiB, 0 when it cannot be read.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(proc_path(Some(pid), "status")).unwrap_or_default();
    status_kib(&status, field).map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// A `kB` field (`VmHWM:`, `VmRSS:`) of a `/proc/<pid>/status` text.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    pid.map_or_else(
        || format!("/proc/self/{file}"),
        |pid| format!("/proc/{pid}/{file}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 30 20 20 0 1 0 100";
        assert_eq!(parse_stat(stat), Some([2.5, 0.5, 0.3, 0.2]));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_seconds(None) > 0.0);
        let pid = std::process::id();
        assert!(peak_rss_mib(pid) >= rss_mib(pid) && rss_mib(pid) > 0.0);
        assert_eq!(peak_rss_mib(u32::MAX), 0.0);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn the_default_partition_is_the_keys_crc32_modulo_the_count() {
        // CRC-32's check value for "123456789" is 0xCBF43926 = 3,421,780,262.
        assert_eq!(default_partition(b"123456789", 4), 2);
        assert_eq!(default_partition(b"123456789", 7), 5);
        // 564,367,953.
        assert_eq!(default_partition(b"bench-host|/var/log/game/0.log", 4), 1);
        assert_eq!(default_partition(b"bench-host|/var/log/game/0.log", 7), 2);
    }

    #[test]
    fn rates_divide_by_the_elapsed_time() {
        let rate = Rate {
            records: 1000,
            bytes: 2_000_000,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(rate.records_per_s(), 2000.0);
        assert_eq!(rate.mb_per_s(), 4.0);
    }

    #[test]
    fn lines_are_read_in_file_name_order_without_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.log"), "3\n\n4\n").unwrap();
        std::fs::write(dir.path().join("a.log"), "1\n2").unwrap();
        assert_eq!(
            read_lines(dir.path()).unwrap(),
            vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec(), b"4".to_vec()]
        );
    }
}
