//! End-to-end accounting: every line the load generator wrote must appear exactly once, in a
//! clean topic if it was valid and in a dead-letter topic if it was not.
//!
//! Lines are matched by their event id (`<run>-<seq>`, unique per line, readable even from a
//! malformed line), not by counts, so a loss hidden by a duplicate still shows. Clean records are
//! decoded as any Confluent consumer would (wire format, writer schema fetched from the store by
//! id); dead letters carry the original line, so the id is read from the raw bytes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use apache_avro::types::Value;
use rdkafka::Message as _;

use crate::harness::scan_topic;
use crate::loadgen::{self, Report};

/// How long one topic may take to be read to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between two attempts of [`wait_drained`].
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
    /// Records of these runs found in the clean topics (duplicates included).
    pub clean: u64,
    /// Records of these runs found in the dead-letter topics (duplicates included).
    pub dead_letters: u64,
    /// Ids written but found nowhere.
    pub lost: Vec<String>,
    /// Ids found more than once (over clean and DLQ together).
    pub duplicated: Vec<String>,
    /// Valid lines found in a DLQ, or invalid lines found in a clean topic.
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
            "written {} ({} invalid), clean {}, dead letters {}: lost {}, duplicated {}, misrouted {}",
            self.written,
            self.written_invalid,
            self.clean,
            self.dead_letters,
            self.lost.len(),
            self.duplicated.len(),
            self.misrouted.len()
        )?;
        if self.foreign > 0 {
            write!(f, " ({} records of other runs ignored)", self.foreign)?;
        }
        for (what, ids) in [("lost", &self.lost), ("duplicated", &self.duplicated), ("misrouted", &self.misrouted)] {
            if !ids.is_empty() {
                let shown: Vec<&str> = ids.iter().take(SHOWN_IDS).map(String::as_str).collect();
                let more = if ids.len() > SHOWN_IDS { format!(" and {} more", ids.len() - SHOWN_IDS) } else { String::new() };
                write!(f, "; {what}: {}{more}", shown.join(" "))?;
            }
        }
        Ok(())
    }
}

/// Where a record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Clean,
    DeadLetter,
}

/// Occurrence counts per written line, filled record by record (no Kafka involved).
struct Tally<'a> {
    reports: &'a [Report],
    /// run id -> index into `reports`.
    runs: HashMap<&'a str, usize>,
    /// Per report, per sequence number: (clean, dead-letter) occurrences.
    seen: Vec<Vec<(u32, u32)>>,
    /// Per report, the sequence numbers written invalid on purpose.
    invalid: Vec<HashSet<usize>>,
    clean: u64,
    dead_letters: u64,
    foreign: u64,
}

