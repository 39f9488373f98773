//! End-to-end accounting: every line the load generator wrote must appear exactly once, in a
//! clean topic if it was valid and in a dead-letter topic if it was not.
//!
//! Lines are matched by their event id (`<run>-<seq>`, unique per line, readable even from a
//! malformed line), not by counts, so a loss hidden by a duplicate still shows. Clean records are
//! decoded as any Confluent consumer would (wire format, writer schema fetched from the store by
//! id); dead letters carry the original line, so the id is read from the raw bytes.
//!
//! Two things a user does on purpose put a line in a second place, and are told apart from the
//! pipeline's own mistakes by the records themselves:
//! - `logpipe-validator replay` writes a dead letter again (to the clean topic, or to the DLQ if
//!   it fails again) and leaves the original in the DLQ; its records carry the replay headers
//!   ([`logpipe_core::record::replay_header`]) naming the dead letter they replay. Such a record
//!   supersedes that dead letter: it is counted as replayed, not as a duplicate. A dead letter
//!   replayed twice is a duplicate, and a line the validator itself wrote to both places is
//!   still duplicated and misrouted.
//!   A replay naming a dead letter that retention has since deleted from the DLQ (its offset
//!   is below the partition's log start) stands for that dead letter: counted as replayed.
//! - After a schema change, lines the generator wrote invalid may be accepted into the clean
//!   topic; those are encoded with a writer schema other than the generator's and are counted as
//!   accepted by a changed schema, not as misrouted.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use apache_avro::types::Value;
use logpipe_core::record::ReplayedFrom;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message as _;

use crate::harness::TopicReader;
use crate::loadgen::{self, Report};

/// How long one topic may take to be read to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between two reads of [`wait_drained`].
const DRAIN_POLL: Duration = Duration::from_secs(2);
/// Ids listed per problem kind in the summary line.
const SHOWN_IDS: usize = 10;

/// The outcome of comparing what was written with what came out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Lines the reports say were written.
    pub written: u64,
    /// Of those, lines written invalid on purpose (expected in a DLQ).
    pub written_invalid: u64,
    /// Records of these runs found in the clean topics (duplicates and replays included).
    pub clean: u64,
    /// Records of these runs found in the dead-letter topics (duplicates and replays included).
    pub dead_letters: u64,
    /// Replays of these runs' dead letters found in the clean topics: records `logpipe-validator
    /// replay` wrote, naming a dead letter of the same line (which stays in the DLQ).
    pub replayed: u64,
    /// Replays written to a DLQ again (they failed again).
    pub replayed_dead: u64,
    /// Of the replays, those whose dead letter retention has since deleted from the DLQ.
    pub replayed_aged_out: u64,
    /// Records the services counted as deleted by retention before they read them (their
    /// `*_lost_to_retention` counters, filled in by a caller that can read them): lines lost
    /// that way are among `lost`, lost to retention rather than by the pipeline.
    pub lost_to_retention: u64,
    /// Lines written invalid that a clean topic holds (not by a replay) encoded with a schema
    /// other than the generator's: accepted by a schema the user changed.
    pub accepted_by_changed_schema: u64,
    /// Ids written but found nowhere.
    pub lost: Vec<String>,
    /// Ids found more than once (over clean and DLQ together), a replay counting in place of
    /// the dead letter it replays.
    pub duplicated: Vec<String>,
    /// Valid lines the validator dead-lettered, or invalid lines it wrote to a clean topic with
    /// the generator's schema.
    pub misrouted: Vec<String>,
    /// Records in these topics that belong to none of the reports (other runs, other
    /// producers, ids beyond a run's end): not judged, only counted.
    pub foreign: u64,
}

