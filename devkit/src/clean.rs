//! Game records as they stand in the clean topics (Confluent wire format, Avro, the `lp.*`
//! headers the validator keeps), generated straight into a topic: what the benchmarks of the
//! clean topics' readers (the CEP worker, the lake loader) load, without running the hops
//! before them.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use logpipe_core::record::{header, FileId, RecordId};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

use crate::loadgen::{self, EVENTS};
use crate::measure::{filling_producer, send_polling, Rate};

/// Servers the generated records spread over.
pub const SERVERS: u64 = 200;
/// Levels the generated records spread over.
pub const LEVELS: u64 = 100;

/// The game schemas by event type: (event, schema, registered id).
#[derive(Clone)]
pub struct Encoder {
    schemas: Vec<(&'static str, Schema, u32)>,
    /// The size records are padded up to (see [`Encoder::padded_to`]).
    size: usize,
}

/// What varies between generated records.
pub struct Fields<'a> {
    pub seq: u64,
    pub event: &'a str,
    pub player: &'a str,
    pub server: u64,
    pub level: u64,
    pub time_ms: i64,
}

impl Encoder {
    pub fn new(ids: &[(&'static str, u32)]) -> anyhow::Result<Encoder> {
        let mut schemas = Vec::new();
        for (subject, text) in loadgen::schemas() {
            let event = subject.strip_prefix("game.").context("game subject")?;
            let id = ids
                .iter()
                .find(|(s, _)| *s == subject)
                .with_context(|| format!("{subject} not registered"))?
                .1;
            let event = EVENTS
                .iter()
                .copied()
                .find(|e| *e == event)
                .context("event")?;
            schemas.push((event, Schema::parse_str(text)?, id));
        }
        Ok(Encoder { schemas, size: 0 })
    }

    /// The writer schemas by id, as the worker fetches them.
    pub fn by_id(&self) -> HashMap<u32, Schema> {
        self.schemas
            .iter()
            .map(|(_, s, id)| (*id, s.clone()))
            .collect()
    }

    /// One clean record's value: the wire format of a record of `fields.event`'s schema.
    pub fn encode(&self, fields: &Fields<'_>) -> anyhow::Result<Vec<u8>> {
        let (_, schema, id) = self
            .schemas
            .iter()
            .find(|(e, _, _)| *e == fields.event)
            .context("unknown event")?;
        let Schema::Record(record) = schema else {
            anyhow::bail!("{} is not a record schema", fields.event);
        };
        let mut values: Vec<(String, Avro)> = record
            .fields
            .iter()
            .map(|f| (f.name.clone(), value(&f.name, &f.schema, fields)))
            .collect();
        let mut datum = apache_avro::to_avro_datum(schema, Avro::Record(values.clone()))?;
        // Beside the datum: the wire format's 5 bytes, and about 16 of the note's key and
        // length prefixes.
        let room = self.size.saturating_sub(datum.len() + 5 + 16);
        if room > 0 {
            if let Some((_, Avro::Union(_, context))) =
                values.iter_mut().find(|(n, _)| n == "context")
            {
                if let Avro::Map(entries) = context.as_mut() {
                    entries.insert("note".into(), Avro::String(letters(fields.seq, room)));
                }
            }
            datum = apache_avro::to_avro_datum(schema, Avro::Record(values))?;
        }
        Ok(logpipe_core::wire::encode(*id, &datum))
    }

    /// Records of about `bytes` (wire format) from now on: shorter ones get a note of random
    /// lowercase letters in their `context` map, as the load generator pads its lines.
    pub fn padded_to(mut self, bytes: usize) -> Encoder {
        self.size = bytes;
        self
    }
}

/// `n` lowercase letters, the same for the same `seed`.
fn letters(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// A field's value: the varying ones from `f`, the others plausible filler of their type.
pub fn value(name: &str, schema: &Schema, f: &Fields<'_>) -> Avro {
    match (name, schema) {
        ("event", _) => Avro::String(f.event.to_owned()),
        ("player_id", _) => Avro::String(f.player.to_owned()),
        ("server", _) => Avro::String(format!("srv-{}", f.server)),
        ("level", _) => Avro::Int(f.level as i32),
        ("event_id", _) => Avro::String(format!("bench-{}", f.seq)),
        ("game_id", _) => Avro::String("g-moonfall".into()),
        (_, Schema::String) => Avro::String(format!("{name}-{}", f.seq % 97)),
        (_, Schema::Int) => Avro::Int((f.seq % 1_000) as i32),
        (_, Schema::Long) => Avro::Long((f.seq % 100_000) as i64),
        (_, Schema::TimestampMillis) => Avro::TimestampMillis(f.time_ms),
        (_, Schema::Uuid) => Avro::String(format!("00000000-0000-4000-8000-{:012x}", f.seq)),
        (_, Schema::Enum(e)) => {
            let i = (f.seq % e.symbols.len() as u64) as usize;
            Avro::Enum(i as u32, e.symbols[i].clone())
        }
        (_, Schema::Decimal(_)) => Avro::Decimal(apache_avro::Decimal::from(vec![0x04, 0xd2])),
        ("session_id", _) => Avro::Union(1, Box::new(Avro::String(format!("s-{:08x}", f.seq / 7)))),
        ("context", _) => Avro::Union(
            1,
            Box::new(Avro::Map(
                [
                    ("build".to_owned(), Avro::String("2026.12.1".into())),
                    (
                        "region".to_owned(),
                        Avro::String(format!("eu-{}", f.server % 4)),
                    ),
                ]
                .into(),
            )),
        ),
        _ => Avro::Null,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Headers as the validator writes them: the agent's `lp.*` id of the line.
pub fn headers(host: &str, file: u64, offset: u64) -> OwnedHeaders {
    let id = RecordId {
        host: host.into(),
        file: FileId(file),
        offset,
    };
    let path = format!("/var/log/game/{file}.log");
    id.headers().iter().fold(
        OwnedHeaders::new_with_capacity(4).insert(Header {
            key: header::PATH,
            value: Some(path.as_bytes()),
        }),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

/// Generates and produces records `seqs` to `topic`, record `seq` to partition `seq %
/// partitions`: its player is `player(seq)`, its event time `time_ms(seq)`; event, server and
/// level vary with `seq`. Returns the average value size.
pub fn fill(
    bootstrap: &str,
    encoder: &Encoder,
    topic: &str,
    seqs: Range<u64>,
    partitions: i32,
    player: impl Fn(u64) -> String,
    time_ms: impl Fn(u64) -> i64,
) -> anyhow::Result<f64> {
    let producer = filling_producer(bootstrap)?;
    let mut bytes = 0usize;
    let records = seqs.end - seqs.start;
    for seq in seqs {
        // A cheap scramble so that event, server and level are not correlated.
        let mix = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
        let player = player(seq);
        let value = encoder.encode(&Fields {
            seq,
            event: event_of(seq),
            player: &player,
            server: (mix / 5) % SERVERS,
            level: (mix / 1_000) % LEVELS + 1,
            time_ms: time_ms(seq),
        })?;
        bytes += value.len();
        let partition = (seq % partitions as u64) as i32;
        send_polling(
            &producer,
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .key(format!("bench-host|/var/log/game/{partition}.log").as_bytes())
                .payload(&value)
                .headers(headers("bench-host", partition as u64 + 1, seq)),
        )?;
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(bytes as f64 / records.max(1) as f64)
}

/// The event type [`fill`] gives record `seq`: each of [`EVENTS`] as often.
pub fn event_of(seq: u64) -> &'static str {
    let mix = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    EVENTS[(mix % EVENTS.len() as u64) as usize]
}

/// The ceiling of every reader of a clean topic: a consumer made from `consumer` (the reader's
/// own consumer settings, read_committed) that reads `records` records of `topic` and decodes
/// each as the readers do (wire format, Avro, JSON values), timed from its first record to its
/// last; fails once `stall` has passed.
pub fn decoding_ceiling(
    consumer: &ClientConfig,
    topic: &str,
    records: usize,
    schemas: &HashMap<u32, Schema>,
    stall: Duration,
) -> anyhow::Result<Rate> {
    let consumer: BaseConsumer = consumer.create()?;
    consumer.subscribe(&[topic])?;
    let (mut done, mut bytes) = (0usize, 0usize);
    let mut first: Option<Instant> = None;
    let stall = Instant::now() + stall;
    while done < records {
        anyhow::ensure!(
            Instant::now() < stall,
            "ceiling stalled at {done} of {records}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let payload = message.payload().unwrap_or_default();
        let (id, mut body) = logpipe_core::wire::parse(payload)?;
        let schema = schemas.get(&id).context("unknown schema id")?;
        let value = apache_avro::from_avro_datum(schema, &mut body, None)?;
        let json = serde_json::Value::try_from(value)?;
        std::hint::black_box(json);
        done += 1;
        if first.is_none() {
            first = Some(Instant::now());
        } else {
            bytes += payload.len();
        }
    }
    Ok(Rate {
        records: records - 1,
        bytes,
        elapsed: first.context("nothing read")?.elapsed(),
    })
}
