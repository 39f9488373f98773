//! What the validator's end-to-end tests share: a dev cluster, a real schema store with the game
//! schemas, validator processes, agent-style raw records, and reading clean and dead-letter
//! topics back by event id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use logpipe_core::record::{error_header, header, FileId, RecordId};
use logpipe_core::wire;
use logpipe_devkit::harness::{free_addr, write_file, DevCluster, Process};
use logpipe_devkit::loadgen;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};
use tempfile::TempDir;

use crate::{service, topic};

pub const RAW: &str = "raw.game";
pub const CLEAN: &str = "clean.game";
pub const DLQ: &str = "dlq.game";
pub const STATE: &str = "_lp.validator.v.replay-state";

/// A read cluster and a schema store.
pub struct Stack {
    pub dir: TempDir,
    pub cluster: DevCluster,
    pub store: Option<Process>,
    pub store_addr: SocketAddr,
    store_config: PathBuf,
    store_telemetry: SocketAddr,
    http: reqwest::Client,
}

impl Stack {
    /// A dev cluster with the game topics and the replay-state topic, and a schema store.
    pub async fn start(extra_topics: &[(&str, i32)]) -> anyhow::Result<Stack> {
        Stack::start_retaining(extra_topics, None).await
    }

    /// [`Stack::start`] with the dev cluster keeping at most `retention_bytes` per partition.
    pub async fn start_retaining(
        extra_topics: &[(&str, i32)],
        retention_bytes: Option<u64>,
    ) -> anyhow::Result<Stack> {
        let mut topics = vec![(RAW, 4), (CLEAN, 4), (DLQ, 2), (STATE, 1)];
        topics.extend_from_slice(extra_topics);
        let cluster = DevCluster::start_retaining("", 3, &topics, retention_bytes).await?;
        let dir = tempfile::tempdir()?;
        let store_addr = free_addr();
        let store_telemetry = free_addr();
        let store_config = write_file(
            dir.path(),
            "store.toml",
            &format!(
                "listen = \"{store_addr}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{store_telemetry}\"\n",
                dir.path().join("store").display()
            ),
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut stack = Stack {
            dir,
            cluster,
            store: None,
            store_addr,
            store_config,
            store_telemetry,
            http,
        };
        stack.start_store().await?;
        Ok(stack)
    }

    pub async fn start_store(&mut self) -> anyhow::Result<()> {
        let store = service::start(
            "logpipe-schema-store",
            &self.store_config,
            self.store_telemetry,
        )
        .await?;
        self.store = Some(store);
        Ok(())
    }

    pub async fn stop_store(&mut self) -> anyhow::Result<()> {
        if let Some(mut store) = self.store.take() {
            store.terminate(Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    pub fn store_url(&self) -> String {
        format!("http://{}", self.store_addr)
    }

    /// Registers a schema; returns its id.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: &str,
        schema: &str,
    ) -> anyhow::Result<u32> {
        let response = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.store_url()))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema, "schemaType": schema_type }))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("registering {subject}: {status} {body}");
        }
        Ok(body["id"].as_u64().context("id in the answer")? as u32)
    }

    /// Sets a subject's compatibility level.
    pub async fn compatibility(&self, subject: &str, level: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/config/{subject}", self.store_url()))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "compatibility": level }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("config {subject}: {}", response.status());
        }
        Ok(())
    }

    /// Registers the five game schemas (subjects `game.<event>`).
    pub async fn register_game_schemas(&self) -> anyhow::Result<()> {
        for (subject, schema) in loadgen::schemas() {
            self.register(subject, "AVRO", schema).await?;
        }
        Ok(())
    }

    /// The schema of an id, parsed for decoding (as a Confluent deserializer would fetch it).
    pub async fn avro_schema(&self, id: u32) -> anyhow::Result<apache_avro::Schema> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.store_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(apache_avro::Schema::parse_str(
            body["schema"].as_str().context("schema")?,
        )?)
    }

    /// Writes a validator config for the game route (plus `extra` TOML at the top level; a
    /// `batch_ms` there replaces the tests' default of 50).
    pub fn validator_config(
        &self,
        name: &str,
        extra: &str,
        routes: &str,
    ) -> anyhow::Result<(PathBuf, SocketAddr)> {
        let telemetry = free_addr();
        let batch = if extra.contains("batch_ms") {
            ""
        } else {
            "batch_ms = 50\n"
        };
        let text = format!(
            "schema_store = \"{}\"\ngroup_id = \"v\"\ntransactional_id = \"v-{name}\"\n{batch}topic_refresh_ms = 1000\nschema_refresh_ms = 1000\n{extra}\n\
             [kafka]\nbootstrap = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n\
             [telemetry]\nlisten = \"{telemetry}\"\n{routes}",
            self.store_url(),
            self.cluster.bootstrap()
        );
        Ok((
            write_file(self.dir.path(), &format!("validator-{name}.toml"), &text)?,
            telemetry,
        ))
    }

    /// Produces `range` of each file's lines to `topic` on the stack's cluster, as the agent
    /// would (its key and `lp.*` headers); returns how many.
    pub async fn produce(
        &self,
        topic: &str,
        files: &[Lines],
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<usize> {
        produce(self.cluster.bootstrap(), topic, files, range).await
    }

    /// Every committed record of `topic` on the stack's cluster.
    pub async fn read(&self, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
        self.cluster
            .read_topic(topic, Duration::from_secs(60))
            .await
    }

    /// Starts a validator and waits until it is ready.
    pub async fn validator(&self, config: &Path, telemetry: SocketAddr) -> anyhow::Result<Process> {
        service::start("logpipe-validator", config, telemetry).await
    }
}

