//! The keyed state of the repartition partitions this worker owns: a [`Counter`] per (rule
//! version, key), and the changelog writes of the batch being processed.
//!
//! The changelog (`_lp.cep.state.<group>`, compacted) has as many partitions as each repartition
//! topic, and the state of repartition partition `p` lives in changelog partition `p` (Kafka
//! Streams' co-partitioning), so a worker assigned a partition restores it by reading one
//! changelog partition. Its key is `<key path> US <rule> US <version> US <key>` (US = 0x1f), so
//! one changelog serves every key path; its value the counter's binary form, or a tombstone
//! when a rule version is deleted or replaced.

use std::collections::{BTreeMap, HashMap};

use crate::counter::{Completed, Counter};
use crate::event::EventRef;
use crate::rule::Rule;
use crate::ruleset::RuleSet;

const SEPARATOR: u8 = 0x1f;

/// A repartition topic and partition.
pub(crate) type Owned = (String, i32);

/// Per rule version, per key.
type Counters = HashMap<(String, u32), HashMap<String, Counter>>;

#[derive(Debug)]
struct PartitionState {
    key_path: String,
    counters: Counters,
}

/// Every owned partition's counters and the open batch's changelog writes.
#[derive(Debug, Default)]
pub(crate) struct KeyedState {
    partitions: HashMap<Owned, PartitionState>,
    /// (changelog partition, key) -> value, `None` for a tombstone.
    changes: BTreeMap<(i32, Vec<u8>), Option<Vec<u8>>>,
}

