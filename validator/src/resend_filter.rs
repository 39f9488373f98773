//! Removing the agents' resends. Within one partition the records of one file identity arrive in offset
//! order (the agent's producer never leaves gaps and keys a file to one partition), so a record
//! whose `lp.offset` is not above the highest offset already passed for its (`lp.host`,
//! `lp.file`) in that partition is a resend of the agent (after a crash it re-sends up to one
//! checkpoint interval) and is dropped.
//!
//! The state is per source partition and lives in a compacted changelog topic: every batch's
//! changes are written in the batch's transaction, so state and consumer offsets always agree,
//! and a partition's state is read back when the partition is assigned. Entries idle for `ttl`
//! are expired with a tombstone. Records without `lp.*` headers pass untouched.

use std::collections::HashMap;

use logpipe_core::record::{FileId, RecordId};
use serde::{Deserialize, Serialize};

/// (source topic, partition).
pub(crate) type PartitionKey = (String, i32);

/// The highest offset passed for one file in one partition, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct StateKey(String, i32, String, String);

/// Values per topic, partition, file and host, nested so that a record's lookup borrows its
/// topic and host instead of building an owned key (two strings) per record: the filter sees
/// every record, and those allocations and hashes were a measurable part of the validator's CPU.
/// For the same reason the maps hash with foldhash (seeded per map), not std's SipHash: a lookup
/// hashes four keys, and SipHash made the filter ~8% of the checking loop.
#[derive(Debug)]
struct Table<V>(Map<String, Partitions<V>>);
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Partitions<V> = Map<i32, Files<V>>;
type Files<V> = Map<FileId, Hosts<V>>;
type Hosts<V> = Map<String, V>;

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table(Map::default())
    }
}

impl<V> Table<V> {
    fn get(&self, topic: &str, partition: i32, host: &str, file: FileId) -> Option<&V> {
        self.0.get(topic)?.get(&partition)?.get(&file)?.get(host)
    }

