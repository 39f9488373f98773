//! Event-time progress: watermarks, carried from where events are read to where they are
//! counted.
//!
//! The first stage reads the source partitions; per partition (and per event-time field a timed
//! rule reads) it keeps the highest event time seen ([`SourceClocks`]). It writes that progress
//! as a *marker* record (header `lp.cep.watermark`) into every partition of the repartition
//! topics, after the batch's re-keyed events and in the same transaction. The second stage
//! merges the markers of every source partition into [`Clocks`] (a changelog entry of its own),
//! and a rule's watermark is the minimum over its source partitions of the clock of its
//! event-time field, minus its `max_out_of_order`. Since markers are records, a restarted worker
//! reads them again in the same order as the events: the watermark is part of the replayable
//! input, never of the wall clock at the counting side.
//!
//! A source partition starts at the beginning of time when it is assigned, so a partition that
//! has not yet delivered anything holds timed rules back rather than letting the others make
//! its first events late. One that is caught up and has had no record for `idle_timeout` follows
//! the wall clock instead (minus `idle_timeout`), so a silent partition does not hold every window
//! open. A partition behind its end is never idle, however long a pause lasts.
//!
//! A replay (`from:`) has its own lane: the replaying version's watermark comes from the events
//! the replay reads, and follows the live lane once the replay is done, so old events are never
//! late because they are old.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use logpipe_core::kafka::Partition;
use serde::{Deserialize, Serialize};

use crate::rule::Rule;
use crate::timing::From;

/// Idle clocks move in steps of a tenth of `idle_timeout`, within these bounds: a silent
/// worker writes a marker per step (every 3 s with the default 30 s), and a window closes at
/// most a step later than it could.
const IDLE_STEP_MS: (i64, i64) = (1_000, 60_000);

/// One source partition's progress in a marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// `""` for the live lane, `<rule>@<version>` for a replay.
    #[serde(rename = "l", default, skip_serializing_if = "String::is_empty")]
    pub(crate) lane: String,
    /// `<topic>/<partition>`.
    #[serde(rename = "s")]
    pub(crate) source: String,
    /// Event-time field -> highest event time seen (epoch ms).
    #[serde(rename = "c")]
    pub(crate) clocks: BTreeMap<String, i64>,
    /// A replay lane that has reached its end.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) done: bool,
}

/// The lane name of a rule version's replay.
pub(crate) fn replay_lane(rule: &str, version: u32) -> String {
    format!("{rule}@{version}")
}

fn source_name(partition: &Partition) -> String {
    format!("{}/{}", partition.0, partition.1)
}

#[derive(Debug)]
struct Reading {
    clocks: BTreeMap<String, i64>,
    done: bool,
    last_record: Instant,
    changed: bool,
}

/// The first stage's progress per owned source partition and lane.
#[derive(Debug)]
pub(crate) struct SourceClocks {
    readings: HashMap<(String, Partition), Reading>,
    last_marker: Instant,
}

impl Default for SourceClocks {
    fn default() -> Self {
        SourceClocks {
            readings: HashMap::new(),
            last_marker: Instant::now(),
        }
    }
}

impl SourceClocks {
    fn reading(&mut self, lane: &str, partition: &Partition) -> &mut Reading {
        self.readings
            .entry((lane.to_owned(), partition.clone()))
            .or_insert_with(|| Reading {
                clocks: BTreeMap::new(),
                done: false,
                last_record: Instant::now(),
                changed: false,
            })
    }

    /// Starts reading `partition`: its clocks for `paths` hold the watermark at the beginning of
    /// time until it delivers events or is idle.
    pub(crate) fn start(&mut self, lane: &str, partition: &Partition, paths: &[String]) {
        let reading = self.reading(lane, partition);
        reading.last_record = Instant::now();
        for path in paths {
            reading.clocks.entry(path.clone()).or_insert(i64::MIN);
        }
        reading.changed = true;
    }

    /// A record was read from `partition` (decodable or not).
    pub(crate) fn touch(&mut self, lane: &str, partition: &Partition) {
        self.reading(lane, partition).last_record = Instant::now();
    }

    /// An event of `partition` has time `t` by the field `path`.
    pub(crate) fn observe(&mut self, lane: &str, partition: &Partition, path: &str, t: i64) {
        let reading = self.reading(lane, partition);
        let clock = reading.clocks.entry(path.to_owned()).or_insert(i64::MIN);
        if t > *clock {
            *clock = t;
            reading.changed = true;
        }
    }

