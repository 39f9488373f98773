//! An outside fuzzer on the API: Schemathesis reads the OpenAPI document the store serves and
//! generates requests for every operation (examples, boundary cases, random data, and chains
//! through the document's links), then checks each answer against the document: no 5xx,
//! documented status codes, content types and bodies, requests the document allows accepted
//! (`tests/api-fuzz/schemathesis.toml` says which refusals are fine), auth enforced.
//!
//! Needs the binaries built and Schemathesis installed: `scripts/test` does both
//! (`scripts/api-fuzz-venv` installs it and names it in `LOGPIPE_SCHEMATHESIS`). A run is
//! reproducible by its seed: `LOGPIPE_API_FUZZ_SEED=<seed>`, or `random` to explore.

use std::process::Command;
use std::time::Duration;

use logpipe_devkit::harness::{free_addr, Process};

/// The seed CI runs with, so its outcome does not depend on the draw.
const DEFAULT_SEED: &str = "20261205";
const USER: &str = "fuzz";
const PASSWORD: &str = "fuzz-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_document() {
    let Some(schemathesis) = std::env::var_os("LOGPIPE_SCHEMATHESIS") else {
        eprintln!(
            "SKIPPED: Schemathesis is not installed; run scripts/test, or set \
             LOGPIPE_SCHEMATHESIS=$(scripts/api-fuzz-venv)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (api, telemetry) = (free_addr(), free_addr());
    let hash = logpipe_schema_store::hash_password(PASSWORD);
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{api}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
             [auth]\n[[auth.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut store = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    store
        .wait_ready(telemetry, Duration::from_secs(30))
        .await
        .unwrap();

    let seed = match std::env::var("LOGPIPE_API_FUZZ_SEED") {
        Ok(s) if s == "random" => None,
        Ok(s) => Some(s),
        Err(_) => Some(DEFAULT_SEED.to_owned()),
    };
    let settings = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/api-fuzz/schemathesis.toml"
    );
    let mut command = Command::new(schemathesis);
    command
        .args(["--config-file", settings, "run"])
        .arg(format!("http://{api}/openapi.json"))
        .args(["--auth", &format!("{USER}:{PASSWORD}")])
        .args(["--max-examples", "50", "--workers", "2", "--no-color"])
        .env("NO_COLOR", "1")
        // It keeps a cache of what it found in its working directory.
        .current_dir(dir.path());
    if let Some(seed) = &seed {
        command.args(["--seed", seed]);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .rfind("SUMMARY")
        .map_or(report.as_ref(), |i| &report[i..]);
    eprintln!("schemathesis (seed {seed:?}):\n{summary}");
    assert!(
        output.status.success(),
        "Schemathesis found answers that break the document:\n{report}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        store.logs()
    );
    store.terminate(Duration::from_secs(20)).await.unwrap();
}
