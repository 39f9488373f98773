//! `logpipe-dev up`: the whole pipeline on this machine with generated game logs, watched live.
//!
//! It starts the [`Pipeline`] (two dev clusters, the schema store with the game schemas, the
//! mirror, the validator, an agent, a CEP worker with the seed reward rules, a lake loader
//! loading the clean topic into a Delta table), then the load
//! generator on a blocking thread, and shows every interval what flows through each hop (from
//! the services' `/metrics` and the write cluster's watermarks) and the matches per rule. A
//! service that exits (say, `kill -9` from another terminal) is started again, as a supervisor
//! would. Ctrl-C, or the end of `--duration`, stops the generator, waits for the pipeline to
//! drain, reconciles every line written against the clean and dead-letter topics by event id,
//! waits for the CEP worker to catch up and checks its matches and late events against the
//! rules ([`crate::cep_oracle`]), waits for the lake table to catch up and counts its rows by
//! record id against the clean topic, stops every service gracefully and exits 0 only if all
//! three are exact. A second Ctrl-C kills everything and exits at once.

mod binaries;
pub mod cep;
pub mod lake;
mod sampler;
mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cep_oracle::CepReconciliation;
use crate::harness;
use crate::loadgen::{self, LoadgenArgs, Rotation, SizeMix};
use crate::pipeline::{Component, Pipeline, PipelineOptions};
use crate::reconcile::{self, Reconciliation};
use sampler::Sampler;
use view::Tracker;

/// `logpipe-dev up` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Lines per second the generator writes, over all files.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop by itself after this long (`20s`, `5m`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Target line sizes in bytes, weighted: `250` or `200:3,1000:1`.
    #[arg(long, default_value = "250")]
    pub line_size: SizeMix,
    /// Fraction of lines written invalid (malformed JSON, missing field, wrong type).
    #[arg(long, default_value_t = 0.05)]
    pub invalid: f64,
    /// Fraction of lines whose event time is set up to 3 s back: out of order, but not late.
    #[arg(long, default_value_t = 0.05)]
    pub disorder: f64,
    /// Fraction of lines whose event time is set 10 minutes back: late for the CEP worker's
    /// event-time rules, which must set them aside on `cep.late`.
    #[arg(long, default_value_t = 0.002)]
    pub late: f64,
    /// How the generator rotates its files.
    #[arg(long, value_enum, default_value_t = Rotation::Rename)]
    pub rotate: Rotation,
    /// Rotate a log file once it holds this many bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub rotate_bytes: u64,
    /// Log files written in parallel.
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Keep everything here between runs (logs, agent checkpoints, schema store data, configs,
    /// service logs); default: a fresh temporary directory removed at exit.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print one plain line per interval instead of the live screen (for logs and CI).
    #[arg(long)]
    pub no_tui: bool,
    /// How often the view is refreshed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Brokers per dev cluster.
    #[arg(long, default_value_t = 3)]
    pub brokers: i32,
    /// Partitions of the raw, clean and DLQ topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// How long to wait, after the generator stops, for every line to come out.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub drain_timeout: Duration,
    /// Active players in the generated logs: most events come from this many players, some far
    /// busier than others, so that rules counting a player's events match.
    #[arg(long, default_value_t = 300)]
    pub players: u32,
    /// Rule documents (a YAML list) the CEP worker runs; default: the seed reward rules,
    /// `devkit/rules/game.yaml`.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Random seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `up`'s own log filter unless the user chose one: its Kafka clients are probes whose failures
/// (a broker taken down on purpose) show in the view, and lines on stderr would tear the screen;
/// the Delta kernel logs every snapshot it builds while the lake table is counted.
/// Its children (clusters, services) keep theirs, so their log files say what librdkafka said.
pub const LOG_FILTER: &str = "info,rdkafka=off,librdkafka=off,buoyant_kernel=off";

/// How long each service may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The CEP worker's `idle_timeout`: short, so that once the generator stops the worker's
/// watermark soon passes the last events and their event-time results come out.
pub const CEP_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// SIGINT/SIGTERM: the first cancels `first` (stop, drain, reconcile), the second `second`
/// (kill everything now).
struct Interrupts {
    first: CancellationToken,
    second: CancellationToken,
}

fn listen() -> anyhow::Result<Interrupts> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let (f, s) = (first.clone(), second.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if f.is_cancelled() {
                s.cancel();
                return;
            }
            f.cancel();
        }
    });
    Ok(Interrupts { first, second })
}

