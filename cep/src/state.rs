//! The keyed state of the repartition partitions this worker owns: a [`Counter`] per (rule
//! version, key) of a rule counting as events arrive, a [`Track`] per (rule version, key) of a
//! timed rule with the keys due at each release point, the partition's event-time [`Clocks`],
//! and the changelog writes of the batch being processed.
//!
//! The changelog (`_lp.cep.state.<group>`, compacted) has as many partitions as each repartition
//! topic, and the state of repartition partition `p` lives in changelog partition `p` (Kafka
//! Streams' co-partitioning), so a worker assigned a partition restores it by reading one
//! changelog partition. Its key is `<key path> US <rule> US <version> US <key>` (US = 0x1f), so
//! one changelog serves every key path; its value the counter's binary form (or a track's JSON
//! after a format byte), or a tombstone when a rule version is deleted or replaced. The
//! partition's clocks are the entry of the empty rule name.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use logpipe_core::kafka::{record_size, NO_HEADERS};

use crate::clock::{Clocks, Progress};
use crate::counter::{Completed, Counter};
use crate::event::EventRef;
use crate::metrics as names;
use crate::rule::Rule;
use crate::ruleset::RuleSet;
use crate::timed::{Emitted, Track};

const SEPARATOR: u8 = 0x1f;
/// The format byte before a track's JSON in the changelog (a counter's layout starts with 1).
const TRACK_FORMAT: u8 = b'T';

/// A repartition topic and partition.
pub(crate) type Owned = (String, i32);

/// Per rule version, per key.
type Counters = HashMap<(String, u32), HashMap<String, Counter>>;

/// One timed rule version's keys on one partition.
#[derive(Debug, Default)]
struct TimedKeys {
    tracks: HashMap<String, Track>,
    /// (release point at which the key has something to do, key).
    due: BTreeSet<(i64, String)>,
    /// The release point the tracks were last released to.
    point: Option<i64>,
    /// The rule's watermark on this partition as of the last marker (what events are judged
    /// late against); `None` until computed from the clocks.
    watermark: Option<Option<i64>>,
    /// The schedule's end has passed: nothing is held any more.
    ended: bool,
}

#[derive(Debug)]
struct PartitionState {
    key_path: String,
    counters: Counters,
    timed: HashMap<(String, u32), TimedKeys>,
    clocks: Clocks,
}

/// Why a timed rule's event is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotHeld {
    /// It came after the watermark passed it.
    Late(Late),
    /// Its key's state with it would be a changelog record of `bytes`, more than the producer
    /// takes: held, it would fail every transaction and stall the worker (a hot key while the
    /// watermark stands still).
    KeyStateFull { bytes: usize },
}

/// A timed rule's event that came after the watermark passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Late {
    pub(crate) watermark: i64,
    pub(crate) by_ms: i64,
}

/// What the state holds, for metrics and `GET /rules/{name}/status`.
#[derive(Debug, Default)]
pub(crate) struct Sizes {
    /// Keys with state, per rule.
    pub(crate) keys: HashMap<String, usize>,
    /// Events waiting for the watermark and partial matches, per rule.
    pub(crate) pending: HashMap<String, usize>,
    /// Events waiting for the watermark, per rule.
    pub(crate) waiting: HashMap<String, usize>,
    /// The lowest watermark over the owned partitions, per rule version; absent while any of
    /// them has none yet (its events wait whatever the others' watermarks say).
    pub(crate) watermarks: HashMap<(String, u32), i64>,
    /// Approximate bytes of all state.
    pub(crate) bytes: usize,
}

/// Every owned partition's state and the open batch's changelog writes.
#[derive(Debug)]
pub(crate) struct KeyedState {
    partitions: HashMap<Owned, PartitionState>,
    /// (changelog partition, key) -> value, `None` for a tombstone.
    changes: BTreeMap<(i32, Vec<u8>), Option<Vec<u8>>>,
    /// The sequence bound of a rule that gives no `within`.
    default_within: i64,
    /// The largest changelog record the producer takes (`message.max.bytes`).
    max_entry_bytes: usize,
}

impl Default for KeyedState {
    fn default() -> Self {
        KeyedState::new(3_600_000, 1_000_000)
    }
}

fn encode_track(track: &Track) -> Vec<u8> {
    let mut out = vec![TRACK_FORMAT];
    serde_json::to_writer(&mut out, track).expect("a track serializes");
    out
}

fn decode_track(bytes: &[u8]) -> Option<Track> {
    let (&format, rest) = bytes.split_first()?;
    (format == TRACK_FORMAT)
        .then(|| serde_json::from_slice(rest).ok())
        .flatten()
}

