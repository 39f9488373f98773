//! One table's loader: reads its topics as a consumer group, turns records into rows, streams
//! them into Parquet files per partition and event day, and commits the files together with each
//! partition's next offset in one Delta commit, on size or age, whichever comes first.
//!
//! Positions come from the table on every assignment (see `table`); a commit that does not land
//! drops every uncommitted row and reads again from the table's positions, so a row is in the
//! table once whatever failed. Records that cannot be rows go to `dlq.lake.<table>`, delivered
//! before the commit that passes them (at least once: a crash between the two writes the dead
//! letter again).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deltalake::arrow::datatypes::{DataType, Fields, SchemaRef};
use deltalake::arrow::json::ReaderBuilder;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use logpipe_core::kafka::{GroupEvent, KafkaConfig, RebalanceLog, Role};
use logpipe_core::record::{DeadLetterHeaders, ErrorStage, RecordId};
use logpipe_core::service::Context;
use logpipe_schema_client::Client;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};

use crate::compact::Compaction;
use crate::metrics::*;
use crate::rows::{self, EventTime, Place};
use crate::schemas::{SchemaError, Schemas};
use crate::table::{CommitError, Partition, Table};
use crate::TableConfig;

pub(crate) struct Settings {
    pub(crate) kafka: KafkaConfig,
    pub(crate) group: String,
    pub(crate) instance: String,
    pub(crate) table: TableConfig,
}

/// What is held of one assigned partition.
#[derive(Default)]
struct Owned {
    /// The next offset to take; records below it are in the table (or read before a seek).
    next: i64,
    /// The table's position at the last commit (or the assignment); `None`: never loaded.
    committed: Option<i64>,
    /// Rows read and not yet written into a file, by event day.
    rows: BTreeMap<String, Vec<Value>>,
    writer: Option<RecordBatchWriter>,
    /// When the oldest uncommitted row or dead letter was read.
    since: Option<Instant>,
    last_commit: Option<Instant>,
    /// Which seek the records now arriving follow: a record received before the latest seek
    /// of its partition may lie beyond the sought position and is passed over (the seek brings
    /// it again), or the records between would be skipped.
    epoch: u64,
}

struct Loader {
    settings: Settings,
    consumer: StreamConsumer<RebalanceLog>,
    dead_letters: FutureProducer,
    dlq_topic: String,
    table: Table,
    exists: bool,
    schemas: Schemas,
    owned: BTreeMap<Partition, Owned>,
    /// Assigned partitions whose seek to the table's position has not succeeded yet.
    unpositioned: HashSet<Partition>,
    /// The last [`Owned::epoch`] given out.
    epochs: u64,
    /// The running compaction of closed days, if any.
    compacting: Option<tokio::task::JoinHandle<Result<Compaction, deltalake::DeltaTableError>>>,
    ctx: Context,
}

