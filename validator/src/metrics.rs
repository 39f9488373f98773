//! The validator's metrics: names from [`logpipe_core::metric_names::validator`], which dashboards,
//! the dev stack's live view, tests and benchmarks read too, each described once here.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub(crate) use logpipe_core::metric_names::validator::*;

/// Registers every description once, so `/metrics` explains itself.
pub(crate) fn describe() {
    describe_counter!(
        RECORDS_VALID,
        "Records written to their clean topic, per raw topic and subject."
    );
    describe_counter!(
        RECORDS_LOST_TO_RETENTION,
        "Records deleted by retention before the validator read them, per topic and partition."
    );
    describe_counter!(
        RECORDS_INVALID,
        "Records written to their dead-letter topic, per raw topic, stage and reason."
    );
    describe_counter!(
        EXTRA_FIELDS_DROPPED,
        "Clean records from which fields the schema does not know were left out, per raw topic."
    );
    describe_counter!(
        RESENDS_DROPPED,
        "Records removed as the agents' resends of lines already passed on, per raw topic."
    );
    describe_counter!(
        REPLAYS_DROPPED_ALIAS,
        "Old name of logpipe_validator_resends_dropped_total, kept for one release."
    );
    describe_counter!(
        SCHEMA_CACHE_HITS,
        "Schema lookups answered from the cache, per subject."
    );
    describe_counter!(
        SCHEMA_CACHE_MISSES,
        "Schema lookups that asked the schema store, per subject."
    );
    describe_counter!(
        STORE_PAUSES,
        "Times the loop paused because the schema store could not be reached."
    );
    describe_counter!(
        TRANSACTIONS_ABORTED,
        "Transactions aborted; their batches are read and checked again."
    );
    describe_histogram!(
        BATCH,
        "Seconds per committed batch: check plus transaction."
    );
    describe_histogram!(
        GATHER,
        "Seconds per committed batch spent waiting for its first record."
    );
    describe_histogram!(
        CHECK,
        "Seconds per committed batch from its first record to its commit: reading, parsing, validating, encoding and enqueueing."
    );
    describe_histogram!(
        COMMIT,
        "Seconds per committed batch spent producing and committing the transaction."
    );
    describe_gauge!(
        REPLAY_STATE_FILES,
        "Files the resend filter tracks for the partitions this instance owns."
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        "Records between the consumer's position and the end, per raw topic and partition."
    );
}
