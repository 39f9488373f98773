//! One table's loader: reads its topics as a consumer group, turns records into rows, streams
//! them into Parquet files per partition and event day, and commits the files together with each
//! partition's next offset in one Delta commit, on size or age, whichever comes first.
//!
//! Positions come from the table on every assignment (see `table`); a commit that does not land
//! drops every uncommitted row and reads again from the table's positions, so a row is in the
//! table once whatever failed.
//!
//! Records that cannot be rows go to `dlq.lake.<table>` in a Kafka transaction that also commits
//! the group's offsets, after each Delta commit. So each partition has two positions: the table's
//! (rows below it are in the table) and the group's (dead letters below it are delivered). A
//! loader reads a partition from the lower of the two and takes a record as a row only at or past
//! the table's position and as a dead letter only at or past the group's: a crash or a failed
//! commit on either side writes what that side misses again, and nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deltalake::arrow::datatypes::{DataType, Fields, SchemaRef};
use logpipe_core::kafka::{
    commit_transaction, init_transactions, is_fatal, send_offsets, send_waiting,
    transactional_producer, GroupEvent, KafkaConfig, RebalanceLog, Role,
};
use logpipe_core::service::Context;
use logpipe_schema_client::Client;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::compact::Compaction;
use crate::dead_letters;
use crate::files::Files;
use crate::letter::{DeadLetter, Letter};
use crate::metrics::*;
use crate::read::{Decoding, Read};
use crate::rows::{self, Layout};
use crate::schemas::{SchemaError, Schemas};
use crate::table::{CommitError, Partition, Table};
use crate::{TableConfig, TableKind};

/// How often the loop looks at its clocks (flush ages, vacuum, compaction, lag), busy or idle:
/// not per record, where reading the clock and arming a timeout cost more than the check.
const TICK: Duration = Duration::from_millis(100);
/// Bound of one Kafka request or transaction step.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Dead letters held for their commit, in bytes, that make a commit due: a topic of records
/// that are all dead letters must not fill the memory before the flush age.
const LETTER_BYTES: usize = 16 << 20;
/// Files a partition holds open before its commit is due, one per event day (each an upload and a
/// row group in progress): a burst of events spread over more days commits the partition early
/// rather than open ever more (the writes in flight may open a few past it before the check).
/// Late events of a day or two join their day's open file.
const OPEN_DAYS: usize = 32;

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
    /// The group's position: the dead letters of records below it are delivered.
    delivered: i64,
    /// Whether the group holds an offset of the partition (or it is taken to have expired).
    anchored: bool,
    /// Records read and not yet handed to the write task.
    reads: Vec<Read>,
    /// The partition's open files and the dead letters found, written in the commit's
    /// transaction.
    files: Files,
    /// When the oldest uncommitted row or dead letter was read.
    since: Option<Instant>,
    last_commit: Option<Instant>,
    /// Which seek the records now arriving follow: a record received before the latest seek
    /// of its partition may lie beyond the sought position and is passed over (the seek brings
    /// it again), or the records between would be skipped.
    epoch: u64,
}

/// What the loader derives from the table's schema, kept while the table's version stays (a
/// schema change is a new version): the Arrow schema rows are built with, and each schema id's
/// columns in the table (or why its records cannot be rows).
#[derive(Default)]
struct Derived {
    version: Option<u64>,
    schema: Option<SchemaRef>,
    /// By schema id (`None`: the dead letters' fixed columns).
    columns: HashMap<Option<u32>, Result<Arc<Layout>, String>>,
}

