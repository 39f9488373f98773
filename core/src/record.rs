//! The record contract: header names, the record's unique id, key building and topic naming.
//!
//! Every component that writes or reads `lp.*` headers or derives a topic name goes through this
//! module, so the record contract (the README's "The record contract") has exactly one spelling in
//! code.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Header names the agent puts on every raw record; they survive the mirror and the validator.
pub mod header {
    /// Host name of the agent that read the line.
    pub const HOST: &str = "lp.host";
    /// Absolute path of the file when the line was read.
    pub const PATH: &str = "lp.path";
    /// File identity, lower-case hex; changes when a file is replaced or truncated.
    pub const FILE: &str = "lp.file";
    /// Byte offset of the line's first byte within that file identity, decimal.
    pub const OFFSET: &str = "lp.offset";
    /// Present only on lines cut at the size limit: the original length, decimal.
    pub const TRUNCATED: &str = "lp.truncated";
    /// Id of the cluster a record was first produced to; added by the mirror's optional loop
    /// guard so that mirrors in both directions do not copy records back where they came from.
    pub const ORIGIN: &str = "lp.origin";
}

/// Header names the validator adds to dead letters, next to the original headers.
pub mod error_header {
    /// Which step failed; one of [`super::ErrorStage`]'s names.
    pub const STAGE: &str = "lp.error.stage";
    /// Human-readable reason.
    pub const REASON: &str = "lp.error.reason";
    /// JSON Pointer of the failing field, when there is one.
    pub const PATH: &str = "lp.error.path";
    /// Subject the record was checked against.
    pub const SUBJECT: &str = "lp.error.subject";
    /// Schema id the record was checked against.
    pub const SCHEMA_ID: &str = "lp.error.schema_id";
    /// Where the record was read on the read cluster: topic, partition and offset.
    pub const TOPIC: &str = "lp.error.topic";
    pub const PARTITION: &str = "lp.error.partition";
    pub const OFFSET: &str = "lp.error.offset";
    /// On a dead letter written without its record (too large to produce with it): the
    /// record's size in bytes. The record stays at the topic, partition and offset above, where
    /// `logpipe-validator replay` reads it.
    pub const OMITTED: &str = "lp.error.omitted";
    /// Every dead-letter header, in the order they are written.
    pub const ALL: [&str; 9] = [
        STAGE, REASON, PATH, SUBJECT, SCHEMA_ID, TOPIC, PARTITION, OFFSET, OMITTED,
    ];
}

/// Header names `logpipe-validator replay` adds to every record it writes, to the clean topic or
/// to the DLQ again: where the dead letter it replayed was (topic, partition, offset on the read
/// cluster). They tell a replayed line from one the validator wrote twice, which an end-to-end
/// count by id must (a replay leaves the original dead letter in place).
pub mod replay_header {
    pub const TOPIC: &str = "lp.replay.topic";
    pub const PARTITION: &str = "lp.replay.partition";
    pub const OFFSET: &str = "lp.replay.offset";
    /// Every replay header, in the order they are written.
    pub const ALL: [&str; 3] = [TOPIC, PARTITION, OFFSET];
}

/// Header names of the CEP worker's match records (`logpipe-cep`): which rule version matched and
/// the match's deterministic id, so a consumer granting rewards can route and dedupe without
/// parsing the value.
pub mod cep_header {
    pub const RULE: &str = "lp.cep.rule";
    pub const VERSION: &str = "lp.cep.version";
    pub const MATCH_ID: &str = "lp.cep.match_id";
    /// On late events: how far behind the rule's watermark their event time was.
    pub const LATE_BY_MS: &str = "lp.cep.late_by_ms";
    /// On events a timed rule could not hold, in the late topic: why (`key_state_full`).
    pub const REFUSED: &str = "lp.cep.refused";
    /// Marks a watermark marker on a repartition topic (its value is the progress of source
    /// partitions), as opposed to a re-keyed event.
    pub const WATERMARK: &str = "lp.cep.watermark";
}

