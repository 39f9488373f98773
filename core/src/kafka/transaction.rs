//! The plumbing of an exactly-once consume-transform-produce loop (the validator, the CEP worker):
//! fencing at start, enqueueing under back-pressure, committing a batch's offsets inside its
//! transaction, rewinding after an abort, and the lag a group consumer reports. The loops differ
//! in what they make of a batch, not in how a batch is committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Readiness;

use super::{produce, Outgoing, Partition};

/// Whether a transaction error ends the producer (fenced by a newer instance with the same
/// transactional id, or a state that neither an abort nor a retry leaves).
pub fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => {
            t.is_fatal() || (!t.txn_requires_abort() && !t.is_retriable())
        }
        _ => false,
    }
}

/// Creates a loop's transactional producer from its client config. Nobody reads its success
/// reports (a record that fails puts the transaction in an abortable state, so its commit fails,
/// and [`commit_transaction`] waits on the in-flight count), so librdkafka reports only
/// failures: each success report was an event for rdkafka's polling thread to wake for and
/// serve (~7% of the validator's CPU in the pipeline), and an acknowledged record now leaves the
/// in-flight count when acknowledged, not when that thread gets to it.
pub fn transactional_producer(
    mut config: ClientConfig,
) -> KafkaResult<ThreadedProducer<DefaultProducerContext>> {
    config.set("delivery.report.only.error", "true");
    config.create()
}

/// Initialises transactions (fencing older producers of the same id), retrying with backoff
/// while Kafka is unreachable and reporting it on the readiness check `check`. False when
/// shutdown came first.
pub async fn init_transactions<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
    readiness: &Readiness,
    check: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut delay = Duration::from_millis(500);
    loop {
        match tokio::task::block_in_place(|| producer.init_transactions(timeout)) {
            Ok(()) => return Ok(true),
            Err(e) if is_fatal(&e) => {
                return Err(anyhow::Error::new(e).context("initialising transactions"))
            }
            Err(e) => {
                tracing::warn!("initialising transactions: {e}; retrying");
                readiness.not_ready(check, format!("initialising transactions: {e}"));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Enqueues a record, waiting while the producer's queue is full (at most `timeout`).
pub fn send_waiting<C: ProducerContext<DeliveryOpaque = ()> + 'static>(
    producer: &ThreadedProducer<C>,
    record: BaseRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let mut record = Some(record);
    while_full(timeout, || {
        match producer.send(record.take().expect("given back by every failed send")) {
            Ok(()) => Ok(()),
            Err((e, back)) => {
                record = Some(back);
                Err(e)
            }
        }
    })
}

/// [`send_waiting`] for a record carrying a fetched record's [`HeaderList`](super::HeaderList).
pub fn produce_waiting<C: ProducerContext<DeliveryOpaque = ()> + 'static>(
    producer: &ThreadedProducer<C>,
    record: &mut Outgoing<'_>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    while_full(timeout, || {
        produce(producer, record, ()).map_err(KafkaError::MessageProduction)
    })
}

/// Runs `attempt` until it enqueues, again while the queue is full, for at most `timeout`.
fn while_full(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    // The clock is read only once the queue is full: this runs for every record.
    let mut deadline = None;
    loop {
        match attempt() {
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                if Instant::now() < *deadline.get_or_insert_with(|| Instant::now() + timeout) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            done => return done,
        }
    }
}

/// Commits the open transaction as soon as the cluster has acknowledged everything in it.
///
/// rdkafka's `commit_transaction` first flushes, and its flush polls in steps of up to 100 ms;
/// with a [`ThreadedProducer`] its own thread serves the delivery reports, so that poll waits out
/// the whole step and every commit cost about 100 ms whatever it held (the mirror found the same
/// and waits in 1 ms steps). Waiting here in 1 ms steps of librdkafka's own flush, which also sends
/// partly filled batches at once instead of lingering, leaves the commit nothing to wait for.
pub fn commit_transaction<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    let native = producer.client().native_ptr();
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        // SAFETY: the handle is valid while `producer` lives, and rd_kafka_flush is thread safe.
        unsafe { rdkafka::bindings::rd_kafka_flush(native, 1) };
    }
    producer.commit_transaction(deadline.saturating_duration_since(Instant::now()))
}

/// A batch's first and last offset per partition.
pub fn batch_offsets(batch: &[OwnedMessage]) -> BTreeMap<Partition, (i64, i64)> {
    let mut offsets: BTreeMap<Partition, (i64, i64)> = BTreeMap::new();
    for m in batch {
        let entry = offsets
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert((m.offset(), m.offset()));
        entry.0 = entry.0.min(m.offset());
        entry.1 = entry.1.max(m.offset());
    }
    offsets
}

/// Adds the positions after a batch (`last + 1` per partition) to the open transaction, with
/// the group's metadata so that a zombie of an older generation is fenced. A consumer that is
/// not in the group (any more) fails with `UnknownMemberId`: abort and read the batch again.
pub fn send_offsets<C: ProducerContext + 'static, K: ConsumerContext + 'static>(
    producer: &ThreadedProducer<C>,
    consumer: &impl Consumer<K>,
    offsets: &BTreeMap<Partition, (i64, i64)>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), (_, last)) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(last + 1))?;
    }
    let group = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(
        RDKafkaErrorCode::UnknownMemberId,
    ))?;
    producer.send_offsets_to_transaction(&list, &group, timeout)
}

/// Seeks every partition of an aborted batch back to its first offset.
pub fn rewind<K: ConsumerContext + 'static>(
    consumer: &impl Consumer<K>,
    offsets: &BTreeMap<Partition, (i64, i64)>,
    timeout: Duration,
) {
    for ((topic, partition), (first, _)) in offsets {
        if let Err(e) = consumer.seek(topic, *partition, Offset::Offset(*first), timeout) {
            tracing::warn!(topic, partition, "rewinding: {e}");
        }
    }
}

/// Sets `metric{topic, partition}` to the records between the consumer's position and the end of
/// each assigned partition.
pub fn report_lag<K: ConsumerContext + 'static>(consumer: &impl Consumer<K>, metric: &'static str) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    for element in assignment.elements() {
        if let Some(behind) = records_behind(consumer, element.topic(), element.partition()) {
            metrics::gauge!(metric, "topic" => element.topic().to_owned(), "partition" => element.partition().to_string())
                .set(behind as f64);
        }
    }
}

/// How many records an assigned partition's consumer is behind the partition's end: from its
/// position, or its group's committed offset before it has read anything, or the partition's
/// start when there is neither (the consumers here reset to the earliest offset). `None` when
/// the broker does not answer.
pub fn records_behind<K: ConsumerContext + 'static>(
    consumer: &impl Consumer<K>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let timeout = Duration::from_secs(2);
    let valid = |list: KafkaResult<TopicPartitionList>| {
        list.ok()?
            .find_partition(topic, partition)?
            .offset()
            .to_raw()
            .filter(|o| *o >= 0)
    };
    let (low, high) =
        tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, partition, timeout))
            .ok()?;
    let position = valid(consumer.position())
        .or_else(|| {
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(topic, partition);
            tokio::task::block_in_place(|| valid(consumer.committed_offsets(wanted, timeout)))
        })
        .unwrap_or(low);
    Some((high - position).max(0))
}
