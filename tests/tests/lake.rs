//! The lake loader end to end: a dev cluster, the real schema store with the game schemas (five
//! schema ids in one topic, each with fields of its own, so the table widens as they arrive), and
//! `logpipe-lake` processes loading `clean.game` into a Delta table on the local disk or on an
//! S3-compatible server (moto's, behind a gate that can cut it off or hold a commit). The table
//! is read by outside readers (Python `deltalake` and `polars`) and must hold every clean record
//! exactly once, counted by record id against an oracle computed here; records that cannot be
//! rows are in `dlq.lake.game` with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_core::metric_names::lake as metric;
use logpipe_core::wire;
use logpipe_devkit::harness::{wait_until, Process};
use logpipe_tests::cep::{Game, GameSchemas};
use logpipe_tests::lake::*;
use logpipe_tests::validator::{Lines, Stack, CLEAN};
use logpipe_tests::{metrics, service, topic};

const EVENTS: usize = 3_000;
const DRAIN: Duration = Duration::from_secs(180);
/// How long the S3 server is cut off.
const OUTAGE: Duration = Duration::from_secs(30);

/// Records no table row can come from: not the wire format, and a schema id the store lacks.
fn bad_lines() -> Lines {
    Lines {
        host: "host-bad".into(),
        path: "/var/log/game/bad.log".into(),
        file: logpipe_core::record::FileId(0xbad),
        lines: vec![
            (0, br#"{"event": "not the wire format"}"#.to_vec()),
            (100, wire::encode(987_654, b"\x02x")),
        ],
    }
}

/// Asserts the table, as both outside readers see it, holds exactly the oracle's rows, each once
/// with its own event id and a date partition.
async fn assert_table(
    uri: &str,
    storage: &[(&str, String)],
    expected: &BTreeMap<RowId, String>,
) -> anyhow::Result<()> {
    for reader in ["deltalake", "polars"] {
        let read = read(reader, uri, storage, &["event_id", "dt", "kafka_topic"]).await?;
        let mut seen = BTreeMap::new();
        let mut repeated = 0;
        for (id, values) in read.ids.iter().zip(&read.values) {
            if seen.insert(id.clone(), values.clone()).is_some() {
                repeated += 1;
            }
        }
        let missing = expected.keys().filter(|id| !seen.contains_key(*id)).count();
        let extra = seen.keys().filter(|id| !expected.contains_key(*id)).count();
        assert_eq!(
            (read.rows, missing, extra, repeated),
            (expected.len(), 0, 0, 0),
            "{reader}: rows, missing, extra, repeated"
        );
        for (id, event_id) in expected {
            let values = &seen[id];
            assert_eq!(
                values["event_id"].as_deref(),
                Some(event_id.as_str()),
                "{reader}: {id:?}"
            );
            assert_eq!(values["kafka_topic"].as_deref(), Some(CLEAN));
            assert!(
                values["dt"]
                    .as_deref()
                    .is_some_and(|d| d.starts_with("2023-11-")),
                "{reader}: dt {:?}",
                values["dt"]
            );
        }
        for column in [
            "player_id",
            "platform",
            "rating_delta",
            "lp_host",
            "kafka_offset",
            "schema_id",
            "dt",
        ] {
            assert!(
                read.columns.iter().any(|c| c == column),
                "{reader}: no column {column} in {:?}",
                read.columns
            );
        }
    }
    Ok(())
}

/// Which expected rows the table lacks, with where each was in `clean.game`: what a failure
/// needs to be told.
async fn missing(
    stack: &Stack,
    place: &Place,
    expected: &BTreeMap<RowId, String>,
) -> anyhow::Result<String> {
    let read = read("deltalake", &place.uri, &place.storage, &[]).await?;
    let held: BTreeSet<&RowId> = read.ids.iter().collect();
    let mut kafka = BTreeMap::new();
    for m in stack.read(CLEAN).await? {
        let h = topic::text_headers(&m);
        if let (Some(host), Some(file), Some(offset)) =
            (h.get("lp.host"), h.get("lp.file"), h.get("lp.offset"))
        {
            use rdkafka::Message as _;
            kafka.insert(
                (host.clone(), file.clone(), offset.parse::<i64>()?),
                (m.partition(), m.offset()),
            );
        }
    }
    let lacking: Vec<String> = expected
        .keys()
        .filter(|id| !held.contains(id))
        .take(20)
        .map(|id| format!("{id:?} at {:?}", kafka.get(id)))
        .collect();
    Ok(format!(
        "the table has {} of {} rows; lacking: {lacking:?}",
        read.rows,
        expected.len()
    ))
}

/// Where a test's table is.
struct Place {
    uri: String,
    /// The object store's options (none for a local path).
    storage: Vec<(&'static str, String)>,
    _s3: Option<S3>,
}

impl Place {
    fn local(stack: &Stack) -> Place {
        Place {
            uri: stack.dir.path().join("lake/game").display().to_string(),
            storage: Vec::new(),
            _s3: None,
        }
    }

    async fn s3() -> anyhow::Result<Place> {
        let s3 = S3::start().await?;
        Ok(Place {
            uri: format!("s3://{BUCKET}/logpipe/game"),
            storage: s3.options(),
            _s3: Some(s3),
        })
    }

    /// The loader config's lines for the place, after the table's keys.
    fn toml(&self) -> String {
        match &self._s3 {
            Some(s3) => s3.storage_toml(),
            None => String::new(),
        }
    }

    fn gate(&self) -> Option<&Gate> {
        self._s3.as_ref().map(|s3| &s3.gate)
    }

    async fn count(&self) -> usize {
        count(&self.uri, &self.storage).await
    }
}

/// What the kill -9 tests share: the game stream of a seed and the two bad records, produced in
/// three rounds, for a loader committing every 300 ms into the table at a place.
struct Load {
    files: Vec<Lines>,
    expected: BTreeMap<RowId, String>,
    config: PathBuf,
    telemetry: SocketAddr,
    /// Line indexes splitting each file into the three rounds.
    thirds: [usize; 4],
}

impl Load {
    async fn prepare(stack: &Stack, place: &Place, seed: u64) -> anyhow::Result<Load> {
        let schemas = GameSchemas::register(stack).await?;
        let game = Game::generate(seed, EVENTS, 50, 0);
        let mut files = game.lines(&schemas)?;
        let expected = oracle(&game, &files);
        files.push(bad_lines());
        let extra = format!("flush_age = \"300ms\"\n{}", place.toml());
        let (config, telemetry) = config(stack, "l1", &place.uri, &extra)?;
        let longest = Game::longest(&files);
        Ok(Load {
            files,
            expected,
            config,
            telemetry,
            thirds: [0, longest / 3, 2 * longest / 3, longest],
        })
    }

    async fn start(&self) -> anyhow::Result<Process> {
        service::start(LAKE, &self.config, self.telemetry).await
    }

    /// Produces round `round` (0, 1 or 2) of every file; returns how many records.
    async fn produce(&self, stack: &Stack, round: usize) -> anyhow::Result<usize> {
        let lines = self.thirds[round]..self.thirds[round + 1];
        stack.produce(CLEAN, &self.files, lines).await
    }

    /// Once the table holds as many rows as expected, stops `loader` and checks that the table
    /// holds every expected row once and `dlq.lake.game` each bad record once.
    async fn check(&self, stack: &Stack, place: &Place, mut loader: Process) -> anyhow::Result<()> {
        let expected = &self.expected;
        let drained = wait_until(DRAIN, || async { place.count().await >= expected.len() }).await;
        if let Err(e) = drained {
            let missing = missing(stack, place, expected).await?;
            anyhow::bail!("{e:#}: {missing}\n{}", loader.logs());
        }
        service::stop(&mut loader).await?;
        assert_table(&place.uri, &place.storage, expected).await?;
        assert_dead_letters(stack).await
    }
}

/// The loader killed -9 twice while it writes and commits, restarted each time, and (on S3) the
/// store cut off for 30 s meanwhile: the table still holds every record once, and the bad
/// records are dead letters with their reason.
async fn load_across_kill_9(stack: Stack, place: Place) -> anyhow::Result<()> {
    let load = Load::prepare(&stack, &place, 7).await?;
    let telemetry = load.telemetry;
    let mut loader = load.start().await?;
    for round in 0..3 {
        load.produce(&stack, round).await?;
        if round < 2 {
            // Killed once rows of this round are committed and while more are being written.
            let before = metrics::total(telemetry, metric::ROWS).await;
            wait_until(DRAIN, || async {
                metrics::total(telemetry, metric::ROWS).await > before
            })
            .await?;
            loader.kill9()?;
            loader = load.start().await?;
        } else if let Some(gate) = place.gate() {
            // The store away for 30 s while the last round is loaded: file writes and commits
            // fail, their rows are read again once it is back. Closed once the restarted loader
            // has its partitions at the table's positions: before, the outage would only delay
            // reading those (retried) and fail no commit.
            wait_until(DRAIN, || async {
                metrics::total(telemetry, metric::PARTITIONS).await > 0.0
            })
            .await?;
            gate.close();
            tokio::time::sleep(OUTAGE).await;
            loader.ensure_running()?;
            let failed = metrics::total(telemetry, metric::COMMIT_FAILURES).await;
            assert!(
                failed > 0.0,
                "the outage failed no commit: it tested nothing"
            );
            gate.reopen();
        }
    }
    load.check(&stack, &place, loader).await
}

/// `dlq.lake.game` holds each of [`bad_lines`] once, as a dead letter of the lake stage.
async fn assert_dead_letters(stack: &Stack) -> anyhow::Result<()> {
    let dead: Vec<_> = stack.read(LAKE_DLQ).await?;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let h = topic::text_headers(m);
            (h["lp.error.stage"].clone(), h["lp.offset"].clone())
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("lake".to_owned(), "0".to_owned()),
            ("lake".to_owned(), "100".to_owned())
        ],
        "each bad record is one dead letter of the lake stage: {dead:?}"
    );
    Ok(())
}

