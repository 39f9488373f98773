//! `logpipe-dev loadgen`: writes realistic JSON-lines game logs, valid and invalid, with
//! optional rotation, and reports exactly what it wrote so tests can reconcile counts.
//!
//! Every line, valid or not, carries `"event_id":"<run>-<seq>"` as its first field, so a
//! malformed line (cut short) still names itself; [`event_id`] extracts it. Lines match the Avro
//! schemas in `devkit/schemas/` (subject `game.<event>`), except the invalid ones, whose kind,
//! expected error stage and JSON Pointer the report lists.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The event types, in the order of their schemas.
pub const EVENTS: [&str; 5] = ["login", "level_up", "purchase", "pvp_win", "reward"];

/// The Avro schema of each event type, as shipped in `devkit/schemas/`: (subject, schema).
pub fn schemas() -> [(&'static str, &'static str); 5] {
    [
        ("game.login", include_str!("../schemas/game.login.avsc")),
        (
            "game.level_up",
            include_str!("../schemas/game.level_up.avsc"),
        ),
        (
            "game.purchase",
            include_str!("../schemas/game.purchase.avsc"),
        ),
        ("game.pvp_win", include_str!("../schemas/game.pvp_win.avsc")),
        ("game.reward", include_str!("../schemas/game.reward.avsc")),
    ]
}

/// How files are rotated once they reach `--rotate-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    None,
    /// logrotate's default: rename `x.log` to `x.log.1` (shifting older ones), create a new `x.log`.
    Rename,
    /// logrotate's `copytruncate`: copy `x.log` to `x.log.1`, then truncate `x.log` in place.
    Copytruncate,
}

/// A weighted mix of target line sizes: `250` or `200:3,1000:1`.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeMix(Vec<(usize, u32)>);

impl FromStr for SizeMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Vec::new();
        for part in s.split(',') {
            let (size, weight) = match part.split_once(':') {
                Some((size, weight)) => (
                    size,
                    weight
                        .parse()
                        .map_err(|_| format!("bad weight in {part:?}"))?,
                ),
                None => (part, 1),
            };
            let size: usize = size
                .trim()
                .parse()
                .map_err(|_| format!("bad size in {part:?}"))?;
            if size == 0 || weight == 0 {
                return Err(format!("{part:?}: sizes and weights must be positive"));
            }
            mix.push((size, weight));
        }
        Ok(SizeMix(mix))
    }
}

impl SizeMix {
    fn pick(&self, rng: &mut StdRng) -> usize {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut ticket = rng.random_range(0..total);
        for (size, weight) in &self.0 {
            if ticket < *weight {
                return *size;
            }
            ticket -= weight;
        }
        unreachable!("ticket below total weight")
    }
}

/// `logpipe-dev loadgen` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Directory to write `game-<n>.log` files into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of log files written in parallel.
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Lines to write in all; 0 = until --duration ends or the process is stopped.
    #[arg(long, default_value_t = 100_000)]
    pub lines: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Lines per second over all files; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Target line sizes in bytes, weighted: `250` or `200:3,1000:1`.
    #[arg(long, default_value = "250")]
    pub line_size: SizeMix,
    /// Fraction of lines that are invalid (malformed JSON, missing field, wrong type).
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Fraction of lines whose `event_time` is up to 3 s before the time of writing: out of
    /// order, as lines of several servers are, but within a CEP rule's default
    /// `max_out_of_order` (5 s), so never late.
    #[arg(long, default_value_t = 0.0)]
    pub disorder: f64,
    /// Fraction of lines whose `event_time` is 10 minutes before the time of writing: late for
    /// any CEP rule with the default lateness, on purpose.
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// Rotation strategy.
    #[arg(long, value_enum, default_value_t = Rotation::None)]
    pub rotate: Rotation,
    /// Rotate a file once it holds this many bytes.
    #[arg(long, default_value_t = 5_000_000)]
    pub rotate_bytes: u64,
    /// Rotated files to keep per log (older are deleted); 0 keeps all.
    #[arg(long, default_value_t = 0)]
    pub keep: u32,
    /// Active players: most events (90%) come from this many ids, a few of them far more often
    /// than the rest, so that a player logs in, levels up and wins again and again; the other
    /// events come from casual players spread over all 200,000 ids.
    #[arg(long, default_value_t = 1000)]
    pub players: u32,
    /// Random seed; the same seed and options write the same lines.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of event ids; default `r<seed>`.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Write the report (JSON) here as well as a summary on stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Lines written so far, updated as the run goes, for a caller showing progress live.
    #[arg(skip)]
    pub progress: Arc<AtomicU64>,
}

