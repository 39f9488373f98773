//! What a mirrored record is: the source record's key (null stays null), value (a tombstone
//! stays a tombstone), every header in order (repeated names and null values included) and
//! timestamp, unchanged, plus the loop guard's provenance header when one is configured.
//!
//! The same function decides what to write and what to expect on the target when a shard
//! verifies records written by a crashed predecessor, so the two cannot drift apart.

use logpipe_core::kafka::HeaderList;
use logpipe_core::record::header;
use rdkafka::message::{Headers, OwnedMessage, Timestamp};
use rdkafka::Message;

use crate::config::LoopGuard;

/// The record to write to the target for one source record.
pub(crate) struct Copy<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) headers: Option<HeaderList>,
    /// The source's timestamp in ms, written as CreateTime. On a LogAppendTime target topic
    /// (the mirror copies `message.timestamp.type`) the broker replaces it with its own append
    /// time.
    pub(crate) timestamp: Option<i64>,
}

impl Copy<'_> {
    /// Bytes the record carries (key, value, header names and values), for rate metrics.
    pub(crate) fn size(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        });
        self.key.map_or(0, <[u8]>::len) + self.payload.map_or(0, <[u8]>::len) + headers
    }

    /// Whether a record read from the target is exactly this copy.
    pub(crate) fn matches(&self, target: &OwnedMessage) -> bool {
        let headers_equal = match (&self.headers, target.headers()) {
            (None, None) => true,
            (Some(a), None) => a.count() == 0,
            (None, Some(b)) => b.count() == 0,
            (Some(a), Some(b)) => {
                a.count() == b.count()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.key == y.key && x.value == y.value)
            }
        };
        // A LogAppendTime target stamps its own time: only a CreateTime one keeps the copy's.
        let timestamp_equal = matches!(target.timestamp(), Timestamp::LogAppendTime(_))
            || self.timestamp == target.timestamp().to_millis();
        self.key == target.key()
            && self.payload == target.payload()
            && timestamp_equal
            && headers_equal
    }
}

/// The copy of `message`, whose headers the caller took from it (`TakeHeaders`: moved out of a
/// fetched record), or `None` when the loop guard says it came from the target cluster.
pub(crate) fn copy_of<'a, M: Message>(
    message: &'a M,
    mut headers: Option<HeaderList>,
    guard: Option<&LoopGuard>,
) -> Option<Copy<'a>> {
    if let Some(guard) = guard {
        let origin = headers
            .as_ref()
            .and_then(|h| h.iter().find(|h| h.key == header::ORIGIN).map(|h| h.value));
        match origin {
            Some(Some(origin)) if origin == guard.target_id.as_bytes() => return None,
            // Already stamped by the cluster it was first produced to: keep that provenance.
            Some(_) => {}
            None => headers
                .get_or_insert_with(HeaderList::new)
                .add(header::ORIGIN, Some(guard.source_id.as_bytes())),
        }
    }
    Some(Copy {
        key: message.key(),
        payload: message.payload(),
        headers,
        timestamp: message.timestamp().to_millis(),
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    /// The copy of an owned record, its headers copied as the shard takes a fetched one's.
    fn copied<'a>(message: &'a OwnedMessage, guard: Option<&LoopGuard>) -> Option<Copy<'a>> {
        copy_of(message, message.headers().map(HeaderList::copy_of), guard)
    }

    fn message(
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> OwnedMessage {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header { key: k, value: *v });
        }
        let headers = if headers.is_empty() {
            None
        } else {
            Some(owned)
        };
        OwnedMessage::new(
            payload.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "t".into(),
            Timestamp::CreateTime(1_700_000_000_123),
            2,
            7,
            headers,
        )
    }

    fn guard() -> LoopGuard {
        LoopGuard {
            source_id: "west".into(),
            target_id: "east".into(),
        }
    }

    #[test]
    fn copies_everything_unchanged() {
        let source = message(
            None,
            Some(b"\x00\xffbin"),
            &[("a", Some(b"1")), ("a", Some(b"2")), ("n", None)],
        );
        let copy = copied(&source, None).unwrap();
        assert_eq!(copy.key, None);
        assert_eq!(copy.timestamp, Some(1_700_000_000_123));
        let headers: Vec<_> = copy
            .headers
            .as_ref()
            .unwrap()
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("a".into(), Some(b"1".to_vec())),
                ("a".into(), Some(b"2".to_vec())),
                ("n".into(), None)
            ]
        );
        assert!(copy.matches(&source));
        assert_eq!(copy.size(), 5 + 2 + 2 + 1);
    }

    #[test]
    fn tombstone_and_empty_value_differ() {
        let tombstone = message(Some(b"k"), None, &[]);
        let empty = message(Some(b"k"), Some(b""), &[]);
        assert!(copied(&tombstone, None).unwrap().matches(&tombstone));
        assert!(!copied(&tombstone, None).unwrap().matches(&empty));
        assert!(
            !copied(&message(None, Some(b""), &[]), None)
                .unwrap()
                .matches(&empty),
            "null key is not an empty key"
        );
    }

    #[test]
    fn a_log_append_time_target_is_matched_without_the_timestamp() {
        let source = message(Some(b"k"), Some(b"v"), &[]);
        let copy = copied(&source, None).unwrap();
        let restamped = |timestamp| {
            OwnedMessage::new(
                Some(b"v".to_vec()),
                Some(b"k".to_vec()),
                "t".into(),
                timestamp,
                2,
                7,
                None,
            )
        };
        assert!(copy.matches(&restamped(Timestamp::LogAppendTime(1_800_000_000_000))));
        assert!(!copy.matches(&restamped(Timestamp::CreateTime(1_800_000_000_000))));
    }

    #[test]
    fn header_order_matters() {
        let ab = message(None, Some(b"v"), &[("a", Some(b"1")), ("b", Some(b"2"))]);
        let ba = message(None, Some(b"v"), &[("b", Some(b"2")), ("a", Some(b"1"))]);
        assert!(!copied(&ab, None).unwrap().matches(&ba));
    }

    #[test]
    fn loop_guard_stamps_skips_and_keeps_foreign_origin() {
        let native = message(None, Some(b"v"), &[("x", Some(b"1"))]);
        let copy = copied(&native, Some(&guard())).unwrap();
        let last = copy.headers.as_ref().unwrap().iter().last().unwrap();
        assert_eq!(
            (last.key, last.value),
            (header::ORIGIN, Some(b"west".as_slice()))
        );
        assert!(!copy.matches(&native));

        let from_target = message(None, Some(b"v"), &[(header::ORIGIN, Some(b"east"))]);
        assert!(copied(&from_target, Some(&guard())).is_none());

        let third = message(None, Some(b"v"), &[(header::ORIGIN, Some(b"north"))]);
        let copy = copied(&third, Some(&guard())).unwrap();
        assert!(
            copy.matches(&third),
            "an existing provenance is kept as it is"
        );
    }
}