/// A changelog record's key.
pub(crate) fn changelog_key(key_path: &str, rule: &str, version: u32, key: &str) -> Vec<u8> {
    let version = version.to_string();
    let mut out = Vec::with_capacity(key_path.len() + rule.len() + key.len() + 16);
    for (i, part) in [key_path, rule, &version, key].iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// (key path, rule, version, key) of a changelog key.
fn parse_changelog_key(bytes: &[u8]) -> Option<(String, String, u32, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(4, SEPARATOR as char);
    let key_path = parts.next()?.to_owned();
    let rule = parts.next()?.to_owned();
    let version = parts.next()?.parse().ok()?;
    let key = parts.next()?.to_owned();
    Some((key_path, rule, version, key))
}

impl KeyedState {
    /// Starts owning a partition with no state (restore fills it).
    pub(crate) fn own(&mut self, owned: Owned, key_path: &str) {
        self.partitions
            .entry(owned)
            .or_insert_with(|| PartitionState {
                key_path: key_path.to_owned(),
                counters: HashMap::new(),
            });
    }

    /// Forgets a partition's state (revoked: its next owner restores it from the changelog).
    /// Revocations happen between batches, when the only pending changes are tombstones of
    /// inactive rule versions, which are right whoever writes them.
    pub(crate) fn release(&mut self, owned: &Owned) {
        self.partitions.remove(owned);
    }

    /// Forgets everything (after an aborted transaction: restored again from the changelog).
    pub(crate) fn clear(&mut self) {
        self.partitions.clear();
        self.changes.clear();
    }

    /// The partitions owned.
    pub(crate) fn owned(&self) -> Vec<(Owned, String)> {
        self.partitions
            .iter()
            .map(|(owned, s)| (owned.clone(), s.key_path.clone()))
            .collect()
    }

    /// Counts an event for a key; records the changelog write.
    pub(crate) fn advance(
        &mut self,
        owned: &Owned,
        rule: &Rule,
        key: &str,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        let state = self.partitions.get_mut(owned)?;
        let counter = state
            .counters
            .entry((rule.name.clone(), rule.version))
            .or_default()
            .entry(key.to_owned())
            .or_default();
        let before = counter.clone();
        let completed = counter.advance(rule, steps, event);
        if *counter != before {
            let encoded = counter.encode();
            self.changes.insert(
                (
                    owned.1,
                    changelog_key(&state.key_path, &rule.name, rule.version, key),
                ),
                Some(encoded),
            );
        }
        completed
    }

    /// Drops the state of rule versions that are no longer active, tombstoning their keys.
    pub(crate) fn retain(&mut self, rules: &RuleSet) {
        for ((_, partition), state) in &mut self.partitions {
            let key_path = state.key_path.clone();
            state.counters.retain(|(rule, version), keys| {
                if rules.get(rule, *version).is_some() {
                    return true;
                }
                for key in keys.keys() {
                    self.changes.insert(
                        (*partition, changelog_key(&key_path, rule, *version, key)),
                        None,
                    );
                }
                false
            });
        }
    }

    /// Restores one changelog record of partition `partition`. Records of partitions this worker
    /// does not own are skipped; records of inactive rule versions are tombstoned.
    pub(crate) fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        topic_of: impl Fn(&str) -> String,
        rules: &RuleSet,
    ) {
        let Some((key_path, rule, version, rule_key)) = parse_changelog_key(key) else {
            return;
        };
        let owned = (topic_of(&key_path), partition);
        let Some(state) = self.partitions.get_mut(&owned) else {
            return;
        };
        if rules.get(&rule, version).is_none() {
            if value.is_some() {
                self.changes.insert((partition, key.to_vec()), None);
            }
            return;
        }
        let counters = state.counters.entry((rule, version)).or_default();
        match value.and_then(Counter::decode) {
            Some(counter) => {
                counters.insert(rule_key, counter);
            }
            None => {
                counters.remove(&rule_key);
            }
        }
    }

    pub(crate) fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The open batch's changelog writes, emptied.
    pub(crate) fn take_changes(&mut self) -> BTreeMap<(i32, Vec<u8>), Option<Vec<u8>>> {
        std::mem::take(&mut self.changes)
    }

    /// Keys held per rule, and the approximate bytes of all state.
    pub(crate) fn sizes(&self) -> (HashMap<String, usize>, usize) {
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut bytes = 0;
        for state in self.partitions.values() {
            for ((rule, _), counters) in &state.counters {
                *keys.entry(rule.clone()).or_default() += counters.len();
                // Key text, the counter, and the hash table's slot.
                bytes += counters
                    .iter()
                    .map(|(k, c)| k.capacity() + c.size() + 16)
                    .sum::<usize>();
            }
        }
        (keys, bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rules(version: u32) -> RuleSet {
        let doc = crate::rule::parse_text("source: t\nkey: k\nrepeat: every\nevent_list:\n- {conditions: [{field: e, value: x}], count: 2}\n", false).unwrap();
        RuleSet::new(vec![Arc::new(
            Rule::compile("r", version, 0, &doc).unwrap(),
        )])
    }

    fn event(n: i64) -> EventRef {
        EventRef {
            id: format!("h/1/{n}"),
            topic: "t".into(),
            partition: 0,
            offset: n,
            event_time: n,
        }
    }

    #[test]
    fn counting_writes_the_changelog_and_restore_reads_it_back() {
        let set = rules(1);
        let rule = set.get("r", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 3);
        let mut state = KeyedState::default();
        state.own(owned.clone(), "k");
        assert!(state.advance(&owned, &rule, "p1", 1, &event(1)).is_none());
        assert!(
            state
                .advance(&("rp.k".into(), 4), &rule, "p1", 1, &event(1))
                .is_none(),
            "not owned"
        );
        let changes = state.take_changes();
        assert_eq!(changes.len(), 1);
        let ((partition, key), value) = changes.into_iter().next().unwrap();
        assert_eq!(partition, 3);
        assert_eq!(key, b"k\x1fr\x1f1\x1fp1");

        // A new owner restores the counter and completes the match with the next event.
        let mut restored = KeyedState::default();
        restored.own(owned.clone(), "k");
        restored.restore(3, &key, value.as_deref(), |_| "rp.k".into(), &set);
        assert!(restored
            .advance(&owned, &rule, "p1", 1, &event(2))
            .is_some());
        assert_eq!(restored.sizes().0["r"], 1);
    }

    #[test]
    fn a_replaced_version_is_dropped_and_tombstoned() {
        let old = rules(1);
        let rule = old.get("r", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 0);
        let mut state = KeyedState::default();
        state.own(owned.clone(), "k");
        state.advance(&owned, &rule, "p1", 1, &event(1));
        state.take_changes();
        state.retain(&rules(2));
        let changes = state.take_changes();
        assert_eq!(changes.values().collect::<Vec<_>>(), [&None]);
        assert!(state.sizes().0.is_empty());
        // Restoring an old version's record tombstones it instead.
        state.restore(
            0,
            &changelog_key("k", "r", 1, "p2"),
            Some(&[1]),
            |_| "rp.k".into(),
            &rules(2),
        );
        assert_eq!(state.take_changes().len(), 1);
    }

    #[test]
    fn keys_may_hold_the_separator_in_their_last_part() {
        let key = changelog_key("member.playerId", "r.v2", 12, "a\x1fb");
        assert_eq!(
            parse_changelog_key(&key),
            Some(("member.playerId".into(), "r.v2".into(), 12, "a\x1fb".into()))
        );
    }
}
