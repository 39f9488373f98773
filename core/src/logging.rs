//! `tracing` set-up: human-readable lines by default, JSON lines for log shippers. The filter
//! can change while the process runs ([`set_filter`]), so a SIGHUP applies a config's new
//! `[telemetry] log` without a restart.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// Output format of the service's own logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The installed filter and the program's default, for [`set_filter`].
struct Installed {
    handle: reload::Handle<EnvFilter, Registry>,
    default_filter: String,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The filter when none is configured: `info`, but the Delta kernel's own error events are
/// off: each carries the whole table snapshot in its span (kilobytes per line), and the lake
/// loader logs the same error once, briefly, where it handles it.
pub const DEFAULT_FILTER: &str = "info,buoyant_kernel=off";

/// Installs the global subscriber on stderr. The filter comes from `LOGPIPE_LOG` (then
/// `RUST_LOG`), default [`DEFAULT_FILTER`]. Calling it twice is harmless, so tests may call it
/// freely.
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER);
}

/// [`init`] with another filter when neither variable is set. A program quieter by default
/// than its children passes its filter here rather than through the environment, which the
/// children would inherit.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let (filter, handle) =
        reload::Layer::new(environment_filter().unwrap_or_else(|| EnvFilter::new(default_filter)));
    let output = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let output = match format {
        LogFormat::Human => output.boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = INSTALLED.set(Installed {
            handle,
            default_filter: default_filter.to_owned(),
        });
    }
}

/// The filter the environment asks for, which wins over any config.
fn environment_filter() -> Option<EnvFilter> {
    std::env::var("LOGPIPE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
}

/// Checks a filter (tracing directives such as `info,logpipe_validator=debug`), for config
/// validation.
pub fn parse_filter(directives: &str) -> anyhow::Result<()> {
    EnvFilter::builder()
        .parse(directives)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{directives:?} is not a log filter: {e}"))
}

/// Applies a config's filter: `directives`, or the program's default when `None`. The
/// environment (`LOGPIPE_LOG`, `RUST_LOG`) still wins, so an operator's one-off debugging
/// setting is not undone by a reload. Does nothing before [`init`].
pub fn set_filter(directives: Option<&str>) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let filter = environment_filter().unwrap_or_else(|| {
        let wanted = directives.unwrap_or(&installed.default_filter);
        EnvFilter::try_new(wanted).unwrap_or_else(|_| EnvFilter::new(&installed.default_filter))
    });
    let described = filter.to_string();
    if installed.handle.reload(filter).is_ok() {
        tracing::debug!(filter = %described, "log filter applied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_before_use() {
        assert!(parse_filter("info,logpipe_validator=debug").is_ok());
        let err = parse_filter("info,=[").unwrap_err().to_string();
        assert!(err.contains("not a log filter"), "{err}");
    }
}
