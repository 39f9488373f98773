//! What the CEP benchmarks share: game records in the clean topics' wire format, the worker's
//! config and process, its metrics, and the ceiling they are all measured against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use logpipe_cep::CepConfig;
use logpipe_core::kafka::Role;
use logpipe_core::metric_names::cep as names;
use logpipe_core::record::{header, FileId, RecordId};
use logpipe_devkit::harness::{free_addr, write_file, Process};
use logpipe_devkit::loadgen::{self, EVENTS};
use logpipe_devkit::measure::{env, filling_producer, send_polling, Rate};
use logpipe_devkit::prometheus;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Message;

pub const CLEAN: &str = "clean.game";

pub const SERVERS: u64 = 200;
pub const LEVELS: u64 = 100;

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

/// The game schemas by event type: (event, schema, registered id).
#[derive(Clone)]
pub struct Encoder {
    schemas: Vec<(&'static str, Schema, u32)>,
}

/// What varies between generated records.
pub struct Fields<'a> {
    pub seq: u64,
    pub event: &'a str,
    pub player: &'a str,
    pub server: u64,
    pub level: u64,
    pub time_ms: i64,
}

impl Encoder {
    pub fn new(ids: &[(&'static str, u32)]) -> anyhow::Result<Encoder> {
        let mut schemas = Vec::new();
        for (subject, text) in loadgen::schemas() {
            let event = subject.strip_prefix("game.").context("game subject")?;
            let id = ids
                .iter()
                .find(|(s, _)| *s == subject)
                .with_context(|| format!("{subject} not registered"))?
                .1;
            let event = EVENTS
                .iter()
                .copied()
                .find(|e| *e == event)
                .context("event")?;
            schemas.push((event, Schema::parse_str(text)?, id));
        }
        Ok(Encoder { schemas })
    }

    /// The writer schemas by id, as the worker fetches them.
    pub fn by_id(&self) -> HashMap<u32, Schema> {
        self.schemas
            .iter()
            .map(|(_, s, id)| (*id, s.clone()))
            .collect()
    }

    /// One clean record's value: the wire format of a record of `fields.event`'s schema.
    pub fn encode(&self, fields: &Fields<'_>) -> anyhow::Result<Vec<u8>> {
        let (_, schema, id) = self
            .schemas
            .iter()
            .find(|(e, _, _)| *e == fields.event)
            .context("unknown event")?;
        let Schema::Record(record) = schema else {
            anyhow::bail!("{} is not a record schema", fields.event);
        };
        let values = record
            .fields
            .iter()
            .map(|f| (f.name.clone(), value(&f.name, &f.schema, fields)))
            .collect();
        let datum = apache_avro::to_avro_datum(schema, Avro::Record(values))?;
        Ok(logpipe_core::wire::encode(*id, &datum))
    }
}

/// A field's value: the varying ones from `f`, the others plausible filler of their type.
pub fn value(name: &str, schema: &Schema, f: &Fields<'_>) -> Avro {
    match (name, schema) {
        ("event", _) => Avro::String(f.event.to_owned()),
        ("player_id", _) => Avro::String(f.player.to_owned()),
        ("server", _) => Avro::String(format!("srv-{}", f.server)),
        ("level", _) => Avro::Int(f.level as i32),
        ("event_id", _) => Avro::String(format!("bench-{}", f.seq)),
        ("game_id", _) => Avro::String("g-moonfall".into()),
        (_, Schema::String) => Avro::String(format!("{name}-{}", f.seq % 97)),
        (_, Schema::Int) => Avro::Int((f.seq % 1_000) as i32),
        (_, Schema::Long) => Avro::Long((f.seq % 100_000) as i64),
        (_, Schema::TimestampMillis) => Avro::TimestampMillis(f.time_ms),
        (_, Schema::Uuid) => Avro::String(format!("00000000-0000-4000-8000-{:012x}", f.seq)),
        (_, Schema::Enum(e)) => {
            let i = (f.seq % e.symbols.len() as u64) as usize;
            Avro::Enum(i as u32, e.symbols[i].clone())
        }
        (_, Schema::Decimal(_)) => Avro::Decimal(apache_avro::Decimal::from(vec![0x04, 0xd2])),
        ("session_id", _) => Avro::Union(1, Box::new(Avro::String(format!("s-{:08x}", f.seq / 7)))),
        ("context", _) => Avro::Union(
            1,
            Box::new(Avro::Map(
                [
                    ("build".to_owned(), Avro::String("2026.12.1".into())),
                    (
                        "region".to_owned(),
                        Avro::String(format!("eu-{}", f.server % 4)),
                    ),
                ]
                .into(),
            )),
        ),
        _ => Avro::Null,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Headers as the validator writes them: the agent's `lp.*` id of the line.
pub fn headers(host: &str, file: u64, offset: u64) -> OwnedHeaders {
    let id = RecordId {
        host: host.into(),
        file: FileId(file),
        offset,
    };
    let path = format!("/var/log/game/{file}.log");
    id.headers().iter().fold(
        OwnedHeaders::new_with_capacity(4).insert(Header {
            key: header::PATH,
            value: Some(path.as_bytes()),
        }),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

/// Generates and produces records `seqs` to `topic`, record `seq` to partition `seq %
/// partitions`: its player is `player(seq)`, its event time `time_ms(seq)`; event, server and
/// level vary with `seq`. Returns the average value size.
pub fn fill(
    bootstrap: &str,
    encoder: &Encoder,
    topic: &str,
    seqs: Range<u64>,
    partitions: i32,
    player: impl Fn(u64) -> String,
    time_ms: impl Fn(u64) -> i64,
) -> anyhow::Result<f64> {
    let producer = filling_producer(bootstrap)?;
    let mut bytes = 0usize;
    let records = seqs.end - seqs.start;
    for seq in seqs {
        // A cheap scramble so that event, server and level are not correlated.
        let mix = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
        let player = player(seq);
        let value = encoder.encode(&Fields {
            seq,
            event: event_of(seq),
            player: &player,
            server: (mix / 5) % SERVERS,
            level: (mix / 1_000) % LEVELS + 1,
            time_ms: time_ms(seq),
        })?;
        bytes += value.len();
        let partition = (seq % partitions as u64) as i32;
        send_polling(
            &producer,
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .key(format!("bench-host|/var/log/game/{partition}.log").as_bytes())
                .payload(&value)
                .headers(headers("bench-host", partition as u64 + 1, seq)),
        )?;
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(bytes as f64 / records.max(1) as f64)
}

/// The event type [`fill`] gives record `seq`: each of [`EVENTS`] as often.
pub fn event_of(seq: u64) -> &'static str {
    let mix = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    EVENTS[(mix % EVENTS.len() as u64) as usize]
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
    let consumer: BaseConsumer = config
        .kafka
        .client_config(
            &Role::Consumer {
                group_id: group.to_owned(),
            },
            "bench-ceiling",
        )
        .create()?;
    consumer.subscribe(&[CLEAN])?;
    let (mut done, mut bytes) = (0usize, 0usize);
    let mut first: Option<Instant> = None;
    let stall = Instant::now() + STALL;
    while done < records {
        anyhow::ensure!(
            Instant::now() < stall,
            "ceiling stalled at {done} of {records}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let payload = message.payload().unwrap_or_default();
        let (id, mut body) = logpipe_core::wire::parse(payload)?;
        let schema = schemas.get(&id).context("unknown schema id")?;
        let value = apache_avro::from_avro_datum(schema, &mut body, None)?;
        let json = serde_json::Value::try_from(value)?;
        std::hint::black_box(json);
        done += 1;
        if first.is_none() {
            first = Some(Instant::now());
        } else {
            bytes += payload.len();
        }
    }
    Ok(Rate {
        records: records - 1,
        bytes,
        elapsed: first.context("nothing read")?.elapsed(),
    })
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
