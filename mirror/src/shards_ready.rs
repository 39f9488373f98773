//! The readiness check `shards`: an instance is ready once the group has handed it its shards
//! and each of them has opened its session (fenced the previous owner, read its positions), i.e.
//! once it copies everything it owns. Reachable clusters alone (the `source` and `target`
//! checks) said ready seconds before the first record could move: the group join and the
//! sessions' start came after, so whatever waited for `/ready` (a deployment's probe, the dev
//! pipeline, a benchmark) timed the mirror's start-up as if it were copying.
//!
//! An instance the group gives no shard (more instances than shards) is ready once it has been
//! told so. A shard whose session fails later keeps the instance ready: the shard errors metric
//! and log report that, and the session is retried.

use std::collections::BTreeSet;
use std::sync::Mutex;

use logpipe_core::telemetry::Readiness;

const CHECK: &str = "shards";

/// Which assigned shards have not opened a session yet (`None`: no assignment yet).
pub(crate) struct ShardsReady {
    readiness: Readiness,
    opening: Mutex<Option<BTreeSet<i32>>>,
}

impl ShardsReady {
    /// Registers the check, not ready until the first assignment.
    pub(crate) fn new(readiness: Readiness) -> ShardsReady {
        readiness.not_ready(CHECK, "waiting for the shard assignment");
        ShardsReady {
            readiness,
            opening: Mutex::new(None),
        }
    }

    /// The group assigned `shards` (possibly none) to this instance.
    pub(crate) fn assigned(&self, shards: &[i32]) {
        self.change(|opening| opening.extend(shards));
    }

    /// `shards` were taken from this instance.
    pub(crate) fn revoked(&self, shards: &[i32]) {
        self.change(|opening| {
            for shard in shards {
                opening.remove(shard);
            }
        });
    }

    /// `shard` opened its session. Before the first assignment (a shard cannot run then) this
    /// changes nothing.
    pub(crate) fn opened(&self, shard: i32) {
        let mut opening = self.opening.lock().expect("shards readiness lock");
        if let Some(set) = opening.as_mut() {
            set.remove(&shard);
            self.report(set);
        }
    }

    fn change(&self, f: impl FnOnce(&mut BTreeSet<i32>)) {
        let mut opening = self.opening.lock().expect("shards readiness lock");
        let set = opening.get_or_insert_with(BTreeSet::new);
        f(set);
        self.report(set);
    }

    fn report(&self, opening: &BTreeSet<i32>) {
        if opening.is_empty() {
            self.readiness.ready(CHECK);
        } else {
            self.readiness
                .not_ready(CHECK, format!("opening the sessions of shards {opening:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_assigned_shard_has_opened() {
        let readiness = Readiness::new();
        let shards = ShardsReady::new(readiness.clone());
        assert!(!readiness.is_ready(), "no assignment yet");
        shards.opened(0);
        assert!(!readiness.is_ready(), "an open before any assignment");
        shards.assigned(&[0, 2]);
        assert!(!readiness.is_ready());
        shards.opened(2);
        assert!(!readiness.is_ready(), "shard 0 still opening");
        shards.opened(0);
        assert!(readiness.is_ready());
        // A further shard makes it wait again; revoking an unopened shard does not.
        shards.assigned(&[3]);
        assert!(!readiness.is_ready());
        shards.revoked(&[3]);
        assert!(readiness.is_ready());
    }

    #[test]
    fn an_instance_without_shards_is_ready_once_told() {
        let readiness = Readiness::new();
        let shards = ShardsReady::new(readiness.clone());
        shards.assigned(&[]);
        assert!(readiness.is_ready());
    }
}
