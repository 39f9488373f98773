//! The registry's records and the local durable log that holds them.
//!
//! Records use Confluent's `_schemas` key/value format (keys such as
//! `{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}`, a `null` value is a tombstone), so
//! the local log and a `_schemas` topic hold the same thing and one replay applies either.
//!
//! In a `_schemas` topic a record is exactly that key and value as compact JSON bytes
//! ([`Record::to_kafka`], [`Record::from_kafka`]); key bytes matter, because compaction keeps the
//! last record per byte-identical key, so keys keep Confluent's field order.
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
pub(crate) enum Key {
    Schema {
        subject: String,
        version: u32,
        magic: u8,
    },
    Config {
        subject: Option<String>,
        magic: u8,
    },
    Mode {
        subject: Option<String>,
        magic: u8,
    },
    Noop {
        magic: u8,
    },
    DeleteSubject {
        subject: String,
        magic: u8,
    },
    ClearSubject {
        subject: String,
        magic: u8,
    },
}

/// The value of a SCHEMA key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SchemaValue {
    pub(crate) subject: String,
    pub(crate) version: u32,
    pub(crate) id: u32,
    #[serde(default = "avro", skip_serializing_if = "SchemaType::is_avro")]
    pub(crate) schema_type: SchemaType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) references: Vec<Reference>,
    pub(crate) schema: String,
    #[serde(default)]
    pub(crate) deleted: bool,
}

fn avro() -> SchemaType {
    SchemaType::Avro
}

/// The value of a CONFIG key. Confluent may write one without a level (when only its other
/// settings, which this store ignores, are set): that means "no level here".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) compatibility_level: Option<Level>,
}

/// Registry modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Mode {
    Readwrite,
    Readonly,
    Import,
}

impl Mode {
    /// Case-insensitive, like compatibility levels.
    pub(crate) fn parse(text: &str) -> Option<Mode> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }
}

/// The value of a MODE key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModeValue {
    pub(crate) mode: Mode,
}

/// The value of a DELETE_SUBJECT key: every version up to `version` is soft-deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeleteSubjectValue {
    pub(crate) subject: String,
    pub(crate) version: u32,
}

/// One key/value record; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) key: Key,
    pub(crate) value: Option<serde_json::Value>,
}

impl Record {
    pub(crate) fn schema(value: SchemaValue) -> Record {
        let key = Key::Schema {
            subject: value.subject.clone(),
            version: value.version,
            magic: 1,
        };
        Record {
            key,
            value: Some(serde_json::to_value(value).expect("schema value serializes")),
        }
    }

    pub(crate) fn tombstone(key: Key) -> Record {
        Record { key, value: None }
    }

    /// The record as Confluent writes it to `_schemas`: compact JSON key bytes and JSON value
    /// bytes, or no value for a tombstone.
    pub(crate) fn to_kafka(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let key = serde_json::to_vec(&self.key).expect("keys serialize");
        let value = self
            .value
            .as_ref()
            .map(|v| serde_json::to_vec(v).expect("values serialize"));
        (key, value)
    }

    /// Reads a `_schemas` record written by this store, Confluent or Karapace. `Ok(None)` for a
    /// key type this store has no use for (Confluent's `CONTEXT`, newer types): it is skipped,
    /// as Confluent skips what it does not know, instead of stopping the replay.
    pub(crate) fn from_kafka(key: &[u8], value: Option<&[u8]>) -> Result<Option<Record>, String> {
        let key: serde_json::Value =
            serde_json::from_slice(key).map_err(|e| format!("key is not JSON: {e}"))?;
        let known = [
            "SCHEMA",
            "CONFIG",
            "MODE",
            "NOOP",
            "DELETE_SUBJECT",
            "CLEAR_SUBJECT",
        ];
        if !key["keytype"].as_str().is_some_and(|t| known.contains(&t)) {
            return Ok(None);
        }
        let key: Key = serde_json::from_value(key).map_err(|e| format!("bad key: {e}"))?;
        let value = match value {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(bytes)
                    .map_err(|e| format!("value of {key:?} is not JSON: {e}"))?,
            ),
        };
        Ok(Some(Record { key, value }))
    }
}

/// The local append-only log file.
#[derive(Debug)]
pub(crate) struct LocalLog {
    file: File,
    path: PathBuf,
}

/// The log's file name inside the storage directory.
pub(crate) const LOG_FILE: &str = "schemas.log";