    /// Inserts, allocating only the parts of the key not present yet.
    fn insert(&mut self, topic: &str, partition: i32, host: &str, file: FileId, value: V) {
        let partitions = match self.0.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.0.entry(topic.to_owned()).or_default(),
        };
        let hosts = partitions
            .entry(partition)
            .or_default()
            .entry(file)
            .or_default();
        match hosts.get_mut(host) {
            Some(slot) => *slot = value,
            None => {
                hosts.insert(host.to_owned(), value);
            }
        }
    }

    fn remove(&mut self, topic: &str, partition: i32, host: &str, file: FileId) {
        let Some(files) = self.0.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return;
        };
        if let Some(hosts) = files.get_mut(&file) {
            hosts.remove(host);
            if hosts.is_empty() {
                files.remove(&file);
            }
        }
    }

    fn remove_partition(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.0.get_mut(topic) {
            partitions.remove(&partition);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, i32, &str, FileId, &V)> {
        self.0.iter().flat_map(|(topic, partitions)| {
            partitions.iter().flat_map(move |(partition, files)| {
                files.iter().flat_map(move |(file, hosts)| {
                    hosts
                        .iter()
                        .map(move |(host, v)| (topic.as_str(), *partition, host.as_str(), *file, v))
                })
            })
        })
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The resend state of the partitions this instance owns, and the changes of the open batch.
#[derive(Debug, Default)]
pub(crate) struct ResendFilter {
    ttl_ms: i64,
    state: Table<Entry>,
    /// Changes not yet committed: `None` is an expiry.
    pending: Table<Option<Entry>>,
}

impl ResendFilter {
    pub(crate) fn new(ttl: std::time::Duration) -> ResendFilter {
        ResendFilter {
            ttl_ms: ttl.as_millis() as i64,
            ..Default::default()
        }
    }

    /// Whether a record of `topic` partition `partition` is a resend: its offset is not above
    /// its file's high mark (the open batch's, else the committed one).
    pub(crate) fn is_resend(&self, topic: &str, partition: i32, id: &RecordId) -> bool {
        let current = match self.pending.get(topic, partition, &id.host, id.file) {
            Some(pending) => *pending,
            None => self.state.get(topic, partition, &id.host, id.file).copied(),
        };
        current.is_some_and(|e| id.offset <= e.offset)
    }

    /// Makes a record that [`ResendFilter::is_resend`] let through its file's high mark in the
    /// open batch.
    pub(crate) fn mark(&mut self, topic: &str, partition: i32, id: &RecordId, now_ms: i64) {
        let entry = Entry {
            offset: id.offset,
            seen_ms: now_ms,
        };
        self.pending
            .insert(topic, partition, &id.host, id.file, Some(entry));
    }

    /// Adds an expiry to the open batch for every entry idle for longer than the ttl.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        for (topic, partition, host, file, entry) in self.state.iter() {
            if now_ms - entry.seen_ms > self.ttl_ms
                && self.pending.get(topic, partition, host, file).is_none()
            {
                self.pending.insert(topic, partition, host, file, None);
            }
        }
    }

    /// The open batch's changes as changelog records (key, value or tombstone).
    pub(crate) fn changes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.pending
            .iter()
            .map(|(topic, partition, host, file, entry)| {
                let key = StateKey(topic.to_owned(), partition, host.to_owned(), file.to_hex());
                let key = serde_json::to_vec(&key).expect("serializable");
                (
                    key,
                    entry.map(|e| serde_json::to_vec(&e).expect("serializable")),
                )
            })
            .collect()
    }

    /// The open batch was committed: its changes are the state now.
    pub(crate) fn commit(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (topic, partition, host, file, entry) in pending.iter() {
            match entry {
                Some(entry) => self.state.insert(topic, partition, host, file, *entry),
                None => self.state.remove(topic, partition, host, file),
            }
        }
    }

    /// The open batch was aborted.
    pub(crate) fn rollback(&mut self) {
        self.pending.clear();
    }

    /// Forgets a partition this instance no longer owns.
    pub(crate) fn revoke(&mut self, partition: &PartitionKey) {
        self.state.remove_partition(&partition.0, partition.1);
        self.pending.remove_partition(&partition.0, partition.1);
    }

    /// Applies one changelog record (in log order) if it belongs to one of `owned`.
    pub(crate) fn restore(&mut self, owned: &[PartitionKey], key: &[u8], value: Option<&[u8]>) {
        let Ok(StateKey(topic, partition, host, file)) = serde_json::from_slice(key) else {
            return;
        };
        let Some(file) = FileId::from_hex(&file) else {
            return;
        };
        if !owned.iter().any(|(t, p)| *t == topic && *p == partition) {
            return;
        }
        match value.and_then(|v| serde_json::from_slice::<Entry>(v).ok()) {
            Some(entry) => self.state.insert(&topic, partition, &host, file, entry),
            None => self.state.remove(&topic, partition, &host, file),
        }
    }

    /// Files tracked, for the state-size gauge.
    pub(crate) fn len(&self) -> usize {
        self.state.iter().count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What the checking loop does with a record it writes: pass it unless it is a resend.
    fn pass(f: &mut ResendFilter, topic: &str, partition: i32, id: &RecordId, now: i64) -> bool {
        if f.is_resend(topic, partition, id) {
            return false;
        }
        f.mark(topic, partition, id, now);
        true
    }

    fn id(file: u64, offset: u64) -> RecordId {
        RecordId {
            host: "h".into(),
            file: FileId(file),
            offset,
        }
    }

    #[test]
    fn resends_are_dropped_per_file_and_partition() {
        let mut f = ResendFilter::new(Duration::from_secs(60));
        assert!(pass(&mut f, "raw.a", 0, &id(1, 0), 0));
        assert!(pass(&mut f, "raw.a", 0, &id(1, 10), 0));
        assert!(
            !pass(&mut f, "raw.a", 0, &id(1, 10), 0),
            "same offset again in the same batch"
        );
        assert!(!pass(&mut f, "raw.a", 0, &id(1, 0), 0));
        assert!(
            pass(&mut f, "raw.a", 0, &id(2, 0), 0),
            "another file identity is independent"
        );
        assert!(
            pass(&mut f, "raw.a", 1, &id(1, 0), 0),
            "another partition is independent"
        );
        assert!(
            pass(&mut f, "raw.b", 0, &id(1, 0), 0),
            "another topic is independent"
        );
        let other_host = RecordId {
            host: "g".into(),
            ..id(1, 0)
        };
        assert!(
            pass(&mut f, "raw.a", 0, &other_host, 0),
            "another host's file of the same identity is independent"
        );
        f.commit();
        assert!(
            !pass(&mut f, "raw.a", 0, &id(1, 5), 0),
            "committed state is remembered"
        );
        assert!(pass(&mut f, "raw.a", 0, &id(1, 20), 0));
        f.rollback();
        assert!(
            pass(&mut f, "raw.a", 0, &id(1, 20), 0),
            "an aborted batch leaves no trace"
        );
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn changelog_round_trip_restores_only_owned_partitions() {
        let mut f = ResendFilter::new(Duration::from_secs(60));
        let p0 = ("raw.a".to_owned(), 0);
        pass(&mut f, "raw.a", 0, &id(1, 100), 0);
        pass(&mut f, "raw.a", 1, &id(1, 7), 0);
        let changes = f.changes();
        f.commit();

        let mut restored = ResendFilter::new(Duration::from_secs(60));
        for (key, value) in &changes {
            restored.restore(std::slice::from_ref(&p0), key, value.as_deref());
        }
        assert_eq!(restored.len(), 1);
        assert!(!pass(&mut restored, "raw.a", 0, &id(1, 100), 0));
        assert!(
            pass(&mut restored, "raw.a", 1, &id(1, 7), 0),
            "partition 1 was not restored"
        );
        restored.revoke(&p0);
        assert!(pass(&mut restored, "raw.a", 0, &id(1, 100), 0));
    }

    #[test]
    fn idle_entries_expire_with_a_tombstone() {
        let mut f = ResendFilter::new(Duration::from_millis(1_000));
        let p0 = ("raw.a".to_owned(), 0);
        pass(&mut f, "raw.a", 0, &id(1, 5), 0);
        pass(&mut f, "raw.a", 0, &id(2, 5), 900);
        f.commit();
        f.expire(1_500);
        let changes = f.changes();
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.is_none(), "expiry is a tombstone");
        f.commit();
        assert_eq!(f.len(), 1);
        // A tombstone read back removes the entry.
        let mut restored = ResendFilter::new(Duration::from_secs(1));
        restored.restore(
            std::slice::from_ref(&p0),
            &changes[0].0,
            Some(br#"{"offset":5,"seen_ms":0}"#),
        );
        restored.restore(std::slice::from_ref(&p0), &changes[0].0, None);
        assert_eq!(restored.len(), 0);
    }
}
