//! The agent's metric names (one spelling each) and the per-input counters the hot path uses
//! through handles instead of registry lookups.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Counter};

pub const LINES_READ: &str = "logpipe_agent_lines_read_total";
pub const BYTES_READ: &str = "logpipe_agent_bytes_read_total";
pub const LINES_ACKED: &str = "logpipe_agent_lines_acked_total";
pub const BYTES_ACKED: &str = "logpipe_agent_bytes_acked_total";
pub const LINES_OVERSIZED: &str = "logpipe_agent_lines_oversized_total";
pub const LINES_EMPTY: &str = "logpipe_agent_lines_empty_total";
pub const FILE_LAG: &str = "logpipe_agent_file_lag_bytes";
pub const CHECKPOINT_AGE: &str = "logpipe_agent_checkpoint_age_seconds";
pub const CHECKPOINT_ERRORS: &str = "logpipe_agent_checkpoint_errors_total";
pub const DELIVERY_LATENCY: &str = "logpipe_agent_delivery_latency_seconds";
pub const INFLIGHT_BYTES: &str = "logpipe_agent_inflight_bytes";
pub const INFLIGHT_RECORDS: &str = "logpipe_agent_inflight_records";
pub const ROTATIONS: &str = "logpipe_agent_rotations_total";
pub const TRUNCATIONS: &str = "logpipe_agent_truncations_total";
pub const IDENTITY_CHANGES: &str = "logpipe_agent_identity_changes_total";
pub const OPEN_FILES: &str = "logpipe_agent_open_files";
pub const DETACHED_FILES: &str = "logpipe_agent_detached_files";
pub const DETACHED_EVICTED: &str = "logpipe_agent_detached_evicted_total";
pub const WATCH_FALLBACKS: &str = "logpipe_agent_watch_fallbacks_total";
pub const FILE_ERRORS: &str = "logpipe_agent_file_errors_total";
pub const PRODUCER_ERRORS: &str = "logpipe_agent_producer_errors_total";
pub const PRODUCER_REBUILDS: &str = "logpipe_agent_producer_rebuilds_total";

/// Registers every description once, so `/metrics` explains itself.
pub fn describe() {
    describe_counter!(LINES_READ, "Lines read and queued for Kafka, per input.");
    describe_counter!(BYTES_READ, "Bytes of lines queued for Kafka, per input.");
    describe_counter!(
        LINES_ACKED,
        "Lines acknowledged by Kafka (acks=all), per input."
    );
    describe_counter!(
        BYTES_ACKED,
        "Bytes of lines acknowledged by Kafka, per input."
    );
    describe_counter!(
        LINES_OVERSIZED,
        "Lines cut at max_line_bytes and shipped with lp.truncated."
    );
    describe_counter!(LINES_EMPTY, "Empty lines skipped.");
    describe_gauge!(FILE_LAG, "Per file: size minus the acknowledged offset.");
    describe_gauge!(
        CHECKPOINT_AGE,
        "Seconds since the last successful checkpoint write."
    );
    describe_counter!(
        CHECKPOINT_ERRORS,
        "Checkpoint writes that failed, and corrupt checkpoints found at start."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        "Seconds from queueing a record to its acknowledgement."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        "Bytes charged to the in-flight budget (lines plus per-record overhead)."
    );
    describe_gauge!(INFLIGHT_RECORDS, "Records queued and not yet acknowledged.");
    describe_counter!(
        ROTATIONS,
        "Files rotated away (renamed or deleted) while tailed."
    );
    describe_counter!(
        TRUNCATIONS,
        "Files truncated (copytruncate or rewrite); read again from 0 under a new id."
    );
    describe_counter!(
        IDENTITY_CHANGES,
        "Files found at a saved inode with other contents (inode reuse)."
    );
    describe_gauge!(OPEN_FILES, "Open file handles, rotated-away ones included.");
    describe_gauge!(
        DETACHED_FILES,
        "Open handles of files rotated away or deleted, kept until read and acknowledged."
    );
    describe_counter!(
        DETACHED_EVICTED,
        "Rotated-away files closed unfinished because max_detached_files was reached."
    );
    describe_counter!(
        WATCH_FALLBACKS,
        "Switches from file system notifications to polling."
    );
    describe_counter!(
        FILE_ERRORS,
        "Files that could not be opened or read, by kind."
    );
    describe_counter!(
        PRODUCER_ERRORS,
        "Failed deliveries and producer errors, by error."
    );
    describe_counter!(
        PRODUCER_REBUILDS,
        "Producers rebuilt after a fatal error or failed delivery."
    );
}

/// Counters of one input.
#[derive(Clone)]
pub struct InputMetrics {
    pub lines_read: Counter,
    pub bytes_read: Counter,
    pub lines_acked: Counter,
    pub bytes_acked: Counter,
    pub oversized: Counter,
    pub empty: Counter,
}

impl InputMetrics {
    pub fn new(label: &str) -> Self {
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