pub const GAME_ROUTE: &str =
    "[[routes]]\ntopics = \"raw\\\\.game\"\nsubject = { field = \"event\", prefix = \"game.\" }\n";

/// Lines as the agent would send them: one file identity per `file`, byte offsets as ids.
pub struct Lines {
    pub host: String,
    pub path: String,
    pub file: FileId,
    pub lines: Vec<(u64, Vec<u8>)>,
}

/// Splits a generated log file into agent-style lines.
pub fn read_log(host: &str, path: &Path, file: u64) -> anyhow::Result<Lines> {
    let bytes = std::fs::read(path)?;
    let mut lines = Vec::new();
    let mut offset = 0u64;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        lines.push((offset, body.to_vec()));
        offset += line.len() as u64;
    }
    Ok(Lines {
        host: host.into(),
        path: path.display().to_string(),
        file: FileId(file),
        lines,
    })
}

/// Generates `lines` game lines (5% invalid) in `files` files and returns them agent-style.
pub fn generate(
    dir: &Path,
    run_id: &str,
    lines: u64,
    files: usize,
) -> anyhow::Result<(loadgen::Report, Vec<Lines>)> {
    let mut args = loadgen::LoadgenArgs::new(dir.join(run_id));
    args.files = files;
    args.lines = lines;
    args.invalid = 0.05;
    args.run_id = Some(run_id.to_owned());
    let report = loadgen::run(&args, &std::sync::atomic::AtomicBool::new(false))?;
    let mut all = Vec::new();
    for (i, file) in report.files.iter().enumerate() {
        // A file identity per generated file, distinct across runs.
        let identity = std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default(),
            (run_id, i),
        );
        all.push(read_log("host-a", &file.path, identity)?);
    }
    Ok((report, all))
}

