//! What the CEP worker's end-to-end tests share: a seeded stream of game events encoded as the
//! validator would write them to `clean.game` (the Confluent wire format with the registered game
//! schemas, agent-style keys and `lp.*` headers), the matches an independent oracle expects from
//! it, `logpipe-cep` configs and rules API calls, and the matches read back from `cep.matches`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use apache_avro::types::Value as Avro;
use logpipe_core::record::{cep_header, cep_repartition_topic, FileId};
use logpipe_core::wire;
use logpipe_devkit::harness::{free_addr, write_file, TopicReader};
use logpipe_devkit::loadgen;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::Value;

use crate::topic;
use crate::validator::{Lines, Stack, CLEAN};

/// The worker binary.
pub const CEP: &str = "logpipe-cep";
/// Where the rules below write their matches.
pub const MATCHES: &str = "cep.matches";
/// Partitions of the topics the workers create (and of `clean.game`).
pub const PARTITIONS: i32 = 4;
/// The key of the rules per player.
pub const KEY: &str = "player_id";
/// Every key path the rules below count by: one repartition topic each.
pub const KEY_PATHS: [&str; 2] = [KEY, "server"];

/// The rules the tests seed: (name, body, whether the body is JSON).
pub const RULES: [(&str, &str, bool); 4] = [
    (
        "pvp_win",
        "source: clean.game\nkey: player_id\nrepeat: every\nevent_list:\n  - conditions:\n      - {field: event, value: pvp_win, type: string, operator: equals}\n    count: 5\noutput:\n  value: {reward: gem, amount: 30}\n",
        false,
    ),
    (
        "level3",
        "source: clean.game\nkey: player_id\nrepeat: once\nwhen: 'event == \"level_up\" && level == 3'\n",
        false,
    ),
    (
        "buy2_win3",
        r#"{"source": "clean.game", "key": "player_id", "repeat": "once", "event_list": [
            {"conditions": [{"field": "event", "value": "purchase"}], "count": 2},
            {"conditions": [{"field": "event", "value": "pvp_win"}], "count": 3}]}"#,
        true,
    ),
    (
        "server_logins",
        "source: clean.game\nkey: server\nrepeat: every\nevent_list:\n  - {conditions: [{field: event, value: login}], count: 10}\n",
        false,
    ),
];

/// The game servers events come from: few keys, each in every partition.
const SERVERS: [&str; 3] = ["eu-1", "eu-2", "us-1"];

