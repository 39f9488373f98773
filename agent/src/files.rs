//! The agent's file table: every open file by slot, path and inode, the trackers of truncated
//! contents still waiting for reports, the checkpoint entries without an open file, and the
//! paths that failed to open.
//!
//! These views must change together (a tailer moved to another slot or path but still found
//! under the old one would be read twice or never closed), so only this module touches them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use logpipe_core::record::FileId;

use crate::checkpoint::FileState;
use crate::delivery::Token;
use crate::tailer::{AckTracker, Acked, Tailer};

/// What identifies a file on this machine: (device, inode).
pub(crate) type Key = (u64, u64);

/// The open files and what is remembered about the others.
#[derive(Default)]
pub(crate) struct FileTable {
    tailers: HashMap<u32, Tailer>,
    /// Where each attached file is now (the path it was last seen under) => slot. A detached
    /// file is no longer here, so a new file at its path is picked up.
    locations: HashMap<PathBuf, u32>,
    /// The last location of each tailer, kept after it is detached.
    location_of: HashMap<u32, PathBuf>,
    by_inode: HashMap<Key, u32>,
    /// Trackers of contents that were truncated away, waiting for their last reports, with
    /// the input they were read for.
    retired: HashMap<u32, (usize, AckTracker)>,
    /// Checkpoint entries without an open file (not found yet, or no longer matched).
    saved: HashMap<Key, FileState>,
    /// Paths that could not be opened, with the error, so it is logged once.
    failed: HashMap<PathBuf, String>,
    next_slot: u32,
}

impl FileTable {
    /// A table with the checkpoint's entries and no open file.
    pub(crate) fn new(saved: Vec<FileState>) -> FileTable {
        FileTable {
            saved: saved.into_iter().map(|f| ((f.dev, f.ino), f)).collect(),
            ..FileTable::default()
        }
    }

    /// A slot no tailer and no retired tracker uses (slots wrap at [`Token::MAX_SLOT`]).
    pub(crate) fn alloc_slot(&mut self) -> u32 {
        loop {
            let slot = self.next_slot;
            self.next_slot = (self.next_slot + 1) & Token::MAX_SLOT;
            if !self.tailers.contains_key(&slot) && !self.retired.contains_key(&slot) {
                return slot;
            }
        }
    }

