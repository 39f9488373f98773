//! The event-time part of a rule document: how late and out of order its events may be, its
//! sequence bound (`within`), its window, its schedule and where a new version starts reading
//! (`from`). A rule that gives any of `ordered`, `within`, `window`, `schedule`,
//! `max_out_of_order` or `allowed_lateness` is *timed*: its events wait until the watermark
//! passes them and are evaluated in event-time order (see `timed`).
//!
//! Durations are humantime text (`5s`, `2m`, `1h`, `500ms`, `1d`) or whole milliseconds.

use serde_json::Value;

use crate::rule::{error, RuleError};

/// The watermark trails the highest event time seen by this much unless the rule says.
const DEFAULT_MAX_OUT_OF_ORDER_MS: i64 = 5_000;
/// Most windows one event of a sliding window may fall in (size / every).
const MAX_SLIDES: i64 = 1_000;
/// Longest `max_out_of_order` or `allowed_lateness`: the events wait this long in state.
const MAX_WAIT_MS: i64 = 7 * 86_400_000;

/// How a timed rule's counts are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// `[k * size, (k + 1) * size)` from the epoch.
    Tumbling { size: i64 },
    /// `[k * every, k * every + size)`: each event counts in every window holding it.
    Sliding { size: i64, every: i64 },
    /// A key's events with gaps of at most `gap` between them.
    Session { gap: i64 },
    /// Runs of `count` consecutive events of the key.
    Events { count: u32 },
}

/// Where a new rule version starts reading its sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum From {
    /// Records produced from the version's creation on.
    #[default]
    Latest,
    /// The beginning of the source topics.
    Earliest,
    /// The first records at or after this time (epoch ms), by the topic's offsets for times.
    At(i64),
}

/// A timed rule's event-time settings, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) max_out_of_order: i64,
    pub(crate) allowed_lateness: i64,
    /// Steps must occur in their order (a sequence).
    pub(crate) ordered: bool,
    /// The whole match fits in this span; a sequence without it gets the worker's
    /// `default_within`.
    pub(crate) within: Option<i64>,
    pub(crate) window: Option<Window>,
    /// Only events in `[starts_at, ends_at)` count.
    pub(crate) starts_at: Option<i64>,
    pub(crate) ends_at: Option<i64>,
}

/// The event-time keys as written.
pub(crate) struct TimingDoc<'a> {
    pub(crate) ordered: Option<bool>,
    pub(crate) within: Option<&'a Value>,
    pub(crate) window: Option<&'a Value>,
    pub(crate) schedule: Option<&'a Value>,
    pub(crate) max_out_of_order: Option<&'a Value>,
    pub(crate) allowed_lateness: Option<&'a Value>,
}

/// Reads a duration: humantime text or whole milliseconds; positive unless `zero_ok`.
pub(crate) fn duration_ms(key: &str, value: &Value, zero_ok: bool) -> Result<i64, RuleError> {
    let ms = match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| error(key, format!("{n}: whole milliseconds or text like 5s")))?,
        Value::String(text) => humantime::parse_duration(text.trim())
            .map_err(|e| {
                error(
                    key,
                    format!("{text:?}: {e} (write it like 500ms, 5s, 2m, 1h, 1d)"),
                )
            })?
            .as_millis()
            .try_into()
            .map_err(|_| error(key, format!("{text:?} is too long")))?,
        other => return Err(error(key, format!("{other}: a duration like 5s or 1h"))),
    };
    if ms < 0 || (ms == 0 && !zero_ok) {
        return Err(error(key, "must be positive"));
    }
    Ok(ms)
}

