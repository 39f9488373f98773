//! Reading partitions to their end: how a service restores state from a changelog (the
//! validator's resend filter, the mirror's positions) and how tests and tools read a topic back.
//!
//! "The end" is the last stable offset a read_committed consumer sees while it reads: the reader
//! stops once every partition has reported its end with no record after it, so records committed
//! while it reads are read too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::EndIsNotAnError;

/// A consumer that reports each partition's end, which [`read_to_end`] needs.
pub type EndReader = BaseConsumer<EndIsNotAnError>;

/// Creates an [`EndReader`] from a consumer's settings (normally
/// [`super::KafkaConfig::client_config`] for a [`super::Role::Consumer`]): turns partition-end
/// reports on and keeps them out of the error log.
pub fn end_reader(mut config: ClientConfig) -> KafkaResult<EndReader> {
    config
        .set("enable.partition.eof", "true")
        .create_with_context(EndIsNotAnError)
}

/// The number of partitions of `topic`; 0 when the topic does not exist (yet).
pub fn partition_count(reader: &EndReader, topic: &str, timeout: Duration) -> KafkaResult<usize> {
    let metadata = reader.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()))
}

/// Reads `topic`'s partitions from the given offsets to their end and calls `each` on every
/// record, in order per partition; returns how many were read. Fails past `timeout`, on a
/// `shutdown` request, on a consumer error librdkafka does not recover from, and on the first
/// error `each` returns. A lost connection is waited out until `timeout`: librdkafka reconnects
/// and fetches on, so a broker outage during a restore delays the restore instead of ending the
/// service. One topic at a time, because a partition's end names only the partition. The reader
/// is unassigned when this returns.
pub fn read_to_end(
    reader: &EndReader,
    topic: &str,
    from: &[(i32, Offset)],
    timeout: Duration,
    shutdown: Option<&CancellationToken>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    if from.is_empty() {
        return Ok(0);
    }
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in from {
        assignment.add_partition_offset(topic, *partition, *offset)?;
    }
    reader
        .assign(&assignment)
        .with_context(|| format!("assigning {topic}"))?;
    let partitions: BTreeSet<i32> = from.iter().map(|(p, _)| *p).collect();
    let mut at_end = BTreeSet::new();
    let deadline = Instant::now() + timeout;
    let mut count = 0u64;
    let mut last_error: Option<KafkaError> = None;
    let mut read = || {
        while at_end.len() < partitions.len() {
            if shutdown.is_some_and(CancellationToken::is_cancelled) {
                bail!("shutdown while reading {topic}");
            }
            if Instant::now() >= deadline {
                let open: Vec<_> = partitions.difference(&at_end).collect();
                let cause = last_error
                    .as_ref()
                    .map(|e| format!("; last consumer error: {e}"))
                    .unwrap_or_default();
                bail!(
                    "reading {topic}: partitions {open:?} not at their end within {timeout:?} \
                     ({count} records read{cause})"
                );
            }
            match reader.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    at_end.remove(&message.partition());
                    count += 1;
                    each(&message)?;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) if is_connection_error(&e) => {
                    tracing::debug!("reading {topic}: {e}; waiting for the connection");
                    last_error = Some(e);
                }
                Some(Err(e)) => {
                    return Err(anyhow::Error::from(e).context(format!("reading {topic}")))
                }
            }
        }
        Ok(count)
    };
    let result = read();
    reader.unassign().ok();
    result
}

/// Whether a consumer error only says a broker is (for now) unreachable: librdkafka reconnects
/// and goes on fetching by itself.
fn is_connection_error(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
        )
    )
}

