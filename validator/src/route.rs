//! Routes: which raw topics a rule covers, which subject a record is checked against, where its
//! clean and dead-letter copies go. The first route whose regex matches the whole topic name wins.

use std::borrow::Cow;

use logpipe_core::record::TopicTemplate;
use regex::Regex;
use serde::Deserialize;

use crate::avro::ExtraFields;
use crate::doc::Doc;
use logpipe_schema_client::Version;

/// One `[[routes]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex over raw topic names; it must match the whole name.
    pub topics: String,
    /// `"topic"` (`<topic>-value`), `{ field = "event", prefix = "", suffix = "" }` or
    /// `{ fixed = "subject" }`.
    pub subject: SubjectStrategy,
    /// Clean topic template (`{stream}`, `{topic}`).
    #[serde(default = "TopicTemplate::clean_default")]
    pub clean: TopicTemplate,
    /// Dead-letter topic template.
    #[serde(default = "TopicTemplate::dlq_default")]
    pub dlq: TopicTemplate,
    /// `"latest"` (the default: new versions are picked up within seconds) or a version number.
    #[serde(default)]
    pub version: VersionConfig,
    /// Fields the Avro schema does not have: `drop` (default, counted) or `reject`.
    #[serde(default)]
    pub extra_fields: ExtraFields,
}

/// The `version` key: `"latest"` or a positive integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct VersionConfig(pub Version);

impl TryFrom<toml::Value> for VersionConfig {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<Self, Self::Error> {
        match value {
            toml::Value::String(s) if s == "latest" => Ok(VersionConfig(Version::Latest)),
            toml::Value::Integer(v) if v >= 1 && v <= i64::from(u32::MAX) => {
                Ok(VersionConfig(Version::Pinned(v as u32)))
            }
            other => Err(format!(
                "version must be \"latest\" or a version number >= 1, not {other}"
            )),
        }
    }
}

