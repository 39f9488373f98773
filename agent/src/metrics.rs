//! What the agent's metrics mean (their names are `logpipe_core::metric_names::agent`), and the
//! per-input counters the hot path uses through handles instead of registry lookups.

use logpipe_core::metric_names::agent::*;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Counter};

/// The kind a metric is exported as.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every agent metric with its kind and description, so `/metrics` explains itself.
const DESCRIPTIONS: &[(Kind, &str, &str)] = &[
    (
        Kind::Counter,
        LINES_READ,
        "Lines read and queued for Kafka, per input.",
    ),
    (
        Kind::Counter,
        BYTES_READ,
        "Bytes of lines queued for Kafka, per input.",
    ),
    (
        Kind::Counter,
        LINES_ACKED,
        "Lines acknowledged by Kafka (acks=all), per input.",
    ),
    (
        Kind::Counter,
        BYTES_ACKED,
        "Bytes of lines acknowledged by Kafka, per input.",
    ),
    (
        Kind::Counter,
        LINES_OVERSIZED,
        "Lines cut at max_line_bytes and shipped with lp.truncated.",
    ),
    (Kind::Counter, LINES_EMPTY, "Empty lines skipped."),
    (
        Kind::Gauge,
        FILE_LAG,
        "Per file: size minus the acknowledged offset.",
    ),
    (
        Kind::Gauge,
        CHECKPOINT_AGE,
        "Seconds since the last successful checkpoint write.",
    ),
    (
        Kind::Counter,
        CHECKPOINT_ERRORS,
        "Checkpoint writes that failed, and corrupt checkpoints found at start.",
    ),
    (
        Kind::Histogram,
        DELIVERY_LATENCY,
        "Seconds from queueing a record to its acknowledgement.",
    ),
    (
        Kind::Gauge,
        INFLIGHT_BYTES,
        "Bytes charged to the in-flight budget (lines plus per-record overhead).",
    ),
    (
        Kind::Gauge,
        INFLIGHT_RECORDS,
        "Records queued and not yet acknowledged.",
    ),
    (
        Kind::Counter,
        ROTATIONS,
        "Files rotated away (renamed or deleted) while tailed.",
    ),
    (
        Kind::Counter,
        TRUNCATIONS,
        "Files truncated (copytruncate or rewrite); read again from 0 under a new id.",
    ),
    (
        Kind::Counter,
        IDENTITY_CHANGES,
        "Files found at a saved inode with other contents (inode reuse).",
    ),
    (
        Kind::Gauge,
        OPEN_FILES,
        "Open file handles, rotated-away ones included.",
    ),
    (
        Kind::Gauge,
        DETACHED_FILES,
        "Open handles of files rotated away or deleted, kept until read and acknowledged.",
    ),
    (
        Kind::Counter,
        DETACHED_EVICTED,
        "Rotated-away files closed unfinished because max_detached_files was reached.",
    ),
    (
        Kind::Counter,
        WATCH_FALLBACKS,
        "Switches from file system notifications to polling.",
    ),
    (
        Kind::Counter,
        FILE_ERRORS,
        "Files that could not be opened or read, by kind.",
    ),
    (
        Kind::Counter,
        PRODUCER_ERRORS,
        "Failed deliveries and producer errors, by error.",
    ),
    (
        Kind::Counter,
        PRODUCER_REBUILDS,
        "Producers rebuilt after a fatal error or failed delivery.",
    ),
];

/// Registers every description once.
pub(crate) fn describe() {
    for &(kind, name, description) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(name, description),
            Kind::Gauge => describe_gauge!(name, description),
            Kind::Histogram => describe_histogram!(name, description),
        }
    }
}

/// Counters of one input.
#[derive(Clone)]
pub(crate) struct InputMetrics {
    pub(crate) lines_read: Counter,
    pub(crate) bytes_read: Counter,
    pub(crate) lines_acked: Counter,
    pub(crate) bytes_acked: Counter,
    pub(crate) oversized: Counter,
    pub(crate) empty: Counter,
}

impl InputMetrics {
    pub(crate) fn new(label: &str) -> Self {
        let c = |name: &'static str| counter!(name, "input" => label.to_owned());
        InputMetrics {
            lines_read: c(LINES_READ),
            bytes_read: c(BYTES_READ),
            lines_acked: c(LINES_ACKED),
            bytes_acked: c(BYTES_ACKED),
            oversized: c(LINES_OVERSIZED),
            empty: c(LINES_EMPTY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name missing here would be exported without a description.
    #[test]
    fn every_agent_metric_is_described_once() {
        let all = [
            BYTES_ACKED,
            BYTES_READ,
            CHECKPOINT_AGE,
            CHECKPOINT_ERRORS,
            DELIVERY_LATENCY,
            DETACHED_EVICTED,
            DETACHED_FILES,
            FILE_ERRORS,
            FILE_LAG,
            IDENTITY_CHANGES,
            INFLIGHT_BYTES,
            INFLIGHT_RECORDS,
            LINES_ACKED,
            LINES_EMPTY,
            LINES_OVERSIZED,
            LINES_READ,
            OPEN_FILES,
            PRODUCER_ERRORS,
            PRODUCER_REBUILDS,
            ROTATIONS,
            TRUNCATIONS,
            WATCH_FALLBACKS,
        ];
        for name in all {
            let found = DESCRIPTIONS.iter().filter(|(_, n, _)| *n == name).count();
            assert_eq!(found, 1, "{name}");
        }
        assert_eq!(DESCRIPTIONS.len(), all.len());
    }
}