/// [`RULES`] as a rules file: a YAML list of the documents, each with its name.
pub fn rules_file() -> anyhow::Result<String> {
    let mut text = String::new();
    for (name, body, json) in RULES {
        if json {
            let mut document: Value = serde_json::from_str(body)?;
            document["name"] = Value::String(name.to_owned());
            text.push_str(&format!("- {document}\n"));
        } else {
            text.push_str(&format!("- name: {name}\n"));
            for line in body.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    Ok(text)
}

/// The files events are spread over: (host, path). `Stack::produce` writes file `i` to partition
/// `i % 4`, so a player whose events are in several files has them in several partitions.
const FILES: [(&str, &str); 6] = [
    ("host-a", "/var/log/game/1.log"),
    ("host-a", "/var/log/game/2.log"),
    ("host-b", "/var/log/game/1.log"),
    ("host-b", "/var/log/game/2.log"),
    ("host-c", "/var/log/game/1.log"),
    ("host-c", "/var/log/game/2.log"),
];

/// One generated game event.
#[derive(Debug, Clone)]
pub struct Event {
    pub player: String,
    pub server: &'static str,
    pub kind: &'static str,
    /// `level_up` only.
    pub level: i32,
    /// Index into the files.
    pub file: usize,
    pub event_id: String,
    pub event_time: i64,
}

/// A seeded stream of events.
pub struct Game {
    pub seed: u64,
    pub events: Vec<Event>,
}

impl Game {
    /// `n` events over `players` players; the first `pinned` players have all their events in
    /// one file (one partition, so their per-key order, and thus their match ids, cannot depend
    /// on how partitions interleave), the others in any file.
    pub fn generate(seed: u64, n: usize, players: usize, pinned: usize) -> Game {
        let mut rng = StdRng::seed_from_u64(seed);
        let events = (0..n)
            .map(|i| {
                let p = rng.random_range(0..players);
                let kind = match rng.random_range(0..100) {
                    0..40 => "pvp_win",
                    40..60 => "purchase",
                    60..80 => "level_up",
                    80..90 => "login",
                    _ => "reward",
                };
                let level = if kind == "level_up" {
                    rng.random_range(1..=12)
                } else {
                    0
                };
                let file = if p < pinned {
                    p % FILES.len()
                } else {
                    rng.random_range(0..FILES.len())
                };
                let server = SERVERS[rng.random_range(0..SERVERS.len())];
                Event {
                    player: format!("p-{p:03}"),
                    server,
                    kind,
                    level,
                    file,
                    event_id: format!("cep-{seed}-{i}"),
                    event_time: 1_700_000_000_000 + i as i64 * 250,
                }
            })
            .collect();
        Game { seed, events }
    }

    /// Whether `player` was pinned to one partition.
    pub fn is_pinned(player: &str, pinned: usize) -> bool {
        player
            .strip_prefix("p-")
            .and_then(|p| p.parse::<usize>().ok())
            .is_some_and(|p| p < pinned)
    }

    /// The events as agent-style lines of their files, each value in the wire format.
    pub fn lines(&self, schemas: &GameSchemas) -> anyhow::Result<Vec<Lines>> {
        let mut files: Vec<Lines> = FILES
            .iter()
            .enumerate()
            .map(|(i, (host, path))| Lines {
                host: (*host).to_owned(),
                path: (*path).to_owned(),
                file: self.file_id(i),
                lines: Vec::new(),
            })
            .collect();
        for event in &self.events {
            let file = &mut files[event.file];
            // Byte offsets as ids, as if every line were 1,000 bytes: unique per file.
            let offset = file.lines.len() as u64 * 1_000;
            file.lines.push((offset, schemas.encode(event)?));
        }
        Ok(files)
    }

    /// A file identity per file and seed: streams of different seeds never share ids.
    fn file_id(&self, file: usize) -> FileId {
        FileId((0xce90 << 32) + (self.seed << 8) + file as u64)
    }

    /// Each event's record id (file identity, offset), as [`Game::lines`] writes them.
    pub fn record_ids(&self) -> Vec<(u64, u64)> {
        let mut lines = [0u64; FILES.len()];
        self.events
            .iter()
            .map(|e| {
                let offset = lines[e.file] * 1_000;
                lines[e.file] += 1;
                (self.file_id(e.file).0, offset)
            })
            .collect()
    }

    /// The longest file, in lines: `0..longest()` produces everything.
    pub fn longest(files: &[Lines]) -> usize {
        files.iter().map(|f| f.lines.len()).max().unwrap_or(0)
    }

    /// The oracle: matches per (rule, key) that `RULES` must produce from these events, whatever
    /// their order (every count below is order-independent).
    pub fn oracle(&self) -> BTreeMap<(String, String), usize> {
        #[derive(Default)]
        struct Player {
            pvp: usize,
            purchases: usize,
            level3: bool,
        }
        let mut players: BTreeMap<&str, Player> = BTreeMap::new();
        let mut logins: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.events {
            if e.kind == "login" {
                *logins.entry(e.server).or_default() += 1;
            }
            let p = players.entry(e.player.as_str()).or_default();
            match e.kind {
                "pvp_win" => p.pvp += 1,
                "purchase" => p.purchases += 1,
                "level_up" if e.level == 3 => p.level3 = true,
                _ => {}
            }
        }
        let mut expected = BTreeMap::new();
        for (player, p) in players {
            let mut add = |rule: &str, n: usize| {
                if n > 0 {
                    expected.insert((rule.to_owned(), player.to_owned()), n);
                }
            };
            add("pvp_win", p.pvp / 5);
            add("level3", usize::from(p.level3));
            add("buy2_win3", usize::from(p.purchases >= 2 && p.pvp >= 3));
        }
        for (server, n) in logins {
            if n >= 10 {
                expected.insert(("server_logins".to_owned(), server.to_owned()), n / 10);
            }
        }
        expected
    }
}

/// The registered game schemas by event, with their ids.
pub struct GameSchemas {
    by_event: HashMap<String, (u32, apache_avro::Schema)>,
}

impl GameSchemas {
    /// Registers the five game schemas (subjects `game.<event>`) in the stack's store.
    pub async fn register(stack: &Stack) -> anyhow::Result<GameSchemas> {
        let mut by_event = HashMap::new();
        for (subject, text) in loadgen::schemas() {
            let id = stack.register(subject, "AVRO", text).await?;
            let event = subject.strip_prefix("game.").context("game.<event>")?;
            by_event.insert(
                event.to_owned(),
                (id, apache_avro::Schema::parse_str(text)?),
            );
        }
        Ok(GameSchemas { by_event })
    }

    /// An event as the validator writes it to a clean topic.
    pub fn encode(&self, e: &Event) -> anyhow::Result<Vec<u8>> {
        let (id, schema) = self
            .by_event
            .get(e.kind)
            .with_context(|| format!("no schema for {}", e.kind))?;
        let s = |v: &str| Avro::String(v.to_owned());
        let mut fields = vec![
            ("event_id".to_owned(), s(&e.event_id)),
            ("event".to_owned(), s(e.kind)),
            ("event_time".to_owned(), Avro::Long(e.event_time)),
            ("player_id".to_owned(), s(&e.player)),
            ("game_id".to_owned(), s("g-1")),
            ("server".to_owned(), s(e.server)),
        ];
        let specific: Vec<(&str, Avro)> = match e.kind {
            "login" => vec![
                ("platform", s("pc")),
                ("client_version", s("1.2.3")),
                ("country", s("KR")),
            ],
            "level_up" => vec![
                ("level", Avro::Int(e.level)),
                ("previous_level", Avro::Int(e.level - 1)),
                ("xp", Avro::Long(1_000)),
            ],
            "purchase" => vec![
                ("item_id", s("sword")),
                ("quantity", Avro::Int(1)),
                ("price", Avro::Bytes(vec![0, 0, 0, 0x04, 0xd2])),
                ("currency", s("USD")),
            ],
            "pvp_win" => vec![
                ("match_id", s("1481531d-ccc9-46d9-a56f-5b67459c0537")),
                ("opponent_id", s("p-999")),
                ("rating_delta", Avro::Int(12)),
                ("duration_ms", Avro::Long(90_000)),
            ],
            "reward" => vec![
                ("reward_type", s("gem")),
                ("amount", Avro::Long(30)),
                ("source", s("quest")),
            ],
            other => bail!("no fields for {other}"),
        };
        fields.extend(specific.into_iter().map(|(n, v)| (n.to_owned(), v)));
        let value = Avro::Record(fields)
            .resolve(schema)
            .with_context(|| format!("a {} event", e.kind))?;
        Ok(wire::encode(
            *id,
            &apache_avro::to_avro_datum(schema, value)?,
        ))
    }
}

/// Writes a worker config (`extra` TOML at the top level, where a `batch_ms` replaces the tests'
/// default of 25; `tables` at the end); returns it and its telemetry address.
pub fn config(
    stack: &Stack,
    group: &str,
    instance: &str,
    extra: &str,
    tables: &str,
) -> anyhow::Result<(PathBuf, SocketAddr)> {
    let telemetry = free_addr();
    let batch = if extra.contains("batch_ms") {
        ""
    } else {
        "batch_ms = 25\n"
    };
    let text = format!(
        "schema_store = \"{}\"\ngroup = \"{group}\"\ninstance = \"{instance}\"\npartitions = {PARTITIONS}\n{batch}{extra}\n\
         [kafka]\nbootstrap = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n\
         [telemetry]\nlisten = \"{telemetry}\"\n{tables}",
        stack.store_url(),
        stack.cluster.bootstrap()
    );
    Ok((
        write_file(
            stack.dir.path(),
            &format!("cep-{group}-{instance}.toml"),
            &text,
        )?,
        telemetry,
    ))
}

/// A rules API client for one worker.
pub struct RulesApi {
    base: String,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
}

impl RulesApi {
    pub fn new(telemetry: SocketAddr) -> anyhow::Result<RulesApi> {
        Ok(RulesApi {
            base: format!("http://{telemetry}/rules"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            credentials: None,
        })
    }

    /// The same API with basic auth credentials.
    pub fn with_credentials(mut self, user: &str, password: &str) -> RulesApi {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let request = match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// `PUT /rules/{name}`, YAML or JSON.
    pub async fn put(&self, name: &str, body: &str, json: bool) -> anyhow::Result<(u16, Value)> {
        let content_type = if json {
            "application/json"
        } else {
            "application/yaml"
        };
        self.send(
            self.http
                .put(format!("{}/{name}", self.base))
                .header("Content-Type", content_type)
                .body(body.to_owned()),
        )
        .await
    }

    pub async fn get(&self, name: &str) -> anyhow::Result<(u16, Value)> {
        self.send(self.http.get(format!("{}/{name}", self.base)))
            .await
    }

    pub async fn delete(&self, name: &str) -> anyhow::Result<(u16, Value)> {
        self.send(self.http.delete(format!("{}/{name}", self.base)))
            .await
    }

    /// `GET /rules{path}`: `""` lists the rules, `/NAME/versions/V` shows a version.
    pub async fn get_path(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST /rules/{name}/test` with a YAML document (or none: the stored one).
    pub async fn test(&self, name: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        self.send(
            self.http
                .post(format!("{}/{name}/test", self.base))
                .header("Content-Type", "application/yaml")
                .body(body.to_owned()),
        )
        .await
    }

    /// PUTs every rule of [`RULES`], failing unless each is stored.
    pub async fn seed(&self) -> anyhow::Result<()> {
        for (name, body, json) in RULES {
            let (status, answer) = self.put(name, body, json).await?;
            ensure!(status == 200, "PUT {name}: {status} {answer}");
        }
        Ok(())
    }

    /// Waits until this worker serves every rule of [`RULES`] (put through another worker).
    pub async fn wait_for_rules(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for (name, _, _) in RULES {
            loop {
                if matches!(self.get(name).await, Ok((200, _))) {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "rule {name} not served within {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// One match read back from `cep.matches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub rule: String,
    pub version: u64,
    pub key: String,
    pub match_id: String,
}

/// Every committed match (read_committed), checked for agreement between the record's key,
/// headers and value.
pub async fn read_matches(stack: &Stack) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::new();
    for m in stack.read(MATCHES).await? {
        let value: Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).context("a match is JSON")?;
        let headers = topic::text_headers(&m);
        let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_default();
        let s = Seen {
            rule: text(&value["rule"]),
            version: value["version"].as_u64().context("version")?,
            key: text(&value["key"]),
            match_id: text(&value["match_id"]),
        };
        let record_key = topic::text(m.key());
        ensure!(
            record_key == s.key
                && headers.get(cep_header::RULE) == Some(&s.rule)
                && headers.get(cep_header::VERSION) == Some(&s.version.to_string())
                && headers.get(cep_header::MATCH_ID) == Some(&s.match_id)
                && s.match_id.len() == 32,
            "a match whose key, headers and value disagree: key {record_key:?}, headers {headers:?}, value {value}"
        );
        seen.push(s);
    }
    Ok(seen)
}

/// Matches per (rule, key).
pub fn per_key(seen: &[Seen]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for s in seen {
        *counts.entry((s.rule.clone(), s.key.clone())).or_insert(0) += 1;
    }
    counts
}

/// The exact assertions: matches per (rule, key) equal the oracle's, and no match id twice.
pub fn assert_matches(seen: &[Seen], expected: &BTreeMap<(String, String), usize>) {
    let got = per_key(seen);
    let wrong: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{}/{}: expected {}, got {}",
                k.0,
                k.1,
                expected.get(k).unwrap_or(&0),
                got.get(k).unwrap_or(&0)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} (rule, key) counts differ from the oracle ({} matches expected, {} read):\n{}",
        wrong.len(),
        expected.len(),
        expected.values().sum::<usize>(),
        seen.len(),
        wrong.join("\n")
    );
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *ids.entry(s.match_id.as_str()).or_insert(0) += 1;
    }
    let twice: Vec<&&str> = ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "match ids seen more than once: {twice:?}");
}