struct Loader {
    settings: Settings,
    consumer: StreamConsumer<RebalanceLog>,
    /// Writes dead letters and the group's offsets, in one transaction per commit.
    producer: ThreadedProducer<DefaultProducerContext>,
    dlq_topic: String,
    table: Table,
    exists: bool,
    schemas: Schemas,
    owned: BTreeMap<Partition, Owned>,
    /// Assigned partitions whose seek to the table's position has not succeeded yet.
    unpositioned: HashSet<Partition>,
    /// The last [`Owned::epoch`] given out.
    epochs: u64,
    derived: Derived,
    /// [`RECORDS_READ`] of this table.
    records_read: metrics::Counter,
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
    let consumer: StreamConsumer<RebalanceLog> = crate::consumer_config(
        &settings.kafka,
        &Role::StaticMember {
            group_id: settings.group.clone(),
            instance_id: settings.instance.clone(),
        },
    )
    .create_with_context(RebalanceLog::counting_losses_as(RECORDS_LOST_TO_RETENTION))
    .context("creating the consumer")?;
    let topics: Vec<&str> = settings.table.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;
    let producer = transactional_producer(settings.kafka.client_config(
        &Role::TransactionalProducer {
            transactional_id: format!("{}/{}", settings.group, settings.instance),
        },
        "logpipe-lake",
    ))
    .context("creating the dead-letter producer")?;
    // Fences a predecessor of the same instance and aborts what it left open.
    if !init_transactions(
        &producer,
        KAFKA_TIMEOUT,
        &ctx.readiness,
        &check,
        &ctx.shutdown,
    )
    .await?
    {
        return Ok(());
    }
    ctx.readiness.ready(&check);
    let records_read = metrics::counter!(RECORDS_READ, "table" => settings.table.name.clone());
    let mut loader = Loader {
        dlq_topic: logpipe_core::record::lake_dlq_topic(&settings.table.name),
        settings,
        consumer,
        producer,
        table,
        exists,
        schemas: Schemas::new(client),
        owned: BTreeMap::new(),
        unpositioned: HashSet::new(),
        epochs: 0,
        records_read,
        derived: Derived::default(),
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
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        loop {
            let received = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => break,
                received = self.consumer.recv() => Some(received.map(|m| m.detach())),
                () = &mut tick => {
                    tick.as_mut().reset(tokio::time::Instant::now() + TICK);
                    None
                }
            };
            let ticked = received.is_none();
            // The epoch a record was read in, before the rebalances its poll delivered act.
            let epoch = match &received {
                Some(Ok(m)) => self.epoch_of(m),
                _ => None,
            };
            self.group_events().await?;
            if let Some(received) = received {
                match received {
                    Ok(message) => self.take(message, epoch).await?,
                    Err(e) => tracing::warn!(table = self.name(), "reading: {e}"),
                }
            }
            let mut failed = None;
            for owned in self.owned.values_mut() {
                if let Err(e) = owned.files.poll().await {
                    failed = Some(CommitError::Files(format!("{e:#}")));
                    break;
                }
            }
            if let Some(e) = failed {
                self.drop_and_reread(e).await?;
            }
            let due = self.due(ticked);
            if !due.is_empty() {
                self.commit(Some(&due)).await?;
            }
            if !ticked {
                continue;
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
        self.commit(None).await
    }

    /// Acts on rebalances: an assigned partition is sought to the table's position, a revoked
    /// one's uncommitted rows are dropped (its new owner reads them from the table's position).
    async fn group_events(&mut self) -> anyhow::Result<()> {
        let events = self.consumer.context().take();
        if events.is_empty() && self.unpositioned.is_empty() {
            return Ok(());
        }
        for event in events {
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
                            owned.files.reset();
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
        let positioned = self.owned.len() - self.unpositioned.len();
        metrics::gauge!(PARTITIONS, "table" => self.name()).set(positioned as f64);
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
        let delivered = match self.delivered(partitions) {
            Ok(delivered) => delivered,
            Err(e) => {
                tracing::warn!(
                    table = self.name(),
                    "reading the group's offsets: {e}; retrying"
                );
                return;
            }
        };
        for (p, position) in positions {
            let rows_from = position.unwrap_or(0);
            // The group has an offset from before the table's first commit of the partition
            // (`anchor`): without one, a table position means it expired with the group's
            // offset retention, and every dead letter below the table's position counts as
            // delivered.
            let group = delivered.get(&p).copied().flatten();
            let letters_from = group.unwrap_or(rows_from);
            let from = rows_from.min(letters_from);
            let offset = match (position, from) {
                (None, 0) => Offset::Beginning,
                _ => Offset::Offset(from),
            };
            let sought = tokio::task::block_in_place(|| {
                self.consumer
                    .seek(&p.0, p.1, offset, Duration::from_secs(5))
            });
            match sought {
                Ok(()) => {
                    self.epochs += 1;
                    let owned = self.owned.entry(p.clone()).or_default();
                    owned.epoch = self.epochs;
                    owned.next = from;
                    owned.committed = position;
                    owned.delivered = letters_from;
                    owned.anchored = group.is_some() || position.is_some();
                    self.unpositioned.remove(&p);
                    tracing::info!(
                        table = self.name(),
                        topic = p.0,
                        partition = p.1,
                        ?position,
                        dead_letters_from = letters_from,
                        "loading from the table's position"
                    );
                }
                Err(e) => tracing::debug!(table = self.name(), "seeking {p:?}: {e}; retrying"),
            }
        }
    }

    /// The group's committed offsets of `partitions` (`None`: the group has none).
    fn delivered(&self, partitions: &[Partition]) -> KafkaResult<BTreeMap<Partition, Option<i64>>> {
        let mut wanted = TopicPartitionList::new();
        for (topic, partition) in partitions {
            wanted.add_partition(topic, *partition);
        }
        let committed =
            tokio::task::block_in_place(|| self.consumer.committed_offsets(wanted, KAFKA_TIMEOUT))?;
        Ok(partitions
            .iter()
            .map(|p| {
                let offset = committed
                    .find_partition(&p.0, p.1)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0);
                (p.clone(), offset)
            })
            .collect())
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
            tracing::trace!(
                table = self.settings.table.name,
                topic = p.0,
                partition = p.1,
                offset = message.offset(),
                ?epoch,
                "passed over: read before its partition's latest seek, or below its position"
            );
            return Ok(());
        }
        let decoding = self.decoding(&message).await?;
        // Finding it may have committed, and a commit that did not land seeks again.
        if !current(self) {
            return Ok(());
        }
        let offset = message.offset();
        let owned = self.owned.get_mut(&p).expect("owned partition");
        // Below the table's position a record is read again only for its dead letter, below
        // the group's only for its row.
        owned.reads.push(Read {
            as_row: offset >= owned.committed.unwrap_or(0),
            as_letter: offset >= owned.delivered,
            message,
            decoding,
        });
        self.records_read.increment(1);
        owned.next = offset + 1;
        owned.since.get_or_insert_with(Instant::now);
        if owned.reads.len() >= 4_096 {
            if let Err(e) = self.write(&p).await {
                return self
                    .drop_and_reread(CommitError::Files(format!("{e:#}")))
                    .await;
            }
        }
        Ok(())
    }

