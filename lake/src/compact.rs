//! Compaction: the small files of days that are closed merged, partition by partition, into
//! files of the target size, in a commit that changes no data (`remove` and `add` actions with
//! `dataChange = false`), so streaming readers skip it and the loaders' appends do not conflict
//! with it.
//!
//! delta-rs' own optimize needs DataFusion, which this build leaves out (appending does not need
//! it); merging files of one partition needs only the Parquet reader and the table's writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::logstore::LogStoreRef;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, FilterOp, FilterValue};
use futures::TryStreamExt as _;

use crate::rows::DT;

/// What a compaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Compaction {
    pub(crate) partitions: usize,
    pub(crate) files_removed: usize,
    pub(crate) files_added: usize,
}

/// Merges, in every partition of a day before `before` (`YYYY-MM-DD`), the files smaller than
/// half of `target` into files of about `target` bytes, on a snapshot of its own (the loader goes
/// on meanwhile). A partition with fewer than two small files is left as it is.
pub(crate) async fn compact(
    log_store: LogStoreRef,
    before: &str,
    target: u64,
) -> Result<Compaction, DeltaTableError> {
    let mut table = DeltaTable::new(log_store);
    table.load().await?;
    let filters = [(DT, FilterOp::Lt, FilterValue::Scalar(before))];
    let files: Vec<LogicalFileView> = table
        .get_active_add_actions_by_partitions(&filters)
        .try_collect()
        .await?;
    // By partition: its columns' values, in the order of the table's partition columns.
    let mut small: BTreeMap<Vec<Option<String>>, Vec<LogicalFileView>> = BTreeMap::new();
    let columns = table.snapshot()?.metadata().partition_columns().to_vec();
    for file in files {
        if (file.size() as u64) < target / 2 {
            let values = file.partition_values_map();
            let key = columns.iter().map(|c| values.get(c).cloned().flatten());
            small.entry(key.collect()).or_default().push(file);
        }
    }
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let store = table.log_store().object_store(None);
    let mut done = Compaction::default();
    let mut actions = Vec::new();
    for (values, files) in small.into_iter().filter(|(_, files)| files.len() >= 2) {
        let mut writer = RecordBatchWriter::for_table(&table)?
            .with_writer_properties(crate::table::file_properties())
            .with_target_file_size(target);
        for file in &files {
            let path = deltalake::Path::from(file.path().as_ref());
            let bytes = store.get(&path).await?.bytes().await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                writer
                    .write(with_partition(batch?, &schema, &columns, &values)?)
                    .await?;
            }
            actions.push(Action::Remove(file.remove_action(false)));
        }
        for mut add in writer.flush().await? {
            add.data_change = false;
            actions.push(Action::Add(add));
            done.files_added += 1;
        }
        done.files_removed += files.len();
        done.partitions += 1;
    }
    if actions.is_empty() {
        return Ok(done);
    }
    let operation = DeltaOperation::Optimize {
        predicate: Some(format!("{DT} < '{before}'")),
        target_size: target as i64,
    };
    CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    Ok(done)
}

