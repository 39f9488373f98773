//! The registry: subjects, versions, global schema ids, compatibility configs and modes, built by
//! applying log records, and the operations that produce new records.
//!
//! Reads take a shared lock on the in-memory state. Writes are serialized: a writer computes its
//! records from the current state, makes them durable in the log, and only then applies them, so
//! a client never sees (or is acknowledged) a write that a crash could lose, and every write is
//! checked against the state it will change.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::compat::{self, Level};
use crate::error::Error;
use crate::log::{
    ConfigValue, DeleteSubjectValue, Key, LocalLog, Mode, ModeValue, Record, SchemaValue,
};
use crate::schema::{self, Parsed, Reference, SchemaType};
use logpipe_core::metric_names::schema_store as metric;

/// A schema known by its global id.
#[derive(Debug)]
pub(crate) struct StoredSchema {
    pub(crate) id: u32,
    pub(crate) schema_type: SchemaType,
    pub(crate) schema: String,
    pub(crate) references: Vec<Reference>,
    parsed: OnceLock<Result<Parsed, String>>,
}

impl StoredSchema {
    fn new(id: u32, schema_type: SchemaType, schema: String, references: Vec<Reference>) -> Self {
        StoredSchema {
            id,
            schema_type,
            schema,
            references,
            parsed: OnceLock::new(),
        }
    }

    /// Parsed on first use (compatibility checks), so start-up replays only strings.
    fn parsed(&self, state: &State) -> Result<&Parsed, Error> {
        self.parsed
            .get_or_init(|| {
                let referenced = state.referenced_texts(&self.references)?;
                schema::parse(self.schema_type, &self.schema, &referenced).map(|(_, parsed)| parsed)
            })
            .as_ref()
            .map_err(|e| Error::Store(format!("stored schema {} no longer parses: {e}", self.id)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionEntry {
    pub(crate) id: u32,
    pub(crate) deleted: bool,
}

type ContentKey = (SchemaType, String, Vec<Reference>);

/// What the log says, indexed for the API.
#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    schemas: HashMap<u32, Arc<StoredSchema>>,
    by_content: HashMap<ContentKey, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    /// Highest id ever assigned, including permanently deleted ones: ids are never reused.
    max_id: u32,
    global_level: Option<Level>,
    levels: HashMap<String, Level>,
    global_mode: Option<Mode>,
    modes: HashMap<String, Mode>,
}

/// A version selector from a URL: a number or `latest` / `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSelector {
    Latest,
    Number(u32),
}

impl VersionSelector {
    pub(crate) fn parse(text: &str) -> Result<VersionSelector, Error> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionSelector::Latest);
        }
        match text.parse::<i64>() {
            Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => {
                Ok(VersionSelector::Number(n as u32))
            }
            _ => Err(Error::InvalidVersion(text.to_owned())),
        }
    }
}

/// A subject version as the API returns it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubjectVersion {
    pub(crate) subject: String,
    pub(crate) version: u32,
    pub(crate) id: u32,
    #[serde(skip_serializing_if = "SchemaType::is_avro")]
    pub(crate) schema_type: SchemaType,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) references: Vec<Reference>,
    pub(crate) schema: String,
}

/// A registration request after body parsing.
#[derive(Debug, Clone)]
pub(crate) struct NewSchema {
    pub(crate) schema: String,
    pub(crate) schema_type: SchemaType,
    pub(crate) references: Vec<Reference>,
    /// Explicit id and version, accepted in IMPORT mode only.
    pub(crate) id: Option<u32>,
    pub(crate) version: Option<u32>,
}

/// Subjects must be non-empty and free of control characters (42208).
pub(crate) fn validate_subject(subject: &str) -> Result<(), Error> {
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return Err(Error::InvalidSubject(subject.to_owned()));
    }
    Ok(())
}