/// A loader killed -9 after reading dead letters and before committing them, and its successor's
/// first dead-letter transaction failing after its Delta commit landed (so the rows are in the
/// table and the dead letters are not): `dlq.lake.game` still holds each once, and the table
/// every row once. Delivering dead letters before the commit, as the loader once did, writes
/// each twice here; a successor that took the table's positions alone would lose them. The
/// successor also loads `dlq.lake.game` into a dead-letter table (`kind = "dead_letters"`),
/// which both outside readers see holding each dead letter once, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_written_once_across_kill_9() -> anyhow::Result<()> {
    let stack = Stack::start(&[(LAKE_DLQ, 1)]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let game = Game::generate(9, 300, 20, 0);
    let mut files = game.lines(&schemas)?;
    let expected = oracle(&game, &files);
    files.push(bad_lines());
    let place = Place::local(&stack);
    // Nothing is due by age while the first loader runs: all it read is uncommitted when killed.
    let (first, telemetry) = config(&stack, "l1", &place.uri, "flush_age = \"1h\"\n")?;
    let mut loader = service::start(LAKE, &first, telemetry).await?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    let records = (expected.len() + 2) as f64;
    wait_until(DRAIN, || async {
        metrics::total(telemetry, metric::RECORDS_READ).await >= records
    })
    .await
    .map_err(|e| anyhow::anyhow!("reading {records} records: {e:#}\n{}", loader.logs()))?;
    loader.kill9()?;
    stack
        .cluster
        .request_errors("TxnOffsetCommit", &["ILLEGAL_GENERATION"])
        .await?;
    let dead_uri = format!("{}-dead-letters", place.uri);
    let dead_table = format!(
        "flush_age = \"300ms\"\n[[tables]]\nname = \"game_dead\"\ntopics = [\"{LAKE_DLQ}\"]\n\
         uri = \"{dead_uri}\"\nkind = \"dead_letters\"\nflush_age = \"300ms\"\n"
    );
    let (second, telemetry) = config(&stack, "l1", &place.uri, &dead_table)?;
    let mut loader = service::start(LAKE, &second, telemetry).await?;
    let drained = wait_until(DRAIN, || async { place.count().await >= expected.len() }).await;
    if let Err(e) = drained {
        let missing = missing(&stack, &place, &expected).await?;
        anyhow::bail!("{e:#}: {missing}\n{}", loader.logs());
    }
    wait_until(DRAIN, || async {
        metrics::total(telemetry, metric::DEAD_LETTERS).await >= 2.0
    })
    .await
    .map_err(|e| anyhow::anyhow!("delivering 2 dead letters: {e:#}\n{}", loader.logs()))?;
    let failed = metrics::total(telemetry, metric::COMMIT_FAILURES).await;
    let dead_rows = wait_until(DRAIN, || async { count(&dead_uri, &[]).await >= 2 }).await;
    if let Err(e) = dead_rows {
        anyhow::bail!("the dead-letter table: {e:#}\n{}", loader.logs());
    }
    service::stop(&mut loader).await?;
    assert!(
        failed > 0.0,
        "no dead-letter transaction failed: the injected error tested nothing"
    );
    assert_table(&place.uri, &[], &expected).await?;
    assert_dead_letters(&stack).await?;
    let bad = bad_lines();
    for reader in ["deltalake", "polars"] {
        let read = read(
            reader,
            &dead_uri,
            &[],
            &["error_stage", "error_reason", "value"],
        )
        .await?;
        let mut rows: Vec<(RowId, Option<String>, bool, Option<String>)> = read
            .ids
            .iter()
            .zip(&read.values)
            .map(|(id, v)| {
                let reason = v["error_reason"].as_deref().unwrap_or_default();
                (
                    id.clone(),
                    v["error_stage"].clone(),
                    !reason.is_empty(),
                    v["value"].clone(),
                )
            })
            .collect();
        rows.sort();
        let id = |offset: i64| (bad.host.clone(), bad.file.to_hex(), offset);
        assert_eq!(
            rows,
            [
                (
                    id(0),
                    Some("lake".into()),
                    true,
                    Some(String::from_utf8_lossy(&bad.lines[0].1).into_owned())
                ),
                (
                    id(100),
                    Some("lake".into()),
                    true,
                    Some(String::from_utf8_lossy(&bad.lines[1].1).into_owned())
                ),
            ],
            "{reader}: the dead-letter table"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clean_record_is_a_row_once_across_kill_9_on_local_disk() -> anyhow::Result<()> {
    let stack = Stack::start(&[(LAKE_DLQ, 1)]).await?;
    let place = Place::local(&stack);
    load_across_kill_9(stack, place).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clean_record_is_a_row_once_across_kill_9_and_an_outage_on_s3() -> anyhow::Result<()>
{
    let stack = Stack::start(&[(LAKE_DLQ, 1)]).await?;
    let place = Place::s3().await?;
    load_across_kill_9(stack, place).await
}

/// The loader on S3 killed -9 twice inside a Delta commit: first with the commit's request held
/// short of the server (the commit never made), then with the server's answer held (the commit
/// made, the loader never told, its Kafka transaction never committed). Each successor goes on
/// from the table's positions: the table holds every record once (a successor trusting the
/// group's offsets would load the second held commit's rows twice), and the bad records are dead
/// letters once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clean_record_is_a_row_once_across_kill_9_inside_commits() -> anyhow::Result<()> {
    let stack = Stack::start(&[(LAKE_DLQ, 1)]).await?;
    let place = Place::s3().await?;
    let gate = place.gate().context("an S3 place has a gate")?;
    let load = Load::prepare(&stack, &place, 10).await?;
    let telemetry = load.telemetry;
    let mut loader = load.start().await?;
    let produced = load.produce(&stack, 0).await?;
    // The first third committed (all of it but the two bad records): the next commit is made
    // of the next third's rows, not of these or of the table's creation.
    let rows = (produced - bad_lines().lines.len()) as f64;
    wait_until(DRAIN, || async {
        metrics::total(telemetry, metric::ROWS).await >= rows
    })
    .await
    .map_err(|e| anyhow::anyhow!("committing {rows} rows: {e:#}\n{}", loader.logs()))?;
    for (round, hold) in [(1, Hold::Request), (2, Hold::Answer)] {
        let held = gate.hold_commit(hold);
        load.produce(&stack, round).await?;
        tokio::time::timeout(DRAIN, held)
            .await
            .with_context(|| format!("no commit to hold ({hold:?})\n{}", loader.logs()))??;
        loader.kill9()?;
        // Drops the held connection.
        gate.close();
        gate.reopen();
        loader = load.start().await?;
    }
    load.check(&stack, &place, loader).await
}

/// A second loader joins the group while the first loads, then the first stops: partitions move
/// between them twice (their uncommitted rows are dropped and read again from the table's
/// positions), and the table, partitioned by day and server, still holds every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_loader_joining_and_leaving_duplicates_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(&[(LAKE_DLQ, 1)]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let game = Game::generate(8, EVENTS, 50, 0);
    let files = game.lines(&schemas)?;
    let expected = oracle(&game, &files);
    let place = Place::local(&stack);
    let uri = place.uri.as_str();
    // Partitioned by a column of the schemas too: both readers must find the rows in the
    // directories of two partition columns.
    let extra = "flush_age = \"300ms\"\npartition_by = [\"dt\", \"server\"]\n";
    let (first_config, first_telemetry) = config(&stack, "l1", uri, extra)?;
    let (second_config, second_telemetry) = config(&stack, "l2", uri, extra)?;

    let longest = Game::longest(&files);
    let thirds = [0, longest / 3, 2 * longest / 3, longest];
    let mut first = service::start(LAKE, &first_config, first_telemetry).await?;
    stack.produce(CLEAN, &files, thirds[0]..thirds[1]).await?;
    wait_until(DRAIN, || async {
        metrics::total(first_telemetry, metric::ROWS).await > 0.0
    })
    .await?;

    let mut second = service::start(LAKE, &second_config, second_telemetry).await?;
    // The next third once both own partitions: produced before, it may all be committed by the
    // first before the rebalance, leaving the second nothing to load.
    wait_until(DRAIN, || async {
        let first = metrics::total(first_telemetry, metric::PARTITIONS).await;
        let second = metrics::total(second_telemetry, metric::PARTITIONS).await;
        first > 0.0 && second > 0.0
    })
    .await?;
    stack.produce(CLEAN, &files, thirds[1]..thirds[2]).await?;
    // Both own partitions and commit.
    wait_until(DRAIN, || async {
        metrics::total(second_telemetry, metric::ROWS).await > 0.0
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "the second loader committed no row: {e:#}\nfirst: {}\nsecond: {}",
            first.logs(),
            second.logs()
        )
    })?;

    service::stop(&mut first).await?;
    stack.produce(CLEAN, &files, thirds[2]..thirds[3]).await?;
    let drained = wait_until(DRAIN, || async { place.count().await >= expected.len() }).await;
    if let Err(e) = drained {
        let missing = missing(&stack, &place, &expected).await?;
        anyhow::bail!("{e:#}: {missing}\n{}", second.logs());
    }
    service::stop(&mut second).await?;
    let days = std::fs::read_dir(uri)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    assert!(
        days.iter()
            .filter(|d| d
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dt=")))
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .any(|e| e.file_name().to_string_lossy().starts_with("server=")),
        "no dt=*/server=* directory in {days:?}"
    );
    assert_table(uri, &[], &expected).await
}
