//! Records deleted by retention before a group consumer read them. librdkafka's answer to a
//! position below the log start is to move on to the log start (`auto.offset.reset=earliest`)
//! and say so in one warning: the records in between are gone without a trace in the
//! service's output. [`Losses`] reads that warning, and the service's loop settles what it
//! says against the first offset it then reads, so the loss is logged as an error naming the
//! topic, partition and offset range, and counted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Partition;

/// What librdkafka's reset warning says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reset {
    pub(crate) partition: Partition,
    /// The position that was no longer there: the first record lost.
    pub(crate) from: i64,
    /// Where reading resumes, when the warning says (a cached log start); otherwise the first
    /// offset read after it tells.
    pub(crate) to: Option<i64>,
}

/// Reads librdkafka's `OFFSET` warning for a position out of range, e.g.
/// `raw.game [3]: offset reset (at offset 120 (leader epoch 2), broker 1) to cached BEGINNING
/// offset 5000: fetch failed due to requested offset not available on the broker: Broker:
/// Offset out of range`. Other resets (no committed offset yet) are not losses.
pub(crate) fn parse_reset(message: &str) -> Option<Reset> {
    if !message.contains("Offset out of range") {
        return None;
    }
    let (head, rest) = message.split_once("]: offset reset (at offset ")?;
    let (topic, partition) = head.rsplit_once(" [")?;
    let from = leading_number(rest)?;
    let (_, target) = rest.split_once(") to ")?;
    let target = target.split(':').next()?;
    let to = target
        .rsplit_once("offset ")
        .and_then(|(_, n)| leading_number(n));
    Some(Reset {
        partition: (topic.to_owned(), partition.parse().ok()?),
        from,
        to,
    })
}

fn leading_number(text: &str) -> Option<i64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// A consumer's losses to retention, reported once each.
pub(crate) struct Losses {
    /// Resets whose end is not known yet, by partition: the first record lost.
    pending: Mutex<BTreeMap<Partition, i64>>,
    metric: &'static str,
}

impl Losses {
    /// Losses counted in the counter `metric` (labels `topic`, `partition`).
    pub(crate) fn counted_as(metric: &'static str) -> Losses {
        Losses {
            pending: Mutex::default(),
            metric,
        }
    }

    /// Takes a librdkafka log line; true if it reported a loss.
    pub(crate) fn observe(&self, message: &str) -> bool {
        let Some(reset) = parse_reset(message) else {
            return false;
        };
        match reset.to {
            Some(to) => self.report(&reset.partition, reset.from, to),
            None => {
                tracing::error!(
                    topic = %reset.partition.0,
                    partition = reset.partition.1,
                    first_lost = reset.from,
                    "records from offset {} on were deleted by retention before they were read; reading goes on at the log start",
                    reset.from
                );
                self.lock().insert(reset.partition, reset.from);
            }
        }
        true
    }

    /// Settles pending losses with a batch's offsets (first and last per partition): the first
    /// offset read after a reset ends its loss.
    pub(crate) fn settle(&self, batch: &BTreeMap<Partition, (i64, i64)>) {
        self.settle_at(batch.iter().map(|(p, (first, _))| (p.clone(), *first)));
    }

    /// The partitions with a loss whose end is not known yet.
    pub(crate) fn pending(&self) -> Vec<Partition> {
        self.lock().keys().cloned().collect()
    }

    /// Settles pending losses with where reading resumes per partition (for a partition where
    /// nothing was read since the reset: its log start).
    pub(crate) fn settle_at(&self, ends: impl IntoIterator<Item = (Partition, i64)>) {
        let settled: Vec<(Partition, i64, i64)> = {
            let mut pending = self.lock();
            if pending.is_empty() {
                return;
            }
            let mut settled = Vec::new();
            for (partition, end) in ends {
                if pending.get(&partition).is_some_and(|from| end > *from) {
                    let from = pending.remove(&partition).expect("pending");
                    settled.push((partition, from, end));
                }
            }
            settled
        };
        for (partition, from, to) in settled {
            self.report(&partition, from, to);
        }
    }

    fn report(&self, partition: &Partition, from: i64, to: i64) {
        let lost = (to - from).max(0) as u64;
        tracing::error!(
            topic = %partition.0,
            partition = partition.1,
            first_lost = from,
            last_lost = to - 1,
            records = lost,
            "{lost} records (offsets {from}..={}) were deleted by retention before they were read",
            to - 1
        );
        metrics::counter!(self.metric, "topic" => partition.0.clone(), "partition" => partition.1.to_string())
            .increment(lost);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Partition, i64>> {
        self.pending.lock().expect("retention losses lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(topic: &str, partition: i32, from: i64, to: Option<i64>) -> Option<Reset> {
        Some(Reset {
            partition: (topic.to_owned(), partition),
            from,
            to,
        })
    }

    #[test]
    fn resets_for_a_position_out_of_range_are_read() {
        let cases = [
            // As librdkafka 2.12 words it, with a cached log start (read from the dev cluster).
            ("t [0]: offset reset (at offset 0, broker 1) to cached BEGINNING offset 27: fetch failed due to requested offset not available on the broker: Broker: Offset out of range",
             reset("t", 0, 0, Some(27))),
            ("raw.game [3]: offset reset (at offset 120 (leader epoch 2), broker 1) to offset BEGINNING: fetch failed due to requested offset not available on the broker: Broker: Offset out of range",
             reset("raw.game", 3, 120, None)),
            ("a [b] [12]: offset reset (at offset 5 (leader epoch 0), broker 3) to cached BEGINNING offset 9 (leader epoch 1): fetch failed: Broker: Offset out of range",
             reset("a [b]", 12, 5, Some(9))),
            // Not losses: no committed offset yet, or another message altogether.
            ("t [0]: offset reset (at offset INVALID, broker 1) to offset BEGINNING: no previously committed offset available: Local: No offset stored", None),
            ("t [0]: fetch position 10 is out of range", None),
            ("Offset out of range", None),
        ];
        for (message, expected) in cases {
            assert_eq!(parse_reset(message), expected, "{message}");
        }
    }

    #[test]
    fn a_loss_without_its_end_is_settled_by_the_next_batch() {
        let losses = Losses::counted_as("test_records_lost_total");
        assert!(!losses.observe("Broker: transport failure"));
        assert!(losses.observe("t [1]: offset reset (at offset 100, broker 1) to offset BEGINNING: fetch failed: Broker: Offset out of range"));
        assert_eq!(losses.lock().get(&("t".to_owned(), 1)), Some(&100));
        let batch = BTreeMap::from([
            (("t".to_owned(), 0), (5, 9)),
            (("t".to_owned(), 1), (250, 260)),
        ]);
        losses.settle(&batch);
        assert!(losses.lock().is_empty(), "settled once");
        // Nothing read since the reset: the position (the log start) ends it.
        assert!(losses.observe("t [4]: offset reset (at offset 7, broker 1) to offset BEGINNING: y: Broker: Offset out of range"));
        losses.settle_at([(("t".to_owned(), 4), 7)]);
        assert_eq!(losses.lock().len(), 1, "not yet moved past the lost offset");
        losses.settle_at([(("t".to_owned(), 4), 40)]);
        assert!(losses.lock().is_empty());
        assert!(losses.observe("t [2]: offset reset (at offset 1, broker 1) to cached BEGINNING offset 3: x: Broker: Offset out of range"));
        assert!(losses.lock().is_empty(), "a known end is reported at once");
    }
}
