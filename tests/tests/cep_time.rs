//! The CEP worker's timed rules end to end: a sequence ("level 3, then a PVP win within a
//! minute") and a tumbling window ("3 PVP wins in a minute") over game events whose records
//! arrive out of event-time order (up to about 45 s, inside the rules' 60 s `max_out_of_order`), plus
//! some written 10 minutes late on purpose.
//!
//! The matches must equal, per (rule, key), what an oracle computes here by brute force from the
//! events' times; the late events must all be on `cep.late`, and nothing else. A second run
//! produces the same records in another order (each file's lines shuffled, same ids) and kills
//! the worker with SIGKILL mid-stream: it must emit the very same match ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use logpipe_core::metric_names::cep;
use logpipe_core::record::{cep_header, FileId, CEP_LATE_TOPIC};
use logpipe_devkit::harness::{wait_until, Process};
use logpipe_tests::cep::*;
use logpipe_tests::validator::{Lines, Stack, CLEAN};
use logpipe_tests::{metrics, service, topic};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::Message as _;
use serde_json::Value;

const EVENTS: usize = 2_000;
const PLAYERS: usize = 20;
const BASE_MS: i64 = 1_700_000_000_000;
/// How far back an event may be from its place in the stream, and the rules' allowance.
const DISORDER_MS: i64 = 8_000;
/// Every this many events in the second half, one is written 10 minutes late.
const LATE_EVERY: usize = 37;
const LATE_MS: i64 = 600_000;
const WITHIN_MS: i64 = 60_000;

const SEQUENCE: &str = r#"
source: clean.game
key: player_id
ordered: true
within: 1m
max_out_of_order: 60s
event_list:
  - when: 'event == "level_up" && level == 3'
  - conditions: [{field: event, value: pvp_win, operator: equals}]
repeat: every
output: {value: {mission: climber}}
"#;

const WINDOW: &str = r#"
source: clean.game
key: player_id
window: {tumbling: 1m}
max_out_of_order: 60s
event_list:
  - conditions: [{field: event, value: pvp_win, operator: equals}]
    count: 3
repeat: once
"#;

/// Game events from `start_ms` with times out of order by up to [`DISORDER_MS`] (all
/// distinct), and with `late`, every [`LATE_EVERY`]th event of the second half [`LATE_MS`]
/// late.
fn game(seed: u64, start_ms: i64, late: bool) -> (Game, BTreeSet<usize>) {
    let mut game = Game::generate(seed, EVENTS, PLAYERS, 0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut late_ones = BTreeSet::new();
    for (i, e) in game.events.iter_mut().enumerate() {
        let back = rng.random_range(0..DISORDER_MS / 250);
        // Distinct: i % 250 tells apart events whose steps back could collide.
        e.event_time = start_ms + 250 * (i as i64 - back) + (i % 250) as i64;
        if late && i > EVENTS / 2 && i % LATE_EVERY == 0 {
            e.event_time -= LATE_MS;
            late_ones.insert(i);
        }
    }
    (game, late_ones)
}

fn is_level3(e: &Event) -> bool {
    e.kind == "level_up" && e.level == 3
}

/// Matches per (rule, key) by brute force over each player's events in event-time order.
fn oracle(game: &Game, late: &BTreeSet<usize>) -> BTreeMap<(String, String), usize> {
    let events: Vec<&Event> = game
        .events
        .iter()
        .enumerate()
        .filter(|(i, _)| !late.contains(i))
        .map(|(_, e)| e)
        .collect();
    oracle_of(&events)
}

fn oracle_of(all: &[&Event]) -> BTreeMap<(String, String), usize> {
    let mut by_player: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in all {
        by_player.entry(&e.player).or_default().push(e);
    }
    let mut expected = BTreeMap::new();
    for (player, mut events) in by_player {
        events.sort_by_key(|e| e.event_time);
        // The sequence: the earliest PVP win with a level 3 at most a minute before it, after
        // the previous match.
        let (mut matches, mut from) = (0, 0);
        while let Some(j) = (from..events.len()).find(|&j| {
            events[j].kind == "pvp_win"
                && events[from..j]
                    .iter()
                    .any(|e| is_level3(e) && events[j].event_time - e.event_time <= WITHIN_MS)
        }) {
            matches += 1;
            from = j + 1;
        }
        if matches > 0 {
            expected.insert(("climb".to_owned(), player.to_owned()), matches);
        }
        // The window: minutes with three wins or more.
        let mut wins: BTreeMap<i64, usize> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == "pvp_win") {
            *wins.entry(e.event_time.div_euclid(60_000)).or_default() += 1;
        }
        let minutes = wins.values().filter(|n| **n >= 3).count();
        if minutes > 0 {
            expected.insert(("wins3".to_owned(), player.to_owned()), minutes);
        }
    }
    expected
}

