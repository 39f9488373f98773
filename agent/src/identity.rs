//! File identity: which file's contents a checkpoint or an open handle is about.
//!
//! (dev, inode) alone is not enough (inodes are reused, a copytruncate keeps the inode), and a
//! hash of the first line alone is not either (two files often start with the same header). The
//! agent keeps both, and on resume also checks the bytes just before the saved offset, so a file
//! truncated and rewritten while the agent was stopped is recognised even when it starts like
//! the old one:
//! - a *fingerprint*: hash of the first `min(size, FINGERPRINT_MAX)` bytes, with that length
//!   remembered, so a small file is read at once (unlike agents that wait for 1 KiB) and its
//!   fingerprint grows with it;
//! - a *guard*: hash of up to `GUARD_MAX` bytes just before the saved offset.
//!
//! The `lp.file` id of a file's contents is drawn when the agent first sees them and is saved in
//! the checkpoint before any record carries it. It mixes in the time it was drawn, so a new file
//! that reuses an inode, or a truncated file, never repeats an id downstream resend removal
//! has already seen.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use logpipe_core::record::FileId;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Bytes at the start of a file that identify it.
pub(crate) const FINGERPRINT_MAX: u64 = 1024;
/// Bytes before a saved offset that are checked on resume.
pub(crate) const GUARD_MAX: u64 = 64;

/// Hash of a range of a file, with the range's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    pub(crate) len: u64,
    pub(crate) hash: u64,
}

/// Hashes `len` bytes at `start`; `None` when the file is shorter than that now.
pub(crate) fn digest_at(file: &File, start: u64, len: u64) -> io::Result<Option<Digest>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], start + filled as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Digest {
        len,
        hash: xxh3_64(&buf),
    }))
}

/// The fingerprint of a file of `size` bytes (or shorter, if it shrank meanwhile).
pub(crate) fn fingerprint(file: &File, size: u64) -> io::Result<Digest> {
    let mut len = size.min(FINGERPRINT_MAX);
    loop {
        if let Some(digest) = digest_at(file, 0, len)? {
            return Ok(digest);
        }
        // Truncated between the stat and the read: take what is there.
        len = file.metadata()?.len().min(FINGERPRINT_MAX);
    }
}

/// The guard for a saved `offset`: the bytes just before it.
pub(crate) fn guard(file: &File, offset: u64) -> io::Result<Option<Digest>> {
    let len = offset.min(GUARD_MAX);
    digest_at(file, offset - len, len)
}

/// A new `lp.file` id for contents first seen now.
pub(crate) fn new_file_id(dev: u64, ino: u64, fingerprint: Digest) -> FileId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = Xxh3::new();
    for part in [
        dev,
        ino,
        fingerprint.len,
        fingerprint.hash,
        nanos as u64,
        (nanos >> 64) as u64,
    ] {
        hasher.update(&part.to_le_bytes());
    }
    FileId(hasher.digest())
}

/// What a saved position means for the file found at the same (dev, inode) now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Same contents: continue at the saved offset.
    Continue,
    /// Same start, but the file is shorter than the offset or the bytes before it changed: it
    /// was truncated (and maybe rewritten). Read it from 0 under a new id.
    Truncated,
    /// Different first bytes: another file reusing the inode. Read it from 0 under a new id.
    Replaced,
}

/// Compares a file (now `size` bytes) with what was saved about it.
pub(crate) fn check(
    file: &File,
    size: u64,
    fingerprint: Digest,
    offset: u64,
    guard: Option<Digest>,
) -> io::Result<Resume> {
    if digest_at(file, 0, fingerprint.len)? != Some(fingerprint) {
        return Ok(Resume::Replaced);
    }
    if offset > size {
        return Ok(Resume::Truncated);
    }
    if let Some(guard) = guard {
        if digest_at(file, offset - guard.len, guard.len)? != Some(guard) {
            return Ok(Resume::Truncated);
        }
    }
    Ok(Resume::Continue)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let handle = File::open(f.path()).unwrap();
        (f, handle)
    }

    #[test]
    fn small_file_fingerprint_covers_what_exists_and_grows() {
        let (mut f, handle) = file_with(b"hello\n");
        let small = fingerprint(&handle, 6).unwrap();
        assert_eq!(small.len, 6);
        f.write_all(&[b'x'; 2000]).unwrap();
        let grown = fingerprint(&handle, 2006).unwrap();
        assert_eq!(grown.len, FINGERPRINT_MAX);
        // The short fingerprint still matches the grown file's start.
        assert_eq!(
            check(&handle, 2006, small, 6, guard(&handle, 6).unwrap()).unwrap(),
            Resume::Continue
        );
    }

    #[test]
    fn resume_detects_replacement_truncation_and_rewrite() {
        let (_f, old) = file_with(b"header\nline one\nline two\n");
        // Fingerprinted when the file held only its first line.
        let fp = fingerprint(&old, 7).unwrap();
        let g = guard(&old, 16).unwrap();
        assert_eq!(check(&old, 25, fp, 16, g).unwrap(), Resume::Continue);
        // Another file with other first bytes.
        let (_f2, other) = file_with(b"HEADER\nline one\nline two\n");
        assert_eq!(check(&other, 25, fp, 16, g).unwrap(), Resume::Replaced);
        // Truncated below the offset.
        let (_f3, short) = file_with(b"header\nli");
        assert_eq!(check(&short, 9, fp, 16, g).unwrap(), Resume::Truncated);
        // Truncated and rewritten past the offset, with the same first line.
        let (_f4, rewritten) = file_with(b"header\nLINE TWO\nmore lines\n");
        assert_eq!(check(&rewritten, 27, fp, 16, g).unwrap(), Resume::Truncated);
    }

    #[test]
    fn ids_differ_for_identical_contents_seen_twice() {
        let digest = Digest { len: 5, hash: 42 };
        assert_ne!(new_file_id(1, 2, digest), new_file_id(1, 2, digest));
    }
}
