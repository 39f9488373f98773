//! One open file: reading new bytes into records, tracking which of them Kafka acknowledged,
//! and noticing truncation.
//!
//! The file is read with positional reads from the splitter's position, so rewinding (after a
//! producer rebuild) is just resetting two numbers. Offsets only ever become durable through
//! [`AckTracker::committed`]: the end of the longest prefix of records that are all acknowledged.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use logpipe_core::metric_names::agent::FILE_LAG;
use logpipe_core::record::{header, FileId, KeyStrategy};
use metrics::Gauge;
use rdkafka::error::KafkaError;
use rdkafka::message::Header;

use crate::checkpoint::FileState;
use crate::delivery::{line_headers, Delivery, Outgoing, Token, RECORD_OVERHEAD};
use crate::identity::{self, Digest, FINGERPRINT_MAX, GUARD_MAX};
use crate::lines::{LineSplitter, Piece};
use crate::metrics::InputMetrics;

/// A record queued and not yet acknowledged (or bytes that need no record).
#[derive(Debug)]
struct Pending {
    end: u64,
    cost: u64,
    /// Line bytes (the metrics' acknowledged bytes).
    bytes: u64,
    sent: Option<Instant>,
    acked: bool,
}

/// Contiguous acknowledgement tracking for one file's records, in the order they were sent.
#[derive(Debug)]
pub(crate) struct AckTracker {
    queue: VecDeque<Pending>,
    /// Sequence number of `queue[0]`.
    base_seq: u32,
    committed: u64,
}

/// What an acknowledgement released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    pub(crate) cost: u64,
    pub(crate) bytes: u64,
    pub(crate) sent: Option<Instant>,
}

impl AckTracker {
    pub(crate) fn new(offset: u64) -> Self {
        AckTracker {
            queue: VecDeque::new(),
            base_seq: 0,
            committed: offset,
        }
    }

    /// Registers a record of `bytes` line bytes ending at `end`, charged `cost` to the
    /// budget; returns its sequence number.
    pub(crate) fn push(&mut self, end: u64, bytes: u64, cost: u64, sent: Instant) -> u32 {
        let seq = self.base_seq.wrapping_add(self.queue.len() as u32);
        self.queue.push_back(Pending {
            end,
            cost,
            bytes,
            sent: Some(sent),
            acked: false,
        });
        seq
    }

    /// Bytes up to `end` that produce no record (empty lines).
    pub(crate) fn skip(&mut self, end: u64) {
        match self.queue.back_mut() {
            None => self.committed = end,
            Some(last) if last.acked && last.sent.is_none() => last.end = end,
            Some(_) => self.queue.push_back(Pending {
                end,
                cost: 0,
                bytes: 0,
                sent: None,
                acked: true,
            }),
        }
    }

    /// Marks a record acknowledged and advances the committed offset over the acknowledged
    /// prefix. `None` for a sequence number this tracker does not hold.
    pub(crate) fn ack(&mut self, seq: u32) -> Option<Acked> {
        let index = seq.wrapping_sub(self.base_seq) as usize;
        let pending = self
            .queue
            .get_mut(index)
            .filter(|p| !p.acked && p.sent.is_some())?;
        pending.acked = true;
        let acked = Acked {
            cost: pending.cost,
            bytes: pending.bytes,
            sent: pending.sent,
        };
        while self.queue.front().is_some_and(|p| p.acked) {
            let done = self.queue.pop_front().expect("front exists");
            self.committed = done.end;
            self.base_seq = self.base_seq.wrapping_add(1);
        }
        Some(acked)
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    /// Records still waiting for their acknowledgement.
    pub(crate) fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Forgets every record after the committed offset (they will be read and sent again);
    /// returns the budget they held.
    pub(crate) fn rewind(&mut self) -> (u64, usize) {
        let cost = self.queue.iter().filter(|p| !p.acked).map(|p| p.cost).sum();
        let records = self
            .queue
            .iter()
            .filter(|p| !p.acked && p.sent.is_some())
            .count();
        self.base_seq = self.base_seq.wrapping_add(self.queue.len() as u32);
        self.queue.clear();
        (cost, records)
    }
}

/// Where to send an input's records.
pub(crate) struct Sink<'a> {
    pub(crate) delivery: &'a Delivery,
    pub(crate) host: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) key: &'a KeyStrategy,
    pub(crate) metrics: &'a InputMetrics,
}

