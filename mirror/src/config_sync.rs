//! Keeping target topic configs in step with their source topics: a retention or compaction
//! change on the write side reaches the read side within a refresh, as it does in MirrorMaker 2
//! (`sync.topic.configs.enabled`), for the [`COPIED_CONFIGS`] the mirror copies when it creates
//! a topic.
//!
//! Kafka's AlterConfigs (the API rdkafka offers) replaces a topic's whole set of topic-level
//! configs, so the set written keeps every config the target topic sets itself that the mirror
//! does not copy (its operators' `segment.bytes`, say), changes only the copied ones, and is
//! written only when a copied one differs. Needs the AlterConfigs permission on the target
//! topics, like creating them needs CreateTopics; a refusal is logged and retried next refresh.

use std::collections::BTreeMap;

use rdkafka::admin::{ConfigEntry, ConfigSource};

use crate::topology::{copied_configs, COPIED_CONFIGS};

/// What to write to a target topic whose copied configs differ from its source's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resync {
    /// The whole topic-level set to write (name, value).
    pub(crate) set: Vec<(String, String)>,
    /// Each change, as `name: old -> new`.
    pub(crate) changes: Vec<String>,
}

/// The re-sync a target topic needs, if any. `source` and `target` are the two topics'
/// DescribeConfigs entries; `replication` the target topic's replication factor
/// (`min.insync.replicas` is capped at it, as at creation).
pub(crate) fn plan(
    source: &[ConfigEntry],
    target: &[ConfigEntry],
    replication: i32,
) -> Option<Resync> {
    let wanted: BTreeMap<String, String> =
        copied_configs(source, replication).into_iter().collect();
    // The target topic's own settings (a broker-level or default value is not the topic's).
    let own: BTreeMap<&str, &str> = target
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    let mut changes = Vec::new();
    for name in COPIED_CONFIGS {
        let (now, then) = (
            own.get(name).copied(),
            wanted.get(*name).map(String::as_str),
        );
        if now != then {
            changes.push(format!(
                "{name}: {} -> {}",
                now.unwrap_or("(default)"),
                then.unwrap_or("(default)")
            ));
        }
    }
    if changes.is_empty() {
        return None;
    }
    let mut set: Vec<(String, String)> = own
        .iter()
        .filter(|(name, _)| !COPIED_CONFIGS.contains(name))
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    set.extend(wanted);
    Some(Resync { set, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::entry;

    #[test]
    fn only_a_difference_in_the_copied_configs_is_written_keeping_the_targets_own() {
        use ConfigSource::{Default, DynamicBroker, DynamicTopic};
        let source = [
            entry("retention.ms", "7200000", DynamicTopic),
            entry("cleanup.policy", "delete", Default),
            entry("min.insync.replicas", "3", DynamicBroker),
            entry("segment.bytes", "1000", DynamicTopic),
        ];
        let target = [
            entry("retention.ms", "3600000", DynamicTopic),
            entry("min.insync.replicas", "2", DynamicTopic),
            entry("segment.bytes", "5000", DynamicTopic),
            entry("compression.type", "producer", Default),
        ];
        let Resync { set, changes } = plan(&source, &target, 2).expect("retention.ms differs");
        assert_eq!(changes, ["retention.ms: 3600000 -> 7200000"]);
        let set: BTreeMap<_, _> = set.into_iter().collect();
        assert_eq!(
            set,
            BTreeMap::from([
                ("min.insync.replicas".to_owned(), "2".to_owned()),
                ("retention.ms".to_owned(), "7200000".to_owned()),
                ("segment.bytes".to_owned(), "5000".to_owned()),
            ]),
            "the target's own segment.bytes stays; min.insync.replicas is capped at 2 replicas"
        );
        // In step: nothing to write.
        let synced = [
            entry("retention.ms", "7200000", DynamicTopic),
            entry("min.insync.replicas", "2", DynamicTopic),
        ];
        assert_eq!(plan(&source, &synced, 2), None);
        // A copied config the source no longer sets goes back to the target's default.
        let Resync { set, changes } = plan(&source[1..], &synced, 2).unwrap();
        assert_eq!(changes, ["retention.ms: 7200000 -> (default)"]);
        assert!(!set.iter().any(|(name, _)| name == "retention.ms"));
    }
}