    /// How the record is decoded into its row, or why it cannot be one (`Err` of the outer
    /// result: the loader cannot go on).
    async fn decoding(
        &mut self,
        message: &OwnedMessage,
    ) -> anyhow::Result<Result<Decoding, DeadLetter>> {
        if self.settings.table.kind == TableKind::DeadLetters {
            return Ok(match self.columns_for(None, dead_letters::fields).await? {
                Ok(layout) => Ok(Decoding::DeadLetter { layout }),
                Err(why) => Err(DeadLetter::new("columns", why, None)),
            });
        }
        let value = message.payload().unwrap_or_default();
        let id = match logpipe_core::wire::parse(value) {
            Ok((id, _)) => id,
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
        Ok(match self.columns_for(Some(id), || fields).await? {
            Ok(layout) => Ok(Decoding::Clean { writer, layout }),
            Err(why) => Err(DeadLetter::new("columns", why, Some(id))),
        })
    }

    /// The table's columns for a schema's `fields` (made only when not known yet for this
    /// table version): the table is created with them, or widened by the ones it lacks (after
    /// committing what was read under its old columns). `Err`: a field the table has with
    /// another type.
    async fn columns_for(
        &mut self,
        id: Option<u32>,
        fields: impl FnOnce() -> Fields,
    ) -> anyhow::Result<Result<Arc<Layout>, String>> {
        if let Some(known) = self.derived().columns.get(&id) {
            return Ok(known.clone());
        }
        let fields = fields();
        let columns = self.table_columns(&fields).await?.map(|table| {
            let event_time = self.settings.table.event_time.as_deref();
            Arc::new(Layout::new(table, &fields, event_time))
        });
        self.derived().columns.insert(id, columns.clone());
        Ok(columns)
    }

    /// What is kept of the table's schema, emptied when the table's version moved.
    fn derived(&mut self) -> &mut Derived {
        let version = self.table.table().version();
        if self.derived.version != version {
            self.derived = Derived {
                version,
                ..Derived::default()
            };
        }
        &mut self.derived
    }

    /// [`Loader::columns_for`] worked out from the table's schema. Creating or widening the
    /// table is retried while the store fails (a loader must ride out an outage, whatever it
    /// was doing), each time against the table as it is then: another loader may have done it.
    async fn table_columns(&mut self, fields: &Fields) -> anyhow::Result<Result<Fields, String>> {
        if !self.exists {
            let columns = rows::table_fields(fields);
            let table = &self.settings.table;
            if let Some(why) = crate::table::unpartitionable(&columns, &table.partition_by) {
                anyhow::bail!(
                    "cannot create the table {} from the first record's schema: {why} \
                     (partition_by must name columns of every schema of {})",
                    table.name,
                    table.topics.join(", ")
                );
            }
            while let Err(e) = self.table.create(&self.settings.table.name, &columns).await {
                self.retry_after("creating the table", &e).await?;
            }
            self.exists = true;
            tracing::info!(table = self.name(), "created the table");
        }
        loop {
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
            self.commit(None).await?;
            let names: Vec<&str> = missing.iter().map(|f| f.name().as_str()).collect();
            tracing::info!(table = self.name(), columns = ?names, "widening the table for a new schema version");
            if let Err(e) = self.table.widen(&missing).await {
                self.retry_after("widening the table", &e).await?;
                if let Err(e) = self.table.refresh().await {
                    tracing::warn!(table = self.name(), "reading the table: {e}");
                }
                continue;
            }
            metrics::counter!(SCHEMA_WIDENINGS, "table" => self.name())
                .increment(missing.len() as u64);
            for owned in self.owned.values_mut() {
                owned.files.renew();
            }
        }
    }

    /// Says why `what` (a commit of the table's schema) failed, counted as a commit failure of
    /// reason `schema`, and waits before it is tried again; `Err` once shutting down.
    async fn retry_after(
        &mut self,
        what: &str,
        e: &deltalake::DeltaTableError,
    ) -> anyhow::Result<()> {
        tracing::warn!(table = self.name(), "{what}: {e}; retrying");
        metrics::counter!(COMMIT_FAILURES, "table" => self.name(), "reason" => "schema")
            .increment(1);
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => anyhow::bail!("stopped while {what} failed: {e}"),
            _ = tokio::time::sleep(Duration::from_secs(2)) => Ok(()),
        }
    }