impl LoadgenArgs {
    /// Options with defaults for `dir`, as a library caller starts from.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LoadgenArgs {
            dir: dir.into(),
            files: 4,
            lines: 100_000,
            duration: None,
            rate: 0.0,
            line_size: SizeMix(vec![(250, 1)]),
            invalid: 0.0,
            disorder: 0.0,
            late: 0.0,
            rotate: Rotation::None,
            rotate_bytes: 5_000_000,
            keep: 0,
            players: 1000,
            seed: 1,
            run_id: None,
            report: None,
            progress: Arc::default(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.files >= 1, "--files must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.invalid),
            "--invalid must be a fraction between 0 and 1"
        );
        anyhow::ensure!(
            self.disorder >= 0.0 && self.late >= 0.0 && self.disorder + self.late <= 1.0,
            "--disorder and --late must be fractions adding up to at most 1"
        );
        anyhow::ensure!(self.rate >= 0.0, "--rate must not be negative");
        anyhow::ensure!(self.rotate_bytes > 0, "--rotate-bytes must be positive");
        anyhow::ensure!(self.players >= 1, "--players must be at least 1");
        anyhow::ensure!(
            self.lines > 0 || self.duration.is_some() || self.rate > 0.0,
            "--lines 0 needs --duration or --rate (or a stop signal)"
        );
        Ok(())
    }
}

/// Kinds of invalid lines, with the validator's expected verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidKind {
    /// The line is cut short: not JSON. Stage `parse`.
    MalformedJson,
    /// `player_id` is missing. Stage `validate`, pointer `/player_id`.
    MissingField,
    /// `event_time` is a boolean. Stage `validate`, pointer `/event_time`.
    WrongType,
}

impl InvalidKind {
    const ALL: [InvalidKind; 3] = [
        InvalidKind::MalformedJson,
        InvalidKind::MissingField,
        InvalidKind::WrongType,
    ];

    /// The validator's error stage for this kind (`lp.error.stage`).
    pub fn stage(self) -> logpipe_core::record::ErrorStage {
        match self {
            InvalidKind::MalformedJson => logpipe_core::record::ErrorStage::Parse,
            InvalidKind::MissingField | InvalidKind::WrongType => {
                logpipe_core::record::ErrorStage::Validate
            }
        }
    }

    /// The JSON Pointer of the failing field (`lp.error.path`), if any.
    pub fn pointer(self) -> Option<&'static str> {
        match self {
            InvalidKind::MalformedJson => None,
            InvalidKind::MissingField => Some("/player_id"),
            InvalidKind::WrongType => Some("/event_time"),
        }
    }
}

/// One invalid line in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidLine {
    pub event_id: String,
    pub kind: InvalidKind,
    pub stage: logpipe_core::record::ErrorStage,
    pub pointer: Option<String>,
}

/// One file's counts in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub lines: u64,
    pub bytes: u64,
    pub rotations: u64,
}

/// Exactly what a run wrote. Event ids are `<run_id>-<seq>` for seq in `0..lines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub seed: u64,
    pub lines: u64,
    pub valid: u64,
    pub bytes: u64,
    pub elapsed_secs: f64,
    pub rotation: Rotation,
    pub rotations: u64,
    pub events: BTreeMap<String, u64>,
    pub invalid_by_kind: BTreeMap<InvalidKind, u64>,
    /// Lines written with an `event_time` up to [`DISORDER_MAX`] back (`--disorder`).
    #[serde(default)]
    pub disordered: u64,
    /// Lines written with an `event_time` [`LATE_BY`] back (`--late`).
    #[serde(default)]
    pub late: u64,
    pub files: Vec<FileReport>,
    pub invalid_lines: Vec<InvalidLine>,
}