/// Produces lines to a topic with the agent's key and `lp.*` headers, `range` of each file.
async fn produce(
    bootstrap: &str,
    topic: &str,
    files: &[Lines],
    range: std::ops::Range<usize>,
) -> anyhow::Result<usize> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    // Files are spread over the partitions explicitly (one file, one partition, as the agent's
    // key does), so that every partition has work and none outgrows the dev cluster's 5 MB log.
    let metadata = tokio::task::block_in_place(|| {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut pending = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let key = format!("{}|{}", file.host, file.path);
        for (offset, line) in file.lines.iter().take(range.end).skip(range.start) {
            let id = RecordId {
                host: file.host.clone(),
                file: file.file,
                offset: *offset,
            };
            let mut headers = OwnedHeaders::new().insert(Header {
                key: header::PATH,
                value: Some(file.path.as_bytes()),
            });
            for (name, value) in id.headers() {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let record = FutureRecord::to(topic)
                .key(key.as_bytes())
                .payload(line.as_slice())
                .headers(headers)
                .partition(i as i32 % partitions);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
    }
    let n = pending.len();
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}

/// One record read back from a clean or dead-letter topic.
#[derive(Debug)]
pub struct Seen {
    pub event_id: String,
    pub partition: i32,
    pub headers: HashMap<String, String>,
    /// Clean: the decoded record and its schema id.
    pub decoded: Option<(u32, apache_avro::types::Value)>,
}

/// Reads a clean topic (read_committed) and decodes every record with its schema from the store.
pub async fn read_clean(stack: &Stack, topic: &str) -> anyhow::Result<Vec<Seen>> {
    let mut schemas: HashMap<u32, apache_avro::Schema> = HashMap::new();
    let mut seen = Vec::new();
    for m in stack.read(topic).await? {
        let value = m.payload().context("clean record without value")?;
        let (id, mut payload) =
            wire::parse(value).with_context(|| format!("clean record {value:?}"))?;
        if let std::collections::hash_map::Entry::Vacant(entry) = schemas.entry(id) {
            entry.insert(stack.avro_schema(id).await?);
        }
        let decoded = apache_avro::from_avro_datum(&schemas[&id], &mut payload, None)?;
        if !payload.is_empty() {
            bail!("trailing bytes after a clean record");
        }
        let event_id = match &decoded {
            apache_avro::types::Value::Record(fields) => {
                match fields.iter().find(|(n, _)| n == "event_id") {
                    Some((_, apache_avro::types::Value::String(s))) => s.clone(),
                    other => bail!("clean record has no event_id: {other:?}"),
                }
            }
            other => bail!("clean record is not a record: {other:?}"),
        };
        seen.push(Seen {
            event_id,
            partition: m.partition(),
            headers: topic::text_headers(&m),
            decoded: Some((id, decoded)),
        });
    }
    Ok(seen)
}

/// Reads a dead-letter topic (read_committed).
pub async fn read_dlq(stack: &Stack, topic: &str) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::new();
    for m in stack.read(topic).await? {
        let value = m.payload().unwrap_or_default();
        let event_id = loadgen::event_id(value)
            .context("dead letter without event id")?
            .to_owned();
        let headers = topic::text_headers(&m);
        if !headers.contains_key(error_header::STAGE) {
            bail!("dead letter {event_id} without {}", error_header::STAGE);
        }
        seen.push(Seen {
            event_id,
            partition: m.partition(),
            headers,
            decoded: None,
        });
    }
    Ok(seen)
}

/// Occurrences of each event id.
pub fn counts<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for s in seen {
        *counts.entry(s.event_id.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Runs `logpipe-validator replay` on `topic` with a validator's config and `filters`, and
/// returns what it says it did: (records written to clean, records that failed again).
pub async fn replay(config: &Path, topic: &str, filters: &[&str]) -> anyhow::Result<(u64, u64)> {
    let mut args = vec![
        "replay",
        "--config",
        config.to_str().context("config path")?,
        "--topic",
        topic,
    ];
    args.extend(filters);
    let mut process = Process::start("logpipe-validator", &args)?;
    let status = process.wait_exit(Duration::from_secs(120)).await?;
    ensure!(
        status.success(),
        "replay exited with {status}\n{}",
        process.logs()
    );
    // `replayed dlq.game: N clean, M failed again, K not selected`
    let stdout = process.stdout();
    let prefix = format!("replayed {topic}: ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no summary line\n{}", process.logs()))?;
    let number = |label: &str| -> anyhow::Result<u64> {
        let before = line
            .split(label)
            .next()
            .filter(|_| line.contains(label))
            .with_context(|| format!("no {label:?} in {line:?}"))?;
        Ok(before
            .trim_end()
            .rsplit([' ', ','])
            .next()
            .unwrap_or_default()
            .parse()?)
    };
    Ok((number(" clean")?, number(" failed again")?))
}