/// The dead letter a replayed record comes from, as its [`replay_header`]s say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayedFrom {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl ReplayedFrom {
    /// The headers a replay writes, in contract order.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (replay_header::TOPIC, self.topic.clone()),
            (replay_header::PARTITION, self.partition.to_string()),
            (replay_header::OFFSET, self.offset.to_string()),
        ]
    }

    /// Reads the replay headers of a record, given as (name, value) pairs in any order:
    /// `Ok(None)` for a record no replay wrote, an error when only some are there or one is
    /// malformed (the same errors as [`RecordId::from_headers`]).
    pub fn from_headers<'a, I>(headers: I) -> Result<Option<ReplayedFrom>, RecordIdError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let names = [
            replay_header::TOPIC,
            replay_header::PARTITION,
            replay_header::OFFSET,
        ];
        let Some([topic, partition, offset]) = find_headers(headers, names) else {
            return Ok(None);
        };
        fn number<T: std::str::FromStr>(
            name: &'static str,
            value: Option<&[u8]>,
        ) -> Result<T, RecordIdError> {
            let value = String::from_utf8_lossy(value.ok_or(RecordIdError::Missing(name))?);
            value.parse().map_err(|_| RecordIdError::Invalid {
                name,
                value: value.into_owned(),
            })
        }
        Ok(Some(ReplayedFrom {
            topic: topic
                .filter(|t| !t.is_empty())
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .ok_or(RecordIdError::Missing(replay_header::TOPIC))?,
            partition: number(replay_header::PARTITION, partition)?,
            offset: number(replay_header::OFFSET, offset)?,
        }))
    }
}

impl fmt::Display for ReplayedFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// The step of validation at which a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorStage {
    /// The value is not JSON (or not UTF-8).
    Parse,
    /// No route or subject could be chosen for the record.
    Route,
    /// The schema could not be found or used.
    Schema,
    /// The record does not match its schema.
    Validate,
    /// The record matched but could not be encoded.
    Encode,
    /// A clean record the lake loader could not write to its table.
    Lake,
}

impl ErrorStage {
    pub const ALL: [ErrorStage; 6] = [
        ErrorStage::Parse,
        ErrorStage::Route,
        ErrorStage::Schema,
        ErrorStage::Validate,
        ErrorStage::Encode,
        ErrorStage::Lake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Parse => "parse",
            ErrorStage::Route => "route",
            ErrorStage::Schema => "schema",
            ErrorStage::Validate => "validate",
            ErrorStage::Encode => "encode",
            ErrorStage::Lake => "lake",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorStage> {
        ErrorStage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
    }
}

impl fmt::Display for ErrorStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record became a dead letter and where it was read: what its [`error_header`]s say.
/// Operators' tools and `logpipe-validator replay` read these headers back, so they are built
/// here, in one order, rather than by whoever writes the dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders<'a> {
    pub stage: ErrorStage,
    /// Human-readable reason.
    pub reason: &'a str,
    /// JSON Pointer of the failing field, when there is one.
    pub path: Option<&'a str>,
    /// Subject the record was checked against, when one was chosen.
    pub subject: Option<&'a str>,
    /// Schema id the record was checked against, when one was found.
    pub schema_id: Option<u32>,
    /// Where the record was read on the read cluster.
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's size, when the dead letter is written without it.
    pub omitted: Option<usize>,
}

impl DeadLetterHeaders<'_> {
    /// The headers in [`error_header::ALL`] order; the optional ones only when known.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let optional = [
            (error_header::PATH, self.path.map(str::to_owned)),
            (error_header::SUBJECT, self.subject.map(str::to_owned)),
            (
                error_header::SCHEMA_ID,
                self.schema_id.map(|id| id.to_string()),
            ),
        ];
        let mut out = vec![
            (error_header::STAGE, self.stage.as_str().to_owned()),
            (error_header::REASON, self.reason.to_owned()),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(name, v)| Some((name, v?))),
        );
        out.extend([
            (error_header::TOPIC, self.topic.to_owned()),
            (error_header::PARTITION, self.partition.to_string()),
            (error_header::OFFSET, self.offset.to_string()),
        ]);
        if let Some(size) = self.omitted {
            out.push((error_header::OMITTED, size.to_string()));
        }
        out
    }
}

/// Identity of one file's contents, as the agent sees it: changes when the file is replaced or
/// truncated. Rendered as 16 lower-case hex digits in the `lp.file` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub u64);