/// Runs `up`; `Ok` only if the final reconciliation is exact.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    check(&args)?;
    binaries::prepare()?;
    // Ctrl-C in the terminal signals the whole foreground process group: the children get
    // their own groups so that only `up` sees it and stops them in order, after the drain.
    harness::own_process_groups();
    let interrupts = listen()?;
    let (state_dir, temp) = state_dir(args.state_dir.as_deref())?;
    let second = interrupts.second.clone();
    let outcome = tokio::select! {
        outcome = session(&args, &state_dir, interrupts.first) => Some(outcome),
        _ = second.cancelled() => None,
    };
    // Here the session is dropped, and with it the pipeline, which kills every child process.
    let Some(outcome) = outcome else {
        leave_screen(&args, None);
        drop(temp);
        eprintln!("logpipe-dev up: second interrupt: killed every service without draining");
        std::process::exit(130);
    };
    let Outcome {
        reconciliation,
        cep,
        lake,
        last_screen,
    } = match outcome {
        Ok(done) => done,
        Err(e) => {
            leave_screen(&args, None);
            return Err(e);
        }
    };
    leave_screen(&args, last_screen);
    println!("reconciliation: {reconciliation}");
    if reconciliation.is_exact() {
        println!("exact: every line written is in its clean or dead-letter topic exactly once");
    }
    if reconciliation.replayed + reconciliation.replayed_dead > 0 {
        println!(
            "  of which {} replayed to clean and {} replayed but failed again: each replay counts in place of its dead letter, which stays in the DLQ",
            reconciliation.replayed, reconciliation.replayed_dead
        );
    }
    let cep_exact = match &cep {
        Ok(cep) => {
            println!("cep reconciliation: {cep}");
            if cep.is_exact() {
                println!("exact: every match the rules call for is in cep.matches exactly once");
                if cep.late() > 0 {
                    println!(
                        "  leaving out the {} events the worker set aside as late on cep.late, each one written late on purpose",
                        cep.late()
                    );
                }
            }
            cep.is_exact()
        }
        Err(e) => {
            println!("cep reconciliation: failed: {e:#}");
            false
        }
    };
    let lake_exact = match &lake {
        Ok(tables) => {
            for table in tables {
                println!("lake reconciliation: {table}");
                if table.is_exact() {
                    println!(
                        "exact: every one of the {} is a row of the Delta table {} exactly once",
                        table.what,
                        table.table.display()
                    );
                }
            }
            tables.iter().all(lake::LakeReconciliation::is_exact)
        }
        Err(e) => {
            println!("lake reconciliation: failed: {e:#}");
            false
        }
    };
    if !reconciliation.is_exact() {
        bail!("the reconciliation is not exact (lost, duplicated or misrouted lines above)");
    }
    if !cep_exact {
        bail!("the CEP reconciliation is not exact (missing, extra or repeated matches above)");
    }
    if !lake_exact {
        bail!("the lake reconciliation is not exact (missing, extra or repeated rows above)");
    }
    Ok(())
}

/// What a session ends with.
struct Outcome {
    reconciliation: Reconciliation,
    /// The CEP worker's matches against the rules (an error when they could not be checked).
    cep: anyhow::Result<CepReconciliation>,
    /// The lake tables' rows against their topics (an error when they could not be counted).
    lake: anyhow::Result<Vec<lake::LakeReconciliation>>,
    /// The last screen drawn, to show again on the normal screen.
    last_screen: Option<String>,
}

fn check(args: &UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0,
        "--rate must be positive (lines per second)"
    );
    anyhow::ensure!(
        args.interval >= Duration::from_millis(100),
        "--interval must be at least 100ms"
    );
    anyhow::ensure!(args.files >= 1, "--files must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.invalid),
        "--invalid must be a fraction between 0 and 1"
    );
    anyhow::ensure!(
        args.disorder >= 0.0 && args.late >= 0.0 && args.disorder + args.late <= 1.0,
        "--disorder and --late must be fractions adding up to at most 1"
    );
    anyhow::ensure!((1..=16).contains(&args.brokers), "--brokers must be 1..=16");
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(args.players >= 1, "--players must be at least 1");
    Ok(())
}

