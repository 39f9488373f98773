//! The second reference: the ceiling of any three-hop pipeline built on librdkafka on this
//! machine. The same lines go through three hops of plain clients and nothing else, on the same
//! dev clusters, while the pipeline is idle:
//!
//! 1. a producer with the agent's settings sends them from memory, with the agent's four record
//!    headers, to the write cluster (as the agent, minus reading files);
//! 2. a read_committed consumer copies them to the read cluster through a transactional producer,
//!    committing every [`COMMIT_EVERY`] (as the mirror, minus its offsets in the transaction,
//!    its shards and its checks);
//! 3. the same again within the read cluster (as the validator, minus parsing, checking and Avro);
//!
//! and a read_committed reader counts the last hop's records, as the clean topic's reader does.
//! Each copying hop moves a record's parsed headers on with `core::kafka`'s `produce`, as the
//! services do. Each hop does less than the service it stands for, so the pipeline can only be
//! slower; the ratio of the two says what the services' own work costs on top of the client's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::kafka::{
    commit_transaction, produce_waiting, transactional_producer, KafkaConfig, Outgoing, Role,
    TakeHeaders,
};
use logpipe_devkit::measure::{reader, send_waiting, warm_up};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::Message as _;

/// The relay's topics: hop 1's output on the write cluster, hops 2 and 3's on the read cluster.
/// No service reads them (the mirror's and the validator's topics are `raw.*`).
pub(crate) const TOPICS: [&str; 3] = ["bench.relay.1", "bench.relay.2", "bench.relay.3"];
/// The copying hops' transaction interval: the mirror's under load.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Records between two looks at the clock, as the mirror's loop.
const CLOCK_EVERY: u64 = 64;
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the relay did.
pub(crate) struct Relayed {
    /// Lines/s out of the last hop between 10 % and 90 % of the lines: flattering, as hop 1
    /// sends from memory far faster than the copies follow, so much of this window runs with
    /// hop 1 done.
    pub(crate) steady: f64,
    /// Lines/s from the first line sent to the last one counted: what the pipeline's "from the
    /// move to the last clean record" compares with.
    pub(crate) overall: f64,
    /// This process's CPU seconds for the whole relay (every client and its threads).
    pub(crate) cpu_seconds: f64,
}

/// Runs the relay over `lines` (its topics created beforehand with `partitions` each): the
/// write cluster at `write`, the read cluster at `read`.
pub(crate) fn relay(
    write: &str,
    read: &str,
    partitions: i32,
    lines: &[Vec<u8>],
) -> anyhow::Result<Relayed> {
    let total = lines.len() as u64;
    let first: ThreadedProducer<DefaultProducerContext> = KafkaConfig::new(write)
        .client_config(&Role::Producer, "bench-relay-1")
        .create()?;
    warm_up(&first, TOPICS[0])?;
    // The warm-up record is in hop 1's topic: each hop passes it on.
    let expected = total + 1;
    let hops = [
        Copier::new(write, TOPICS[0], read, TOPICS[1], partitions, 2)?,
        Copier::new(read, TOPICS[1], read, TOPICS[2], partitions, 3)?,
    ];
    let counter = reader(
        read,
        "bench-relay",
        TOPICS[2],
        partitions,
        &[("fetch.wait.max.ms", "10")],
    )?;
    let cpu_before = logpipe_devkit::measure::cpu_seconds(Some(std::process::id()));
    let started = Instant::now();
    let failed = AtomicBool::new(false);
    let progress = std::thread::scope(|scope| -> anyhow::Result<Vec<(u64, Instant)>> {
        let copiers: Vec<_> = hops
            .iter()
            .map(|hop| scope.spawn(|| hop.run(expected, &failed)))
            .collect();
        let count = scope.spawn(|| count(&counter, expected, &failed));
        let sent = send(&first, partitions, lines);
        if sent.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        sent?;
        for copier in copiers {
            copier
                .join()
                .map_err(|_| anyhow::anyhow!("relay hop panicked"))??;
        }
        count
            .join()
            .map_err(|_| anyhow::anyhow!("relay counter panicked"))?
    })?;
    let cpu_seconds = logpipe_devkit::measure::cpu_seconds(Some(std::process::id())) - cpu_before;
    let last = progress.last().expect("the counter reached the end").1;
    Ok(Relayed {
        steady: crate::steady_rate(&progress, expected),
        overall: expected as f64 / (last - started).as_secs_f64(),
        cpu_seconds,
    })
}