impl LocalLog {
    /// Opens (creating if needed) the log in `dir` and returns it with every record in it, in
    /// order. A partial last line from a crash is truncated away.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<(LocalLog, Vec<Record>)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create storage directory {}: {e}", dir.display())
        })?;
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
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", dir.display()))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
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
            let record: Record = serde_json::from_slice(line).map_err(|e| {
                anyhow::anyhow!(
                    "{} line {} is corrupt ({e}); refusing to start with a damaged registry",
                    path.display(),
                    n + 1
                )
            })?;
            records.push(record);
        }
        Ok((LocalLog { file, path }, records))
    }

    /// Appends records and waits until they are on stable storage. On error (a full disk) the
    /// log is cut back to where it was: the part that fitted would otherwise sit before the next
    /// write's records as a corrupt line, and the failed write must not come back at a restart.
    pub(crate) fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buffer = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buffer, record).map_err(std::io::Error::other)?;
            buffer.push(b'\n');
        }
        let len = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = self.file.set_len(len).and_then(|()| self.file.sync_data()) {
                tracing::error!(
                    path = %self.path.display(),
                    "cannot cut a failed write back out of the log ({cut}): the next start will refuse it"
                );
            }
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(level: Level) -> Record {
        Record {
            key: Key::Config {
                subject: None,
                magic: 0,
            },
            value: Some(
                serde_json::to_value(ConfigValue {
                    compatibility_level: Some(level),
                })
                .unwrap(),
            ),
        }
    }

    #[test]
    fn keys_use_confluent_field_order() {
        let key = Key::Schema {
            subject: "s".into(),
            version: 1,
            magic: 1,
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#
        );
        let key = Key::Config {
            subject: None,
            magic: 0,
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            serde_json::to_string(&ConfigValue {
                compatibility_level: Some(Level::Full)
            })
            .unwrap(),
            r#"{"compatibilityLevel":"FULL"}"#
        );
    }

    fn kafka_key(record: &Record) -> String {
        String::from_utf8(record.to_kafka().0).unwrap()
    }

    #[test]
    fn kafka_keys_are_byte_identical_to_confluents() {
        // Compaction keeps the last record per byte-identical key, so a tombstone this store
        // writes must match the key Confluent wrote, byte for byte.
        let cases = [
            (
                Key::Schema {
                    subject: "s".into(),
                    version: 3,
                    magic: 1,
                },
                r#"{"keytype":"SCHEMA","subject":"s","version":3,"magic":1}"#,
            ),
            (
                Key::Config {
                    subject: None,
                    magic: 0,
                },
                r#"{"keytype":"CONFIG","subject":null,"magic":0}"#,
            ),
            (
                Key::Config {
                    subject: Some("s".into()),
                    magic: 0,
                },
                r#"{"keytype":"CONFIG","subject":"s","magic":0}"#,
            ),
            (
                Key::Mode {
                    subject: None,
                    magic: 0,
                },
                r#"{"keytype":"MODE","subject":null,"magic":0}"#,
            ),
            (Key::Noop { magic: 0 }, r#"{"keytype":"NOOP","magic":0}"#),
            (
                Key::DeleteSubject {
                    subject: "s".into(),
                    magic: 0,
                },
                r#"{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}"#,
            ),
            (
                Key::ClearSubject {
                    subject: "s".into(),
                    magic: 0,
                },
                r#"{"keytype":"CLEAR_SUBJECT","subject":"s","magic":0}"#,
            ),
        ];
        for (key, bytes) in cases {
            let record = Record::tombstone(key);
            assert_eq!(kafka_key(&record), bytes);
            assert_eq!(record.to_kafka().1, None, "a tombstone has no value");
            assert_eq!(
                Record::from_kafka(bytes.as_bytes(), None).unwrap(),
                Some(record)
            );
        }
    }

    #[test]
    fn kafka_values_round_trip_and_read_confluents_extra_fields() {
        let value = SchemaValue {
            subject: "orders-value".into(),
            version: 2,
            id: 7,
            schema_type: SchemaType::Json,
            references: vec![Reference {
                name: "a.json".into(),
                subject: "a".into(),
                version: 1,
            }],
            schema: r#"{"type":"object"}"#.into(),
            deleted: false,
        };
        let record = Record::schema(value.clone());
        let (key, bytes) = record.to_kafka();
        let back = Record::from_kafka(&key, bytes.as_deref()).unwrap().unwrap();
        assert_eq!(back, record);
        // A value as a recent Confluent writes it: AVRO without schemaType, plus fields this
        // store does not use (md5, metadata, ruleSet), all ignored.
        let confluent = br#"{"subject":"t-value","version":1,"id":1,"md5":"abc","metadata":null,"ruleSet":null,"schema":"\"string\"","deleted":false}"#;
        let record = Record::from_kafka(
            br#"{"keytype":"SCHEMA","subject":"t-value","version":1,"magic":1}"#,
            Some(confluent),
        )
        .unwrap()
        .unwrap();
        let parsed: SchemaValue = serde_json::from_value(record.value.unwrap()).unwrap();
        assert_eq!(
            (
                parsed.id,
                parsed.version,
                parsed.schema_type,
                parsed.schema.as_str()
            ),
            (1, 1, SchemaType::Avro, r#""string""#)
        );
        // A config record with only settings this store ignores has no level.
        let config = Record::from_kafka(
            br#"{"keytype":"CONFIG","subject":"x","magic":0}"#,
            Some(br#"{"normalize":true}"#),
        )
        .unwrap()
        .unwrap();
        let parsed: ConfigValue = serde_json::from_value(config.value.unwrap()).unwrap();
        assert_eq!(parsed.compatibility_level, None);
    }

    #[test]
    fn unknown_kafka_key_types_are_skipped_and_garbage_is_an_error() {
        assert_eq!(
            Record::from_kafka(
                br#"{"keytype":"CONTEXT","tenant":"t","context":".","magic":0}"#,
                Some(b"{}")
            )
            .unwrap(),
            None
        );
        assert!(Record::from_kafka(b"not json", None).is_err());
        assert!(
            Record::from_kafka(br#"{"keytype":"SCHEMA","subject":"s","magic":1}"#, None).is_err(),
            "a SCHEMA key needs a version"
        );
        assert!(Record::from_kafka(br#"{"keytype":"NOOP","magic":0}"#, Some(b"{oops")).is_err());
    }

    #[test]
    fn appended_records_replay_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = LocalLog::open(dir.path()).unwrap();
        assert!(records.is_empty());
        log.append(&[config(Level::Full), config(Level::None)])
            .unwrap();
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