    /// Hands a partition's records read to its write task, which decodes them and writes
    /// their rows into its open files.
    async fn write(&mut self, p: &Partition) -> anyhow::Result<()> {
        if self.owned[p].reads.is_empty() {
            return Ok(());
        }
        // Until the table exists no record was a row: all are dead letters.
        let exists = self.exists;
        let schema = match (&self.derived().schema, exists) {
            (_, false) => None,
            (Some(schema), true) => Some(schema.clone()),
            (None, true) => {
                let schema = self.table.arrow_schema()?;
                self.derived().schema = Some(schema.clone());
                Some(schema)
            }
        };
        let owned = self.owned.get_mut(p).expect("owned partition");
        let reads = std::mem::take(&mut owned.reads);
        owned.files.write(self.table.table(), schema, reads).await
    }

    /// The partitions whose commit is due: their files reached the flush size or [`OPEN_DAYS`]
    /// days, or (looked at when `ages`) their oldest uncommitted record the flush age; every
    /// partition once the dead letters held reach [`LETTER_BYTES`]. Each partition is committed
    /// on its own, so its files are of the flush size whatever the others hold.
    fn due(&self, ages: bool) -> Vec<Partition> {
        let table = &self.settings.table;
        let letters: usize = self.owned.values().map(|o| o.files.letter_bytes()).sum();
        self.owned
            .iter()
            .filter(|(_, owned)| {
                letters >= LETTER_BYTES
                    || owned.files.written() as u64 >= table.flush_bytes
                    || table.by_day() && owned.files.open_days() >= OPEN_DAYS
                    || ages
                        && owned
                            .since
                            .is_some_and(|at| at.elapsed() >= table.flush_age)
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Commits the files and positions of `only` these partitions (`None`: all) in one Delta
    /// commit, then the dead letters held and the group's offsets in one Kafka transaction. What
    /// does not land is dropped and every partition read again from its positions.
    async fn commit(&mut self, only: Option<&[Partition]>) -> anyhow::Result<()> {
        let partitions: Vec<Partition> = self
            .owned
            .iter()
            .filter(|(p, o)| {
                o.next > o.committed.unwrap_or(0)
                    && !self.unpositioned.contains(*p)
                    && only.is_none_or(|only| only.contains(p))
            })
            .map(|(p, _)| p.clone())
            .collect();
        if !partitions.is_empty() {
            let landed = self.anchor(&partitions).await? && self.commit_rows(&partitions).await?;
            if !landed {
                return Ok(());
            }
        }
        self.deliver().await
    }

    /// The Delta commit of [`Loader::commit`]; whether it landed.
    async fn commit_rows(&mut self, partitions: &[Partition]) -> anyhow::Result<bool> {
        // The snapshot this commit builds on must hold the positions its rows continue from:
        // one that moved meanwhile was committed by another loader (this one's snapshot caught
        // up with it after an earlier commit), and committing on top would duplicate rows.
        let held = match self.table.held(partitions).await {
            Ok(held) => held,
            Err(e) => {
                return self
                    .drop_and_reread(CommitError::Failed(e))
                    .await
                    .map(|()| false)
            }
        };
        let moved: Vec<&Partition> = partitions
            .iter()
            .filter(|p| held.get(*p).copied().flatten() != self.owned[*p].committed)
            .collect();
        if !moved.is_empty() {
            let e = CommitError::Fenced(format!("the table's positions of {moved:?} moved"));
            return self.drop_and_reread(e).await.map(|()| false);
        }
        let started = Instant::now();
        let (adds, next) = match self.stage(partitions).await {
            Ok(staged) => staged,
            Err(e) => {
                return self
                    .drop_and_reread(CommitError::Files(format!("{e:#}")))
                    .await
                    .map(|()| false)
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
                for (p, offset) in &next {
                    let owned = self.owned.get_mut(p).expect("owned partition");
                    owned.committed = Some(*offset);
                    owned.since = None;
                    owned.last_commit = Some(Instant::now());
                }
                tracing::debug!(table = self.name(), version, rows, files, "committed");
                Ok(true)
            }
            Err(e) => self.drop_and_reread(e).await.map(|()| false),
        }
    }

    /// After the Delta commit: the dead letters held and the group's offsets up to what was read,
    /// in one Kafka transaction. A transaction that does not commit is aborted and the partitions
    /// read again (their committed rows passed over). The group may get ahead of the table for a
    /// partition whose rows were not in the commit: what is read again is still taken as a row
    /// only at or past the table's position, as a dead letter only at or past the group's.
    async fn deliver(&mut self) -> anyhow::Result<()> {
        // Every record read below `next` must have been looked at for its dead letter.
        let partitions: Vec<Partition> = self.owned.keys().cloned().collect();
        for p in &partitions {
            let written = match self.write(p).await {
                Ok(()) => self.owned.get_mut(p).expect("owned").files.settle().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                return self
                    .drop_and_reread(CommitError::Files(format!("{e:#}")))
                    .await;
            }
        }
        let covered: BTreeMap<Partition, (i64, i64)> = self
            .owned
            .iter()
            .filter(|(_, o)| o.next > o.delivered)
            .map(|(p, o)| (p.clone(), (o.delivered, o.next - 1)))
            .collect();
        self.transaction(covered, true).await.map(|_| ())
    }

    /// Before the first Delta commit of partitions the group holds no offset of: the group's
    /// offset set where their dead letters start, so that a dead-letter transaction failing after
    /// that commit leaves the group behind the table and not without an offset (which
    /// [`Loader::position`] reads as expired). Whether it committed.
    async fn anchor(&mut self, partitions: &[Partition]) -> anyhow::Result<bool> {
        let covered: BTreeMap<Partition, (i64, i64)> = partitions
            .iter()
            .map(|p| (p, &self.owned[p]))
            .filter(|(_, o)| !o.anchored)
            .map(|(p, o)| (p.clone(), (o.delivered, o.delivered - 1)))
            .collect();
        self.transaction(covered, false).await
    }

    /// One Kafka transaction: with `letters`, the dead letters held of `covered`'s partitions;
    /// and the group's offsets after each partition's last offset. Whether it committed: one
    /// that did not is aborted and every partition is read again.
    async fn transaction(
        &mut self,
        covered: BTreeMap<Partition, (i64, i64)>,
        letters: bool,
    ) -> anyhow::Result<bool> {
        if covered.is_empty() {
            return Ok(true);
        }
        let held: Vec<&Letter> = covered
            .keys()
            .filter(|_| letters)
            .flat_map(|p| self.owned[p].files.letters())
            .collect();
        let kinds: Vec<&'static str> = held.iter().map(|l| l.kind).collect();
        let committed = tokio::task::block_in_place(|| {
            self.producer.begin_transaction()?;
            for letter in &held {
                send_waiting(
                    &self.producer,
                    letter.record(&self.dlq_topic),
                    KAFKA_TIMEOUT,
                )?;
            }
            send_offsets(&self.producer, &self.consumer, &covered, KAFKA_TIMEOUT)?;
            commit_transaction(&self.producer, KAFKA_TIMEOUT)
        });
        match committed {
            Ok(()) => {
                for kind in kinds {
                    metrics::counter!(DEAD_LETTERS, "table" => self.name(), "kind" => kind)
                        .increment(1);
                }
                for (p, (_, last)) in &covered {
                    let owned = self.owned.get_mut(p).expect("owned partition");
                    owned.delivered = last + 1;
                    owned.anchored = true;
                    if letters {
                        owned.files.delivered();
                    }
                }
                Ok(true)
            }
            Err(e) if is_fatal(&e) => Err(anyhow::Error::new(e)
                .context("the dead letters' transaction failed fatally (fenced by another loader of the same instance name?)")),
            Err(e) => {
                tokio::task::block_in_place(|| self.producer.abort_transaction(KAFKA_TIMEOUT))
                    .context("aborting the dead letters' transaction")?;
                self.drop_and_reread(CommitError::DeadLetters(e.to_string()))
                    .await
                    .map(|()| false)
            }
        }
    }

    /// Starts compacting the days that ended `compact_after` ago, unless a compaction runs.
    /// Only the loader owning the first topic's partition 0 compacts, so loaders sharing a
    /// table do not race to rewrite the same files.
    fn compact(&mut self) {
        let table = &self.settings.table;
        let first = (table.topics[0].clone(), 0);
        if !self.exists
            || !table.by_day()
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
            Ok(Ok(c)) if c.partitions > 0 => {
                metrics::counter!(FILES_COMPACTED, "table" => self.name())
                    .increment(c.files_removed as u64);
                tracing::info!(
                    table = self.name(),
                    partitions = c.partitions,
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
        }
        for p in partitions {
            let owned = self.owned.get_mut(p).expect("owned partition");
            adds.extend(owned.files.flush().await?);
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
            "commit did not land: {e}; reading again from the table's and the group's positions"
        );
        for owned in self.owned.values_mut() {
            owned.files.reset();
            owned.reads.clear();
            owned.since = None;
            // Nothing is held past the positions now: a commit or transaction before the seek
            // below succeeds (it is retried while the store is away) must not carry the old
            // `next`, or it would record rows and dead letters that were just dropped.
            owned.next = owned.committed.unwrap_or(0).min(owned.delivered);
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