/// Where the group has got: its committed offsets against the ends of `clean.game` and of its
/// repartition topic. Watches without joining the group.
pub struct Progress {
    group: String,
    consumer: BaseConsumer,
    /// The repartition topics, read as they grow: the offset after the last record per
    /// partition.
    repartition: Vec<(TopicReader, BTreeMap<i32, i64>)>,
    bootstrap: String,
}

impl Progress {
    pub fn new(stack: &Stack, group: &str) -> anyhow::Result<Progress> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", stack.cluster.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        Ok(Progress {
            group: group.to_owned(),
            consumer,
            repartition: Vec::new(),
            bootstrap: stack.cluster.bootstrap().to_owned(),
        })
    }

    /// Committed offsets of the group on `topic`'s partitions `0..PARTITIONS` (-1 for none).
    fn committed(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        committed(&self.consumer, topic)
    }

    /// Clean records the group has committed as read (summed over partitions).
    pub fn clean_committed(&self) -> anyhow::Result<i64> {
        Ok(self.committed(CLEAN)?.values().map(|o| (*o).max(0)).sum())
    }

    /// `None` when the group has committed every record of `clean.game` and of its repartition
    /// topics (every match the records make is then committed too: same transactions), else what
    /// is left.
    pub fn left(&mut self) -> anyhow::Result<Option<String>> {
        let clean = self.committed(CLEAN)?;
        let mut ends = BTreeMap::new();
        for p in 0..PARTITIONS {
            let (_, high) = self
                .consumer
                .fetch_watermarks(CLEAN, p, Duration::from_secs(10))?;
            ends.insert(p, high);
        }
        if ends
            .iter()
            .any(|(p, end)| clean.get(p).copied().unwrap_or(-1).max(0) < *end)
        {
            return Ok(Some(format!("{CLEAN}: committed {clean:?} of {ends:?}")));
        }
        if self.repartition.is_empty() {
            for key_path in KEY_PATHS {
                let topic = cep_repartition_topic(&self.group, key_path);
                let reader = TopicReader::new(&self.bootstrap, &topic, Duration::from_secs(30))?;
                self.repartition.push((reader, BTreeMap::new()));
            }
        }
        for (reader, ends) in &mut self.repartition {
            reader.read_new(Duration::from_secs(60), |m| {
                ends.insert(m.partition(), m.offset() + 1);
                Ok(())
            })?;
            let topic = reader.topic().to_owned();
            let done = committed(&self.consumer, &topic)?;
            if ends
                .iter()
                .any(|(p, end)| done.get(p).copied().unwrap_or(-1) < *end)
            {
                return Ok(Some(format!(
                    "{topic}: committed {done:?}, records up to {ends:?}"
                )));
            }
        }
        Ok(None)
    }

    /// Polls [`Progress::left`] until nothing is, failing past `timeout`.
    pub async fn wait_drained(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match tokio::task::block_in_place(|| self.left()) {
                Ok(None) => return Ok(()),
                Ok(Some(left)) => left,
                // Offsets of an open transaction are unstable for a moment: ask again.
                Err(e) => format!("{e:#}"),
            };
            ensure!(
                Instant::now() < deadline,
                "group {} did not commit every record within {timeout:?}: {last}",
                self.group
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls until the group has committed at least `n` clean records as read.
    pub async fn wait_clean_committed(&self, n: i64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::task::block_in_place(|| self.clean_committed()).unwrap_or(0) >= n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "group {} did not commit {n} clean records within {timeout:?}",
                self.group
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether the group's state changelog holds a tombstone of some key of `rule` version
/// `version`: the workers dropped that version's state, so they count with a rule set without it.
pub async fn tombstoned(
    stack: &Stack,
    group: &str,
    rule: &str,
    version: u32,
) -> anyhow::Result<bool> {
    let prefix = format!("{KEY}\x1f{rule}\x1f{version}\x1f");
    Ok(stack
        .read(&logpipe_core::record::cep_state_topic(group))
        .await?
        .iter()
        .any(|m| {
            m.payload().is_none() && m.key().is_some_and(|k| k.starts_with(prefix.as_bytes()))
        }))
}

/// Committed offsets of `consumer`'s group on `topic`'s partitions `0..PARTITIONS` (-1 for none).
fn committed(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// The Kafka timestamp of every record of `clean.game` by record id (file identity, offset).
pub async fn clean_timestamps(stack: &Stack) -> anyhow::Result<HashMap<(u64, u64), i64>> {
    let mut at = HashMap::new();
    for m in stack.read(CLEAN).await? {
        let pairs = m
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        if let Ok(Some(id)) = logpipe_core::record::RecordId::from_headers(pairs) {
            at.insert(
                (id.file.0, id.offset),
                m.timestamp().to_millis().unwrap_or(0),
            );
        }
    }
    Ok(at)
}

/// Epoch milliseconds of an RFC 3339 UTC time as the rules API writes `created_at`
/// (`2026-12-04T23:23:16.715Z`).
pub fn rfc3339_ms(text: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("not an RFC 3339 UTC time: {text:?}");
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = match (d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day))) => (y, m, day),
        _ => return Err(bad()),
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(str::parse::<i64>);
    let (h, min, sec) = match (t.next(), t.next(), t.next()) {
        (Some(Ok(h)), Some(Ok(min)), Some(Ok(sec))) => (h, min, sec),
        _ => return Err(bad()),
    };
    let ms: i64 = format!("{fraction:0<3}")[..3].parse()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + min) * 60_000 + sec * 1_000 + ms)
}
