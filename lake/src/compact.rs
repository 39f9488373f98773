//! Compaction: the small files of days that are closed merged into files of the target size, in
//! a commit that changes no data (`remove` and `add` actions with `dataChange = false`), so
//! streaming readers skip it and the loaders' appends do not conflict with it.
//!
//! delta-rs' own optimize needs DataFusion, which this build leaves out (appending does not need
//! it); merging files of one partition needs only the Parquet reader and the table's writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
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
    pub(crate) days: usize,
    pub(crate) files_removed: usize,
    pub(crate) files_added: usize,
}

/// Merges, in every `dt` partition before `before` (`YYYY-MM-DD`), the files smaller than half
/// of `target` into files of about `target` bytes, on a snapshot of its own (the loader goes on
/// meanwhile). A day with fewer than two small files is left as it is.
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
    let mut small: BTreeMap<String, Vec<LogicalFileView>> = BTreeMap::new();
    for file in files {
        let day = file.partition_values_map().get(DT).cloned().flatten();
        if let (Some(day), true) = (day, (file.size() as u64) < target / 2) {
            small.entry(day).or_default().push(file);
        }
    }
    let store = table.log_store().object_store(None);
    let mut done = Compaction::default();
    let mut actions = Vec::new();
    for (day, files) in small.into_iter().filter(|(_, files)| files.len() >= 2) {
        let mut writer = RecordBatchWriter::for_table(&table)?
            .with_writer_properties(crate::table::file_properties())
            .with_target_file_size(target);
        for file in &files {
            let path = deltalake::Path::from(file.path().as_ref());
            let bytes = store.get(&path).await?.bytes().await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                writer.write(with_day(batch?, &day)?).await?;
            }
            actions.push(Action::Remove(file.remove_action(false)));
        }
        for mut add in writer.flush().await? {
            add.data_change = false;
            actions.push(Action::Add(add));
            done.files_added += 1;
        }
        done.files_removed += files.len();
        done.days += 1;
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

/// A file's rows with their partition column again (files do not store it).
fn with_day(batch: RecordBatch, day: &str) -> Result<RecordBatch, DeltaTableError> {
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    fields.push(Arc::new(Field::new(DT, DataType::Utf8, false)));
    columns.push(Arc::new(StringArray::from(vec![day; batch.num_rows()])));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use deltalake::arrow::json::ReaderBuilder;
    use serde_json::json;

    use super::*;
    use crate::table::{location, Table};

    /// One commit of `rows` rows of day `dt` (`x` counting from `first`), in a file of its own.
    async fn append(table: &mut Table, dt: &str, first: i64, rows: i64) {
        let schema = table.arrow_schema().unwrap();
        let mut decoder = ReaderBuilder::new(schema).build_decoder().unwrap();
        let values: Vec<_> = (first..first + rows)
            .map(|x| json!({"x": x, "dt": dt}))
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

    async fn files_by_day(table: &Table) -> BTreeMap<String, (usize, usize)> {
        let mut fresh = DeltaTable::new(table.table().log_store());
        fresh.load().await.unwrap();
        let files: Vec<LogicalFileView> = fresh
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .unwrap();
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for f in files {
            let day = f.partition_values_map()[DT].clone().unwrap();
            let entry = out.entry(day).or_default();
            entry.0 += 1;
            entry.1 += f.num_records().unwrap();
        }
        out
    }

    /// Three small files of a closed day become one with the same rows; an open day and a
    /// closed day with one file are left alone; a second run finds nothing to do.
    #[tokio::test]
    async fn small_files_of_closed_days_become_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = location(dir.path().to_str().unwrap()).unwrap();
        let (mut table, _) = Table::open(&url, &HashMap::new(), "g.t", &[DT.into()])
            .await
            .unwrap();
        let fields = vec![
            Field::new("x", DataType::Int64, true),
            Field::new(DT, DataType::Utf8, false),
        ];
        table.create("t", &fields.into()).await.unwrap();
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
            append(&mut table, dt, i as i64 * 10, 10).await;
        }
        let before = files_by_day(&table).await;
        assert_eq!(before["2020-01-01"], (3, 30));

        let done = compact(table.table().log_store(), "2021-01-01", 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            done,
            Compaction {
                days: 1,
                files_removed: 3,
                files_added: 1
            }
        );
        let after = files_by_day(&table).await;
        assert_eq!(after["2020-01-01"], (1, 30), "one file, every row");
        assert_eq!(after["2020-01-02"], before["2020-01-02"]);
        assert_eq!(after["2099-01-01"], (2, 20), "an open day is not compacted");

        let again = compact(table.table().log_store(), "2021-01-01", 1 << 20)
            .await
            .unwrap();
        assert_eq!(again, Compaction::default());
    }
}