impl Reconciliation {
    /// Every written line found exactly once, and where it belongs.
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.misrouted.is_empty()
    }
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "written {} ({} invalid), clean {}, dead letters {}, replayed {}: lost {}, duplicated {}, misrouted {}",
            self.written,
            self.written_invalid,
            self.clean,
            self.dead_letters,
            self.replayed,
            self.lost.len(),
            self.duplicated.len(),
            self.misrouted.len()
        )?;
        if self.replayed_dead > 0 {
            write!(
                f,
                " ({} replayed dead letters failed again)",
                self.replayed_dead
            )?;
        }
        if self.replayed_aged_out > 0 {
            write!(
                f,
                " ({} replays of dead letters retention has since deleted)",
                self.replayed_aged_out
            )?;
        }
        if self.lost_to_retention > 0 {
            write!(
                f,
                " ({} records deleted by retention before a service read them: lost to retention)",
                self.lost_to_retention
            )?;
        }
        if self.accepted_by_changed_schema > 0 {
            write!(
                f,
                " ({} invalid lines accepted by a changed schema)",
                self.accepted_by_changed_schema
            )?;
        }
        if self.foreign > 0 {
            write!(f, " ({} records of other runs ignored)", self.foreign)?;
        }
        for (what, ids) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("misrouted", &self.misrouted),
        ] {
            if !ids.is_empty() {
                let shown: Vec<&str> = ids.iter().take(SHOWN_IDS).map(String::as_str).collect();
                let more = if ids.len() > SHOWN_IDS {
                    format!(" and {} more", ids.len() - SHOWN_IDS)
                } else {
                    String::new()
                };
                write!(f, "; {what}: {}{more}", shown.join(" "))?;
            }
        }
        Ok(())
    }
}

/// Which kind of topic a record was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Clean,
    DeadLetter,
}

/// One record read back, as the tally needs it.
#[derive(Debug, Clone)]
struct Found<'m> {
    place: Place,
    /// The line's event id, when the record has one.
    id: Option<&'m str>,
    /// Where the record is (a replay names the dead letter it replays this way).
    at: ReplayedFrom,
    /// The dead letter this record replays, from its replay headers.
    replayed_from: Option<ReplayedFrom>,
    /// Clean records: encoded with a writer schema that is not one the generator ships.
    changed_schema: bool,
}

/// A written line: (report index, sequence number).
type Line = (usize, usize);

/// How often the validator itself (not a replay) wrote a line to each kind of topic.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    clean: u32,
    /// Of `clean`, those encoded with a changed schema.
    changed_schema: u32,
    dead: u32,
}

impl Counts {
    fn add(&mut self, place: Place, changed_schema: bool) {
        match place {
            Place::Clean => {
                self.clean += 1;
                self.changed_schema += u32::from(changed_schema);
            }
            Place::DeadLetter => self.dead += 1,
        }
    }
}

/// A record a replay wrote, judged once every dead letter it may name has been read.
#[derive(Debug, Clone)]
struct Replay {
    line: Line,
    place: Place,
    from: ReplayedFrom,
    changed_schema: bool,
}

/// What the replays of one line add to its counts.
#[derive(Debug, Default)]
struct Replays {
    /// Replays naming no dead letter of this line: judged as the validator's own output.
    unexplained: Counts,
    /// Replays of a dead letter of this line.
    records: u32,
    /// Dead letters of this line that were replayed (each once or more).
    superseded: u32,
}

/// Occurrence counts per written line, filled record by record (no Kafka involved) and judged
/// at any time: [`wait_drained`] judges the same tally after each read.
struct Tally {
    reports: Vec<Report>,
    /// run id -> index into `reports`.
    runs: HashMap<String, usize>,
    /// Per report, per sequence number: the validator's own outputs.
    seen: Vec<Vec<Counts>>,
    /// Per report, the sequence numbers written invalid on purpose.
    invalid: Vec<HashSet<usize>>,
    /// Every dead letter of these runs by position, for replays to name.
    dead_letters_at: HashMap<ReplayedFrom, Line>,
    /// Each dead-letter partition's log start as last read: a replay naming an offset below it
    /// names a dead letter retention deleted.
    log_starts: HashMap<(String, i32), i64>,
    replays: Vec<Replay>,
    clean: u64,
    dead_letters: u64,
    foreign: u64,
}

impl Tally {
    fn new(reports: &[Report]) -> Tally {
        let mut tally = Tally {
            runs: reports
                .iter()
                .enumerate()
                .map(|(i, r)| (r.run_id.clone(), i))
                .collect(),
            seen: reports
                .iter()
                .map(|r| vec![Counts::default(); r.lines as usize])
                .collect(),
            invalid: vec![HashSet::new(); reports.len()],
            reports: reports.to_vec(),
            dead_letters_at: HashMap::new(),
            log_starts: HashMap::new(),
            replays: Vec::new(),
            clean: 0,
            dead_letters: 0,
            foreign: 0,
        };
        for line in reports.iter().flat_map(|r| &r.invalid_lines) {
            if let Some((report, seq)) = tally.locate(&line.event_id) {
                tally.invalid[report].insert(seq);
            }
        }
        tally
    }