/// The (rule, event id) pairs `cep.late` must hold: each late event for each rule it satisfies.
fn expected_late(game: &Game, late: &BTreeSet<usize>) -> BTreeSet<(String, String)> {
    let ids = game.record_ids();
    let mut out = BTreeSet::new();
    for i in late {
        let e = &game.events[*i];
        let id = format!("{}/{}", FileId(ids[*i].0).to_hex(), ids[*i].1);
        if e.kind == "pvp_win" {
            out.insert(("climb".to_owned(), id.clone()));
            out.insert(("wins3".to_owned(), id));
        } else if is_level3(e) {
            out.insert(("climb".to_owned(), id));
        }
    }
    out
}

/// What `cep.late` holds: (rule, `<file>/<offset>` of the event id), checked against headers.
async fn read_late(stack: &Stack) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    for m in stack.read(CEP_LATE_TOPIC).await? {
        let value: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let headers = topic::text_headers(&m);
        let rule = value["rule"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            headers.get(cep_header::RULE) == Some(&rule)
                && headers.get(cep_header::LATE_BY_MS) == Some(&value["late_by_ms"].to_string())
                && value["late_by_ms"].as_i64().unwrap_or(0) > LATE_MS / 2,
            "a late record whose headers and value disagree: {headers:?} {value}"
        );
        let id = value["event"]["id"].as_str().unwrap_or_default();
        // `<host>/<file>/<offset>`: the file and offset identify the event.
        let id = id.split_once('/').map_or(id, |(_, rest)| rest).to_owned();
        out.insert((rule, id));
    }
    Ok(out)
}

/// Waits until as many matches as `expected` has are committed (they come once the watermark
/// passes their events: after the last records, when idle partitions follow the wall clock),
/// then asserts they are exactly the expected ones.
async fn wait_for_matches(
    stack: &Stack,
    expected: &BTreeMap<(String, String), usize>,
    worker: &Process,
) -> anyhow::Result<Vec<Seen>> {
    let total: usize = expected.values().sum();
    let enough = wait_until(Duration::from_secs(120), || async {
        read_matches(stack).await.map(|s| s.len()).unwrap_or(0) >= total
    })
    .await;
    let seen = read_matches(stack).await?;
    assert_matches(&seen, expected);
    if let Err(e) = enough {
        anyhow::bail!("{e:#}\n{}", worker.logs());
    }
    Ok(seen)
}

