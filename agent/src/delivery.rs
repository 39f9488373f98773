//! The Kafka side: one idempotent producer (acks=all, no message timeout, gapless) whose
//! delivery reports come back to the tailing loop as events.
//!
//! A record is "delivered" only when its delivery report says so; being queued in librdkafka
//! means nothing (the mistake behind fluent-bit#11527). A fatal producer error or a failed
//! delivery makes the loop drop this producer and build a new one, then re-read every file from
//! its last acknowledged offset: records are never skipped and a partition never gets a gap.

use std::time::Duration;

use logpipe_core::kafka::{KafkaConfig, Role};
use logpipe_core::record::header;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

/// Memory a queued record costs beyond its line, key and header bytes: librdkafka's message
/// (~300 B) and its five header allocations, allocator rounding, our tracking entry. Measured:
/// the agent's RSS grows by ~1.1 KiB per 250 B record in flight. Charged to the in-flight
/// budget so that the budget bounds memory, whatever the line size.
pub(crate) const RECORD_OVERHEAD: u64 = 768;

/// Identifies a produced record in its delivery report: producer generation, tailer slot and
/// the record's sequence number in that tailer, packed in the report's `usize` opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) epoch: u8,
    pub(crate) slot: u32,
    pub(crate) seq: u32,
}

const _: () = assert!(usize::BITS == 64, "tokens are packed into 64-bit opaques");

impl Token {
    pub(crate) const MAX_SLOT: u32 = (1 << 24) - 1;

    fn pack(self) -> usize {
        ((self.epoch as usize) << 56)
            | (((self.slot & Self::MAX_SLOT) as usize) << 32)
            | self.seq as usize
    }

    fn unpack(opaque: usize) -> Token {
        Token {
            epoch: (opaque >> 56) as u8,
            slot: ((opaque >> 32) as u32) & Self::MAX_SLOT,
            seq: opaque as u32,
        }
    }
}

/// What the producer tells its owner, from librdkafka's threads.
#[derive(Debug)]
pub(crate) enum Report {
    /// The delivery report of one record: acknowledged, or failed with `error`.
    Ack {
        token: Token,
        error: Option<KafkaError>,
    },
    /// librdkafka reported a fatal error: the producer must be replaced.
    Fatal(String),
    /// Every broker is unreachable: nothing is being delivered.
    BrokersDown,
}

/// Where the reports go; called on librdkafka's threads, so it only forwards.
pub(crate) type Reports = Box<dyn Fn(Report) + Send + Sync>;

/// Hands delivery reports and client errors to the owner.
pub(crate) struct Context {
    reports: Reports,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => (self.reports)(Report::Fatal(reason.to_owned())),
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(
                    "kafka: all brokers are down; reading pauses at the in-flight budget: {reason}"
                );
                (self.reports)(Report::BrokersDown);
            }
            // librdkafka logs connection failures itself.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!("kafka: {error}: {reason}")
            }
            _ => tracing::warn!("kafka: {error}: {reason}"),
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let error = result.as_ref().err().map(|(e, _)| e.clone());
        (self.reports)(Report::Ack {
            token: Token::unpack(opaque),
            error,
        });
    }
}

/// One producer generation.
pub(crate) struct Delivery {
    producer: ThreadedProducer<Context>,
    pub(crate) epoch: u8,
}

/// A record ready to send.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    pub(crate) headers: OwnedHeaders,
    pub(crate) timestamp_ms: i64,
    pub(crate) token: Token,
}

impl Delivery {
    /// Builds a producer. `max_record_bytes` is the largest value it will be handed.
    pub(crate) fn new(
        kafka: &KafkaConfig,
        inflight_bytes: u64,
        max_record_bytes: usize,
        reports: Reports,
        epoch: u8,
    ) -> anyhow::Result<Delivery> {
        let config = client_config(kafka, inflight_bytes, max_record_bytes);
        let producer: ThreadedProducer<Context> =
            config
                .create_with_context(Context { reports })
                .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer: {e}"))?;
        Ok(Delivery { producer, epoch })
    }

