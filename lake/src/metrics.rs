//! The lake loader's metrics: names from [`logpipe_core::metric_names::lake`], which dashboards,
//! tests and benchmarks read too, each described once here. Every one is labelled by `table`.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub(crate) use logpipe_core::metric_names::lake::*;

/// Registers every description once, so `/metrics` explains itself.
pub(crate) fn describe() {
    describe_counter!(ROWS, "Rows committed to the table.");
    describe_counter!(
        RECORDS_READ,
        "Records taken from the source topics into open files or dead letters (uncommitted rows are counted again when a commit that did not land reads them again)."
    );
    describe_counter!(
        PARQUET_BYTES,
        "Bytes of Parquet committed to the table (the files' sizes)."
    );
    describe_counter!(FILES, "Parquet files committed to the table.");
    describe_counter!(COMMITS, "Delta commits that landed.");
    describe_counter!(
        FILES_COMPACTED,
        "Small files of closed days merged into larger ones by compaction."
    );
    describe_counter!(
        COMMIT_FAILURES,
        "Delta commits that did not land, per reason (fenced: another loader committed one of its partitions; failed: the Delta log could not be read or written; files: the data files could not be written; dead_letters: the Kafka transaction after the Delta commit failed; schema: creating or widening the table failed, retried); their rows are read again from the table's positions."
    );
    describe_histogram!(
        COMMIT_LATENCY,
        metrics::Unit::Seconds,
        "Time to close a commit's files and write its Delta log entry."
    );
    describe_gauge!(
        SECONDS_SINCE_COMMIT,
        metrics::Unit::Seconds,
        "Seconds since the last commit that covered a partition, per topic and partition."
    );
    describe_gauge!(
        PARTITIONS,
        "Source partitions this loader owns and has sought to the table's position."
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        "Records of the source topics not yet read, per topic and partition."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Records written to dlq.lake.<table> instead of the table, per reason kind."
    );
    describe_counter!(
        SCHEMA_WIDENINGS,
        "Columns added to the table for a new schema version."
    );
    describe_counter!(
        RECORDS_LOST_TO_RETENTION,
        "Records deleted by retention before the loader read them, per topic and partition."
    );
}