    /// A replay lane reached its end.
    pub(crate) fn finish(&mut self, lane: &str, partition: &Partition) {
        let reading = self.reading(lane, partition);
        if !reading.done {
            reading.done = true;
            reading.changed = true;
        }
    }

    /// Forgets the replay lanes (after an aborted transaction: they resume from the committed
    /// offsets and report again).
    pub(crate) fn forget_replays(&mut self) {
        self.readings.retain(|(lane, _), _| lane.is_empty());
    }

    /// Forgets a partition this worker no longer reads (its next owner goes on from the
    /// markers' maximum, which the second stage keeps).
    pub(crate) fn release(&mut self, partition: &Partition) {
        self.readings.retain(|(_, p), _| p != partition);
    }

    /// Live-lane partitions without a record for `idle_timeout`: candidates for idleness, which
    /// the caller confirms are caught up.
    pub(crate) fn silent(&self, idle_timeout: Duration) -> Vec<Partition> {
        self.readings
            .iter()
            .filter(|((lane, _), r)| lane.is_empty() && r.last_record.elapsed() >= idle_timeout)
            .map(|((_, p), _)| p.clone())
            .collect()
    }

    /// Moves a caught-up idle partition's clocks (for each of `paths`) to `now_ms - idle_timeout`.
    pub(crate) fn idle(
        &mut self,
        partition: &Partition,
        paths: &[String],
        now_ms: i64,
        idle_timeout: Duration,
    ) {
        let timeout = idle_timeout.as_millis() as i64;
        let step = (timeout / 10).clamp(IDLE_STEP_MS.0, IDLE_STEP_MS.1);
        let at = now_ms - timeout;
        let at = at - at.rem_euclid(step);
        for path in paths {
            self.observe("", partition, path, at);
        }
    }