impl State {
    /// Applies one record; used for replay and for live writes alike.
    pub(crate) fn apply(&mut self, record: &Record) -> anyhow::Result<()> {
        match (&record.key, &record.value) {
            (Key::Schema { .. }, Some(value)) => {
                let value: SchemaValue = serde_json::from_value(value.clone())?;
                self.max_id = self.max_id.max(value.id);
                let content = (
                    value.schema_type,
                    value.schema.clone(),
                    value.references.clone(),
                );
                self.schemas.entry(value.id).or_insert_with(|| {
                    Arc::new(StoredSchema::new(
                        value.id,
                        value.schema_type,
                        value.schema,
                        value.references,
                    ))
                });
                self.by_content.entry(content).or_insert(value.id);
                let versions = self.subjects.entry(value.subject).or_default();
                versions.insert(
                    value.version,
                    VersionEntry {
                        id: value.id,
                        deleted: value.deleted,
                    },
                );
            }
            (
                Key::Schema {
                    subject, version, ..
                },
                None,
            ) => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    if let Some(entry) = versions.remove(version) {
                        if versions.is_empty() {
                            self.subjects.remove(subject);
                        }
                        self.forget_if_unused(entry.id);
                    }
                }
            }
            (Key::Config { subject, .. }, value) => {
                let level = value
                    .as_ref()
                    .map(|v| serde_json::from_value::<ConfigValue>(v.clone()))
                    .transpose()?
                    .and_then(|c| c.compatibility_level);
                match (subject, level) {
                    (None, level) => self.global_level = level,
                    (Some(s), Some(level)) => {
                        self.levels.insert(s.clone(), level);
                    }
                    (Some(s), None) => {
                        self.levels.remove(s);
                    }
                }
            }
            (Key::Mode { subject, .. }, value) => {
                let mode = value
                    .as_ref()
                    .map(|v| serde_json::from_value::<ModeValue>(v.clone()))
                    .transpose()?
                    .map(|m| m.mode);
                match (subject, mode) {
                    (None, mode) => self.global_mode = mode,
                    (Some(s), Some(mode)) => {
                        self.modes.insert(s.clone(), mode);
                    }
                    (Some(s), None) => {
                        self.modes.remove(s);
                    }
                }
            }
            (Key::DeleteSubject { .. }, Some(value)) => {
                let value: DeleteSubjectValue = serde_json::from_value(value.clone())?;
                if let Some(versions) = self.subjects.get_mut(&value.subject) {
                    versions
                        .range_mut(..=value.version)
                        .for_each(|(_, e)| e.deleted = true);
                }
            }
            (Key::DeleteSubject { .. }, None)
            | (Key::Noop { .. }, _)
            | (Key::ClearSubject { .. }, _) => {}
        }
        Ok(())
    }

    /// A permanently deleted version's schema is dropped when no version uses it any more. Its
    /// id stays burnt (`max_id`).
    fn forget_if_unused(&mut self, id: u32) {
        let used = self
            .subjects
            .values()
            .any(|versions| versions.values().any(|e| e.id == id));
        if !used {
            if let Some(schema) = self.schemas.remove(&id) {
                self.by_content.remove(&(
                    schema.schema_type,
                    schema.schema.clone(),
                    schema.references.clone(),
                ));
            }
        }
    }

    /// Keeps `id` from ever being assigned again: for a record whose id is known but whose
    /// content this store cannot hold (a PROTOBUF schema in an adopted topic).
    pub(crate) fn burn_id(&mut self, id: u32) {
        self.max_id = self.max_id.max(id);
    }

    pub(crate) fn schema_count(&self) -> usize {
        self.schemas.len()
    }

    pub(crate) fn schema_by_id(&self, id: u32) -> Result<&Arc<StoredSchema>, Error> {
        self.schemas.get(&id).ok_or(Error::SchemaIdNotFound(id))
    }

    /// Subjects with a visible version (or any version with `deleted`), optionally by prefix.
    pub(crate) fn subjects(&self, prefix: &str, deleted: bool) -> Vec<String> {
        self.subjects
            .range(prefix.to_owned()..)
            .take_while(|(s, _)| s.starts_with(prefix))
            .filter(|(_, versions)| deleted || versions.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn versions_of(&self, subject: &str) -> Result<&BTreeMap<u32, VersionEntry>, Error> {
        self.subjects
            .get(subject)
            .ok_or_else(|| Error::SubjectNotFound(subject.to_owned()))
    }

    /// Version numbers of a subject; 40401 when it has none visible.
    pub(crate) fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, Error> {
        let versions: Vec<u32> = self
            .versions_of(subject)?
            .iter()
            .filter(|(_, e)| deleted || !e.deleted)
            .map(|(v, _)| *v)
            .collect();
        if versions.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions)
    }

    /// Resolves a selector to a version number and its entry.
    pub(crate) fn version(
        &self,
        subject: &str,
        selector: VersionSelector,
        deleted: bool,
    ) -> Result<(u32, VersionEntry), Error> {
        let versions = self.versions_of(subject)?;
        if !deleted && versions.values().all(|e| e.deleted) {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let found = match selector {
            VersionSelector::Latest => versions.iter().rev().find(|(_, e)| deleted || !e.deleted),
            VersionSelector::Number(n) => versions
                .get_key_value(&n)
                .filter(|(_, e)| deleted || !e.deleted),
        };
        match (found, selector) {
            (Some((v, e)), _) => Ok((*v, *e)),
            (None, VersionSelector::Number(n)) => Err(Error::VersionNotFound(n.to_string())),
            (None, VersionSelector::Latest) => Err(Error::VersionNotFound("latest".into())),
        }
    }

    pub(crate) fn subject_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let (version, entry) = self.version(subject, selector, deleted)?;
        let schema = self.schema_by_id(entry.id)?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version,
            id: schema.id,
            schema_type: schema.schema_type,
            references: schema.references.clone(),
            schema: schema.schema.clone(),
        })
    }

    /// Subjects (and versions) that use schema `id`.
    pub(crate) fn usages(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(s, versions)| {
                versions
                    .iter()
                    .filter(move |(_, e)| e.id == id && (deleted || !e.deleted))
                    .map(move |(v, _)| (s.clone(), *v))
            })
            .collect()
    }

    /// Ids of stored schemas that reference `subject` version `version`.
    pub(crate) fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .schemas
            .values()
            .filter(|s| {
                s.references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version as i32)
            })
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The schemas a reference list brings in, transitively, dependencies first: each as the
    /// name its referrer uses for it and its stored text.
    fn referenced_texts(
        &self,
        references: &[Reference],
    ) -> Result<Vec<schema::Referenced>, String> {
        let mut texts = Vec::new();
        self.collect_referenced(references, &mut texts, 0)?;
        Ok(texts)
    }

    fn collect_referenced(
        &self,
        references: &[Reference],
        texts: &mut Vec<schema::Referenced>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > 32 {
            return Err("references are nested more than 32 deep".into());
        }
        for reference in references {
            let selector = if reference.version == -1 {
                VersionSelector::Latest
            } else {
                VersionSelector::Number(reference.version.max(0) as u32)
            };
            let (_, entry) = self
                .version(&reference.subject, selector, true)
                .map_err(|_| {
                    format!(
                        "reference {:?} to subject '{}' version {} not found",
                        reference.name, reference.subject, reference.version
                    )
                })?;
            let schema = self
                .schemas
                .get(&entry.id)
                .ok_or_else(|| format!("referenced schema {} is missing", entry.id))?;
            self.collect_referenced(&schema.references, texts, depth + 1)?;
            if !texts
                .iter()
                .any(|r| r.name == reference.name && r.text == schema.schema)
            {
                texts.push(schema::Referenced {
                    name: reference.name.clone(),
                    text: schema.schema.clone(),
                });
            }
        }
        Ok(())
    }

    /// References with `-1` pinned to the version it means now, so a stored schema keeps its
    /// meaning when the referenced subject moves on.
    fn pin_references(&self, references: &[Reference]) -> Result<Vec<Reference>, Error> {
        references
            .iter()
            .map(|r| {
                let selector = if r.version == -1 {
                    VersionSelector::Latest
                } else {
                    VersionSelector::parse(&r.version.to_string())?
                };
                let (version, _) = self.version(&r.subject, selector, false).map_err(|_| {
                    Error::InvalidSchema(format!(
                        "Invalid schema: reference {:?} to subject '{}' version {} not found",
                        r.name, r.subject, r.version
                    ))
                })?;
                Ok(Reference {
                    name: r.name.clone(),
                    subject: r.subject.clone(),
                    version: version as i32,
                })
            })
            .collect()
    }

    pub(crate) fn global_level(&self) -> Level {
        self.global_level.unwrap_or(Level::DEFAULT)
    }

    pub(crate) fn subject_level(&self, subject: &str) -> Option<Level> {
        self.levels.get(subject).copied()
    }

    pub(crate) fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    pub(crate) fn global_mode(&self) -> Mode {
        self.global_mode.unwrap_or(Mode::Readwrite)
    }

    pub(crate) fn subject_mode(&self, subject: &str) -> Option<Mode> {
        self.modes.get(subject).copied()
    }

    pub(crate) fn effective_mode(&self, subject: &str) -> Mode {
        self.subject_mode(subject)
            .unwrap_or_else(|| self.global_mode())
    }

    fn writable(&self, subject: &str) -> Result<Mode, Error> {
        match self.effective_mode(subject) {
            Mode::Readonly => Err(Error::NotPermitted(format!(
                "Subject {subject} is in read-only mode"
            ))),
            mode => Ok(mode),
        }
    }

    pub(crate) fn has_subjects(&self) -> bool {
        !self.subjects.is_empty()
    }

    /// Parses a schema as it would be stored, with its references pinned and resolved.
    pub(crate) fn prepare(
        &self,
        schema_type: SchemaType,
        text: &str,
        references: &[Reference],
    ) -> Result<(String, Vec<Reference>, Parsed), Error> {
        let references = self.pin_references(references)?;
        let referenced = self
            .referenced_texts(&references)
            .map_err(|e| Error::InvalidSchema(format!("Invalid schema: {e}")))?;
        let (canonical, parsed) =
            schema::parse(schema_type, text, &referenced).map_err(Error::InvalidSchema)?;
        Ok((canonical, references, parsed))
    }

    /// `POST /subjects/{s}`: the version of `subject` holding this schema.
    pub(crate) fn lookup(
        &self,
        subject: &str,
        schema_type: SchemaType,
        text: &str,
        references: &[Reference],
        deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let versions = self.versions_of(subject)?;
        if !deleted && versions.values().all(|e| e.deleted) {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let (canonical, references, _) = self.prepare(schema_type, text, references)?;
        let id = self
            .by_content
            .get(&(schema_type, canonical, references))
            .ok_or(Error::SchemaNotFound)?;
        let version = versions
            .iter()
            .rev()
            .find(|(_, e)| e.id == *id && (deleted || !e.deleted))
            .map(|(v, _)| *v)
            .ok_or(Error::SchemaNotFound)?;
        self.subject_version(subject, VersionSelector::Number(version), deleted)
    }

    /// Previous parsed schemas of a subject, newest first, for compatibility checks.
    fn previous(
        &self,
        subject: &str,
        selector: Option<VersionSelector>,
    ) -> Result<Vec<&Parsed>, Error> {
        let Some(versions) = self.subjects.get(subject) else {
            return Ok(Vec::new());
        };
        let ids: Vec<u32> = match selector {
            None => versions
                .values()
                .rev()
                .filter(|e| !e.deleted)
                .map(|e| e.id)
                .collect(),
            Some(selector) => vec![self.version(subject, selector, false)?.1.id],
        };
        ids.iter()
            .map(|id| self.schema_by_id(*id)?.parsed(self))
            .collect()
    }

    /// Compatibility messages of a candidate against a subject (all versions per the level, or
    /// one version against which the level's direction is checked).
    pub(crate) fn compatibility(
        &self,
        subject: &str,
        selector: Option<VersionSelector>,
        parsed: &Parsed,
    ) -> Result<Vec<String>, Error> {
        let previous = self.previous(subject, selector)?;
        let level = self.effective_level(subject);
        Ok(match selector {
            // One named version: the level's direction, against that version only.
            Some(_) => compat::check(without_transitivity(level), parsed, &previous),
            None => compat::check(level, parsed, &previous),
        })
    }

    /// `POST /subjects/{s}/versions`: the records registering `new` (none when it is already
    /// there) and the id.
    pub(crate) fn register(
        &self,
        subject: &str,
        new: &NewSchema,
    ) -> Result<(u32, Vec<Record>), Error> {
        validate_subject(subject)?;
        let mode = self.writable(subject)?;
        if (new.id.is_some() || new.version.is_some()) && mode != Mode::Import {
            return Err(Error::NotPermitted(format!(
                "Subject {subject} is not in import mode: an explicit id or version is not allowed"
            )));
        }
        let (canonical, references, parsed) =
            self.prepare(new.schema_type, &new.schema, &new.references)?;
        let content = (new.schema_type, canonical, references);
        let existing_id = self.by_content.get(&content).copied();
        let versions = self.subjects.get(subject);
        if let (Some(id), Some(versions)) = (existing_id, versions) {
            let live = versions.iter().find(|(_, e)| e.id == id && !e.deleted);
            if let Some((version, _)) = live {
                if new.version.is_none_or(|v| v == *version) && new.id.is_none_or(|i| i == id) {
                    return Ok((id, Vec::new()));
                }
            }
        }
        if mode != Mode::Import {
            let messages = self.compatibility(subject, None, &parsed)?;
            if !messages.is_empty() {
                return Err(Error::Incompatible {
                    subject: subject.to_owned(),
                    messages,
                });
            }
        }
        let id = match (new.id, existing_id) {
            (Some(id), Some(existing)) if id != existing => {
                return Err(Error::IdDoesNotMatch(format!(
                    "Schema already registered with id {existing} instead of input id {id}"
                )));
            }
            (Some(id), None) if self.schemas.contains_key(&id) => {
                return Err(Error::IdDoesNotMatch(format!("Overwrite new schema with id {id} is not permitted: the id holds another schema")));
            }
            (Some(id), _) => id,
            (None, Some(existing)) => existing,
            (None, None) => self
                .max_id
                .checked_add(1)
                .ok_or_else(|| Error::Store("schema ids are exhausted".into()))?,
        };
        let next_version = versions
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1);
        let version = match new.version {
            Some(v) if versions.is_some_and(|vs| vs.contains_key(&v)) => {
                return Err(Error::NotPermitted(format!(
                    "Version {v} of subject {subject} already exists"
                )));
            }
            Some(v) => v,
            None => next_version,
        };
        let (schema_type, schema, references) = content;
        let record = Record::schema(SchemaValue {
            subject: subject.to_owned(),
            version,
            id,
            schema_type,
            references,
            schema,
            deleted: false,
        });
        Ok((id, vec![record]))
    }

    fn check_not_referenced(&self, subject: &str, version: u32) -> Result<(), Error> {
        let by = self.referenced_by(subject, version);
        if by.is_empty() {
            Ok(())
        } else {
            Err(Error::ReferenceExists {
                subject: subject.to_owned(),
                version,
                by,
            })
        }
    }

    fn deleted_record(
        &self,
        subject: &str,
        version: u32,
        entry: VersionEntry,
    ) -> Result<Record, Error> {
        let schema = self.schema_by_id(entry.id)?;
        Ok(Record::schema(SchemaValue {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema_type: schema.schema_type,
            references: schema.references.clone(),
            schema: schema.schema.clone(),
            deleted: true,
        }))
    }

    /// `DELETE /subjects/{s}`: soft (all live versions marked deleted) or permanent (only after
    /// soft). Returns the versions deleted.
    pub(crate) fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<Record>), Error> {
        self.writable(subject)?;
        let versions = self.versions_of(subject)?;
        let live: Vec<u32> = versions
            .iter()
            .filter(|(_, e)| !e.deleted)
            .map(|(v, _)| *v)
            .collect();
        for version in versions.keys() {
            self.check_not_referenced(subject, *version)?;
        }
        if permanent {
            if !live.is_empty() {
                return Err(Error::SubjectNotSoftDeleted(subject.to_owned()));
            }
            let all: Vec<u32> = versions.keys().copied().collect();
            let mut records: Vec<Record> = all
                .iter()
                .map(|v| {
                    Record::tombstone(Key::Schema {
                        subject: subject.to_owned(),
                        version: *v,
                        magic: 1,
                    })
                })
                .collect();
            if self.levels.contains_key(subject) {
                records.push(Record::tombstone(Key::Config {
                    subject: Some(subject.to_owned()),
                    magic: 0,
                }));
            }
            if self.modes.contains_key(subject) {
                records.push(Record::tombstone(Key::Mode {
                    subject: Some(subject.to_owned()),
                    magic: 0,
                }));
            }
            return Ok((all, records));
        }
        if live.is_empty() {
            return Err(Error::SubjectSoftDeleted(subject.to_owned()));
        }
        let records = live
            .iter()
            .map(|v| self.deleted_record(subject, *v, versions[v]))
            .collect::<Result<_, _>>()?;
        Ok((live, records))
    }

    /// `DELETE /subjects/{s}/versions/{v}`.
    pub(crate) fn delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        permanent: bool,
    ) -> Result<(u32, Vec<Record>), Error> {
        self.writable(subject)?;
        let versions = self.versions_of(subject)?;
        let (version, entry) = match selector {
            VersionSelector::Number(n) => versions
                .get(&n)
                .map(|e| (n, *e))
                .ok_or_else(|| Error::VersionNotFound(n.to_string()))?,
            VersionSelector::Latest => {
                let found = if permanent {
                    versions.iter().next_back()
                } else {
                    versions.iter().rev().find(|(_, e)| !e.deleted)
                };
                found
                    .map(|(v, e)| (*v, *e))
                    .ok_or_else(|| Error::VersionNotFound("latest".into()))?
            }
        };
        self.check_not_referenced(subject, version)?;
        match (permanent, entry.deleted) {
            (false, true) => Err(Error::VersionSoftDeleted {
                subject: subject.to_owned(),
                version,
            }),
            (true, false) => Err(Error::VersionNotSoftDeleted {
                subject: subject.to_owned(),
                version,
            }),
            (false, false) => Ok((version, vec![self.deleted_record(subject, version, entry)?])),
            (true, true) => Ok((
                version,
                vec![Record::tombstone(Key::Schema {
                    subject: subject.to_owned(),
                    version,
                    magic: 1,
                })],
            )),
        }
    }

    pub(crate) fn config_record(subject: Option<&str>, level: Option<Level>) -> Record {
        Record {
            key: Key::Config {
                subject: subject.map(str::to_owned),
                magic: 0,
            },
            value: level.map(|l| {
                serde_json::to_value(ConfigValue {
                    compatibility_level: Some(l),
                })
                .expect("config serializes")
            }),
        }
    }

    pub(crate) fn mode_record(subject: Option<&str>, mode: Option<Mode>) -> Record {
        Record {
            key: Key::Mode {
                subject: subject.map(str::to_owned),
                magic: 0,
            },
            value: mode
                .map(|m| serde_json::to_value(ModeValue { mode: m }).expect("mode serializes")),
        }
    }
}

