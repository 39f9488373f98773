//! The CEP worker's metrics: names from [`logpipe_core::metric_names::cep`], which dashboards, the
//! dev stack's live view, tests and benchmarks read too, each described once here.

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub(crate) use logpipe_core::metric_names::cep::*;

/// Registers every description once, so `/metrics` explains itself.
pub(crate) fn describe() {
    describe_counter!(EVENTS, "Clean records read, per topic.");
    describe_counter!(
        RECORDS_LOST_TO_RETENTION,
        "Records deleted by retention before the worker read them, per topic and partition."
    );
    describe_counter!(
        EVENTS_UNDECODABLE,
        "Clean records that could not be decoded and were not counted, per topic and reason."
    );
    describe_counter!(
        EVENTS_UNKEYED,
        "Events that satisfied a rule step but have no key: the rule's key field is missing, not text or a number, or longer than 1 KiB; per rule."
    );
    describe_counter!(
        RULE_EVENTS_EVALUATED,
        "Events read from a rule's sources, per rule."
    );
    describe_counter!(
        RULE_EVENTS_MATCHED,
        "Events that satisfied at least one step of a rule, per rule."
    );
    describe_counter!(RULE_MATCHES_EMITTED, "Matches written, per rule.");
    describe_counter!(
        RULE_EVENTS_LATE,
        "Events of a timed rule that came after its watermark passed them, written to cep.late, per rule."
    );
    describe_counter!(
        RULE_EVENTS_REFUSED,
        "Events of a timed rule written to cep.late uncounted because their key's held state would outgrow a changelog record, per rule and reason."
    );
    describe_counter!(
        RULE_STATE_TRIMMED,
        "Entries of a timed rule's key state (oldest span events, partial sequences, open windows) dropped at a release so that the key's state fits a changelog record, per rule."
    );
    describe_gauge!(
        RULE_EVENTS_HELD,
        "Events of a timed rule waiting for the watermark, plus partial sequences, on this worker's partitions, per rule."
    );
    describe_gauge!(
        RULE_WATERMARK_LAG,
        "Wall clock minus a timed rule's lowest watermark on this worker's partitions, per rule."
    );
    describe_gauge!(
        RULE_KEYS_HELD,
        "Keys with state for a rule on this worker's partitions, per rule."
    );
    describe_gauge!(RULES_ACTIVE, "Rules active (not deleted).");
    describe_gauge!(
        STATE_BYTES,
        "Approximate memory of the keyed state on this worker, in bytes."
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        "Records between this worker's position and the end of each assigned partition."
    );
    describe_histogram!(
        STATE_RESTORE,
        "Time to restore assigned partitions' state from the changelog, in seconds."
    );
    describe_histogram!(BATCH, "Time to process and commit one batch, in seconds.");
    describe_counter!(
        TRANSACTIONS_ABORTED,
        "Transactions aborted and their batch read again."
    );
    describe_counter!(AUTH_DENIED, "Rules API requests refused, per reason.");
}