    /// The progress to write, when some changed and `interval` has passed since the last marker.
    pub(crate) fn marker(&mut self, interval: Duration) -> Option<Vec<Progress>> {
        if self.last_marker.elapsed() < interval || !self.readings.values().any(|r| r.changed) {
            return None;
        }
        self.last_marker = Instant::now();
        let mut out: Vec<Progress> = self
            .readings
            .iter_mut()
            .filter(|(_, r)| r.changed)
            .map(|((lane, partition), r)| {
                r.changed = false;
                Progress {
                    lane: lane.clone(),
                    source: source_name(partition),
                    clocks: r.clocks.clone(),
                    done: r.done,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.lane, &a.source).cmp(&(&b.lane, &b.source)));
        Some(out)
    }

    /// Marks every reading changed, so the next marker carries it all again (after an aborted
    /// transaction lost the last one).
    pub(crate) fn resend(&mut self) {
        for reading in self.readings.values_mut() {
            reading.changed = true;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    #[serde(rename = "c")]
    clocks: BTreeMap<String, i64>,
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
}

/// The second stage's view of every source partition's progress, per repartition partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Clocks {
    /// (lane, source) -> progress.
    #[serde(rename = "s")]
    seen: BTreeMap<String, BTreeMap<String, Seen>>,
}

impl Clocks {
    /// Merges a marker; true when something moved. Clocks only go forward.
    pub(crate) fn merge(&mut self, marker: &[Progress]) -> bool {
        let mut moved = false;
        for progress in marker {
            let seen = self
                .seen
                .entry(progress.lane.clone())
                .or_default()
                .entry(progress.source.clone())
                .or_default();
            for (path, t) in &progress.clocks {
                match seen.clocks.get_mut(path) {
                    Some(clock) if t > clock => {
                        *clock = *t;
                        moved = true;
                    }
                    Some(_) => {}
                    None => {
                        seen.clocks.insert(path.clone(), *t);
                        moved = true;
                    }
                }
            }
            if progress.done && !seen.done {
                seen.done = true;
                moved = true;
            }
        }
        moved
    }

    /// The rule's watermark: the minimum over its source partitions of the clock of its
    /// event-time field, minus `max_out_of_order`. `None` while it has no progress at all, or
    /// (replays) while a partition the version's replay reads has not reported yet.
    pub(crate) fn watermark(&self, rule: &Rule) -> Option<i64> {
        let replay_sources = &rule.replay_sources;
        let timing = rule.timing.as_ref()?;
        let path = rule.event_time.as_str();
        let live = self.seen.get("");
        let replay = (rule.from != From::Latest && !replay_sources.is_empty())
            .then(|| self.seen.get(&replay_lane(&rule.name, rule.version)))
            .flatten();
        let mut min: Option<i64> = None;
        let mut take = |t: Option<&i64>| {
            if let Some(t) = t {
                min = Some(min.map_or(*t, |m| m.min(*t)));
            }
        };
        for source in replay_sources.iter() {
            match replay.and_then(|r| r.get(source)) {
                None => return None,
                Some(seen) if !seen.done => take(seen.clocks.get(path)),
                Some(_) => {}
            }
        }
        for (source, seen) in live.into_iter().flatten() {
            let topic = source.rsplit_once('/').map_or("", |(t, _)| t);
            if !rule.sources.iter().any(|s| s == topic) {
                continue;
            }
            let replaying = replay_sources.contains(source)
                && replay.and_then(|r| r.get(source)).is_some_and(|s| !s.done);
            if !replaying {
                take(seen.clocks.get(path));
            }
        }
        // A partition that has reported nothing yet holds everything back.
        min.filter(|m| *m != i64::MIN)
            .map(|m| m - timing.max_out_of_order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(extra: &str, replay_sources: &[&str]) -> Rule {
        let doc = crate::rule::parse_text(
            &format!("source: t\nkey: k\nmax_out_of_order: 1s\n{extra}event_list:\n- {{conditions: [{{field: e, value: x}}]}}\n"),
            false,
        )
        .unwrap();
        let mut rule = Rule::compile("r", 2, 0, &doc).unwrap();
        rule.replay_sources = replay_sources.iter().map(|s| s.to_string()).collect();
        rule
    }

    fn progress(lane: &str, source: &str, t: i64, done: bool) -> Progress {
        Progress {
            lane: lane.into(),
            source: source.into(),
            clocks: [("event_time".to_owned(), t)].into(),
            done,
        }
    }

    #[test]
    fn the_watermark_is_the_slowest_partition_minus_max_out_of_order() {
        let rule = rule("", &[]);
        let mut clocks = Clocks::default();
        assert_eq!(clocks.watermark(&rule), None);
        assert!(clocks.merge(&[
            progress("", "t/0", 10_000, false),
            progress("", "t/1", 7_000, false)
        ]));
        assert!(clocks.merge(&[progress("", "other/0", 1, false)]));
        assert_eq!(clocks.watermark(&rule), Some(6_000));
        // Clocks never go back.
        assert!(!clocks.merge(&[progress("", "t/1", 5_000, false)]));
        assert!(clocks.merge(&[progress("", "t/1", 12_000, false)]));
        assert_eq!(clocks.watermark(&rule), Some(9_000));
        // A partition assigned but not yet read holds the watermark back.
        assert!(clocks.merge(&[progress("", "t/2", i64::MIN, false)]));
        assert_eq!(clocks.watermark(&rule), None);
        assert!(clocks.merge(&[progress("", "t/2", 20_000, false)]));
        assert_eq!(clocks.watermark(&rule), Some(9_000));
        let json = serde_json::to_vec(&clocks).unwrap();
        assert_eq!(serde_json::from_slice::<Clocks>(&json).unwrap(), clocks);
    }

    #[test]
    fn a_replay_has_its_own_watermark_until_it_is_done() {
        let rule = rule("from: earliest\n", &["t/0"]);
        let mut clocks = Clocks::default();
        clocks.merge(&[progress("", "t/0", 1_000_000, false)]);
        assert_eq!(clocks.watermark(&rule), None, "the replay has not reported");
        clocks.merge(&[progress("r@2", "t/0", 5_000, false)]);
        assert_eq!(clocks.watermark(&rule), Some(4_000));
        clocks.merge(&[progress("r@2", "t/0", 6_000, true)]);
        assert_eq!(clocks.watermark(&rule), Some(999_000));
    }

    #[test]
    fn markers_carry_what_changed_and_idle_partitions_follow_the_wall_clock() {
        let mut source = SourceClocks::default();
        let p: Partition = ("t".into(), 0);
        source.observe("", &p, "event_time", 5);
        let marker = source.marker(Duration::ZERO).unwrap();
        assert_eq!(marker, [progress("", "t/0", 5, false)]);
        assert!(source.marker(Duration::ZERO).is_none(), "nothing changed");
        source.observe("", &p, "event_time", 4);
        assert!(
            source.marker(Duration::ZERO).is_none(),
            "clocks only go forward"
        );
        assert!(source.silent(Duration::from_secs(3600)).is_empty());
        assert_eq!(source.silent(Duration::ZERO), std::slice::from_ref(&p));
        source.idle(
            &p,
            &["event_time".to_owned()],
            1_234_567,
            Duration::from_secs(30),
        );
        assert_eq!(
            source.marker(Duration::ZERO).unwrap()[0].clocks["event_time"],
            1_203_000
        );
        source.release(&p);
        assert!(source.silent(Duration::ZERO).is_empty());
    }
}