/// What one read did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    /// Budget charged by the records queued.
    pub(crate) cost: u64,
    pub(crate) records: usize,
    /// Line bytes queued.
    pub(crate) bytes: u64,
    /// The buffer was filled: there is probably more to read.
    pub(crate) more: bool,
}

/// Why a file cannot be read on.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Kafka(KafkaError),
}

/// What a size check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Unchanged,
    Grew,
    Truncated,
}

/// An open file being tailed.
pub(crate) struct Tailer {
    pub(crate) slot: u32,
    pub(crate) input: usize,
    pub(crate) path: PathBuf,
    path_text: String,
    file: File,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) id: FileId,
    id_hex: String,
    /// A checkpoint holding `id` is on disk. Until then nothing is sent under it: after a crash
    /// the file would get another id and its lines would arrive twice under two ids.
    pub(crate) id_saved: bool,
    fingerprint: Digest,
    splitter: LineSplitter,
    pub(crate) acks: AckTracker,
    /// Size at the last check.
    size: u64,
    /// The bytes before the position when the end was reached, to catch a truncation that was
    /// refilled past the position before the next check.
    eof_guard: Option<Digest>,
    /// The last bytes before the position (at most `GUARD_MAX`), to recognise a copy of this
    /// file's contents after a copytruncate.
    recent: Vec<u8>,
    /// The key for strategies that do not look into lines.
    key: Option<Vec<u8>>,
    /// What each record costs the in-flight budget beyond its line (and a per-line key).
    record_cost: u64,
    /// When the file was found renamed away or deleted.
    pub(crate) detached: Option<Instant>,
    pub(crate) last_growth: Instant,
    /// Guard of the committed offset at the last checkpoint (saved with it).
    saved_guard: Option<(u64, Option<Digest>)>,
    lag: Gauge,
}

/// What is needed to open a tailer.
pub(crate) struct Opening {
    pub(crate) slot: u32,
    pub(crate) input: usize,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) id: FileId,
    /// `id` comes from the checkpoint (false: it is new).
    pub(crate) id_saved: bool,
    pub(crate) fingerprint: Digest,
    pub(crate) offset: u64,
    pub(crate) max_line_bytes: usize,
}

impl Tailer {
    pub(crate) fn new(open: Opening, host: &str, key: &KeyStrategy) -> Tailer {
        let path_text = open.path.to_string_lossy().into_owned();
        let key = match key {
            KeyStrategy::Field(_) => None,
            other => other.key(host, &path_text, b""),
        };
        let lag = metrics::gauge!(FILE_LAG, "path" => path_text.clone());
        let record_cost = record_cost(host, &path_text, key.as_deref());
        Tailer {
            slot: open.slot,
            input: open.input,
            path_text,
            path: open.path,
            file: open.file,
            dev: open.dev,
            ino: open.ino,
            id: open.id,
            id_hex: open.id.to_hex(),
            id_saved: open.id_saved,
            fingerprint: open.fingerprint,
            splitter: LineSplitter::new(open.max_line_bytes, open.offset),
            acks: AckTracker::new(open.offset),
            size: open.offset,
            eof_guard: None,
            recent: Vec::new(),
            key,
            record_cost,
            detached: None,
            last_growth: Instant::now(),
            saved_guard: None,
            lag,
        }
    }

    /// Offset of the next byte to read.
    pub(crate) fn position(&self) -> u64 {
        self.splitter.position()
    }

    /// Everything read is sent, and the file has not grown since.
    pub(crate) fn at_eof(&self) -> bool {
        self.size <= self.position()
    }

