//! The mirror's Kafka clients, built from `logpipe_core::kafka` roles plus the few settings the
//! mirror needs on top, each with the reason it is there.

use std::ffi::CString;

use logpipe_core::kafka::{end_reader, EndReader, KafkaConfig, Role};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientConfig;

use crate::config::MirrorConfig;

/// Group id given to assign-mode consumers: librdkafka wants one, but they never join, fetch
/// offsets or commit with it, so nothing is written to either cluster through it.
const UNUSED_GROUP: &str = "logpipe-mirror.assign-only";

/// Never let a metadata request create a topic: auto-creation would use the broker's default
/// partition count instead of the source's.
fn no_auto_create(config: &mut ClientConfig) -> &mut ClientConfig {
    config.set("allow.auto.create.topics", "false")
}

/// The buffer budget of one shard. Dividing by the shard count (not by the shards this
/// instance owns) keeps the process within budget whatever it ends up owning.
///
/// The process needs memory besides buffered records (code, thread stacks, librdkafka's
/// per-broker buffers, the allocator's slack), so 32 MiB, at most a quarter of the budget, is
/// kept out of the split: the budget bounds the process's RSS, not only its buffers.
///
/// librdkafka's byte limits count only keys and values, and a fetch response is held in
/// memory next to the queue it fills, so the share is split to leave room for both: half for
/// the producer queue, a quarter for the fetch queue and a quarter for the fetch in flight.
struct ShardBudget {
    producer_bytes: u64,
    fetch_queue_bytes: u64,
    fetch_bytes: u64,
}

/// Bookkeeping librdkafka keeps per queued record on top of its key and value (its message
/// struct, header list and allocator overhead), assumed when turning bytes into a record
/// count limit: small records must not exceed the budget by their overhead alone.
const RECORD_OVERHEAD: u64 = 512;

/// See [`ShardBudget`].
const PROCESS_RESERVE: u64 = 32 * 1024 * 1024;

fn shard_budget(max_buffer_bytes: u64, shards: i32) -> ShardBudget {
    let buffers = max_buffer_bytes - PROCESS_RESERVE.min(max_buffer_bytes / 4);
    let share = buffers / shards.max(1) as u64;
    ShardBudget {
        producer_bytes: share / 2,
        fetch_queue_bytes: share / 4,
        fetch_bytes: share / 4,
    }
}

/// The consumer that reads a shard's source partitions: read_committed, assign mode (positions
/// come from the target, never from a source group), and an error instead of a silent jump when
/// a position has been deleted by retention.
pub(crate) fn source_consumer(
    config: &MirrorConfig,
    shard: i32,
    shards: i32,
) -> anyhow::Result<BaseConsumer> {
    let budget = shard_budget(config.max_buffer_bytes, shards);
    let kbytes = (budget.fetch_queue_bytes / 1024).max(1024);
    let fetch = budget.fetch_bytes.clamp(1024 * 1024, 50 * 1024 * 1024);
    // librdkafka's count target is per partition (default 100,000, which for small records is
    // far more bookkeeping than the byte limit suggests); assume a few partitions per shard.
    let messages = (budget.fetch_queue_bytes / RECORD_OVERHEAD / 4).max(1000);
    let mut client = config.source.client_config(
        &Role::Consumer {
            group_id: UNUSED_GROUP.into(),
        },
        &format!("logpipe-mirror-{shard}"),
    );
    no_auto_create(&mut client)
        .set("auto.offset.reset", "error")
        .set("queued.max.messages.kbytes", kbytes.to_string())
        .set("queued.min.messages", messages.to_string())
        .set("fetch.max.bytes", fetch.to_string())
        .set(
            "max.partition.fetch.bytes",
            (fetch / 4).max(1024 * 1024).min(fetch).to_string(),
        );
    Ok(client.create()?)
}

/// A read_committed reader of the target.
pub(crate) type TargetReader = EndReader;

/// A read_committed assign-mode reader of the target (state topic, partition tails) that
/// reports the end of each partition.
pub(crate) fn target_reader(config: &MirrorConfig, shard: i32) -> anyhow::Result<TargetReader> {
    let mut client = config.target.client_config(
        &Role::Consumer {
            group_id: UNUSED_GROUP.into(),
        },
        &format!("logpipe-mirror-{shard}"),
    );
    no_auto_create(&mut client).set("auto.offset.reset", "earliest");
    Ok(end_reader(client)?)
}

/// The shard's transactional producer on the target.
pub(crate) fn shard_producer<C: ProducerContext>(
    config: &MirrorConfig,
    shard: i32,
    shards: i32,
    context: C,
) -> anyhow::Result<BaseProducer<C>> {
    let bytes = shard_budget(config.max_buffer_bytes, shards).producer_bytes;
    let kbytes = (bytes / 1024).max(1024);
    let messages = (bytes / RECORD_OVERHEAD).max(10_000);
    let role = Role::TransactionalProducer {
        transactional_id: config.transactional_id(shard),
    };
    let mut client = config
        .target
        .client_config(&role, &format!("logpipe-mirror-{shard}"));
    no_auto_create(&mut client)
        .set("queue.buffering.max.kbytes", kbytes.to_string())
        .set("queue.buffering.max.messages", messages.to_string());
    Ok(client.create_with_context(context)?)
}

/// The member of the assignment group on the target: it subscribes to the state topic only to
/// receive shards (state partitions) and never reads or commits.
pub(crate) fn membership<C: ConsumerContext>(
    config: &MirrorConfig,
    context: C,
) -> anyhow::Result<BaseConsumer<C>> {
    let mut client = config.target.client_config(
        &Role::StaticMember {
            group_id: config.group_id(),
            instance_id: config.instance_id(),
        },
        "logpipe-mirror",
    );
    no_auto_create(&mut client)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 5).to_string(),
        );
    Ok(client.create_with_context(context)?)
}

/// A client for metadata reads of one side.
pub(crate) fn metadata_client(kafka: &KafkaConfig, side: &str) -> anyhow::Result<BaseConsumer> {
    let mut client = kafka.client_config(&Role::Admin, &format!("logpipe-mirror-{side}"));
    Ok(no_auto_create(&mut client).create()?)
}

/// The target's admin client, for creating topics and partitions.
pub(crate) fn admin(kafka: &KafkaConfig) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(kafka
        .client_config(&Role::Admin, "logpipe-mirror-admin")
        .create()?)
}

/// The low and high watermarks librdkafka last saw for a partition, without a request (so it is
/// cheap enough for per-second lag metrics and does not block during an outage); `None` until a
/// fetch response has been seen.
pub(crate) fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the topic is a valid C
    // string for the call, and the outputs are plain i64s.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_budgets_add_up_to_at_most_the_process_budget_less_its_reserve() {
        for (budget, shards) in [
            (256 * 1024 * 1024, 8),
            (16 * 1024 * 1024, 4),
            (1 << 30, 3),
            (256 * 1024 * 1024, 0),
        ] {
            let share = shard_budget(budget, shards);
            let per_shard = share.producer_bytes + share.fetch_queue_bytes + share.fetch_bytes;
            let reserve = PROCESS_RESERVE.min(budget / 4);
            assert!(
                per_shard * shards.max(1) as u64 <= budget - reserve,
                "{budget} over {shards} shards"
            );
            assert!(
                share.producer_bytes > 0 && share.fetch_queue_bytes > 0 && share.fetch_bytes > 0
            );
        }
    }
}