impl FileId {
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// Parses the header form; accepts only lower-case hex, as the contract says.
    pub fn from_hex(s: &str) -> Option<FileId> {
        if s.is_empty()
            || s.len() > 16
            || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(FileId)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The unique id of a raw record: (`lp.host`, `lp.file`, `lp.offset`). End-to-end tests count
/// these; the validator removes agent replays with them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub host: String,
    pub file: FileId,
    pub offset: u64,
}

/// Why a record's `lp.*` headers do not form a [`RecordId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordIdError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {name} is not valid: {value:?}")]
    Invalid { name: &'static str, value: String },
}

impl RecordId {
    /// The headers this id is written as, in contract order.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (header::HOST, self.host.clone()),
            (header::FILE, self.file.to_hex()),
            (header::OFFSET, self.offset.to_string()),
        ]
    }

    /// Reads the id from a record's headers, given as (name, value) pairs in any order.
    /// Returns `Ok(None)` when the record carries none of the id headers (produced by another
    /// tool), and an error when it carries some but not all, or malformed ones.
    pub fn from_headers<'a, I>(headers: I) -> Result<Option<RecordId>, RecordIdError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let Some([host, file, offset]) =
            find_headers(headers, [header::HOST, header::FILE, header::OFFSET])
        else {
            return Ok(None);
        };
        // Borrowed: readers call this for every record, and only the host is kept as text.
        let text =
            |name: &'static str, value: Option<&'a [u8]>| -> Result<&'a str, RecordIdError> {
                let value = value.ok_or(RecordIdError::Missing(name))?;
                std::str::from_utf8(value).map_err(|_| RecordIdError::Invalid {
                    name,
                    value: String::from_utf8_lossy(value).into_owned(),
                })
            };
        let host = text(header::HOST, host)?.to_owned();
        let file_text = text(header::FILE, file)?;
        let offset_text = text(header::OFFSET, offset)?;
        let file = FileId::from_hex(file_text).ok_or_else(|| RecordIdError::Invalid {
            name: header::FILE,
            value: file_text.to_owned(),
        })?;
        let offset = offset_text.parse().map_err(|_| RecordIdError::Invalid {
            name: header::OFFSET,
            value: offset_text.to_owned(),
        })?;
        Ok(Some(RecordId { host, file, offset }))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.host, self.file, self.offset)
    }
}

/// The values of the headers `names` among `headers`, in the order of `names`: `None` for a
/// header that is not there, empty for one present without a value (the last of a repeated
/// name wins); `None` when none of them is there.
fn find_headers<'a, const N: usize, I>(
    headers: I,
    names: [&str; N],
) -> Option<[Option<&'a [u8]>; N]>
where
    I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
{
    let mut found = [None; N];
    for (name, value) in headers {
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = Some(value.unwrap_or_default());
        }
    }
    found.iter().any(Option::is_some).then_some(found)
}

/// How the agent builds a raw record's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyStrategy {
    /// `<host>|<path>`: keeps one file's lines in one partition, in order (the default, and what
    /// replay removal downstream relies on).
    #[default]
    HostPath,
    /// No key: records spread over partitions.
    None,
    /// The value of a top-level JSON field of the line; lines where the field is missing or the
    /// line is not JSON fall back to `<host>|<path>`.
    Field(String),
    /// The same fixed key for every record.
    Fixed(String),
}

impl KeyStrategy {
    /// Builds the key for one line read from `path` on `host`.
    pub fn key(&self, host: &str, path: &str, line: &[u8]) -> Option<Vec<u8>> {
        match self {
            KeyStrategy::HostPath => Some(host_path_key(host, path)),
            KeyStrategy::None => None,
            KeyStrategy::Fixed(key) => Some(key.as_bytes().to_vec()),
            KeyStrategy::Field(field) => {
                Some(json_field_key(line, field).unwrap_or_else(|| host_path_key(host, path)))
            }
        }
    }
}

fn host_path_key(host: &str, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(host.len() + 1 + path.len());
    key.extend_from_slice(host.as_bytes());
    key.push(b'|');
    key.extend_from_slice(path.as_bytes());
    key
}

/// A scalar top-level field rendered as key bytes: strings as they are, numbers and booleans in
/// their JSON form.
fn json_field_key(line: &[u8], field: &str) -> Option<Vec<u8>> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    match value.get(field)? {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
            Some(v.to_string().into_bytes())
        }
        _ => None,
    }
}