/// The value of the record at `offset` of a partition, read_committed; `None` when it is no
/// longer there (below the log start after retention, or removed by compaction) or never was.
/// How a replay finds the original of a dead letter written without it.
pub fn read_at(
    reader: &EndReader,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut found = None;
    let from = [(partition, Offset::Offset(offset))];
    // Reads from `offset` (or the log start, if that is past it) to the end: the first record
    // tells whether `offset` is there. `each` stops the read at the first record.
    let result = read_to_end(reader, topic, &from, timeout, None, |message| {
        found = Some((message.offset(), message.payload().map(<[u8]>::to_vec)));
        bail!("stop: the record was read")
    });
    match (result, found) {
        (_, Some((at, value))) => Ok((at == offset).then(|| value.unwrap_or_default())),
        (Ok(_), None) => Ok(None),
        (Err(e), None) => {
            Err(e.context(format!("reading {topic} partition {partition} at {offset}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    use super::*;
    use crate::kafka::{KafkaConfig, Role};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A cluster with topic `t` of two partitions holding `a0 a1 a2` and `b0 b1`.
    fn cluster_with_records() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        EndReader,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        cluster.create_topic("empty", 1, 1).unwrap();
        let kafka = KafkaConfig::new(cluster.bootstrap_servers());
        let producer: BaseProducer = kafka
            .client_config(&Role::Producer, "test")
            .create()
            .unwrap();
        for (partition, payload) in [(0, "a0"), (1, "b0"), (0, "a1"), (1, "b1"), (0, "a2")] {
            producer
                .send(
                    BaseRecord::<(), str>::to("t")
                        .partition(partition)
                        .payload(payload),
                )
                .unwrap();
        }
        producer.flush(TIMEOUT).unwrap();
        let reader = end_reader(kafka.client_config(
            &Role::Consumer {
                group_id: "g".into(),
            },
            "test",
        ))
        .unwrap();
        (cluster, reader)
    }

    fn payloads(
        reader: &EndReader,
        topic: &str,
        from: &[(i32, Offset)],
    ) -> anyhow::Result<Vec<(i32, String)>> {
        let mut read = Vec::new();
        let count = read_to_end(reader, topic, from, TIMEOUT, None, |m| {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
            read.push((m.partition(), payload.into_owned()));
            Ok(())
        })?;
        assert_eq!(count as usize, read.len());
        read.sort_by_key(|(partition, _)| *partition);
        Ok(read)
    }

    #[test]
    fn reads_every_partition_to_its_end_from_the_offsets_given() {
        let (_cluster, reader) = cluster_with_records();
        assert_eq!(partition_count(&reader, "t", TIMEOUT).unwrap(), 2);
        let all = [(0, Offset::Beginning), (1, Offset::Beginning)];
        let expected: Vec<_> = [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
            .map(|(p, v)| (p, v.to_owned()))
            .into();
        assert_eq!(payloads(&reader, "t", &all).unwrap(), expected);
        // Again, from offsets: what is after them; a partition already at its end adds nothing.
        let tail = [(0, Offset::Offset(2)), (1, Offset::Offset(2))];
        assert_eq!(
            payloads(&reader, "t", &tail).unwrap(),
            [(0, "a2".to_owned())]
        );
        assert!(payloads(&reader, "empty", &[(0, Offset::Beginning)])
            .unwrap()
            .is_empty());
        assert!(payloads(&reader, "t", &[]).unwrap().is_empty());
    }

    #[test]
    fn stops_on_shutdown_and_on_the_callers_error() {
        let (_cluster, reader) = cluster_with_records();
        let from = [(0, Offset::Beginning)];
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let err =
            read_to_end(&reader, "t", &from, TIMEOUT, Some(&shutdown), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("shutdown"), "{err}");
        let err = read_to_end(&reader, "t", &from, TIMEOUT, None, |_| bail!("full")).unwrap_err();
        assert_eq!(err.to_string(), "full");
    }

    #[test]
    fn waits_out_a_broker_outage_until_its_timeout() {
        let (cluster, reader) = cluster_with_records();
        let all = [(0, Offset::Beginning), (1, Offset::Beginning)];
        assert_eq!(payloads(&reader, "t", &all).unwrap().len(), 5);
        cluster.broker_down(1).unwrap();
        // The connection is lost: the read goes on to its deadline instead of failing at the
        // first transport error, and says what it last heard.
        let started = Instant::now();
        let short = Duration::from_secs(2);
        let err = read_to_end(&reader, "t", &all, short, None, |_| Ok(())).unwrap_err();
        assert!(
            started.elapsed() >= short,
            "{err} after {:?}",
            started.elapsed()
        );
        let err = err.to_string();
        assert!(err.contains("not at their end within"), "{err}");
        assert!(err.contains("last consumer error"), "{err}");
        // Once the broker is back, the same reader reads everything.
        cluster.broker_up(1).unwrap();
        assert_eq!(payloads(&reader, "t", &all).unwrap().len(), 5);
    }
}
