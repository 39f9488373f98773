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
    /// The subject's measurement, in `unit` (JSON has no NaN: a failed measurement is written
    /// as `null` and read back as NaN).
    #[serde(deserialize_with = "nan_for_null")]
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
        Some(if self.lower_is_better {
            measure <= target
        } else {
            measure >= target
        })
    }

    /// Rows of different runs that measure the same thing have the same key.
    pub fn key(&self) -> (&str, &str, &str, Option<&str>) {
        (
            &self.bench,
            &self.case,
            &self.subject,
            self.reference.as_deref(),
        )
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
    file.write_all(&line)
        .with_context(|| format!("appending to {}", path.display()))
}

/// Reads the rows of a JSON-lines file written by [`emit`]; blank lines are skipped, and a
/// malformed line is an error naming its line number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a benchmark row", path.display(), i + 1))
        })
        .collect()
}

/// One run of `bench/run`: its rows and the conditions it was taken under (free text: commit,
/// machine load, benchmarks that failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run's name: its UTC start time, `YYYYMMDDTHHMMSSZ`, which also sorts runs.
    pub name: String,
    pub rows: Vec<Row>,
    pub conditions: String,
}

impl Run {
    /// Reads `<dir>/<name>.jsonl` and, if present, `<dir>/<name>.txt` (the conditions).
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Run> {
        let rows = read(&dir.join(format!("{name}.jsonl")))?;
        let conditions =
            std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap_or_default();
        Ok(Run {
            name: name.to_owned(),
            rows,
            conditions,
        })
    }

    /// The names of the runs kept in a history directory, oldest first.
    pub fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| {
                entry
                    .ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".jsonl")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// `logpipe-dev bench-report`: renders the latest run of a history directory (and its
/// comparison with the run before it) into `REPORT.md` and `ratios.svg`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Directory of runs: `<name>.jsonl` rows and `<name>.txt` conditions.
    #[arg(long, default_value = "bench/results/history")]
    pub history: std::path::PathBuf,
    /// Directory `REPORT.md` and `ratios.svg` are written to.
    #[arg(long, default_value = "bench/results")]
    pub out: std::path::PathBuf,
    /// The run to report (default: the latest); it is compared with the run before it.
    #[arg(long)]
    pub run: Option<String>,
}

