//! Splitting shards between instances: every instance joins one consumer group on the target
//! cluster, subscribed to the state topic, whose partitions are the shards. The group
//! coordinator hands each partition (shard) to exactly one live member; when an instance dies,
//! its session times out and the survivors receive its shards. The cooperative-sticky assignor
//! moves only the shards that must move. The member never fetches (its partitions are paused)
//! and never commits: positions live in the state topic, written transactionally by the shards.
//!
//! Ownership by the group is advisory: the shard's transactional id is what guarantees a single
//! writer, because a new owner's `init_transactions` fences the old one even if the old one has
//! not noticed yet that it lost the shard.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::clients;
use crate::metrics as names;
use crate::shard::{self, Shared};

struct Worker {
    stop: CancellationToken,
    thread: JoinHandle<()>,
}

/// The shards this instance runs, started and stopped from rebalance callbacks.
struct Shards {
    shared: Arc<Shared>,
    state_topic: String,
    workers: Mutex<BTreeMap<i32, Worker>>,
}

impl Shards {
    fn start(&self, shard: i32) {
        let mut workers = self.workers.lock().expect("workers lock");
        if workers.contains_key(&shard) {
            return;
        }
        // Before the thread exists, so its session cannot open before it is awaited.
        self.shared.ready.assigned(&[shard]);
        let stop = CancellationToken::new();
        let shared = self.shared.clone();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard}"))
            .spawn(move || shard::run(&shared, shard, &token))
            .expect("spawning a shard thread");
        tracing::info!(shard, "shard assigned to this instance");
        workers.insert(shard, Worker { stop, thread });
    }

    /// Stops shards and waits for their last commit, so a handover does not redo their work.
    fn stop(&self, shards: &[i32]) {
        let stopping: Vec<(i32, Worker)> = {
            let mut workers = self.workers.lock().expect("workers lock");
            shards
                .iter()
                .filter_map(|s| workers.remove(s).map(|w| (*s, w)))
                .collect()
        };
        for (_, worker) in &stopping {
            worker.stop.cancel();
        }
        for (shard, worker) in stopping {
            if worker.thread.join().is_err() {
                tracing::error!(shard, "shard thread panicked");
            }
        }
    }

    fn owned(&self) -> Vec<i32> {
        self.workers
            .lock()
            .expect("workers lock")
            .keys()
            .copied()
            .collect()
    }

    fn shards_in(&self, rebalance: &Rebalance<'_>) -> Vec<i32> {
        let list = match rebalance {
            Rebalance::Assign(list) | Rebalance::Revoke(list) => list,
            Rebalance::Error(_) => return Vec::new(),
        };
        list.elements_for_topic(&self.state_topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for Shards {}

impl ConsumerContext for Shards {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(_) => {
                let shards = self.shards_in(rebalance);
                tracing::info!(?shards, "shards revoked from this instance");
                self.stop(&shards);
                self.shared.ready.revoked(&shards);
            }
            Rebalance::Error(e) => tracing::warn!("shard assignment: {e}"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // The member only holds shards; it must not fetch the state topic.
            if let Err(e) = consumer.pause(list) {
                tracing::warn!("pausing the assignment member: {e}");
            }
            // An assignment that gives this instance no shard is an answer too.
            self.shared.ready.assigned(&[]);
            for shard in self.shards_in(rebalance) {
                self.start(shard);
            }
        }
    }
}

/// Joins the assignment group and runs the shards it is given until `stop` is cancelled; then
/// stops every shard (each commits its last transaction) and leaves the group, so the others
/// take over at once instead of after a session timeout.
pub(crate) fn run(shared: Arc<Shared>, stop: CancellationToken) -> anyhow::Result<()> {
    let config = shared.config.clone();
    let state_topic = config.state_topic();
    let context = Shards {
        shared,
        state_topic: state_topic.clone(),
        workers: Mutex::new(BTreeMap::new()),
    };
    let member: BaseConsumer<Shards> = clients::membership(&config, context)?;
    member
        .subscribe(&[&state_topic])
        .context("joining the shard assignment group")?;
    let owned_gauge = metrics::gauge!(names::SHARDS_OWNED);
    while !stop.is_cancelled() {
        if let Some(Err(e)) = member.poll(Duration::from_millis(100)) {
            tracing::debug!("shard assignment member: {e}");
        }
        owned_gauge.set(member.context().owned().len() as f64);
    }
    let owned = member.context().owned();
    tracing::info!(shards = ?owned, "stopping shards");
    member.context().stop(&owned);
    member.unsubscribe();
    // Serve the revocation of the unsubscribe so the group sees us leave.
    for _ in 0..20 {
        member.poll(Duration::from_millis(50));
    }
    owned_gauge.set(0.0);
    Ok(())
}