    /// Nothing left: at the end, no unterminated line, every record acknowledged.
    pub(crate) fn finished(&self) -> bool {
        self.at_eof() && !self.splitter.has_partial() && !self.acks.waiting()
    }

    /// Checks the file's size against the read position.
    pub(crate) fn check(&mut self) -> io::Result<Change> {
        let size = self.file.metadata()?.len();
        let position = self.position();
        if size < position {
            return Ok(Change::Truncated);
        }
        if size <= self.size {
            return Ok(Change::Unchanged);
        }
        if let Some(guard) = self.eof_guard {
            if identity::digest_at(&self.file, position - guard.len, guard.len)? != Some(guard) {
                return Ok(Change::Truncated);
            }
        }
        self.size = size;
        self.last_growth = Instant::now();
        self.update_lag();
        Ok(Change::Grew)
    }

    /// Reads once into `buf` from the position and queues the complete lines.
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        sink: &Sink<'_>,
        epoch: u8,
    ) -> Result<Progress, ReadError> {
        let position = self.position();
        let n = loop {
            match self.file.read_at(buf, position) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        };
        if n == 0 {
            self.size = self.size.max(position);
            self.eof_guard = identity::guard(&self.file, position).map_err(ReadError::Io)?;
            return Ok(Progress::default());
        }
        self.eof_guard = None;
        self.size = self.size.max(position + n as u64);
        let keep = GUARD_MAX as usize;
        if n >= keep {
            self.recent.clear();
            self.recent.extend_from_slice(&buf[n - keep..n]);
        } else {
            self.recent.extend_from_slice(&buf[..n]);
            let excess = self.recent.len().saturating_sub(keep);
            self.recent.drain(..excess);
        }
        let mut splitter = std::mem::replace(&mut self.splitter, LineSplitter::new(0, 0));
        let mut progress = Progress {
            more: n == buf.len(),
            ..Progress::default()
        };
        let mut failed = None;
        let clock = Clock::now();
        splitter.feed(&buf[..n], |piece| {
            if failed.is_none() {
                if let Err(e) = self.emit(piece, sink, epoch, clock, &mut progress) {
                    failed = Some(e);
                }
            }
        });
        self.splitter = splitter;
        progress.count(sink);
        match failed {
            Some(e) => Err(ReadError::Kafka(e)),
            None => Ok(progress),
        }
    }

    /// Ships the unterminated last line: the file is gone for good and has stopped growing.
    pub(crate) fn flush_partial(
        &mut self,
        sink: &Sink<'_>,
        epoch: u8,
    ) -> Result<Progress, KafkaError> {
        let mut splitter = std::mem::replace(&mut self.splitter, LineSplitter::new(0, 0));
        let mut progress = Progress::default();
        let mut result = Ok(());
        splitter.flush(|piece| result = self.emit(piece, sink, epoch, Clock::now(), &mut progress));
        self.splitter = splitter;
        progress.count(sink);
        result.map(|()| progress)
    }

    fn emit(
        &mut self,
        piece: Piece<'_>,
        sink: &Sink<'_>,
        epoch: u8,
        clock: Clock,
        progress: &mut Progress,
    ) -> Result<(), KafkaError> {
        let line = match piece {
            Piece::Empty { end } => {
                sink.metrics.empty.increment(1);
                self.acks.skip(end);
                return Ok(());
            }
            Piece::Line(line) => line,
        };
        let mut headers = line_headers(sink.host, &self.path_text, &self.id_hex, line.offset);
        if let Some(length) = line.truncated_from {
            sink.metrics.oversized.increment(1);
            headers = headers.insert(Header {
                key: header::TRUNCATED,
                value: Some(&length.to_string()),
            });
        }
        let field_key = match sink.key {
            KeyStrategy::Field(_) => sink.key.key(sink.host, &self.path_text, line.bytes),
            _ => None,
        };
        let key = field_key.as_deref().or(self.key.as_deref());
        let bytes = line.bytes.len() as u64;
        let cost = bytes + self.record_cost + field_key.as_ref().map_or(0, |k| k.len() as u64);
        let seq = self.acks.push(line.end, bytes, cost, clock.instant);
        sink.delivery.send(Outgoing {
            topic: sink.topic,
            key,
            value: line.bytes,
            headers,
            timestamp_ms: clock.timestamp_ms,
            token: Token {
                epoch,
                slot: self.slot,
                seq,
            },
        })?;
        progress.bytes += bytes;
        progress.cost += cost;
        progress.records += 1;
        Ok(())
    }

    /// Drops everything read past the committed offset, to read it again (after a producer
    /// rebuild); returns the budget and records released.
    pub(crate) fn rewind(&mut self) -> (u64, usize) {
        let released = self.acks.rewind();
        let committed = self.acks.committed();
        self.splitter.reset(committed);
        self.eof_guard = None;
        let len = committed.min(GUARD_MAX);
        self.recent = vec![0; len as usize];
        if self
            .file
            .read_exact_at(&mut self.recent, committed - len)
            .is_err()
        {
            self.recent.clear();
        }
        released
    }

    /// Starts over at offset 0 under a new id after a truncation. The old contents' records
    /// still in flight stay with the returned tracker.
    pub(crate) fn restart(&mut self, slot: u32) -> io::Result<AckTracker> {
        let size = self.file.metadata()?.len();
        self.fingerprint = identity::fingerprint(&self.file, size)?;
        self.id = identity::new_file_id(self.dev, self.ino, self.fingerprint);
        self.id_hex = self.id.to_hex();
        self.id_saved = false;
        self.slot = slot;
        self.splitter.reset(0);
        self.size = 0;
        self.eof_guard = None;
        self.recent.clear();
        self.saved_guard = None;
        Ok(std::mem::replace(&mut self.acks, AckTracker::new(0)))
    }

    /// Whether `file` holds this tailer's contents up to the read position: the same first
    /// bytes and the same bytes just before the position (a copytruncate's copy does).
    pub(crate) fn is_copy(&self, file: &File) -> io::Result<bool> {
        let position = self.position();
        if identity::digest_at(file, 0, self.fingerprint.len)? != Some(self.fingerprint) {
            return Ok(false);
        }
        let len = self.recent.len() as u64;
        if len < position.min(GUARD_MAX) {
            return Ok(false); // nothing to compare with: do not guess
        }
        let expected = Digest {
            len,
            hash: xxhash_rust::xxh3::xxh3_64(&self.recent),
        };
        Ok(identity::digest_at(file, position - len, len)? == Some(expected))
    }

    /// Goes on reading the same contents from another file (the copy made by a copytruncate),
    /// keeping id, offsets, the unterminated line and the records in flight.
    pub(crate) fn adopt(&mut self, file: File, dev: u64, ino: u64) {
        self.file = file;
        self.dev = dev;
        self.ino = ino;
        self.eof_guard = None;
        self.saved_guard = None;
    }

    /// The checkpoint entry: the committed offset with what identifies the contents. Reads the
    /// guard bytes (and a longer fingerprint while the file is small) only when they changed.
    pub(crate) fn state(&mut self) -> io::Result<FileState> {
        let offset = self.acks.committed();
        if self.fingerprint.len < FINGERPRINT_MAX && self.size > self.fingerprint.len {
            self.fingerprint = identity::fingerprint(&self.file, self.size)?;
        }
        let guard = match self.saved_guard {
            Some((at, guard)) if at == offset => guard,
            _ => {
                let guard = identity::guard(&self.file, offset)?;
                self.saved_guard = Some((offset, guard));
                guard
            }
        };
        self.update_lag();
        Ok(FileState {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
            file: self.id,
            fingerprint: self.fingerprint,
            offset,
            guard,
        })
    }

    fn update_lag(&self) {
        self.lag
            .set(self.size.saturating_sub(self.acks.committed()) as f64);
    }

    /// Called when the tailer is closed: its lag no longer exists.
    pub(crate) fn close(&self) {
        self.lag.set(0.0);
    }
}

