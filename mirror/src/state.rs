//! Source positions stored on the target, in the state topic, written in the same transaction as
//! the records they cover.
//!
//! One record per source partition and commit: key `{"topic":..,"partition":..}` (so the topic
//! can be compacted), value `{"source":S,"target":T}`: every source record below offset `S` is
//! mirrored, and the last of them ends before target offset `T`. A shard writes to the state
//! partition of its own number. Readers keep, per key, the record with the highest `S` found in
//! *any* state partition, which stays right even if the partition count (the shard count) was
//! changed between runs: positions only ever move forward.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::bail;
use logpipe_core::kafka::read_to_end;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset};
use serde::{Deserialize, Serialize};

use crate::clients::TargetReader;

/// A committed position of one source partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    /// Next source offset to mirror.
    pub(crate) source: i64,
    /// Target offset just after the last record the mirror wrote for this partition.
    pub(crate) target: i64,
}

#[derive(Serialize, Deserialize)]
struct Key<'a> {
    topic: &'a str,
    partition: i32,
}

/// Key and value of the state record of a source partition.
pub(crate) fn encode(topic: &str, partition: i32, position: Position) -> (Vec<u8>, Vec<u8>) {
    let key = serde_json::to_vec(&Key { topic, partition }).expect("state key serializes");
    let value = serde_json::to_vec(&position).expect("state value serializes");
    (key, value)
}

fn decode(key: &[u8], value: &[u8]) -> Option<((String, i32), Position)> {
    let key: Key<'_> = serde_json::from_slice(key).ok()?;
    let position: Position = serde_json::from_slice(value).ok()?;
    Some(((key.topic.to_owned(), key.partition), position))
}

/// Reads the whole state topic (read_committed) and returns the latest position of each source
/// partition for which `wanted` is true.
pub(crate) fn read_positions(
    reader: &TargetReader,
    state_topic: &str,
    partitions: i32,
    wanted: impl Fn(&str, i32) -> bool,
    timeout: Duration,
) -> anyhow::Result<HashMap<(String, i32), Position>> {
    let from: Vec<(i32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
    let mut positions: HashMap<(String, i32), Position> = HashMap::new();
    for record in drain(reader, state_topic, &from, timeout, usize::MAX)? {
        let Some((key, position)) = record
            .key()
            .zip(record.payload())
            .and_then(|(k, v)| decode(k, v))
        else {
            tracing::warn!(
                partition = record.partition(),
                offset = record.offset(),
                "skipping an unreadable record in the state topic"
            );
            continue;
        };
        if !wanted(&key.0, key.1) {
            continue;
        }
        let entry = positions.entry(key).or_insert(position);
        if position.source > entry.source {
            *entry = position;
        }
    }
    Ok(positions)
}

/// Reads every committed record of `topic`'s partitions from the given offsets to their end, as
/// a read_committed consumer sees it now, in order per partition. Fails rather than hold more
/// than `max_bytes` of keys and values.
pub(crate) fn drain(
    reader: &TargetReader,
    topic: &str,
    from: &[(i32, i64)],
    timeout: Duration,
    max_bytes: usize,
) -> anyhow::Result<VecDeque<OwnedMessage>> {
    let from: Vec<(i32, Offset)> = from.iter().map(|(p, o)| (*p, Offset::Offset(*o))).collect();
    let mut records = VecDeque::new();
    let mut bytes = 0usize;
    read_to_end(reader, topic, &from, timeout, None, |message| {
        bytes += message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
        if bytes > max_bytes {
            bail!(
                "{topic} holds more than {max_bytes} bytes after the positions read; refusing to \
                 buffer them"
            );
        }
        records.push_back(message.detach());
        Ok(())
    })?;
    Ok(records)
}
