//! What the CEP benchmarks share: the game records of `logpipe_devkit::clean`, the worker's
//! config and process, its metrics, and the ceiling they are all measured against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apache_avro::Schema;
use logpipe_cep::CepConfig;
use logpipe_core::kafka::Role;
use logpipe_core::metric_names::cep as names;
use logpipe_devkit::clean::decoding_ceiling;
use logpipe_devkit::harness::{free_addr, write_file, Process};
use logpipe_devkit::measure::{env, Rate};
use logpipe_devkit::prometheus;

pub const CLEAN: &str = "clean.game";

pub const STALL: Duration = Duration::from_secs(900);

/// `fetch.wait.max.ms` of the workers (and of the ceiling, which uses the worker's config): the
/// dev broker holds a fetch for its whole wait when none of its partitions has data, where Kafka
/// answers as soon as data arrives. A worker waiting for its own re-keyed records (the
/// repartition topic is empty until its transaction commits) would otherwise be measured
/// waiting out librdkafka's default 500 ms. `BENCH_FETCH_WAIT_MS=0` keeps the default.
pub const FETCH_WAIT_MS: u32 = 10;

pub fn fetch_wait() -> Option<u32> {
    Some(env("BENCH_FETCH_WAIT_MS", FETCH_WAIT_MS)).filter(|ms| *ms > 0)
}

pub struct WorkerConfig {
    pub path: PathBuf,
    pub telemetry: SocketAddr,
}

pub fn worker_config(
    dir: &Path,
    store: &str,
    bootstrap: &str,
    group: &str,
    rules: Option<&str>,
    batch_records: Option<usize>,
) -> anyhow::Result<WorkerConfig> {
    let telemetry = free_addr();
    let rules_file = match rules {
        Some(yaml) => {
            let path = write_file(dir, &format!("rules-{group}.yaml"), yaml)?;
            format!("rules_file = {:?}\n", path.display().to_string())
        }
        None => String::new(),
    };
    let batch = batch_records.map_or(String::new(), |n| format!("batch_records = {n}\n"));
    let text = format!(
        "schema_store = \"{store}\"\ngroup = \"{group}\"\ninstance = \"bench\"\n{rules_file}{batch}\
         [kafka]\nbootstrap = \"{bootstrap}\"\n[telemetry]\nlisten = \"{telemetry}\"\n"
    );
    let text = match fetch_wait() {
        Some(ms) => format!("{text}[kafka.properties]\n\"fetch.wait.max.ms\" = {ms}\n"),
        None => text,
    };
    let path = write_file(dir, &format!("cep-{group}.toml"), &text)?;
    Ok(WorkerConfig { path, telemetry })
}

pub fn start(config: &WorkerConfig) -> anyhow::Result<Process> {
    Process::start(
        "logpipe-cep",
        &["run", "--config", config.path.to_str().context("path")?],
    )
}

pub fn events(page: &str, topic: &str) -> f64 {
    prometheus::sum(&prometheus::parse(page), names::EVENTS, &[("topic", topic)]).unwrap_or(0.0)
}

/// Waits for the worker's first event counted on `topic`, polling every 10 ms: when, and how
/// many it had counted by then.
pub async fn first_event(
    http: &reqwest::Client,
    process: &mut Process,
    telemetry: SocketAddr,
    topic: &str,
) -> anyhow::Result<(Instant, usize)> {
    loop {
        let n = events(&prometheus::scrape(http, telemetry).await, topic) as usize;
        if n > 0 {
            return Ok((Instant::now(), n));
        }
        process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the worker has counted `records` events of `topic`; its metrics page then.
pub async fn last_event(
    http: &reqwest::Client,
    process: &mut Process,
    telemetry: SocketAddr,
    topic: &str,
    records: usize,
) -> anyhow::Result<String> {
    let stall = Instant::now() + STALL;
    // Rendering /metrics costs the worker ~3.6 ms of CPU with 1,000 rules (4 series per rule):
    // polled every 10 ms that took a third of a core from the worker being measured (a profile
    // showed `PrometheusHandle::render` at 36% of its CPU). The first event is caught within
    // 10 ms; the last within `BENCH_POLL_MS`.
    let poll = Duration::from_millis(env("BENCH_POLL_MS", 100));
    loop {
        let page = prometheus::scrape(http, telemetry).await;
        let n = events(&page, topic) as usize;
        if n >= records {
            return Ok(page);
        }
        anyhow::ensure!(
            Instant::now() < stall,
            "the worker stalled at {n} of {records}\n{}",
            process.logs()
        );
        process.ensure_running()?;
        tokio::time::sleep(poll).await;
    }
}

/// The worker's batches committed so far and their total time (s), from its metrics page.
pub fn batches(page: &str) -> [f64; 2] {
    [
        prometheus::total(page, &format!("{}_count", names::BATCH)),
        prometheus::total(page, &format!("{}_sum", names::BATCH)),
    ]
}

/// The ceiling: read and decode every record of `CLEAN` with the worker's consumer settings.
pub fn ceiling(
    config: &CepConfig,
    group: &str,
    records: usize,
    schemas: &HashMap<u32, Schema>,
) -> anyhow::Result<Rate> {
    let consumer = config.kafka.client_config(
        &Role::Consumer {
            group_id: group.to_owned(),
        },
        "bench-ceiling",
    );
    decoding_ceiling(&consumer, CLEAN, records, schemas, STALL)
}

/// The metrics page once the sum of `metric` has not changed for a second.
pub async fn settle(http: &reqwest::Client, telemetry: SocketAddr, metric: &str) -> String {
    let mut last = (f64::NAN, Instant::now());
    loop {
        let page = prometheus::scrape(http, telemetry).await;
        let value = prometheus::total(&page, metric);
        if value != last.0 {
            last = (value, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn delete_rules(
    http: &reqwest::Client,
    telemetry: SocketAddr,
    names: impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    for name in names {
        http.delete(format!("http://{telemetry}/rules/{name}"))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("DELETE /rules/{name}"))?;
    }
    Ok(())
}

/// A worker of a group of its own with one rule from its rules_file, ready.
pub async fn worker_with_rule(
    dir: &Path,
    store: &str,
    bootstrap: &str,
    group: &str,
    rule: &str,
) -> anyhow::Result<(WorkerConfig, Process)> {
    let config = worker_config(dir, store, bootstrap, group, Some(rule), None)?;
    let mut process = start(&config)?;
    process
        .wait_ready(config.telemetry, Duration::from_secs(120))
        .await?;
    Ok((config, process))
}