    /// Adds a tailer opened at `location` (its slot from [`FileTable::alloc_slot`]).
    pub(crate) fn insert(&mut self, tailer: Tailer, location: PathBuf) {
        let slot = tailer.slot;
        self.by_inode.insert((tailer.dev, tailer.ino), slot);
        self.locations.insert(location.clone(), slot);
        self.location_of.insert(slot, location);
        self.tailers.insert(slot, tailer);
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Tailer> {
        self.tailers.get(&slot)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Tailer> {
        self.tailers.get_mut(&slot)
    }

    /// The slot of the attached file at `path`.
    pub(crate) fn at(&self, path: &Path) -> Option<u32> {
        self.locations.get(path).copied()
    }

    /// The slot of the open file with this key.
    pub(crate) fn by_key(&self, key: Key) -> Option<u32> {
        self.by_inode.get(&key).copied()
    }

    /// Where the file of `slot` was last seen.
    pub(crate) fn location(&self, slot: u32) -> Option<&Path> {
        self.location_of.get(&slot).map(PathBuf::as_path)
    }

    pub(crate) fn len(&self) -> usize {
        self.tailers.len()
    }

    pub(crate) fn slots(&self) -> Vec<u32> {
        self.tailers.keys().copied().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Tailer)> {
        self.tailers.iter().map(|(slot, tailer)| (*slot, tailer))
    }

    /// Detached files, oldest first.
    pub(crate) fn detached(&self) -> Vec<(Instant, u32)> {
        let mut detached: Vec<(Instant, u32)> = self
            .tailers
            .iter()
            .filter_map(|(s, t)| t.detached.map(|at| (at, *s)))
            .collect();
        detached.sort();
        detached
    }

    /// An open file was found under another path (renamed): it is known there from now on,
    /// and attached again.
    pub(crate) fn relocate(&mut self, slot: u32, path: PathBuf) {
        if let Some(old) = self.location_of.insert(slot, path.clone()) {
            self.locations.remove(&old);
        }
        self.locations.insert(path, slot);
        if let Some(tailer) = self.tailers.get_mut(&slot) {
            tailer.detached = None;
        }
    }

    /// The file of `slot` left its path (rotated, deleted, no longer matched): it is read to
    /// its end, and its path is free for a new file.
    pub(crate) fn detach(&mut self, slot: u32) {
        if let Some(location) = self.location_of.get(&slot) {
            self.locations.remove(location);
        }
        if let Some(tailer) = self.tailers.get_mut(&slot) {
            tailer.detached = Some(Instant::now());
        }
    }

    /// The contents of `slot` continue in `file` at `path` (a copytruncate's copy): the
    /// tailer reads them there, detached, and its old path is free for the truncated file.
    pub(crate) fn move_to_copy(&mut self, slot: u32, path: PathBuf, file: fs::File, key: Key) {
        let Some(tailer) = self.tailers.get_mut(&slot) else {
            return;
        };
        self.by_inode.remove(&(tailer.dev, tailer.ino));
        tailer.adopt(file, key.0, key.1);
        tailer.detached = Some(Instant::now());
        self.by_inode.insert(key, slot);
        if let Some(old) = self.location_of.insert(slot, path.clone()) {
            self.locations.remove(&old);
        }
        self.locations.insert(path, slot);
    }

    /// Reads a truncated file again from the start under a new slot and id. The old contents'
    /// records in flight keep their tracker under the old slot until their reports are in.
    /// `None` when the slot is not open; else the tailer, and whether it could restart.
    pub(crate) fn restart(&mut self, slot: u32) -> Option<(io::Result<()>, &Tailer)> {
        let new_slot = self.alloc_slot();
        let mut tailer = self.tailers.remove(&slot)?;
        let result = tailer.restart(new_slot).map(|old| {
            if old.waiting() {
                self.retired.insert(slot, (tailer.input, old));
            }
        });
        let slot_now = tailer.slot;
        if let Some(location) = self.location_of.remove(&slot) {
            self.locations.insert(location.clone(), slot_now);
            self.location_of.insert(slot_now, location);
        }
        self.by_inode.insert((tailer.dev, tailer.ino), slot_now);
        self.tailers.insert(slot_now, tailer);
        Some((result, &self.tailers[&slot_now]))
    }

    /// Applies a delivery report: the input the record was read for, and what it acknowledged
    /// (nothing new when it does not move the committed offset). `None` for a closed file.
    pub(crate) fn ack(&mut self, slot: u32, seq: u32) -> Option<(usize, Option<Acked>)> {
        if let Some(tailer) = self.tailers.get_mut(&slot) {
            return Some((tailer.input, tailer.acks.ack(seq)));
        }
        let (input, tracker) = self.retired.get_mut(&slot)?;
        let acked = tracker.ack(seq);
        let input = *input;
        if !tracker.waiting() {
            self.retired.remove(&slot);
        }
        Some((input, acked))
    }

    /// Closes a tailer; returns the budget and records its unacknowledged records held. If its
    /// file is still where it was found (an input no longer matches it), its position is kept
    /// so a later reload that matches it again resumes there.
    pub(crate) fn close(&mut self, slot: u32) -> Option<(u64, usize)> {
        let mut tailer = self.tailers.remove(&slot)?;
        let released = tailer.rewind();
        self.by_inode.remove(&(tailer.dev, tailer.ino));
        if let Some(location) = self.location_of.remove(&slot) {
            if self.locations.get(&location) == Some(&slot) {
                self.locations.remove(&location);
            }
            // Only a file still at the path it was found under (not a rotated one) is kept.
            if location == tailer.path && holds(&location, (tailer.dev, tailer.ino)) {
                if let Ok(state) = tailer.state() {
                    self.saved.insert((tailer.dev, tailer.ino), state);
                }
            }
        }
        tailer.close();
        Some(released)
    }

    /// After a producer rebuild: every file goes back to its committed offset, and the reports
    /// retired trackers wait for will never come.
    pub(crate) fn rewind_all(&mut self) {
        for tailer in self.tailers.values_mut() {
            tailer.rewind();
        }
        self.retired.clear();
    }

    /// After a reload: each file's input is the first that matches where it is now. A file no
    /// input matches keeps one (the sweep finishes and closes it); `inputs` is at least 1.
    pub(crate) fn reassign_inputs(
        &mut self,
        input_for: impl Fn(&Path) -> Option<usize>,
        inputs: usize,
    ) {
        let last = inputs - 1;
        for (slot, tailer) in self.tailers.iter_mut() {
            let location = self.location_of.get(slot).unwrap_or(&tailer.path);
            tailer.input = input_for(location).unwrap_or(tailer.input.min(last));
        }
        self.retired
            .values_mut()
            .for_each(|(input, _)| *input = (*input).min(last));
    }

    /// The saved entry of a file found at `path` with `key`: by key, or else by path and inode
    /// (the device id can change across a remount, beats#13314; the contents checks decide).
    pub(crate) fn take_saved(&mut self, path: &Path, key: Key) -> Option<FileState> {
        if let Some(state) = self.saved.remove(&key) {
            return Some(state);
        }
        let key = self
            .saved
            .iter()
            .find(|(_, s)| s.path == path && s.ino == key.1)
            .map(|(k, _)| *k)?;
        self.saved.remove(&key)
    }

    pub(crate) fn save(&mut self, key: Key, state: FileState) {
        self.saved.insert(key, state);
    }

    pub(crate) fn saved(&self, key: Key) -> Option<&FileState> {
        self.saved.get(&key)
    }

    pub(crate) fn saved_entries(&self) -> impl Iterator<Item = (Key, &FileState)> {
        self.saved.iter().map(|(key, state)| (*key, state))
    }

    /// Saved entries whose file is gone (or is now another file) are forgotten.
    pub(crate) fn forget_gone(&mut self) {
        self.saved.retain(|key, state| holds(&state.path, *key));
    }

    /// Every checkpoint entry: the saved ones and one per open file.
    pub(crate) fn states(&mut self) -> Vec<FileState> {
        let mut files: Vec<FileState> = self.saved.values().cloned().collect();
        for tailer in self.tailers.values_mut() {
            match tailer.state() {
                Ok(state) => files.push(state),
                Err(e) => tracing::warn!("cannot checkpoint {}: {e}", tailer.path.display()),
            }
        }
        files
    }

    /// A checkpoint holding `files` is on disk: the open files among them may send.
    pub(crate) fn ids_saved(&mut self, files: &[FileState]) {
        let saved: HashSet<FileId> = files.iter().map(|f| f.file).collect();
        for tailer in self.tailers.values_mut() {
            tailer.id_saved |= saved.contains(&tailer.id);
        }
    }

    /// Records that `path` failed to open with `error`; true when that is news (to log).
    pub(crate) fn open_failed(&mut self, path: PathBuf, error: String) -> bool {
        if self.failed.get(&path) == Some(&error) {
            return false;
        }
        self.failed.insert(path, error);
        true
    }

    /// `path` opened: a later failure is news again.
    pub(crate) fn opened(&mut self, path: &Path) {
        self.failed.remove(path);
    }
}

/// Whether `path` is the file with this key.
pub(crate) fn holds(path: &Path, key: Key) -> bool {
    fs::metadata(path)
        .map(|m| (m.dev(), m.ino()) == key)
        .unwrap_or(false)
}

/// The key of the file at `path`.
#[cfg(test)]
pub(crate) fn key_of(path: &Path) -> Key {
    let meta = fs::metadata(path).unwrap();
    (meta.dev(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tailer::open_for_test;

    /// A table with `a.log` open; returns its slot.
    fn open_one(dir: &Path, table: &mut FileTable) -> (PathBuf, u32) {
        let path = dir.join("a.log");
        fs::write(&path, b"one\ntwo\n").unwrap();
        let slot = table.alloc_slot();
        table.insert(open_for_test(slot, &path), path.clone());
        (path, slot)
    }

    #[test]
    fn an_inserted_file_is_found_by_slot_path_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        assert_eq!(table.at(&path), Some(slot));
        assert_eq!(table.by_key(key_of(&path)), Some(slot));
        assert_eq!(table.location(slot), Some(path.as_path()));
        assert_eq!(table.get(slot).unwrap().path, path);
        assert_eq!(table.len(), 1);
        assert_ne!(
            table.alloc_slot(),
            slot,
            "a used slot is not handed out again"
        );
    }

    #[test]
    fn a_renamed_file_is_known_under_its_new_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        table.detach(slot);
        assert_eq!(table.at(&path), None, "a detached file frees its path");
        assert!(table.get(slot).unwrap().detached.is_some());
        assert_eq!(table.detached().len(), 1);
        let moved = dir.path().join("a.log.1");
        table.relocate(slot, moved.clone());
        assert_eq!(table.at(&path), None);
        assert_eq!(table.at(&moved), Some(slot));
        assert_eq!(table.location(slot), Some(moved.as_path()));
        assert!(
            table.get(slot).unwrap().detached.is_none(),
            "found again: attached"
        );
    }

    #[test]
    fn following_a_copy_frees_the_path_and_rekeys_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        let copy = dir.path().join("a.log.1");
        fs::copy(&path, &copy).unwrap();
        let file = fs::File::open(&copy).unwrap();
        table.move_to_copy(slot, copy.clone(), file, key_of(&copy));
        assert_eq!(table.at(&path), None);
        assert_eq!(table.at(&copy), Some(slot));
        assert_eq!(table.by_key(key_of(&path)), None);
        assert_eq!(table.by_key(key_of(&copy)), Some(slot));
        assert!(table.get(slot).unwrap().detached.is_some());
    }

    #[test]
    fn a_restart_moves_the_file_to_a_new_slot_and_retires_the_old_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        let seq = table
            .get_mut(slot)
            .unwrap()
            .acks
            .push(4, 3, 10, Instant::now());
        let (result, tailer) = table.restart(slot).unwrap();
        result.unwrap();
        let new_slot = tailer.slot;
        assert_ne!(new_slot, slot);
        assert_eq!(table.at(&path), Some(new_slot));
        assert_eq!(table.by_key(key_of(&path)), Some(new_slot));
        assert!(table.get(slot).is_none());
        // The old contents' report still counts, under the old slot, once.
        let (input, acked) = table.ack(slot, seq).unwrap();
        assert_eq!(input, 0);
        assert_eq!(acked.unwrap().bytes, 3);
        assert!(
            table.ack(slot, seq).is_none(),
            "the retired tracker is gone"
        );
        assert!(table.restart(slot).is_none());
    }

