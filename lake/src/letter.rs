//! A record that cannot be a row, and why: it waits, unchanged, for the commit whose Kafka
//! transaction writes it to the table's dead-letter topic with headers saying why.

use logpipe_core::record::{DeadLetterHeaders, ErrorStage};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::BaseRecord;

/// Why a record is a dead letter.
pub(crate) struct DeadLetter {
    /// Bounded label for metrics.
    kind: &'static str,
    reason: String,
    schema_id: Option<u32>,
}

impl DeadLetter {
    pub(crate) fn new(kind: &'static str, reason: String, schema_id: Option<u32>) -> DeadLetter {
        DeadLetter {
            kind,
            reason,
            schema_id,
        }
    }

    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }
}

/// A dead letter waiting for its commit: the record's key, value and headers unchanged, plus
/// the dead-letter headers saying why.
pub(crate) struct Letter {
    pub(crate) kind: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

impl Letter {
    pub(crate) fn new(message: &OwnedMessage, why: DeadLetter) -> Letter {
        let mut headers = message.headers().cloned().unwrap_or_default();
        let names = DeadLetterHeaders {
            stage: ErrorStage::Lake,
            reason: &why.reason,
            path: None,
            subject: None,
            schema_id: why.schema_id,
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            omitted: None,
        };
        for (key, value) in names.headers() {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        Letter {
            kind: why.kind,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub(crate) fn record<'a>(&'a self, topic: &'a str) -> BaseRecord<'a, [u8], [u8]> {
        let mut record = BaseRecord::to(topic).headers(self.headers.clone());
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        record
    }

    /// What it holds in memory until its commit.
    pub(crate) fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}
