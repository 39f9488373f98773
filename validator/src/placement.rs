//! Where an output record goes: its topic's C name and its partition.
//!
//! A clean or dead-letter topic with as many partitions as its raw topic (the validator creates
//! them so) takes each record into the raw record's own partition. That is the partition the
//! agent's partitioner gave the record's key on the write cluster (the mirror keeps partitions),
//! so a key keeps one partition end to end, a file's lines keep their order even without a key,
//! and librdkafka's partitioner is not run: a CRC32 of the key, a clock read and a topic lock per
//! record, about 7% of the validator's CPU in a profile of the whole pipeline. An output topic
//! with another partition count, or one not yet in the metadata, gets librdkafka's partitioner on
//! the key, as any producer would.

use std::collections::HashMap;
use std::ffi::{CStr, CString, NulError};
use std::sync::Arc;

/// Looked up for every record: hashed with foldhash rather than SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Output topics' C names (made once each) and the partition counts of the last metadata.
#[derive(Default)]
pub(crate) struct Placement {
    names: Map<Arc<str>, CString>,
    partitions: Map<String, i32>,
}

impl Placement {
    /// Takes the partition counts of a metadata read (every topic the cluster listed).
    pub(crate) fn update<'a>(&mut self, counts: impl IntoIterator<Item = (&'a String, &'a i32)>) {
        self.partitions = counts
            .into_iter()
            .map(|(topic, &n)| (topic.clone(), n))
            .collect();
    }

    /// The C name of `output` and the partition for a record read from `source` (topic and
    /// partition; `None`: the partitioner decides, as in a DLQ replay, whose input is not the
    /// raw topic).
    pub(crate) fn target(
        &mut self,
        output: &Arc<str>,
        source: Option<(&str, i32)>,
    ) -> Result<(&CStr, Option<i32>), NulError> {
        let partition = source.filter(|&(raw, partition)| {
            match (self.partitions.get(&**output), self.partitions.get(raw)) {
                (Some(out), Some(raw)) => out == raw && partition < *out,
                _ => false,
            }
        });
        if !self.names.contains_key(output) {
            self.names
                .insert(Arc::clone(output), CString::new(output.as_bytes())?);
        }
        Ok((&self.names[output], partition.map(|(_, p)| p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(counts: &[(&str, i32)]) -> Placement {
        let counts: Vec<(String, i32)> = counts.iter().map(|&(t, n)| (t.into(), n)).collect();
        let mut placement = Placement::default();
        placement.update(counts.iter().map(|(t, n)| (t, n)));
        placement
    }

    #[test]
    fn partitions_follow_the_raw_record_only_where_counts_match() {
        let mut p = placement(&[("raw.a", 4), ("clean.a", 4), ("dlq.a", 8)]);
        // (output, source topic and partition, expected partition)
        type Case<'a> = (&'a str, Option<(&'a str, i32)>, Option<i32>);
        let cases: &[Case] = &[
            // Same count: the raw record's partition.
            ("clean.a", Some(("raw.a", 3)), Some(3)),
            ("clean.a", Some(("raw.a", 0)), Some(0)),
            // Another count: the partitioner.
            ("dlq.a", Some(("raw.a", 3)), None),
            // A topic the metadata did not list yet: the partitioner.
            ("clean.b", Some(("raw.a", 1)), None),
            ("clean.a", Some(("raw.unknown", 1)), None),
            // A raw partition the output lacks (the raw topic grew since): the partitioner.
            ("clean.a", Some(("raw.a", 4)), None),
            // No source partition to follow (replay): the partitioner.
            ("clean.a", None, None),
        ];
        for &(output, source, expected) in cases {
            let (name, partition) = p.target(&Arc::from(output), source).unwrap();
            assert_eq!(name.to_str().unwrap(), output);
            assert_eq!(partition, expected, "{output} from {source:?}");
        }
    }

    #[test]
    fn an_update_replaces_the_counts() {
        let mut p = placement(&[("raw.a", 2), ("clean.a", 2)]);
        let clean: Arc<str> = Arc::from("clean.a");
        assert_eq!(p.target(&clean, Some(("raw.a", 1))).unwrap().1, Some(1));
        // The raw topic grew; the next metadata says so.
        let grown = [("raw.a".to_string(), 4), ("clean.a".to_string(), 2)];
        p.update(grown.iter().map(|(t, n)| (t, n)));
        assert_eq!(p.target(&clean, Some(("raw.a", 1))).unwrap().1, None);
    }

    #[test]
    fn a_name_with_a_nul_is_an_error_not_a_panic() {
        let mut p = placement(&[]);
        assert!(p.target(&Arc::from("bad\0topic"), None).is_err());
    }
}
