//! Machine-readable benchmark results.
//!
//! Every benchmark in `bench/` keeps printing its own human table, and in addition emits one
//! [`Row`] per measured subject through [`emit`]: a JSON line appended to the file named by the
//! `LOGPIPE_BENCH_JSON` environment variable (nothing happens when it is unset, so `cargo bench`
//! alone behaves as before). `bench/run` sets the variable, runs the benchmarks, and renders the
//! collected rows into `bench/results/REPORT.md` with a chart of each ratio against its target.
//!
//! Why a ratio: absolute numbers on a shared machine are noise, so every benchmark measures a
//! reference (a plain librdkafka producer, kcat, rsyslog, a trivial handler...) in the same run
//! and the row carries `value / reference_value`. A row may also have no reference, when the
//! target is absolute (peak RSS, a latency bound).
//!
//! ```no_run
//! use logpipe_devkit::benchreport::Row;
//! Row::new("mirror", "200 B", "logpipe-mirror", 104_857.0, "rec/s")
//!     .against("kcat -C | kcat -P", 269_668.0)
//!     .target(3.0)
//!     .extra("peak_rss_mib", 84.0)
//!     .emit()
//!     .expect("writing the benchmark row");
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The environment variable naming the JSON-lines file rows are appended to.
pub const ENV: &str = "LOGPIPE_BENCH_JSON";

/// One measured subject of one benchmark case, next to its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The benchmark: `agent`, `mirror`, `validator`, `schema-store`, `pipeline`.
    pub bench: String,
    /// The case within it, e.g. `200 B records`, `GET /schemas/ids/{id}`.
    pub case: String,
    /// What was measured, e.g. `logpipe-mirror`.
    pub subject: String,
    /// What it is compared with, measured in the same run; `None` for an absolute target.
    pub reference: Option<String>,
    /// The subject's measurement, in `unit`.
    pub value: f64,
    /// Unit of `value` and `reference_value`, e.g. `rec/s`, `MB/s`, `ms`, `MiB`.
    pub unit: String,
    /// The reference's measurement, same unit.
    pub reference_value: Option<f64>,
    /// `value / reference_value` unless the benchmark states another ratio.
    pub ratio: Option<f64>,
    /// The target: the ratio's bound when there is a ratio, else the value's bound.
    pub target: Option<f64>,
    /// The target is an upper bound (latency, memory) instead of a lower one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lower_is_better: bool,
    /// Further measurements worth keeping (peak RSS, CPU s/GB, p99...), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Row {
    /// A row without reference or target yet.
    pub fn new(bench: &str, case: &str, subject: &str, value: f64, unit: &str) -> Row {
        Row {
            bench: bench.to_owned(),
            case: case.to_owned(),
            subject: subject.to_owned(),
            reference: None,
            value,
            unit: unit.to_owned(),
            reference_value: None,
            ratio: None,
            target: None,
            lower_is_better: false,
            extra: BTreeMap::new(),
        }
    }

    /// Sets the reference measured in the same run; the ratio becomes `value / reference_value`.
    pub fn against(mut self, reference: &str, reference_value: f64) -> Row {
        self.reference = Some(reference.to_owned());
        self.reference_value = Some(reference_value);
        self.ratio = Some(self.value / reference_value);
        self
    }

    /// Overrides the ratio, for a benchmark that computes it another way (e.g. from best times).
    pub fn ratio(mut self, ratio: f64) -> Row {
        self.ratio = Some(ratio);
        self
    }

    /// The target is a lower bound: met when the ratio (or, without reference, the value) is at
    /// least `bound`.
    pub fn target(mut self, bound: f64) -> Row {
        self.target = Some(bound);
        self.lower_is_better = false;
        self
    }

    /// The target is an upper bound: met when the ratio (or the value) is at most `bound`.
    pub fn target_at_most(mut self, bound: f64) -> Row {
        self.target = Some(bound);
        self.lower_is_better = true;
        self
    }

    /// Keeps a further measurement under `name`.
    pub fn extra(mut self, name: &str, value: impl Into<serde_json::Value>) -> Row {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// What the target is checked against: the ratio if there is one, else the value.
    pub fn measure(&self) -> f64 {
        self.ratio.unwrap_or(self.value)
    }

    /// Whether the target is met; `None` when the row has no target or a non-finite measure.
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        let measure = self.measure();
        if !measure.is_finite() {
            return None;
        }
        Some(if self.lower_is_better { measure <= target } else { measure >= target })
    }

    /// Rows of different runs that measure the same thing have the same key.
    pub fn key(&self) -> (&str, &str, &str, Option<&str>) {
        (&self.bench, &self.case, &self.subject, self.reference.as_deref())
    }

    /// Appends this row to the file named by `LOGPIPE_BENCH_JSON`, if set: see [`emit`].
    pub fn emit(&self) -> anyhow::Result<()> {
        emit(self)
    }
}

