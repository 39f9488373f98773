//! The telemetry endpoint every service serves: `/metrics` (Prometheus text from the `metrics`
//! facade), `/health` (the process is alive and serving) and `/ready` (every readiness check of
//! the service is passing: connected and working). A service may serve its own API on the same
//! listener ([`ServiceRoutes`]), so a minimal config needs one address per process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::HttpServer;

/// The `[telemetry]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the `/metrics`, `/health`, `/ready` server. Loopback by default: metrics can
    /// reveal topology, so exposing them is a deliberate choice.
    pub listen: SocketAddr,
    /// The service's log filter (tracing directives, e.g. `info,logpipe_validator=debug`);
    /// `info` when absent. SIGHUP applies a change; `LOGPIPE_LOG` in the environment wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl TelemetryConfig {
    pub fn on_port(port: u16) -> Self {
        TelemetryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            log: None,
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use. Services and in-process tests
/// all render the same registry.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed by an embedding program; ours still renders what
            // was recorded through it, so that is not fatal.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a global metrics recorder was already installed; /metrics may be incomplete"
                );
            }
            handle
        })
        .clone()
}

/// Named readiness checks: the service is ready when every registered check passes. Cheap to
/// clone and share between tasks.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, Check>>>,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The `/ready` body: overall state and each check.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    checks: BTreeMap<String, Check>,
}

impl Readiness {
    pub fn new() -> Self {
        Readiness::default()
    }

    /// Registers a check as not ready yet; a service registers each check at start-up so that
    /// `/ready` is false until every part has reported.
    pub fn register(&self, name: &str) {
        self.set(name, false, Some("starting".into()));
    }

    pub fn ready(&self, name: &str) {
        self.set(name, true, None);
    }

    pub fn not_ready(&self, name: &str, why: impl Into<String>) {
        self.set(name, false, Some(why.into()));
    }

    fn set(&self, name: &str, ready: bool, detail: Option<String>) {
        let mut checks = self.checks.lock().expect("readiness lock");
        checks.insert(name.to_owned(), Check { ready, detail });
    }

    /// True when at least one check is registered and all pass.
    pub fn is_ready(&self) -> bool {
        self.report().ready
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self.checks.lock().expect("readiness lock").clone();
        ReadinessReport {
            ready: !checks.is_empty() && checks.values().all(|c| c.ready),
            checks,
        }
    }
}

/// The routes a service serves on the telemetry listener beside `/metrics`, `/health` and
/// `/ready`, installed once the service has what they need (clients, state). Until then, and for
/// paths they do not have, requests get a 404 that says so. Cheap to clone and share.
#[derive(Clone, Default)]
pub struct ServiceRoutes(Arc<RwLock<Option<Router>>>);

impl std::fmt::Debug for ServiceRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let installed = self.0.read().map(|r| r.is_some()).unwrap_or(false);
        f.debug_struct("ServiceRoutes")
            .field("installed", &installed)
            .finish()
    }
}

impl ServiceRoutes {
    /// Serves `router` from now on.
    pub fn install(&self, router: Router) {
        *self.0.write().expect("service routes lock") = Some(router);
    }

    async fn serve(self, request: Request) -> Response {
        let router = self.0.read().expect("service routes lock").clone();
        match router {
            Some(router) => match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            None => (
                StatusCode::NOT_FOUND,
                "not found (the service's API is not serving yet)\n",
            )
                .into_response(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// The telemetry routes, for services that want to merge them into their own router.
pub fn router(readiness: Readiness) -> Router {
    let state = AppState {
        metrics: prometheus(),
        readiness,
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
}

/// The telemetry routes with the service's own behind them.
fn router_with(readiness: Readiness, routes: ServiceRoutes) -> Router {
    router(readiness).fallback(move |request: Request| routes.clone().serve(request))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let report = state.readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// A bound telemetry server; `run` serves until `shutdown` is cancelled.
pub(crate) struct TelemetryServer(HttpServer);

impl TelemetryServer {
    /// Binds the address now, so a port conflict fails start-up with a clear error.
    pub(crate) async fn bind(
        config: &TelemetryConfig,
        readiness: Readiness,
        routes: ServiceRoutes,
    ) -> anyhow::Result<Self> {
        HttpServer::bind(config.listen, "telemetry", router_with(readiness, routes))
            .await
            .map(TelemetryServer)
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        Ok(self.0.serve(shutdown).await?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let readiness = Readiness::new();
        let routes = ServiceRoutes::default();
        let server = TelemetryServer::bind(
            &TelemetryConfig::on_port(0),
            readiness.clone(),
            routes.clone(),
        )
        .await
        .unwrap();
        let base = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));

        prometheus();
        metrics::counter!("logpipe_test_widgets_total", "kind" => "blue").increment(3);
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("{base}{path}")).send();
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            body.contains("logpipe_test_widgets_total{kind=\"blue\"} 3"),
            "{body}"
        );
        assert_eq!(get("/health").await.unwrap().status(), 200);

        // Nothing registered: not ready.
        assert_eq!(get("/ready").await.unwrap().status(), 503);
        readiness.register("kafka");
        readiness.ready("store");
        let response = get("/ready").await.unwrap();
        assert_eq!(response.status(), 503);
        let report: serde_json::Value = response.json().await.unwrap();
        assert_eq!(report["checks"]["kafka"]["ready"], false);
        assert_eq!(report["checks"]["store"]["ready"], true);
        readiness.ready("kafka");
        assert_eq!(get("/ready").await.unwrap().status(), 200);
        readiness.not_ready("kafka", "all brokers down");
        let report: serde_json::Value = get("/ready").await.unwrap().json().await.unwrap();
        assert_eq!(report["checks"]["kafka"]["detail"], "all brokers down");

        // The service's own routes: absent until installed, then served beside telemetry.
        assert_eq!(get("/rules").await.unwrap().status(), 404);
        routes.install(Router::new().route("/rules", axum::routing::get(|| async { "rules\n" })));
        let response = get("/rules").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "rules\n");
        assert_eq!(get("/health").await.unwrap().status(), 200);
        assert_eq!(get("/elsewhere").await.unwrap().status(), 404);

        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn port_conflict_is_a_clear_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = TelemetryConfig {
            listen: held.local_addr().unwrap(),
            log: None,
        };
        let err = TelemetryServer::bind(&config, Readiness::new(), ServiceRoutes::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot listen for telemetry"), "{err}");
    }
}