/// The state directory (absolute, since service configs name paths in it) and, for a temporary
/// one, its guard.
fn state_dir(asked: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match asked {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((std::fs::canonicalize(dir)?, None))
        }
        None => {
            let temp = tempfile::Builder::new().prefix("logpipe-up-").tempdir()?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

/// Start, watch, drain, reconcile, stop.
async fn session(args: &UpArgs, state: &Path, stop: CancellationToken) -> anyhow::Result<Outcome> {
    eprintln!("logpipe-dev up: starting two dev clusters, the schema store, the validator, the CEP worker, the lake loader, the mirror and the agent...");
    let rules = args.rules.clone().unwrap_or_else(cep::seed_rules);
    let options = PipelineOptions {
        state_dir: state.to_owned(),
        brokers: args.brokers,
        partitions: args.partitions,
        cep_rules: Some(rules.clone()),
        cep_idle_timeout: Some(CEP_IDLE_TIMEOUT),
        lake: true,
    };
    let mut pipeline = tokio::select! {
        started = Pipeline::start(options) => started.context("starting the pipeline")?,
        _ = stop.cancelled() => bail!("interrupted while starting"),
    };
    let header = where_things_are(&pipeline, args);
    println!("{header}");
    write_env_file(&pipeline, &supervision_of(&pipeline))?;

    // The generator: a fresh run id per run, so lines of an earlier run kept in --state-dir
    // are told apart (they are counted as foreign, not judged).
    let mut generator = LoadgenArgs::new(pipeline.log_dir());
    generator.files = args.files;
    generator.lines = 0;
    generator.duration = args.duration.map(|d| d.as_secs_f64());
    generator.rate = args.rate;
    generator.line_size = args.line_size.clone();
    generator.invalid = args.invalid;
    generator.disorder = args.disorder;
    generator.late = args.late;
    generator.rotate = args.rotate;
    generator.rotate_bytes = args.rotate_bytes;
    generator.players = args.players;
    generator.seed = args.seed;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    generator.run_id = Some(format!("up{unix}"));
    let progress = generator.progress.clone();
    let generator_stop = Arc::new(AtomicBool::new(false));
    let flag = generator_stop.clone();
    let mut writing = tokio::task::spawn_blocking(move || loadgen::run(&generator, &flag));

    let services: Vec<_> = pipeline
        .components()
        .into_iter()
        .map(|c| (c, pipeline.telemetry(c)))
        .collect();
    let sampler = Sampler::new(
        services,
        pipeline.write_cluster().bootstrap(),
        pipeline.read_cluster().bootstrap(),
        pipeline.raw_topic(),
        progress,
    )?;
    let (supervision, supervised) = watch::channel(supervision_of(&pipeline));
    let display = Display::new(args, header);
    let events = display.events.clone();
    let watching = CancellationToken::new();
    // Ends the view on every way out of here, errors included.
    let _end_view = watching.clone().drop_guard();
    let view = tokio::spawn(display.run(sampler, supervised, watching.clone()));

    // Supervise: restart what exited, until Ctrl-C or the generator's end.
    let mut ticker = tokio::time::interval(args.interval);
    let written = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break None,
            result = &mut writing => break Some(result),
        }
        for c in pipeline.components() {
            if !pipeline.is_running(c) {
                events.note(format!("{c} exited; starting it again"));
                match pipeline.restart(c).await {
                    Ok(()) => {
                        events.note(format!("{c} ready again (start {})", pipeline.starts(c)))
                    }
                    Err(e) => events.note(format!("{c} failed to start again: {e:#}")),
                }
            }
        }
        let now = supervision_of(&pipeline);
        if *supervision.borrow() != now {
            write_env_file(&pipeline, &now)?;
            supervision.send_replace(now);
        }
    };
    generator_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = match written {
        Some(result) => result,
        None => writing.await,
    }
    .context("the load generator panicked")?
    .context("the load generator failed")?;
    events.note(format!(
        "generator stopped: {}; waiting up to {}s for the pipeline to drain",
        report.summary(),
        args.drain_timeout.as_secs()
    ));
    let mut reconciliation = reconcile::wait_drained(
        pipeline.read_cluster().bootstrap(),
        &pipeline.schema_store_url(),
        &pipeline.clean_topics(),
        &pipeline.dlq_topics(),
        std::slice::from_ref(&report),
        args.drain_timeout,
    )
    .await;
    if let Ok(r) = &mut reconciliation {
        r.lost_to_retention = pipeline.records_lost_to_retention().await;
    }
    let cep = match &reconciliation {
        Ok(_) => {
            events.note(format!(
                "pipeline drained; waiting up to {}s for the CEP worker to catch up",
                args.drain_timeout.as_secs()
            ));
            cep::reconcile(&pipeline, &rules, args.drain_timeout).await
        }
        Err(_) => Err(anyhow::anyhow!("not checked: the pipeline did not drain")),
    };
    let lake = match &reconciliation {
        Ok(_) => {
            events.note(format!(
                "waiting up to {}s for the lake tables to catch up",
                args.drain_timeout.as_secs()
            ));
            lake::reconcile(&pipeline, args.drain_timeout).await
        }
        Err(_) => Err(anyhow::anyhow!("not checked: the pipeline did not drain")),
    };
    watching.cancel();
    let last_screen = view.await.unwrap_or_default();
    eprintln!("logpipe-dev up: stopping every service...");
    let stopped = pipeline.stop(STOP_TIMEOUT).await;
    let reconciliation = reconciliation.context("reading the clean and dead-letter topics")?;
    stopped.context("stopping the pipeline")?;
    Ok(Outcome {
        reconciliation,
        cep,
        lake,
        last_screen,
    })
}

