//! The Delta table a loader writes: where it is, which Kafka positions it holds, its columns, and
//! commits that carry data and positions together.
//!
//! The table is the truth for positions: every commit carries, for each partition it covers, a
//! `txn` action (app id `<group>/<topic>/<partition>`, version = the next offset to read), and a
//! loader seeks there on every assignment. Two loaders that briefly own one partition cannot both
//! commit it: a commit is checked against every commit since the snapshot it was built on, and
//! one that touched the same app id fails it (Delta's concurrent-transaction conflict). Never set
//! `delta.setTransactionRetentionDuration` on these tables: an expired txn reads as none, and the
//! partition would be loaded again from its start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Fields, Schema as ArrowSchema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructField, Transaction};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

/// How data files are written: zstd, and row groups of 16 Ki rows, so that a file's open row
/// group (held in memory until it is full, one per partition) stays small: 8 MiB of ~500 B
/// records.
pub(crate) fn file_properties() -> deltalake::parquet::file::properties::WriterProperties {
    deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::ZSTD(
            Default::default(),
        ))
        .set_max_row_group_row_count(Some(16 * 1024))
        .build()
}

/// A topic and partition.
pub(crate) type Partition = (String, i32);

/// Registers the object stores a table URI may name (S3 and compatible; local paths need none).
pub(crate) fn register_object_stores() {
    deltalake::aws::register_handlers(None);
}

/// A table URI as the URL the Delta log is kept under. Local paths are made absolute.
pub(crate) fn location(uri: &str) -> Result<Url, String> {
    match uri.split_once("://") {
        Some(("s3" | "s3a" | "file", _)) => Url::parse(uri).map_err(|e| format!("{uri}: {e}")),
        Some((scheme, _)) => Err(format!(
            "{uri}: {scheme}:// is not a supported store (s3://, file:// or a local path)"
        )),
        None => {
            let path = std::path::absolute(uri).map_err(|e| format!("{uri}: {e}"))?;
            Url::from_directory_path(&path).map_err(|()| format!("{uri}: not a usable path"))
        }
    }
}

/// Why a commit did not land.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// Another commit since our snapshot carried the position of a partition we commit: another
    /// loader owned it meanwhile. Our rows of it must be dropped and read again from the table's
    /// position.
    #[error("another loader committed a partition of this commit: {0}")]
    Fenced(String),
    /// The store failed or the outcome is unknown; the table says what landed.
    #[error("{0}")]
    Failed(#[from] DeltaTableError),
    /// The commit's files could not be written.
    #[error("writing its files: {0}")]
    Files(String),
    /// The Kafka transaction of the dead letters and the group's offsets after a Delta commit
    /// did not commit: the rows are in the table, the dead letters are written again.
    #[error("the dead letters' transaction: {0}")]
    DeadLetters(String),
}

impl CommitError {
    /// The bounded label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CommitError::Fenced(_) => "fenced",
            CommitError::Failed(_) => "failed",
            CommitError::Files(_) => "files",
            CommitError::DeadLetters(_) => "dead_letters",
        }
    }
}

/// Commits after which the in-memory snapshot is loaded afresh from the latest checkpoint: an
/// incrementally updated snapshot keeps a batch per commit and would grow for ever.
const RELOAD_EVERY: u32 = 100;

pub(crate) struct Table {
    table: DeltaTable,
    commits_since_load: u32,
    /// The transaction ids' prefix: the consumer group.
    app: String,
    partition_by: Vec<String>,
}

impl Table {
    /// Opens the table at `url`; `None` if there is none yet (it is created with the first
    /// record's columns).
    pub(crate) async fn open(
        url: &Url,
        storage: &HashMap<String, String>,
        app: &str,
        partition_by: &[String],
    ) -> Result<(Table, bool), DeltaTableError> {
        if url.scheme() == "file" {
            if let Ok(path) = url.to_file_path() {
                std::fs::create_dir_all(&path).map_err(|e| {
                    DeltaTableError::InvalidTableLocation(format!("{}: {e}", path.display()))
                })?;
            }
        }
        let table =
            DeltaTable::try_from_url_with_storage_options(url.clone(), storage.clone()).await?;
        let exists = table.version().is_some();
        Ok((
            Table {
                table,
                commits_since_load: 0,
                app: app.to_owned(),
                partition_by: partition_by.to_vec(),
            },
            exists,
        ))
    }

