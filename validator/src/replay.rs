//! `logpipe-validator replay --config FILE --topic dlq.<stream> [filters]`: after a schema fix,
//! re-validates dead letters exactly once.
//!
//! It runs the validator's own loop (`pipeline`) with the DLQ as input: each chosen
//! dead letter is restored to the record first read (its `lp.error.*` headers removed), checked
//! against its original topic's route and the current schema, and written to the clean topic,
//! or to the DLQ again with fresh error headers, in transactions that also commit the replay's
//! own consumer group offsets on the DLQ (`<group_id>.replay`). Replay removal is not applied:
//! these records were already passed once, on purpose. The run stops at the DLQ's end offsets
//! taken at start, so records it dead-letters again are left for a later run, which starts where
//! this one committed.
//!
//! The service runner in `logpipe-core` knows `run` and `check`; `main.rs` sends `replay` here
//! before handing every other command line to the runner, which lists `replay` in its help
//! ([`logpipe_core::service::Service::EXTRA_COMMANDS`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use logpipe_core::logging::{self, LogFormat};
use logpipe_core::record::{error_header, ErrorStage};
use logpipe_core::telemetry::Readiness;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{Mode, Pipeline, Totals};
use crate::ValidatorConfig;

/// The command's one-line description, also listed in `logpipe-validator --help`.
pub const ABOUT: &str = "Re-validate dead letters after a schema fix, exactly once";

/// `logpipe-validator replay`.
#[derive(Debug, Parser)]
#[command(name = "logpipe-validator replay", about = ABOUT)]
struct ReplayArgs {
    /// The validator's config file (routes, schema store, read cluster).
    #[arg(
        long,
        short,
        env = "LOGPIPE_CONFIG",
        default_value = "/etc/logpipe/validator.toml"
    )]
    config: PathBuf,
    /// The dead-letter topic to replay.
    #[arg(long)]
    topic: String,
    /// Only dead letters of this stage (parse, route, schema, validate, encode).
    #[arg(long, value_parser = parse_stage)]
    stage: Option<ErrorStage>,
    /// Only dead letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only records with a timestamp at or after this (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Only records with a timestamp before this (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

fn parse_stage(s: &str) -> Result<ErrorStage, String> {
    ErrorStage::parse(s)
        .ok_or_else(|| format!("{s:?} is not a stage (parse, route, schema, validate, encode)"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?}: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Which dead letters a replay takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    stage: Option<ErrorStage>,
    reason: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl Selection {
    pub(crate) fn matches(&self, message: &OwnedMessage) -> bool {
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(String::from_utf8_lossy)
        };
        if let Some(stage) = self.stage {
            if header(error_header::STAGE).as_deref() != Some(stage.as_str()) {
                return false;
            }
        }
        if let Some(reason) = &self.reason {
            if !header(error_header::REASON).is_some_and(|r| r.contains(reason.as_str())) {
                return false;
            }
        }
        let ts = message.timestamp().to_millis();
        if self
            .since_ms
            .is_some_and(|since| ts.is_none_or(|t| t < since))
        {
            return false;
        }
        if self
            .until_ms
            .is_some_and(|until| ts.is_none_or(|t| t >= until))
        {
            return false;
        }
        true
    }
}

/// Replays `topic` and returns the counts.
pub(crate) async fn replay(
    config: &ValidatorConfig,
    topic: &str,
    selection: Selection,
    shutdown: CancellationToken,
) -> anyhow::Result<Totals> {
    let mode = Mode::Replay {
        topic: topic.to_owned(),
        select: Box::new(move |m| selection.matches(m)),
    };
    let pipeline = Pipeline::connect(
        config.settings(".replay", 0),
        mode,
        config.checker()?,
        Readiness::new(),
        shutdown,
    )
    .await?;
    match pipeline {
        Some(pipeline) => pipeline.run().await,
        None => Ok(Totals::default()),
    }
}

/// The `replay` command's `main`.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = ReplayArgs::parse_from(args);
    logging::init(args.log_format);
    let config: ValidatorConfig = match logpipe_core::service::load_config(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("logpipe-validator replay: {e:#}");
            return ExitCode::from(logpipe_core::service::EXIT_CONFIG);
        }
    };
    let selection = Selection {
        stage: args.stage,
        reason: args.reason,
        since_ms: args.since,
        until_ms: args.until,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("logpipe-validator replay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let signals = logpipe_core::shutdown::listen()?;
        replay(&config, &args.topic, selection, signals.shutdown).await
    });
    match result {
        Ok(totals) => {
            println!(
                "replayed {}: {} clean, {} failed again, {} not selected",
                args.topic, totals.clean, totals.dead, totals.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logpipe-validator replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;

    use super::*;

    fn dead_letter(stage: &str, reason: &str, ts: i64) -> OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: error_header::STAGE,
                value: Some(stage.as_bytes()),
            })
            .insert(Header {
                key: error_header::REASON,
                value: Some(reason.as_bytes()),
            });
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "dlq.a".into(),
            Timestamp::CreateTime(ts),
            0,
            0,
            Some(headers),
        )
    }

    #[test]
    fn selection_filters_by_stage_reason_and_time() {
        let m = dead_letter("validate", "expected int, got string", 1_000);
        assert!(Selection::default().matches(&m));
        assert!(Selection {
            stage: Some(ErrorStage::Validate),
            ..Default::default()
        }
        .matches(&m));
        assert!(!Selection {
            stage: Some(ErrorStage::Parse),
            ..Default::default()
        }
        .matches(&m));
        assert!(Selection {
            reason: Some("got string".into()),
            ..Default::default()
        }
        .matches(&m));
        assert!(!Selection {
            reason: Some("missing".into()),
            ..Default::default()
        }
        .matches(&m));
        assert!(Selection {
            since_ms: Some(1_000),
            until_ms: Some(1_001),
            ..Default::default()
        }
        .matches(&m));
        assert!(!Selection {
            since_ms: Some(1_001),
            ..Default::default()
        }
        .matches(&m));
        assert!(!Selection {
            until_ms: Some(1_000),
            ..Default::default()
        }
        .matches(&m));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert!(parse_stage("nope").is_err());
    }
}
