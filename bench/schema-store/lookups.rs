//! Schema store throughput on loopback, next to a ceiling measured in the same run.
//!
//! Run: `cargo bench -p logpipe-schema-store --bench lookups` (release build). Environment:
//! `BENCH_SCHEMAS` (default 1000), `BENCH_CONNECTIONS` (100), `BENCH_SECONDS` (5 per phase).
//!
//! Phases, each with the same number of concurrent keep-alive connections:
//! 1. registrations of `BENCH_SCHEMAS` distinct Avro schemas (local storage, fsync per
//!    write);
//! 2. ceiling: a trivial axum handler on the same HTTP stack returning a fixed body;
//! 3. `GET /schemas/ids/{id}` over all ids;
//! 4. `POST /subjects/{s}` lookups;
//! 5. registrations with Kafka storage (a one-broker dev cluster, the store elected writer), when
//!    `logpipe-dev` is built next to the benchmark (`bench/run` builds it); skipped otherwise.
//!
//! Client and server share the machine, so the ceiling carries the client's cost too: the
//! ratios, not the absolute numbers, are what this measures. Each phase is also emitted as a
//! `logpipe_devkit::benchreport` row (with `LOGPIPE_BENCH_JSON` set, as `bench/run` does), plus
//! rows for the absolute targets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_core::kafka::KafkaConfig;
use logpipe_core::telemetry::TelemetryConfig;
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::harness::{bin_path, free_addr, DevCluster};
use logpipe_devkit::measure::env;
use logpipe_schema_store::{SchemaStoreConfig, Server, StorageConfig, StorageKind};
use tokio_util::sync::CancellationToken;

const CT: &str = "application/vnd.schemaregistry.v1+json";
const BENCH: &str = "schema-store";
const SUBJECT: &str = "logpipe-schema-store";

fn schema(i: usize) -> String {
    serde_json::json!({"type": "record", "name": format!("Event{i}"), "namespace": "bench",
        "fields": [{"name": "id", "type": "long"}, {"name": "host", "type": "string"}, {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["DEBUG", "INFO", "WARN", "ERROR"]}}]})
    .to_string()
}

struct Outcome {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Outcome {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize]
    }
}

/// Runs `make(i)` requests from `connections` keep-alive connections, either until `count`
/// requests are done or for `duration`.
async fn load<F>(
    connections: usize,
    duration: Option<Duration>,
    count: Option<usize>,
    make: F,
) -> Outcome
where
    F: Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (make, next) = (Arc::clone(&make), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (mut latencies, mut errors) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| i >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let sent = Instant::now();
                match make(&client, i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Outcome {
        requests: latencies.len(),
        elapsed,
        latencies,
        errors,
    }
}

/// Prints a phase's table line and emits its report row (against the ceiling when given).
fn row(name: &str, outcome: &Outcome, ceiling: Option<&Outcome>) {
    let ratio = ceiling.map_or("-".to_owned(), |c| {
        format!("{:.2}", outcome.per_second() / c.per_second())
    });
    let (p50, p99) = (
        outcome.percentile(0.5).as_secs_f64() * 1e3,
        outcome.percentile(0.99).as_secs_f64() * 1e3,
    );
    println!(
        "| {name:<34} | {:>10.0} | {p50:>8.2} | {p99:>8.2} | {:>6} | {ratio:>9} |",
        outcome.per_second(),
        outcome.errors
    );
    let subject = if ceiling.is_some() {
        SUBJECT
    } else {
        "fixed-body handler"
    };
    let mut report = Row::new(BENCH, name, subject, outcome.per_second(), "req/s")
        .extra("p50_ms", p50)
        .extra("p99_ms", p99)
        .extra("errors", outcome.errors);
    if let Some(ceiling) = ceiling {
        report = report.against("fixed-body handler, same HTTP stack", ceiling.per_second());
    }
    report.emit().expect("writing the benchmark row");
}

async fn serve_ceiling() -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = format!(
        "{{\"schema\":{}}}",
        serde_json::to_string(&schema(0)).unwrap()
    );
    let router = axum::Router::new().route(
        "/fixed",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CT)], body) }
        }),
    );
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    (addr, stop)
}