/// For a check against one named version, transitivity has nothing to add.
fn without_transitivity(level: Level) -> Level {
    match level {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        other => other,
    }
}

/// A write waiting for the writer thread: its plan and where to send the outcome.
type Plan = Box<dyn FnOnce(&State) -> Result<(Box<dyn Any + Send>, Vec<Record>), Error> + Send>;
type Job = (Plan, oneshot::Sender<Result<Box<dyn Any + Send>, Error>>);

/// Writes per batch at most: bounds the latency one fsync adds to the first write of a batch.
const MAX_BATCH: usize = 256;

/// Where the writer puts a planned batch before acknowledging it: the local fsynced log, or
/// the `_schemas` topic (see [`crate::kafka_storage`]).
pub(crate) trait Journal: Send + 'static {
    /// Makes `records` durable and visible in `public`; on success readers see them. On error
    /// nothing was made visible and the writer answers every write of the batch with it.
    fn commit(&mut self, records: &[Record], public: &RwLock<State>) -> Result<(), Error>;

    /// True when `public` may hold records the writer did not plan (another instance wrote
    /// before this one became the writer): the writer then plans from a fresh copy.
    fn staging_is_stale(&mut self) -> bool {
        false
    }
}

impl Journal for LocalLog {
    fn commit(&mut self, records: &[Record], public: &RwLock<State>) -> Result<(), Error> {
        let started = std::time::Instant::now();
        self.append(records).map_err(|e| {
            metrics::counter!(metric::LOG_ERRORS).increment(1);
            tracing::error!("cannot write the schema log: {e}");
            Error::Store(format!("Error while writing to the schema log: {e}"))
        })?;
        metrics::histogram!(metric::LOG_APPEND).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::LOG_BATCH_RECORDS).record(records.len() as f64);
        let mut state = public.write().expect("registry state lock");
        for record in records {
            // Already applied to the writer's staging copy without error: it applies here the same way.
            let _ = state.apply(record);
        }
        metrics::gauge!(metric::SCHEMAS).set(state.schemas.len() as f64);
        Ok(())
    }
}