pub(crate) async fn run(settings: Settings, client: Client, ctx: Context) -> anyhow::Result<()> {
    let check = format!("table {}", settings.table.name);
    ctx.readiness.register(&check);
    let url = crate::table::location(&settings.table.uri).map_err(anyhow::Error::msg)?;
    let (table, exists) = loop {
        match Table::open(
            &url,
            &settings.table.storage,
            &settings.group,
            &settings.table.partition_by,
        )
        .await
        {
            Ok(opened) => break opened,
            Err(e) => {
                tracing::warn!(table = settings.table.name, "opening {url}: {e}; retrying");
                ctx.readiness
                    .not_ready(&check, format!("opening {url}: {e}"));
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let consumer: StreamConsumer<RebalanceLog> = settings
        .kafka
        .client_config(
            &Role::StaticMember {
                group_id: settings.group.clone(),
                instance_id: settings.instance.clone(),
            },
            "logpipe-lake",
        )
        .create_with_context(RebalanceLog::counting_losses_as(RECORDS_LOST_TO_RETENTION))
        .context("creating the consumer")?;
    let topics: Vec<&str> = settings.table.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    let dead_letters: FutureProducer = settings
        .kafka
        .client_config(&Role::Producer, "logpipe-lake")
        .create()
        .context("creating the dead-letter producer")?;
    ctx.readiness.ready(&check);
    let mut loader = Loader {
        dlq_topic: logpipe_core::record::lake_dlq_topic(&settings.table.name),
        settings,
        consumer,
        dead_letters,
        table,
        exists,
        schemas: Schemas::new(client),
        owned: BTreeMap::new(),
        unpositioned: HashSet::new(),
        epochs: 0,
        compacting: None,
        ctx,
    };
    loader.run().await
}

impl Loader {
    fn name(&self) -> String {
        self.settings.table.name.clone()
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut lag_at = Instant::now();
        let mut vacuum_at = Instant::now();
        let mut compact_at = Instant::now();
        loop {
            let received = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => break,
                received = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()) => received.map(|r| r.map(|m| m.detach())),
            };
            // The epoch a record was read in, before the rebalances its poll delivered act.
            let epoch = match &received {
                Ok(Ok(m)) => self.epoch_of(m),
                _ => None,
            };
            self.group_events().await?;
            if let Ok(received) = received {
                match received {
                    Ok(message) => self.take(message, epoch).await?,
                    Err(e) => tracing::warn!(table = self.name(), "reading: {e}"),
                }
            }
            if self.due() {
                self.commit().await?;
            }
            if self.exists && vacuum_at.elapsed() >= self.settings.table.vacuum_interval {
                vacuum_at = Instant::now();
                match self.table.vacuum().await {
                    Ok(n) => tracing::info!(table = self.name(), files = n, "vacuumed"),
                    Err(e) => tracing::warn!(table = self.name(), "vacuum: {e}"),
                }
            }
            if compact_at.elapsed() >= self.settings.table.compact_interval {
                compact_at = Instant::now();
                self.compact();
            }
            self.compacted().await;
            if lag_at.elapsed() >= Duration::from_secs(5) {
                lag_at = Instant::now();
                logpipe_core::kafka::report_lag(&self.consumer, CONSUMER_LAG_RECORDS);
                for (p, owned) in &self.owned {
                    if let Some(at) = owned.last_commit {
                        metrics::gauge!(SECONDS_SINCE_COMMIT, "table" => self.name(), "topic" => p.0.clone(), "partition" => p.1.to_string())
                            .set(at.elapsed().as_secs_f64());
                    }
                }
            }
        }
        // A compaction stopped half way leaves files no version references: the vacuum's.
        if let Some(compacting) = self.compacting.take() {
            compacting.abort();
        }
        tracing::info!(
            table = self.name(),
            "shutting down: committing what was read"
        );
        self.commit().await
    }

    /// Acts on rebalances: an assigned partition is sought to the table's position, a revoked
    /// one's uncommitted rows are dropped (its new owner reads them from the table's position).
    async fn group_events(&mut self) -> anyhow::Result<()> {
        for event in self.consumer.context().take() {
            match event {
                GroupEvent::Assigned(partitions) => {
                    for p in &partitions {
                        self.owned.insert(p.clone(), Owned::default());
                        self.unpositioned.insert(p.clone());
                    }
                    self.position(&partitions).await;
                }
                GroupEvent::Revoked(partitions) => {
                    for p in partitions {
                        if let Some(mut owned) = self.owned.remove(&p) {
                            if let Some(writer) = owned.writer.as_mut() {
                                writer.reset();
                            }
                        }
                        self.unpositioned.remove(&p);
                    }
                }
            }
        }
        if !self.unpositioned.is_empty() {
            let pending: Vec<Partition> = self.unpositioned.iter().cloned().collect();
            self.position(&pending).await;
        }
        Ok(())
    }

    /// Seeks `partitions` to the table's positions; ones that fail stay unpositioned (their
    /// records are passed over) and are tried again.
    async fn position(&mut self, partitions: &[Partition]) {
        let positions = if self.exists {
            match self.table.positions(partitions).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(
                        table = self.name(),
                        "reading the table's positions: {e}; retrying"
                    );
                    return;
                }
            }
        } else {
            partitions.iter().map(|p| (p.clone(), None)).collect()
        };
        for (p, position) in positions {
            let offset = position.map_or(Offset::Beginning, Offset::Offset);
            let sought = tokio::task::block_in_place(|| {
                self.consumer
                    .seek(&p.0, p.1, offset, Duration::from_secs(5))
            });
            match sought {
                Ok(()) => {
                    self.epochs += 1;
                    let owned = self.owned.entry(p.clone()).or_default();
                    owned.epoch = self.epochs;
                    owned.next = position.unwrap_or(0);
                    owned.committed = position;
                    self.unpositioned.remove(&p);
                    tracing::info!(
                        table = self.name(),
                        topic = p.0,
                        partition = p.1,
                        ?position,
                        "loading from the table's position"
                    );
                }
                Err(e) => tracing::debug!(table = self.name(), "seeking {p:?}: {e}; retrying"),
            }
        }
    }

    /// The epoch of the record's partition now, if it is owned and positioned.
    fn epoch_of(&self, message: &OwnedMessage) -> Option<u64> {
        let p = (message.topic().to_owned(), message.partition());
        if self.unpositioned.contains(&p) {
            return None;
        }
        self.owned.get(&p).map(|o| o.epoch)
    }

    /// Takes one record read in `epoch`: a row of the table or a dead letter. One read before
    /// its partition's latest seek (or while it had none) is passed over: the seek reads it
    /// again.
    async fn take(&mut self, message: OwnedMessage, epoch: Option<u64>) -> anyhow::Result<()> {
        let p = (message.topic().to_owned(), message.partition());
        let current = |loader: &Loader| epoch.is_some() && loader.epoch_of(&message) == epoch;
        if !current(self) || message.offset() < self.owned[&p].next {
            return Ok(());
        }
        let row = self.row(&message).await?;
        // Reading it may have committed, and a commit that did not land seeks again.
        if !current(self) {
            return Ok(());
        }
        match row {
            Ok((row, dt)) => {
                let owned = self.owned.get_mut(&p).expect("owned partition");
                owned.rows.entry(dt).or_default().push(Value::Object(row));
            }
            Err(why) => self.dead_letter(&message, &why).await?,
        }
        let owned = self.owned.get_mut(&p).expect("owned partition");
        owned.next = message.offset() + 1;
        owned.since.get_or_insert_with(Instant::now);
        if owned.rows.values().map(Vec::len).sum::<usize>() >= 4_096 {
            if let Err(e) = self.write(&p).await {
                return self
                    .drop_and_reread(CommitError::Files(format!("{e:#}")))
                    .await;
            }
        }
        Ok(())
    }

    /// The record's row, or why it cannot be one (`Err` of the outer result: the loader cannot
    /// go on).
    async fn row(
        &mut self,
        message: &OwnedMessage,
    ) -> anyhow::Result<Result<(Map<String, Value>, String), DeadLetter>> {
        let value = message.payload().unwrap_or_default();
        let (id, payload) = match logpipe_core::wire::parse(value) {
            Ok(parsed) => parsed,
            Err(e) => return Ok(Err(DeadLetter::new("wire", e.to_string(), None))),
        };
        let writer = loop {
            match self.schemas.writer(id).await {
                Ok(writer) => break writer,
                Err(SchemaError::Unusable(why)) => {
                    return Ok(Err(DeadLetter::new("schema", why, Some(id))))
                }
                Err(SchemaError::Unavailable(why)) => {
                    tracing::warn!(table = self.name(), "schema store: {why}; retrying");
                    tokio::select! {
                        _ = self.ctx.shutdown.cancelled() => anyhow::bail!("stopped while the schema store was unavailable"),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let fields = match &writer.fields {
            Ok(fields) => fields.clone(),
            Err(why) => return Ok(Err(DeadLetter::new("schema", why.clone(), Some(id)))),
        };
        if let Some(name) = rows::clashes(&fields) {
            return Ok(Err(DeadLetter::new(
                "schema",
                format!("schema id {id} has a field {name}, a column logpipe adds"),
                Some(id),
            )));
        }
        let table_fields = match self.columns_for(&fields).await? {
            Ok(table_fields) => table_fields,
            Err(why) => return Ok(Err(DeadLetter::new("columns", why, Some(id)))),
        };
        let decoded = match writer.decode(payload, &table_fields) {
            Ok(decoded) => decoded,
            Err(why) => return Ok(Err(DeadLetter::new("value", why, Some(id)))),
        };
        let record_id = RecordId::from_headers(
            message
                .headers()
                .into_iter()
                .flat_map(|h| h.iter().map(|h| (h.key, h.value))),
        )
        .ok()
        .flatten();
        let place = Place {
            id: record_id,
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            schema_id: id,
        };
        let event_time = match self.settings.table.event_time.as_deref() {
            Some(name) => EventTime::Field {
                name,
                micros: table_fields
                    .find(name)
                    .is_some_and(|(_, f)| matches!(f.data_type(), DataType::Timestamp(..))),
            },
            None => EventTime::Kafka,
        };
        Ok(rows::row(decoded, &place, event_time)
            .map_err(|why| DeadLetter::new("event_time", why, Some(id))))
    }

    /// The table's columns for a schema's `fields`: the table is created with them, or widened
    /// by the ones it lacks (after committing what was read under its old columns). `Err`: a
    /// field the table has with another type.
    async fn columns_for(&mut self, fields: &Fields) -> anyhow::Result<Result<Fields, String>> {
        if !self.exists {
            self.table
                .create(&self.settings.table.name, &rows::table_fields(fields))
                .await
                .context("creating the table")?;
            self.exists = true;
            tracing::info!(table = self.name(), "created the table");
        }
        let table_fields = self.table.fields()?;
        let mut missing = Vec::new();
        for field in fields {
            match table_fields.find(field.name()) {
                Some((_, column)) if same_type(column.data_type(), field.data_type()) => {}
                Some((_, column)) => {
                    return Ok(Err(format!(
                        "field {} is {} in the schema and {} in the table",
                        field.name(),
                        field.data_type(),
                        column.data_type()
                    )))
                }
                None => missing.push(field.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(Ok(table_fields));
        }
        self.commit().await?;
        let names: Vec<&str> = missing.iter().map(|f| f.name().as_str()).collect();
        tracing::info!(table = self.name(), columns = ?names, "widening the table for a new schema version");
        self.table
            .widen(&missing)
            .await
            .context("widening the table")?;
        metrics::counter!(SCHEMA_WIDENINGS, "table" => self.name()).increment(missing.len() as u64);
        for owned in self.owned.values_mut() {
            owned.writer = None;
        }
        Ok(Ok(self.table.fields()?))
    }

    async fn dead_letter(
        &mut self,
        message: &OwnedMessage,
        why: &DeadLetter,
    ) -> anyhow::Result<()> {
        tracing::debug!(
            table = self.name(),
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "dead letter: {}",
            why.reason
        );
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(rdkafka::message::Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let names = DeadLetterHeaders {
            stage: ErrorStage::Lake,
            reason: &why.reason,
            path: None,
            subject: None,
            schema_id: why.schema_id,
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            omitted: None,
        };
        for (key, value) in names.headers() {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(&self.dlq_topic).headers(headers);
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.dead_letters
            .send(record, Duration::from_secs(300))
            .await
            .map_err(|(e, _)| {
                anyhow::anyhow!("writing a dead letter to {}: {e}", self.dlq_topic)
            })?;
        metrics::counter!(DEAD_LETTERS, "table" => self.name(), "kind" => why.kind).increment(1);
        Ok(())
    }

    /// Writes a partition's read rows into its open files.
    async fn write(&mut self, p: &Partition) -> anyhow::Result<()> {
        let schema: SchemaRef = self.table.arrow_schema()?;
        let table = &self.table;
        let flush_bytes = self.settings.table.flush_bytes;
        let owned = self.owned.get_mut(p).expect("owned partition");
        if owned.rows.is_empty() {
            return Ok(());
        }
        if owned.writer.is_none() {
            owned.writer = Some(
                RecordBatchWriter::for_table(table.table())?
                    .with_writer_properties(crate::table::file_properties())
                    .with_target_file_size(flush_bytes),
            );
        }
        let writer = owned.writer.as_mut().expect("writer");
        for (_, rows) in std::mem::take(&mut owned.rows) {
            let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder()?;
            decoder.serialize(&rows)?;
            if let Some(batch) = decoder.flush()? {
                writer.write(batch).await?;
            }
        }
        Ok(())
    }

    /// Whether a commit is due: a partition's files reached the flush size, or its oldest
    /// uncommitted record the flush age.
    fn due(&self) -> bool {
        let table = &self.settings.table;
        self.owned.values().any(|owned| {
            owned
                .since
                .is_some_and(|at| at.elapsed() >= table.flush_age)
                || owned
                    .writer
                    .as_ref()
                    .is_some_and(|w| w.buffer_len() as u64 >= table.flush_bytes)
        })
    }

    /// Commits every partition's files and position in one Delta commit. One that does not land
    /// drops what was read and seeks every partition back to the table's position.
    async fn commit(&mut self) -> anyhow::Result<()> {
        let partitions: Vec<Partition> = self
            .owned
            .iter()
            .filter(|(_, o)| o.next > o.committed.unwrap_or(0))
            .map(|(p, _)| p.clone())
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        // The snapshot this commit builds on must hold the positions its rows continue from:
        // one that moved meanwhile was committed by another loader (this one's snapshot caught
        // up with it after an earlier commit), and committing on top would duplicate rows.
        let held = match self.table.held(&partitions).await {
            Ok(held) => held,
            Err(e) => return self.drop_and_reread(CommitError::Failed(e)).await,
        };
        let moved: Vec<&Partition> = partitions
            .iter()
            .filter(|p| held.get(*p).copied().flatten() != self.owned[*p].committed)
            .collect();
        if !moved.is_empty() {
            let e = CommitError::Fenced(format!("the table's positions of {moved:?} moved"));
            return self.drop_and_reread(e).await;
        }
        let started = Instant::now();
        let (adds, next) = match self.stage(&partitions).await {
            Ok(staged) => staged,
            Err(e) => {
                return self
                    .drop_and_reread(CommitError::Files(format!("{e:#}")))
                    .await
            }
        };
        let rows: i64 = adds
            .iter()
            .filter_map(|a| a.get_stats().ok().flatten().map(|s| s.num_records))
            .sum();
        let bytes: i64 = adds.iter().map(|a| a.size).sum();
        let files = adds.len();
        match self.table.commit(adds, &next).await {
            Ok(version) => {
                let name = self.name();
                metrics::counter!(COMMITS, "table" => name.clone()).increment(1);
                metrics::counter!(ROWS, "table" => name.clone()).increment(rows.max(0) as u64);
                metrics::counter!(PARQUET_BYTES, "table" => name.clone())
                    .increment(bytes.max(0) as u64);
                metrics::counter!(FILES, "table" => name.clone()).increment(files as u64);
                metrics::histogram!(COMMIT_LATENCY, "table" => name)
                    .record(started.elapsed().as_secs_f64());
                let mut offsets = TopicPartitionList::new();
                for (p, offset) in &next {
                    let owned = self.owned.get_mut(p).expect("owned partition");
                    owned.committed = Some(*offset);
                    owned.since = None;
                    owned.last_commit = Some(Instant::now());
                    let _ = offsets.add_partition_offset(&p.0, p.1, Offset::Offset(*offset));
                }
                // The group's offsets are for lag monitoring only: the table holds positions.
                let _ = self.consumer.commit(&offsets, CommitMode::Async);
                tracing::debug!(table = self.name(), version, rows, files, "committed");
                Ok(())
            }
            Err(e) => self.drop_and_reread(e).await,
        }
    }

    /// Starts compacting the days that ended `compact_after` ago, unless a compaction runs.
    /// Only the loader owning the first topic's partition 0 compacts, so loaders sharing a
    /// table do not race to rewrite the same files.
    fn compact(&mut self) {
        let table = &self.settings.table;
        let first = (table.topics[0].clone(), 0);
        if !self.exists
            || table.partition_by.is_empty()
            || self.compacting.is_some()
            || !self.owned.contains_key(&first)
        {
            return;
        }
        let closed = time::OffsetDateTime::now_utc() - table.compact_after;
        let Some(before) = rows::date_of(closed.unix_timestamp() * 1_000) else {
            return;
        };
        let log_store = self.table.table().log_store();
        let target = table.flush_bytes;
        tracing::debug!(table = self.name(), before, "compacting closed days");
        self.compacting = Some(tokio::spawn(async move {
            crate::compact::compact(log_store, &before, target).await
        }));
    }

    /// Reports a finished compaction.
    async fn compacted(&mut self) {
        if !self.compacting.as_ref().is_some_and(|c| c.is_finished()) {
            return;
        }
        let Some(done) = self.compacting.take() else {
            return;
        };
        match done.await {
            Ok(Ok(c)) if c.days > 0 => {
                metrics::counter!(FILES_COMPACTED, "table" => self.name())
                    .increment(c.files_removed as u64);
                tracing::info!(
                    table = self.name(),
                    days = c.days,
                    removed = c.files_removed,
                    added = c.files_added,
                    "compacted small files"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                table = self.name(),
                "compaction: {e}; trying again at the next run"
            ),
            Err(e) => tracing::warn!(table = self.name(), "compaction: {e}"),
        }
    }

    /// Writes the partitions' read rows and closes their files: the commit's `add` actions and
    /// each partition's next offset.
    async fn stage(
        &mut self,
        partitions: &[Partition],
    ) -> anyhow::Result<(Vec<deltalake::kernel::Add>, BTreeMap<Partition, i64>)> {
        let mut adds = Vec::new();
        let mut next = BTreeMap::new();
        for p in partitions {
            self.write(p).await?;
            let owned = self.owned.get_mut(p).expect("owned partition");
            if let Some(writer) = owned.writer.as_mut() {
                adds.extend(writer.flush().await?);
            }
            next.insert(p.clone(), owned.next);
        }
        Ok((adds, next))
    }

    /// After a commit that did not land (or must not): drops every uncommitted row and seeks
    /// every partition to the table's position.
    async fn drop_and_reread(&mut self, e: CommitError) -> anyhow::Result<()> {
        metrics::counter!(COMMIT_FAILURES, "table" => self.name(), "reason" => e.kind())
            .increment(1);
        tracing::warn!(
            table = self.name(),
            "commit did not land: {e}; reading again from the table's positions"
        );
        for owned in self.owned.values_mut() {
            if let Some(mut w) = owned.writer.take() {
                w.reset();
            }
            owned.rows.clear();
            owned.since = None;
        }
        let all: Vec<Partition> = self.owned.keys().cloned().collect();
        self.unpositioned.extend(all.iter().cloned());
        self.position(&all).await;
        Ok(())
    }
}

/// Whether a schema's column type is the table's (the table's comes back from the Delta log, so
/// compare what Delta stores, not Arrow's spelling of it).
fn same_type(table: &DataType, schema: &DataType) -> bool {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let a: Result<deltalake::kernel::DataType, _> = table.try_into_kernel();
    let b: Result<deltalake::kernel::DataType, _> = schema.try_into_kernel();
    matches!((a, b), (Ok(a), Ok(b)) if a == b)
}

/// Why a record is a dead letter.
struct DeadLetter {
    /// Bounded label for metrics.
    kind: &'static str,
    reason: String,
    schema_id: Option<u32>,
}

impl DeadLetter {
    fn new(kind: &'static str, reason: String, schema_id: Option<u32>) -> DeadLetter {
        DeadLetter {
            kind,
            reason,
            schema_id,
        }
    }
}