/// Each component's pid (for the user's `kill -9`) and number of starts.
type Supervision = Vec<(Component, Option<u32>, u32)>;

fn supervision_of(pipeline: &Pipeline) -> Supervision {
    let pids = binaries::child_pids();
    pipeline
        .components()
        .into_iter()
        .map(|c| {
            let pid = pids
                .iter()
                .find(|(exe, _)| exe == c.binary())
                .map(|(_, pid)| *pid);
            (c, pid, pipeline.starts(c))
        })
        .collect()
}

/// What a user needs to find things (printed at start, kept at the top of the screen).
fn where_things_are(pipeline: &Pipeline, args: &UpArgs) -> String {
    let state = &pipeline.options().state_dir;
    let kept = if args.state_dir.is_some() {
        "kept after exit"
    } else {
        "removed at exit; --state-dir DIR keeps it"
    };
    let control = |c: &harness::DevCluster| c.control_url().unwrap_or("-").to_owned();
    let telemetry: Vec<String> = pipeline
        .components()
        .into_iter()
        .map(|c| format!("{c} http://{}", pipeline.telemetry(c)))
        .collect();
    let rules = args.rules.clone().unwrap_or_else(cep::seed_rules);
    format!(
        "logpipe-dev up: state {} ({kept})\n\
         \x20 logs written    {}/game-*.log   service output {}/<service>.log, configs <service>.toml\n\
         \x20 write cluster   bootstrap {}   control {}\n\
         \x20 read cluster    bootstrap {}   control {}\n\
         \x20 schema store    {}\n\
         \x20 cep             http://{}   rules {} -> {}, late events {}   (rules API: $CEP/rules/NAME)\n\
         \x20 lake            {} -> Delta table {}, {} -> {}   (query it: README, \"Query the lake\")\n\
         \x20 telemetry       {}\n\
         \x20 topics          {} -> {} / {}   (shell variables: {}/up.env)\n\
         \x20 Ctrl-C stops the generator, drains, reconciles and stops; a second Ctrl-C kills everything",
        state.display(),
        pipeline.log_dir().display(),
        state.display(),
        pipeline.write_cluster().bootstrap(),
        control(pipeline.write_cluster()),
        pipeline.read_cluster().bootstrap(),
        control(pipeline.read_cluster()),
        pipeline.schema_store_url(),
        pipeline.telemetry(Component::Cep),
        rules.display(),
        logpipe_core::record::CEP_MATCHES_TOPIC,
        logpipe_core::record::CEP_LATE_TOPIC,
        pipeline.clean_topics().join(","),
        pipeline.lake_table().display(),
        pipeline.dlq_topics().join(","),
        pipeline.lake_dead_letter_table().display(),
        telemetry.join("  "),
        pipeline.raw_topic(),
        pipeline.clean_topics().join(","),
        pipeline.dlq_topics().join(","),
        state.display(),
    )
}

