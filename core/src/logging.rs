//! `tracing` set-up: human-readable lines by default, JSON lines for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Output format of the service's own logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber on stderr. The filter comes from `LOGPIPE_LOG` (then
/// `RUST_LOG`), default `info`. Calling it twice is harmless, so tests may call it freely.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// [`init`] with another filter when neither variable is set. A program quieter by default
/// than its children passes its filter here rather than through the environment, which the
/// children would inherit.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter = std::env::var("LOGPIPE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
