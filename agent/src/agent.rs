//! The tailing loop: one thread owns every open file, the producer and the checkpoint, and reacts
//! to events (delivery reports, file system notifications, reload, shutdown) and timers.
//!
//! One owner means no locks and one obvious order of effects: a new file's id is checkpointed
//! before its first record is sent, a checkpoint only ever contains acknowledged offsets, and a
//! producer rebuild rewinds every file at once.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_core::metric_names::agent::*;
use logpipe_core::telemetry::Readiness;
use metrics::{gauge, Histogram};
use rdkafka::error::KafkaError;

use crate::checkpoint::{self, Checkpoint, FileState, Loaded};
use crate::config::{AgentConfig, StartAt, WatchMode};
use crate::delivery::{Delivery, Report, Token};
use crate::discovery::{self, Discovery, Notice};
use crate::files::{FileTable, Key};
use crate::identity::{self, Resume};
use crate::metrics::InputMetrics;
use crate::rotation;
use crate::tailer::{Change, Opening, ReadError, Sink, Tailer};
use logpipe_core::systemd;

/// Everything the loop reacts to.
pub(crate) enum Event {
    /// What the producer reported.
    Delivery(Report),
    /// The readiness probe of producer `epoch` reached the cluster.
    Reachable(u8),
    /// What discovery's watches saw.
    Fs(Notice),
    /// SIGHUP with a config that loaded and validated.
    Reload(Box<AgentConfig>),
    Shutdown,
}

const READINESS: &str = "kafka";
/// The readiness check of checkpoint writes.
const READY_CHECKPOINT: &str = "checkpoint";
/// Bytes read from one file in one go; also bounds how far a read may overshoot the budget.
const READ_CHUNK: usize = 1 << 20;
/// Stat sweep of open files while notifications work (a safety net for missed events).
const WATCHED_SWEEP: Duration = Duration::from_secs(1);
/// Shortest time between two re-globs triggered by notifications.
const MIN_SCAN_GAP: Duration = Duration::from_millis(100);
/// Shortest time between two producer rebuilds, so a permanent error does not spin.
const MIN_REBUILD_GAP: Duration = Duration::from_secs(1);

/// The flow control's account: what is queued for Kafka and not acknowledged yet. Reading
/// stops while `bytes` is at the `inflight_bytes` budget; the delivery reports release it.
#[derive(Debug, Default, PartialEq, Eq)]
struct InFlight {
    /// Line bytes plus each record's overhead (see `delivery::RECORD_OVERHEAD`).
    bytes: u64,
    records: usize,
}

impl InFlight {
    fn charge(&mut self, cost: u64, records: usize) {
        self.bytes += cost;
        self.records += records;
    }

    /// Saturating: a report of a record already released (its file was closed, or its
    /// producer replaced) cannot make the account negative.
    fn release(&mut self, cost: u64, records: usize) {
        self.bytes = self.bytes.saturating_sub(cost);
        self.records = self.records.saturating_sub(records);
    }
}

/// An input with its metrics handles.
struct Input {
    config: crate::config::InputConfig,
    metrics: InputMetrics,
}

impl Input {
    /// Where this input's lines go, through the current producer.
    fn sink<'a>(&'a self, delivery: &'a Delivery, host: &'a str) -> Sink<'a> {
        Sink {
            delivery,
            host,
            topic: &self.config.topic,
            key: &self.config.key,
            metrics: &self.metrics,
        }
    }
}

pub(crate) struct Agent {
    config: AgentConfig,
    host: String,
    inputs: Vec<Input>,
    discovery: Discovery,
    delivery: Delivery,
    epoch: Arc<AtomicU8>,
    files: FileTable,
    inflight: InFlight,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    readiness: Readiness,
    ready: bool,
    first_start: bool,
    scan_needed: bool,
    sweep_needed: bool,
    checkpoint_urgent: bool,
    /// Why the last checkpoint write failed, while they fail.
    checkpoint_failing: Option<String>,
    rebuild: Option<String>,
    last_rebuild: Instant,
    last_scan: Instant,
    last_sweep: Instant,
    last_checkpoint: Instant,
    last_checkpoint_ok: Instant,
    latency: Histogram,
    /// When the loop last woke up for events: the acknowledgement time of every report handled
    /// in that wake-up (one clock read per batch of reports instead of one per record).
    woke: Instant,
    /// Lines and bytes acknowledged per input since the counters were last updated.
    acked: Vec<(u64, u64)>,
    buf: Vec<u8>,
}

