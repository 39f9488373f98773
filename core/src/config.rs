//! Config loading: one TOML file per service, unknown keys rejected by name, `${ENV}` secrets.
//!
//! Environment variables are substituted inside string values after the TOML is parsed, never in
//! the raw text: a secret containing a quote cannot break the file, and a `${X}` in a comment is
//! not read. Every error names the file and the key path.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config that could not be loaded: unreadable, not TOML, unknown or missing keys, bad values,
/// unset variables. The message names the file and the offending key.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads and deserializes a config file with the process environment for `${VAR}` references.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    parse(path, &text, |name| std::env::var(name).ok())
}

/// Parses config text; `lookup` resolves `${VAR}` references (tests pass their own).
pub fn parse<T, F>(path: &Path, text: &str, lookup: F) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    F: Fn(&str) -> Option<String>,
{
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError::new(path, e.message().to_owned() + &location(text, e.span())))?;
    for (key, value) in table.iter_mut() {
        substitute_value(value, key, &lookup).map_err(|m| ConfigError::new(path, m))?;
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let at = e.path().to_string();
        let message = e.into_inner().to_string();
        let message = if at == "." {
            message
        } else {
            format!("at `{at}`: {message}")
        };
        ConfigError::new(path, message)
    })
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

fn substitute_value<F>(value: &mut toml::Value, at: &str, lookup: &F) -> Result<(), String>
where
    F: Fn(&str) -> Option<String>,
{
    match value {
        toml::Value::String(s) => {
            *s = substitute(s, lookup).map_err(|m| format!("at `{at}`: {m}"))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{at}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                substitute_value(item, &format!("{at}.{key}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` with the variable's value and `${VAR:-default}` with the value or the
/// default; `$$` is a literal `$`. An unset variable without a default is an error, so a missing
/// secret fails at start-up instead of becoming an empty password.
pub(crate) fn substitute<F>(text: &str, lookup: &F) -> Result<String, String>
where
    F: Fn(&str) -> Option<String>,
{
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{reference}}}` is not a valid variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Durations in a config as humantime text (`30s`, `100ms`, `1h`): a key takes it with
/// `#[serde(with = "logpipe_core::config::duration_text")]`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?}: {e} (write it like 100ms, 30s, 1h)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        nested: Nested,
        #[serde(default)]
        list: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3\"cr$t".into()),
            "HOST" => Some("kafka-1".into()),
            _ => None,
        }
    }

    fn parse_sample(text: &str) -> Result<Sample, ConfigError> {
        parse(Path::new("/etc/logpipe/sample.toml"), text, env)
    }

    #[test]
    fn unknown_key_is_rejected_naming_key_and_file() {
        let err = parse_sample("name = \"a\"\n[nested]\npasword = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/logpipe/sample.toml"), "{err}");
        assert!(err.contains("pasword"), "{err}");
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let err = parse_sample("name = \"a\"\nstate_dri = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `state_dri`"), "{err}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = parse_sample("[nested]\n").unwrap_err().to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let err = parse_sample("name = \"a\"\nlist = [\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") || err.contains("line 3"), "{err}");
    }

    #[test]
    fn env_substitution_in_nested_strings_and_arrays() {
        let s = parse_sample(
            "name = \"${HOST}:9092\"\nlist = [\"a-${HOST}\", \"$$5\"]\n[nested]\npassword = \"${SECRET}\"\n[nested.properties]\n\"sasl.username\" = \"${USER_X:-logpipe}\"\n",
        )
        .unwrap();
        assert_eq!(s.name, "kafka-1:9092");
        assert_eq!(s.list, vec!["a-kafka-1".to_owned(), "$5".to_owned()]);
        // The value is used as it is: quotes and dollars inside a secret do not break the file.
        assert_eq!(s.nested.password.as_deref(), Some("s3\"cr$t"));
        assert_eq!(s.nested.properties["sasl.username"], "logpipe");
    }

    #[test]
    fn unset_variable_is_an_error_naming_variable_and_key() {
        let err = parse_sample("name = \"a\"\n[nested]\npassword = \"${NOPE}\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(err.contains("nested.password"), "{err}");
    }

    #[test]
    fn comments_are_not_substituted() {
        parse_sample("# ${NOPE}\nname = \"a\"\n").unwrap();
    }

    #[test]
    fn bad_references() {
        assert!(substitute("${", &env).unwrap_err().contains("unterminated"));
        assert!(substitute("${a b}", &env)
            .unwrap_err()
            .contains("not a valid"));
        assert_eq!(substitute("cost $5", &env).unwrap(), "cost $5");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"x\"\n").unwrap();
        assert_eq!(load::<Sample>(&path).unwrap().name, "x");
        let err = load::<Sample>(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.toml") && err.contains("cannot read"),
            "{err}"
        );
    }
}