/// Prefix of raw topics: `raw.<stream>`.
pub const RAW_PREFIX: &str = "raw.";
/// Prefix of logpipe's internal topics on either cluster.
pub const INTERNAL_PREFIX: &str = "_lp.";
/// Default template of the clean topic for a raw topic.
pub const DEFAULT_CLEAN_TEMPLATE: &str = "clean.{stream}";
/// Default template of the dead-letter topic for a raw topic.
pub const DEFAULT_DLQ_TEMPLATE: &str = "dlq.{stream}";

/// The stream name of a topic: `raw.game` => `game`; a topic without the `raw.` prefix is its own
/// stream, so templates still give distinct names for topics produced by other tools.
pub fn stream_of(topic: &str) -> &str {
    topic.strip_prefix(RAW_PREFIX).unwrap_or(topic)
}

/// `_lp.mirror.<name>.state`: where the mirror instance group `name` keeps each source
/// partition's committed position, on the target cluster.
pub fn mirror_state_topic(name: &str) -> String {
    format!("{INTERNAL_PREFIX}mirror.{name}.state")
}

/// `_lp.validator.<group>.replay-state`: the validator's default changelog of the filter that
/// removes the agents' resends, for its consumer group `group`.
///
/// The name still says "replay", the filter's old name: running validators keep their state in
/// this topic, and a new name would make an upgraded validator start with an empty filter and
/// pass on every resend of the last checkpoint interval as a new record.
pub fn resend_state_topic(group: &str) -> String {
    format!("{INTERNAL_PREFIX}validator.{group}.replay-state")
}

/// `_lp.cep.rules`: the CEP workers' rule documents, compacted, one record per rule version.
pub const CEP_RULES_TOPIC: &str = "_lp.cep.rules";

/// `cep.matches`: where a CEP rule's matches go when its document names no output topic.
pub const CEP_MATCHES_TOPIC: &str = "cep.matches";

/// `cep.late`: where a timed CEP rule's events go when they arrive after its watermark passed
/// them, with the rule and how late they were.
pub const CEP_LATE_TOPIC: &str = "cep.late";

/// `_lp.cep.state.<group>`: the compacted changelog of the CEP worker group `group`'s keyed state.
pub fn cep_state_topic(group: &str) -> String {
    format!("{INTERNAL_PREFIX}cep.state.{group}")
}

/// `_lp.cep.repartition.<group>.<key>`: the CEP worker group `group`'s events re-keyed by the
/// field path `key`, so that every event of one key value reaches one worker. The group is part
/// of the name so that two groups on one cluster never read each other's events.
pub fn cep_repartition_topic(group: &str, key: &str) -> String {
    format!("{INTERNAL_PREFIX}cep.repartition.{group}.{key}")
}

/// `dlq.lake.<table>`: clean records the lake loader could not write to the table `table`.
pub fn lake_dlq_topic(table: &str) -> String {
    format!("dlq.lake.{table}")
}

/// The raw topic of a stream: `game` => `raw.game`.
pub fn raw_topic(stream: &str) -> String {
    format!("{RAW_PREFIX}{stream}")
}

/// A topic name template with `{stream}` (the raw topic without `raw.`) and `{topic}` (the whole
/// source topic name) placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicTemplate(String);

impl TopicTemplate {
    pub fn clean_default() -> Self {
        TopicTemplate(DEFAULT_CLEAN_TEMPLATE.to_owned())
    }

    pub fn dlq_default() -> Self {
        TopicTemplate(DEFAULT_DLQ_TEMPLATE.to_owned())
    }

    /// The template's output for a source topic.
    pub fn render(&self, topic: &str) -> String {
        self.0
            .replace("{stream}", stream_of(topic))
            .replace("{topic}", topic)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicTemplate {
    type Error = String;

    fn try_from(template: String) -> Result<Self, Self::Error> {
        let rendered = TopicTemplate(template.clone()).render("raw.x");
        if !template.contains("{stream}") && !template.contains("{topic}") {
            return Err(format!(
                "topic template {template:?} has neither {{stream}} nor {{topic}}: every raw topic would map to one topic"
            ));
        }
        if let Err(reason) = check_topic_name(&rendered) {
            return Err(format!(
                "topic template {template:?} does not give a valid topic name: {reason}"
            ));
        }
        Ok(TopicTemplate(template))
    }
}

impl From<TopicTemplate> for String {
    fn from(template: TopicTemplate) -> String {
        template.0
    }
}

/// Checks a topic name against Kafka's rules (at most 249 of `[a-zA-Z0-9._-]`, not `.` or `..`).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long; Kafka allows 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {c:?}; Kafka allows only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        pairs
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .collect()
    }

