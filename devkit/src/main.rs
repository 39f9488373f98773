//! `logpipe-dev`: local Kafka clusters and generated game logs for development and tests.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use logpipe_core::logging::{self, LogFormat};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use logpipe_devkit::benchreport;
use logpipe_devkit::{cluster, loadgen, up};

#[derive(Parser)]
#[command(name = "logpipe-dev", about = "Local development tools for logpipe")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Format of the tool's own logs (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Kafka cluster (librdkafka's mock cluster) on loopback until SIGTERM.
    Cluster(cluster::ClusterArgs),
    /// Render bench/results/REPORT.md and ratios.svg from the runs `bench/run` keeps.
    BenchReport(benchreport::ReportArgs),
    /// Write JSON-lines game logs (valid and invalid, with rotation) and report what was written.
    Loadgen(loadgen::LoadgenArgs),
    /// Run the whole pipeline locally on generated game logs, with a live view; Ctrl-C drains,
    /// reconciles every line and stops.
    Up(up::UpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Up(_) => up::LOG_FILTER,
        _ => "info",
    };
    logging::init_with_default(cli.log_format, default_filter);
    if let Command::Cluster(args) = &cli.command {
        args.export_retention();
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Cluster(args) => cluster::run(args).await,
            Command::BenchReport(args) => {
                benchreport::write_report(&args).map(|path| println!("written {}", path.display()))
            }
            Command::Loadgen(args) => run_loadgen(args).await,
            Command::Up(args) => up::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logpipe-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the generator on a blocking thread; SIGINT/SIGTERM stop it and it still reports.
async fn run_loadgen(args: loadgen::LoadgenArgs) -> anyhow::Result<()> {
    let signals = logpipe_core::shutdown::listen()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        signals.shutdown.cancelled().await;
        flag.store(true, Ordering::Relaxed);
    });
    let report = tokio::task::spawn_blocking(move || loadgen::run(&args, &stop)).await??;
    println!("{}", report.summary());
    Ok(())
}
