//! Crash-safe checkpoints: for every tracked file, the highest contiguous offset Kafka has
//! acknowledged, with what identifies the file's contents.
//!
//! Written as JSON to a temporary file, fsynced, renamed over `checkpoints.json`, and the
//! directory fsynced, so after a crash (or power loss) the file is either the old or the new
//! version, never empty or half-written. A file that is corrupt anyway (disk error, an operator's
//! edit) is moved aside and logged; the agent then starts as on a first start.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use logpipe_core::record::FileId;
use serde::{Deserialize, Serialize};

use crate::identity::Digest;

const FILE_NAME: &str = "checkpoints.json";
const TEMP_NAME: &str = "checkpoints.json.tmp";
const CORRUPT_NAME: &str = "checkpoints.json.corrupt";
const VERSION: u32 = 1;

/// What the agent knows about one file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileState {
    /// The path the file was found under.
    pub(crate) path: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// The `lp.file` id, as in the header.
    #[serde(with = "hex_id")]
    pub(crate) file: FileId,
    pub(crate) fingerprint: Digest,
    /// Every line before this offset is acknowledged by Kafka.
    pub(crate) offset: u64,
    /// The bytes just before `offset`.
    pub(crate) guard: Option<Digest>,
}

/// The whole checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Checkpoint {
    pub(crate) version: u32,
    pub(crate) files: Vec<FileState>,
}

/// Result of reading the checkpoint at start-up.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// No checkpoint: the first start (`start_at` applies).
    Missing,
    /// Unreadable or corrupt: moved aside, the agent starts as on a first start.
    Corrupt(String),
    Found(Checkpoint),
}

/// Reads `dir/checkpoints.json`.
pub(crate) fn load(dir: &Path) -> Loaded {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Corrupt(format!("cannot read {}: {e}", path.display())),
    };
    match serde_json::from_slice::<Checkpoint>(&bytes) {
        Ok(checkpoint) if checkpoint.version == VERSION => Loaded::Found(checkpoint),
        Ok(checkpoint) => Loaded::Corrupt(format!(
            "{} has unknown version {}",
            path.display(),
            checkpoint.version
        )),
        Err(e) => {
            let aside = dir.join(CORRUPT_NAME);
            let moved = match fs::rename(&path, &aside) {
                Ok(()) => format!("moved to {}", aside.display()),
                Err(e) => format!("could not be moved aside: {e}"),
            };
            Loaded::Corrupt(format!(
                "{} is not a valid checkpoint ({e}); {moved}",
                path.display()
            ))
        }
    }
}

/// Writes the checkpoint atomically and durably.
pub(crate) fn store(dir: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    let temp = dir.join(TEMP_NAME);
    let bytes = serde_json::to_vec(checkpoint).map_err(io::Error::other)?;
    let written = File::create(&temp).and_then(|mut file| {
        file.write_all(&bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // A full disk: do not keep the part that fitted, it is space the next try needs.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fs::rename(&temp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()
}

impl Checkpoint {
    pub(crate) fn new(files: Vec<FileState>) -> Self {
        Checkpoint {
            version: VERSION,
            files,
        }
    }
}

mod hex_id {
    use logpipe_core::record::FileId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(id: &FileId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FileId, D::Error> {
        let text = String::deserialize(d)?;
        FileId::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid file id {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint::new(vec![FileState {
            path: "/var/log/a.log".into(),
            dev: 1,
            ino: 2,
            file: FileId(0xabc),
            fingerprint: Digest { len: 10, hash: 7 },
            offset: 100,
            guard: Some(Digest { len: 64, hash: 9 }),
        }])
    }

    #[test]
    fn round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Loaded::Missing));
        store(dir.path(), &sample()).unwrap();
        match load(dir.path()) {
            Loaded::Found(c) => assert_eq!(c, sample()),
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join(TEMP_NAME).exists());
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"0000000000000abc\""), "{text}");
    }

    #[test]
    fn corrupt_file_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            b"{\"version\":1,\"files\":[{\"pa",
        )
        .unwrap();
        match load(dir.path()) {
            Loaded::Corrupt(reason) => {
                assert!(reason.contains("not a valid checkpoint"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(dir.path().join(CORRUPT_NAME).exists());
        assert!(matches!(load(dir.path()), Loaded::Missing));
    }
}