    #[test]
    fn record_id_round_trips_through_headers() {
        let id = RecordId {
            host: "game-7".into(),
            file: FileId(0xdead_beef),
            offset: 4096,
        };
        let written = id.headers();
        assert_eq!(written[1].1, "00000000deadbeef");
        let pairs: Vec<(&str, &str)> = written.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut with_other = headers(&pairs);
        with_other.insert(0, ("other", Some(b"x".as_slice())));
        assert_eq!(RecordId::from_headers(with_other).unwrap(), Some(id));
    }

    #[test]
    fn record_without_lp_headers_has_no_id() {
        assert_eq!(
            RecordId::from_headers(headers(&[("trace", "1")])).unwrap(),
            None
        );
    }

    #[test]
    fn partial_or_malformed_id_headers_are_errors() {
        let partial = headers(&[(header::HOST, "h"), (header::OFFSET, "1")]);
        assert_eq!(
            RecordId::from_headers(partial),
            Err(RecordIdError::Missing(header::FILE))
        );
        let upper = headers(&[
            (header::HOST, "h"),
            (header::FILE, "ABC"),
            (header::OFFSET, "1"),
        ]);
        assert_eq!(
            RecordId::from_headers(upper),
            Err(RecordIdError::Invalid {
                name: header::FILE,
                value: "ABC".into()
            })
        );
        let not_utf8: [(&str, Option<&[u8]>); 3] = [
            (header::HOST, Some(b"h\xff")),
            (header::FILE, Some(b"ab")),
            (header::OFFSET, Some(b"1")),
        ];
        assert_eq!(
            RecordId::from_headers(not_utf8),
            Err(RecordIdError::Invalid {
                name: header::HOST,
                value: "h\u{fffd}".into()
            })
        );
        let neg = headers(&[
            (header::HOST, "h"),
            (header::FILE, "ab"),
            (header::OFFSET, "-1"),
        ]);
        assert!(matches!(
            RecordId::from_headers(neg),
            Err(RecordIdError::Invalid {
                name: header::OFFSET,
                ..
            })
        ));
    }

    #[test]
    fn keys_follow_the_strategy() {
        let line = br#"{"player_id":"p-1","level":3}"#;
        assert_eq!(
            KeyStrategy::default().key("h", "/var/log/a.log", line),
            Some(b"h|/var/log/a.log".to_vec())
        );
        assert_eq!(KeyStrategy::None.key("h", "/a", line), None);
        assert_eq!(
            KeyStrategy::Fixed("k".into()).key("h", "/a", line),
            Some(b"k".to_vec())
        );
        assert_eq!(
            KeyStrategy::Field("player_id".into()).key("h", "/a", line),
            Some(b"p-1".to_vec())
        );
        assert_eq!(
            KeyStrategy::Field("level".into()).key("h", "/a", line),
            Some(b"3".to_vec())
        );
        // A line that is not JSON, or lacks the field, keeps its file's partition.
        assert_eq!(
            KeyStrategy::Field("player_id".into()).key("h", "/a", b"oops"),
            Some(b"h|/a".to_vec())
        );
        assert_eq!(
            KeyStrategy::Field("nope".into()).key("h", "/a", line),
            Some(b"h|/a".to_vec())
        );
    }