    /// Creates the table with `fields` (a second loader creating it at once is harmless: the
    /// loser reloads the winner's table).
    pub(crate) async fn create(
        &mut self,
        name: &str,
        fields: &Fields,
    ) -> Result<(), DeltaTableError> {
        let columns = delta_fields(fields)?;
        let created = self
            .table
            .create()
            .with_table_name(name)
            .with_columns(columns)
            .with_partition_columns(self.partition_by.clone())
            .with_save_mode(SaveMode::Ignore)
            .await?;
        self.table = created;
        self.table.update_state().await
    }

    pub(crate) fn table(&self) -> &DeltaTable {
        &self.table
    }

    pub(crate) fn arrow_schema(&self) -> Result<SchemaRef, DeltaTableError> {
        let schema = self.table.snapshot()?.snapshot().arrow_schema();
        Ok(schema)
    }

    /// The table's columns by name.
    pub(crate) fn fields(&self) -> Result<Fields, DeltaTableError> {
        Ok(self.arrow_schema()?.fields().clone())
    }

    pub(crate) fn app_id(&self, (topic, partition): &Partition) -> String {
        format!("{}/{topic}/{partition}", self.app)
    }

    /// The next offset to load of each partition, as the last commit that covered it says
    /// (`None`: never loaded), at the table's latest version.
    pub(crate) async fn positions(
        &mut self,
        partitions: &[Partition],
    ) -> Result<BTreeMap<Partition, Option<i64>>, DeltaTableError> {
        self.table.update_state().await?;
        self.held(partitions).await
    }

    /// [`Table::positions`] in the snapshot the next commit is built on, without reading newer
    /// versions: a commit is only safe if these are the positions its rows continue from.
    pub(crate) async fn held(
        &self,
        partitions: &[Partition],
    ) -> Result<BTreeMap<Partition, Option<i64>>, DeltaTableError> {
        let mut out = BTreeMap::new();
        for partition in partitions {
            let version = self
                .table
                .snapshot()?
                .transaction_version(self.table.log_store().as_ref(), self.app_id(partition))
                .await?;
            out.insert(partition.clone(), version);
        }
        Ok(out)
    }

    /// Loads the table's latest version.
    pub(crate) async fn refresh(&mut self) -> Result<(), DeltaTableError> {
        self.table.update_state().await
    }

    /// Adds `new` columns to the table (a schema version with added fields).
    pub(crate) async fn widen(&mut self, new: &[Arc<Field>]) -> Result<(), DeltaTableError> {
        let fields: Fields = new.to_vec().into();
        let widened = self
            .table
            .clone()
            .add_columns()
            .with_fields(delta_fields(&fields)?)
            .await?;
        self.table = widened;
        Ok(())
    }

    /// Commits `adds` with the next offset of every partition they cover, against the current
    /// snapshot: the caller has checked with [`Table::held`] that it holds the positions the rows
    /// continue from, and a commit since that touched one of these partitions fences this one.
    pub(crate) async fn commit(
        &mut self,
        adds: Vec<Add>,
        next: &BTreeMap<Partition, i64>,
    ) -> Result<u64, CommitError> {
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        actions.extend(
            next.iter()
                .map(|(p, offset)| Action::Txn(Transaction::new(self.app_id(p), *offset))),
        );
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: self.app.clone(),
            epoch_id: time::OffsetDateTime::now_utc().unix_timestamp() * 1_000,
        };
        let snapshot = self.table.snapshot().map_err(CommitError::Failed)?;
        // With the default properties' post-commit hook: a checkpoint every
        // delta.checkpointInterval commits, so readers and restarts replay a short log.
        let result = CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await;
        match result {
            Ok(done) => {
                let version = done.version();
                self.commits_since_load += 1;
                if self.commits_since_load >= RELOAD_EVERY {
                    let mut fresh = DeltaTable::new(self.table.log_store());
                    fresh.load().await?;
                    self.table = fresh;
                    self.commits_since_load = 0;
                } else {
                    self.table.update_state().await?;
                }
                Ok(version)
            }
            Err(DeltaTableError::Transaction { source })
                if matches!(
                    source,
                    deltalake::kernel::transaction::TransactionError::CommitConflict(
                        deltalake::kernel::transaction::CommitConflictError::ConcurrentTransaction
                    )
                ) =>
            {
                Err(CommitError::Fenced(source.to_string()))
            }
            Err(e) => Err(CommitError::Failed(e)),
        }
    }
}

impl Table {
    /// Removes files older than the table's deleted-file retention (7 days by default) that no
    /// version references: ones compaction replaced, and ones a loader wrote and never
    /// committed (it was killed, or its commit was fenced). Returns how many.
    pub(crate) async fn vacuum(&mut self) -> Result<usize, DeltaTableError> {
        let (table, metrics) = self
            .table
            .clone()
            .vacuum()
            .with_mode(VacuumMode::Full)
            .await?;
        self.table = table;
        Ok(metrics.files_deleted.len())
    }
}

