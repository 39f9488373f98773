//! What every service binary does around its own work: parse `run`/`check`, load and validate the
//! config, set up logs, serve telemetry, turn signals into a shutdown token and bound the drain.
//! A service's `main.rs` is one call: `logpipe_core::service::main::<MyService>()`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::logging::{self, LogFormat};
use crate::shutdown;
use crate::systemd;
use crate::telemetry::{Readiness, ServiceRoutes, TelemetryConfig, TelemetryServer};

/// Exit status for an invalid config (sysexits EX_CONFIG), from `run` and `check` alike: a unit
/// stops restarting a service whose config will never load (`RestartPreventExitStatus=78`), and
/// a deploy tool tells a bad config from a broken binary or host.
pub const EXIT_CONFIG: u8 = 78;

/// How long an idle thread of the runtime's blocking pool lives (tokio's default is 10 s).
/// Every `block_in_place` (a Kafka transaction's calls) hands the worker to another pool
/// thread, so the workers' allocations move from thread to thread, and each idle thread keeps
/// its allocator cache while it lives: with the default, the lake loader held 54 threads and its
/// peak RSS grew with its commits (651 MiB at the default flush size after 6 M records, 1.2 GiB
/// at 16 MiB files) where with this it holds 12-16 and stays flat (320 and 356 MiB), at the
/// same rows/s. Starting a thread again costs microseconds.
const IDLE_THREAD_LIFETIME: Duration = Duration::from_millis(200);

/// The services' multi-threaded runtime (a worker per core).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(IDLE_THREAD_LIFETIME)
        .build()
}

/// A service's config: deserialized with unknown keys rejected, then checked as a whole.
pub trait ServiceConfig: DeserializeOwned + Send + Sync + 'static {
    /// Checks that need more than one key or outside knowledge (regexes compile, paths are
    /// absolute, templates render). Errors name the key.
    fn validate(&self) -> anyhow::Result<()>;

    /// What the service would do with this config, printed by `check`.
    fn describe(&self) -> String;

    fn telemetry(&self) -> &TelemetryConfig;

    /// How long a shutdown may spend draining before the process gives up and exits non-zero.
    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// A running service.
pub trait Service {
    /// Binary name, e.g. `logpipe-agent`.
    const NAME: &'static str;
    /// Config path used when `--config` is not given.
    const DEFAULT_CONFIG: &'static str;
    type Config: ServiceConfig;
    /// Commands the binary's `main` handles itself before calling [`main`] (name, one-line
    /// description): listed in `--help` so they can be found, though the runner does not parse
    /// them.
    const EXTRA_COMMANDS: &'static [(&'static str, &'static str)] = &[];
    /// The service sends its own systemd notifications (READY, WATCHDOG, STOPPING) from the work
    /// they vouch for; otherwise the runner sends them (see [`crate::systemd`]).
    const NOTIFIES_SYSTEMD: bool = false;