/// The registry: state plus the journal it is rebuilt from.
///
/// Writes go through one writer thread doing group commit: it plans each queued write against
/// a staging copy of the state (so later writes of a batch see earlier ones), commits the whole
/// batch to the journal at once (one `fdatasync`, or one Kafka transaction), and only then
/// answers the writers. Nothing is visible or acknowledged before it is durable, and concurrent
/// writers share the cost of a commit instead of queueing for one each.
#[derive(Debug)]
pub(crate) struct Registry {
    state: Arc<RwLock<State>>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Registry {
    /// Opens the local log in `dir`, replays it and starts the writer thread.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Registry> {
        let started = std::time::Instant::now();
        let (log, records) = LocalLog::open(dir)?;
        let mut state = State::default();
        for (i, record) in records.iter().enumerate() {
            state
                .apply(record)
                .map_err(|e| anyhow::anyhow!("{} record {}: {e}", log.path().display(), i + 1))?;
        }
        tracing::info!(records = records.len(), schemas = state.schemas.len(), subjects = state.subjects.len(), elapsed = ?started.elapsed(), "replayed the schema log");
        metrics::gauge!(metric::SCHEMAS).set(state.schemas.len() as f64);
        Registry::start(Arc::new(RwLock::new(state)), log)
    }

    /// Starts the writer thread over a state that `journal` keeps up to date.
    pub(crate) fn start(
        state: Arc<RwLock<State>>,
        journal: impl Journal,
    ) -> anyhow::Result<Registry> {
        let staging = state.read().expect("registry state lock").clone();
        let (jobs, queue) = mpsc::unbounded_channel();
        let public = Arc::clone(&state);
        std::thread::Builder::new()
            .name("schema-writer".into())
            .spawn(move || write_batches(queue, journal, staging, public))
            .map_err(|e| anyhow::anyhow!("cannot start the writer thread: {e}"))?;
        Ok(Registry { state, jobs })
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("registry state lock")
    }