impl<'a> Tally<'a> {
    fn new(reports: &'a [Report]) -> Tally<'a> {
        let mut tally = Tally {
            reports,
            runs: reports.iter().enumerate().map(|(i, r)| (r.run_id.as_str(), i)).collect(),
            seen: reports.iter().map(|r| vec![(0, 0); r.lines as usize]).collect(),
            invalid: vec![HashSet::new(); reports.len()],
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
    fn locate(&self, id: &str) -> Option<(usize, usize)> {
        let (run, seq) = id.rsplit_once('-')?;
        let report = *self.runs.get(run)?;
        let seq: usize = seq.parse().ok()?;
        (seq < self.seen[report].len()).then_some((report, seq))
    }

    fn add(&mut self, id: Option<&str>, found: Found) {
        let Some((report, seq)) = id.and_then(|id| self.locate(id)) else {
            self.foreign += 1;
            return;
        };
        let counts = &mut self.seen[report][seq];
        match found {
            Found::Clean => {
                counts.0 += 1;
                self.clean += 1;
            }
            Found::DeadLetter => {
                counts.1 += 1;
                self.dead_letters += 1;
            }
        }
    }

    fn finish(self) -> Reconciliation {
        let mut r = Reconciliation {
            written: self.reports.iter().map(|r| r.lines).sum(),
            written_invalid: self.invalid.iter().map(|seqs| seqs.len() as u64).sum(),
            clean: self.clean,
            dead_letters: self.dead_letters,
            foreign: self.foreign,
            ..Reconciliation::default()
        };
        for ((report, seen), invalid_seqs) in self.reports.iter().zip(&self.seen).zip(&self.invalid) {
            for (seq, &(clean, dead)) in seen.iter().enumerate() {
                let invalid = invalid_seqs.contains(&seq);
                if clean + dead == 1 && (clean == 1) != invalid {
                    continue; // the common case: once, where it belongs
                }
                let id = format!("{}-{seq}", report.run_id);
                match clean + dead {
                    0 => r.lost.push(id.clone()),
                    1 => {}
                    _ => r.duplicated.push(id.clone()),
                }
                if (invalid && clean > 0) || (!invalid && dead > 0) {
                    r.misrouted.push(id);
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
    let bootstrap = read_bootstrap.to_owned();
    let store = SchemaFetcher::new(schema_store_url)?;
    let clean = clean.to_vec();
    let dlq = dlq.to_vec();
    let written = written.to_vec();
    let runtime = tokio::runtime::Handle::current();
    // The Kafka reads block; the schema lookups (few: one per schema id) run on the runtime.
    tokio::task::spawn_blocking(move || {
        let mut tally = Tally::new(&written);
        let mut schemas = HashMap::new();
        for topic in &clean {
            scan_topic(&bootstrap, topic, READ_TIMEOUT, |message| {
                let id = clean_event_id(message.payload().unwrap_or_default(), &mut schemas, |id| runtime.block_on(store.fetch(id)))
                    .with_context(|| format!("{topic} partition {} offset {}", message.partition(), message.offset()))?;
                tally.add(Some(&id), Found::Clean);
                Ok(())
            })?;
        }
        for topic in &dlq {
            scan_topic(&bootstrap, topic, READ_TIMEOUT, |message| {
                tally.add(loadgen::event_id(message.payload().unwrap_or_default()), Found::DeadLetter);
                Ok(())
            })?;
        }
        Ok(tally.finish())
    })
    .await?
}

/// Reconciles every `DRAIN_POLL` until nothing written is missing any more (or `timeout`
/// passes), and returns the last result: what "wait for the pipeline to drain" means. The
/// caller judges it (`is_exact`); a timeout shows as `lost` ids.
pub async fn wait_drained(
    read_bootstrap: &str,
    schema_store_url: &str,
    clean: &[String],
    dlq: &[String],
    written: &[Report],
    timeout: Duration,
) -> anyhow::Result<Reconciliation> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = reconcile(read_bootstrap, schema_store_url, clean, dlq, written).await?;
        if r.lost.is_empty() || Instant::now() + DRAIN_POLL >= deadline {
            return Ok(r);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Looks schemas up by id in a Confluent-compatible store.
struct SchemaFetcher {
    base: String,
    http: reqwest::Client,
}

impl SchemaFetcher {
    fn new(base: &str) -> anyhow::Result<SchemaFetcher> {
        Ok(SchemaFetcher { base: base.trim_end_matches('/').to_owned(), http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()? })
    }

    async fn fetch(&self, id: u32) -> anyhow::Result<apache_avro::Schema> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let body: serde_json::Value =
            self.http.get(&url).send().await?.error_for_status().with_context(|| format!("GET {url}"))?.json().await?;
        let text = body["schema"].as_str().with_context(|| format!("GET {url}: no schema in {body}"))?;
        apache_avro::Schema::parse_str(text).with_context(|| format!("schema {id} is not Avro"))
    }
}

/// The `event_id` of a clean record: Confluent wire format (magic 0, schema id big-endian), then
/// an Avro datum decoded with the writer schema of that id (`fetch` is asked once per id).
fn clean_event_id(
    value: &[u8],
    schemas: &mut HashMap<u32, apache_avro::Schema>,
    fetch: impl FnOnce(u32) -> anyhow::Result<apache_avro::Schema>,
) -> anyhow::Result<String> {
    if value.len() < 5 || value[0] != 0 {
        bail!("clean record is not in the Confluent wire format ({} bytes)", value.len());
    }
    let schema_id = u32::from_be_bytes(value[1..5].try_into().expect("4 bytes"));
    let schema = match schemas.entry(schema_id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(fetch(schema_id)?),
    };
    let mut datum = &value[5..];
    let decoded = apache_avro::from_avro_datum(schema, &mut datum, None).with_context(|| format!("decoding with schema {schema_id}"))?;
    if !datum.is_empty() {
        bail!("{} bytes left after the Avro datum (schema {schema_id})", datum.len());
    }
    let Value::Record(fields) = decoded else { bail!("schema {schema_id} is not a record") };
    match fields.into_iter().find(|(name, _)| name == "event_id") {
        Some((_, Value::String(id))) => Ok(id),
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

    #[test]
    fn every_line_once_where_it_belongs_is_exact() {
        let reports = [report("a", 4, &[2]), report("b-x", 2, &[])];
        let mut t = Tally::new(&reports);
        for id in ["a-0", "a-1", "a-3", "b-x-0", "b-x-1"] {
            t.add(Some(id), Found::Clean);
        }
        t.add(Some("a-2"), Found::DeadLetter);
        let r = t.finish();
        assert!(r.is_exact(), "{r}");
        assert_eq!((r.written, r.written_invalid, r.clean, r.dead_letters, r.foreign), (6, 1, 5, 1, 0));
    }

    #[test]
    fn lost_duplicated_and_misrouted_are_named() {
        let reports = [report("a", 6, &[4, 5])];
        let mut t = Tally::new(&reports);
        t.add(Some("a-0"), Found::Clean);
        t.add(Some("a-1"), Found::Clean);
        t.add(Some("a-1"), Found::Clean); // duplicate in clean
        t.add(Some("a-2"), Found::DeadLetter); // valid line dead-lettered
        // a-3: lost
        t.add(Some("a-4"), Found::Clean); // invalid line in clean
        t.add(Some("a-5"), Found::DeadLetter);
        t.add(Some("a-5"), Found::Clean); // in both: duplicated and misrouted
        let r = t.finish();
        assert_eq!(r.lost, ["a-3"]);
        assert_eq!(r.duplicated, ["a-1", "a-5"]);
        assert_eq!(r.misrouted, ["a-2", "a-4", "a-5"]);
        assert_eq!((r.clean, r.dead_letters), (5, 2));
        assert!(!r.is_exact());
        let text = r.to_string();
        assert!(text.contains("lost 1, duplicated 2, misrouted 3") && text.contains("lost: a-3"), "{text}");
    }

    #[test]
    fn records_of_other_runs_are_counted_not_judged() {
        let reports = [report("a", 2, &[])];
        let mut t = Tally::new(&reports);
        t.add(Some("a-0"), Found::Clean);
        t.add(Some("a-1"), Found::Clean);
        for id in [Some("z-0"), Some("a-2"), Some("a-x"), Some("a"), None] {
            t.add(id, Found::DeadLetter);
        }
        let r = t.finish();
        assert!(r.is_exact(), "{r}");
        assert_eq!((r.foreign, r.dead_letters), (5, 0));
    }

    #[test]
    fn clean_values_are_decoded_with_the_writer_schema() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"e","fields":[{"name":"n","type":"long"},{"name":"event_id","type":"string"}]}"#,
        )
        .unwrap();
        let record = Value::Record(vec![("n".into(), Value::Long(7)), ("event_id".into(), Value::String("r-9".into()))]);
        let mut value = vec![0, 0, 0, 0, 42];
        value.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
        let mut cache = HashMap::new();
        let mut asked = Vec::new();
        let id = clean_event_id(&value, &mut cache, |id| {
            asked.push(id);
            Ok(schema.clone())
        })
        .unwrap();
        assert_eq!(id, "r-9");
        // Cached: a second record does not ask the store again.
        assert_eq!(clean_event_id(&value, &mut cache, |_| bail!("asked twice")).unwrap(), "r-9");
        assert_eq!(asked, [42]);
        assert!(clean_event_id(b"{\"event_id\":\"r-1\"}", &mut cache, |_| bail!("no")).is_err());
        let mut trailing = value.clone();
        trailing.push(0);
        assert!(clean_event_id(&trailing, &mut cache, |_| bail!("no")).is_err());
    }
}
