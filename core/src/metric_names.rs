//! Every service's metric names, one spelling each. A name is a contract between processes: the
//! service exports it, and Prometheus, the dev stack's live view, the end-to-end tests and the
//! benchmarks read it. Each service's `metrics` module describes its names; nothing else spells
//! them. Names follow `logpipe_<component>_<what>_<unit>`.

/// `logpipe-lake`.
pub mod lake {
    pub const COMMITS: &str = "logpipe_lake_commits_total";
    pub const COMMIT_FAILURES: &str = "logpipe_lake_commit_failures_total";
    pub const COMMIT_LATENCY: &str = "logpipe_lake_commit_seconds";
    pub const CONSUMER_LAG_RECORDS: &str = "logpipe_lake_consumer_lag_records";
    pub const DEAD_LETTERS: &str = "logpipe_lake_dead_letters_total";
    pub const FILES: &str = "logpipe_lake_files_total";
    pub const FILES_COMPACTED: &str = "logpipe_lake_files_compacted_total";
    pub const PARQUET_BYTES: &str = "logpipe_lake_parquet_bytes_total";
    pub const PARTITIONS: &str = "logpipe_lake_partitions";
    pub const RECORDS_LOST_TO_RETENTION: &str = "logpipe_lake_records_lost_to_retention_total";
    pub const RECORDS_READ: &str = "logpipe_lake_records_read_total";
    pub const ROWS: &str = "logpipe_lake_rows_total";
    pub const SECONDS_SINCE_COMMIT: &str = "logpipe_lake_seconds_since_commit";
    pub const SCHEMA_WIDENINGS: &str = "logpipe_lake_schema_widenings_total";
}

/// `logpipe-agent`.
pub mod agent {
    pub const BYTES_ACKED: &str = "logpipe_agent_bytes_acked_total";
    pub const BYTES_READ: &str = "logpipe_agent_bytes_read_total";
    pub const CHECKPOINT_AGE: &str = "logpipe_agent_checkpoint_age_seconds";
    pub const CHECKPOINT_ERRORS: &str = "logpipe_agent_checkpoint_errors_total";
    pub const DELIVERY_LATENCY: &str = "logpipe_agent_delivery_latency_seconds";
    pub const DETACHED_EVICTED: &str = "logpipe_agent_detached_evicted_total";
    pub const DETACHED_FILES: &str = "logpipe_agent_detached_files";
    pub const FILE_ERRORS: &str = "logpipe_agent_file_errors_total";
    pub const FILE_LAG: &str = "logpipe_agent_file_lag_bytes";
    pub const IDENTITY_CHANGES: &str = "logpipe_agent_identity_changes_total";
    pub const INFLIGHT_BYTES: &str = "logpipe_agent_inflight_bytes";
    pub const INFLIGHT_RECORDS: &str = "logpipe_agent_inflight_records";
    pub const LINES_ACKED: &str = "logpipe_agent_lines_acked_total";
    pub const LINES_EMPTY: &str = "logpipe_agent_lines_empty_total";
    pub const LINES_OVERSIZED: &str = "logpipe_agent_lines_oversized_total";
    pub const LINES_READ: &str = "logpipe_agent_lines_read_total";
    pub const OPEN_FILES: &str = "logpipe_agent_open_files";
    pub const PRODUCER_ERRORS: &str = "logpipe_agent_producer_errors_total";
    pub const PRODUCER_REBUILDS: &str = "logpipe_agent_producer_rebuilds_total";
    pub const ROTATIONS: &str = "logpipe_agent_rotations_total";
    pub const TRUNCATIONS: &str = "logpipe_agent_truncations_total";
    pub const WATCH_FALLBACKS: &str = "logpipe_agent_watch_fallbacks_total";
}

/// `logpipe-mirror`.
pub mod mirror {
    pub const BYTES: &str = "logpipe_mirror_bytes_total";
    pub const COMMIT_LATENCY: &str = "logpipe_mirror_commit_latency_seconds";
    pub const COMMITTED_OFFSET: &str = "logpipe_mirror_committed_offset";
    pub const DATA_LOSS_EVENTS: &str = "logpipe_mirror_data_loss_events_total";
    pub const DATA_LOSS_RECORDS: &str = "logpipe_mirror_data_loss_records";
    pub const LAST_COMMIT_AGE: &str = "logpipe_mirror_last_commit_age_seconds";
    pub const LOOP_SKIPPED: &str = "logpipe_mirror_loop_skipped_total";
    pub const OFFSET_LAG_RECORDS: &str = "logpipe_mirror_offset_lag_records";
    pub const RECORDS: &str = "logpipe_mirror_records_total";
    pub const SHARD_ERRORS: &str = "logpipe_mirror_shard_errors_total";
    pub const SHARD_OWNED: &str = "logpipe_mirror_shard_owned";
    pub const SHARDS_OWNED: &str = "logpipe_mirror_shards_owned";
    pub const TARGET_TOPICS_MISSING: &str = "logpipe_mirror_target_topics_missing";
    pub const TIME_LAG: &str = "logpipe_mirror_time_lag_seconds";
    pub const VERIFIED_RECORDS: &str = "logpipe_mirror_verified_records_total";
}

