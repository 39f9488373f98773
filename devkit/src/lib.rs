//! Local development tools for logpipe.
//!
//! - [`api_fuzz`]: Schemathesis, the outside API fuzzer, against a service's OpenAPI document;
//! - [`cluster`]: `logpipe-dev cluster`, a Kafka cluster in a process (librdkafka's mock cluster)
//!   with a control API for faults;
//! - [`clean`]: game records in the clean topics' wire format, generated into a topic;
//! - [`loadgen`]: `logpipe-dev loadgen`, generated game logs with a reconcilable report;
//! - [`disk`]: a small file system to fill up, for full-disk tests;
//! - [`harness`]: what tests use to start clusters and services and read topics back;
//! - [`benchreport`]: the machine-readable rows every benchmark emits for `bench/run`;
//! - [`measure`]: what the benchmarks measure with (rates, CPU and memory from `/proc`, sizing);
//! - [`prometheus`]: reading a service's `/metrics` page;
//! - [`reconcile`]: every line written found once in its clean or dead-letter topic;
//! - [`cep_oracle`]: the matches a CEP worker should have made, worked out independently;
//! - `fuzz` (feature `proptest`): inputs for the parsers' property tests.

pub mod api_fuzz;
pub mod benchreport;
pub mod cep_oracle;
pub mod clean;
pub mod cluster;
pub mod disk;
#[cfg(feature = "proptest")]
pub mod fuzz;
pub mod harness;
pub mod loadgen;
pub mod measure;
pub mod pipeline;
pub mod prometheus;
pub mod reconcile;
mod spawner;
pub mod up;

use anyhow::Context as _;

/// `GET url`, failing on an error status (naming the URL), and the body read as JSON.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await?)
}

/// Writes a file that another process may be polling (a bootstrap file, a load report) so that
/// it is seen either whole or not at all: write a temporary file beside it, then rename.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