impl Report {
    /// Every event id written, in order.
    pub fn event_ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.lines).map(move |seq| format!("{}-{seq}", self.run_id))
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let invalid: Vec<String> = self
            .invalid_by_kind
            .iter()
            .map(|(k, n)| format!("{k:?}={n}"))
            .collect();
        format!(
            "loadgen {}: {} lines ({} valid, invalid: {}; {} out of order, {} late), {} bytes, \
             {} rotations in {:.1}s",
            self.run_id,
            self.lines,
            self.valid,
            if invalid.is_empty() {
                "none".into()
            } else {
                invalid.join(" ")
            },
            self.disordered,
            self.late,
            self.bytes,
            self.rotations,
            self.elapsed_secs
        )
    }
}

/// The event id of a line written by the generator, even when the line is not valid JSON.
pub fn event_id(line: &[u8]) -> Option<&str> {
    const PREFIX: &[u8] = b"{\"event_id\":\"";
    let rest = line.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

struct LogFile {
    path: PathBuf,
    writer: BufWriter<File>,
    size: u64,
    report: FileReport,
}

impl LogFile {
    fn open(path: PathBuf) -> anyhow::Result<LogFile> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            report: FileReport {
                path: path.clone(),
                ..FileReport::default()
            },
            path,
            writer: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(line)?;
        self.writer.write_all(b"\n")?;
        let n = line.len() as u64 + 1;
        self.size += n;
        self.report.lines += 1;
        self.report.bytes += n;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Rotates like logrotate: shift `x.log.N` up by one, then rename or copy+truncate.
    fn rotate(&mut self, how: Rotation, keep: u32) -> anyhow::Result<()> {
        self.writer.flush()?;
        let mut highest = 0;
        while self.rotated(highest + 1).exists() {
            highest += 1;
        }
        for n in (1..=highest).rev() {
            if keep > 0 && n >= keep {
                std::fs::remove_file(self.rotated(n))?;
            } else {
                std::fs::rename(self.rotated(n), self.rotated(n + 1))?;
            }
        }
        match how {
            Rotation::None => return Ok(()),
            Rotation::Rename => {
                std::fs::rename(&self.path, self.rotated(1))?;
                self.writer = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
            }
            Rotation::Copytruncate => {
                std::fs::copy(&self.path, self.rotated(1))?;
                // The writer appends (O_APPEND), so after the truncation it writes at offset 0.
                self.writer.get_ref().set_len(0)?;
            }
        }
        self.size = 0;
        self.report.rotations += 1;
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Writes lines until the count or duration is reached or `stop` is set, then reports.
pub fn run(args: &LoadgenArgs, stop: &AtomicBool) -> anyhow::Result<Report> {
    args.validate()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("r{}", args.seed));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut players = Players::new(args.players);
    let mut files = (0..args.files)
        .map(|i| LogFile::open(args.dir.join(format!("game-{i}.log"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut report = Report {
        run_id: run_id.clone(),
        seed: args.seed,
        lines: 0,
        valid: 0,
        bytes: 0,
        elapsed_secs: 0.0,
        rotation: args.rotate,
        rotations: 0,
        events: BTreeMap::new(),
        invalid_by_kind: BTreeMap::new(),
        disordered: 0,
        late: 0,
        files: Vec::new(),
        invalid_lines: Vec::new(),
    };
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut line = Vec::with_capacity(4096);
    let mut seq = 0u64;
    while (args.lines == 0 || seq < args.lines) && !stop.load(Ordering::Relaxed) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let event = EVENTS[rng.random_range(0..EVENTS.len())];
        let id = format!("{run_id}-{seq}");
        let invalid =
            (rng.random::<f64>() < args.invalid).then(|| InvalidKind::ALL[rng.random_range(0..3)]);
        line.clear();
        let target = args.line_size.pick(&mut rng);
        let back = backdate(args, &mut rng);
        match back {
            Backdate::None => {}
            Backdate::Disordered(_) => report.disordered += 1,
            Backdate::Late => report.late += 1,
        }
        let what = Line {
            id: &id,
            event,
            event_time: back.event_time(SystemTime::now()),
            target,
            invalid,
        };
        render(&mut line, &mut rng, &mut players, what);
        let file = &mut files[rng.random_range(0..args.files)];
        file.write_line(&line)?;
        if args.rotate != Rotation::None && file.size >= args.rotate_bytes {
            file.rotate(args.rotate, args.keep)?;
            report.rotations += 1;
        }
        *report.events.entry(event.to_owned()).or_default() += 1;
        match invalid {
            None => report.valid += 1,
            Some(kind) => {
                *report.invalid_by_kind.entry(kind).or_default() += 1;
                report.invalid_lines.push(InvalidLine {
                    event_id: id,
                    kind,
                    stage: kind.stage(),
                    pointer: kind.pointer().map(str::to_owned),
                });
            }
        }
        report.bytes += line.len() as u64 + 1;
        seq += 1;
        args.progress.store(seq, Ordering::Relaxed);
        if args.rate > 0.0 {
            pace(&mut files, started, seq, args.rate)?;
        }
    }
    for file in &mut files {
        file.writer.flush()?;
    }
    report.lines = seq;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.files = files.into_iter().map(|f| f.report).collect();
    if let Some(path) = &args.report {
        crate::write_atomically(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

/// The most a `--disorder` line's event time is set back.
pub const DISORDER_MAX: Duration = Duration::from_secs(3);
/// How far a `--late` line's event time is set back.
pub const LATE_BY: Duration = Duration::from_secs(600);

/// How a line's event time is set back from the time it is written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Backdate {
    None,
    Disordered(Duration),
    Late,
}

impl Backdate {
    fn event_time(self, now: SystemTime) -> SystemTime {
        match self {
            Backdate::None => now,
            Backdate::Disordered(back) => now - back,
            Backdate::Late => now - LATE_BY,
        }
    }
}

/// Draws a line's [`Backdate`]; draws nothing when neither share is asked for, so runs without
/// them write what they always did for a seed.
fn backdate(args: &LoadgenArgs, rng: &mut StdRng) -> Backdate {
    if args.disorder + args.late <= 0.0 {
        return Backdate::None;
    }
    let ticket: f64 = rng.random();
    if ticket < args.late {
        Backdate::Late
    } else if ticket < args.late + args.disorder {
        let most = DISORDER_MAX.as_millis() as u64;
        Backdate::Disordered(Duration::from_millis(rng.random_range(1..=most)))
    } else {
        Backdate::None
    }
}

/// Holds the pace: when ahead of schedule, flushes (so readers see whole lines promptly) and
/// sleeps until the next line is due.
fn pace(files: &mut [LogFile], started: Instant, written: u64, rate: f64) -> anyhow::Result<()> {
    let due = started + Duration::from_secs_f64(written as f64 / rate);
    let now = Instant::now();
    if due > now {
        for file in files.iter_mut() {
            file.writer.flush()?;
        }
        std::thread::sleep(due - now);
    }
    Ok(())
}

/// Player ids are `p-000000` to `p-199999` (or up to `--players` when that is more).
const PLAYER_IDS: u32 = 200_000;
/// The share of events the active players make; the rest come from casual players.
const ACTIVE_SHARE: f64 = 0.9;
/// Levels go up to this one; a player's next level up starts a new character at level 2.
const MAX_LEVEL: i32 = 99;

/// Who does things. Most events come from the `active` players `p-000000..`, skewed so that the
/// first ids are the busiest (an id's share falls as the inverse square root of its rank), the
/// rest from casual players anywhere in the id range. Each player's level goes up by one at each
/// `level_up`, from 1, so that every player who levels up twice reaches level 3.
struct Players {
    active: u32,
    levels: HashMap<u32, i32>,
}

impl Players {
    fn new(active: u32) -> Players {
        Players {
            active,
            levels: HashMap::new(),
        }
    }

    fn pick(&self, rng: &mut StdRng) -> u32 {
        if rng.random_bool(ACTIVE_SHARE) {
            let u: f64 = rng.random();
            ((u * u * f64::from(self.active)) as u32).min(self.active - 1)
        } else {
            rng.random_range(0..PLAYER_IDS.max(self.active))
        }
    }

    /// The level `player` reaches with this `level_up`.
    fn level_up(&mut self, player: u32) -> i32 {
        let level = self.levels.entry(player).or_insert(1);
        *level = if *level >= MAX_LEVEL { 2 } else { *level + 1 };
        *level
    }
}

fn player_id(player: u32) -> String {
    format!("p-{player:06}")
}

const PLATFORMS: [&str; 6] = ["pc", "ps5", "xbox", "switch", "ios", "android"];
const CURRENCIES: [&str; 6] = ["USD", "EUR", "GBP", "JPY", "KRW", "BRL"];
const REWARDS: [&str; 4] = ["gold", "gem", "item", "xp"];
const COUNTRIES: [&str; 8] = ["KR", "JP", "US", "DE", "FR", "BR", "GB", "TW"];

/// What one line is to say, the rest being drawn at random.
struct Line<'a> {
    id: &'a str,
    event: &'a str,
    event_time: SystemTime,
    /// Size in bytes to pad up to.
    target: usize,
    invalid: Option<InvalidKind>,
}

/// Renders one line into `out`: `{"event_id":"...",` then the other fields.
fn render(out: &mut Vec<u8>, rng: &mut StdRng, players: &mut Players, line: Line<'_>) {
    let Line {
        id,
        event,
        event_time,
        target,
        invalid,
    } = line;
    let mut fields = Map::new();
    fields.insert("event".into(), json!(event));
    fields.insert(
        "event_time".into(),
        json!(humantime::format_rfc3339_millis(event_time).to_string()),
    );
    let player = players.pick(rng);
    fields.insert("player_id".into(), json!(player_id(player)));
    fields.insert(
        "game_id".into(),
        json!(format!("g-{:03}", rng.random_range(0..50))),
    );
    fields.insert(
        "server".into(),
        json!(format!(
            "{}-{}",
            ["eu", "us", "ap"][rng.random_range(0..3)],
            rng.random_range(1..9)
        )),
    );
    if rng.random_bool(0.7) {
        fields.insert(
            "session_id".into(),
            json!(format!("s-{:x}", rng.random::<u64>())),
        );
    }
    match event {
        "login" => {
            fields.insert(
                "platform".into(),
                json!(PLATFORMS[rng.random_range(0..PLATFORMS.len())]),
            );
            fields.insert(
                "client_version".into(),
                json!(format!(
                    "1.{}.{}",
                    rng.random_range(0..20),
                    rng.random_range(0..100)
                )),
            );
            fields.insert(
                "country".into(),
                json!(COUNTRIES[rng.random_range(0..COUNTRIES.len())]),
            );
        }
        "level_up" => {
            let level = players.level_up(player);
            fields.insert("level".into(), json!(level));
            fields.insert("previous_level".into(), json!(level - 1));
            fields.insert("xp".into(), json!(rng.random_range(0..10_000_000i64)));
        }
        "purchase" => {
            fields.insert(
                "item_id".into(),
                json!(format!("item-{}", rng.random_range(0..5000))),
            );
            fields.insert("quantity".into(), json!(rng.random_range(1..10)));
            let cents: u32 = rng.random_range(99..20_000);
            fields.insert(
                "price".into(),
                json!(format!("{}.{:02}", cents / 100, cents % 100)),
            );
            fields.insert(
                "currency".into(),
                json!(CURRENCIES[rng.random_range(0..CURRENCIES.len())]),
            );
        }
        "pvp_win" => {
            let uuid: u128 = rng.random();
            let hex = format!("{uuid:032x}");
            let uuid = format!(
                "{}-{}-4{}-a{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[13..16],
                &hex[17..20],
                &hex[20..32]
            );
            fields.insert("match_id".into(), json!(uuid));
            fields.insert("opponent_id".into(), json!(player_id(players.pick(rng))));
            fields.insert("rating_delta".into(), json!(rng.random_range(1..40)));
            fields.insert(
                "duration_ms".into(),
                json!(rng.random_range(30_000..1_800_000i64)),
            );
        }
        _ => {
            fields.insert(
                "reward_type".into(),
                json!(REWARDS[rng.random_range(0..REWARDS.len())]),
            );
            fields.insert("amount".into(), json!(rng.random_range(1..100_000i64)));
            fields.insert(
                "source".into(),
                json!(["quest", "daily", "pvp", "shop"][rng.random_range(0..4)]),
            );
        }
    }
    match invalid {
        Some(InvalidKind::MissingField) => {
            fields.remove("player_id");
        }
        Some(InvalidKind::WrongType) => {
            fields.insert("event_time".into(), json!(true));
        }
        _ => {}
    }
    write_line(out, id, &fields);
    // Pad through the free-form `context` map up to the target size.
    let overhead = r#","context":{"note":""}"#.len();
    if out.len() + overhead < target {
        let pad = target - out.len() - overhead;
        let note: String = (0..pad)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        fields.insert("context".into(), json!({ "note": note }));
        out.clear();
        write_line(out, id, &fields);
    }
    if invalid == Some(InvalidKind::MalformedJson) {
        // Cut somewhere after the event id, always before the closing brace.
        let keep = rng.random_range(id.len() + 16..out.len() - 1);
        out.truncate(keep);
    }
}

fn write_line(out: &mut Vec<u8>, id: &str, fields: &Map<String, Value>) {
    out.extend_from_slice(b"{\"event_id\":");
    serde_json::to_writer(&mut *out, id).expect("writing to a Vec");
    let rest = serde_json::to_vec(fields).expect("serializing a map");
    out.push(b',');
    out.extend_from_slice(&rest[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(dir: &Path, lines: u64, invalid: f64) -> Report {
        let mut args = LoadgenArgs::new(dir);
        args.files = 3;
        args.lines = lines;
        args.invalid = invalid;
        args.line_size = "200:3,1000:1".parse().unwrap();
        run(&args, &AtomicBool::new(false)).unwrap()
    }

    fn read_lines(dir: &Path) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            lines.extend(
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec),
            );
        }
        lines
    }

    #[test]
    fn report_matches_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(dir.path(), 3000, 0.1);
        let lines = read_lines(dir.path());
        assert_eq!(lines.len() as u64, report.lines);
        assert_eq!(
            report.files.iter().map(|f| f.lines).sum::<u64>(),
            report.lines
        );
        let on_disk: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(on_disk, report.bytes);
        let mut ids: Vec<&str> = lines
            .iter()
            .map(|l| event_id(l).expect("every line has an id"))
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<String> = report.event_ids().collect();
        expected.sort_unstable();
        assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            report.valid + report.invalid_lines.len() as u64,
            report.lines
        );
        assert!(
            report.invalid_by_kind.len() == 3,
            "all three kinds at 10%: {:?}",
            report.invalid_by_kind
        );
        assert_eq!(report.events.values().sum::<u64>(), report.lines);
    }

    #[test]
    fn valid_lines_are_json_with_schema_fields_and_invalid_ones_are_as_reported() {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(dir.path(), 2000, 0.2);
        let invalid: BTreeMap<&str, InvalidKind> = report
            .invalid_lines
            .iter()
            .map(|l| (l.event_id.as_str(), l.kind))
            .collect();
        for line in read_lines(dir.path()) {
            let id = event_id(&line).unwrap();
            let parsed: Result<Map<String, Value>, _> = serde_json::from_slice(&line);
            match invalid.get(id) {
                None => {
                    let fields = parsed.expect("valid lines are JSON objects");
                    for key in [
                        "event_id",
                        "event",
                        "event_time",
                        "player_id",
                        "game_id",
                        "server",
                    ] {
                        assert!(
                            fields.contains_key(key),
                            "{key} missing in {}",
                            String::from_utf8_lossy(&line)
                        );
                    }
                    assert!(fields["event_time"].as_str().unwrap().ends_with('Z'));
                }
                Some(InvalidKind::MalformedJson) => assert!(parsed.is_err()),
                Some(InvalidKind::MissingField) => {
                    assert!(!parsed.unwrap().contains_key("player_id"))
                }
                Some(InvalidKind::WrongType) => {
                    assert_eq!(parsed.unwrap()["event_time"], json!(true))
                }
            }
        }
    }

    #[test]
    fn line_sizes_follow_the_mix() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 2000, 0.0);
        let lines = read_lines(dir.path());
        let big = lines.iter().filter(|l| l.len() >= 900).count() as f64 / lines.len() as f64;
        assert!(
            (0.15..0.35).contains(&big),
            "a quarter should be ~1000 B, got {big}"
        );
        assert!(lines.iter().all(|l| l.len() <= 1000));
    }

    #[test]
    fn same_seed_same_lines() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ra, rb) = (generate(a.path(), 500, 0.1), generate(b.path(), 500, 0.1));
        assert_eq!(ra.invalid_lines, rb.invalid_lines);
        assert_eq!(
            ra.files.iter().map(|f| f.lines).collect::<Vec<_>>(),
            rb.files.iter().map(|f| f.lines).collect::<Vec<_>>()
        );
    }

    fn rotate(how: Rotation) -> (tempfile::TempDir, Report) {
        let dir = tempfile::tempdir().unwrap();
        let mut args = LoadgenArgs::new(dir.path());
        args.files = 1;
        args.lines = 1000;
        args.rotate = how;
        args.rotate_bytes = 50_000;
        let report = run(&args, &AtomicBool::new(false)).unwrap();
        (dir, report)
    }

    #[test]
    fn rename_rotation_keeps_every_line() {
        let (dir, report) = rotate(Rotation::Rename);
        assert!(report.rotations >= 4, "{}", report.summary());
        assert!(dir.path().join("game-0.log.1").exists());
        assert_eq!(read_lines(dir.path()).len() as u64, report.lines);
    }

    #[test]
    fn copytruncate_rotation_keeps_every_line() {
        let (dir, report) = rotate(Rotation::Copytruncate);
        assert!(report.rotations >= 4);
        assert_eq!(read_lines(dir.path()).len() as u64, report.lines);
        assert!(
            std::fs::metadata(dir.path().join("game-0.log"))
                .unwrap()
                .len()
                < 50_000
        );
    }

    #[test]
    fn keep_limits_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = LoadgenArgs::new(dir.path());
        args.files = 1;
        args.lines = 1000;
        args.rotate = Rotation::Rename;
        args.rotate_bytes = 20_000;
        args.keep = 2;
        run(&args, &AtomicBool::new(false)).unwrap();
        assert!(dir.path().join("game-0.log.2").exists());
        assert!(!dir.path().join("game-0.log.3").exists());
    }

    #[test]
    fn stop_flag_ends_an_unbounded_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = LoadgenArgs::new(dir.path());
        args.lines = 0;
        args.duration = Some(60.0);
        let report = run(&args, &AtomicBool::new(true)).unwrap();
        assert_eq!(report.lines, 0);
    }

    #[test]
    fn a_few_active_players_do_most_things_again_and_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = LoadgenArgs::new(dir.path());
        args.files = 1;
        args.lines = 5000;
        args.players = 50;
        let report = run(&args, &AtomicBool::new(false)).unwrap();
        assert_eq!(report.valid, 5000);
        let mut events: Vec<Map<String, Value>> = read_lines(dir.path())
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let seq = |e: &Map<String, Value>| -> u64 {
            let id = e["event_id"].as_str().unwrap();
            id.rsplit_once('-').unwrap().1.parse().unwrap()
        };
        events.sort_by_key(seq);
        let mut per_player: HashMap<&str, BTreeMap<&str, u64>> = HashMap::new();
        let mut levels: HashMap<&str, i64> = HashMap::new();
        for e in &events {
            let player = e["player_id"].as_str().unwrap();
            let event = e["event"].as_str().unwrap();
            *per_player
                .entry(player)
                .or_default()
                .entry(event)
                .or_default() += 1;
            if event == "level_up" {
                // One level at a time, from 1, per player (a new character after the last).
                let level = e["level"].as_i64().unwrap();
                let before = levels.insert(player, level).unwrap_or(1);
                assert_eq!(e["previous_level"].as_i64().unwrap(), level - 1);
                let expected = if before == i64::from(MAX_LEVEL) {
                    2
                } else {
                    before + 1
                };
                assert_eq!(level, expected, "{player} went from {before} to {level}");
            }
        }
        let active = |p: &str| p["p-".len()..].parse::<u32>().unwrap() < 50;
        let from_active: u64 = per_player
            .iter()
            .filter(|(p, _)| active(p))
            .flat_map(|(_, counts)| counts.values())
            .sum();
        assert!(
            (4300..4700).contains(&from_active),
            "about 90% of 5000 from the active players, got {from_active}"
        );
        let pvp_fives = per_player
            .values()
            .filter(|counts| counts.get("pvp_win").copied().unwrap_or(0) >= 5)
            .count();
        assert!(pvp_fives >= 20, "players with 5 PVP wins: {pvp_fives}");
        let level_3 = levels.values().filter(|l| **l >= 3).count();
        assert!(level_3 >= 20, "players who reached level 3: {level_3}");
        // Skewed: the busiest active player does far more than the quietest.
        let busiest = per_player["p-000000"].values().sum::<u64>();
        let quietest = (0..50)
            .map(|p| {
                per_player
                    .get(player_id(p).as_str())
                    .map_or(0, |c| c.values().sum())
            })
            .min()
            .unwrap();
        assert!(busiest > 4 * quietest.max(1), "{busiest} vs {quietest}");
    }

    /// Each valid line's event time and how far it is behind the latest one written before it,
    /// in the order written.
    fn lateness(dir: &Path) -> Vec<(String, i64)> {
        let mut lines: Vec<Map<String, Value>> = read_lines(dir)
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let seq = |e: &Map<String, Value>| -> u64 {
            let id = e["event_id"].as_str().unwrap();
            id.rsplit_once('-').unwrap().1.parse().unwrap()
        };
        lines.sort_by_key(seq);
        let mut latest = i64::MIN;
        lines
            .iter()
            .map(|e| {
                let at = humantime::parse_rfc3339(e["event_time"].as_str().unwrap()).unwrap();
                let ms = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                latest = latest.max(ms);
                (e["event_id"].as_str().unwrap().to_owned(), latest - ms)
            })
            .collect()
    }

    #[test]
    fn some_lines_are_out_of_order_and_a_few_late_as_asked() {
        let run_with = |dir: &Path| {
            let mut args = LoadgenArgs::new(dir);
            args.files = 2;
            args.lines = 5000;
            args.disorder = 0.1;
            args.late = 0.01;
            run(&args, &AtomicBool::new(false)).unwrap()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let report = run_with(a.path());
        assert!(
            (400..600).contains(&report.disordered),
            "about 10% of 5000 out of order: {}",
            report.summary()
        );
        assert!((25..80).contains(&report.late), "{}", report.summary());
        let behind = lateness(a.path());
        let late: Vec<&str> = behind
            .iter()
            .filter(|(_, ms)| *ms > LATE_BY.as_millis() as i64 - 60_000)
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(late.len() as u64, report.late);
        // A line set back by up to 3 s is at most that far behind any written before it.
        let most = behind
            .iter()
            .filter(|(id, _)| !late.contains(&id.as_str()))
            .map(|(_, ms)| *ms)
            .max()
            .unwrap();
        assert!(
            (1..=DISORDER_MAX.as_millis() as i64).contains(&most),
            "{most} ms"
        );
        // The same seed sets back the same lines.
        let again = run_with(b.path());
        assert_eq!(
            (again.disordered, again.late),
            (report.disordered, report.late)
        );
        let late_again: Vec<String> = lateness(b.path())
            .into_iter()
            .filter(|(_, ms)| *ms > LATE_BY.as_millis() as i64 - 60_000)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(late_again, late);
    }

    #[test]
    fn bad_options_are_rejected() {
        let mut args = LoadgenArgs::new("/nonexistent-dir-for-test");
        args.invalid = 1.5;
        assert!(run(&args, &AtomicBool::new(false))
            .unwrap_err()
            .to_string()
            .contains("--invalid"));
        args.invalid = 0.0;
        args.players = 0;
        assert!(run(&args, &AtomicBool::new(false))
            .unwrap_err()
            .to_string()
            .contains("--players"));
        args.players = 1;
        args.disorder = 0.6;
        args.late = 0.5;
        assert!(run(&args, &AtomicBool::new(false))
            .unwrap_err()
            .to_string()
            .contains("--disorder"));
        assert!("0".parse::<SizeMix>().is_err());
        assert!("200:x".parse::<SizeMix>().is_err());
    }

    #[test]
    fn event_id_survives_malformed_lines() {
        assert_eq!(event_id(br#"{"event_id":"r1-7","event":"lo"#), Some("r1-7"));
        assert_eq!(event_id(br#"{"event":"login"}"#), None);
    }

    #[test]
    fn schemas_ship_for_every_event() {
        for (event, (subject, schema)) in EVENTS.iter().zip(schemas()) {
            assert_eq!(subject, format!("game.{event}"));
            let parsed: Value = serde_json::from_str(schema).unwrap();
            assert_eq!(parsed["type"], "record");
        }
    }
}
