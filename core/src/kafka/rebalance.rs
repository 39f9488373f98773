//! A group consumer's rebalances, recorded by librdkafka's callback for the service's loop to act
//! on between batches (restoring state for assigned partitions, dropping batches and state of
//! revoked ones). Callbacks run inside the consumer's poll; a loop that polls while a
//! transaction is open (the validator) aborts that transaction when partitions are revoked.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::is_partition_end;
use super::retention::Losses;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

/// A topic and partition.
pub type Partition = (String, i32);

#[derive(Debug)]
pub enum GroupEvent {
    Assigned(Vec<Partition>),
    Revoked(Vec<Partition>),
}

/// A group consumer's context that keeps its rebalances until the loop takes them, reports
/// records deleted by retention before they were read, and does not log a partition's end as an
/// error.
pub struct RebalanceLog {
    events: Mutex<Vec<GroupEvent>>,
    losses: Losses,
}

impl RebalanceLog {
    /// A context whose losses to retention are counted in the counter `lost_metric` (labels
    /// `topic` and `partition`).
    pub fn counting_losses_as(lost_metric: &'static str) -> RebalanceLog {
        RebalanceLog {
            events: Mutex::default(),
            losses: Losses::counted_as(lost_metric),
        }
    }

    /// Settles losses to retention whose end librdkafka did not say with a batch's offsets
    /// (first and last per partition); call it for every batch read.
    pub fn settle_losses(&self, batch: &BTreeMap<Partition, (i64, i64)>) {
        self.losses.settle(batch);
    }

    /// Settles the rest with the partitions' log starts: a log that retention emptied has no
    /// batch to settle its loss. Call between batches (every batch read since a reset has
    /// settled its partition), e.g. with the lag; it asks the broker only when a loss is
    /// pending.
    pub fn settle_losses_at_log_start(&self, consumer: &impl Consumer<RebalanceLog>) {
        let starts = self
            .losses
            .pending()
            .into_iter()
            .filter_map(|(topic, partition)| {
                let (low, _) = tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                })
                .ok()?;
                Some(((topic, partition), low))
            });
        self.losses.settle_at(starts.collect::<Vec<_>>());
    }

    /// The rebalances since the last call, oldest first.
    pub fn take(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *self.events.lock().expect("group events lock"))
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for RebalanceLog {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_end(&error) {
            tracing::error!(target: "librdkafka", "{error}: {reason}");
        }
    }

    /// As rdkafka's default, at the same levels, except a reset past deleted records: that is
    /// reported as the loss it is.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "OFFSET" && self.losses.observe(message) {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }
}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => GroupEvent::Assigned(partitions(list)),
            Rebalance::Revoke(list) => GroupEvent::Revoked(partitions(list)),
            Rebalance::Error(e) => {
                tracing::warn!("rebalance error: {e}");
                return;
            }
        };
        tracing::info!(?event, "consumer group rebalance");
        self.events.lock().expect("group events lock").push(event);
    }
}
