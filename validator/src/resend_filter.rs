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

/// The resend state of the partitions this instance owns, and the changes of the open batch.
#[derive(Debug, Default)]
pub(crate) struct ResendFilter {
    ttl_ms: i64,
    state: HashMap<PartitionKey, HashMap<(String, FileId), Entry>>,
    /// Changes not yet committed: `None` is an expiry.
    pending: HashMap<(PartitionKey, (String, FileId)), Option<Entry>>,
}

impl ResendFilter {
    pub(crate) fn new(ttl: std::time::Duration) -> ResendFilter {
        ResendFilter {
            ttl_ms: ttl.as_millis() as i64,
            ..Default::default()
        }
    }

    /// Whether a record is a resend: its offset is not above its file's high mark (the open
    /// batch's, else the committed one).
    pub(crate) fn is_resend(&self, partition: &PartitionKey, id: &RecordId) -> bool {
        let file = (id.host.clone(), id.file);
        let key = (partition.clone(), file);
        let current = match self.pending.get(&key) {
            Some(pending) => *pending,
            None => self
                .state
                .get(partition)
                .and_then(|files| files.get(&key.1))
                .copied(),
        };
        current.is_some_and(|e| id.offset <= e.offset)
    }

    /// Whether a record passes (true) or is a resend (false). A passing record's offset becomes
    /// the file's high mark in the open batch. A caller that may still hold the record back
    /// (not write it in this batch) asks [`ResendFilter::is_resend`] first and passes it once
    /// it is written.
    pub(crate) fn pass(&mut self, partition: &PartitionKey, id: &RecordId, now_ms: i64) -> bool {
        if self.is_resend(partition, id) {
            return false;
        }
        let key = (partition.clone(), (id.host.clone(), id.file));
        self.pending.insert(
            key,
            Some(Entry {
                offset: id.offset,
                seen_ms: now_ms,
            }),
        );
        true
    }

    /// Adds an expiry to the open batch for every entry idle for longer than the ttl.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        for (partition, files) in &self.state {
            for (file, entry) in files {
                let key = (partition.clone(), file.clone());
                if now_ms - entry.seen_ms > self.ttl_ms && !self.pending.contains_key(&key) {
                    self.pending.insert(key, None);
                }
            }
        }
    }

    /// The open batch's changes as changelog records (key, value or tombstone).
    pub(crate) fn changes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.pending
            .iter()
            .map(|(((topic, partition), (host, file)), entry)| {
                let key = StateKey(topic.clone(), *partition, host.clone(), file.to_hex());
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
        for ((partition, file), entry) in self.pending.drain() {
            match entry {
                Some(entry) => {
                    self.state.entry(partition).or_default().insert(file, entry);
                }
                None => {
                    if let Some(files) = self.state.get_mut(&partition) {
                        files.remove(&file);
                    }
                }
            }
        }
    }

    /// The open batch was aborted.
    pub(crate) fn rollback(&mut self) {
        self.pending.clear();
    }

    /// Forgets a partition this instance no longer owns.
    pub(crate) fn revoke(&mut self, partition: &PartitionKey) {
        self.state.remove(partition);
        self.pending.retain(|(p, _), _| p != partition);
    }

    /// Applies one changelog record (in log order) if it belongs to one of `owned`.
    pub(crate) fn restore(&mut self, owned: &[PartitionKey], key: &[u8], value: Option<&[u8]>) {
        let Ok(StateKey(topic, partition, host, file)) = serde_json::from_slice(key) else {
            return;
        };
        let Some(file) = FileId::from_hex(&file) else {
            return;
        };
        let partition_key = (topic, partition);
        if !owned.contains(&partition_key) {
            return;
        }
        let files = self.state.entry(partition_key).or_default();
        match value.and_then(|v| serde_json::from_slice::<Entry>(v).ok()) {
            Some(entry) => {
                files.insert((host, file), entry);
            }
            None => {
                files.remove(&(host, file));
            }
        }
    }

    /// Files tracked, for the state-size gauge.
    pub(crate) fn len(&self) -> usize {
        self.state.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        let p0 = ("raw.a".to_owned(), 0);
        let p1 = ("raw.a".to_owned(), 1);
        assert!(f.pass(&p0, &id(1, 0), 0));
        assert!(f.pass(&p0, &id(1, 10), 0));
        assert!(
            !f.pass(&p0, &id(1, 10), 0),
            "same offset again in the same batch"
        );
        assert!(!f.pass(&p0, &id(1, 0), 0));
        assert!(
            f.pass(&p0, &id(2, 0), 0),
            "another file identity is independent"
        );
        assert!(
            f.pass(&p1, &id(1, 0), 0),
            "another partition is independent"
        );
        f.commit();
        assert!(!f.pass(&p0, &id(1, 5), 0), "committed state is remembered");
        assert!(f.pass(&p0, &id(1, 20), 0));
        f.rollback();
        assert!(
            f.pass(&p0, &id(1, 20), 0),
            "an aborted batch leaves no trace"
        );
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn changelog_round_trip_restores_only_owned_partitions() {
        let mut f = ResendFilter::new(Duration::from_secs(60));
        let p0 = ("raw.a".to_owned(), 0);
        let p1 = ("raw.a".to_owned(), 1);
        f.pass(&p0, &id(1, 100), 0);
        f.pass(&p1, &id(1, 7), 0);
        let changes = f.changes();
        f.commit();

        let mut restored = ResendFilter::new(Duration::from_secs(60));
        for (key, value) in &changes {
            restored.restore(std::slice::from_ref(&p0), key, value.as_deref());
        }
        assert_eq!(restored.len(), 1);
        assert!(!restored.pass(&p0, &id(1, 100), 0));
        assert!(
            restored.pass(&p1, &id(1, 7), 0),
            "partition 1 was not restored"
        );
        restored.revoke(&p0);
        assert!(restored.pass(&p0, &id(1, 100), 0));
    }

    #[test]
    fn idle_entries_expire_with_a_tombstone() {
        let mut f = ResendFilter::new(Duration::from_millis(1_000));
        let p0 = ("raw.a".to_owned(), 0);
        f.pass(&p0, &id(1, 5), 0);
        f.pass(&p0, &id(2, 5), 900);
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