/// Writes `REPORT.md` and `ratios.svg` for the chosen run; returns the report's path.
pub fn write_report(args: &ReportArgs) -> anyhow::Result<std::path::PathBuf> {
    let names = Run::names(&args.history)?;
    let name = match &args.run {
        Some(name) => name.clone(),
        None => names
            .last()
            .cloned()
            .with_context(|| format!("no runs (*.jsonl) in {}", args.history.display()))?,
    };
    let current = Run::load(&args.history, &name)?;
    let previous = match names.iter().rev().find(|n| **n < name) {
        Some(previous) => Some(Run::load(&args.history, previous)?),
        None => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    crate::write_atomically(&args.out.join(CHART), render_svg(&current.rows).as_bytes())?;
    let report = args.out.join("REPORT.md");
    crate::write_atomically(
        &report,
        render_markdown(&current, previous.as_ref()).as_bytes(),
    )?;
    Ok(report)
}

/// The chart's file name, next to `REPORT.md`.
pub const CHART: &str = "ratios.svg";

/// A number for a table: no more digits than the noise of a benchmark justifies.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let digits = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if v < 0.0 { "-" } else { "" })
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A Markdown table cell: pipes escaped, no line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl Row {
    fn target_text(&self) -> String {
        let Some(target) = self.target else {
            return "-".to_owned();
        };
        let op = if self.lower_is_better { "<=" } else { ">=" };
        match self.ratio {
            Some(_) => format!("{op} {}x", number(target)),
            None => format!("{op} {} {}", number(target), self.unit),
        }
    }

    fn measure_text(&self) -> String {
        match self.ratio {
            Some(ratio) => format!("{}x", number(ratio)),
            None => format!("{} {}", number(self.value), self.unit),
        }
    }
}

/// The whole report: conditions, the chart, a table per benchmark, the comparison with the
/// previous run.
pub fn render_markdown(current: &Run, previous: Option<&Run>) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("# logpipe benchmark report\n\n");
    let judged: Vec<bool> = current.rows.iter().filter_map(Row::met).collect();
    let _ = writeln!(
        out,
        "Run `{}` (UTC). Generated by `bench/run` from `history/{}.jsonl`; every ratio compares with a reference \
         measured in the same run, on the same machine. Targets met: **{} of {}**.\n",
        current.name,
        current.name,
        judged.iter().filter(|m| **m).count(),
        judged.len()
    );
    if !current.conditions.trim().is_empty() {
        let _ = writeln!(out, "## Conditions\n\n{}\n", current.conditions.trim());
    }
    let _ = writeln!(
        out,
        "## Ratios against targets\n\nEach bar is a ratio to its reference; the black tick is the target, the dashed \
         line 1x (as fast as the reference). Green: target met; red: not met; grey: no target.\n\n![ratios]({CHART})\n"
    );
    let mut benches: Vec<&str> = Vec::new();
    for row in &current.rows {
        if !benches.contains(&row.bench.as_str()) {
            benches.push(&row.bench);
        }
    }
    let previous_label = previous.map_or("previous".to_owned(), |p| {
        format!("previous (`{}`)", p.name)
    });
    for bench in benches {
        let _ = writeln!(out, "## {bench}\n");
        let _ = writeln!(out, "| case | subject | value | reference | ratio | target | met | {previous_label} | details |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for row in current.rows.iter().filter(|r| r.bench == bench) {
            let reference = match (&row.reference, row.reference_value) {
                (Some(name), Some(value)) => format!("{name}: {} {}", number(value), row.unit),
                (Some(name), None) => name.clone(),
                _ => "-".to_owned(),
            };
            let met = match row.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let before = previous.and_then(|p| p.rows.iter().find(|r| r.key() == row.key()));
            let compared = match before {
                Some(before) if before.measure().is_finite() && before.measure() != 0.0 => {
                    format!(
                        "{} ({:+.0}%)",
                        before.measure_text(),
                        (row.measure() / before.measure() - 1.0) * 100.0
                    )
                }
                Some(before) => before.measure_text(),
                None => "-".to_owned(),
            };
            let details: Vec<String> = row
                .extra
                .iter()
                .map(|(name, value)| match value.as_f64() {
                    Some(v) => format!("{name} {}", number(v)),
                    None => format!(
                        "{name} {}",
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned)
                    ),
                })
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {} | {} | {met} | {} | {} |",
                cell(&row.case),
                cell(&row.subject),
                number(row.value),
                cell(&row.unit),
                cell(&reference),
                row.ratio
                    .map_or("-".to_owned(), |r| format!("{}x", number(r))),
                cell(&row.target_text()),
                cell(&compared),
                cell(&details.join(", ")),
            );
        }
        out.push('\n');
    }
    if let Some(previous) = previous {
        let gone: Vec<String> = previous
            .rows
            .iter()
            .filter(|p| !current.rows.iter().any(|r| r.key() == p.key()))
            .map(|p| {
                format!(
                    "- {}: {}, {} ({})",
                    p.bench,
                    p.case,
                    p.subject,
                    p.measure_text()
                )
            })
            .collect();
        if !gone.is_empty() {
            let _ = writeln!(
                out,
                "## Measured in `{}` but not in this run\n\n{}\n",
                previous.name,
                gone.join("\n")
            );
        }
    }
    out
}

