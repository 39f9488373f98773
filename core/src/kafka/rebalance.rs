//! A group consumer's rebalances, recorded by librdkafka's callback for the service's loop to act
//! on between batches (restoring state for assigned partitions, dropping batches and state of
//! revoked ones). Callbacks run inside the consumer's poll, which a transactional loop never
//! calls while a transaction is open.

use std::sync::Mutex;

use super::is_partition_end;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

/// A topic and partition.
pub type Partition = (String, i32);

#[derive(Debug)]
pub enum GroupEvent {
    Assigned(Vec<Partition>),
    Revoked(Vec<Partition>),
}

/// A group consumer's context that keeps its rebalances until the loop takes them, and does not
/// log a partition's end as an error.
#[derive(Default)]
pub struct RebalanceLog {
    events: Mutex<Vec<GroupEvent>>,
}

impl RebalanceLog {
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
