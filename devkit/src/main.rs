//! `logpipe-dev`: local Kafka clusters and generated game logs for development and tests.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use logpipe_core::logging::{self, LogFormat};
use logpipe_devkit::cluster;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Cluster(args) => cluster::run(args).await,
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