/// Appends `row` as one JSON line to the file named by `LOGPIPE_BENCH_JSON` (created if
/// missing); does nothing when the variable is unset or empty. An error (unwritable file) is
/// returned rather than ignored: a run that asked for rows must not silently lose them.
pub fn emit(row: &Row) -> anyhow::Result<()> {
    match std::env::var_os(ENV) {
        Some(path) if !path.is_empty() => append(Path::new(&path), row),
        _ => Ok(()),
    }
}

/// Appends `row` as one JSON line to `path`, in a single write so that rows of benchmarks
/// writing to the same file do not interleave.
pub fn append(path: &Path, row: &Row) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(row)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} ({ENV})", path.display()))?;
    file.write_all(&line).with_context(|| format!("appending to {}", path.display()))
}

/// Reads the rows of a JSON-lines file written by [`emit`]; blank lines are skipped, and a
/// malformed line is an error naming its line number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{}:{}: not a benchmark row", path.display(), i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror_row() -> Row {
        Row::new("mirror", "200 B", "logpipe-mirror", 300.0, "rec/s").against("kcat -C | kcat -P", 100.0).target(3.0).extra("peak_rss_mib", 84.5)
    }

    #[test]
    fn ratio_and_target() {
        let row = mirror_row();
        assert_eq!(row.ratio, Some(3.0));
        assert_eq!(row.met(), Some(true));
        assert_eq!(row.clone().against("kcat", 101.0).met(), Some(false));
        // An absolute upper bound without a reference: checked against the value.
        let rss = Row::new("agent", "idle, 1,000 files", "logpipe-agent RSS", 13.4, "MiB").target_at_most(20.0);
        assert_eq!(rss.measure(), 13.4);
        assert_eq!(rss.met(), Some(true));
        assert_eq!(Row { value: 20.5, ..rss }.met(), Some(false));
        // No target, or nothing measurable: no verdict.
        assert_eq!(Row::new("b", "c", "s", 1.0, "x").met(), None);
        assert_eq!(Row::new("b", "c", "s", 1.0, "x").against("r", 0.0).target(1.0).met(), None);
        assert_eq!(mirror_row().ratio(0.5).met(), Some(false));
    }

    #[test]
    fn rows_round_trip_through_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let rows = vec![mirror_row(), Row::new("pipeline", "p99", "latency", 120.0, "ms").target_at_most(500.0)];
        for row in &rows {
            append(&path, row).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "one line per row: {text}");
        assert!(!text.lines().next().unwrap().contains("lower_is_better"), "defaults are left out: {text}");
        assert_eq!(read(&path).unwrap(), rows);
    }

    #[test]
    fn malformed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        append(&path, &mirror_row()).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"\n{\"bench\":1}\n").unwrap();
        let error = format!("{:#}", read(&path).unwrap_err());
        assert!(error.contains("rows.jsonl:3"), "{error}");
    }

    /// The only test that touches the environment variable (tests run on parallel threads).
    #[test]
    fn emit_follows_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emitted.jsonl");
        std::env::remove_var(ENV);
        mirror_row().emit().unwrap();
        assert!(!path.exists());
        std::env::set_var(ENV, &path);
        mirror_row().emit().unwrap();
        emit(&mirror_row()).unwrap();
        std::env::set_var(ENV, dir.path().join("missing-dir").join("x.jsonl"));
        assert!(mirror_row().emit().is_err(), "an unwritable file is an error");
        std::env::remove_var(ENV);
        assert_eq!(read(&path).unwrap(), vec![mirror_row(), mirror_row()]);
    }
}
