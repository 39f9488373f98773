//! Schemathesis, the outside API fuzzer, run against a service's OpenAPI document by the tests:
//! every operation, with examples, boundary cases, random data and chains through the
//! document's links, every answer checked against the document.
//!
//! `scripts/api-fuzz-venv` installs it (pinned) and `scripts/test` names it in
//! `LOGPIPE_SCHEMATHESIS`. A run is reproducible by its seed: `LOGPIPE_API_FUZZ_SEED=<seed>`, or
//! `random` to explore; CI runs a fixed one so its outcome does not depend on the draw.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The seed of a run unless `LOGPIPE_API_FUZZ_SEED` says otherwise.
const DEFAULT_SEED: &str = "20261205";

/// The Schemathesis command, or `None` (saying the test is skipped, and how to run it) when it
/// is not installed.
pub fn schemathesis() -> Option<PathBuf> {
    let found = std::env::var_os("LOGPIPE_SCHEMATHESIS").map(PathBuf::from);
    if found.is_none() {
        eprintln!(
            "SKIPPED: Schemathesis is not installed; run scripts/test, or set \
             LOGPIPE_SCHEMATHESIS=$(scripts/api-fuzz-venv)"
        );
    }
    found
}

/// Runs Schemathesis on the document at `document_url` with basic auth `credentials`, the
/// settings file `settings` (repository-relative, under `tests/api-fuzz/`) and at most
/// `max_examples` per operation and phase; fails with its report when it finds something.
/// Its cache of findings goes to `workdir`.
pub async fn run(
    schemathesis: &Path,
    document_url: &str,
    credentials: (&str, &str),
    settings: &str,
    max_examples: u32,
    workdir: &Path,
) -> anyhow::Result<()> {
    let seed = match std::env::var("LOGPIPE_API_FUZZ_SEED") {
        Ok(s) if s == "random" => None,
        Ok(s) => Some(s),
        Err(_) => Some(DEFAULT_SEED.to_owned()),
    };
    let settings = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/api-fuzz")
        .join(settings);
    let mut command = Command::new(schemathesis);
    command
        .arg("--config-file")
        .arg(&settings)
        .arg("run")
        .arg(document_url)
        .args(["--auth", &format!("{}:{}", credentials.0, credentials.1)])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--workers", "2", "--no-color"])
        .env("NO_COLOR", "1")
        .current_dir(workdir);
    if let Some(seed) = &seed {
        command.args(["--seed", seed]);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .rfind("SUMMARY")
        .map_or(report.as_ref(), |i| &report[i..]);
    eprintln!("schemathesis on {document_url} (seed {seed:?}):\n{summary}");
    anyhow::ensure!(
        output.status.success(),
        "Schemathesis found answers that break the document:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
