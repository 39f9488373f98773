//! The registry's records and the local durable log that holds them.
//!
//! Records use Confluent's `_schemas` key/value format (keys such as
//! `{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}`, a `null` value is a tombstone), so
//! the local log and a `_schemas` topic hold the same thing and one replay applies either.
//!
//! The local log is one append-only file of JSON lines `{"key":...,"value":...}`. A write is
//! acknowledged only after its lines are written and `fdatasync`ed, so an acknowledged write
//! survives kill -9 and power loss. A crash can leave only a partial last line (appends are
//! sequential); replay drops and truncates it. Any other unreadable line is corruption and stops
//! start-up with its line number rather than serving a registry with holes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compat::Level;
use crate::schema::{Reference, SchemaType};

/// A `_schemas` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Key {
    Schema { subject: String, version: u32, magic: u8 },
    Config { subject: Option<String>, magic: u8 },
    Mode { subject: Option<String>, magic: u8 },
    Noop { magic: u8 },
    DeleteSubject { subject: String, magic: u8 },
    ClearSubject { subject: String, magic: u8 },
}

/// The value of a SCHEMA key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    #[serde(default = "avro", skip_serializing_if = "SchemaType::is_avro")]
    pub schema_type: SchemaType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

fn avro() -> SchemaType {
    SchemaType::Avro
}

/// The value of a CONFIG key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    pub compatibility_level: Level,
}

/// Registry modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    Readwrite,
    Readonly,
    Import,
}

impl Mode {
    /// Case-insensitive, like compatibility levels.
    pub fn parse(text: &str) -> Option<Mode> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }
}

/// The value of a MODE key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeValue {
    pub mode: Mode,
}

/// The value of a DELETE_SUBJECT key: every version up to `version` is soft-deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubjectValue {
    pub subject: String,
    pub version: u32,
}

/// One key/value record; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: Key,
    pub value: Option<serde_json::Value>,
}

impl Record {
    pub fn schema(value: SchemaValue) -> Record {
        let key = Key::Schema { subject: value.subject.clone(), version: value.version, magic: 1 };
        Record { key, value: Some(serde_json::to_value(value).expect("schema value serializes")) }
    }

    pub fn tombstone(key: Key) -> Record {
        Record { key, value: None }
    }
}

/// The local append-only log file.
#[derive(Debug)]
pub struct LocalLog {
    file: File,
    path: PathBuf,
}

/// The log's file name inside the storage directory.
pub const LOG_FILE: &str = "schemas.log";

impl LocalLog {
    /// Opens (creating if needed) the log in `dir` and returns it with every record in it, in
    /// order. A partial last line from a crash is truncated away.
    pub fn open(dir: &Path) -> anyhow::Result<(LocalLog, Vec<Record>)> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create storage directory {}: {e}", dir.display()))?;
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        if !existed {
            // The new file's directory entry must be durable too, or a power loss can lose the
            // whole log after a write was acknowledged.
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", dir.display()))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(path = %path.display(), bytes = bytes.len() - complete, "dropping a partial last record left by a crash");
            file.set_len(complete as u64)?;
            file.sync_all()?;
            file.seek(SeekFrom::End(0))?;
        }
        let mut records = Vec::new();
        for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let record: Record = serde_json::from_slice(line)
                .map_err(|e| anyhow::anyhow!("{} line {} is corrupt ({e}); refusing to start with a damaged registry", path.display(), n + 1))?;
            records.push(record);
        }
        Ok((LocalLog { file, path }, records))
    }

    /// Appends records and waits until they are on stable storage.
    pub fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buffer = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buffer, record).map_err(std::io::Error::other)?;
            buffer.push(b'\n');
        }
        self.file.write_all(&buffer)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(level: Level) -> Record {
        Record { key: Key::Config { subject: None, magic: 0 }, value: Some(serde_json::to_value(ConfigValue { compatibility_level: level }).unwrap()) }
    }

    #[test]
    fn keys_use_confluent_field_order() {
        let key = Key::Schema { subject: "s".into(), version: 1, magic: 1 };
        assert_eq!(serde_json::to_string(&key).unwrap(), r#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#);
        let key = Key::Config { subject: None, magic: 0 };
        assert_eq!(serde_json::to_string(&key).unwrap(), r#"{"keytype":"CONFIG","subject":null,"magic":0}"#);
        assert_eq!(serde_json::to_string(&ConfigValue { compatibility_level: Level::Full }).unwrap(), r#"{"compatibilityLevel":"FULL"}"#);
    }

    #[test]
    fn appended_records_replay_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = LocalLog::open(dir.path()).unwrap();
        assert!(records.is_empty());
        log.append(&[config(Level::Full), config(Level::None)]).unwrap();
        drop(log);
        // A crash in the middle of a write leaves a partial line.
        let path = dir.path().join(LOG_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"key":{"keytype":"CONF"#).unwrap();
        drop(file);
        let (mut log, records) = LocalLog::open(dir.path()).unwrap();
        assert_eq!(records, vec![config(Level::Full), config(Level::None)]);
        log.append(&[config(Level::Forward)]).unwrap();
        let (_, records) = LocalLog::open(dir.path()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2], config(Level::Forward));
    }

    #[test]
    fn corruption_inside_the_log_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), "garbage\n{}\n").unwrap();
        let err = LocalLog::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1 is corrupt"), "{err}");
    }
}