    /// Runs until `ctx.shutdown` is cancelled, then drains and returns.
    fn run(config: Self::Config, ctx: Context) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What the runner hands a service.
#[derive(Debug, Clone)]
pub struct Context {
    /// Cancelled on SIGTERM/SIGINT; the service drains and returns.
    pub shutdown: CancellationToken,
    /// Bumped on SIGHUP (see [`Context::next_reload`]).
    reload: watch::Receiver<u64>,
    /// The service's readiness checks, served on `/ready`.
    pub readiness: Readiness,
    /// The config file, for reloading.
    pub config_path: PathBuf,
    /// The service's own HTTP routes, served on the telemetry listener once installed.
    pub routes: ServiceRoutes,
}

impl Context {
    /// Waits for the next SIGHUP and loads the config file again, validated and with its log
    /// filter applied; the service applies what else it can change while running. A config
    /// that does not load is logged and the service keeps the one it runs with. `None` once no
    /// more reloads can come.
    pub async fn next_reload<C: ServiceConfig>(&mut self) -> Option<C> {
        loop {
            self.reload.changed().await.ok()?;
            match load_config::<C>(&self.config_path) {
                Ok(config) => {
                    logging::set_filter(config.telemetry().log.as_deref());
                    return Some(config);
                }
                Err(e) => {
                    tracing::error!("reload refused, keeping the running configuration: {e:#}")
                }
            }
        }
    }
}

/// This host's name (`localhost` if it has none): the default name of a service instance, which
/// its transactional id, group membership and records' `host` derive from.
pub fn host_name() -> String {
    Some(gethostname::gethostname().to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Loads a service config and validates it; errors name the file.
pub fn load_config<C: ServiceConfig>(path: &Path) -> anyhow::Result<C> {
    let config: C = config::load(path)?;
    config
        .validate()
        .and_then(|()| match &config.telemetry().log {
            Some(filter) => logging::parse_filter(filter).context("telemetry.log"),
            None => Ok(()),
        })
        .map_err(|e| ConfigError::new(path, format!("{e:#}")))?;
    Ok(config)
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML).
    #[arg(long, short, global = true, env = "LOGPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Format of the service's own logs.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "LOGPIPE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Validate the config, print what the service would do, and exit 0 (valid) or 78 (invalid).
    Check,
}

/// The whole `main` of a service binary.
pub fn main<S: Service>() -> ExitCode {
    let cli = Cli::from_arg_matches(&cli_command::<S>().get_matches()).unwrap_or_else(|e| e.exit());
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(S::DEFAULT_CONFIG));
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check::<S>(&path),
        Command::Run => {
            logging::init(cli.log_format);
            let config = match load_config::<S::Config>(&path) {
                Ok(config) => {
                    logging::set_filter(config.telemetry().log.as_deref());
                    config
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::<S>(config, path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}: {e:#}", S::NAME);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The runner's command line, with the service's own commands listed after the help text.
fn cli_command<S: Service>() -> clap::Command {
    let command = Cli::command().name(S::NAME);
    if S::EXTRA_COMMANDS.is_empty() {
        return command;
    }
    let mut text = String::from("Other commands (see `<command> --help`):");
    for (name, about) in S::EXTRA_COMMANDS {
        text.push_str(&format!("\n  {name:<8} {about}"));
    }
    command.after_help(text)
}

fn check<S: Service>(path: &Path) -> ExitCode {
    match load_config::<S::Config>(path) {
        Ok(config) => {
            println!("{}: config {} is valid", S::NAME, path.display());
            println!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e:#}", S::NAME);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Runs a loaded service with signals, telemetry and a bounded drain. Public so that tools can
/// run a service in-process.
pub async fn run<S: Service>(config: S::Config, config_path: PathBuf) -> anyhow::Result<()> {
    let signals = shutdown::listen()?;
    let readiness = Readiness::new();
    let routes = ServiceRoutes::default();
    let telemetry =
        TelemetryServer::bind(config.telemetry(), readiness.clone(), routes.clone()).await?;
    tracing::info!(telemetry = %telemetry.local_addr(), config = %config_path.display(), "{} starting", S::NAME);
    let telemetry_stop = CancellationToken::new();
    let telemetry_task = tokio::spawn(telemetry.run(telemetry_stop.clone()));
    let drain_timeout = config.drain_timeout();
    let ctx = Context {
        shutdown: signals.shutdown.clone(),
        reload: signals.reload,
        readiness,
        config_path,
        routes,
    };
    let notify_stop = CancellationToken::new();
    let notifying = !S::NOTIFIES_SYSTEMD && systemd::listening();
    if notifying {
        tokio::spawn(systemd::follow(notify_stop.clone()));
    }
    let service = S::run(config, ctx);
    tokio::pin!(service);
    let result = tokio::select! {
        // A service that ends as soon as shutdown is asked still goes through the drain branch,
        // so systemd hears STOPPING=1.
        biased;
        _ = signals.shutdown.cancelled() => {
            if notifying {
                systemd::stopping();
            }
            match tokio::time::timeout(drain_timeout, &mut service).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("drain did not finish within {drain_timeout:?}")),
            }
        }
        result = &mut service => result,
    };
    notify_stop.cancel();
    // Telemetry stays up through the drain so its progress can be watched.
    telemetry_stop.cancel();
    let _ = telemetry_task.await;
    if result.is_ok() {
        tracing::info!("{} stopped", S::NAME);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use super::*;
    use crate::shutdown::tests::SIGNALS;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        telemetry: TelemetryConfig,
        #[serde(default)]
        ignore_shutdown: bool,
        #[serde(default)]
        reject: bool,
    }

    impl ServiceConfig for TestConfig {
        fn validate(&self) -> anyhow::Result<()> {
            anyhow::ensure!(!self.reject, "reject: the test asked for it");
            Ok(())
        }

        fn describe(&self) -> String {
            "a test service".into()
        }

        fn telemetry(&self) -> &TelemetryConfig {
            &self.telemetry
        }

        fn drain_timeout(&self) -> Duration {
            Duration::from_millis(300)
        }
    }

    struct TestService;

    impl Service for TestService {
        const NAME: &'static str = "logpipe-test";
        const DEFAULT_CONFIG: &'static str = "/nonexistent/test.toml";
        type Config = TestConfig;

        async fn run(config: TestConfig, ctx: Context) -> anyhow::Result<()> {
            ctx.readiness.ready("work");
            ctx.shutdown.cancelled().await;
            if config.ignore_shutdown {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    struct WithExtra;

    impl Service for WithExtra {
        const NAME: &'static str = "logpipe-extra";
        const DEFAULT_CONFIG: &'static str = "/nonexistent/test.toml";
        const EXTRA_COMMANDS: &'static [(&'static str, &'static str)] =
            &[("replay", "Do it again")];
        type Config = TestConfig;

        async fn run(config: TestConfig, ctx: Context) -> anyhow::Result<()> {
            TestService::run(config, ctx).await
        }
    }

    #[test]
    fn help_lists_the_extra_commands_and_run_check_still_parse() {
        let help = cli_command::<WithExtra>().render_long_help().to_string();
        assert!(
            help.contains("replay") && help.contains("Do it again"),
            "{help}"
        );
        assert!(help.contains("check"), "{help}");
        let plain = cli_command::<TestService>().render_long_help().to_string();
        assert!(!plain.contains("Other commands"), "{plain}");
        let matches = cli_command::<WithExtra>()
            .try_get_matches_from(["logpipe-extra", "check", "--config", "x.toml"])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert!(matches!(cli.command, Some(Command::Check)));
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(
            cli_command::<WithExtra>()
                .try_get_matches_from(["logpipe-extra", "replay"])
                .is_err(),
            "the runner does not parse extras"
        );
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("service.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn check_exits_zero_for_a_valid_config_and_ex_config_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "[telemetry]\nlisten = \"127.0.0.1:0\"\n");
        assert_eq!(check::<TestService>(&ok), ExitCode::SUCCESS);
        let unknown = write(
            dir.path(),
            "[telemetry]\nlisten = \"127.0.0.1:0\"\nextra = 1\n",
        );
        assert_eq!(check::<TestService>(&unknown), ExitCode::from(EXIT_CONFIG));
        let rejected = write(
            dir.path(),
            "reject = true\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        );
        let err = load_config::<TestConfig>(&rejected)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("service.toml") && err.contains("reject: the test asked"),
            "{err}"
        );
        assert_eq!(
            check::<TestService>(&dir.path().join("missing.toml")),
            ExitCode::from(EXIT_CONFIG)
        );
    }

    fn kill(signal: &str) {
        let pid = std::process::id().to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    async fn run_until_sigterm(ignore_shutdown: bool) -> anyhow::Result<()> {
        let config = TestConfig {
            telemetry: TelemetryConfig::on_port(crate::telemetry::tests::free_port()),
            ignore_shutdown,
            reject: false,
        };
        let url = format!("http://{}/ready", config.telemetry.listen);
        let task = tokio::spawn(run::<TestService>(config, PathBuf::from("test.toml")));
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status() == 200 {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "service never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill("-TERM");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run returns")
            .unwrap()
    }

    #[tokio::test]
    async fn run_serves_readiness_and_drains_on_sigterm() {
        let _guard = SIGNALS.lock().await;
        run_until_sigterm(false).await.expect("a clean drain");
    }

    #[tokio::test]
    async fn a_drain_past_its_timeout_is_an_error() {
        let _guard = SIGNALS.lock().await;
        let err = run_until_sigterm(true).await.unwrap_err().to_string();
        assert!(err.contains("drain did not finish"), "{err}");
    }
}
