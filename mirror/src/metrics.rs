//! The mirror's metrics: names from [`logpipe_core::metric_names::mirror`], which dashboards, the
//! dev stack's live view, tests and benchmarks read too, each described once here.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub(crate) use logpipe_core::metric_names::mirror::*;

/// Registers every description once, so `/metrics` explains itself.
pub(crate) fn describe() {
    describe_counter!(
        RECORDS,
        "Records mirrored and committed, per source topic and partition."
    );
    describe_counter!(
        BYTES,
        "Bytes of keys and values mirrored and committed, per source topic and partition."
    );
    describe_gauge!(
        OFFSET_LAG_RECORDS,
        "Records between the committed position and the source's end, per source partition."
    );
    describe_gauge!(
        TIME_LAG,
        "Seconds between now and the timestamp of the last record committed, per source partition."
    );
    describe_gauge!(
        LAST_COMMIT_AGE,
        "Seconds since a transaction last committed records of a source partition."
    );
    describe_gauge!(
        COMMITTED_OFFSET,
        "Next source offset to mirror, as committed in the state topic, per source partition."
    );
    describe_gauge!(
        DATA_LOSS_RECORDS,
        "Records of a source partition deleted by retention before they were mirrored."
    );
    describe_counter!(
        DATA_LOSS_EVENTS,
        "Times a source partition was found to have lost records before they were mirrored."
    );
    describe_counter!(
        VERIFIED_RECORDS,
        "Records a previous owner wrote without committing, found on the target and verified."
    );
    describe_histogram!(
        COMMIT_LATENCY,
        "Seconds to commit one transaction, per shard."
    );
    describe_gauge!(SHARD_OWNED, "1 while this instance owns the shard, else 0.");
    describe_counter!(
        SHARD_ERRORS,
        "Errors that ended a shard's session (it is then restarted), per shard."
    );
    describe_gauge!(SHARDS_OWNED, "Shards this instance owns.");
    describe_gauge!(
        TARGET_TOPICS_MISSING,
        "Selected source topics whose target topic or partitions do not exist yet."
    );
    describe_counter!(
        LOOP_SKIPPED,
        "Records not mirrored because the loop guard found they came from the target, per topic."
    );
}