/// Puts the two rules and produces every file's lines, 20 per file at a time (interleaved as
/// agents would); with `shuffle`, in another order and with the worker killed and restarted
/// halfway. Waits until the expected matches are all there; returns them and the late events.
async fn run(
    game: &Game,
    late: &BTreeSet<usize>,
    shuffle: bool,
) -> anyhow::Result<(Vec<Seen>, BTreeSet<(String, String)>)> {
    let started = std::time::Instant::now();
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "t", "w1", "idle_timeout = \"2s\"", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    for (name, body) in [("climb", SEQUENCE), ("wins3", WINDOW)] {
        let (status, answer) = api.put(name, body, false).await?;
        anyhow::ensure!(status == 200, "PUT {name}: {status} {answer}");
    }
    let mut files: Vec<Lines> = game.lines(&schemas)?;
    if shuffle {
        // Another arrival order of the same records (same ids): the lines of each file shuffled
        // within runs of 4, which keeps the disorder inside max_out_of_order.
        let mut rng = StdRng::seed_from_u64(99);
        for file in &mut files {
            for run in file.lines.chunks_mut(4) {
                run.shuffle(&mut rng);
            }
        }
    }
    let longest = Game::longest(&files);
    let progress = Progress::new(&stack, "t")?;
    let (mut start, mut written) = (0, 0);
    while start < longest {
        // Twenty lines of each file at a time: six files share four partitions, so a run of
        // one file's lines (120 events, 30 s) precedes another's in the same partition.
        let end = (start + 20).min(longest);
        written += stack.produce(CLEAN, &files, start..end).await?;
        // Read before more is written, so the late events meet a watermark that has moved past
        // them (a record is judged against the progress of the batches before its own).
        progress
            .wait_clean_committed(written as i64, Duration::from_secs(60))
            .await?;
        if shuffle && start <= longest / 2 && end > longest / 2 {
            worker.kill9()?;
            worker = service::start(CEP, &config, telemetry).await?;
        }
        start = end;
    }
    eprintln!(
        "{:?}: {written} records written and read",
        started.elapsed()
    );
    let seen = wait_for_matches(&stack, &oracle(game, late), &worker).await?;
    eprintln!("{:?}: every match is there", started.elapsed());
    let late_seen = read_late(&stack).await?;
    if late_seen != expected_late(game, late) {
        let (_, status) = api.get_path("/climb/status").await?;
        eprintln!("climb: {status}\n{}", worker.logs());
    }
    service::stop(&mut worker).await?;
    Ok((seen, late_seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_rules_judge_by_event_time_whatever_the_arrival_order() -> anyhow::Result<()> {
    let (game, late) = game(16, BASE_MS, true);
    let expected = oracle(&game, &late);
    for rule in ["climb", "wins3"] {
        let n: usize = expected
            .iter()
            .filter(|((r, _), _)| r == rule)
            .map(|(_, n)| n)
            .sum();
        assert!(
            n >= 10,
            "{rule}: the stream exercises the rule: {n} matches"
        );
    }
    let late_expected = expected_late(&game, &late);
    assert!(late_expected.len() >= 5, "{late_expected:?}");

    let (first, late_first) = run(&game, &late, false).await?;
    assert_eq!(
        late_first, late_expected,
        "cep.late holds exactly the late events"
    );
    let (second, late_second) = run(&game, &late, true).await?;
    assert_eq!(late_second, late_expected);
    let ids = |seen: &[Seen]| -> BTreeSet<(String, String, String)> {
        seen.iter()
            .map(|s| (s.rule.clone(), s.key.clone(), s.match_id.clone()))
            .collect()
    };
    assert_eq!(
        ids(&first),
        ids(&second),
        "another arrival order and a SIGKILL give other matches"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_the_history_then_goes_live_with_nothing_twice() -> anyhow::Result<()> {
    // History written before the rule exists, then live events that go on from it: sequences
    // span the two.
    let (history, _) = game(21, BASE_MS, false);
    let (live, _) = game(22, BASE_MS + EVENTS as i64 * 250 + 10_000, false);
    let all: Vec<&Event> = history.events.iter().chain(&live.events).collect();
    let expected: BTreeMap<(String, String), usize> = oracle_of(&all)
        .into_iter()
        .filter(|((rule, _), _)| rule == "climb")
        .collect();
    let from_history: usize = oracle(&history, &BTreeSet::new())
        .iter()
        .filter(|((rule, _), _)| rule == "climb")
        .map(|(_, n)| n)
        .sum();
    assert!(from_history >= 10 && expected.values().sum::<usize>() > from_history);

    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    // Written as agents would, twenty lines of each file at a time: files sharing a partition
    // interleave, so the history is out of order by less than max_out_of_order. Written file
    // after file, one file's events would be minutes older than the other's before them, late
    // or not depending on where the replay's batches end.
    let files = history.lines(&schemas)?;
    let longest = Game::longest(&files);
    for start in (0..longest).step_by(20) {
        stack
            .produce(CLEAN, &files, start..(start + 20).min(longest))
            .await?;
    }
    // Idle partitions follow the wall clock, years after these events: a pause in writing the
    // live part longer than idle_timeout would make what follows late. 5 s leaves room for a
    // loaded machine and still closes the last sequences soon after the last event.
    let (config, telemetry) = config(&stack, "r", "w1", "idle_timeout = \"5s\"", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    let (status, answer) = api
        .put("climb", &format!("{SEQUENCE}from: earliest\n"), false)
        .await?;
    anyhow::ensure!(status == 200, "PUT climb: {status} {answer}");
    let (_, stored) = api.get_path("/climb/versions/1").await?;
    anyhow::ensure!(stored.to_string().contains("replay"), "{stored}");
    let files = live.lines(&schemas)?;
    let longest = Game::longest(&files);
    for start in (0..longest).step_by(20) {
        stack
            .produce(CLEAN, &files, start..(start + 20).min(longest))
            .await?;
    }
    wait_for_matches(&stack, &expected, &worker).await?;
    // Old events are not late for being old.
    assert!(read_late(&stack).await?.is_empty());
    service::stop(&mut worker).await?;
    Ok(())
}

/// Issue 19: a hot key while the watermark stands still holds ever more events, and its state is
/// one changelog record. Past the producer's `message.max.bytes` that record failed every
/// transaction and the worker stalled for good. Now the key holds what one record takes, the
/// events beyond go to cep.late marked `key_state_full` and counted, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_never_outgrows_a_changelog_record() -> anyhow::Result<()> {
    const MAX_RECORD: usize = 30_000;
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    // One player, and a watermark that does not pass the events: they are all held.
    let game = Game::generate(31, 2_000, 1, 0);
    let (config, telemetry) = config(&stack, "hot", "w1", "idle_timeout = \"10m\"", "")?;
    let text = std::fs::read_to_string(&config)?.replace(
        "\"heartbeat.interval.ms\" = 500\n",
        &format!("\"heartbeat.interval.ms\" = 500\n\"message.max.bytes\" = {MAX_RECORD}\n"),
    );
    std::fs::write(&config, text)?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    let rule = SEQUENCE.replace("max_out_of_order: 60s", "max_out_of_order: 1d");
    let (status, answer) = api.put("climb", &rule, false).await?;
    anyhow::ensure!(status == 200, "PUT climb: {status} {answer}");
    let files = game.lines(&schemas)?;
    let written = stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;

    // Everything read and committed: no transaction is stuck on a record too large.
    let progress = Progress::new(&stack, "hot")?;
    if let Err(e) = progress
        .wait_clean_committed(written as i64, Duration::from_secs(90))
        .await
    {
        anyhow::bail!("{e:#}\n{}", worker.logs());
    }
    // The refused events are in cep.late, marked, each counted; the key holds the rest.
    let refused = || async {
        let records = stack.read(CEP_LATE_TOPIC).await.unwrap_or_default();
        records
            .iter()
            .filter(|m| {
                topic::text_headers(*m)
                    .get(cep_header::REFUSED)
                    .map(String::as_str)
                    == Some("key_state_full")
            })
            .count() as f64
    };
    let counted = || metrics::total(telemetry, cep::RULE_EVENTS_REFUSED);
    // The key's state record in the changelog: as large as a record may be, no larger.
    let state_topic = logpipe_core::record::cep_state_topic("hot");
    let held = || async {
        let records = stack.read(&state_topic).await.unwrap_or_default();
        records
            .iter()
            .filter(|m| m.key().is_some_and(|k| k.ends_with(b"p-000")))
            .filter_map(|m| m.payload().map(<[u8]>::len))
            .max()
            .unwrap_or(0)
    };
    let settled = wait_until(Duration::from_secs(30), || async {
        let n = refused().await;
        let held = held().await;
        n > 0.0 && n == counted().await && held > MAX_RECORD / 2 && held < MAX_RECORD
    })
    .await;
    let aborted = metrics::total(telemetry, cep::TRANSACTIONS_ABORTED).await;
    eprintln!(
        "{written} records: the key's state record {} bytes, {} refused (metric {}), {aborted} transactions aborted",
        held().await,
        refused().await,
        counted().await
    );
    assert_eq!(
        aborted,
        0.0,
        "no transaction may fail on the hot key's state\n{}",
        worker.logs()
    );
    if let Err(e) = settled {
        anyhow::bail!(
            "{e:#}: the hot key must fill up, its refused events be counted, the rest held\n{}",
            worker.logs()
        );
    }
    // The rule's status says what the key holds, though no batch comes any more.
    wait_until(Duration::from_secs(10), || async {
        let status = api.get_path("/climb/status").await.map(|(_, s)| s);
        status.is_ok_and(|s| s["events_held"].as_u64().unwrap_or(0) > 50)
    })
    .await?;
    service::stop(&mut worker).await?;
    Ok(())
}
