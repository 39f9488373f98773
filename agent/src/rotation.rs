//! Recognising rotations: a tailed file that left its path, the copy a copytruncate made of a
//! file before truncating it, and files rotated while the agent was stopped.
//!
//! Only what the file system says is decided here; the loop opens, detaches and counts.

use std::fs::{self, File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::FileState;
use crate::files::Key;
use crate::identity::{self, Resume};
use crate::tailer::Tailer;

/// Why the file with `key` is no longer to be read at `location` (`wanted`: an input still
/// matches the path), or `None` while it is.
pub(crate) fn departure(location: &Path, key: Key, wanted: bool) -> Option<&'static str> {
    let here = fs::metadata(location).map(|m| (m.dev(), m.ino())).ok();
    if here == Some(key) && wanted {
        return None;
    }
    Some(match (here, wanted) {
        (None, _) => "deleted or renamed away",
        (Some(_), true) => "replaced by another file (rotated)",
        (Some(_), false) => "no longer matched by the inputs",
    })
}

/// After a copytruncate of the file at `location`: the copy next to it that holds the
/// tailer's contents up to its read position, among the files not open already.
pub(crate) fn find_copy(
    location: &Path,
    tailer: &Tailer,
    is_open: impl Fn(Key) -> bool,
) -> Option<(PathBuf, File, Key)> {
    let position = tailer.position();
    files_in(location.parent()?).find_map(|(path, meta, key)| {
        if meta.len() < position || is_open(key) {
            return None;
        }
        let file = File::open(&path).ok()?;
        tailer.is_copy(&file).ok()?.then_some((path, file, key))
    })
}

/// A saved file found truncated (`truncated` is its key) at a start: the copy next to it that
/// holds the same contents past the saved offset, among the files not open already.
pub(crate) fn find_saved_copy(
    state: &FileState,
    truncated: Key,
    is_open: impl Fn(Key) -> bool,
) -> Option<(PathBuf, Key)> {
    files_in(state.path.parent()?).find_map(|(path, meta, key)| {
        if key == truncated || meta.len() <= state.offset || is_open(key) {
            return None;
        }
        let file = File::open(&path).ok()?;
        let resume = identity::check(
            &file,
            meta.len(),
            state.fingerprint,
            state.offset,
            state.guard,
        );
        matches!(resume, Ok(Resume::Continue)).then_some((path, key))
    })
}

/// Saved files found under another name next to where they were (rotated while the agent was
/// stopped): their path now, key and size.
pub(crate) fn rotated_while_stopped<'a>(
    saved: impl Iterator<Item = (Key, &'a FileState)>,
) -> Vec<(PathBuf, Key, u64)> {
    let mut by_dir: std::collections::HashMap<&Path, Vec<Key>> = Default::default();
    for (key, state) in saved {
        if let Some(dir) = state.path.parent() {
            by_dir.entry(dir).or_default().push(key);
        }
    }
    by_dir
        .into_iter()
        .flat_map(|(dir, keys)| {
            files_in(dir)
                .filter(move |(_, _, key)| keys.contains(key))
                .map(|(path, meta, key)| (path, key, meta.len()))
        })
        .collect()
}

/// The regular files directly in `dir` (symlinks followed), with their metadata and key.
fn files_in(dir: &Path) -> impl Iterator<Item = (PathBuf, Metadata, Key)> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            let key = (meta.dev(), meta.ino());
            meta.is_file().then(|| (entry.path(), meta, key))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::key_of;
    use crate::tailer::open_for_test;

    fn state_of(path: &Path, offset: u64) -> FileState {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let (dev, ino) = key_of(path);
        let fingerprint = identity::fingerprint(&file, size).unwrap();
        FileState {
            path: path.to_owned(),
            dev,
            ino,
            file: identity::new_file_id(dev, ino, fingerprint),
            fingerprint,
            offset,
            guard: identity::guard(&file, offset).unwrap(),
        }
    }

    #[test]
    fn departure_says_why_a_path_no_longer_leads_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, b"one\n").unwrap();
        let key = key_of(&path);
        assert_eq!(departure(&path, key, true), None);
        assert_eq!(
            departure(&path, key, false),
            Some("no longer matched by the inputs")
        );
        fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        assert_eq!(departure(&path, key, true), Some("deleted or renamed away"));
        fs::write(&path, b"two\n").unwrap();
        assert_eq!(
            departure(&path, key, true),
            Some("replaced by another file (rotated)")
        );
    }

    #[test]
    fn the_copy_of_a_truncated_file_is_found_next_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, b"one\ntwo\n").unwrap();
        fs::write(dir.path().join("other.log"), b"something else\n").unwrap();
        let (dev, ino) = key_of(&path);
        let tailer = open_for_test(0, &path);
        let copy = dir.path().join("a.log.1");
        fs::copy(&path, &copy).unwrap();
        fs::write(&path, b"").unwrap();
        let (found, _, key) = find_copy(&path, &tailer, |k| k == (dev, ino)).unwrap();
        assert_eq!((found, key), (copy.clone(), key_of(&copy)));
        assert!(
            find_copy(&path, &tailer, |_| true).is_none(),
            "open files are no copies"
        );
    }

    #[test]
    fn a_copy_made_while_stopped_is_found_past_the_saved_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let state = state_of(&path, 4);
        let copy = dir.path().join("a.log.1");
        fs::copy(&path, &copy).unwrap();
        fs::write(&path, b"new\n").unwrap();
        let truncated = key_of(&path);
        assert_eq!(
            find_saved_copy(&state, truncated, |_| false),
            Some((copy.clone(), key_of(&copy)))
        );
        assert_eq!(find_saved_copy(&state, truncated, |_| true), None);
        // A copy with nothing past the offset has nothing to finish.
        assert_eq!(
            find_saved_copy(&state_of(&copy, 14), truncated, |_| false),
            None
        );
    }

    #[test]
    fn files_rotated_while_stopped_are_found_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, b"one\ntwo\n").unwrap();
        let state = state_of(&path, 4);
        let key = key_of(&path);
        let rotated = dir.path().join("a.log.1");
        fs::rename(&path, &rotated).unwrap();
        fs::write(&path, b"new\n").unwrap();
        let found = rotated_while_stopped([(key, &state)].into_iter());
        assert_eq!(found, vec![(rotated, key, 8)]);
    }
}