    /// The (report, seq) of an id of these runs.
    fn locate(&self, id: &str) -> Option<Line> {
        let (run, seq) = id.rsplit_once('-')?;
        let report = *self.runs.get(run)?;
        let seq: usize = seq.parse().ok()?;
        (seq < self.seen[report].len()).then_some((report, seq))
    }

    fn add(&mut self, found: Found<'_>) {
        let Some(line) = found.id.and_then(|id| self.locate(id)) else {
            self.foreign += 1;
            return;
        };
        match found.place {
            Place::Clean => self.clean += 1,
            Place::DeadLetter => {
                self.dead_letters += 1;
                self.dead_letters_at.insert(found.at, line);
            }
        }
        match found.replayed_from {
            Some(from) => self.replays.push(Replay {
                line,
                place: found.place,
                from,
                changed_schema: found.changed_schema,
            }),
            None => self.seen[line.0][line.1].add(found.place, found.changed_schema),
        }
    }

    /// The replays per line, each checked against the dead letter it names.
    fn replays(&self, r: &mut Reconciliation) -> HashMap<Line, Replays> {
        let mut per_line: HashMap<Line, Replays> = HashMap::new();
        let mut replayed: HashSet<&ReplayedFrom> = HashSet::new();
        for replay in &self.replays {
            let entry = per_line.entry(replay.line).or_default();
            if !self.dead_letters_at.contains_key(&replay.from) && self.aged_out(&replay.from) {
                // It stands for a dead letter no longer there to count.
                entry.records += 1;
                r.replayed_aged_out += 1;
                match replay.place {
                    Place::Clean => r.replayed += 1,
                    Place::DeadLetter => r.replayed_dead += 1,
                }
                continue;
            }
            if self.dead_letters_at.get(&replay.from) != Some(&replay.line) {
                // It names another line's dead letter, or one not (or no longer) there.
                entry.unexplained.add(replay.place, replay.changed_schema);
                continue;
            }
            entry.records += 1;
            if replayed.insert(&replay.from) {
                entry.superseded += 1;
            }
            match replay.place {
                Place::Clean => r.replayed += 1,
                Place::DeadLetter => r.replayed_dead += 1,
            }
        }
        per_line
    }

    /// Whether a dead-letter position is below its partition's log start as last read.
    fn aged_out(&self, at: &ReplayedFrom) -> bool {
        self.log_starts
            .get(&(at.topic.clone(), at.partition))
            .is_some_and(|start| at.offset < *start)
    }

    fn judge(&self) -> Reconciliation {
        let mut r = Reconciliation {
            written: self.reports.iter().map(|r| r.lines).sum(),
            written_invalid: self.invalid.iter().map(|seqs| seqs.len() as u64).sum(),
            clean: self.clean,
            dead_letters: self.dead_letters,
            foreign: self.foreign,
            ..Reconciliation::default()
        };
        let replays = self.replays(&mut r);
        for (index, ((report, seen), invalid_seqs)) in self
            .reports
            .iter()
            .zip(&self.seen)
            .zip(&self.invalid)
            .enumerate()
        {
            for (seq, &own) in seen.iter().enumerate() {
                let invalid = invalid_seqs.contains(&seq);
                let line_replays = replays.get(&(index, seq));
                if line_replays.is_none()
                    && own.clean + own.dead == 1
                    && (own.clean == 1) != invalid
                {
                    continue; // the common case: once, where it belongs
                }
                let mut counts = own;
                let (mut records, mut superseded) = (0, 0);
                if let Some(l) = line_replays {
                    counts.clean += l.unexplained.clean;
                    counts.changed_schema += l.unexplained.changed_schema;
                    counts.dead += l.unexplained.dead;
                    (records, superseded) = (l.records, l.superseded);
                }
                let found = counts.clean + counts.dead + records;
                if invalid && counts.changed_schema > 0 {
                    r.accepted_by_changed_schema += 1;
                }
                let id = || format!("{}-{seq}", report.run_id);
                if found == 0 {
                    r.lost.push(id());
                } else if found.saturating_sub(superseded) > 1 {
                    r.duplicated.push(id());
                }
                if (invalid && counts.clean > counts.changed_schema)
                    || (!invalid && counts.dead > 0)
                {
                    r.misrouted.push(id());
                }
            }
        }
        r
    }
}