/// Keeps a key's track within a changelog record (`change` is its record key), or every
/// transaction would fail on it: when it is larger, the oldest evaluated state (span events,
/// partial sequences, open windows) goes, down to half a record, so that the key can go on
/// holding new events. Events waiting for the watermark stay; [`KeyedState::hold`] refuses new
/// ones when they alone fill the record.
fn fit(track: &mut Track, change: &[u8], max_entry_bytes: usize, rule: &str) {
    let size = |t: &Track| record_size(Some(change), &encode_track(t), NO_HEADERS);
    if size(track) <= max_entry_bytes {
        return;
    }
    let dropped = track.trim(|t| size(t) <= max_entry_bytes / 2);
    if dropped > 0 {
        metrics::counter!(names::RULE_STATE_TRIMMED, "rule" => rule.to_owned())
            .increment(dropped as u64);
        tracing::debug!(
            rule,
            dropped,
            "a key's state was trimmed to fit a changelog record"
        );
    }
}

impl TimedKeys {
    /// Files `key`'s track under its due point, replacing `before`.
    fn reschedule(&mut self, key: &str, before: Option<i64>, after: Option<i64>) {
        if before == after {
            return;
        }
        if let Some(before) = before {
            self.due.remove(&(before, key.to_owned()));
        }
        if let Some(after) = after {
            self.due.insert((after, key.to_owned()));
        }
    }
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
    pub(crate) fn new(default_within: i64, max_entry_bytes: usize) -> KeyedState {
        KeyedState {
            partitions: HashMap::new(),
            changes: BTreeMap::new(),
            default_within,
            max_entry_bytes,
        }
    }

    /// The sequence bound `rule` runs with.
    pub(crate) fn within(&self, rule: &Rule) -> i64 {
        rule.timing
            .as_ref()
            .and_then(|t| t.within)
            .unwrap_or(self.default_within)
    }