    /// Queues a record. The queue limits are set above the in-flight budget, so a full queue
    /// only happens when the operator lowered them: then this waits for room (the delivery
    /// thread keeps draining it) rather than fail the record.
    pub(crate) fn send(&self, record: Outgoing<'_>) -> Result<(), KafkaError> {
        let mut base = BaseRecord::with_opaque_to(record.topic, record.token.pack())
            .payload(record.value)
            .headers(record.headers)
            .timestamp(record.timestamp_ms);
        if let Some(key) = record.key {
            base = base.key(key);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Reports whether the cluster answers a metadata request within `timeout`; blocking.
    pub(crate) fn reachable(&self, timeout: Duration) -> bool {
        self.producer.client().fetch_metadata(None, timeout).is_ok()
    }

    /// A handle to the same producer for a helper thread (readiness probe).
    pub(crate) fn share(&self) -> Delivery {
        Delivery {
            producer: self.producer.clone(),
            epoch: self.epoch,
        }
    }
}

/// The record contract's headers of one line (`lp.host`, `lp.path`, `lp.file`, `lp.offset`), with
/// room for `lp.truncated`. Public so that the throughput benchmark's ceiling sends the same
/// records as the agent.
pub fn line_headers(host: &str, path: &str, file: &str, offset: u64) -> OwnedHeaders {
    let mut offset_text = itoa::Buffer::new();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: header::HOST,
            value: Some(host),
        })
        .insert(Header {
            key: header::PATH,
            value: Some(path),
        })
        .insert(Header {
            key: header::FILE,
            value: Some(file),
        })
        .insert(Header {
            key: header::OFFSET,
            value: Some(offset_text.format(offset)),
        })
}

/// The producer's librdkafka settings: the shared producer role (acks=all, idempotence, no
/// message timeout, gapless, lz4, linger 20 ms, 1 MiB batches), queue limits above the agent's
/// own budget, and a message size that fits the longest line plus headers. The operator's
/// `[kafka.properties]` still win for tuning keys.
pub fn client_config(
    kafka: &KafkaConfig,
    inflight_bytes: u64,
    max_record_bytes: usize,
) -> ClientConfig {
    let mut config = kafka.client_config(&Role::Producer, "logpipe-agent");
    // The agent's budget is the limit; librdkafka's own limits only need to stay out of its way
    // (every record costs at least RECORD_OVERHEAD, and a read may overshoot by one chunk).
    let messages = i32::MAX as u64;
    let kbytes = ((inflight_bytes * 2 + (64 << 20)) / 1024).min(i32::MAX as u64);
    let message_max = (max_record_bytes as u64 + 64 * 1024).max(1_000_000);
    for (name, value) in [
        ("queue.buffering.max.messages", messages.to_string()),
        ("queue.buffering.max.kbytes", kbytes.to_string()),
        ("message.max.bytes", message_max.to_string()),
    ] {
        if !kafka.properties.contains_key(name) {
            config.set(name, value);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use logpipe_core::kafka::PropertyValue;

    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token {
            epoch: 255,
            slot: Token::MAX_SLOT,
            seq: u32::MAX,
        };
        assert_eq!(Token::unpack(token.pack()), token);
        let token = Token {
            epoch: 3,
            slot: 77,
            seq: 12,
        };
        assert_eq!(Token::unpack(token.pack()), token);
    }

    #[test]
    fn queue_limits_follow_the_budget_unless_overridden() {
        let mut kafka = KafkaConfig::new("k:9092");
        let config = client_config(&kafka, 64 << 20, 1 << 20);
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("0"));
        assert!(
            config
                .get("queue.buffering.max.kbytes")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > (64 << 20) / 1024
        );
        assert_eq!(
            config.get("message.max.bytes"),
            Some(((1u64 << 20) + 65536).to_string().as_str())
        );
        kafka.properties.insert(
            "queue.buffering.max.messages".into(),
            PropertyValue::Integer(1000),
        );
        let config = client_config(&kafka, 64 << 20, 1 << 20);
        assert_eq!(config.get("queue.buffering.max.messages"), Some("1000"));
    }
}