/// Reads the clean and dead-letter topics (read_committed, each up to its end), extracts every
/// record's event id and compares with what the load generator `written` (only those runs' ids
/// are judged).
pub async fn reconcile(
    read_bootstrap: &str,
    schema_store_url: &str,
    clean: &[String],
    dlq: &[String],
    written: &[Report],
) -> anyhow::Result<Reconciliation> {
    let reader = Reader::open(read_bootstrap, schema_store_url, clean, dlq, written).await?;
    Ok(reader.read_new().await?.1)
}

/// Reads the topics every `DRAIN_POLL` until nothing written is missing any more (or `timeout`
/// passes), and returns the last result: what "wait for the pipeline to drain" means. Each read
/// takes only the records committed since the previous one. The caller judges the result
/// (`is_exact`); a timeout shows as `lost` ids.
pub async fn wait_drained(
    read_bootstrap: &str,
    schema_store_url: &str,
    clean: &[String],
    dlq: &[String],
    written: &[Report],
    timeout: Duration,
) -> anyhow::Result<Reconciliation> {
    let deadline = Instant::now() + timeout;
    let mut reader = Reader::open(read_bootstrap, schema_store_url, clean, dlq, written).await?;
    loop {
        let (back, r) = reader.read_new().await?;
        if r.lost.is_empty() || Instant::now() + DRAIN_POLL >= deadline {
            return Ok(r);
        }
        reader = back;
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// The clean and DLQ topics' readers and the tally, kept between reads.
struct Reader {
    topics: Vec<(Place, TopicReader)>,
    tally: Tally,
    decoder: CleanDecoder,
}

impl Reader {
    async fn open(
        bootstrap: &str,
        store_url: &str,
        clean: &[String],
        dlq: &[String],
        written: &[Report],
    ) -> anyhow::Result<Reader> {
        let decoder = CleanDecoder::new(store_url)?;
        let tally = Tally::new(written);
        let bootstrap = bootstrap.to_owned();
        let wanted: Vec<(Place, String)> = clean
            .iter()
            .map(|t| (Place::Clean, t.clone()))
            .chain(dlq.iter().map(|t| (Place::DeadLetter, t.clone())))
            .collect();
        let topics = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(place, topic)| {
                    Ok((place, TopicReader::new(&bootstrap, &topic, READ_TIMEOUT)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        Ok(Reader {
            topics,
            tally,
            decoder,
        })
    }

    /// Reads what was committed since the last read and judges everything read so far.
    async fn read_new(mut self) -> anyhow::Result<(Reader, Reconciliation)> {
        // The Kafka reads block; the schema lookups (few: one per schema id) run on the runtime.
        tokio::task::spawn_blocking(move || {
            self.read_new_blocking()?;
            let r = self.tally.judge();
            Ok((self, r))
        })
        .await?
    }

    fn read_new_blocking(&mut self) -> anyhow::Result<()> {
        let Reader {
            topics,
            tally,
            decoder,
        } = self;
        for (place, reader) in topics {
            reader.read_new(READ_TIMEOUT, |message| {
                let payload = message.payload().unwrap_or_default();
                let (id, changed_schema) = match place {
                    Place::Clean => {
                        let (id, generator) = decoder
                            .decode(payload)
                            .and_then(event_id_field)
                            .with_context(|| at(message))?;
                        (Some(id), !generator)
                    }
                    Place::DeadLetter => (loadgen::event_id(payload).map(str::to_owned), false),
                };
                let headers = message
                    .headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .map(|h| (h.key, h.value));
                let replayed_from =
                    ReplayedFrom::from_headers(headers).with_context(|| at(message))?;
                let position = ReplayedFrom {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                };
                tally.add(Found {
                    place: *place,
                    id: id.as_deref(),
                    at: position,
                    replayed_from,
                    changed_schema,
                });
                Ok(())
            })?;
            if *place == Place::DeadLetter {
                for (partition, start) in (0..).zip(reader.log_starts(READ_TIMEOUT)?) {
                    tally
                        .log_starts
                        .insert((reader.topic().to_owned(), partition), start);
                }
            }
        }
        Ok(())
    }
}

/// Where a record is, for error messages.
fn at(message: &BorrowedMessage<'_>) -> String {
    format!(
        "{} partition {} offset {}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

/// A writer schema, and whether it is one of the generator's own (any other was registered by
/// someone else, typically a fixed version).
pub(crate) struct WriterSchema {
    schema: apache_avro::Schema,
    generator: bool,
}

impl WriterSchema {
    fn new(schema: apache_avro::Schema) -> WriterSchema {
        static GENERATOR: OnceLock<HashSet<String>> = OnceLock::new();
        let generator = GENERATOR.get_or_init(|| {
            loadgen::schemas()
                .iter()
                .map(|(subject, text)| {
                    apache_avro::Schema::parse_str(text)
                        .unwrap_or_else(|e| panic!("the generator's {subject} schema: {e}"))
                        .canonical_form()
                })
                .collect()
        });
        WriterSchema {
            generator: generator.contains(&schema.canonical_form()),
            schema,
        }
    }
}

/// Looks schemas up by id in a Confluent-compatible store.
struct SchemaFetcher {
    base: String,
    http: reqwest::Client,
}

impl SchemaFetcher {
    fn new(base: &str) -> anyhow::Result<SchemaFetcher> {
        Ok(SchemaFetcher {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    async fn fetch(&self, id: u32) -> anyhow::Result<apache_avro::Schema> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let body: serde_json::Value = crate::get_json(&self.http, &url).await?;
        let text = body["schema"]
            .as_str()
            .with_context(|| format!("GET {url}: no schema in {body}"))?;
        apache_avro::Schema::parse_str(text).with_context(|| format!("schema {id} is not Avro"))
    }
}

/// Decodes clean records as any Confluent consumer would: the wire format, then the Avro datum
/// with the writer schema of its id, fetched from the store once per id. Blocking: use it on a
/// blocking thread of the runtime it was made on (the lookups run there).
pub(crate) struct CleanDecoder {
    schemas: HashMap<u32, WriterSchema>,
    store: SchemaFetcher,
    runtime: tokio::runtime::Handle,
}

impl CleanDecoder {
    /// Call within a Tokio runtime.
    pub(crate) fn new(store_url: &str) -> anyhow::Result<CleanDecoder> {
        Ok(CleanDecoder {
            schemas: HashMap::new(),
            store: SchemaFetcher::new(store_url)?,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The record's fields (see [`clean_fields`]), and whether its writer schema is one of the
    /// generator's own.
    pub(crate) fn decode(&mut self, value: &[u8]) -> anyhow::Result<(Vec<(String, Value)>, bool)> {
        let CleanDecoder {
            schemas,
            store,
            runtime,
        } = self;
        let (fields, writer) = clean_fields(value, schemas, &mut |id| {
            runtime.block_on(store.fetch(id)).map(WriterSchema::new)
        })?;
        Ok((fields, writer.generator))
    }
}

/// The fields of a clean record and its writer schema: Confluent wire format, then an Avro
/// record decoded with the writer schema of that id (`fetch` is asked once per id).
pub(crate) fn clean_fields<'s>(
    value: &[u8],
    schemas: &'s mut HashMap<u32, WriterSchema>,
    fetch: &mut dyn FnMut(u32) -> anyhow::Result<WriterSchema>,
) -> anyhow::Result<(Vec<(String, Value)>, &'s WriterSchema)> {
    let (schema_id, mut datum) =
        logpipe_core::wire::parse(value).context("clean record is not in the wire format")?;
    let writer = match schemas.entry(schema_id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(fetch(schema_id)?),
    };
    let decoded = apache_avro::from_avro_datum(&writer.schema, &mut datum, None)
        .with_context(|| format!("decoding with schema {schema_id}"))?;
    if !datum.is_empty() {
        bail!(
            "{} bytes left after the Avro datum (schema {schema_id})",
            datum.len()
        );
    }
    let Value::Record(fields) = decoded else {
        bail!("schema {schema_id} is not a record")
    };
    Ok((fields, writer))
}

/// The `event_id` of a decoded clean record, passing the rest through.
fn event_id_field<T>((fields, rest): (Vec<(String, Value)>, T)) -> anyhow::Result<(String, T)> {
    match fields.into_iter().find(|(name, _)| name == "event_id") {
        Some((_, Value::String(id))) => Ok((id, rest)),
        other => bail!("clean record without a string event_id: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{InvalidKind, InvalidLine, Rotation};

    fn report(run: &str, lines: u64, invalid: &[u64]) -> Report {
        Report {
            run_id: run.into(),
            seed: 1,
            lines,
            valid: lines - invalid.len() as u64,
            bytes: 0,
            elapsed_secs: 0.0,
            rotation: Rotation::None,
            rotations: 0,
            events: Default::default(),
            invalid_by_kind: Default::default(),
            disordered: 0,
            late: 0,
            files: Vec::new(),
            invalid_lines: invalid
                .iter()
                .map(|seq| InvalidLine {
                    event_id: format!("{run}-{seq}"),
                    kind: InvalidKind::MalformedJson,
                    stage: InvalidKind::MalformedJson.stage(),
                    pointer: None,
                })
                .collect(),
        }
    }

    fn position(topic: &str, offset: i64) -> ReplayedFrom {
        ReplayedFrom {
            topic: topic.into(),
            partition: 0,
            offset,
        }
    }

    /// A record the validator wrote to the clean topic (where in it does not matter).
    fn clean(id: &str) -> Found<'_> {
        Found {
            place: Place::Clean,
            id: Some(id),
            at: position("clean.a", 0),
            replayed_from: None,
            changed_schema: false,
        }
    }

    /// A dead letter at `offset` of `dlq.a`.
    fn dead(id: &str, offset: i64) -> Found<'_> {
        Found {
            place: Place::DeadLetter,
            id: Some(id),
            at: position("dlq.a", offset),
            replayed_from: None,
            changed_schema: false,
        }
    }

    /// `found`, written by a replay of the dead letter at `of` in `dlq.a`.
    fn replay(found: Found<'_>, of: i64) -> Found<'_> {
        Found {
            replayed_from: Some(position("dlq.a", of)),
            ..found
        }
    }

    #[test]
    fn every_line_once_where_it_belongs_is_exact() {
        let reports = [report("a", 4, &[2]), report("b-x", 2, &[])];
        let mut t = Tally::new(&reports);
        for id in ["a-0", "a-1", "a-3", "b-x-0", "b-x-1"] {
            t.add(clean(id));
        }
        t.add(dead("a-2", 0));
        let r = t.judge();
        assert!(r.is_exact(), "{r}");
        assert_eq!(
            (
                r.written,
                r.written_invalid,
                r.clean,
                r.dead_letters,
                r.foreign,
                r.replayed
            ),
            (6, 1, 5, 1, 0, 0)
        );
    }

    #[test]
    fn lost_duplicated_and_misrouted_are_named() {
        let reports = [report("a", 6, &[4, 5])];
        let mut t = Tally::new(&reports);
        t.add(clean("a-0"));
        t.add(clean("a-1"));
        t.add(clean("a-1")); // duplicate in clean
        t.add(dead("a-2", 0)); // valid line dead-lettered
                               // a-3: lost
        t.add(clean("a-4")); // invalid line in clean
        t.add(dead("a-5", 1));
        t.add(clean("a-5")); // in both: duplicated and misrouted
        let r = t.judge();
        assert_eq!(r.lost, ["a-3"]);
        assert_eq!(r.duplicated, ["a-1", "a-5"]);
        assert_eq!(r.misrouted, ["a-2", "a-4", "a-5"]);
        assert_eq!((r.clean, r.dead_letters), (5, 2));
        assert!(!r.is_exact());
        let text = r.to_string();
        assert!(
            text.contains("replayed 0: lost 1, duplicated 2, misrouted 3")
                && text.contains("lost: a-3"),
            "{text}"
        );
        let r = Reconciliation {
            lost_to_retention: 1,
            ..r
        };
        assert!(
            r.to_string()
                .contains("1 records deleted by retention before a service read them"),
            "{r}"
        );
    }

    #[test]
    fn records_of_other_runs_are_counted_not_judged() {
        let reports = [report("a", 2, &[])];
        let mut t = Tally::new(&reports);
        t.add(clean("a-0"));
        t.add(clean("a-1"));
        for id in ["z-0", "a-2", "a-x", "a"] {
            t.add(dead(id, 0));
        }
        t.add(Found {
            id: None,
            ..dead("", 1)
        });
        let r = t.judge();
        assert!(r.is_exact(), "{r}");
        assert_eq!((r.foreign, r.dead_letters), (5, 0));
    }

    #[test]
    fn a_replayed_dead_letter_in_clean_is_replayed_not_duplicated_or_misrouted() {
        // Invalid lines a-1 and a-2 dead-lettered, then replayed to clean after a schema fix
        // (the dead letters stay), in any order of reading.
        let reports = [report("a", 3, &[1, 2])];
        let mut t = Tally::new(&reports);
        t.add(clean("a-0"));
        t.add(replay(clean("a-1"), 7)); // the clean topic is read before the DLQ
        t.add(dead("a-1", 7));
        t.add(dead("a-2", 8));
        t.add(replay(clean("a-2"), 8));
        let r = t.judge();
        assert!(r.is_exact(), "{r}");
        assert_eq!(
            (r.replayed, r.replayed_dead, r.clean, r.dead_letters),
            (2, 0, 3, 2)
        );
        assert!(
            r.to_string()
                .contains("replayed 2: lost 0, duplicated 0, misrouted 0"),
            "{r}"
        );
        // A valid line replayed from a dead letter was still misrouted the first time.
        let reports = [report("b", 1, &[])];
        let mut t = Tally::new(&reports);
        t.add(dead("b-0", 0));
        t.add(replay(clean("b-0"), 0));
        let r = t.judge();
        assert_eq!(
            (r.misrouted.as_slice(), r.duplicated.len(), r.replayed),
            (["b-0".to_owned()].as_slice(), 0, 1)
        );
    }

    #[test]
    fn a_dead_letter_replayed_twice_to_clean_is_a_duplicate() {
        let reports = [report("a", 1, &[0])];
        let mut t = Tally::new(&reports);
        t.add(dead("a-0", 3));
        t.add(replay(clean("a-0"), 3));
        t.add(replay(clean("a-0"), 3));
        let r = t.judge();
        assert_eq!(
            (r.duplicated.as_slice(), r.misrouted.len(), r.replayed),
            (["a-0".to_owned()].as_slice(), 0, 2)
        );
    }

    #[test]
    fn a_line_in_clean_and_dlq_without_a_replay_stays_duplicated_and_misrouted() {
        // a-0 (invalid): the validator wrote it to both; a replay of its dead letter does not
        // explain the first clean copy. a-1 (valid): same, without any replay.
        let reports = [report("a", 2, &[0])];
        let mut t = Tally::new(&reports);
        t.add(clean("a-0"));
        t.add(dead("a-0", 0));
        t.add(replay(clean("a-0"), 0));
        t.add(clean("a-1"));
        t.add(dead("a-1", 1));
        let r = t.judge();
        assert_eq!(r.duplicated, ["a-0", "a-1"]);
        assert_eq!(r.misrouted, ["a-0", "a-1"]);
        assert_eq!(r.replayed, 1);
    }

    #[test]
    fn a_replay_naming_no_dead_letter_of_its_line_is_judged_as_the_validators_own() {
        let reports = [report("a", 2, &[0, 1])];
        let mut t = Tally::new(&reports);
        t.add(dead("a-0", 0));
        t.add(dead("a-1", 1));
        t.add(replay(clean("a-0"), 1)); // names a-1's dead letter
        t.add(replay(clean("a-1"), 9)); // names nothing that was read
        let r = t.judge();
        assert_eq!(r.replayed, 0, "{r}");
        assert_eq!(r.duplicated, ["a-0", "a-1"]);
        assert_eq!(r.misrouted, ["a-0", "a-1"]);
    }

    #[test]
    fn a_replay_of_a_dead_letter_retention_deleted_stands_for_it() {
        // a-0's dead letter (offset 2) is gone: the DLQ partition now starts at 5. Its replay
        // is the line's one record; a second replay of it is a duplicate. a-1's replay names
        // offset 6, above the log start, where nothing of a-1 is: the validator's own.
        let reports = [report("a", 3, &[0, 1, 2])];
        let mut t = Tally::new(&reports);
        t.log_starts.insert(("dlq.a".into(), 0), 5);
        t.add(replay(clean("a-0"), 2));
        t.add(dead("a-1", 7));
        t.add(replay(clean("a-1"), 6));
        t.add(dead("a-2", 8));
        let r = t.judge();
        assert_eq!((r.replayed, r.replayed_aged_out), (1, 1), "{r}");
        assert!(!r.lost.contains(&"a-0".to_owned()) && !r.misrouted.contains(&"a-0".to_owned()));
        assert_eq!(r.duplicated, ["a-1"]);
        assert!(r
            .to_string()
            .contains("1 replays of dead letters retention has since deleted"));
        t.add(replay(clean("a-0"), 2));
        assert_eq!(t.judge().duplicated, ["a-0", "a-1"]);
    }

    #[test]
    fn a_replay_that_fails_again_and_its_own_replay_leave_the_line_once() {
        // Dead letter at 0, replayed to the DLQ again at 5 (still invalid), then that one
        // replayed to clean after a second fix.
        let reports = [report("a", 1, &[0])];
        let mut t = Tally::new(&reports);
        t.add(replay(clean("a-0"), 5));
        t.add(dead("a-0", 0));
        t.add(replay(dead("a-0", 5), 0));
        let r = t.judge();
        assert!(r.is_exact(), "{r}");
        assert_eq!((r.replayed, r.replayed_dead, r.dead_letters), (1, 1, 2));
        assert!(
            r.to_string()
                .contains("(1 replayed dead letters failed again)"),
            "{r}"
        );
    }

    #[test]
    fn invalid_lines_accepted_by_a_changed_schema_are_not_misrouted() {
        let reports = [report("a", 3, &[0, 1])];
        let mut t = Tally::new(&reports);
        t.add(Found {
            changed_schema: true,
            ..clean("a-0")
        }); // after the user's fix
        t.add(clean("a-1")); // with the generator's own schema: the validator's mistake
        t.add(Found {
            changed_schema: true,
            ..clean("a-2")
        });
        let r = t.judge();
        assert_eq!(r.misrouted, ["a-1"]);
        assert_eq!(r.accepted_by_changed_schema, 1);
        assert!(
            r.to_string()
                .contains("(1 invalid lines accepted by a changed schema)"),
            "{r}"
        );
    }

    #[test]
    fn the_generators_schemas_are_told_from_changed_ones() {
        for (_, text) in loadgen::schemas() {
            let schema = apache_avro::Schema::parse_str(text).unwrap();
            assert!(WriterSchema::new(schema).generator);
        }
        // The tour's fix: player_id optional.
        let (_, login) = loadgen::schemas()[0];
        let mut json: serde_json::Value = serde_json::from_str(login).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        let player = fields
            .iter_mut()
            .find(|f| f["name"] == "player_id")
            .expect("login has player_id");
        player["type"] = serde_json::json!(["null", "string"]);
        player["default"] = serde_json::Value::Null;
        let fixed = apache_avro::Schema::parse_str(&json.to_string()).unwrap();
        assert!(!WriterSchema::new(fixed).generator);
    }

    fn clean_event_id<'s>(
        value: &[u8],
        schemas: &'s mut HashMap<u32, WriterSchema>,
        fetch: &mut dyn FnMut(u32) -> anyhow::Result<WriterSchema>,
    ) -> anyhow::Result<(String, &'s WriterSchema)> {
        clean_fields(value, schemas, fetch).and_then(event_id_field)
    }

    #[test]
    fn clean_values_are_decoded_with_the_writer_schema() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"e","fields":[{"name":"n","type":"long"},{"name":"event_id","type":"string"}]}"#,
        )
        .unwrap();
        let record = Value::Record(vec![
            ("n".into(), Value::Long(7)),
            ("event_id".into(), Value::String("r-9".into())),
        ]);
        let value =
            logpipe_core::wire::encode(42, &apache_avro::to_avro_datum(&schema, record).unwrap());
        let mut cache = HashMap::new();
        let mut asked = Vec::new();
        let (id, writer) = clean_event_id(&value, &mut cache, &mut |id| {
            asked.push(id);
            Ok(WriterSchema::new(schema.clone()))
        })
        .unwrap();
        assert_eq!(id, "r-9");
        assert!(!writer.generator);
        // Cached: a second record does not ask the store again.
        assert_eq!(
            clean_event_id(&value, &mut cache, &mut |_| bail!("asked twice"))
                .unwrap()
                .0,
            "r-9"
        );
        assert_eq!(asked, [42]);
        assert!(
            clean_event_id(b"{\"event_id\":\"r-1\"}", &mut cache, &mut |_| bail!("no")).is_err()
        );
        let mut trailing = value.clone();
        trailing.push(0);
        assert!(clean_event_id(&trailing, &mut cache, &mut |_| bail!("no")).is_err());
    }
}
