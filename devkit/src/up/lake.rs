//! `up`'s lake loader: once the pipeline has drained, waiting for the Delta tables to catch up
//! with their topics (the clean topic's table and the dead-letter topic's), and counting each
//! table's rows by record id (`lp_host`, `lp_file`, `lp_offset`) against its topic's records:
//! every one exactly once.
//!
//! The table is read as any Delta reader reads it: the files of its latest version, listed by
//! its log, each read with the Parquet reader. (The end-to-end tests read it with outside
//! readers; this check needs no Python.)

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use logpipe_core::record::RecordId;
use rdkafka::message::{Headers as _, Message as _};

use crate::pipeline::Pipeline;

/// A row's record id.
type RowId = (String, String, i64);

/// Pause between two reads of the table while it catches up.
const POLL: Duration = Duration::from_secs(2);

/// A table against its topic.
#[derive(Debug, Default)]
pub struct LakeReconciliation {
    /// What the topic holds: `clean records`, `dead letters`.
    pub what: &'static str,
    pub table: PathBuf,
    /// Records in the topic.
    pub expected: usize,
    /// Rows in the table.
    pub rows: usize,
    /// Records with no row.
    pub missing: usize,
    /// Rows of no record.
    pub extra: usize,
    /// Rows beyond the first of a record id.
    pub repeated: usize,
}

impl LakeReconciliation {
    pub fn is_exact(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.repeated == 0
    }
}

impl fmt::Display for LakeReconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows for {} {}: missing {}, extra {}, repeated {}",
            self.rows, self.expected, self.what, self.missing, self.extra, self.repeated
        )
    }
}

/// The clean topic's table and the dead-letter topic's, each waited for and counted by record id.
pub async fn reconcile(
    pipeline: &Pipeline,
    timeout: Duration,
) -> anyhow::Result<Vec<LakeReconciliation>> {
    Ok(vec![
        reconcile_table(
            pipeline,
            "clean records",
            &pipeline.clean_topics(),
            pipeline.lake_table(),
            timeout,
        )
        .await?,
        reconcile_table(
            pipeline,
            "dead letters",
            &pipeline.dlq_topics(),
            pipeline.lake_dead_letter_table(),
            timeout,
        )
        .await?,
    ])
}

/// Waits up to `timeout` for `table` to hold every record of `topics`, then counts.
async fn reconcile_table(
    pipeline: &Pipeline,
    what: &'static str,
    topics: &[String],
    table: PathBuf,
    timeout: Duration,
) -> anyhow::Result<LakeReconciliation> {
    let mut expected: BTreeMap<RowId, ()> = BTreeMap::new();
    for topic in topics {
        for m in pipeline.read_cluster().read_topic(topic, timeout).await? {
            let headers = m
                .headers()
                .into_iter()
                .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
            if let Ok(Some(id)) = RecordId::from_headers(headers) {
                expected.insert((id.host, id.file.to_hex(), id.offset as i64), ());
            }
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let ids = table_ids(&table).await?;
        let mut counts: BTreeMap<&RowId, usize> = BTreeMap::new();
        for id in &ids {
            *counts.entry(id).or_default() += 1;
        }
        let done = LakeReconciliation {
            what,
            table: table.clone(),
            expected: expected.len(),
            rows: ids.len(),
            missing: expected
                .keys()
                .filter(|id| !counts.contains_key(id))
                .count(),
            extra: counts
                .keys()
                .filter(|id| !expected.contains_key(**id))
                .count(),
            repeated: counts.values().map(|n| n - 1).sum(),
        };
        if done.missing == 0 || Instant::now() >= deadline {
            return Ok(done);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The record id of every row of the table's latest version (none while there is no table).
async fn table_ids(path: &Path) -> anyhow::Result<Vec<RowId>> {
    let url = url::Url::from_directory_path(path)
        .map_err(|()| anyhow::anyhow!("{} is not an absolute path", path.display()))?;
    let table = match deltalake::open_table(url).await {
        Ok(table) => table,
        Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening the table {}", path.display())),
    };
    let mut ids = Vec::new();
    for uri in table.get_file_uris()? {
        // Local tables list plain paths; URLs name files elsewhere.
        let file = match url::Url::parse(&uri) {
            Ok(url) => url
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("{uri} is not a local file"))?,
            Err(_) => std::path::PathBuf::from(&uri),
        };
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("{}: no column {name}", file.display()))
            };
            let host = cast(column("lp_host")?, &DataType::Utf8)?;
            let id_file = cast(column("lp_file")?, &DataType::Utf8)?;
            let offset = cast(column("lp_offset")?, &DataType::Int64)?;
            let (host, id_file) = (host.as_string::<i32>(), id_file.as_string::<i32>());
            let offset = offset.as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                // A row without a record id matches no clean record: it counts as extra.
                if host.is_null(i) || id_file.is_null(i) || offset.is_null(i) {
                    ids.push((String::new(), String::new(), -1));
                } else {
                    ids.push((
                        host.value(i).to_owned(),
                        id_file.value(i).to_owned(),
                        offset.value(i),
                    ));
                }
            }
        }
    }
    Ok(ids)
}