    /// Starts owning a partition with no state (restore fills it).
    pub(crate) fn own(&mut self, owned: Owned, key_path: &str) {
        self.partitions
            .entry(owned)
            .or_insert_with(|| PartitionState {
                key_path: key_path.to_owned(),
                counters: HashMap::new(),
                timed: HashMap::new(),
                clocks: Clocks::default(),
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
            state.timed.retain(|(rule, version), keys| {
                if rules.get(rule, *version).is_some() {
                    return true;
                }
                for key in keys.tracks.keys() {
                    self.changes.insert(
                        (*partition, changelog_key(&key_path, rule, *version, key)),
                        None,
                    );
                }
                false
            });
        }
    }

    /// Holds a timed rule's event until its release point passes it; `Err` when it already has
    /// (the event is late) or when the key's state with it would not fit a changelog record:
    /// either way it must go to the late topic.
    pub(crate) fn hold(
        &mut self,
        owned: &Owned,
        rule: &Rule,
        key: &str,
        steps: u32,
        event: EventRef,
    ) -> Result<(), NotHeld> {
        let within = self.within(rule);
        let max_entry_bytes = self.max_entry_bytes;
        let Some(state) = self.partitions.get_mut(owned) else {
            return Ok(());
        };
        let timing = rule.timing.as_ref().expect("a timed rule");
        let keys = state
            .timed
            .entry((rule.name.clone(), rule.version))
            .or_default();
        let clocks = &state.clocks;
        if let Some(watermark) = *keys.watermark.get_or_insert_with(|| clocks.watermark(rule)) {
            if event.event_time < watermark - timing.allowed_lateness {
                return Err(NotHeld::Late(Late {
                    watermark,
                    by_ms: watermark - event.event_time,
                }));
            }
        }
        let change = changelog_key(&state.key_path, &rule.name, rule.version, key);
        let track = keys.tracks.entry(key.to_owned()).or_default();
        let before = track.due(within);
        track.hold(steps, event);
        fit(track, &change, max_entry_bytes, &rule.name);
        let encoded = encode_track(track);
        let bytes = record_size(Some(&change), &encoded, NO_HEADERS);
        if bytes > max_entry_bytes {
            // Too many events wait for the watermark: the new one is refused.
            track.unhold();
            if track.is_empty() {
                keys.tracks.remove(key);
            }
            return Err(NotHeld::KeyStateFull { bytes });
        }
        let after = track.due(within);
        keys.reschedule(key, before, after);
        self.changes.insert((owned.1, change), Some(encoded));
        Ok(())
    }

    /// Merges a watermark marker into a partition's clocks and releases, for every timed rule of
    /// the partition's key path, the keys its new release point makes due. Returns the matches,
    /// in release order.
    pub(crate) fn advance_clocks(
        &mut self,
        owned: &Owned,
        marker: &[Progress],
        rules: &RuleSet,
    ) -> Vec<(Arc<Rule>, String, Emitted)> {
        let mut out = Vec::new();
        let default_within = self.default_within;
        let max_entry_bytes = self.max_entry_bytes;
        let Some(state) = self.partitions.get_mut(owned) else {
            return out;
        };
        if !state.clocks.merge(marker) {
            return out;
        }
        self.changes.insert(
            (owned.1, changelog_key(&state.key_path, "", 0, "")),
            Some(serde_json::to_vec(&state.clocks).expect("clocks serialize")),
        );
        for rule in rules.rules() {
            let Some(timing) = &rule.timing else {
                continue;
            };
            if rule.key.as_str() != state.key_path {
                continue;
            }
            let Some(watermark) = state.clocks.watermark(rule) else {
                continue;
            };
            let point = watermark - timing.allowed_lateness;
            let within = timing.within.unwrap_or(default_within);
            let keys = state
                .timed
                .entry((rule.name.clone(), rule.version))
                .or_default();
            keys.watermark = Some(Some(watermark));
            if keys.point.is_some_and(|p| p >= point) {
                continue;
            }
            keys.point = Some(point);
            while let Some((due, key)) = keys.due.first().cloned() {
                if due > point {
                    break;
                }
                keys.due.pop_first();
                let Some(track) = keys.tracks.get_mut(&key) else {
                    continue;
                };
                for emitted in track.release(rule, within, point) {
                    out.push((rule.clone(), key.clone(), emitted));
                }
                let change = changelog_key(&state.key_path, &rule.name, rule.version, &key);
                fit(track, &change, max_entry_bytes, &rule.name);
                if track.is_empty() {
                    keys.tracks.remove(&key);
                    self.changes.insert((owned.1, change), None);
                } else {
                    if let Some(next) = track.due(within) {
                        keys.due.insert((next, key.clone()));
                    }
                    self.changes
                        .insert((owned.1, change), Some(encode_track(track)));
                }
            }
            if timing.ends_at.is_some_and(|end| point >= end) && !keys.ended {
                // Every event inside the schedule has been released: the rule is over here.
                for key in keys.tracks.keys() {
                    self.changes.insert(
                        (
                            owned.1,
                            changelog_key(&state.key_path, &rule.name, rule.version, key),
                        ),
                        None,
                    );
                }
                keys.tracks.clear();
                keys.due.clear();
                keys.ended = true;
            }
        }
        out
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
        let default_within = self.default_within;
        let Some(state) = self.partitions.get_mut(&owned) else {
            return;
        };
        if rule.is_empty() {
            state.clocks = value
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            return;
        }
        let Some(compiled) = rules.get(&rule, version) else {
            if value.is_some() {
                self.changes.insert((partition, key.to_vec()), None);
            }
            return;
        };
        if let Some(timing) = &compiled.timing {
            let within = timing.within.unwrap_or(default_within);
            let keys = state.timed.entry((rule, version)).or_default();
            if let Some(old) = keys.tracks.remove(&rule_key) {
                keys.reschedule(&rule_key, old.due(within), None);
            }
            if let Some(track) = value.and_then(decode_track) {
                keys.reschedule(&rule_key, None, track.due(within));
                keys.tracks.insert(rule_key, track);
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

    /// What the state holds.
    pub(crate) fn sizes(&self, rules: &RuleSet) -> Sizes {
        let mut sizes = Sizes::default();
        let mut unknown: HashSet<(String, u32)> = HashSet::new();
        for state in self.partitions.values() {
            for ((rule, _), counters) in &state.counters {
                *sizes.keys.entry(rule.clone()).or_default() += counters.len();
                // Key text, the counter, and the hash table's slot.
                sizes.bytes += counters
                    .iter()
                    .map(|(k, c)| k.capacity() + c.size() + 16)
                    .sum::<usize>();
            }
            for ((rule, _), keys) in &state.timed {
                *sizes.keys.entry(rule.clone()).or_default() += keys.tracks.len();
                let (pending, waiting, bytes) =
                    keys.tracks.iter().fold((0, 0, 0), |(n, w, b), (k, t)| {
                        (
                            n + t.pending(),
                            w + t.waiting(),
                            b + 2 * k.capacity() + t.size() + 48,
                        )
                    });
                *sizes.pending.entry(rule.clone()).or_default() += pending;
                *sizes.waiting.entry(rule.clone()).or_default() += waiting;
                sizes.bytes += bytes;
            }
            for rule in rules.rules() {
                if rule.key.as_str() != state.key_path {
                    continue;
                }
                let id = (rule.name.clone(), rule.version);
                match state.clocks.watermark(rule) {
                    Some(watermark) => {
                        let entry = sizes.watermarks.entry(id).or_insert(watermark);
                        *entry = (*entry).min(watermark);
                    }
                    None => {
                        unknown.insert(id);
                    }
                }
            }
        }
        // A partition without a watermark is at the beginning of time: the lowest is unknown.
        for id in &unknown {
            sizes.watermarks.remove(id);
        }
        sizes
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
        assert_eq!(restored.sizes(&set).keys["r"], 1);
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
        assert!(state.sizes(&rules(2)).keys.is_empty());
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

    fn marker(t: i64) -> Vec<Progress> {
        vec![Progress {
            lane: String::new(),
            source: "t/0".into(),
            clocks: [("event_time".to_owned(), t)].into(),
            done: false,
        }]
    }

    #[test]
    fn unfinished_sequences_leave_no_state_once_within_has_passed() {
        let doc = crate::rule::parse_text("source: t\nkey: k\nordered: true\nwithin: 1m\nmax_out_of_order: 0s\nevent_list:\n- {conditions: [{field: e, value: a}]}\n- {conditions: [{field: e, value: b}]}\n", false).unwrap();
        let set = RuleSet::new(vec![Arc::new(Rule::compile("seq", 1, 0, &doc).unwrap())]);
        let rule = set.get("seq", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 0);
        let mut state = KeyedState::default();
        state.own(owned.clone(), "k");
        assert!(state.advance_clocks(&owned, &marker(0), &set).is_empty());
        // A hundred thousand here (debug builds); the benchmark does a million.
        const KEYS: i64 = 100_000;
        for n in 0..KEYS {
            let key = format!("p-{n}");
            state
                .hold(&owned, &rule, &key, 1, event(n % 1_000))
                .unwrap();
        }
        let sizes = state.sizes(&set);
        assert_eq!(
            (sizes.pending["seq"], sizes.waiting["seq"]),
            (KEYS as usize, KEYS as usize)
        );
        // Released: one partial sequence per key, no event waiting for the watermark.
        state.advance_clocks(&owned, &marker(1_000), &set);
        let sizes = state.sizes(&set);
        assert_eq!(
            (
                sizes.keys["seq"],
                sizes.pending["seq"],
                sizes.waiting["seq"]
            ),
            (KEYS as usize, KEYS as usize, 0)
        );
        assert!(sizes.bytes > 0);
        state.take_changes();
        // A minute later by event time, none of them can finish: all gone, all tombstoned.
        assert!(state
            .advance_clocks(&owned, &marker(62_000), &set)
            .is_empty());
        let sizes = state.sizes(&set);
        assert_eq!(sizes.keys.get("seq").copied().unwrap_or(0), 0);
        assert_eq!(sizes.bytes, 0);
        let changes = state.take_changes();
        assert_eq!(
            changes.values().filter(|v| v.is_none()).count(),
            KEYS as usize
        );
        // An event the watermark has passed is late.
        let late = state.hold(&owned, &rule, "p-1", 1, event(5)).unwrap_err();
        assert_eq!(
            late,
            NotHeld::Late(Late {
                watermark: 62_000,
                by_ms: 61_995
            })
        );
    }

    #[test]
    fn the_watermark_shown_is_unknown_while_an_owned_partition_has_none() {
        let doc = crate::rule::parse_text("source: t\nkey: k\nwindow: {tumbling: 1m}\nmax_out_of_order: 0s\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n", false).unwrap();
        let set = RuleSet::new(vec![Arc::new(Rule::compile("w", 1, 0, &doc).unwrap())]);
        let (first, second): (Owned, Owned) = (("rp.k".into(), 0), ("rp.k".into(), 1));
        let mut state = KeyedState::default();
        state.own(first.clone(), "k");
        state.own(second.clone(), "k");
        state.advance_clocks(&first, &marker(5_000), &set);
        // The second partition has heard of no progress: its events still wait.
        let id = ("w".to_owned(), 1);
        assert_eq!(state.sizes(&set).watermarks.get(&id), None);
        state.advance_clocks(&second, &marker(3_000), &set);
        assert_eq!(state.sizes(&set).watermarks.get(&id), Some(&3_000));
    }

    #[test]
    fn a_key_holds_no_more_than_a_changelog_record_takes() {
        let doc = crate::rule::parse_text("source: t\nkey: k\nordered: true\nwithin: 1h\nmax_out_of_order: 0s\nevent_list:\n- {conditions: [{field: e, value: a}]}\n- {conditions: [{field: e, value: b}]}\n", false).unwrap();
        let set = RuleSet::new(vec![Arc::new(Rule::compile("seq", 1, 0, &doc).unwrap())]);
        let rule = set.get("seq", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 0);
        const MAX: usize = 4_000;
        let mut state = KeyedState::new(3_600_000, MAX);
        state.own(owned.clone(), "k");
        // No watermark yet: every event of the hot key is held.
        let mut held = 0;
        let refused = loop {
            match state.hold(&owned, &rule, "hot", 1, event(held)) {
                Ok(()) => held += 1,
                Err(e) => break e,
            }
            assert!(held < 1_000, "a bound is reached");
        };
        let NotHeld::KeyStateFull { bytes } = refused else {
            panic!("{refused:?}");
        };
        assert!(bytes > MAX);
        assert!(
            held > 10,
            "the record holds a good number of events: {held}"
        );
        // What the changelog gets always fits, and still holds every event held.
        let changes = state.take_changes();
        let value = changes.values().next().unwrap().as_ref().unwrap();
        assert!(
            record_size(
                Some(&changelog_key("k", "seq", 1, "hot")),
                value,
                NO_HEADERS
            ) <= MAX
        );
        assert_eq!(state.sizes(&set).pending["seq"], held as usize);
        // Other keys are not affected; once released, the hot key takes events again.
        state.hold(&owned, &rule, "cold", 1, event(1)).unwrap();
        state.advance_clocks(&owned, &marker(1_000_000), &set);
        state
            .hold(&owned, &rule, "hot", 1, event(1_000_001))
            .unwrap();
    }

    #[test]
    fn what_a_release_leaves_is_trimmed_to_a_changelog_record() {
        // Unordered within: every released event of the hot key is remembered for an hour.
        let doc = crate::rule::parse_text("source: t\nkey: k\nwithin: 1h\nmax_out_of_order: 0s\nevent_list:\n- {conditions: [{field: e, value: a}], count: 5000}\n", false).unwrap();
        let set = RuleSet::new(vec![Arc::new(Rule::compile("span", 1, 0, &doc).unwrap())]);
        let rule = set.get("span", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 0);
        const MAX: usize = 4_000;
        let mut state = KeyedState::new(3_600_000, MAX);
        state.own(owned.clone(), "k");
        let key = changelog_key("k", "span", 1, "hot");
        let mut n = 0;
        for round in 1..=40 {
            for i in 1..=10 {
                n += 1;
                let time = (round - 1) * 1_000 + i;
                state.hold(&owned, &rule, "hot", 1, event(time)).unwrap();
            }
            state.advance_clocks(&owned, &marker(round * 1_000), &set);
            for ((_, k), value) in state.take_changes() {
                if k == key {
                    let value = value.expect("the key keeps state");
                    assert!(
                        record_size(Some(&key), &value, NO_HEADERS) <= MAX,
                        "round {round}: {} bytes",
                        value.len()
                    );
                }
            }
        }
        assert_eq!(n, 400, "every event was held: none refused");
        let sizes = state.sizes(&set);
        assert_eq!(sizes.keys["span"], 1);
    }

    #[test]
    fn an_ended_schedule_frees_the_rules_state() {
        let doc = crate::rule::parse_text("source: t\nkey: k\nmax_out_of_order: 0s\nschedule: {ends_at: 1970-01-01T00:00:10Z}\nevent_list:\n- {conditions: [{field: e, value: a}], count: 5}\n", false).unwrap();
        let set = RuleSet::new(vec![Arc::new(Rule::compile("s", 1, 0, &doc).unwrap())]);
        let rule = set.get("s", 1).unwrap().clone();
        let owned: Owned = ("rp.k".into(), 0);
        let mut state = KeyedState::default();
        state.own(owned.clone(), "k");
        state.advance_clocks(&owned, &marker(0), &set);
        for key in ["a", "b"] {
            state.hold(&owned, &rule, key, 1, event(1)).unwrap();
        }
        state.advance_clocks(&owned, &marker(5_000), &set);
        assert_eq!(state.sizes(&set).keys["s"], 2, "counting, not done");
        state.take_changes();
        state.advance_clocks(&owned, &marker(10_000), &set);
        assert_eq!(state.sizes(&set).keys.get("s"), Some(&0));
        let changes = state.take_changes();
        assert_eq!(changes.values().filter(|v| v.is_none()).count(), 2);
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
