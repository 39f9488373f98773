//! What `up` measures each interval: every service's `/ready` and `/metrics`, the write
//! cluster's high watermarks of the raw topic, whether the read cluster answers, and the lines
//! the generator has written. Each probe is bounded in time, so a service that hangs or a broker
//! that is down shows as such instead of freezing the view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::pipeline::Component;
use crate::prometheus::{self, Sample};

/// How long one probe (an HTTP request, a watermark query) may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// A service's state as its `/ready` answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ready,
    /// Serving, but these readiness checks fail.
    NotReady(Vec<String>),
    /// Not answering (exited, restarting, or hung).
    Down,
}

impl Health {
    pub fn label(&self) -> String {
        match self {
            Health::Ready => "ready".into(),
            Health::NotReady(checks) if checks.is_empty() => "not-ready".into(),
            Health::NotReady(checks) => format!("not-ready({})", checks.join("+")),
            Health::Down => "down".into(),
        }
    }
}

/// One service's probe results.
#[derive(Debug, Clone)]
pub struct ServiceScrape {
    pub component: Component,
    pub health: Health,
    /// Empty when `/metrics` did not answer.
    pub samples: Vec<Sample>,
}

impl ServiceScrape {
    /// Sum of a metric's samples matching `filter`, `None` when the service did not answer or
    /// has not written the metric yet.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        prometheus::sum(&self.samples, name, filter)
    }
}

/// Everything measured at one instant.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    /// Lines the generator has written so far.
    pub generated: u64,
    /// In [`Component::ALL`] order.
    pub services: Vec<ServiceScrape>,
    /// Records in the write cluster's raw topic (sum of high watermarks; the agent's producer is
    /// not transactional, so every offset is a record). `None` when a partition did not answer.
    pub write_records: Option<u64>,
    pub read_cluster_up: bool,
}

impl Scrape {
    pub fn service(&self, c: Component) -> &ServiceScrape {
        self.services
            .iter()
            .find(|s| s.component == c)
            .expect("every component is probed")
    }
}

/// What to probe; built once from the running pipeline.
pub struct Sampler {
    services: Vec<(Component, SocketAddr)>,
    raw_topic: String,
    generated: Arc<AtomicU64>,
    write: Arc<BaseConsumer>,
    read: Arc<BaseConsumer>,
    http: reqwest::Client,
}

impl Sampler {
    pub fn new(
        services: Vec<(Component, SocketAddr)>,
        write_bootstrap: &str,
        read_bootstrap: &str,
        raw_topic: &str,
        generated: Arc<AtomicU64>,
    ) -> anyhow::Result<Sampler> {
        Ok(Sampler {
            services,
            raw_topic: raw_topic.to_owned(),
            generated,
            write: Arc::new(metadata_client(write_bootstrap)?),
            read: Arc::new(metadata_client(read_bootstrap)?),
            http: reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?,
        })
    }

    /// Probes everything at once and returns when every probe has answered or timed out.
    pub async fn scrape(&self) -> Scrape {
        let probes: Vec<_> = self
            .services
            .iter()
            .map(|&(component, addr)| {
                let http = self.http.clone();
                tokio::spawn(async move { probe_service(&http, component, addr).await })
            })
            .collect();
        let write = self.write.clone();
        let topic = self.raw_topic.clone();
        let watermarks = tokio::task::spawn_blocking(move || records_in(&write, &topic));
        let read = self.read.clone();
        let read_up =
            tokio::task::spawn_blocking(move || read.fetch_metadata(None, PROBE_TIMEOUT).is_ok());
        let mut services = Vec::with_capacity(probes.len());
        for (probe, &(component, _)) in probes.into_iter().zip(&self.services) {
            services.push(probe.await.unwrap_or(ServiceScrape {
                component,
                health: Health::Down,
                samples: Vec::new(),
            }));
        }
        Scrape {
            at: Instant::now(),
            generated: self.generated.load(Ordering::Relaxed),
            services,
            write_records: watermarks.await.ok().flatten(),
            read_cluster_up: read_up.await.unwrap_or(false),
        }
    }
}

/// A client used only for metadata and watermark queries (no group, never subscribes).
fn metadata_client(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "logpipe-dev-up")
        .set("enable.auto.commit", "false")
        .set("log_level", "0")
        .create()?)
}

/// Sum of the high watermarks of every partition of `topic`, if each answered in time.
fn records_in(client: &BaseConsumer, topic: &str) -> Option<u64> {
    let metadata = client.fetch_metadata(Some(topic), PROBE_TIMEOUT).ok()?;
    let partitions = metadata.topics().first()?.partitions().len() as i32;
    let mut total = 0u64;
    for partition in 0..partitions {
        let (_, high) = client
            .fetch_watermarks(topic, partition, PROBE_TIMEOUT)
            .ok()?;
        total += high.max(0) as u64;
    }
    Some(total)
}

#[derive(Deserialize)]
struct ReadyBody {
    #[serde(default)]
    checks: BTreeMap<String, ReadyCheck>,
}

#[derive(Deserialize)]
struct ReadyCheck {
    ready: bool,
}

async fn probe_service(
    http: &reqwest::Client,
    component: Component,
    addr: SocketAddr,
) -> ServiceScrape {
    let health = match http.get(format!("http://{addr}/ready")).send().await {
        Err(_) => Health::Down,
        Ok(response) if response.status().is_success() => Health::Ready,
        Ok(response) => {
            let failing = response
                .json::<ReadyBody>()
                .await
                .map(|body| {
                    body.checks
                        .into_iter()
                        .filter(|(_, c)| !c.ready)
                        .map(|(name, _)| name)
                        .collect()
                })
                .unwrap_or_default();
            Health::NotReady(failing)
        }
    };
    let samples = match health {
        Health::Down => Vec::new(),
        _ => match http.get(format!("http://{addr}/metrics")).send().await {
            Ok(response) => response
                .text()
                .await
                .map(|text| prometheus::parse(&text))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        },
    };
    ServiceScrape {
        component,
        health,
        samples,
    }
}
