//! A partition's open Parquet files, written on a task of their own: turning rows into Arrow
//! batches and encoding and compressing Parquet take as long as decoding the records, so the
//! loop decodes the next rows while the last ones are written (on the runtime's other worker).
//! At most one write of a partition is in flight, so its rows reach its files in order.

use std::collections::BTreeMap;

use anyhow::Context as _;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use tokio::task::JoinHandle;

use crate::batch::{self, Row};

/// Rows by event day.
pub(crate) type Rows = BTreeMap<String, Vec<Row>>;

#[derive(Default)]
pub(crate) struct Files {
    /// The writer, when no write is in flight (none before the first write).
    writer: Option<RecordBatchWriter>,
    /// The write in flight, which hands the writer back.
    writing: Option<JoinHandle<anyhow::Result<RecordBatchWriter>>>,
    /// Parquet bytes written since the last flush, as of the last write that finished.
    written: usize,
}

impl Files {
    /// Starts writing `rows` (after the write in flight, if any): the writer is made for
    /// `table`'s current schema, rows are turned into batches of `schema`.
    pub(crate) async fn write(
        &mut self,
        table: &DeltaTable,
        schema: SchemaRef,
        rows: Rows,
    ) -> anyhow::Result<()> {
        self.settle().await?;
        let mut writer = match self.writer.take() {
            Some(writer) => writer,
            // No target size of the writer's own: the partition's commit at `flush_bytes`
            // closes its file (rolling there as well left a file of a few rows beside each
            // full one).
            None => RecordBatchWriter::for_table(table)?
                .with_writer_properties(crate::table::file_properties()),
        };
        self.writing = Some(tokio::spawn(async move {
            for (_, rows) in rows {
                writer.write(batch::build(&schema, &rows)?).await?;
            }
            Ok(writer)
        }));
        Ok(())
    }

    /// Waits for the write in flight.
    pub(crate) async fn settle(&mut self) -> anyhow::Result<()> {
        if let Some(writing) = self.writing.take() {
            let writer = writing.await.context("the write task")??;
            self.written = writer.buffer_len();
            self.writer = Some(writer);
        }
        Ok(())
    }

    /// Takes the outcome of a write that has finished, without waiting for one that has not.
    pub(crate) async fn poll(&mut self) -> anyhow::Result<()> {
        if self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle().await?;
        }
        Ok(())
    }

    /// Parquet bytes written since the last flush, as of the last write that finished.
    pub(crate) fn written(&self) -> usize {
        self.written
    }

    /// Closes the files written since the last flush: their `add` actions.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<Vec<Add>> {
        self.settle().await?;
        self.written = 0;
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
    }

    /// Drops what was written since the last flush (those files are never committed).
    pub(crate) fn reset(&mut self) {
        if let Some(writing) = self.writing.take() {
            writing.abort();
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.reset();
        }
        self.written = 0;
    }
}