    /// Runs a write: `plan` computes records from the state as of all earlier writes; the
    /// records are made durable, then applied, then the result is returned.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        plan: impl FnOnce(&State) -> Result<(T, Vec<Record>), Error> + Send + 'static,
    ) -> Result<T, Error> {
        let plan: Plan = Box::new(move |state| {
            plan(state).map(|(t, records)| (Box::new(t) as Box<dyn Any + Send>, records))
        });
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send((plan, reply))
            .map_err(|_| Error::Store("the writer has stopped".into()))?;
        let result = outcome
            .await
            .map_err(|_| Error::Store("the writer has stopped".into()))??;
        Ok(*result
            .downcast::<T>()
            .expect("a plan's result has the plan's type"))
    }
}

/// The writer thread: group commit until every `Registry` handle is gone.
fn write_batches(
    mut queue: mpsc::UnboundedReceiver<Job>,
    mut journal: impl Journal,
    mut staging: State,
    public: Arc<RwLock<State>>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if journal.staging_is_stale() {
            staging = public.read().expect("registry state lock").clone();
        }
        let mut records = Vec::new();
        let mut waiting = Vec::new();
        for (plan, reply) in batch {
            match plan(&staging) {
                Ok((result, planned)) if planned.is_empty() => {
                    let _ = reply.send(Ok(result));
                }
                Ok((result, planned)) => match planned.iter().try_for_each(|r| staging.apply(r)) {
                    Ok(()) => {
                        records.extend(planned);
                        waiting.push((reply, result));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Store(format!(
                            "cannot apply a planned record: {e}"
                        ))));
                    }
                },
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        if let Err(e) = journal.commit(&records, &public) {
            // The batch is not durable: forget it and answer every writer with the error.
            staging = public.read().expect("registry state lock").clone();
            for (reply, _) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
            continue;
        }
        for (reply, result) in waiting {
            let _ = reply.send(Ok(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#;
    /// Adds a field without a default: a BACKWARD break of [`V1`].
    const V2_BREAKING: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"}]}"#;

    fn avro(schema: &str) -> NewSchema {
        NewSchema {
            schema: schema.to_owned(),
            schema_type: SchemaType::Avro,
            references: Vec::new(),
            id: None,
            version: None,
        }
    }

    /// Plans a write and applies its records, as the writer does once they are durable.
    fn applied<T>(
        state: &mut State,
        plan: impl FnOnce(&State) -> Result<(T, Vec<Record>), Error>,
    ) -> T {
        let (result, records) = plan(state).unwrap();
        for record in &records {
            state.apply(record).unwrap();
        }
        result
    }

    fn with_v1() -> State {
        let mut state = State::default();
        let id = applied(&mut state, |s| s.register("s", &avro(V1)));
        assert_eq!(id, 1);
        state
    }

    #[test]
    fn unknown_subjects_versions_and_ids_are_not_found() {
        let state = with_v1();
        let missing = Error::SubjectNotFound("nope".into());
        assert_eq!(state.versions("nope", false), Err(missing.clone()));
        assert_eq!(
            state
                .subject_version("nope", VersionSelector::Latest, false)
                .unwrap_err(),
            missing
        );
        assert_eq!(
            state
                .subject_version("s", VersionSelector::Number(2), false)
                .unwrap_err(),
            Error::VersionNotFound("2".into())
        );
        assert_eq!(
            state.schema_by_id(7).unwrap_err(),
            Error::SchemaIdNotFound(7)
        );
        assert_eq!(
            state
                .lookup("s", SchemaType::Avro, V2_BREAKING, &[], false)
                .unwrap_err(),
            Error::SchemaNotFound
        );
    }

    #[test]
    fn an_incompatible_schema_is_refused_with_the_reasons() {
        let state = with_v1();
        match state.register("s", &avro(V2_BREAKING)) {
            Err(Error::Incompatible { subject, messages }) => {
                assert_eq!(subject, "s");
                assert!(!messages.is_empty());
            }
            other => panic!("expected an incompatibility, got {other:?}"),
        }
        // The same schema under another subject has nothing to be compatible with.
        assert!(state.register("t", &avro(V2_BREAKING)).is_ok());
    }

    #[test]
    fn invalid_schemas_subjects_and_versions_are_named() {
        let state = State::default();
        assert!(matches!(
            state.register("s", &avro("{not json")),
            Err(Error::InvalidSchema(_))
        ));
        assert_eq!(
            state.register("", &avro(V1)).unwrap_err(),
            Error::InvalidSubject(String::new())
        );
        assert_eq!(
            VersionSelector::parse("0"),
            Err(Error::InvalidVersion("0".into()))
        );
        assert_eq!(VersionSelector::parse("-1"), Ok(VersionSelector::Latest));
    }

    #[test]
    fn deletes_go_soft_then_permanent() {
        let mut state = with_v1();
        assert_eq!(
            state.delete_subject("s", true).unwrap_err(),
            Error::SubjectNotSoftDeleted("s".into())
        );
        assert_eq!(
            state
                .delete_version("s", VersionSelector::Number(1), true)
                .unwrap_err(),
            Error::VersionNotSoftDeleted {
                subject: "s".into(),
                version: 1
            }
        );
        let deleted = applied(&mut state, |s| s.delete_subject("s", false));
        assert_eq!(deleted, vec![1]);
        assert_eq!(
            state.delete_subject("s", false).unwrap_err(),
            Error::SubjectSoftDeleted("s".into())
        );
        assert_eq!(
            state
                .delete_version("s", VersionSelector::Number(1), false)
                .unwrap_err(),
            Error::VersionSoftDeleted {
                subject: "s".into(),
                version: 1
            }
        );
        applied(&mut state, |s| s.delete_subject("s", true));
        assert_eq!(
            state.versions("s", true),
            Err(Error::SubjectNotFound("s".into()))
        );
    }

    #[test]
    fn a_read_only_subject_refuses_writes() {
        let mut state = with_v1();
        state
            .apply(&State::mode_record(Some("s"), Some(Mode::Readonly)))
            .unwrap();
        assert!(matches!(
            state.register("s", &avro(V1)),
            Err(Error::NotPermitted(_))
        ));
        assert!(matches!(
            state.delete_subject("s", false),
            Err(Error::NotPermitted(_))
        ));
    }
}