/// Phase 5: registrations through an instance with Kafka storage. `None` when the dev cluster
/// binary is not built.
async fn kafka_registrations(schemas: usize, connections: usize) -> Option<Outcome> {
    if let Err(e) = bin_path("logpipe-dev") {
        println!("(Kafka storage phase skipped: {e})");
        return None;
    }
    let cluster = DevCluster::start(1, &[("_schemas", 1)])
        .await
        .expect("starting the dev cluster");
    let config = SchemaStoreConfig {
        listen: free_addr(),
        storage: StorageConfig {
            kind: StorageKind::Kafka,
            ..StorageConfig::default()
        },
        kafka: Some(KafkaConfig::new(cluster.bootstrap())),
        telemetry: TelemetryConfig::on_port(0),
        auth: None,
        max_body_bytes: 4 << 20,
    };
    let server = Server::bind(&config)
        .await
        .expect("starting the Kafka-backed store");
    let base = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    // The first write waits until this instance has won the election.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let warm_up = client
        .post(format!("{base}/subjects/warm-up/versions"))
        .header("content-type", CT)
        .body(serde_json::json!({"schema": schema(usize::MAX)}).to_string());
    assert!(
        warm_up.send().await.is_ok_and(|r| r.status().is_success()),
        "the Kafka-backed store accepts no writes"
    );
    let outcome = load(connections, None, Some(schemas), move |c, i| {
        c.post(format!("{base}/subjects/bench-{i}/versions"))
            .header("content-type", CT)
            .body(serde_json::json!({"schema": schema(i)}).to_string())
    })
    .await;
    stop.cancel();
    let _ = serving.await;
    Some(outcome)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let schemas: usize = env("BENCH_SCHEMAS", 1000);
    let connections: usize = env("BENCH_CONNECTIONS", 100);
    let seconds = Duration::from_secs(env("BENCH_SECONDS", 5));
    let dir = tempfile::tempdir().unwrap();
    let config = SchemaStoreConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        storage: StorageConfig {
            kind: StorageKind::Local,
            path: Some(dir.path().to_owned()),
            ..StorageConfig::default()
        },
        kafka: None,
        telemetry: TelemetryConfig::on_port(0),
        auth: None,
        max_body_bytes: 4 << 20,
    };
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    println!("schema store benchmark: {schemas} Avro schemas, {connections} connections, {}s per phase, loopback, {} cores", seconds.as_secs(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!();
    println!(
        "| {:<34} | {:>10} | {:>8} | {:>8} | {:>6} | {:>9} |",
        "phase", "req/s", "p50 ms", "p99 ms", "errors", "x ceiling"
    );
    println!(
        "|{:-<36}|{:->12}|{:->10}|{:->10}|{:->8}|{:->11}|",
        "", "", "", "", "", ""
    );

    let b = base.clone();
    let registrations = load(connections, None, Some(schemas), move |c, i| {
        c.post(format!("{b}/subjects/bench-{i}/versions"))
            .header("content-type", CT)
            .body(serde_json::json!({"schema": schema(i)}).to_string())
    })
    .await;
    assert_eq!(
        registrations.requests, schemas,
        "every registration must succeed ({} errors)",
        registrations.errors
    );

    let (ceiling_addr, ceiling_stop) = serve_ceiling().await;
    let ceiling = load(connections, Some(seconds), None, move |c, _| {
        c.get(format!("http://{ceiling_addr}/fixed"))
    })
    .await;
    let b = base.clone();
    let by_id = load(connections, Some(seconds), None, move |c, i| {
        c.get(format!("{b}/schemas/ids/{}", i % schemas + 1))
    })
    .await;
    let b = base.clone();
    let lookups = load(connections, Some(seconds), None, move |c, i| {
        let i = i % schemas;
        c.post(format!("{b}/subjects/bench-{i}"))
            .header("content-type", CT)
            .body(serde_json::json!({"schema": schema(i)}).to_string())
    })
    .await;

    row("ceiling: fixed body (same stack)", &ceiling, None);
    row("GET /schemas/ids/{id}", &by_id, Some(&ceiling));
    row("POST /subjects/{s} (lookup)", &lookups, Some(&ceiling));
    row(
        "POST /subjects/{s}/versions (fsync)",
        &registrations,
        Some(&ceiling),
    );
    if let Some(kafka) = kafka_registrations(schemas, connections).await {
        row(
            "POST /subjects/{s}/versions (kafka)",
            &kafka,
            Some(&ceiling),
        );
    }
    println!();
    println!(
        "targets: >= 20,000 id lookups/s with p99 < 5 ms; >= 1,000 registrations/s (local storage)"
    );
    // The targets are absolute: rows without a reference.
    let absolute = [
        Row::new(
            BENCH,
            "GET /schemas/ids/{id}",
            "id lookups/s (absolute)",
            by_id.per_second(),
            "req/s",
        )
        .target(20_000.0),
        Row::new(
            BENCH,
            "GET /schemas/ids/{id}",
            "id lookup p99",
            by_id.percentile(0.99).as_secs_f64() * 1e3,
            "ms",
        )
        .target_at_most(5.0),
        Row::new(
            BENCH,
            "POST /subjects/{s}/versions (fsync)",
            "registrations/s (absolute)",
            registrations.per_second(),
            "req/s",
        )
        .target(1_000.0),
    ];
    for report in absolute {
        report.emit().expect("writing the benchmark row");
    }
    ceiling_stop.cancel();
    stop.cancel();
}
