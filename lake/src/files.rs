//! A partition's open Parquet files and the dead letters found since its last commit, written
//! by tasks of their own: decoding records, turning rows into Arrow batches and encoding and
//! compressing Parquet are most of a record's cost, so they run beside the loop that reads the
//! next records. Each write decodes and builds its batches as soon as it starts (writes of the
//! same partition in parallel, on the runtime's workers), then takes the writer from the write
//! before it, so rows reach the files in the order they were read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::batch::{self, Row};
use crate::letter::Letter;
use crate::read::{Read, Taken};

/// Writes of a partition in flight at most: each holds its records (~2 MiB at 4,096 records of
/// ~500 B) and their batches; the loop waits for a free one.
const IN_FLIGHT: usize = 2;

/// What a write hands to the next: the writer (none while the table does not exist) and the
/// dead letters found by it and the writes before it, in the order they were read.
struct Written {
    writer: Option<RecordBatchWriter>,
    letters: Vec<Letter>,
}

/// The latest write of the chain. Dropping it stops it and, through the handle it holds, every
/// write before it.
struct Writing(JoinHandle<anyhow::Result<Written>>);

impl Writing {
    async fn join(mut self) -> anyhow::Result<Written> {
        (&mut self.0).await.context("the write task")?
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Files {
    /// The writer, when no write is in flight.
    writer: Option<RecordBatchWriter>,
    /// Whether a writer was made since the last [`Files::renew`] (it is here or in the writes).
    made: bool,
    /// The latest write in flight.
    writing: Option<Writing>,
    slots: Arc<Semaphore>,
    /// Kept up to date by the writes.
    progress: Arc<Progress>,
    /// Dead letters found by the writes that were settled, waiting for the commit.
    letters: Vec<Letter>,
}

/// What the writes found so far: the commit is due on these.
#[derive(Default)]
struct Progress {
    /// Parquet bytes written since the last flush, as of the last write that finished.
    written: AtomicUsize,
    /// The dead letters' bytes found since the last commit, settled or not.
    letter_bytes: AtomicUsize,
    /// The event days written since the last flush: each is a file open until then.
    days: Mutex<BTreeSet<String>>,
}

impl Default for Files {
    fn default() -> Files {
        Files {
            writer: None,
            made: false,
            writing: None,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            progress: Arc::default(),
            letters: Vec::new(),
        }
    }
}

impl Files {
    /// Starts writing `reads` after the writes in flight: rows are turned into batches of
    /// `schema`, by event day, and written by a writer made for `table`'s current schema
    /// (`schema` `None`: the table does not exist yet, so none of them can be a row).
    pub(crate) async fn write(
        &mut self,
        table: &DeltaTable,
        schema: Option<SchemaRef>,
        reads: Vec<Read>,
    ) -> anyhow::Result<()> {
        let slot = self.slots.clone().acquire_owned().await?;
        // No target size of the writer's own: the partition's commit at `flush_bytes` closes
        // its file (rolling there as well left a file of a few rows beside each full one).
        let made = match (self.made, &schema) {
            (false, Some(_)) => Some(
                RecordBatchWriter::for_table(table)?
                    .with_writer_properties(crate::table::file_properties()),
            ),
            _ => None,
        };
        self.made |= made.is_some();
        let before = self.writing.take();
        let idle = self.writer.take();
        let progress = self.progress.clone();
        self.writing = Some(Writing(tokio::spawn(async move {
            let _slot = slot;
            let (batches, days, letters) = decode(reads, schema.as_ref())?;
            progress.days.lock().expect("days").extend(days);
            let letter_bytes = letters.iter().map(Letter::bytes).sum();
            progress
                .letter_bytes
                .fetch_add(letter_bytes, Ordering::Relaxed);
            let mut handed = match before {
                Some(before) => before.join().await?,
                None => Written {
                    writer: idle,
                    letters: Vec::new(),
                },
            };
            let mut writer = handed.writer.or(made);
            for batch in batches {
                let writer = writer
                    .as_mut()
                    .context("rows without a table to write them into")?;
                writer.write(batch).await?;
            }
            if let Some(writer) = &writer {
                progress
                    .written
                    .store(writer.buffer_len(), Ordering::Relaxed);
            }
            handed.letters.extend(letters);
            Ok(Written {
                writer,
                letters: handed.letters,
            })
        })));
        Ok(())
    }

    /// Waits for the writes in flight.
    pub(crate) async fn settle(&mut self) -> anyhow::Result<()> {
        if let Some(writing) = self.writing.take() {
            let Written { writer, letters } = writing.join().await?;
            self.writer = writer;
            self.letters.extend(letters);
        }
        Ok(())
    }

    /// Takes the outcome of the writes once all have finished, without waiting for them.
    pub(crate) async fn poll(&mut self) -> anyhow::Result<()> {
        if self.writing.as_ref().is_some_and(|w| w.0.is_finished()) {
            self.settle().await?;
        }
        Ok(())
    }

    /// Parquet bytes written since the last flush, as of the last write that finished.
    pub(crate) fn written(&self) -> usize {
        self.progress.written.load(Ordering::Relaxed)
    }

    /// How many files are open: the event days written since the last flush, as far as the
    /// writes in flight decoded their records.
    pub(crate) fn open_days(&self) -> usize {
        self.progress.days.lock().expect("days").len()
    }

    /// The dead letters found by the writes that finished.
    pub(crate) fn letters(&self) -> &[Letter] {
        &self.letters
    }

    /// What the dead letters found since the last commit hold in memory, settled or not.
    pub(crate) fn letter_bytes(&self) -> usize {
        self.progress.letter_bytes.load(Ordering::Relaxed)
    }

    /// Forgets the dead letters, once delivered (after [`Files::settle`]: none in flight).
    pub(crate) fn delivered(&mut self) {
        self.letters.clear();
        self.progress.letter_bytes.store(0, Ordering::Relaxed);
    }

    /// Closes the files written since the last flush: their `add` actions.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<Vec<Add>> {
        self.settle().await?;
        self.progress.written.store(0, Ordering::Relaxed);
        self.progress.days.lock().expect("days").clear();
        match self.writer.as_mut() {
            Some(writer) => Ok(writer.flush().await?),
            None => Ok(Vec::new()),
        }
    }

    /// Drops the writer after [`Files::reset`], so that the next write makes one for the
    /// table's schema as it is then (after a widening).
    pub(crate) fn renew(&mut self) {
        self.reset();
        self.writer = None;
        self.made = false;
    }

    /// Drops what was written since the last flush (those files are never committed) and the
    /// dead letters found.
    pub(crate) fn reset(&mut self) {
        self.letters.clear();
        // Stops the writes, which drop the writer they hold.
        if self.writing.take().is_some() {
            self.made = false;
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.reset();
        }
        // A write being stopped may still count into the old one.
        self.progress = Arc::default();
    }
}

/// The reads' rows as batches of `schema`, one per event day, their days, and the dead letters
/// among them.
fn decode(
    reads: Vec<Read>,
    schema: Option<&SchemaRef>,
) -> anyhow::Result<(Vec<RecordBatch>, Vec<String>, Vec<Letter>)> {
    let mut days: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut letters = Vec::new();
    for read in reads {
        match read.take() {
            Taken::Row(row, dt) => days.entry(dt).or_default().push(row),
            Taken::Letter(letter) => letters.push(letter),
            Taken::Nothing => {}
        }
    }
    let mut batches = Vec::with_capacity(days.len());
    let mut dates = Vec::with_capacity(days.len());
    for (day, rows) in days {
        let schema = schema.context("rows without a table to write them into")?;
        batches.push(batch::build(schema, &rows)?);
        dates.push(day);
    }
    Ok((batches, dates, letters))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use deltalake::arrow::array::{AsArray as _, RecordBatch};
    use deltalake::arrow::datatypes::Int64Type;
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    use super::*;
    use crate::dead_letters;
    use crate::letter::DeadLetter;
    use crate::read::Decoding;
    use crate::rows::{self, Layout, DT};
    use crate::table::{location, Table};

    /// Records of a dead-letter table (they decode without a schema store, dated by their
    /// Kafka timestamp: `day` days after 2025-12-05) at `offsets`; the one at `bad` is a dead
    /// letter already.
    fn reads(offsets: std::ops::Range<i64>, bad: i64, day: impl Fn(i64) -> i64) -> Vec<Read> {
        let fields = dead_letters::fields();
        let layout = Arc::new(Layout::new(rows::table_fields(&fields), &fields, None));
        offsets
            .map(|offset| Read {
                message: OwnedMessage::new(
                    Some(format!("line {offset}").into_bytes()),
                    None,
                    "dlq.game".into(),
                    Timestamp::CreateTime(1_764_892_800_000 + day(offset) * 86_400_000),
                    0,
                    offset,
                    None,
                ),
                decoding: match offset == bad {
                    true => Err(DeadLetter::new("wire", "no magic byte".into(), None)),
                    false => Ok(Decoding::DeadLetter {
                        layout: layout.clone(),
                    }),
                },
                as_row: true,
                as_letter: true,
            })
            .collect()
    }

    /// A large write and a small one after it, in flight together: the small one is decoded
    /// first, yet its rows follow the large one's in the file and its dead letter follows the
    /// large one's, and settling waits for both.
    /// A new dead-letter table in `dir`, partitioned by day.
    async fn table(dir: &std::path::Path) -> Table {
        let url = location(dir.to_str().unwrap()).unwrap();
        let (mut table, _) = Table::open(&url, &HashMap::new(), "g.t", &[DT.into()])
            .await
            .unwrap();
        table
            .create("t", &rows::table_fields(&dead_letters::fields()))
            .await
            .unwrap();
        table
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_flight_keep_the_read_order() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path()).await;
        let schema = table.arrow_schema().unwrap();
        let (large, small) = (20_000, 20_002);

        let mut files = Files::default();
        let one_day = |_| 0;
        for reads in [
            reads(0..large, 7, one_day),
            reads(large..small, large + 1, one_day),
        ] {
            files
                .write(table.table(), Some(schema.clone()), reads)
                .await
                .unwrap();
        }
        files.settle().await.unwrap();
        // Told apart by their sizes: "line 7" and "line 20001".
        let letters: Vec<usize> = files.letters().iter().map(Letter::bytes).collect();
        assert_eq!(letters, [6, 10], "dead letters in read order");

        let adds = files.flush().await.unwrap();
        assert_eq!(adds.len(), 1, "one day, one file");
        let file = std::fs::File::open(dir.path().join(&adds[0].path)).unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name("kafka_offset").unwrap();
                column.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect();
        let read: Vec<i64> = (0..small).filter(|o| ![7, large + 1].contains(o)).collect();
        assert_eq!(offsets, read, "rows in read order");
    }

    /// The files open are the days written since the last flush, whichever write they came in.
    #[tokio::test]
    async fn open_files_are_counted_by_day_until_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path()).await;
        let schema = table.arrow_schema().unwrap();
        let mut files = Files::default();
        // Days 0, 1, 2, then 2 and 3 again: four days.
        for reads in [
            reads(0..30, -1, |o| o / 10),
            reads(30..40, -1, |o| 2 + o % 2),
        ] {
            files
                .write(table.table(), Some(schema.clone()), reads)
                .await
                .unwrap();
        }
        files.settle().await.unwrap();
        assert_eq!(files.open_days(), 4);
        let adds = files.flush().await.unwrap();
        assert_eq!(adds.len(), 4, "a file per day");
        assert_eq!(files.open_days(), 0, "none open after the flush");
    }
}