/// `<state>/up.env`: the same as shell variables, for commands in another terminal
/// (`. <state>/up.env; kcat -b $READ_BOOTSTRAP ...`). Rewritten when a pid changes.
fn write_env_file(
    pipeline: &Pipeline,
    supervision: &[(Component, Option<u32>, u32)],
) -> anyhow::Result<()> {
    let state = &pipeline.options().state_dir;
    let mut vars = vec![
        ("STATE".to_owned(), state.display().to_string()),
        (
            "WRITE_BOOTSTRAP".into(),
            pipeline.write_cluster().bootstrap().to_owned(),
        ),
        (
            "WRITE_CONTROL".into(),
            pipeline
                .write_cluster()
                .control_url()
                .unwrap_or_default()
                .to_owned(),
        ),
        (
            "READ_BOOTSTRAP".into(),
            pipeline.read_cluster().bootstrap().to_owned(),
        ),
        (
            "READ_CONTROL".into(),
            pipeline
                .read_cluster()
                .control_url()
                .unwrap_or_default()
                .to_owned(),
        ),
        ("STORE".into(), pipeline.schema_store_url()),
        (
            "CEP".into(),
            format!("http://{}", pipeline.telemetry(Component::Cep)),
        ),
        (
            "LAKE_TABLE".into(),
            pipeline.lake_table().display().to_string(),
        ),
        (
            "LAKE_DEAD_LETTER_TABLE".into(),
            pipeline.lake_dead_letter_table().display().to_string(),
        ),
    ];
    for &(c, pid, _) in supervision {
        let name = c.name().to_uppercase().replace('-', "_");
        vars.push((
            format!("{name}_PID"),
            pid.map(|p| p.to_string()).unwrap_or_default(),
        ));
        vars.push((
            format!("{name}_CONFIG"),
            pipeline.config_file(c).display().to_string(),
        ));
        vars.push((
            format!("{name}_TELEMETRY"),
            format!("http://{}", pipeline.telemetry(c)),
        ));
    }
    let text: String = vars
        .iter()
        .map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', r"'\''")))
        .collect();
    crate::write_atomically(&state.join("up.env"), text.as_bytes())
}

/// Notes shown under the view (or printed as lines with `--no-tui`).
#[derive(Clone)]
struct Events {
    plain: bool,
    recent: Arc<Mutex<Vec<String>>>,
}

/// Events kept on the screen.
const SHOWN_EVENTS: usize = 6;

impl Events {
    fn note(&self, event: String) {
        if self.plain {
            println!("event: {event}");
        }
        let mut recent = self.recent.lock().expect("events lock");
        recent.push(event);
        let excess = recent.len().saturating_sub(SHOWN_EVENTS);
        recent.drain(..excess);
    }
}

/// The live view: scrapes every interval and draws.
struct Display {
    plain: bool,
    interval: Duration,
    header: String,
    events: Events,
}

impl Display {
    fn new(args: &UpArgs, header: String) -> Display {
        let events = Events {
            plain: args.no_tui,
            recent: Arc::default(),
        };
        Display {
            plain: args.no_tui,
            interval: args.interval,
            header,
            events,
        }
    }

    /// Draws until `done`; returns the last screen (none with `--no-tui`).
    async fn run(
        self,
        sampler: Sampler,
        supervised: watch::Receiver<Supervision>,
        done: CancellationToken,
    ) -> Option<String> {
        let mut tracker = Tracker::new(Instant::now());
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.plain {
            // Alternate screen, cursor hidden.
            print!("\x1b[?1049h\x1b[?25l");
        }
        let mut last = None;
        let mut finished = false;
        // A last frame is drawn after `done`, so the final view shows the drained pipeline.
        while !finished {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = done.cancelled() => finished = true,
            }
            let scrape = sampler.scrape().await;
            let frame = tracker.frame(&scrape, &supervised.borrow());
            if self.plain {
                println!("{}", frame.line());
            } else {
                let events = self.events.recent.lock().expect("events lock").join("\n  ");
                let screen = format!("{}\nevents\n  {events}\n", frame.screen());
                // Home, clear, draw: where things are, then the view.
                print!("\x1b[H\x1b[2J{}\n{screen}", self.header);
                last = Some(screen);
            }
            let _ = std::io::stdout().flush();
        }
        last
    }
}

/// Back to the normal screen, showing the last view there, before the final lines.
fn leave_screen(args: &UpArgs, last_screen: Option<String>) {
    if !args.no_tui {
        print!("\x1b[?25h\x1b[?1049l{}", last_screen.unwrap_or_default());
        let _ = std::io::stdout().flush();
    }
}