/// A file's rows with their partition columns again (files do not store them): each its
/// partition's value, in the column's type (`schema`, the table's).
fn with_partition(
    batch: RecordBatch,
    schema: &SchemaRef,
    names: &[String],
    values: &[Option<String>],
) -> Result<RecordBatch, DeltaTableError> {
    let mut fields: Vec<Arc<_>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let rows = batch.num_rows();
    for (name, value) in names.iter().zip(values) {
        let field = schema.field_with_name(name)?;
        columns.push(match value {
            Some(value) => cast(
                &StringArray::from(vec![value.as_str(); rows]),
                field.data_type(),
            )?,
            None => new_null_array(field.data_type(), rows),
        });
        fields.push(Arc::new(field.clone()));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use deltalake::arrow::datatypes::{DataType, Field};
    use deltalake::arrow::json::ReaderBuilder;
    use serde_json::json;

    use super::*;
    use crate::table::{location, Table};

    /// A new table in `dir` of an `x` column, partitioned by `dt` and, if `p`, an integer `p`.
    async fn table(dir: &std::path::Path, p: bool) -> Table {
        let url = location(dir.to_str().unwrap()).unwrap();
        let mut partition_by = vec![DT.to_owned()];
        let mut fields = vec![
            Field::new("x", DataType::Int64, true),
            Field::new(DT, DataType::Utf8, false),
        ];
        if p {
            partition_by.push("p".into());
            fields.push(Field::new("p", DataType::Int32, true));
        }
        let (mut table, _) = Table::open(&url, &HashMap::new(), "g.t", &partition_by)
            .await
            .unwrap();
        table.create("t", &fields.into()).await.unwrap();
        table
    }

    /// One commit of `rows` rows of partition (`dt`, `p`) (`x` counting from `first`), in a file
    /// of its own.
    async fn append(table: &mut Table, (dt, p): (&str, Option<i32>), first: i64, rows: i64) {
        let schema = table.arrow_schema().unwrap();
        let mut decoder = ReaderBuilder::new(schema).build_decoder().unwrap();
        let values: Vec<_> = (first..first + rows)
            .map(|x| json!({"x": x, "dt": dt, "p": p}))
            .collect();
        decoder.serialize(&values).unwrap();
        let mut writer = RecordBatchWriter::for_table(table.table()).unwrap();
        writer
            .write(decoder.flush().unwrap().unwrap())
            .await
            .unwrap();
        let adds = writer.flush().await.unwrap();
        table.commit(adds, &BTreeMap::new()).await.unwrap();
    }

    /// Files and rows by partition: (`dt`, `p` if the table has it), as a new reader sees them.
    async fn files_by_partition(
        table: &Table,
    ) -> BTreeMap<(String, Option<String>), (usize, usize)> {
        let mut fresh = DeltaTable::new(table.table().log_store());
        fresh.load().await.unwrap();
        let files: Vec<LogicalFileView> = fresh
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .unwrap();
        let mut out: BTreeMap<_, (usize, usize)> = BTreeMap::new();
        for f in files {
            let values = f.partition_values_map();
            let key = (
                values[DT].clone().unwrap(),
                values.get("p").cloned().flatten(),
            );
            let entry = out.entry(key).or_default();
            entry.0 += 1;
            entry.1 += f.num_records().unwrap();
        }
        out
    }

    /// Compacts the days before 2021 into files of 1 MiB.
    async fn closed_before_2021(table: &Table) -> Compaction {
        compact(table.table().log_store(), "2021-01-01", 1 << 20)
            .await
            .unwrap()
    }

    fn day(dt: &str) -> (String, Option<String>) {
        (dt.to_owned(), None)
    }

    /// Three small files of a closed day become one with the same rows; an open day and a
    /// closed day with one file are left alone; a second run finds nothing to do.
    #[tokio::test]
    async fn small_files_of_closed_days_become_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = table(dir.path(), false).await;
        for (i, dt) in [
            "2020-01-01",
            "2020-01-01",
            "2020-01-01",
            "2020-01-02",
            "2099-01-01",
            "2099-01-01",
        ]
        .into_iter()
        .enumerate()
        {
            append(&mut table, (dt, None), i as i64 * 10, 10).await;
        }
        let before = files_by_partition(&table).await;
        assert_eq!(before[&day("2020-01-01")], (3, 30));

        let done = closed_before_2021(&table).await;
        assert_eq!(
            done,
            Compaction {
                partitions: 1,
                files_removed: 3,
                files_added: 1
            }
        );
        let after = files_by_partition(&table).await;
        assert_eq!(after[&day("2020-01-01")], (1, 30), "one file, every row");
        assert_eq!(after[&day("2020-01-02")], before[&day("2020-01-02")]);
        assert_eq!(
            after[&day("2099-01-01")],
            (2, 20),
            "an open day is not compacted"
        );

        let again = closed_before_2021(&table).await;
        assert_eq!(again, Compaction::default());
    }

    /// With a second partition column, a closed day's small files are merged within each of its
    /// partitions (null included), never across them, and keep their partition values.
    #[tokio::test]
    async fn files_are_merged_within_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = table(dir.path(), true).await;
        let parts = [Some(1), Some(1), Some(2), Some(2), None, None];
        for (i, p) in parts.into_iter().enumerate() {
            append(&mut table, ("2020-01-01", p), i as i64 * 10, 10).await;
        }
        let done = closed_before_2021(&table).await;
        assert_eq!(
            done,
            Compaction {
                partitions: 3,
                files_removed: 6,
                files_added: 3
            }
        );
        let key = |p: Option<&str>| ("2020-01-01".to_owned(), p.map(str::to_owned));
        let after = files_by_partition(&table).await;
        assert_eq!(
            after,
            BTreeMap::from([
                (key(None), (1, 20)),
                (key(Some("1")), (1, 20)),
                (key(Some("2")), (1, 20)),
            ])
        );
    }
}
