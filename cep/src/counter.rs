//! Keyed counting: one [`Counter`] per (rule version, key) holds how far the key is on each step,
//! so an event costs O(1) whatever the counts asked for (no pattern runs, no event buffers).
//!
//! A counter also carries what a match needs to be reproducible: a running hash over the unique
//! ids of the events that advanced it, in the order they were counted (the order of the
//! repartition topic's partition, which a restart reads again identically), and the first and
//! last event times. Its changelog form is a fixed binary layout of 31 + 4 x steps bytes.

use crate::event::EventRef;
use crate::rule::{Repeat, Rule};

/// One key's progress on one rule version (or on one window of a timed rule, whose changelog
/// form is the `timed` track's JSON: hence the short serde names).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counter {
    /// Per step, how many events counted so far (never above the step's count).
    #[serde(rename = "n")]
    counts: Vec<u32>,
    /// `repeat: once` and matched: the key never matches this version again.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    /// Running hash of the contributing events' ids.
    #[serde(rename = "c")]
    chain: u64,
    /// Events that advanced the counter since the last match.
    #[serde(rename = "e")]
    events: u32,
    #[serde(rename = "f")]
    first_ms: i64,
    #[serde(rename = "l")]
    last_ms: i64,
}

/// A counter that reached every step's count: what its match is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) chain: u64,
    pub(crate) events: u32,
    pub(crate) first_ms: i64,
    pub(crate) last_ms: i64,
    /// The window it completed in, `[start, end)`, for windowed rules.
    pub(crate) window: Option<(i64, i64)>,
}

/// The changelog layout's version byte.
const FORMAT: u8 = 1;

impl Counter {
    /// Counts an event that satisfied the steps in `steps` (a bit mask). Returns the completed
    /// match when this event satisfies the rule; the counter then starts over (`repeat: every`)
    /// or is done (`repeat: once`). `None` also when the event advanced nothing.
    pub(crate) fn advance(
        &mut self,
        rule: &Rule,
        steps: u32,
        event: &EventRef,
    ) -> Option<Completed> {
        if self.done {
            return None;
        }
        if self.counts.len() != rule.steps.len() {
            self.counts.resize(rule.steps.len(), 0);
        }
        let mut advanced = false;
        for (i, step) in rule.steps.iter().enumerate() {
            if steps & (1 << i) != 0 && self.counts[i] < step.count {
                self.counts[i] += 1;
                advanced = true;
            }
        }
        if !advanced {
            return None;
        }
        if self.events == 0 {
            self.first_ms = event.event_time;
            self.last_ms = event.event_time;
        }
        self.first_ms = self.first_ms.min(event.event_time);
        self.last_ms = self.last_ms.max(event.event_time);
        self.events = self.events.saturating_add(1);
        self.chain = xxhash_rust::xxh3::xxh3_64_with_seed(event.id.as_bytes(), self.chain);
        let satisfied = rule
            .steps
            .iter()
            .zip(&self.counts)
            .all(|(step, n)| *n >= step.count);
        if !satisfied {
            return None;
        }
        let completed = Completed {
            chain: self.chain,
            events: self.events,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            window: None,
        };
        *self = Counter {
            done: rule.repeat == Repeat::Once,
            counts: if rule.repeat == Repeat::Once {
                Vec::new()
            } else {
                vec![0; rule.steps.len()]
            },
            ..Counter::default()
        };
        Some(completed)
    }

    /// Approximate bytes the counter takes in memory, for the state-size metric.
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<Counter>() + self.counts.capacity() * 4
    }

    /// The changelog value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + 4 * self.counts.len());
        out.push(FORMAT);
        out.push(u8::from(self.done));
        out.extend_from_slice(&self.chain.to_le_bytes());
        out.extend_from_slice(&self.events.to_le_bytes());
        out.extend_from_slice(&self.first_ms.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out.push(self.counts.len() as u8);
        for n in &self.counts {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Reads a changelog value; `None` when it is not one this version wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Counter> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT || rest.len() < 30 {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
        let steps = rest[29] as usize;
        let counts_bytes = rest.get(30..30 + 4 * steps)?;
        Some(Counter {
            done: rest[0] == 1,
            chain: u64_at(1),
            events: u32::from_le_bytes(rest[9..13].try_into().expect("4 bytes")),
            first_ms: u64_at(13) as i64,
            last_ms: u64_at(21) as i64,
            counts: counts_bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        Rule::compile("r", 1, 0, &crate::rule::parse_text(yaml, false).unwrap()).unwrap()
    }

    fn event(n: i64) -> EventRef {
        EventRef {
            id: format!("h/0001/{n}"),
            topic: "clean.game".into(),
            partition: 0,
            offset: n,
            event_time: 1_000 + n,
        }
    }

    const PVP: &str = "source: t\nkey: k\nrepeat: every\nevent_list:\n- {conditions: [{field: e, value: pvp}], count: 5}\n";
    const TWO_STEPS: &str = "source: t\nkey: k\nevent_list:\n- {conditions: [{field: e, value: buy}], count: 2}\n- {conditions: [{field: e, value: pvp}], count: 3}\n";

    #[test]
    fn every_nth_event_matches_with_repeat_every() {
        let rule = rule(PVP);
        let mut counter = Counter::default();
        let matched: Vec<i64> = (1..=12)
            .filter(|n| counter.advance(&rule, 1, &event(*n)).is_some())
            .collect();
        assert_eq!(matched, [5, 10]);
    }

    #[test]
    fn once_matches_once_and_all_steps_are_needed() {
        let rule = rule(TWO_STEPS);
        let mut counter = Counter::default();
        // Three buys count as two; the third pvp completes the rule; nothing after.
        let script = [
            (1, 0b01),
            (2, 0b10),
            (3, 0b01),
            (4, 0b01),
            (5, 0b10),
            (6, 0b10),
            (7, 0b11),
            (8, 0b11),
        ];
        let matched: Vec<(i64, Completed)> = script
            .iter()
            .filter_map(|(n, mask)| counter.advance(&rule, *mask, &event(*n)).map(|c| (*n, c)))
            .collect();
        assert_eq!(matched.len(), 1, "{matched:?}");
        let (at, completed) = &matched[0];
        assert_eq!(*at, 6);
        // Event 4 (a third buy) advanced nothing, so it is not part of the match.
        assert_eq!(completed.events, 5);
        assert_eq!((completed.first_ms, completed.last_ms), (1_001, 1_006));
    }

    #[test]
    fn the_chain_depends_on_the_contributing_events_only() {
        let rule = rule(PVP);
        let run = |ids: &[i64]| {
            let mut counter = Counter::default();
            ids.iter()
                .find_map(|n| counter.advance(&rule, 1, &event(*n)))
                .unwrap()
                .chain
        };
        assert_eq!(run(&[1, 2, 3, 4, 5]), run(&[1, 2, 3, 4, 5]));
        assert_ne!(run(&[1, 2, 3, 4, 5]), run(&[1, 2, 3, 4, 6]));
    }

    #[test]
    fn the_changelog_form_round_trips_and_is_small() {
        let rule = rule(TWO_STEPS);
        let mut counter = Counter::default();
        counter.advance(&rule, 0b11, &event(1));
        let bytes = counter.encode();
        assert_eq!(bytes.len(), 31 + 8);
        assert_eq!(Counter::decode(&bytes), Some(counter.clone()));
        assert_eq!(Counter::decode(&bytes[..10]), None);
        assert_eq!(Counter::decode(&[9, 0, 0]), None);
        assert!(counter.size() <= 100, "{}", counter.size());
    }
}