/// Reads an RFC 3339 time.
fn instant_ms(key: &str, value: &Value) -> Result<i64, RuleError> {
    value
        .as_str()
        .and_then(|text| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .ok_or_else(|| {
            error(
                key,
                format!("{value}: an RFC 3339 time like 2026-12-01T00:00:00Z"),
            )
        })
}

/// Reads `from`.
pub(crate) fn parse_from(value: Option<&str>) -> Result<From, RuleError> {
    match value {
        None | Some("latest") => Ok(From::Latest),
        Some("earliest") => Ok(From::Earliest),
        Some(text) => instant_ms("from", &Value::String(text.to_owned()))
            .map(From::At)
            .map_err(|e| error("from", format!("{}; or latest, earliest", e.message))),
    }
}

fn parse_window(value: &Value) -> Result<Window, RuleError> {
    let Some(map) = value.as_object() else {
        return Err(error(
            "window",
            "one of {tumbling: 1m}, {sliding: 10m, every: 1m}, {session: 5m}, {events: 100}",
        ));
    };
    let only = |allowed: &[&str]| -> Result<(), RuleError> {
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(error(
                format!("window.{k}"),
                format!("not a key of this window; give {}", allowed.join(" and ")),
            )),
            None => Ok(()),
        }
    };
    if let Some(size) = map.get("tumbling") {
        only(&["tumbling"])?;
        return Ok(Window::Tumbling {
            size: duration_ms("window.tumbling", size, false)?,
        });
    }
    if let Some(size) = map.get("sliding") {
        only(&["sliding", "every"])?;
        let size = duration_ms("window.sliding", size, false)?;
        let every = map.get("every").ok_or_else(|| {
            error(
                "window.every",
                "a sliding window needs `every` (how far it moves)",
            )
        })?;
        let every = duration_ms("window.every", every, false)?;
        if every > size || size / every > MAX_SLIDES {
            return Err(error(
                "window.every",
                format!("must be at most the size and at least 1/{MAX_SLIDES} of it"),
            ));
        }
        return Ok(Window::Sliding { size, every });
    }
    if let Some(gap) = map.get("session") {
        only(&["session"])?;
        return Ok(Window::Session {
            gap: duration_ms("window.session", gap, false)?,
        });
    }
    if let Some(count) = map.get("events") {
        only(&["events"])?;
        let count = count
            .as_u64()
            .filter(|n| (1..=1_000_000_000).contains(n))
            .ok_or_else(|| {
                error(
                    "window.events",
                    format!("{count}: a count from 1 to 1000000000"),
                )
            })?;
        return Ok(Window::Events {
            count: count as u32,
        });
    }
    Err(error(
        "window",
        "one of {tumbling: 1m}, {sliding: 10m, every: 1m}, {session: 5m}, {events: 100}",
    ))
}

impl Timing {
    /// The timing of a document, `None` when the rule is not timed. `steps` is how many steps
    /// the rule has.
    pub(crate) fn parse(doc: &TimingDoc<'_>, steps: usize) -> Result<Option<Timing>, RuleError> {
        let timed = doc.ordered == Some(true)
            || doc.within.is_some()
            || doc.window.is_some()
            || doc.schedule.is_some()
            || doc.max_out_of_order.is_some()
            || doc.allowed_lateness.is_some();
        if !timed {
            return Ok(None);
        }
        let wait = |key: &str, value: Option<&Value>, default: i64| -> Result<i64, RuleError> {
            let ms = value.map_or(Ok(default), |v| duration_ms(key, v, true))?;
            if ms > MAX_WAIT_MS {
                return Err(error(key, "at most 7d"));
            }
            Ok(ms)
        };
        let max_out_of_order = wait(
            "max_out_of_order",
            doc.max_out_of_order,
            DEFAULT_MAX_OUT_OF_ORDER_MS,
        )?;
        let allowed_lateness = wait("allowed_lateness", doc.allowed_lateness, 0)?;
        let ordered = doc.ordered == Some(true);
        let within = doc
            .within
            .map(|v| duration_ms("within", v, false))
            .transpose()?;
        let window = doc.window.map(parse_window).transpose()?;
        if ordered && steps < 2 {
            return Err(error(
                "ordered",
                "a sequence needs at least two steps in event_list",
            ));
        }
        if within.is_some() && window.is_some() {
            return Err(error("window", "give `within` or `window`, not both"));
        }
        let (mut starts_at, mut ends_at) = (None, None);
        if let Some(schedule) = doc.schedule {
            let Some(map) = schedule.as_object() else {
                return Err(error(
                    "schedule",
                    "{starts_at: <RFC 3339>, ends_at: <RFC 3339>}",
                ));
            };
            for (key, value) in map {
                match key.as_str() {
                    "starts_at" => starts_at = Some(instant_ms("schedule.starts_at", value)?),
                    "ends_at" => ends_at = Some(instant_ms("schedule.ends_at", value)?),
                    other => {
                        return Err(error(
                            format!("schedule.{other}"),
                            "not a key of schedule; give starts_at and/or ends_at",
                        ))
                    }
                }
            }
            if let (Some(start), Some(end)) = (starts_at, ends_at) {
                if end <= start {
                    return Err(error("schedule.ends_at", "must be after starts_at"));
                }
            }
        }
        Ok(Some(Timing {
            max_out_of_order,
            allowed_lateness,
            ordered,
            within,
            window,
            starts_at,
            ends_at,
        }))
    }