/// Why the table's `fields` cannot be partitioned by `columns`, if they cannot: a partition
/// column must be one of them, of a type with a text form Delta readers agree on (text, integers,
/// booleans, dates).
pub(crate) fn unpartitionable(fields: &Fields, columns: &[String]) -> Option<String> {
    columns.iter().find_map(|name| match fields.find(name) {
        None => Some(format!("partition column {name} is not one of its columns")),
        Some((_, field)) => match field.data_type() {
            DataType::Utf8
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Boolean
            | DataType::Date32 => None,
            other => Some(format!(
                "partition column {name} is {other}: text, integers, booleans or dates only"
            )),
        },
    })
}

fn delta_fields(fields: &Fields) -> Result<Vec<StructField>, DeltaTableError> {
    let schema = ArrowSchema::new(fields.clone());
    let kernel: deltalake::kernel::StructType =
        (&schema)
            .try_into_kernel()
            .map_err(|e: deltalake::arrow::error::ArrowError| {
                DeltaTableError::Generic(e.to_string())
            })?;
    Ok(kernel.fields().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_columns_are_columns_with_a_text_form() {
        let fields: Fields = vec![
            Field::new("platform", DataType::Utf8, true),
            Field::new("level", DataType::Int32, true),
            Field::new("day", DataType::Date32, true),
            Field::new("price", DataType::Float64, true),
        ]
        .into();
        // partition_by -> why not, if not
        let cases: [(&[&str], Option<&str>); 5] = [
            (&["platform"], None),
            (&["platform", "level", "day"], None),
            (&[], None),
            (
                &["level", "server"],
                Some("server is not one of its columns"),
            ),
            (&["price"], Some("price is Float64")),
        ];
        for (columns, why) in cases {
            let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let found = unpartitionable(&fields, &columns);
            match why {
                None => assert_eq!(found, None, "{columns:?}"),
                Some(why) => assert!(
                    found.as_deref().is_some_and(|f| f.contains(why)),
                    "{columns:?}: {found:?}"
                ),
            }
        }
    }

    async fn open(url: &Url) -> Table {
        let (mut table, exists) = Table::open(url, &HashMap::new(), "g.t", &[]).await.unwrap();
        if !exists {
            let fields: Fields = vec![Field::new("a", DataType::Utf8, true)].into();
            table.create("t", &fields).await.unwrap();
        }
        table
    }

    /// Two loaders that both believe they own a partition: the second commit of it is fenced,
    /// and a loader whose snapshot caught up with another's commit sees the position move.
    #[tokio::test]
    async fn a_second_commit_of_a_partition_from_one_snapshot_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let url = location(dir.path().to_str().unwrap()).unwrap();
        let mut first = open(&url).await;
        let mut second = open(&url).await;
        let p: Partition = ("clean.game".into(), 0);
        let q: Partition = ("clean.game".into(), 1);
        assert_eq!(
            second.held(std::slice::from_ref(&p)).await.unwrap()[&p],
            None
        );

        first
            .commit(Vec::new(), &BTreeMap::from([(p.clone(), 10)]))
            .await
            .unwrap();
        let fenced = second
            .commit(Vec::new(), &BTreeMap::from([(p.clone(), 12)]))
            .await;
        assert!(matches!(fenced, Err(CommitError::Fenced(_))), "{fenced:?}");

        // Another partition commits fine from the stale snapshot, and afterwards the snapshot
        // shows the first loader's position of p: the loader's check before its next commit.
        second
            .commit(Vec::new(), &BTreeMap::from([(q.clone(), 5)]))
            .await
            .unwrap();
        let held = second.held(&[p.clone(), q.clone()]).await.unwrap();
        assert_eq!((held[&p], held[&q]), (Some(10), Some(5)));
        assert_eq!(
            first.positions(std::slice::from_ref(&q)).await.unwrap()[&q],
            Some(5)
        );
    }

    #[test]
    fn locations_are_urls_of_supported_stores() {
        assert_eq!(
            location("s3://lake/logpipe/game").unwrap().as_str(),
            "s3://lake/logpipe/game"
        );
        let local = location("/var/lib/logpipe/lake/game").unwrap();
        assert_eq!(local.as_str(), "file:///var/lib/logpipe/lake/game/");
        assert!(location("relative/game")
            .unwrap()
            .path()
            .ends_with("/relative/game/"));
        assert!(location("gs://b/t")
            .unwrap_err()
            .contains("not a supported store"));
    }
}