/// Hop 1: `lines` from memory, spread over the partitions in turn, each with the headers the
/// agent gives a line.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    partitions: i32,
    lines: &[Vec<u8>],
) -> anyhow::Result<()> {
    let paths: Vec<String> = (0..partitions)
        .map(|p| format!("/var/log/game/bench-{p}.log"))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let partition = i as i32 % partitions;
        let headers = logpipe_agent::line_headers(
            "bench-host",
            &paths[partition as usize],
            "0000000000000001",
            i as u64,
        );
        send_waiting(
            producer,
            BaseRecord::<(), [u8]>::to(TOPICS[0])
                .partition(partition)
                .payload(line.as_slice())
                .headers(headers),
        )?;
    }
    Ok(producer.flush(TIMEOUT)?)
}

/// One copying hop: a read_committed consumer of every partition of `from_topic`, a
/// transactional producer into the same partition of `to_topic`.
struct Copier {
    consumer: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
    to_topic: std::ffi::CString,
}

impl Copier {
    fn new(
        from: &str,
        from_topic: &str,
        to: &str,
        to_topic: &str,
        partitions: i32,
        hop: u8,
    ) -> anyhow::Result<Copier> {
        let consumer = reader(from, "bench-relay", from_topic, partitions, &[])?;
        let role = Role::TransactionalProducer {
            transactional_id: format!("bench-relay-{hop}"),
        };
        let producer = transactional_producer(
            KafkaConfig::new(to).client_config(&role, &format!("bench-relay-{hop}")),
        )?;
        producer.init_transactions(TIMEOUT)?;
        Ok(Copier {
            consumer,
            producer,
            to_topic: std::ffi::CString::new(to_topic)?,
        })
    }

    /// Copies `expected` records, committing every [`COMMIT_EVERY`] under load and at once when
    /// nothing more is fetched, as the services do.
    fn run(&self, expected: u64, failed: &AtomicBool) -> anyhow::Result<()> {
        let result = self.copy(expected, failed);
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn copy(&self, expected: u64, failed: &AtomicBool) -> anyhow::Result<()> {
        let mut copied = 0u64;
        let mut open = false;
        let mut committed = Instant::now();
        while copied < expected && !failed.load(Ordering::Relaxed) {
            let wait = if open {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
            let fetched = self.consumer.poll(wait);
            let caught_up = fetched.is_none();
            if let Some(message) = fetched {
                let mut message = message.context("relay: reading")?;
                if !open {
                    self.producer.begin_transaction()?;
                    open = true;
                }
                let headers = message.take_headers();
                let mut record = Outgoing {
                    topic: &self.to_topic,
                    partition: Some(message.partition()),
                    key: message.key(),
                    payload: message.payload(),
                    timestamp: message.timestamp().to_millis(),
                    headers,
                };
                produce_waiting(&self.producer, &mut record, TIMEOUT)?;
                copied += 1;
            }
            let due = caught_up
                || copied == expected
                || (copied.is_multiple_of(CLOCK_EVERY) && committed.elapsed() >= COMMIT_EVERY);
            if open && due {
                commit_transaction(&self.producer, TIMEOUT)?;
                open = false;
                committed = Instant::now();
            }
        }
        Ok(())
    }
}

/// Counts the last hop's records as they become visible, reporting every 1 %.
fn count(
    consumer: &BaseConsumer,
    expected: u64,
    failed: &AtomicBool,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let step = (expected / 100).max(1);
    let mut progress = Vec::with_capacity(101);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = 0u64;
    while seen < expected {
        anyhow::ensure!(!failed.load(Ordering::Relaxed), "a relay hop failed");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay delivered {seen} of {expected} records within 600 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.context("relay: counting")?;
            seen += 1;
            if seen.is_multiple_of(step) || seen == expected {
                progress.push((seen, Instant::now()));
            }
        }
    }
    Ok(progress)
}
