//! `logpipe-dev cluster`: librdkafka's mock cluster as a process of its own, so that separate
//! processes (services, tests, kcat) share one Kafka cluster on loopback, with a small HTTP
//! control API to create topics and inject faults.
//!
//! The mock cluster speaks the real Kafka protocol (produce, fetch, consumer groups,
//! idempotence, transactions, and with the vendored patch CreateTopics, CreatePartitions and
//! DescribeConfigs); topics given at start or posted here are created without configs.
//! Its handle is not thread-safe: one thread owns it and executes commands sent over a channel.

use std::collections::HashMap;
use std::ffi::CStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A topic to create at start: `NAME[:PARTITIONS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl FromStr for TopicSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, partitions) = match s.rsplit_once(':') {
            Some((name, n)) => (
                name,
                n.parse()
                    .map_err(|_| format!("{s:?}: partitions must be a number"))?,
            ),
            None => (s, 1),
        };
        logpipe_core::record::check_topic_name(name)?;
        if partitions < 1 {
            return Err(format!("{s:?}: a topic needs at least one partition"));
        }
        Ok(TopicSpec {
            name: name.to_owned(),
            partitions,
        })
    }
}

/// `logpipe-dev cluster` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Number of brokers (ids 1..=N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub brokers: i32,
    /// Topic to create at start, `NAME[:PARTITIONS]`; repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<TopicSpec>,
    /// Also write `bootstrap=...` to this file (written atomically once the cluster is up).
    #[arg(long)]
    pub bootstrap_file: Option<PathBuf>,
    /// Address of the control API (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub control: SocketAddr,
    /// Bytes each partition keeps in memory, the oldest batches beyond it deleted as size-based
    /// retention does; by default no limit, as Kafka's `retention.bytes`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_bytes: Option<u64>,
    /// Bytes all partitions together may hold in memory; beyond it, the partition being written
    /// to deletes its oldest batches. Default: half the machine's memory.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_budget: Option<u64>,
}

/// The memory budget when none is given, if the machine's memory cannot be read.
const FALLBACK_BUDGET: u64 = 4 << 30;

impl ClusterArgs {
    /// The bytes all partitions may hold: the given budget, or half the machine's memory.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|info| mem_total(&info))
                .map_or(FALLBACK_BUDGET, |total| total / 2)
        })
    }

    /// Passes retention and budget to the (patched) mock cluster, which reads them from the
    /// environment when it is created; every deletion they cause is logged as a warning
    /// (target `librdkafka`) naming the partition and offsets. Call before any other thread
    /// starts: the environment is process-wide.
    pub fn export_retention(&self) {
        std::env::set_var(
            "LOGPIPE_MOCK_RETENTION_BYTES",
            self.retention_bytes.unwrap_or(u64::MAX).to_string(),
        );
        std::env::set_var(
            "LOGPIPE_MOCK_MEMORY_BUDGET",
            self.memory_budget().to_string(),
        );
        // Batches are bounded by bytes alone; upstream's cap of 100k batches would bind first
        // for small, unbatched records.
        std::env::set_var("LOGPIPE_MOCK_RETENTION_MSGSETS", u32::MAX.to_string());
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A command for the thread that owns the mock cluster.
enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        replication: i32,
    },
    BrokerDown(i32),
    BrokerUp(i32),
    RoundTripTime(i32, Duration),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    PartitionLeader {
        topic: String,
        partition: i32,
        broker: i32,
    },
}

type Reply = oneshot::Sender<Result<(), String>>;

/// Runs the cluster until SIGTERM or SIGINT.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if !args.control.ip().is_loopback() {
        anyhow::bail!("--control must be a loopback address: the control API takes brokers down");
    }
    let signals = logpipe_core::shutdown::listen()?;
    let (commands, receiver) = mpsc::channel::<(Command, Reply)>();
    let (started, bootstrap) = oneshot::channel();
    let owner = std::thread::Builder::new()
        .name("mock-cluster".into())
        .spawn(move || own_cluster(args.brokers, receiver, started))?;
    let bootstrap = bootstrap.await.context("mock cluster thread ended")??;

    let state = ControlState {
        commands,
        bootstrap: bootstrap.clone(),
        brokers: args.brokers,
    };
    for topic in &args.topics {
        state
            .create_topic(topic.name.clone(), topic.partitions, None)
            .await
            .map_err(|e| anyhow::anyhow!("creating topic {}: {e}", topic.name))?;
    }
    let listener = tokio::net::TcpListener::bind(args.control)
        .await
        .with_context(|| format!("binding the control API on {}", args.control))?;
    let control = listener.local_addr()?;
    if let Some(path) = &args.bootstrap_file {
        crate::write_atomically(path, format!("bootstrap={bootstrap}\n").as_bytes())?;
    }
    // The contract with scripts and the test harness: these two lines, first, in this order.
    println!("bootstrap={bootstrap}");
    println!("control=http://{control}");
    tracing::info!(%bootstrap, %control, brokers = args.brokers, "dev cluster up");
    let retention = args
        .retention_bytes
        .map_or_else(|| "no limit".to_owned(), |bytes| format!("{bytes} bytes"));
    tracing::info!(
        "keeping records in memory: per partition {retention}; all partitions together at most \
         {} bytes (--memory-budget), beyond which the partition written to loses its oldest \
         batches; every deletion is logged as a warning",
        args.memory_budget()
    );

    let shutdown = signals.shutdown.clone();
    axum::serve(listener, control_router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    // Dropping the router dropped the last command sender: the owner thread ends and destroys
    // the cluster.
    owner
        .join()
        .map_err(|_| anyhow::anyhow!("mock cluster thread panicked"))?;
    tracing::info!("dev cluster stopped");
    Ok(())
}

/// How often the owner thread serves the mock's client: its log lines (the mock's warnings about
/// deleted records among them) wait in the client's queue until it is polled.
const LOG_POLL: Duration = Duration::from_millis(200);

fn own_cluster(
    brokers: i32,
    commands: mpsc::Receiver<(Command, Reply)>,
    started: oneshot::Sender<anyhow::Result<String>>,
) {
    // The mock belongs to a client of our own, rather than to one rdkafka keeps out of reach,
    // so that the client can be polled.
    let owner: BaseProducer = match ClientConfig::new()
        .set("test.mock.num.brokers", brokers.to_string())
        .create()
    {
        Ok(owner) => owner,
        Err(e) => {
            let _ = started.send(Err(anyhow::anyhow!("cannot create the mock cluster: {e}")));
            return;
        }
    };
    let Some(cluster) = owner.client().mock_cluster() else {
        let _ = started.send(Err(anyhow::anyhow!(
            "the client made no mock cluster (test.mock.num.brokers)"
        )));
        return;
    };
    let _ = started.send(Ok(cluster.bootstrap_servers()));
    loop {
        let (command, reply) = match commands.recv_timeout(LOG_POLL) {
            Ok(request) => request,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                owner.poll(Duration::ZERO);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let result = match command {
            Command::CreateTopic {
                name,
                partitions,
                replication,
            } => cluster.create_topic(&name, partitions, replication),
            Command::BrokerDown(id) => cluster.broker_down(id),
            Command::BrokerUp(id) => cluster.broker_up(id),
            Command::RoundTripTime(id, rtt) => cluster.broker_round_trip_time(id, rtt),
            Command::RequestErrors(api, errors) => {
                cluster.request_errors(api, &errors);
                Ok(())
            }
            Command::PartitionLeader {
                topic,
                partition,
                broker,
            } => cluster.partition_leader(&topic, partition, Some(broker)),
        };
        let _ = reply.send(result.map_err(|e| e.to_string()));
        owner.poll(Duration::ZERO);
    }
    owner.poll(Duration::ZERO);
}

#[derive(Clone)]
struct ControlState {
    commands: mpsc::Sender<(Command, Reply)>,
    bootstrap: String,
    brokers: i32,
}

impl ControlState {
    async fn execute(&self, command: Command) -> Result<(), String> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send((command, reply))
            .map_err(|_| "mock cluster is gone".to_owned())?;
        result
            .await
            .map_err(|_| "mock cluster is gone".to_owned())?
    }

    /// Creates a topic; `replication` defaults to the broker count up to 3, as Kafka's does.
    async fn create_topic(
        &self,
        name: String,
        partitions: i32,
        replication: Option<i32>,
    ) -> Result<(), String> {
        let replication = replication.unwrap_or(self.brokers.min(3));
        self.execute(Command::CreateTopic {
            name,
            partitions,
            replication,
        })
        .await
    }

    fn broker(&self, id: i32) -> Result<i32, ControlError> {
        if (1..=self.brokers).contains(&id) {
            Ok(id)
        } else {
            Err(ControlError(format!(
                "no broker {id}: brokers are 1..={}",
                self.brokers
            )))
        }
    }
}

/// A control API error: 400 with `{"error": "..."}`.
#[derive(Debug)]
struct ControlError(String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": self.0 })),
        )
            .into_response()
    }
}

impl From<String> for ControlError {
    fn from(message: String) -> Self {
        ControlError(message)
    }
}

type ControlResult = Result<Json<serde_json::Value>, ControlError>;

fn done() -> ControlResult {
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// The control API; every request is answered after the mock cluster applied it.
fn control_router(state: ControlState) -> Router {
    Router::new()
        .route("/", get(info))
        .route("/topics", post(create_topic))
        .route("/brokers/{id}/down", post(broker_down))
        .route("/brokers/{id}/up", post(broker_up))
        .route("/brokers/{id}/rtt", post(broker_rtt))
        .route("/errors", post(request_errors))
        .route("/partitions/leader", post(partition_leader))
        .with_state(state)
}

#[derive(Serialize)]
struct Info {
    bootstrap: String,
    brokers: i32,
}

async fn info(State(state): State<ControlState>) -> Json<Info> {
    Json(Info {
        bootstrap: state.bootstrap.clone(),
        brokers: state.brokers,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: i32,
    replication_factor: Option<i32>,
}

fn one() -> i32 {
    1
}

async fn create_topic(
    State(state): State<ControlState>,
    Json(body): Json<CreateTopic>,
) -> ControlResult {
    logpipe_core::record::check_topic_name(&body.name)?;
    if body.partitions < 1 {
        return Err(ControlError("partitions must be at least 1".into()));
    }
    if body
        .replication_factor
        .is_some_and(|r| !(1..=state.brokers).contains(&r))
    {
        return Err(ControlError(format!(
            "replication_factor must be 1..={}",
            state.brokers
        )));
    }
    state
        .create_topic(body.name, body.partitions, body.replication_factor)
        .await?;
    done()
}

async fn broker_down(State(state): State<ControlState>, Path(id): Path<i32>) -> ControlResult {
    state
        .execute(Command::BrokerDown(state.broker(id)?))
        .await?;
    done()
}

async fn broker_up(State(state): State<ControlState>, Path(id): Path<i32>) -> ControlResult {
    state.execute(Command::BrokerUp(state.broker(id)?)).await?;
    done()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rtt {
    ms: u64,
}

async fn broker_rtt(
    State(state): State<ControlState>,
    Path(id): Path<i32>,
    Json(body): Json<Rtt>,
) -> ControlResult {
    state
        .execute(Command::RoundTripTime(
            state.broker(id)?,
            Duration::from_millis(body.ms),
        ))
        .await?;
    done()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestErrors {
    /// Protocol request name, e.g. `Produce`.
    api: String,
    /// Error names as librdkafka spells them (`NOT_LEADER_FOR_PARTITION`, `_TRANSPORT`) or codes.
    errors: Vec<serde_json::Value>,
}

async fn request_errors(
    State(state): State<ControlState>,
    Json(body): Json<RequestErrors>,
) -> ControlResult {
    let api = api_key(&body.api)?;
    let errors = body
        .errors
        .iter()
        .map(error_code)
        .collect::<Result<Vec<_>, _>>()?;
    state.execute(Command::RequestErrors(api, errors)).await?;
    done()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionLeader {
    topic: String,
    partition: i32,
    broker: i32,
}

async fn partition_leader(
    State(state): State<ControlState>,
    Json(body): Json<PartitionLeader>,
) -> ControlResult {
    let broker = state.broker(body.broker)?;
    state
        .execute(Command::PartitionLeader {
            topic: body.topic,
            partition: body.partition,
            broker,
        })
        .await?;
    done()
}

/// The protocol requests faults can be injected into.
const API_KEYS: &[RDKafkaApiKey] = &[
    RDKafkaApiKey::Produce,
    RDKafkaApiKey::Fetch,
    RDKafkaApiKey::ListOffsets,
    RDKafkaApiKey::Metadata,
    RDKafkaApiKey::OffsetCommit,
    RDKafkaApiKey::OffsetFetch,
    RDKafkaApiKey::FindCoordinator,
    RDKafkaApiKey::JoinGroup,
    RDKafkaApiKey::Heartbeat,
    RDKafkaApiKey::LeaveGroup,
    RDKafkaApiKey::SyncGroup,
    RDKafkaApiKey::ApiVersion,
    RDKafkaApiKey::InitProducerId,
    RDKafkaApiKey::AddPartitionsToTxn,
    RDKafkaApiKey::AddOffsetsToTxn,
    RDKafkaApiKey::EndTxn,
    RDKafkaApiKey::TxnOffsetCommit,
    RDKafkaApiKey::CreateTopics,
    RDKafkaApiKey::CreatePartitions,
    RDKafkaApiKey::DescribeConfigs,
];

fn api_key(name: &str) -> Result<RDKafkaApiKey, ControlError> {
    API_KEYS
        .iter()
        .copied()
        .find(|key| format!("{key:?}") == name)
        .ok_or_else(|| {
            let known: Vec<String> = API_KEYS.iter().map(|k| format!("{k:?}")).collect();
            ControlError(format!("unknown api {name:?}; one of {}", known.join(", ")))
        })
}

/// librdkafka's own table of error codes and names, so any error it knows can be injected.
fn error_table() -> &'static HashMap<String, RDKafkaRespErr> {
    static TABLE: OnceLock<HashMap<String, RDKafkaRespErr>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut descs = std::ptr::null();
        let mut count = 0usize;
        // SAFETY: librdkafka returns a pointer to its static array of `count` descriptors.
        let descs = unsafe {
            rdkafka::bindings::rd_kafka_get_err_descs(&mut descs, &mut count);
            std::slice::from_raw_parts(descs, count)
        };
        let mut table = HashMap::new();
        for desc in descs.iter().filter(|d| !d.name.is_null()) {
            // SAFETY: non-null names in the table are static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(desc.name) }
                .to_string_lossy()
                .into_owned();
            table.insert((desc.code as i32).to_string(), desc.code);
            table.insert(name, desc.code);
        }
        // Kafka renamed error 6; accept the new name too.
        if let Some(code) = table.get("NOT_LEADER_FOR_PARTITION").copied() {
            table.insert("NOT_LEADER_OR_FOLLOWER".into(), code);
        }
        table
    })
}

fn error_code(value: &serde_json::Value) -> Result<RDKafkaRespErr, ControlError> {
    let key = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(ControlError(format!(
                "error {other} must be a name or a code"
            )))
        }
    };
    error_table()
        .get(&key)
        .copied()
        .ok_or_else(|| ControlError(format!("unknown Kafka error {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs() {
        assert_eq!(
            "raw.game:4".parse::<TopicSpec>().unwrap(),
            TopicSpec {
                name: "raw.game".into(),
                partitions: 4
            }
        );
        assert_eq!("raw.game".parse::<TopicSpec>().unwrap().partitions, 1);
        assert!("raw.game:0".parse::<TopicSpec>().is_err());
        assert!("raw game:2".parse::<TopicSpec>().is_err());
        assert!("raw.game:x".parse::<TopicSpec>().is_err());
    }

    #[test]
    fn error_names_and_codes_come_from_librdkafka() {
        let by_name = error_code(&serde_json::json!("NOT_LEADER_FOR_PARTITION")).unwrap();
        assert_eq!(
            by_name,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
        );
        assert_eq!(
            error_code(&serde_json::json!("NOT_LEADER_OR_FOLLOWER")).unwrap(),
            by_name
        );
        assert_eq!(error_code(&serde_json::json!(6)).unwrap(), by_name);
        assert_eq!(
            error_code(&serde_json::json!("_TRANSPORT")).unwrap(),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT
        );
        assert!(error_code(&serde_json::json!("NOPE")).is_err());
        assert!(error_code(&serde_json::json!(12345)).is_err());
    }

    #[test]
    fn api_names() {
        assert_eq!(api_key("Produce").unwrap(), RDKafkaApiKey::Produce);
        assert_eq!(api_key("EndTxn").unwrap(), RDKafkaApiKey::EndTxn);
        assert!(api_key("produce").is_err());
    }
}
