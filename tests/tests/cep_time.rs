//! The CEP worker's timed rules end to end: a sequence ("level 3, then a PVP win within a
//! minute") and a tumbling window ("3 PVP wins in a minute") over game events whose records
//! arrive out of event-time order (up to about 20 s, inside the rules' 30 s `max_out_of_order`), plus
//! some written 10 minutes late on purpose.
//!
//! The matches must equal, per (rule, key), what an oracle computes here by brute force from the
//! events' times; the late events must all be on `cep.late`, and nothing else. A second run
//! produces the same records in another order (each file's lines shuffled, same ids) and kills
//! the worker with SIGKILL mid-stream: it must emit the very same match ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use logpipe_core::record::{cep_header, FileId, CEP_LATE_TOPIC};
use logpipe_devkit::harness::wait_until;
use logpipe_tests::cep::*;
use logpipe_tests::validator::{Lines, Stack, CLEAN};
use logpipe_tests::{service, topic};
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
max_out_of_order: 30s
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
max_out_of_order: 30s
event_list:
  - conditions: [{field: event, value: pvp_win, operator: equals}]
    count: 3
repeat: once
"#;

/// Game events with times out of order by up to [`DISORDER_MS`] (all distinct), and every
/// [`LATE_EVERY`]th event of the second half [`LATE_MS`] late.
fn game() -> (Game, BTreeSet<usize>) {
    let mut game = Game::generate(16, EVENTS, PLAYERS, 0);
    let mut rng = StdRng::seed_from_u64(16);
    let mut late = BTreeSet::new();
    for (i, e) in game.events.iter_mut().enumerate() {
        let back = rng.random_range(0..DISORDER_MS / 250);
        // Distinct: i % 250 tells apart events whose steps back could collide.
        e.event_time = BASE_MS + 250 * (i as i64 - back) + (i % 250) as i64;
        if i > EVENTS / 2 && i % LATE_EVERY == 0 {
            e.event_time -= LATE_MS;
            late.insert(i);
        }
    }
    (game, late)
}

fn is_level3(e: &Event) -> bool {
    e.kind == "level_up" && e.level == 3
}

/// Matches per (rule, key) by brute force over each player's events in event-time order.
fn oracle(game: &Game, late: &BTreeSet<usize>) -> BTreeMap<(String, String), usize> {
    let mut by_player: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for (i, e) in game.events.iter().enumerate() {
        if !late.contains(&i) {
            by_player.entry(&e.player).or_default().push(e);
        }
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
                && value["late_by_ms"].as_i64().unwrap_or(0) > LATE_MS - DISORDER_MS - 60_000,
            "a late record whose headers and value disagree: {headers:?} {value}"
        );
        let id = value["event"]["id"].as_str().unwrap_or_default();
        // `<host>/<file>/<offset>`: the file and offset identify the event.
        let id = id.split_once('/').map_or(id, |(_, rest)| rest).to_owned();
        out.insert((rule, id));
    }
    Ok(out)
}

/// Puts the two rules and produces every file's lines, 4 per file at a time (interleaved as
/// agents would); with `shuffle`, in another order and with the worker killed and restarted
/// halfway. Waits until the expected matches are all there; returns them and the late events.
async fn run(
    game: &Game,
    late: &BTreeSet<usize>,
    shuffle: bool,
) -> anyhow::Result<(Vec<Seen>, BTreeSet<(String, String)>)> {
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
        // Four lines of each file at a time: six files share four partitions, so bigger runs
        // would put one file's events far behind another's in the same partition.
        let end = (start + 4).min(longest);
        written += stack.produce(CLEAN, &files, start..end).await?;
        if (end / 4) % 5 == 0 || end == longest {
            // Read before more is written, so the late events meet a watermark that has moved
            // past them (a record is judged against the progress of the batches before its own).
            progress
                .wait_clean_committed(written as i64, Duration::from_secs(60))
                .await?;
        }
        if shuffle && start <= longest / 2 && end > longest / 2 {
            worker.kill9()?;
            worker = service::start(CEP, &config, telemetry).await?;
        }
        start = end;
    }
    let expected = oracle(game, late);
    let total: usize = expected.values().sum();
    // Matches come once the watermark passes their events: after the last records, when the
    // idle partitions follow the wall clock.
    if let Err(e) = wait_until(Duration::from_secs(120), || async {
        read_matches(&stack).await.map(|s| s.len()).unwrap_or(0) >= total
    })
    .await
    {
        let seen = read_matches(&stack).await?;
        assert_matches(&seen, &expected);
        anyhow::bail!("{e:#}\n{}", worker.logs());
    }
    let seen = read_matches(&stack).await?;
    assert_matches(&seen, &expected);
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
    let (game, late) = game();
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