/// Escapes text for SVG.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart of every row that has a ratio, with its target as a tick; written as
/// SVG text directly (a plotting dependency would outweigh these few lines).
pub fn render_svg(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    const LABEL: f64 = 470.0;
    const BARS: f64 = 400.0;
    const ROW: f64 = 22.0;
    const TOP: f64 = 30.0;
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.ratio.is_some_and(f64::is_finite))
        .collect();
    let scale_max = rows
        .iter()
        .flat_map(|r| [r.ratio, r.target])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max);
    let scale_max = (scale_max * 1.05).ceil();
    let x = |v: f64| LABEL + (v.clamp(0.0, scale_max) / scale_max) * BARS;
    let width = LABEL + BARS + 90.0;
    let height = TOP + ROW * rows.len() as f64 + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LABEL}" y="16" font-weight="bold">ratio to the reference (tick: target)</text>"#
    );
    let bottom = TOP + ROW * rows.len() as f64;
    let step = if scale_max > 4.0 { 1.0 } else { 0.5 };
    let mut tick = 0.0;
    while tick <= scale_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{bottom}" stroke="#ddd"/><text x="{0:.1}" y="{1}" text-anchor="middle" fill="#555">{2}x</text>"##,
            x(tick),
            bottom + 16.0,
            tick
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{bottom}" stroke="#333" stroke-dasharray="4 3"/>"##,
        x(1.0)
    );
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let ratio = row.ratio.unwrap_or(0.0);
        let color = match row.met() {
            Some(true) => "#2e7d32",
            Some(false) => "#c62828",
            None => "#9e9e9e",
        };
        let mut label = format!(
            "{}: {}, {} / {}",
            row.bench,
            row.case,
            row.subject,
            row.reference.as_deref().unwrap_or("-")
        );
        if label.chars().count() > 75 {
            label = label.chars().take(74).collect::<String>() + "…";
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL - 6.0,
            y + 15.0,
            xml(&label)
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{LABEL}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            y + 4.0,
            x(ratio) - LABEL,
            ROW - 8.0
        );
        if let Some(target) = row.target {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="black" stroke-width="2"/>"##,
                x(target),
                y + 1.0,
                y + ROW - 1.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}x{}</text>"#,
            x(ratio.max(row.target.unwrap_or(0.0))) + 6.0,
            y + 15.0,
            number(ratio),
            row.target
                .map_or(String::new(), |t| format!(" / {}x", number(t)))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn nan_for_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror_row() -> Row {
        Row::new("mirror", "200 B", "logpipe-mirror", 300.0, "rec/s")
            .against("kcat -C | kcat -P", 100.0)
            .target(3.0)
            .extra("peak_rss_mib", 84.5)
    }

    #[test]
    fn ratio_and_target() {
        let row = mirror_row();
        assert_eq!(row.ratio, Some(3.0));
        assert_eq!(row.met(), Some(true));
        assert_eq!(row.clone().against("kcat", 101.0).met(), Some(false));
        // An absolute upper bound without a reference: checked against the value.
        let rss = Row::new(
            "agent",
            "idle, 1,000 files",
            "logpipe-agent RSS",
            13.4,
            "MiB",
        )
        .target_at_most(20.0);
        assert_eq!(rss.measure(), 13.4);
        assert_eq!(rss.met(), Some(true));
        assert_eq!(Row { value: 20.5, ..rss }.met(), Some(false));
        // No target, or nothing measurable: no verdict.
        assert_eq!(Row::new("b", "c", "s", 1.0, "x").met(), None);
        assert_eq!(
            Row::new("b", "c", "s", 1.0, "x")
                .against("r", 0.0)
                .target(1.0)
                .met(),
            None
        );
        assert_eq!(mirror_row().ratio(0.5).met(), Some(false));
    }

    #[test]
    fn rows_round_trip_through_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let rows = vec![
            mirror_row(),
            Row::new("pipeline", "p99", "latency", 120.0, "ms").target_at_most(500.0),
        ];
        for row in &rows {
            append(&path, row).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "one line per row: {text}");
        assert!(
            !text.lines().next().unwrap().contains("lower_is_better"),
            "defaults are left out: {text}"
        );
        assert_eq!(read(&path).unwrap(), rows);
        // A failed measurement (NaN) survives as NaN, and its ratio as none.
        append(
            &path,
            &Row::new("b", "c", "s", f64::NAN, "x").against("r", 1.0),
        )
        .unwrap();
        let failed = read(&path).unwrap().pop().unwrap();
        assert!(failed.value.is_nan());
        assert_eq!((failed.ratio, failed.met()), (None, None));
    }

    #[test]
    fn malformed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        append(&path, &mirror_row()).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\n{\"bench\":1}\n")
            .unwrap();
        let error = format!("{:#}", read(&path).unwrap_err());
        assert!(error.contains("rows.jsonl:3"), "{error}");
    }

    fn run(name: &str, rows: Vec<Row>) -> Run {
        Run {
            name: name.to_owned(),
            rows,
            conditions: "load average 3.1".to_owned(),
        }
    }

    #[test]
    fn markdown_tables_verdicts_and_comparison() {
        let rss = Row::new("mirror", "200 B", "peak RSS", 84.0, "MiB").target_at_most(256.0);
        let slow = Row::new("pipeline", "250 B", "file -> clean", 50.0, "lines/s")
            .against("producer", 100.0)
            .target(0.7);
        let previous = run(
            "20261122T050000Z",
            vec![
                mirror_row().against("kcat -C | kcat -P", 150.0),
                slow.clone(),
            ],
        );
        let current = run(
            "20261122T060000Z",
            vec![
                mirror_row(),
                rss,
                Row {
                    subject: "new".into(),
                    ..slow
                },
            ],
        );
        let text = render_markdown(&current, Some(&previous));
        assert!(text.contains("Targets met: **2 of 3**"), "{text}");
        assert!(text.contains("load average 3.1"), "{text}");
        assert!(text.contains("![ratios](ratios.svg)"), "{text}");
        assert!(
            text.contains("## mirror\n") && text.contains("## pipeline\n"),
            "{text}"
        );
        let mirror_line = text
            .lines()
            .find(|l| l.starts_with("| 200 B | logpipe-mirror"))
            .expect("mirror row");
        // The ratio 3.00x against the previous 2.00x: +50%; the pipe in the reference is escaped.
        assert!(
            mirror_line.contains("| 3.00x | >= 3.00x | yes | 2.00x (+50%) |"),
            "{mirror_line}"
        );
        assert!(
            mirror_line.contains("kcat -C \\| kcat -P: 100 rec/s"),
            "{mirror_line}"
        );
        assert!(mirror_line.contains("peak_rss_mib 84.5"), "{mirror_line}");
        let rss_line = text
            .lines()
            .find(|l| l.contains("peak RSS"))
            .expect("rss row");
        assert!(
            rss_line.contains("| 84.0 MiB | - | - | <= 256 MiB | yes | - |"),
            "{rss_line}"
        );
        let new_line = text
            .lines()
            .find(|l| l.contains("| new |"))
            .expect("new row");
        assert!(new_line.contains("| **no** | - |"), "{new_line}");
        // The previous run's row that this run lacks is listed, not silently dropped.
        assert!(
            text.contains("Measured in `20261122T050000Z` but not in this run\n\n- pipeline: 250 B, file -> clean (0.50x)"),
            "{text}"
        );
        assert!(!render_markdown(&current, None).contains("Measured in"));
    }

    #[test]
    fn chart_has_a_bar_per_ratio_and_escapes_labels() {
        let rows = vec![
            mirror_row(),
            Row::new("schema-store", "GET <id>", "store & co", 0.5, "req/s")
                .against("fixed", 1.0)
                .target(0.8),
            Row::new("agent", "idle", "RSS", 13.0, "MiB").target_at_most(20.0),
            Row::new("pipeline", "250 B", "lines", 2.0, "lines/s").against("producer", 4.0),
        ];
        let svg = render_svg(&rows);
        assert!(
            svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        // Background plus one bar per row with a ratio (the absolute RSS row has none).
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert_eq!(svg.matches("#2e7d32").count(), 1, "one met: {svg}");
        assert_eq!(svg.matches("#c62828").count(), 1, "one missed: {svg}");
        assert_eq!(
            svg.matches("#9e9e9e").count(),
            1,
            "one without target: {svg}"
        );
        assert_eq!(
            svg.matches(r#"stroke="black""#).count(),
            2,
            "a tick per target: {svg}"
        );
        assert!(svg.contains("GET &lt;id&gt;, store &amp; co"), "{svg}");
        assert!(!svg.contains("RSS /"), "{svg}");
        // The scale reaches the largest ratio or target (3x here), so no bar runs off it.
        assert!(
            svg.contains(">4x</text>") && !svg.contains(">4.5x</text>"),
            "{svg}"
        );
    }

    #[test]
    fn report_of_the_latest_run_against_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        std::fs::create_dir_all(&history).unwrap();
        for (name, ratio_base) in [
            ("20261122T040000Z", 300.0),
            ("20261122T050000Z", 150.0),
            ("20261122T060000Z", 100.0),
        ] {
            append(
                &history.join(format!("{name}.jsonl")),
                &mirror_row().against("kcat -C | kcat -P", ratio_base),
            )
            .unwrap();
        }
        std::fs::write(history.join("20261122T060000Z.txt"), "commit abc1234").unwrap();
        let args = ReportArgs {
            history: history.clone(),
            out: dir.path().to_owned(),
            run: None,
        };
        let report = write_report(&args).unwrap();
        let text = std::fs::read_to_string(&report).unwrap();
        assert!(
            text.contains("Run `20261122T060000Z`") && text.contains("commit abc1234"),
            "{text}"
        );
        assert!(
            text.contains("previous (`20261122T050000Z`)") && text.contains("2.00x (+50%)"),
            "{text}"
        );
        assert!(dir.path().join(CHART).exists());
        // An older run is compared with the one before it, not with the latest.
        let text = std::fs::read_to_string(
            write_report(&ReportArgs {
                run: Some("20261122T050000Z".into()),
                ..args
            })
            .unwrap(),
        )
        .unwrap();
        assert!(
            text.contains("previous (`20261122T040000Z`)") && text.contains("1.00x (+100%)"),
            "{text}"
        );
        let empty = ReportArgs {
            history: dir.path().join("none"),
            out: dir.path().to_owned(),
            run: None,
        };
        assert!(write_report(&empty).is_err());
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
        assert!(
            mirror_row().emit().is_err(),
            "an unwritable file is an error"
        );
        std::env::remove_var(ENV);
        assert_eq!(read(&path).unwrap(), vec![mirror_row(), mirror_row()]);
    }
}
