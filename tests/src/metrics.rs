//! A service's counters, read from its `/metrics` page through the one Prometheus parser,
//! [`logpipe_devkit::prometheus`], by the names [`logpipe_core::metric_names`] owns.

use std::net::SocketAddr;
use std::time::Duration;

use logpipe_devkit::prometheus;

/// The sum of the samples of `name` that carry every `(label, value)` in `labels`, or `None`
/// when the service does not answer or has no such sample yet.
pub async fn sum(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    // A client per call: each test runs its own runtime, and a pooled connection must not
    // outlive the runtime that opened it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let page = prometheus::scrape(&http, addr).await;
    prometheus::sum(&prometheus::parse(&page), name, labels)
}

/// [`sum`] over every label set, 0 when there is none: a counter not written yet counts as zero,
/// which is what a test waiting for it to grow wants.
pub async fn total(addr: SocketAddr, name: &str) -> f64 {
    sum(addr, name, &[]).await.unwrap_or(0.0)
}