/// How a record's subject is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SubjectSpec")]
pub enum SubjectStrategy {
    /// Confluent's TopicNameStrategy: `<topic>-value`.
    TopicName,
    /// `<prefix><value of a top-level string field><suffix>`, e.g. `game.` + `event`.
    Field {
        field: String,
        prefix: String,
        suffix: String,
    },
    /// The same subject for every record.
    Fixed(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SubjectSpec {
    Keyword(String),
    Field(FieldSpec),
    Fixed(FixedSpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    field: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    suffix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedSpec {
    fixed: String,
}

impl TryFrom<SubjectSpec> for SubjectStrategy {
    type Error = String;

    fn try_from(spec: SubjectSpec) -> Result<Self, Self::Error> {
        match spec {
            SubjectSpec::Keyword(k) if k == "topic" => Ok(SubjectStrategy::TopicName),
            SubjectSpec::Keyword(k) => Err(format!(
                "subject {k:?} is not a strategy: use \"topic\", {{ field = \"...\" }} or {{ fixed = \"{k}\" }}"
            )),
            SubjectSpec::Field(FieldSpec { field, .. }) if field.is_empty() => Err("subject field name is empty".into()),
            SubjectSpec::Field(FieldSpec { field, prefix, suffix }) => Ok(SubjectStrategy::Field { field, prefix, suffix }),
            SubjectSpec::Fixed(FixedSpec { fixed }) if fixed.is_empty() => Err("fixed subject is empty".into()),
            SubjectSpec::Fixed(FixedSpec { fixed }) => Ok(SubjectStrategy::Fixed(fixed)),
        }
    }
}

/// Why no subject could be chosen: a reason and, for the field strategy, the field's pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSubject {
    pub reason: String,
    pub pointer: Option<String>,
}

impl SubjectStrategy {
    /// The subject of one record read from `topic`: borrowed where it can be (a fixed subject,
    /// a field without prefix or suffix), as it is worked out for every record.
    pub fn subject<'s>(
        &'s self,
        topic: &str,
        value: &'s Doc<'_>,
    ) -> Result<Cow<'s, str>, NoSubject> {
        match self {
            SubjectStrategy::TopicName => Ok(Cow::Owned(format!("{topic}-value"))),
            SubjectStrategy::Fixed(subject) => Ok(Cow::Borrowed(subject)),
            SubjectStrategy::Field { field, prefix, suffix } => match value.get(field) {
                Some(Doc::String(s)) if !s.is_empty() && prefix.is_empty() && suffix.is_empty() => {
                    Ok(Cow::Borrowed(s))
                }
                Some(Doc::String(s)) if !s.is_empty() => Ok(Cow::Owned(format!("{prefix}{s}{suffix}"))),
                found => Err(NoSubject {
                    reason: match found {
                        None => format!("field {field:?} that names the subject is missing"),
                        Some(v) => format!("field {field:?} that names the subject must be a non-empty string, not {v}"),
                    },
                    pointer: Some(format!("/{}", field.replace('~', "~0").replace('/', "~1"))),
                }),
            },
        }
    }
}

/// A route ready to use.
#[derive(Debug, Clone)]
pub struct Route {
    pub topics: Regex,
    pub subject: SubjectStrategy,
    pub clean: TopicTemplate,
    pub dlq: TopicTemplate,
    pub version: Version,
    pub extra_fields: ExtraFields,
}

/// The routes in config order.
#[derive(Debug, Clone)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Compiles the routes; errors name the route (1-based, as in the file).
    pub fn new(configs: &[RouteConfig]) -> anyhow::Result<Routes> {
        if configs.is_empty() {
            anyhow::bail!("no [[routes]]: the validator would read nothing");
        }
        let mut routes = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let topics = Regex::new(&format!("^(?:{})$", c.topics)).map_err(|e| {
                anyhow::anyhow!(
                    "routes[{}].topics {:?} is not a valid regex: {e}",
                    i + 1,
                    c.topics
                )
            })?;
            routes.push(Route {
                topics,
                subject: c.subject.clone(),
                clean: c.clean.clone(),
                dlq: c.dlq.clone(),
                version: c.version.0,
                extra_fields: c.extra_fields,
            });
        }
        Ok(Routes(routes))
    }

    /// The first route covering `topic`.
    pub fn find(&self, topic: &str) -> Option<&Route> {
        self.0.iter().find(|r| r.topics.is_match(topic))
    }

    /// Whether the validator should read `topic`: a route covers it, and it is neither internal
    /// nor an output of a route (a broad regex must not feed the validator its own output).
    pub fn reads(&self, topic: &str, all_topics: &[String]) -> bool {
        if topic.starts_with(logpipe_core::record::INTERNAL_PREFIX)
            || topic.starts_with('_')
            || self.find(topic).is_none()
        {
            return false;
        }
        !all_topics.iter().any(|source| {
            source != topic
                && self.find(source).is_some_and(|r| {
                    r.clean.render(source) == topic || r.dlq.render(source) == topic
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn routes(text: &str) -> anyhow::Result<Routes> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            routes: Vec<RouteConfig>,
        }
        let file: File = toml::from_str(text)?;
        Routes::new(&file.routes)
    }

    #[test]
    fn first_match_wins_and_strategies_name_subjects() {
        let r = routes(
            r#"
            [[routes]]
            topics = "raw\\.game"
            subject = { field = "event", prefix = "game." }
            version = 3
            extra_fields = "reject"
            [[routes]]
            topics = "raw\\..*"
            subject = "topic"
            clean = "valid.{stream}"
            dlq = "bad.{topic}"
            [[routes]]
            topics = "orders"
            subject = { fixed = "orders-v" }
            "#,
        )
        .unwrap();
        let game = r.find("raw.game").unwrap();
        assert_eq!(game.version, Version::Pinned(3));
        assert_eq!(game.extra_fields, ExtraFields::Reject);
        assert_eq!(game.clean.render("raw.game"), "clean.game");
        assert_eq!(
            game.subject
                .subject("raw.game", &Doc::of(&json!({"event": "login"})))
                .unwrap(),
            "game.login"
        );
        let err = game
            .subject
            .subject("raw.game", &Doc::of(&json!({"event": 5})))
            .unwrap_err();
        assert_eq!(err.pointer.as_deref(), Some("/event"));
        assert!(game
            .subject
            .subject("raw.game", &Doc::of(&json!({})))
            .is_err());

        let other = r.find("raw.gamex").unwrap();
        assert_eq!(other.version, Version::Latest);
        assert_eq!(
            other
                .subject
                .subject("raw.gamex", &Doc::of(&json!({})))
                .unwrap(),
            "raw.gamex-value"
        );
        assert_eq!(
            (other.clean.render("raw.web"), other.dlq.render("raw.web")),
            ("valid.web".into(), "bad.raw.web".into())
        );
        assert_eq!(
            r.find("orders")
                .unwrap()
                .subject
                .subject("orders", &Doc::of(&json!(1)))
                .unwrap(),
            "orders-v"
        );
        // A fixed subject and a bare field's value are borrowed, not copied for each record.
        let event = json!({"event": "login"});
        let event = Doc::of(&event);
        let bare = SubjectStrategy::Field {
            field: "event".into(),
            prefix: String::new(),
            suffix: String::new(),
        };
        assert!(matches!(
            bare.subject("raw.game", &event),
            Ok(Cow::Borrowed("login"))
        ));
        let fixed = &r.find("orders").unwrap().subject;
        assert!(matches!(
            fixed.subject("orders", &event),
            Ok(Cow::Borrowed("orders-v"))
        ));
        // Regexes match whole names.
        assert!(r.find("xraw.game").is_none() && r.find("orders2").is_none());
    }

    #[test]
    fn outputs_and_internal_topics_are_never_read() {
        let r = routes("[[routes]]\ntopics = \".*\"\nsubject = \"topic\"\n").unwrap();
        let all: Vec<String> = [
            "raw.a",
            "clean.a",
            "dlq.a",
            "_lp.x",
            "__consumer_offsets",
            "other",
        ]
        .map(String::from)
        .to_vec();
        let read: Vec<&String> = all.iter().filter(|t| r.reads(t, &all)).collect();
        assert_eq!(read, ["raw.a", "other"]);
    }

    #[test]
    fn bad_routes_are_refused_with_a_reason() {
        let err = routes("[[routes]]\ntopics = \"(\"\nsubject = \"topic\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("routes[1].topics"), "{err}");
        let err = routes("[[routes]]\ntopics = \"a\"\nsubject = \"orders\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fixed"), "{err}");
        assert!(routes("[[routes]]\ntopics = \"a\"\nsubject = \"topic\"\nversion = 0\n").is_err());
        assert!(
            routes("[[routes]]\ntopics = \"a\"\nsubject = \"topic\"\nclean = \"fixed\"\n").is_err()
        );
        assert!(routes(
            "[[routes]]\ntopics = \"a\"\nsubject = \"topic\"\nextra_fields = \"keep\"\n"
        )
        .is_err());
        assert!(routes("routes = []\n").is_err());
    }
}