    /// How long a partial match may last, with the key that says so: `within` or the window's
    /// time span.
    pub(crate) fn span(&self) -> Option<(&'static str, i64)> {
        match (self.within, self.window) {
            (Some(within), _) => Some(("within", within)),
            (_, Some(Window::Tumbling { size })) => Some(("window.tumbling", size)),
            (_, Some(Window::Sliding { size, .. })) => Some(("window.sliding", size)),
            (_, Some(Window::Session { gap })) => Some(("window.session", gap)),
            _ => None,
        }
    }

    /// Whether an event at `t` is inside the schedule.
    pub(crate) fn scheduled(&self, t: i64) -> bool {
        self.starts_at.is_none_or(|s| t >= s) && self.ends_at.is_none_or(|e| t < e)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(doc: Value, steps: usize) -> Result<Option<Timing>, RuleError> {
        Timing::parse(
            &TimingDoc {
                ordered: doc.get("ordered").and_then(Value::as_bool),
                within: doc.get("within"),
                window: doc.get("window"),
                schedule: doc.get("schedule"),
                max_out_of_order: doc.get("max_out_of_order"),
                allowed_lateness: doc.get("allowed_lateness"),
            },
            steps,
        )
    }

    #[test]
    fn timed_keys_are_read_with_defaults() {
        assert_eq!(parse(json!({}), 1).unwrap(), None);
        let t = parse(json!({"ordered": true, "within": "1h"}), 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.within, t.max_out_of_order, t.allowed_lateness),
            (Some(3_600_000), 5_000, 0)
        );
        let t = parse(
            json!({"window": {"sliding": "10m", "every": "1m"}, "max_out_of_order": 250}),
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            t.window,
            Some(Window::Sliding {
                size: 600_000,
                every: 60_000
            })
        );
        assert_eq!(t.max_out_of_order, 250);
        let t = parse(json!({"schedule": {"starts_at": "2026-12-01T00:00:00Z", "ends_at": "2026-12-08T00:00:00Z"}}), 1).unwrap().unwrap();
        assert!(t.scheduled(t.starts_at.unwrap()) && !t.scheduled(t.ends_at.unwrap()));
        assert_eq!(
            parse(json!({"window": {"events": 100}}), 1)
                .unwrap()
                .unwrap()
                .window,
            Some(Window::Events { count: 100 })
        );
        assert_eq!(
            parse(json!({"window": {"session": "5m"}}), 1)
                .unwrap()
                .unwrap()
                .window,
            Some(Window::Session { gap: 300_000 })
        );
        assert_eq!(parse_from(Some("earliest")).unwrap(), From::Earliest);
        assert_eq!(
            parse_from(Some("1970-01-01T00:00:01Z")).unwrap(),
            From::At(1_000)
        );
        assert_eq!(parse_from(None).unwrap(), From::Latest);
    }

    #[test]
    fn bad_timing_names_the_key() {
        let table = [
            (json!({"ordered": true, "within": "1h"}), 1, "ordered"),
            (json!({"within": "soon"}), 1, "within"),
            (json!({"within": 0}), 1, "within"),
            (
                json!({"within": "1h", "window": {"tumbling": "1m"}}),
                1,
                "window",
            ),
            (
                json!({"window": {"tumbling": "1m", "every": "1s"}}),
                1,
                "window.every",
            ),
            (json!({"window": {"sliding": "1m"}}), 1, "window.every"),
            (
                json!({"window": {"sliding": "1h", "every": "1s"}}),
                1,
                "window.every",
            ),
            (json!({"window": {"hopping": "1m"}}), 1, "window"),
            (json!({"window": {"events": 0}}), 1, "window.events"),
            (
                json!({"schedule": {"starts_at": "tomorrow"}}),
                1,
                "schedule.starts_at",
            ),
            (
                json!({"schedule": {"starts_at": "2026-12-02T00:00:00Z", "ends_at": "2026-12-01T00:00:00Z"}}),
                1,
                "schedule.ends_at",
            ),
            (
                json!({"schedule": {"start": "2026-12-02T00:00:00Z"}}),
                1,
                "schedule.start",
            ),
            (json!({"allowed_lateness": "30d"}), 1, "allowed_lateness"),
        ];
        for (doc, steps, key) in table {
            let err = parse(doc.clone(), steps).unwrap_err();
            assert_eq!(err.key, key, "{doc} => {err}");
        }
        assert_eq!(parse_from(Some("yesterday")).unwrap_err().key, "from");
    }
}