/// `logpipe-validator`.
pub mod validator {
    pub const BATCH: &str = "logpipe_validator_batch_seconds";
    pub const CHECK: &str = "logpipe_validator_check_seconds";
    pub const COMMIT: &str = "logpipe_validator_commit_seconds";
    pub const CONSUMER_LAG_RECORDS: &str = "logpipe_validator_consumer_lag_records";
    pub const EXTRA_FIELDS_DROPPED: &str = "logpipe_validator_extra_fields_dropped_total";
    pub const GATHER: &str = "logpipe_validator_gather_seconds";
    pub const RECORDS_INVALID: &str = "logpipe_validator_records_invalid_total";
    pub const RECORDS_LOST_TO_RETENTION: &str = "logpipe_validator_records_lost_to_retention_total";
    pub const RECORDS_VALID: &str = "logpipe_validator_records_valid_total";
    pub const REPLAY_STATE_FILES: &str = "logpipe_validator_replay_state_files";
    pub const SCHEMA_CACHE_HITS: &str = "logpipe_validator_schema_cache_hits_total";
    pub const SCHEMA_CACHE_MISSES: &str = "logpipe_validator_schema_cache_misses_total";
    pub const STORE_PAUSES: &str = "logpipe_validator_store_pauses_total";
    pub const TRANSACTIONS_ABORTED: &str = "logpipe_validator_transactions_aborted_total";
    pub const RESENDS_DROPPED: &str = "logpipe_validator_resends_dropped_total";
    /// The old name of [`RESENDS_DROPPED`], still exported beside it for one release so
    /// dashboards and alerts can move; removed in the release after 0.1.
    pub const REPLAYS_DROPPED_ALIAS: &str = "logpipe_validator_replays_dropped_total";
}

/// `logpipe-schema-store`.
pub mod schema_store {
    pub const AUTH_DENIED: &str = "logpipe_schema_store_auth_denied_total";
    pub const HTTP_ERRORS: &str = "logpipe_schema_store_http_errors_total";
    pub const HTTP_REQUEST: &str = "logpipe_schema_store_http_request_seconds";
    pub const KAFKA_COMMIT: &str = "logpipe_schema_store_kafka_commit_seconds";
    pub const KAFKA_ELECTIONS: &str = "logpipe_schema_store_kafka_elections_total";
    pub const KAFKA_ERRORS: &str = "logpipe_schema_store_kafka_errors_total";
    pub const KAFKA_FORWARDED: &str = "logpipe_schema_store_kafka_forwarded_total";
    pub const KAFKA_FORWARDED_RETRIES: &str = "logpipe_schema_store_kafka_forwarded_retries_total";
    pub const KAFKA_LEADER: &str = "logpipe_schema_store_kafka_leader";
    pub const KAFKA_RECORDS_SKIPPED: &str = "logpipe_schema_store_kafka_records_skipped_total";
    pub const KAFKA_REPLAY_OFFSET: &str = "logpipe_schema_store_kafka_replay_offset";
    pub const LOG_APPEND: &str = "logpipe_schema_store_log_append_seconds";
    pub const LOG_BATCH_RECORDS: &str = "logpipe_schema_store_log_batch_records";
    pub const LOG_ERRORS: &str = "logpipe_schema_store_log_errors_total";
    pub const LOOKUPS: &str = "logpipe_schema_store_lookups_total";
    pub const REGISTRATIONS: &str = "logpipe_schema_store_registrations_total";
    pub const REQUESTS_REJECTED: &str = "logpipe_schema_store_requests_rejected_total";
    pub const SCHEMAS: &str = "logpipe_schema_store_schemas";
}

/// `logpipe-cep`.
pub mod cep {
    pub const BATCH: &str = "logpipe_cep_batch_seconds";
    pub const CONSUMER_LAG_RECORDS: &str = "logpipe_cep_consumer_lag_records";
    pub const RECORDS_LOST_TO_RETENTION: &str = "logpipe_cep_records_lost_to_retention_total";
    pub const EVENTS: &str = "logpipe_cep_events_total";
    pub const EVENTS_UNDECODABLE: &str = "logpipe_cep_events_undecodable_total";
    pub const EVENTS_UNKEYED: &str = "logpipe_cep_events_unkeyed_total";
    pub const RULE_EVENTS_EVALUATED: &str = "logpipe_cep_rule_events_evaluated_total";
    pub const RULE_EVENTS_MATCHED: &str = "logpipe_cep_rule_events_matched_total";
    pub const RULE_KEYS_HELD: &str = "logpipe_cep_rule_keys_held";
    pub const RULE_MATCHES_EMITTED: &str = "logpipe_cep_rule_matches_emitted_total";
    pub const RULE_EVENTS_LATE: &str = "logpipe_cep_rule_events_late_total";
    pub const RULE_EVENTS_REFUSED: &str = "logpipe_cep_rule_events_refused_total";
    pub const RULE_STATE_TRIMMED: &str = "logpipe_cep_rule_state_trimmed_total";
    pub const RULE_EVENTS_HELD: &str = "logpipe_cep_rule_events_held";
    pub const RULE_WATERMARK_LAG: &str = "logpipe_cep_rule_watermark_lag_seconds";
    pub const RULES_ACTIVE: &str = "logpipe_cep_rules_active";
    pub const STATE_BYTES: &str = "logpipe_cep_state_bytes";
    pub const STATE_RESTORE: &str = "logpipe_cep_state_restore_seconds";
    pub const TRANSACTIONS_ABORTED: &str = "logpipe_cep_transactions_aborted_total";
    pub const AUTH_DENIED: &str = "logpipe_cep_auth_denied_total";
}
