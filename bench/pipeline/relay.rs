//! The second reference: the ceiling of the pipeline's two transactional hops, built of plain
//! librdkafka clients and nothing else, on the same dev clusters, while the pipeline is idle.
//!
//! A producer with the shared producer settings every agent starts from first writes the lines,
//! with the agent's four record headers (no key), to the write cluster (untimed: the backlog, as
//! the pipeline's is in files). Then, timed and at once:
//!
//! - a read_committed consumer copies them to the read cluster through a transactional producer
//!   (as the mirror, minus its offsets in the transaction, its shards and its checks);
//! - a second one copies those within the read cluster (as the validator, minus parsing,
//!   checking and Avro).
//!
//! The relay ends when the second copy's last transaction is committed (its records visible);
//! its rate is the lines over the time from the copies' start to then, start-up included (a
//! 10-90 % window would be read off a few 500 ms transactions, each made visible at once).
//! Each copy commits every [`COMMIT_EVERY`] under load and at once when nothing more is fetched,
//! and moves a record's parsed headers on with `core::kafka`'s `produce`, as the services do.
//! Each does less than the service it stands for, and the pipeline runs its agent on the same
//! cores beside them, so the pipeline can only be slower; the ratio says what the services' own
//! work costs on top of the client's, and the relay's own rate against the first reference what
//! two bare transactional hops reach on this machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::kafka::{
    commit_transaction, produce_waiting, transactional_producer, KafkaConfig, Outgoing, Role,
    TakeHeaders,
};
use logpipe_devkit::measure::{reader, send_waiting, warm_up};
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
    /// Lines/s from the copies' start to the second copy's last commit.
    pub(crate) rate: f64,
    /// This process's CPU seconds for both copies (every client and its threads).
    pub(crate) cpu_seconds: f64,
    /// This process's CPU seconds for writing the backlog: a bare first hop's cost (a plain
    /// producer with the shared producer settings and the agent's headers, from memory).
    pub(crate) first_cpu_seconds: f64,
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
    let cpu = || logpipe_devkit::measure::cpu_seconds(Some(std::process::id()));
    let before_first = cpu();
    send(&first, partitions, lines)?;
    let first_cpu_seconds = cpu() - before_first;
    let hops = [
        Copier::new(write, TOPICS[0], read, TOPICS[1], partitions, 2)?,
        Copier::new(read, TOPICS[1], read, TOPICS[2], partitions, 3)?,
    ];
    let cpu_before = cpu();
    let started = Instant::now();
    let failed = AtomicBool::new(false);
    let ended = std::thread::scope(|scope| -> anyhow::Result<Instant> {
        let copiers: Vec<_> = hops
            .iter()
            .map(|hop| scope.spawn(|| hop.run(expected, &failed)))
            .collect();
        let mut last = started;
        for copier in copiers {
            last = copier
                .join()
                .map_err(|_| anyhow::anyhow!("relay hop panicked"))??;
        }
        Ok(last)
    })?;
    let cpu_seconds = cpu() - cpu_before;
    Ok(Relayed {
        rate: expected as f64 / (ended - started).as_secs_f64(),
        cpu_seconds,
        first_cpu_seconds,
    })
}

/// The backlog: `lines` from memory, spread over the partitions in turn, each with the headers the
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
    from: String,
    from_topic: String,
    partitions: i32,
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
        let role = Role::TransactionalProducer {
            transactional_id: format!("bench-relay-{hop}"),
        };
        let producer = transactional_producer(
            KafkaConfig::new(to).client_config(&role, &format!("bench-relay-{hop}")),
        )?;
        producer.init_transactions(TIMEOUT)?;
        Ok(Copier {
            from: from.to_owned(),
            from_topic: from_topic.to_owned(),
            partitions,
            producer,
            to_topic: std::ffi::CString::new(to_topic)?,
        })
    }

    /// Copies `expected` records, committing every [`COMMIT_EVERY`] under load and at once when
    /// nothing more is fetched, as the services do; returns when the last commit was done.
    fn run(&self, expected: u64, failed: &AtomicBool) -> anyhow::Result<Instant> {
        let result = self.copy(expected, failed);
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn copy(&self, expected: u64, failed: &AtomicBool) -> anyhow::Result<Instant> {
        // Assigned only now: it would otherwise fetch ahead before the clock starts.
        let consumer = reader(
            &self.from,
            "bench-relay",
            &self.from_topic,
            self.partitions,
            &[],
        )?;
        let mut copied = 0u64;
        let mut open = false;
        let mut committed = Instant::now();
        let deadline = committed + Duration::from_secs(600);
        while copied < expected {
            anyhow::ensure!(
                !failed.load(Ordering::Relaxed),
                "the other relay hop failed"
            );
            let wait = if open {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
            let fetched = consumer.poll(wait);
            let caught_up = fetched.is_none();
            anyhow::ensure!(
                !caught_up || Instant::now() < deadline,
                "the relay copied {copied} of {expected} records within 600 s"
            );
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
        Ok(committed)
    }
}
