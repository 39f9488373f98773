//! A record's size as the producer checks it. librdkafka refuses a record larger than
//! `message.max.bytes` the moment it is produced; inside a transaction that aborts the batch,
//! which is read and refused again: one record too large would stall its partition for good. A
//! service checks its outputs with [`record_size`] first and writes something that fits instead.

use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::ClientConfig;

/// librdkafka's `message.max.bytes` when the config does not set it.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Kafka's default `max.message.bytes` of a topic (the broker's `message.max.bytes`). The broker
/// checks whole record batches against it, and librdkafka fills batches up to the producer's
/// `message.max.bytes`: a producer allowed more than its topic refuses batches of small records
/// too, so a transaction into that topic fails every time.
pub const TOPIC_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The largest record a producer made from `config` accepts (`message.max.bytes`).
pub fn max_record_bytes(config: &ClientConfig) -> usize {
    config
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_RECORD_BYTES)
}

/// [`record_size`]'s `headers` for a record without any.
pub const NO_HEADERS: Option<&OwnedHeaders> = None;

/// A record's size as librdkafka bounds it: the v2 record's largest framing (36 bytes), key,
/// value, and each header's name and value with their largest length prefixes. It is never
/// below what librdkafka computes, so a record within the limit by this measure is accepted.
pub fn record_size<H: Headers>(key: Option<&[u8]>, value: &[u8], headers: Option<&H>) -> usize {
    const RECORD_FRAMING: usize = 36;
    const HEADER_FRAMING: usize = 10;
    let headers: usize = headers.map_or(0, |headers| {
        headers
            .iter()
            .map(|h| HEADER_FRAMING + h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    RECORD_FRAMING + key.map_or(0, <[u8]>::len) + value.len() + headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Header;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn producer(max: usize) -> BaseProducer {
        // Never connects: librdkafka checks the size when the record is produced.
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.max.bytes", max.to_string());
        assert_eq!(max_record_bytes(&config), max);
        config.create().unwrap()
    }

    /// Whatever `record_size` allows, librdkafka accepts; and it is exact to within the
    /// varint slack of the framing.
    #[test]
    fn a_record_within_the_measure_is_accepted() {
        let max = 10_000;
        let producer = producer(max);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "lp.host",
                value: Some("web-1".as_bytes()),
            })
            .insert(Header {
                key: "lp.error.reason",
                value: Some(&[b'x'; 300][..]),
            });
        let key = b"player-7".as_slice();
        for len in (max - 500..max).step_by(7) {
            let value = vec![b'v'; len];
            let size = record_size(Some(key), &value, Some(&headers));
            let record = BaseRecord::<[u8], [u8]>::to("t")
                .key(key)
                .payload(&value)
                .headers(headers.clone());
            match producer.send(record) {
                Ok(()) => assert!(size <= max + 40, "accepted at {size}"),
                Err((e, _)) => {
                    assert_eq!(
                        e.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::MessageSizeTooLarge)
                    );
                    assert!(size > max, "refused at {size} <= {max}");
                }
            }
        }
        assert_eq!(
            max_record_bytes(&ClientConfig::new()),
            DEFAULT_MAX_RECORD_BYTES
        );
    }
}