    #[test]
    fn key_strategy_reads_from_toml() {
        #[derive(Deserialize)]
        struct Input {
            key: KeyStrategy,
        }
        let parse = |s: &str| toml::from_str::<Input>(s).map(|i| i.key);
        assert_eq!(
            parse(r#"key = "host_path""#).unwrap(),
            KeyStrategy::HostPath
        );
        assert_eq!(parse(r#"key = "none""#).unwrap(), KeyStrategy::None);
        assert_eq!(
            parse(r#"key = { field = "player_id" }"#).unwrap(),
            KeyStrategy::Field("player_id".into())
        );
        assert_eq!(
            parse(r#"key = { fixed = "k" }"#).unwrap(),
            KeyStrategy::Fixed("k".into())
        );
        assert!(parse(r#"key = "hostpath""#).is_err());
    }

    #[test]
    fn default_topic_names() {
        assert_eq!(
            TopicTemplate::clean_default().render("raw.game"),
            "clean.game"
        );
        assert_eq!(TopicTemplate::dlq_default().render("raw.game"), "dlq.game");
        assert_eq!(
            TopicTemplate::clean_default().render("events"),
            "clean.events"
        );
        assert_eq!(
            TopicTemplate::try_from("{topic}.ok".to_owned())
                .unwrap()
                .render("raw.x"),
            "raw.x.ok"
        );
        assert_eq!(stream_of("raw.game"), "game");
        assert_eq!(raw_topic("game"), "raw.game");
        assert_eq!(mirror_state_topic("default"), "_lp.mirror.default.state");
        assert_eq!(
            resend_state_topic("logpipe-validator"),
            "_lp.validator.logpipe-validator.replay-state"
        );
    }

    #[test]
    fn replay_headers_round_trip() {
        let from = ReplayedFrom {
            topic: "dlq.game".into(),
            partition: 2,
            offset: 41,
        };
        let headers = from.headers();
        let pairs = |hs: &[(&'static str, String)]| -> Vec<(&'static str, Option<Vec<u8>>)> {
            hs.iter()
                .map(|(k, v)| (*k, Some(v.as_bytes().to_vec())))
                .collect()
        };
        let mut all = pairs(&headers);
        all.insert(0, (header::HOST, Some(b"h".to_vec())));
        let read = |p: &[(&'static str, Option<Vec<u8>>)]| {
            ReplayedFrom::from_headers(p.iter().map(|(k, v)| (*k, v.as_deref())))
        };
        assert_eq!(read(&all), Ok(Some(from.clone())));
        assert_eq!(from.to_string(), "dlq.game/2/41");
        // A record no replay wrote; one with a header missing; one malformed.
        assert_eq!(read(&all[..1]), Ok(None));
        assert_eq!(
            read(&all[..3]),
            Err(RecordIdError::Missing(replay_header::OFFSET))
        );
        all[2].1 = Some(b"two".to_vec());
        assert!(matches!(
            read(&all),
            Err(RecordIdError::Invalid {
                name: replay_header::PARTITION,
                ..
            })
        ));
        // Distinct from the error headers a dead letter carries and a replay removes.
        assert!(headers
            .iter()
            .all(|(k, _)| k.starts_with("lp.replay.") && !k.starts_with("lp.error.")));
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(TopicTemplate::try_from("clean".to_owned())
            .unwrap_err()
            .contains("neither"));
        assert!(TopicTemplate::try_from("clean/{stream}".to_owned())
            .unwrap_err()
            .contains("'/'"));
    }

    #[test]
    fn topic_name_rules() {
        assert!(check_topic_name("raw.game_1-x").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn dead_letter_headers_are_written_in_contract_order() {
        let mut dead = DeadLetterHeaders {
            stage: ErrorStage::Validate,
            reason: "expected int",
            path: Some("/a"),
            subject: Some("raw.game-value"),
            schema_id: Some(7),
            topic: "raw.game",
            partition: 2,
            offset: 41,
            omitted: Some(2_000_000),
        };
        let written = dead.headers();
        let names: Vec<_> = written.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, error_header::ALL);
        let values: Vec<_> = written.iter().map(|(_, value)| value.as_str()).collect();
        assert_eq!(
            values,
            [
                "validate",
                "expected int",
                "/a",
                "raw.game-value",
                "7",
                "raw.game",
                "2",
                "41",
                "2000000"
            ]
        );
        dead.omitted = None;
        dead.path = None;
        dead.subject = None;
        dead.schema_id = None;
        let names: Vec<_> = dead.headers().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                error_header::STAGE,
                error_header::REASON,
                error_header::TOPIC,
                error_header::PARTITION,
                error_header::OFFSET
            ]
        );
    }

    #[test]
    fn error_stage_names() {
        for stage in ErrorStage::ALL {
            assert_eq!(ErrorStage::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(ErrorStage::parse("nope"), None);
    }

    #[test]
    fn file_id_hex_is_strict() {
        assert_eq!(FileId::from_hex("00000000000000ff"), Some(FileId(255)));
        assert_eq!(FileId::from_hex("ff"), Some(FileId(255)));
        assert_eq!(FileId::from_hex(""), None);
        assert_eq!(FileId::from_hex("0x1"), None);
        assert_eq!(FileId::from_hex("00000000000000001"), None);
    }
}