/// The in-flight charge of one record beyond its line: librdkafka holds a copy of the key and
/// of each header (name and value; the offset takes at most 20 digits) next to its message.
fn record_cost(host: &str, path: &str, key: Option<&[u8]>) -> u64 {
    let names: usize = [header::HOST, header::PATH, header::FILE, header::OFFSET]
        .iter()
        .map(|n| n.len())
        .sum();
    let values = host.len() + path.len() + 16 + 20;
    (names + values + key.map_or(0, <[u8]>::len)) as u64 + RECORD_OVERHEAD
}

impl Progress {
    /// Adds this read's lines to the input's counters (once per read, not per line).
    fn count(&self, sink: &Sink<'_>) {
        sink.metrics.lines_read.increment(self.records as u64);
        sink.metrics.bytes_read.increment(self.bytes);
    }
}

/// The time of one read: every line read at once gets the same CreateTime and queueing
/// instant, which saves two clock reads per line.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    timestamp_ms: i64,
}

impl Clock {
    fn now() -> Clock {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        Clock {
            instant: Instant::now(),
            timestamp_ms,
        }
    }
}

/// A tailer of the whole file at `path`, in `slot`, for input 0 (for other modules' tests).
#[cfg(test)]
pub(crate) fn open_for_test(slot: u32, path: &std::path::Path) -> Tailer {
    use std::os::unix::fs::MetadataExt;

    let file = File::open(path).unwrap();
    let meta = file.metadata().unwrap();
    let (dev, ino) = (meta.dev(), meta.ino());
    let fingerprint = identity::fingerprint(&file, meta.len()).unwrap();
    let opening = Opening {
        slot,
        input: 0,
        path: path.to_owned(),
        file,
        dev,
        ino,
        id: identity::new_file_id(dev, ino, fingerprint),
        id_saved: true,
        fingerprint,
        offset: 0,
        max_line_bytes: 1024,
    };
    Tailer::new(opening, "host", &KeyStrategy::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_offset_moves_only_over_a_contiguous_acknowledged_prefix() {
        let now = Instant::now();
        let mut acks = AckTracker::new(0);
        let a = acks.push(10, 1, 1, now);
        let b = acks.push(20, 1, 1, now);
        acks.skip(21); // an empty line after b
        acks.skip(22);
        let c = acks.push(30, 1, 1, now);
        // A later acknowledgement does not move past an earlier outstanding record.
        assert!(acks.ack(c).is_some());
        assert_eq!(acks.committed(), 0);
        assert!(acks.ack(a).is_some());
        assert_eq!(acks.committed(), 10);
        // Duplicate and unknown acknowledgements are ignored.
        assert!(acks.ack(a).is_none());
        assert!(acks.ack(b.wrapping_add(100)).is_none());
        assert!(acks.ack(b).is_some());
        assert_eq!(acks.committed(), 30);
        assert!(!acks.waiting());
        // Empty lines with nothing in flight commit at once.
        acks.skip(31);
        assert_eq!(acks.committed(), 31);
    }

    #[test]
    fn rewind_releases_the_budget_and_ignores_stale_acknowledgements() {
        let now = Instant::now();
        let mut acks = AckTracker::new(5);
        let a = acks.push(10, 100, 100, now);
        let b = acks.push(20, 50, 50, now);
        assert!(acks.ack(a).is_some());
        assert_eq!(acks.rewind(), (50, 1));
        assert_eq!(acks.committed(), 10);
        // The old producer's late report for b must not count for the record sent anew.
        assert!(acks.ack(b).is_none());
        let b2 = acks.push(20, 50, 50, now);
        assert_ne!(b2, b);
        assert!(acks.ack(b2).is_some());
        assert_eq!(acks.committed(), 20);
    }
}
