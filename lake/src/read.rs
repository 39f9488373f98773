//! A record read and not yet a row: the loop learns how to decode it (its writer schema and the
//! table's columns for it, which may take the schema store or a change of the table), and its
//! partition's write task decodes it into its row or its dead letter. So decoding, the larger
//! part of a record's cost, runs beside the loop and on as many cores as partitions are written.

use std::sync::Arc;

use logpipe_core::record::RecordId;
use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::batch::Row;
use crate::dead_letters;
use crate::letter::{DeadLetter, Letter};
use crate::rows::{self, Layout, Place};
use crate::schemas::Writer;

/// How a record's payload becomes the cells of its row.
pub(crate) enum Decoding {
    /// A clean record: Confluent wire format of `writer`'s schema.
    Clean {
        writer: Arc<Writer>,
        layout: Arc<Layout>,
    },
    /// A dead letter of a `dead_letters` table: its headers and value.
    DeadLetter { layout: Arc<Layout> },
}

/// A record of a partition, at or past at least one of its positions.
pub(crate) struct Read {
    pub(crate) message: OwnedMessage,
    /// How to decode it, or why it is a dead letter already (found by the loop).
    pub(crate) decoding: Result<Decoding, DeadLetter>,
    /// At or past the table's position: its row is wanted.
    pub(crate) as_row: bool,
    /// At or past the group's position: its dead letter, if it is one, is wanted.
    pub(crate) as_letter: bool,
}

/// What a record turned out to be.
pub(crate) enum Taken {
    /// Its row and the event day it belongs to.
    Row(Row, String),
    Letter(Letter),
    /// What is not wanted of it (a row below the table's position or a dead letter below the
    /// group's: read again for the other).
    Nothing,
}

impl Read {
    pub(crate) fn take(self) -> Taken {
        let Read {
            message,
            decoding,
            as_row,
            as_letter,
        } = self;
        match (decoding.and_then(|d| row(&message, &d)), as_row, as_letter) {
            (Ok((row, dt)), true, _) => Taken::Row(row, dt),
            (Err(why), _, true) => {
                tracing::debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "dead letter: {}",
                    why.reason()
                );
                Taken::Letter(Letter::new(&message, why))
            }
            _ => Taken::Nothing,
        }
    }
}

/// The row of `message` and its event day, or why it cannot be one.
fn row(message: &OwnedMessage, decoding: &Decoding) -> Result<(Row, String), DeadLetter> {
    let headers = || {
        message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)))
    };
    let (cells, schema_id, layout) = match decoding {
        Decoding::Clean { writer, layout } => {
            // The loop parsed the wire format's header to find the writer.
            let value = message.payload().unwrap_or_default();
            let payload = value
                .get(logpipe_core::wire::HEADER_LEN..)
                .unwrap_or_default();
            match writer.decode(payload, layout) {
                Ok(cells) => (cells, Some(writer.id), layout),
                Err(why) => return Err(DeadLetter::new("value", why, Some(writer.id))),
            }
        }
        Decoding::DeadLetter { layout } => {
            match layout.cells(dead_letters::decode(headers(), message.payload())) {
                Ok(cells) => (cells, None, layout),
                Err(why) => return Err(DeadLetter::new("value", why, None)),
            }
        }
    };
    let place = Place {
        id: RecordId::from_headers(headers()).ok().flatten(),
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        schema_id,
    };
    rows::row(cells, layout, &place).map_err(|why| DeadLetter::new("event_time", why, schema_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    /// A dead-letter table's layout: its records decode without a schema store.
    fn layout() -> Arc<Layout> {
        let fields = dead_letters::fields();
        Arc::new(Layout::new(rows::table_fields(&fields), &fields, None))
    }

    fn read(decodes: bool, as_row: bool, as_letter: bool) -> Read {
        let message = OwnedMessage::new(
            Some(b"a raw line".to_vec()),
            None,
            "dlq.game".into(),
            Timestamp::CreateTime(1_764_892_800_000), // 2025-12-05T00:00:00Z
            2,
            17,
            None,
        );
        let decoding = match decodes {
            true => Ok(Decoding::DeadLetter { layout: layout() }),
            false => Err(DeadLetter::new("wire", "no magic byte".into(), None)),
        };
        Read {
            message,
            decoding,
            as_row,
            as_letter,
        }
    }

    #[test]
    fn a_record_is_taken_for_what_is_wanted_of_it() {
        // (decodes, as_row, as_letter) -> what it is taken for
        let cases = [
            ((true, true, true), "row"),
            ((true, true, false), "row"),
            // Below the table's position, read again for the dead letters only.
            ((true, false, true), "nothing"),
            ((false, true, true), "letter"),
            ((false, false, true), "letter"),
            // Below the group's position: its dead letter was delivered.
            ((false, true, false), "nothing"),
        ];
        for ((decodes, as_row, as_letter), wanted) in cases {
            let taken = match read(decodes, as_row, as_letter).take() {
                Taken::Row(..) => "row",
                Taken::Letter(..) => "letter",
                Taken::Nothing => "nothing",
            };
            assert_eq!(taken, wanted, "{decodes} {as_row} {as_letter}");
        }
    }

    #[test]
    fn a_row_is_dated_and_placed_on_the_write_task() {
        let Taken::Row(row, dt) = read(true, true, true).take() else {
            panic!("not a row");
        };
        assert_eq!(dt, "2025-12-05", "dated by its Kafka timestamp");
        let fields = rows::table_fields(&dead_letters::fields());
        let cell = |name: &str| &row[fields.find(name).unwrap().0];
        assert_eq!(cell("value"), "a raw line");
        assert_eq!(cell("kafka_partition"), 2);
        assert_eq!(cell("kafka_offset"), 17);
        let Taken::Letter(letter) = read(false, true, true).take() else {
            panic!("not a letter");
        };
        assert_eq!(letter.kind, "wire");
        assert_eq!(letter.bytes(), b"a raw line".len());
    }
}