impl Agent {
    /// Loads the checkpoint, builds the producer and discovery; nothing is read yet.
    pub(crate) fn new(
        config: AgentConfig,
        events_tx: Sender<Event>,
        events: Receiver<Event>,
        readiness: Readiness,
    ) -> anyhow::Result<Agent> {
        fs::create_dir_all(&config.state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create state_dir {}: {e}",
                config.state_dir.display()
            )
        })?;
        let (saved, first_start) = match checkpoint::load(&config.state_dir) {
            Loaded::Found(c) => (c.files, false),
            Loaded::Missing => (Vec::new(), true),
            Loaded::Corrupt(reason) => {
                tracing::error!("{reason}; starting as on a first start (start_at applies)");
                metrics::counter!(CHECKPOINT_ERRORS, "kind" => "corrupt").increment(1);
                (Vec::new(), true)
            }
        };
        readiness.register(READINESS);
        let epoch = Arc::new(AtomicU8::new(0));
        let delivery = new_delivery(&config, &events_tx, 0)?;
        let discovery = new_discovery(&config, &events_tx)?;
        let now = Instant::now();
        let agent = Agent {
            host: config.host_name(),
            inputs: inputs(&config),
            config,
            discovery,
            delivery,
            epoch,
            files: FileTable::new(saved),
            inflight: InFlight::default(),
            events_tx,
            events,
            readiness,
            ready: false,
            first_start,
            scan_needed: true,
            sweep_needed: true,
            checkpoint_urgent: true,
            checkpoint_failing: None,
            rebuild: None,
            last_rebuild: now,
            last_scan: now,
            last_sweep: now,
            last_checkpoint: now,
            last_checkpoint_ok: now,
            latency: metrics::histogram!(DELIVERY_LATENCY),
            woke: now,
            acked: Vec::new(),
            buf: vec![0; READ_CHUNK],
        };
        agent.probe();
        Ok(agent)
    }

    /// Runs until a shutdown event, then drains and writes the final checkpoint.
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
        self.discovery.ensure_watches();
        self.scan(true);
        self.resume_rotated_while_stopped();
        self.first_start = false;
        self.write_checkpoint();
        systemd::ready();
        let watchdog = systemd::watchdog_interval();
        let mut last_watchdog = Instant::now();
        loop {
            let more = self.read_pass();
            let wait = if more {
                Duration::ZERO
            } else {
                self.until_next_timer()
            };
            let received = self.events.recv_timeout(wait);
            self.woke = Instant::now();
            match received {
                Ok(Event::Shutdown) => break,
                Ok(event) => self.handle(event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
            }
            // Take everything queued before doing timed work, so acknowledgements are batched.
            while let Ok(event) = self.events.try_recv() {
                if matches!(event, Event::Shutdown) {
                    return self.drain();
                }
                self.handle(event)?;
            }
            self.timers()?;
            if let Some(interval) = watchdog {
                if last_watchdog.elapsed() >= interval {
                    systemd::watchdog();
                    last_watchdog = Instant::now();
                }
            }
        }
        self.drain()
    }

    fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Delivery(Report::Ack { token, error }) => self.ack(token, error),
            Event::Delivery(Report::Fatal(reason)) => {
                metrics::counter!(PRODUCER_ERRORS, "error" => "fatal").increment(1);
                tracing::error!("kafka producer fatal error: {reason}");
                self.request_rebuild(format!("fatal producer error: {reason}"));
            }
            Event::Delivery(Report::BrokersDown) => self.set_ready(false, "all brokers are down"),
            Event::Reachable(epoch) if epoch == self.epoch() => self.set_ready(true, ""),
            Event::Reachable(_) => {}
            Event::Fs(notice) => self.fs_notice(notice),
            Event::Reload(config) => self.reload(*config)?,
            Event::Shutdown => {}
        }
        Ok(())
    }

    fn epoch(&self) -> u8 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn set_ready(&mut self, ready: bool, why: &str) {
        if ready != self.ready {
            self.ready = ready;
            if ready {
                self.readiness.ready(READINESS);
            } else {
                self.readiness.not_ready(READINESS, why);
            }
        }
    }

    fn ack(&mut self, token: Token, error: Option<KafkaError>) {
        if token.epoch != self.epoch() {
            return; // a report from a producer already replaced; its records were rewound
        }
        if let Some(error) = error {
            let code = error
                .rdkafka_error_code()
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "other".into());
            metrics::counter!(PRODUCER_ERRORS, "error" => code).increment(1);
            let path = self
                .files
                .get(token.slot)
                .map(|t| t.path.display().to_string())
                .unwrap_or_default();
            self.request_rebuild(format!("delivery of a record from {path} failed: {error}"));
            return;
        }
        let Some((input, acked)) = self.files.ack(token.slot, token.seq) else {
            return; // a closed file's record; its budget was released on close
        };
        let Some(acked) = acked else { return };
        self.inflight.release(acked.cost, 1);
        if let Some(sent) = acked.sent {
            self.latency
                .record(self.woke.saturating_duration_since(sent).as_secs_f64());
        }
        if self.acked.len() <= input {
            self.acked.resize(input + 1, (0, 0));
        }
        self.acked[input].0 += 1;
        self.acked[input].1 += acked.bytes;
        if !self.ready {
            self.set_ready(true, "");
        }
    }

    fn fs_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Failed(e) => {
                if discovery::is_limit(&e) && self.discovery.watching() {
                    self.discovery.fall_back(&e.to_string());
                } else {
                    tracing::debug!("file system notification error: {e}");
                }
                self.scan_needed = true;
            }
            Notice::Changed => {
                self.scan_needed = true;
                self.sweep_needed = true;
            }
            Notice::Written(paths) => {
                for path in &paths {
                    match self.files.at(path) {
                        Some(slot) => self.check(slot),
                        None if self.discovery.input_for(path).is_some() => self.scan_needed = true,
                        None => {}
                    }
                }
            }
        }
    }

    /// Re-reads a tailer's size; handles a truncation.
    fn check(&mut self, slot: u32) {
        let Some(tailer) = self.files.get_mut(slot) else {
            return;
        };
        match tailer.check() {
            Ok(Change::Truncated) => self.truncated(slot),
            Ok(_) => {}
            Err(e) => {
                metrics::counter!(FILE_ERRORS, "kind" => "stat").increment(1);
                tracing::warn!("cannot stat {}: {e}", tailer.path.display());
            }
        }
    }

    fn truncated(&mut self, slot: u32) {
        if self.follow_copy(slot) {
            return;
        }
        let Some(position) = self.files.get(slot).map(Tailer::position) else {
            return;
        };
        let Some((result, tailer)) = self.files.restart(slot) else {
            return;
        };
        match result {
            Ok(()) => {
                metrics::counter!(TRUNCATIONS).increment(1);
                tracing::warn!(
                    "{} was truncated (read up to {position}) and no copy of it was found: bytes written after {position} \
                     before the truncation are lost; reading it from the start as file id {}",
                    tailer.path.display(),
                    tailer.id
                );
                self.checkpoint_urgent = true;
            }
            Err(e) => {
                metrics::counter!(FILE_ERRORS, "kind" => "read").increment(1);
                tracing::warn!(
                    "cannot re-identify truncated {}: {e}",
                    tailer.path.display()
                );
            }
        }
    }

    /// After a copytruncate, the copy (a new file next to the truncated one) holds the bytes
    /// not read yet: the tailer moves to it and finishes it as a rotated file, and the
    /// truncated file is opened anew. True when a copy was found.
    fn follow_copy(&mut self, slot: u32) -> bool {
        let Some(location) = self.files.location(slot).map(PathBuf::from) else {
            return false;
        };
        let Some(tailer) = self.files.get(slot) else {
            return false;
        };
        let files = &self.files;
        let is_open = |key: Key| files.by_key(key).is_some();
        let Some((copy_path, file, key)) = rotation::find_copy(&location, tailer, is_open) else {
            return false;
        };
        metrics::counter!(TRUNCATIONS).increment(1);
        tracing::info!(
            "{} was copied to {} and truncated: finishing the copy from offset {}, then reading the file from the start",
            location.display(),
            copy_path.display(),
            tailer.position()
        );
        let input = tailer.input;
        self.files.move_to_copy(slot, copy_path, file, key);
        self.check(slot);
        self.open(location, input, false);
        true
    }

    /// Globs every input and opens the files not open yet.
    fn scan(&mut self, initial: bool) {
        self.last_scan = Instant::now();
        self.scan_needed = false;
        if !initial {
            self.files.forget_gone();
        }
        self.discovery.ensure_watches();
        for (path, input) in self.discovery.scan() {
            if self.files.at(&path).is_some() {
                continue;
            }
            self.open(path, input, initial);
        }
    }

    /// Opens a file found at `path` unless it is open already (then it was renamed, and is
    /// now known under `path`).
    fn open(&mut self, path: PathBuf, input: usize, initial: bool) -> Option<u32> {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                let text = e.to_string();
                if self.files.open_failed(path.clone(), text.clone()) {
                    metrics::counter!(FILE_ERRORS, "kind" => "open").increment(1);
                    tracing::warn!(
                        "cannot open {}: {text}; other files go on, retrying at the next scan",
                        path.display()
                    );
                }
                return None;
            }
        };
        self.files.opened(&path);
        let meta = file.metadata().ok().filter(|m| m.is_file())?;
        let key = (meta.dev(), meta.ino());
        if let Some(slot) = self.files.by_key(key) {
            self.files.relocate(slot, path);
            return Some(slot);
        }
        let size = meta.len();
        let saved = self.files.take_saved(&path, key);
        let resumed = match &saved {
            Some(s) => {
                match identity::check(&file, size, s.fingerprint, s.offset, s.guard) {
                    Ok(Resume::Continue) => Some((s.file, s.fingerprint, s.offset)),
                    Ok(Resume::Truncated) => {
                        metrics::counter!(TRUNCATIONS).increment(1);
                        tracing::info!("{} was truncated or rewritten since offset {}: reading it from the start", path.display(), s.offset);
                        self.resume_copy(s, input, key);
                        None
                    }
                    Ok(Resume::Replaced) => {
                        metrics::counter!(IDENTITY_CHANGES).increment(1);
                        tracing::info!(
                            "{} is a new file at a reused inode: reading it from the start",
                            path.display()
                        );
                        self.resume_copy(s, input, key);
                        None
                    }
                    Err(e) => {
                        tracing::warn!("cannot read {}: {e}", path.display());
                        self.files.save(key, s.clone());
                        return None;
                    }
                }
            }
            None => None,
        };
        // A resumed file keeps the path it was first found under (in `lp.path` and the default
        // key) even when it is now found under its rotated name: the lines after its checkpoint
        // are sent again, and the validator only recognises them as resends within the
        // partition (chosen by the key) their first copies went to.
        let named = match (&saved, &resumed) {
            (Some(s), Some(_)) => s.path.clone(),
            _ => path.clone(),
        };
        let id_saved = resumed.is_some();
        let (id, fingerprint, offset) = match resumed {
            Some(resumed) => resumed,
            None => {
                let fingerprint = identity::fingerprint(&file, size).ok()?;
                let start_at_end = initial
                    && self.first_start
                    && self.inputs[input].config.start_at == StartAt::End;
                let offset = if start_at_end && saved.is_none() {
                    last_line_end(&file, size)
                } else {
                    0
                };
                self.checkpoint_urgent = true;
                (
                    identity::new_file_id(key.0, key.1, fingerprint),
                    fingerprint,
                    offset,
                )
            }
        };
        let slot = self.files.alloc_slot();
        let opening = Opening {
            slot,
            input,
            path: named,
            file,
            dev: key.0,
            ino: key.1,
            id,
            id_saved,
            fingerprint,
            offset,
            max_line_bytes: self.inputs[input].config.max_line_bytes,
        };
        tracing::debug!(
            "tailing {} from offset {offset} as file id {id}",
            path.display()
        );
        let tailer = Tailer::new(opening, &self.host, &self.inputs[input].config.key);
        self.files.insert(tailer, path);
        self.check(slot);
        Some(slot)
    }

    /// A saved file found truncated or refilled at a start may have been copied first (a
    /// copytruncate while the agent was stopped): the copy next to it (same first bytes, same
    /// bytes before the saved offset) holds the lines not sent yet. They are finished from the
    /// copy under the saved id and path, as [`Agent::follow_copy`] does while running.
    fn resume_copy(&mut self, state: &FileState, input: usize, truncated: Key) {
        let files = &self.files;
        let is_open = |key: Key| files.by_key(key).is_some();
        let Some((path, key)) = rotation::find_saved_copy(state, truncated, is_open) else {
            return;
        };
        let (dev, ino) = key;
        self.files.save(
            key,
            FileState {
                dev,
                ino,
                ..state.clone()
            },
        );
        self.finish_rotated(state, "copied and truncated", path, input);
    }

    /// Opens a file found at a start as what became of the saved file `state` (`how`), detached:
    /// it is read to its end and closed.
    fn finish_rotated(&mut self, state: &FileState, how: &str, path: PathBuf, input: usize) {
        tracing::info!(
            "{} was {how} while the agent was stopped: finishing {} from offset {}",
            state.path.display(),
            path.display(),
            state.offset
        );
        metrics::counter!(ROTATIONS).increment(1);
        if let Some(slot) = self.open(path, input, false) {
            if let Some(tailer) = self.files.get_mut(slot) {
                tailer.detached = Some(Instant::now());
            }
        }
    }

    /// After a start: saved files that no pattern matched any more may have been rotated while
    /// the agent was stopped. Look for their inode next to where they were, and finish them.
    fn resume_rotated_while_stopped(&mut self) {
        for (path, key, len) in rotation::rotated_while_stopped(self.files.saved_entries()) {
            let Some(state) = self.files.saved(key) else {
                continue;
            };
            if len <= state.offset {
                continue; // nothing left to read; the entry is kept while the file is there
            }
            let input = self.discovery.input_for(&state.path).unwrap_or(0);
            let state = state.clone();
            self.finish_rotated(&state, "rotated", path, input);
        }
        // Entries whose file is gone (or is now another file) are forgotten.
        self.files.forget_gone();
    }

    /// Reads from every file that has unread bytes while the budget allows; true when there is
    /// more to read right away.
    fn read_pass(&mut self) -> bool {
        if self.rebuild.is_some() {
            return false;
        }
        let budget = self.config.inflight_bytes;
        let slots: Vec<u32> = self
            .files
            .iter()
            .filter(|(_, t)| t.id_saved && !t.at_eof())
            .map(|(s, _)| s)
            .collect();
        let mut more = false;
        for slot in slots {
            if self.inflight.bytes >= budget {
                return false; // the delivery reports will wake the loop
            }
            let Some(tailer) = self.files.get_mut(slot) else {
                continue;
            };
            let sink = self.inputs[tailer.input].sink(&self.delivery, &self.host);
            match tailer.read(&mut self.buf, &sink, self.delivery.epoch) {
                Ok(progress) => {
                    self.inflight.charge(progress.cost, progress.records);
                    more |= progress.more;
                }
                Err(ReadError::Io(e)) => {
                    metrics::counter!(FILE_ERRORS, "kind" => "read").increment(1);
                    tracing::warn!("cannot read {}: {e}", tailer.path.display());
                }
                Err(ReadError::Kafka(e)) => {
                    metrics::counter!(PRODUCER_ERRORS, "error" => "produce").increment(1);
                    self.request_rebuild(format!("cannot queue a record: {e}"));
                    return false;
                }
            }
        }
        self.update_gauges();
        more
    }

    /// Publishes the acknowledgement counters and the in-flight gauges (cheap, every pass).
    fn update_gauges(&mut self) {
        for (input, (lines, bytes)) in self.acked.iter_mut().enumerate() {
            if let Some(input) = self.inputs.get(input) {
                input.metrics.lines_acked.increment(*lines);
                input.metrics.bytes_acked.increment(*bytes);
            }
            (*lines, *bytes) = (0, 0);
        }
        gauge!(INFLIGHT_BYTES).set(self.inflight.bytes as f64);
        gauge!(INFLIGHT_RECORDS).set(self.inflight.records as f64);
    }

    /// Publishes the per-file gauges (walks every tailer: once per sweep).
    fn update_file_gauges(&self) {
        gauge!(OPEN_FILES).set(self.files.len() as f64);
        gauge!(DETACHED_FILES).set(self.files.detached().len() as f64);
    }

    fn sweep_interval(&self) -> Duration {
        self.unless_polling(WATCHED_SWEEP)
    }

    fn rescan_interval(&self) -> Duration {
        self.unless_polling(self.config.rescan_interval())
    }

    /// `watched` while notifications work; when polling, the poll interval paces everything.
    fn unless_polling(&self, watched: Duration) -> Duration {
        if self.discovery.watching() {
            watched
        } else {
            self.config.poll_interval()
        }
    }

    fn until_next_timer(&self) -> Duration {
        let now = Instant::now();
        let due = |last: Instant, every: Duration| (last + every).saturating_duration_since(now);
        let mut wait = due(self.last_sweep, self.sweep_interval())
            .min(due(self.last_scan, self.rescan_interval()))
            .min(due(self.last_checkpoint, self.config.checkpoint_interval()));
        if self.scan_needed || self.sweep_needed {
            wait = wait.min(due(self.last_scan, MIN_SCAN_GAP));
        }
        if self.rebuild.is_some() {
            wait = wait.min(due(self.last_rebuild, MIN_REBUILD_GAP));
        }
        wait.min(Duration::from_secs(1))
    }

    fn timers(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if self.rebuild.is_some() && now >= self.last_rebuild + MIN_REBUILD_GAP {
            self.rebuild_producer()?;
        }
        let scan_due = now >= self.last_scan + self.rescan_interval();
        if scan_due || (self.scan_needed && now >= self.last_scan + MIN_SCAN_GAP) {
            self.scan(false);
            self.sweep_needed = true;
        }
        if self.sweep_needed || now >= self.last_sweep + self.sweep_interval() {
            self.sweep();
        }
        if self.checkpoint_urgent || now >= self.last_checkpoint + self.config.checkpoint_interval()
        {
            self.write_checkpoint();
        }
        Ok(())
    }

    /// Stats every open file: growth, truncation, rotation away; finishes detached files.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        self.sweep_needed = false;
        for slot in self.files.slots() {
            self.check(slot);
            let Some(location) = self.files.location(slot).map(PathBuf::from) else {
                continue;
            };
            let Some(tailer) = self.files.get(slot) else {
                continue;
            };
            if tailer.detached.is_none() {
                let wanted = self.discovery.input_for(&location).is_some();
                if let Some(why) = rotation::departure(&location, (tailer.dev, tailer.ino), wanted)
                {
                    tracing::info!(
                        "{} was {why}: reading it to its end before closing it",
                        location.display()
                    );
                    metrics::counter!(ROTATIONS).increment(1);
                    self.files.detach(slot);
                    // A file created in its place is picked up at once.
                    self.scan_needed = true;
                }
            }
            self.finish_detached(slot);
        }
        self.evict_detached();
        gauge!(CHECKPOINT_AGE).set(self.last_checkpoint_ok.elapsed().as_secs_f64());
        self.update_gauges();
        self.update_file_gauges();
    }

    /// A detached file that stopped growing gets its last line shipped, and is closed once
    /// everything is acknowledged.
    fn finish_detached(&mut self, slot: u32) {
        let idle = self.config.detached_idle();
        let Some(tailer) = self.files.get_mut(slot) else {
            return;
        };
        if tailer.detached.is_none()
            || !tailer.at_eof()
            || tailer.last_growth.elapsed() < idle
            || self.rebuild.is_some()
        {
            return;
        }
        let sink = self.inputs[tailer.input].sink(&self.delivery, &self.host);
        match tailer.flush_partial(&sink, self.delivery.epoch) {
            Ok(progress) => {
                self.inflight.charge(progress.cost, progress.records);
            }
            Err(e) => {
                self.request_rebuild(format!("cannot queue a record: {e}"));
                return;
            }
        }
        if tailer.finished() {
            tracing::debug!(
                "closing {}: read to its end and acknowledged",
                tailer.path.display()
            );
            self.close(slot);
        }
    }

    /// Keeps at most `max_detached_files` detached handles: the oldest beyond are closed
    /// unfinished, which is a counted and logged loss.
    fn evict_detached(&mut self) {
        let detached = self.files.detached();
        if detached.len() <= self.config.max_detached_files {
            return;
        }
        let excess = detached.len() - self.config.max_detached_files;
        for (_, slot) in detached.into_iter().take(excess) {
            if let Some(tailer) = self.files.get(slot) {
                metrics::counter!(DETACHED_EVICTED).increment(1);
                tracing::error!(
                    "closing rotated-away {} unfinished at offset {} (max_detached_files = {} reached): its remaining lines are dropped",
                    tailer.path.display(),
                    tailer.acks.committed(),
                    self.config.max_detached_files
                );
            }
            self.close(slot);
        }
    }

    /// Closes a tailer and releases the budget its records held.
    fn close(&mut self, slot: u32) {
        if let Some((cost, records)) = self.files.close(slot) {
            self.inflight.release(cost, records);
        }
    }

    /// Writes the checkpoint. While writes fail (a full or read-only disk), files already
    /// checkpointed go on shipping, new ids wait, `/ready` says why, and the write is retried
    /// every `checkpoint_interval_ms` (not on every pass).
    fn write_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        self.checkpoint_urgent = false;
        let checkpoint = Checkpoint::new(self.files.states());
        match checkpoint::store(&self.config.state_dir, &checkpoint) {
            Ok(()) => {
                self.last_checkpoint_ok = Instant::now();
                self.files.ids_saved(&checkpoint.files);
                if let Some(why) = self.checkpoint_failing.take() {
                    tracing::info!("the checkpoint is written again (it failed: {why})");
                    self.readiness.ready(READY_CHECKPOINT);
                }
            }
            Err(e) => {
                metrics::counter!(CHECKPOINT_ERRORS, "kind" => "write").increment(1);
                let why = format!(
                    "cannot write the checkpoint in {}: {e}",
                    self.config.state_dir.display()
                );
                if self.checkpoint_failing.as_ref() != Some(&why) {
                    tracing::error!(
                        "{why}; files already checkpointed go on, new files wait for a checkpoint"
                    );
                    self.readiness.not_ready(READY_CHECKPOINT, why.clone());
                }
                self.checkpoint_failing = Some(why);
            }
        }
    }

    fn request_rebuild(&mut self, why: String) {
        if self.rebuild.is_none() {
            tracing::error!(
                "{why}; rebuilding the producer and resending from the last acknowledged offsets"
            );
            self.set_ready(false, &why);
            self.rebuild = Some(why);
        }
    }

    /// Replaces the producer and rewinds every file to its committed offset.
    fn rebuild_producer(&mut self) -> anyhow::Result<()> {
        self.rebuild = None;
        self.last_rebuild = Instant::now();
        metrics::counter!(PRODUCER_REBUILDS).increment(1);
        let epoch = self.epoch().wrapping_add(1);
        // The new epoch first: the old producer's purge reports are ignored from here on.
        self.epoch.store(epoch, Ordering::Relaxed);
        let delivery = new_delivery(&self.config, &self.events_tx, epoch)?;
        drop(std::mem::replace(&mut self.delivery, delivery));
        self.files.rewind_all();
        self.inflight = InFlight::default();
        self.probe();
        Ok(())
    }

    /// Starts a thread that marks the agent ready once the current producer reaches the cluster.
    fn probe(&self) {
        let delivery = self.delivery.share();
        let epoch = Arc::clone(&self.epoch);
        let events = self.events_tx.clone();
        std::thread::spawn(move || {
            while epoch.load(Ordering::Relaxed) == delivery.epoch {
                if delivery.reachable(Duration::from_secs(2)) {
                    let _ = events.send(Event::Reachable(delivery.epoch));
                    return;
                }
            }
        });
    }

    fn reload(&mut self, config: AgentConfig) -> anyhow::Result<()> {
        let mut config = config;
        if config.state_dir != self.config.state_dir {
            tracing::warn!(
                "reload: state_dir cannot change while running; keeping {}",
                self.config.state_dir.display()
            );
            config.state_dir = self.config.state_dir.clone();
        }
        let rebuild = config.kafka != self.config.kafka
            || config.inflight_bytes != self.config.inflight_bytes;
        self.discovery = new_discovery(&config, &self.events_tx)?;
        self.update_gauges(); // count acknowledgements under the inputs they were read for
        self.host = config.host_name();
        self.inputs = inputs(&config);
        self.config = config;
        let discovery = &self.discovery;
        self.files
            .reassign_inputs(|path| discovery.input_for(path), self.inputs.len());
        if rebuild {
            self.request_rebuild("the [kafka] settings changed".into());
        }
        self.scan_needed = true;
        self.sweep_needed = true;
        tracing::info!("configuration reloaded: {} inputs", self.inputs.len());
        Ok(())
    }

    /// Stops reading, waits (bounded) for Kafka to acknowledge what is in flight, writes the
    /// final checkpoint.
    fn drain(mut self) -> anyhow::Result<()> {
        systemd::stopping();
        let deadline = Instant::now() + self.config.drain();
        tracing::info!("draining {} records in flight", self.inflight.records);
        while self.inflight.records > 0 && self.rebuild.is_none() && Instant::now() < deadline {
            match self.events.recv_timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            ) {
                Ok(Event::Delivery(Report::Ack { token, error })) => {
                    self.woke = Instant::now();
                    self.ack(token, error);
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.write_checkpoint();
        self.update_gauges();
        if self.inflight.records > 0 {
            tracing::warn!(
                "stopping with {} records unacknowledged: they are read and sent again at the next start",
                self.inflight.records
            );
        }
        Ok(())
    }
}

fn inputs(config: &AgentConfig) -> Vec<Input> {
    config
        .inputs
        .iter()
        .map(|c| Input {
            metrics: InputMetrics::new(c.label()),
            config: c.clone(),
        })
        .collect()
}

fn new_delivery(
    config: &AgentConfig,
    events: &Sender<Event>,
    epoch: u8,
) -> anyhow::Result<Delivery> {
    let longest = config
        .inputs
        .iter()
        .map(|i| i.max_line_bytes)
        .max()
        .unwrap_or(0);
    let events = events.clone();
    let reports = Box::new(move |report| {
        let _ = events.send(Event::Delivery(report));
    });
    Delivery::new(
        &config.kafka,
        config.inflight_bytes,
        longest,
        reports,
        epoch,
    )
}

fn new_discovery(config: &AgentConfig, events: &Sender<Event>) -> anyhow::Result<Discovery> {
    let events = events.clone();
    Discovery::new(
        &config.inputs,
        config.watch == WatchMode::Poll,
        move |notice| {
            let _ = events.send(Event::Fs(notice));
        },
    )
}

/// Where the last complete line of a file ends: with `start_at = "end"` the agent starts there
/// rather than in the middle of a line being written.
fn last_line_end(file: &File, size: u64) -> u64 {
    const LOOK_BACK: u64 = 64 * 1024;
    let start = size.saturating_sub(LOOK_BACK);
    let mut buf = vec![0; (size - start) as usize];
    match file.read_exact_at(&mut buf, start) {
        Ok(()) => memchr::memrchr(b'\n', &buf)
            .map(|i| start + i as u64 + 1)
            .unwrap_or(size),
        Err(_) => size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_account_never_goes_negative() {
        let mut inflight = InFlight::default();
        inflight.charge(300, 2);
        inflight.release(100, 1);
        assert_eq!(
            inflight,
            InFlight {
                bytes: 200,
                records: 1
            }
        );
        inflight.release(500, 3);
        assert_eq!(inflight, InFlight::default());
    }

    #[test]
    fn a_start_at_end_begins_after_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, b"one\ntwo\nthr").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(last_line_end(&file, 11), 8);
        fs::write(&path, b"no newline yet").unwrap();
        assert_eq!(last_line_end(&file, 14), 14);
    }
}