    #[test]
    fn closing_keeps_the_position_of_a_file_still_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        let tailer = table.get_mut(slot).unwrap();
        let seq = tailer.acks.push(4, 3, 10, Instant::now());
        tailer.acks.push(8, 3, 10, Instant::now());
        table.ack(slot, seq).unwrap();
        // The unacknowledged record's budget comes back.
        assert_eq!(table.close(slot), Some((10, 1)));
        assert_eq!(table.len(), 0);
        assert_eq!(table.at(&path), None);
        assert_eq!(table.by_key(key_of(&path)), None);
        assert!(table.ack(slot, seq).is_none());
        let saved = table.take_saved(&path, key_of(&path)).unwrap();
        assert_eq!(saved.offset, 4);
        assert_eq!(table.close(slot), None);
    }

    #[test]
    fn closing_a_rotated_file_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        let moved = dir.path().join("a.log.1");
        fs::rename(&path, &moved).unwrap();
        table.relocate(slot, moved.clone());
        table.close(slot).unwrap();
        assert_eq!(table.states(), Vec::new());
    }

    #[test]
    fn saved_entries_are_found_by_key_or_by_path_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (path, slot) = open_one(dir.path(), &mut table);
        let state = table.get_mut(slot).unwrap().state().unwrap();
        let (dev, ino) = key_of(&path);
        table.close(slot).unwrap();
        let remounted = (dev + 1, ino);
        let mut table = FileTable::new(vec![FileState {
            dev: remounted.0,
            ..state.clone()
        }]);
        assert!(table.saved(remounted).is_some());
        assert_eq!(
            table.take_saved(&path, (dev, ino)).unwrap().dev,
            remounted.0
        );
        assert!(table.take_saved(&path, (dev, ino)).is_none(), "taken once");
        table.save((dev, ino), state);
        assert_eq!(table.saved_entries().count(), 1);
        table.forget_gone();
        assert_eq!(table.saved_entries().count(), 1, "the file is still there");
        fs::remove_file(&path).unwrap();
        table.forget_gone();
        assert_eq!(table.saved_entries().count(), 0);
    }

    #[test]
    fn an_open_failure_is_news_once_per_error() {
        let mut table = FileTable::default();
        let path = PathBuf::from("/nonexistent/a.log");
        assert!(table.open_failed(path.clone(), "denied".into()));
        assert!(!table.open_failed(path.clone(), "denied".into()));
        assert!(table.open_failed(path.clone(), "gone".into()));
        table.opened(&path);
        assert!(table.open_failed(path, "gone".into()));
    }

    #[test]
    fn a_reload_reassigns_inputs_by_location() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = FileTable::default();
        let (_, slot) = open_one(dir.path(), &mut table);
        table.reassign_inputs(|_| Some(2), 3);
        assert_eq!(table.get(slot).unwrap().input, 2);
        table.reassign_inputs(|_| None, 2);
        assert_eq!(table.get(slot).unwrap().input, 1, "kept, within the inputs");
    }
}
