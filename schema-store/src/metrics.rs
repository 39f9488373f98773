//! What the schema store's metrics mean. Their names are a contract with dashboards and tests, so
//! they are spelled once, in `logpipe_core::metric_names::schema_store`; this module describes
//! them so `/metrics` explains itself.

use logpipe_core::metric_names::schema_store::*;
use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Registers every description; called once at start-up.
pub(crate) fn describe() {
    describe_histogram!(
        HTTP_REQUEST,
        "Seconds to answer an API request, by method and route; its count is the request count."
    );
    describe_counter!(
        HTTP_ERRORS,
        "API responses that were not a success, by route and status."
    );
    describe_counter!(
        REQUESTS_REJECTED,
        "Requests refused before their handler, by reason (not_acceptable, \
         unsupported_media_type, too_large, bad_json)."
    );
    describe_counter!(
        AUTH_DENIED,
        "Requests refused by basic auth, by reason (unauthorized, forbidden)."
    );
    describe_counter!(
        LOOKUPS,
        "Schema lookups, by what they look up by (id, version, schema)."
    );
    describe_counter!(
        REGISTRATIONS,
        "Registrations, by outcome (ok, incompatible, error)."
    );
    describe_gauge!(SCHEMAS, "Schemas (distinct ids) the registry holds.");
    describe_histogram!(
        LOG_APPEND,
        "Seconds to append a write batch to the local log and fsync it."
    );
    describe_histogram!(
        LOG_BATCH_RECORDS,
        "Records per write batch (one fsync, or one Kafka transaction)."
    );
    describe_counter!(LOG_ERRORS, "Write batches the local log could not append.");
    describe_gauge!(
        KAFKA_LEADER,
        "1 while this instance is the writer of the schemas topic, else 0."
    );
    describe_counter!(KAFKA_ELECTIONS, "Times this instance became the writer.");
    describe_gauge!(
        KAFKA_REPLAY_OFFSET,
        "Next offset of the schemas topic after the last record applied."
    );
    describe_counter!(
        KAFKA_FORWARDED,
        "Writes a follower forwarded to the leader, by outcome (ok, failed)."
    );
    describe_counter!(
        KAFKA_FORWARDED_RETRIES,
        "Forwarded writes that came to the leader again, answered with their first answer."
    );
    describe_histogram!(
        KAFKA_COMMIT,
        "Seconds to write a batch to the schemas topic in one transaction and read it back."
    );
    describe_counter!(
        KAFKA_RECORDS_SKIPPED,
        "Records of the schemas topic this store cannot use, skipped (their ids stay taken)."
    );
    describe_counter!(
        KAFKA_ERRORS,
        "Kafka client errors, by client (reader, election, writer)."
    );
}
