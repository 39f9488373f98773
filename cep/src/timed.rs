//! One key's state for one timed rule version: the events waiting for the watermark, and what
//! the events already evaluated left behind (partial sequences, recent events of a `within`
//! span, open windows), all with a bound in event time.
//!
//! Events wait in `pending` until the rule's release point (watermark - allowed_lateness) passes
//! them; then they are evaluated in (event time, id) order, so the same events give the same
//! matches in whatever order their records arrived. After each release, state the release point
//! has passed is dropped: a partial sequence older than `within`, events older than a `within`
//! span, windows whose end it passed. [`Track::due`] says when that next happens, so the caller
//! wakes a key only when there is something to do.
//!
//! A sequence keeps, per automaton state (step, count in the step), only the partial match that
//! started last: whatever an older one could still complete, the newer one can too, within a
//! later deadline. So a key holds at most one partial per state however many sequences it
//! starts, and never more than [`MAX_PARTIALS`].

use serde::{Deserialize, Serialize};

use crate::counter::{Completed, Counter};
use crate::event::EventRef;
use crate::rule::{Repeat, Rule};
use crate::timing::Window;

/// Most partial sequences one key holds; the oldest go first.
pub(crate) const MAX_PARTIALS: usize = 1_024;
/// Most events one key holds for a `within` span; the oldest go first.
pub(crate) const MAX_RECENT: usize = 10_000;

/// An event waiting for the watermark, with the steps it satisfied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    #[serde(rename = "s")]
    steps: u32,
    #[serde(rename = "e")]
    event: EventRef,
}

/// A sequence under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Partial {
    /// Event time of its first event.
    #[serde(rename = "a")]
    start: i64,
    #[serde(rename = "k")]
    step: u32,
    /// Events counted for the current step.
    #[serde(rename = "n")]
    count: u32,
    #[serde(rename = "c")]
    chain: u64,
    #[serde(rename = "e")]
    events: u32,
}

/// An event inside a `within` span (unordered steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recent {
    #[serde(rename = "t")]
    time: i64,
    #[serde(rename = "s")]
    steps: u32,
    /// Hash of the event's id, for the match id.
    #[serde(rename = "h")]
    hash: u64,
}

/// A window's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pane {
    #[serde(rename = "a")]
    start: i64,
    /// Exclusive; for a session, the last event's time + the gap + 1 ms.
    #[serde(rename = "b")]
    end: i64,
    #[serde(rename = "n", default)]
    events: u32,
    #[serde(rename = "c")]
    counter: Counter,
}

/// One key's state for one timed rule version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Track {
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Held>,
    #[serde(rename = "q", default, skip_serializing_if = "Vec::is_empty")]
    partials: Vec<Partial>,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<Recent>,
    #[serde(rename = "w", default, skip_serializing_if = "Vec::is_empty")]
    panes: Vec<Pane>,
    /// `repeat: once` without a window and matched: the key never matches this version again.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
}

/// A completed match and the event that completed it.
pub(crate) type Emitted = (Completed, EventRef);

fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Track {
    /// Holds an event until the release point passes it.
    pub(crate) fn hold(&mut self, steps: u32, event: EventRef) {
        self.pending.push(Held { steps, event });
    }

    /// Takes back the event [`Track::hold`] held last (its state would not fit a changelog
    /// record).
    pub(crate) fn unhold(&mut self) {
        self.pending.pop();
    }

    /// Evaluates the held events older than `point` in event-time order, then drops what
    /// `point` has passed. `within` is the sequence bound the rule runs with.
    pub(crate) fn release(&mut self, rule: &Rule, within: i64, point: i64) -> Vec<Emitted> {
        let mut out = Vec::new();
        if self.pending.iter().any(|h| h.event.event_time < point) {
            let (mut ready, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|h| h.event.event_time < point);
            self.pending = waiting;
            ready.sort_by(|a, b| {
                (a.event.event_time, &a.event.id).cmp(&(b.event.event_time, &b.event.id))
            });
            for held in ready {
                if let Some(completed) = self.evaluate(rule, within, held.steps, &held.event) {
                    out.push((completed, held.event));
                }
            }
        }
        self.expire(within, point);
        out
    }

    /// The release point at which this key next has something to do, if ever.
    pub(crate) fn due(&self, within: i64) -> Option<i64> {
        let pending = self.pending.iter().map(|h| h.event.event_time + 1);
        let partials = self.partials.iter().map(|p| p.start + within + 1);
        let recent = self.recent.first().map(|r| r.time + within + 1);
        let panes = self
            .panes
            .iter()
            .filter(|p| p.end != i64::MAX)
            .map(|p| p.end);
        pending.chain(partials).chain(recent).chain(panes).min()
    }

    /// Drops the oldest evaluated state (events of a `within` span first, then partial
    /// sequences, then open windows), an eighth of a kind at a time, until `fits` holds; returns
    /// how many entries went. Events waiting for the watermark are never dropped: holding them
    /// is bounded already.
    pub(crate) fn trim(&mut self, fits: impl Fn(&Track) -> bool) -> usize {
        let mut dropped = 0;
        while !fits(self) {
            let n = if !self.recent.is_empty() {
                let n = self.recent.len().div_ceil(8);
                self.recent.drain(..n);
                n
            } else if !self.partials.is_empty() {
                let n = self.partials.len().div_ceil(8);
                self.partials.drain(..n);
                n
            } else if !self.panes.is_empty() {
                let n = self.panes.len().div_ceil(8);
                self.panes.drain(..n);
                n
            } else {
                break;
            };
            dropped += n;
        }
        dropped
    }

    /// Nothing held and nothing to remember.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
            && self.partials.is_empty()
            && self.recent.is_empty()
            && self.panes.is_empty()
            && !self.done
    }

    /// Events waiting for the watermark and partial matches under way.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len() + self.partials.len()
    }

    /// Events waiting for the watermark alone: none once it has passed them all.
    pub(crate) fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Approximate bytes in memory, for the state-size metric.
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<Track>()
            + self
                .pending
                .iter()
                .map(|h| {
                    std::mem::size_of::<Held>() + h.event.id.capacity() + h.event.topic.capacity()
                })
                .sum::<usize>()
            + self.partials.capacity() * std::mem::size_of::<Partial>()
            + self.recent.capacity() * std::mem::size_of::<Recent>()
            + self
                .panes
                .iter()
                .map(|p| std::mem::size_of::<Pane>() + p.counter.size())
                .sum::<usize>()
    }

    fn expire(&mut self, within: i64, point: i64) {
        self.partials.retain(|p| p.start + within >= point);
        let old = self
            .recent
            .iter()
            .take_while(|r| r.time + within < point)
            .count();
        self.recent.drain(..old);
        self.panes.retain(|p| p.end > point);
    }

    fn evaluate(
        &mut self,
        rule: &Rule,
        within: i64,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        let timing = rule.timing.as_ref().expect("a timed rule");
        if self.done {
            return None;
        }
        let completed = match (timing.ordered, timing.within, timing.window) {
            (true, _, _) => self.sequence(rule, within, steps, event),
            (false, Some(within), _) => self.span(rule, within, steps, event),
            (false, None, window) => self.windowed(rule, window, steps, event),
        };
        if completed.is_some() && rule.repeat == Repeat::Once && timing.window.is_none() {
            *self = Track {
                pending: std::mem::take(&mut self.pending),
                done: true,
                ..Track::default()
            };
        }
        completed
    }

    /// `ordered`: steps in order, the whole match within `within`.
    fn sequence(
        &mut self,
        rule: &Rule,
        within: i64,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        let t = event.event_time;
        let last = rule.steps.len() as u32;
        self.partials.retain(|p| t - p.start <= within);
        let mut completed: Option<Partial> = None;
        for p in &mut self.partials {
            if steps & (1 << p.step) == 0 {
                continue;
            }
            p.count += 1;
            p.events += 1;
            p.chain = xxhash_rust::xxh3::xxh3_64_with_seed(event.id.as_bytes(), p.chain);
            if p.count >= rule.steps[p.step as usize].count {
                p.step += 1;
                p.count = 0;
            }
            if p.step == last && completed.is_none() {
                completed = Some(p.clone());
            }
        }
        if let Some(p) = completed {
            self.partials.clear();
            return Some(Completed {
                chain: p.chain,
                events: p.events,
                first_ms: p.start,
                last_ms: t,
                window: None,
            });
        }
        if steps & 1 != 0 {
            let mut p = Partial {
                start: t,
                step: 0,
                count: 1,
                chain: xxhash_rust::xxh3::xxh3_64_with_seed(event.id.as_bytes(), 0),
                events: 1,
            };
            if p.count >= rule.steps[0].count {
                p.step = 1;
                p.count = 0;
            }
            self.partials.push(p);
        }
        // Per state the latest start dominates; the list is in start order.
        let mut seen = std::collections::HashSet::new();
        let mut keep: Vec<bool> = self
            .partials
            .iter()
            .rev()
            .map(|p| seen.insert((p.step, p.count)))
            .collect();
        keep.reverse();
        let mut keep = keep.into_iter();
        self.partials.retain(|_| keep.next().unwrap_or(true));
        if self.partials.len() > MAX_PARTIALS {
            let excess = self.partials.len() - MAX_PARTIALS;
            self.partials.drain(..excess);
        }
        None
    }

    /// `within` without order: every step's count among the events of the last `within`.
    fn span(
        &mut self,
        rule: &Rule,
        within: i64,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        let t = event.event_time;
        let old = self
            .recent
            .iter()
            .take_while(|r| t - r.time > within)
            .count();
        self.recent.drain(..old);
        self.recent.push(Recent {
            time: t,
            steps,
            hash: id_hash(&event.id),
        });
        if self.recent.len() > MAX_RECENT {
            self.recent.remove(0);
        }
        let satisfied = rule.steps.iter().enumerate().all(|(i, step)| {
            self.recent
                .iter()
                .filter(|r| r.steps & (1 << i) != 0)
                .count()
                >= step.count as usize
        });
        if !satisfied {
            return None;
        }
        let chain = self.recent.iter().fold(0, |c, r| {
            xxhash_rust::xxh3::xxh3_64_with_seed(&r.hash.to_le_bytes(), c)
        });
        let completed = Completed {
            chain,
            events: self.recent.len() as u32,
            first_ms: self.recent[0].time,
            last_ms: t,
            window: None,
        };
        self.recent.clear();
        Some(completed)
    }

    /// Counting per window (or, without one, over the key's whole history in event-time order).
    fn windowed(
        &mut self,
        rule: &Rule,
        window: Option<Window>,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        let t = event.event_time;
        let spans: Vec<(i64, i64)> = match window {
            None => vec![(i64::MIN, i64::MAX)],
            Some(Window::Tumbling { size }) => {
                let start = t.div_euclid(size) * size;
                vec![(start, start + size)]
            }
            Some(Window::Sliding { size, every }) => {
                let last = t.div_euclid(every);
                let first = (t - size).div_euclid(every) + 1;
                (first..=last)
                    .map(|k| (k * every, k * every + size))
                    .collect()
            }
            Some(Window::Session { gap }) => {
                // In event-time order a session only ever grows at its end, which is exclusive
                // like every window's: an event at most `gap` after the last one joins.
                self.panes.retain(|p| t < p.end);
                match self.panes.first_mut() {
                    Some(p) => {
                        p.end = t + gap + 1;
                        vec![(p.start, p.end)]
                    }
                    None => vec![(t, t + gap + 1)],
                }
            }
            Some(Window::Events { .. }) => match self.panes.first() {
                Some(p) => vec![(p.start, p.end)],
                None => vec![(t, i64::MAX)],
            },
        };
        let mut completed = None;
        for (start, end) in spans {
            let at = match self.panes.iter().position(|p| p.start == start) {
                Some(at) => at,
                None => {
                    self.panes.push(Pane {
                        start,
                        end,
                        events: 0,
                        counter: Counter::default(),
                    });
                    self.panes.len() - 1
                }
            };
            let pane = &mut self.panes[at];
            pane.events += 1;
            if let Some(mut c) = pane.counter.advance(rule, steps, event) {
                if matches!(
                    window,
                    Some(Window::Tumbling { .. } | Window::Sliding { .. } | Window::Session { .. })
                ) {
                    c.window = Some((pane.start, pane.end));
                }
                completed = completed.or(Some(c));
            }
            if let Some(Window::Events { count }) = window {
                if pane.events >= count {
                    self.panes.remove(at);
                }
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::parse_text;

    fn rule(yaml: &str) -> Rule {
        Rule::compile("r", 1, 0, &parse_text(yaml, false).unwrap()).unwrap()
    }

    fn event(n: i64, t: i64) -> EventRef {
        EventRef {
            id: format!("h/0001/{n}"),
            topic: "clean.game".into(),
            partition: 0,
            offset: n,
            event_time: t,
        }
    }

    /// Holds every (steps, time) event, releases them all, and returns the completions' last
    /// event times.
    fn run(rule: &Rule, events: &[(u32, i64)]) -> Vec<(i64, Completed)> {
        let within = rule.timing.as_ref().unwrap().within.unwrap_or(3_600_000);
        let mut track = Track::default();
        for (n, (steps, t)) in events.iter().enumerate() {
            track.hold(*steps, event(n as i64, *t));
        }
        track
            .release(rule, within, i64::MAX - 1)
            .into_iter()
            .map(|(c, e)| (e.event_time, c))
            .collect()
    }

    const SEQUENCE: &str = "source: t\nkey: k\nordered: true\nwithin: 1h\nrepeat: every\nevent_list:\n- {conditions: [{field: e, value: level30}]}\n- {conditions: [{field: e, value: dungeon}]}\n";
    const MIN: i64 = 60_000;

    #[test]
    fn a_sequence_is_judged_by_event_time_not_arrival() {
        let rule = rule(SEQUENCE);
        // Level 30 at 12 min, dungeon at 15 min: done, in either arrival order.
        assert_eq!(run(&rule, &[(1, 12 * MIN), (2, 15 * MIN)]).len(), 1);
        assert_eq!(run(&rule, &[(2, 15 * MIN), (1, 12 * MIN)]).len(), 1);
        // Dungeon at 15 min, level 30 at 20 min: not done, in either order.
        assert!(run(&rule, &[(2, 15 * MIN), (1, 20 * MIN)]).is_empty());
        assert!(run(&rule, &[(1, 20 * MIN), (2, 15 * MIN)]).is_empty());
        // Outside the hour: nothing.
        assert!(run(&rule, &[(1, 0), (2, 61 * MIN)]).is_empty());
        // The hour counts from the latest start.
        let matched = run(&rule, &[(1, 0), (1, 30 * MIN), (2, 80 * MIN)]);
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].1.first_ms, 30 * MIN);
    }

    #[test]
    fn counted_steps_find_a_match_whenever_one_exists() {
        // Two A's then a B within an hour: A 0, A 50, A 70, B 80 -> A 50, A 70, B 80.
        let rule = rule("source: t\nkey: k\nordered: true\nwithin: 1h\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n- {conditions: [{field: e, value: b}]}\n");
        let matched = run(
            &rule,
            &[(1, 0), (1, 50 * MIN), (1, 70 * MIN), (2, 80 * MIN)],
        );
        assert_eq!(matched.len(), 1);
        assert_eq!((matched[0].1.first_ms, matched[0].1.events), (50 * MIN, 3));
    }

    #[test]
    fn any_arrival_order_gives_the_same_matches() {
        let rule = rule(SEQUENCE);
        // A deterministic pseudo-random script of 400 events over 10 hours.
        let mut x: u64 = 7;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let script: Vec<(u32, i64)> = (0..400)
            .map(|_| {
                (
                    (next() % 2 + 1) as u32,
                    (next() % (600 * MIN as u64)) as i64,
                )
            })
            .collect();
        let expected = run(&rule, &script);
        assert!(expected.len() > 10, "{}", expected.len());
        for _ in 0..5 {
            let mut shuffled: Vec<(usize, (u32, i64))> =
                script.iter().copied().enumerate().collect();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            // Same events (same ids), another arrival order.
            let mut track = Track::default();
            for (n, (steps, t)) in &shuffled {
                track.hold(*steps, event(*n as i64, *t));
            }
            let got: Vec<(i64, Completed)> = track
                .release(&rule, 3_600_000, i64::MAX - 1)
                .into_iter()
                .map(|(c, e)| (e.event_time, c))
                .collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn partial_sequences_are_dropped_once_within_has_passed() {
        let rule = rule(SEQUENCE);
        let mut track = Track::default();
        track.hold(1, event(1, 0));
        assert!(track.release(&rule, 3_600_000, 10).is_empty());
        assert_eq!(track.partials.len(), 1);
        assert_eq!(track.due(3_600_000), Some(3_600_001));
        track.release(&rule, 3_600_000, 3_600_001);
        assert!(track.is_empty());
        assert_eq!(track.due(3_600_000), None);
    }

    #[test]
    fn a_key_holds_one_partial_per_state() {
        let rule = rule(SEQUENCE);
        let events: Vec<(u32, i64)> = (0..5_000).map(|i| (1, i)).collect();
        let mut track = Track::default();
        for (n, (s, t)) in events.iter().enumerate() {
            track.hold(*s, event(n as i64, *t));
        }
        track.release(&rule, 3_600_000, 10_000);
        assert_eq!(track.partials.len(), 1);
        assert_eq!(track.partials[0].start, 4_999);
    }

    #[test]
    fn within_without_order_needs_every_step_in_the_span() {
        let rule = rule("source: t\nkey: k\nwithin: 10m\nrepeat: every\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n- {conditions: [{field: e, value: b}]}\n");
        assert_eq!(run(&rule, &[(2, 0), (1, 5 * MIN), (1, 9 * MIN)]).len(), 1);
        assert!(run(&rule, &[(1, 0), (1, 5 * MIN), (2, 11 * MIN)]).is_empty());
        // After a match the span starts over.
        assert_eq!(run(&rule, &[(2, 0), (1, 1), (1, 2), (1, 3)]).len(), 1);
    }

    #[test]
    fn windows_count_apart_and_close() {
        let tumbling = rule("source: t\nkey: k\nwindow: {tumbling: 1m}\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n");
        // Two in the first minute, one in the second, two in the third: once per window.
        let matched = run(
            &tumbling,
            &[
                (1, 0),
                (1, 59_999),
                (1, 60_000),
                (1, 120_000),
                (1, 130_000),
                (1, 140_000),
            ],
        );
        assert_eq!(
            matched.iter().map(|(_, c)| c.window).collect::<Vec<_>>(),
            [Some((0, 60_000)), Some((120_000, 180_000))]
        );
        let mut track = Track::default();
        track.hold(1, event(1, 10));
        track.release(&tumbling, 0, 11);
        assert_eq!(track.due(0), Some(60_000));
        track.release(&tumbling, 0, 60_000);
        assert!(track.is_empty(), "{track:?}");

        let sliding = rule("source: t\nkey: k\nwindow: {sliding: 2m, every: 1m}\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n");
        // 0:30 and 1:30 share the window [0, 2m); 1:30 and 2:30 share [1m, 3m).
        assert_eq!(
            run(&sliding, &[(1, 30_000), (1, 90_000), (1, 150_000)]).len(),
            2
        );

        let session = rule("source: t\nkey: k\nwindow: {session: 1m}\nevent_list:\n- {conditions: [{field: e, value: a}], count: 3}\n");
        assert_eq!(run(&session, &[(1, 0), (1, 50_000), (1, 100_000)]).len(), 1);
        // A gap of exactly the session's joins, wherever the release point stops meanwhile.
        let mut track = Track::default();
        track.hold(1, event(0, 0));
        track.hold(1, event(1, 30_000));
        assert!(track.release(&session, 0, 30_001).is_empty());
        assert!(track.release(&session, 0, 90_000).is_empty());
        assert_eq!(track.due(0), Some(90_001));
        track.hold(1, event(2, 90_000));
        assert_eq!(track.release(&session, 0, 90_001).len(), 1);
        assert!(run(&session, &[(1, 0), (1, 50_000), (1, 111_000)]).is_empty());

        let count = rule("source: t\nkey: k\nwindow: {events: 3}\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n- {conditions: [{field: e, value: b}]}\n");
        // Windows of three events: (a a b) matches, (a b b) does not.
        assert_eq!(
            run(&count, &[(1, 1), (1, 2), (2, 3), (1, 4), (2, 5), (2, 6)]).len(),
            1
        );
    }

    #[test]
    fn events_wait_for_the_release_point_and_once_is_once() {
        let rule = rule("source: t\nkey: k\nmax_out_of_order: 1s\nevent_list:\n- {conditions: [{field: e, value: a}], count: 2}\n");
        let mut track = Track::default();
        track.hold(1, event(1, 100));
        track.hold(1, event(2, 200));
        assert!(
            track.release(&rule, 0, 200).is_empty(),
            "200 is not passed yet"
        );
        assert_eq!(track.pending(), 1);
        assert_eq!(track.release(&rule, 0, 201).len(), 1);
        track.hold(1, event(3, 300));
        track.hold(1, event(4, 400));
        assert!(track.release(&rule, 0, 1_000).is_empty());
        assert!(!track.is_empty(), "done is remembered");
        let bytes = serde_json::to_vec(&track).unwrap();
        assert!(bytes.len() < 16, "{}", String::from_utf8_lossy(&bytes));
    }
}
