//! The CEP worker end to end: a dev cluster, the real schema store with the game schemas, and
//! `logpipe-cep` processes. Rules are put over HTTP; a seeded stream of game events is written to
//! `clean.game` in the wire format, agent-style; the matches read back with read_committed from
//! `cep.matches` must equal, per (rule, key), what an oracle computed here from the same events
//! expects, with no match id twice.
//!
//! Sizes fit the CI budget (two cores, debug builds): 3,000 events over 50 players.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logpipe_core::metric_names::cep;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::cep::*;
use logpipe_tests::validator::{Stack, CLEAN};
use logpipe_tests::{metrics, service};

const EVENTS: usize = 3_000;
const PLAYERS: usize = 50;
/// Players whose events are all in one partition (see `Game::generate`).
const PINNED: usize = 10;
const DRAIN: Duration = Duration::from_secs(120);

/// One worker, undisturbed, over `game` on a stack of its own; asserts the matches equal the
/// oracle exactly and returns them.
async fn clean_run(game: &Game) -> anyhow::Result<Vec<Seen>> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "g", "w1", "", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    RulesApi::new(telemetry)?.seed().await?;

    // Produced after the rules are stored: a version counts records not older than itself.
    let files = game.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    if let Err(e) = Progress::new(&stack, "g")?.wait_drained(DRAIN).await {
        anyhow::bail!("{e:#}\n{}", worker.logs());
    }

    let seen = read_matches(&stack).await?;
    assert_matches(&seen, &game.oracle());
    assert!(seen.iter().all(|s| s.version == 1));
    service::stop(&mut worker).await?;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_equal_the_oracle_exactly() -> anyhow::Result<()> {
    let game = Game::generate(1, EVENTS, PLAYERS, PINNED);
    let expected = game.oracle();
    assert!(
        RULES
            .iter()
            .map(|(rule, _, _)| rule)
            .all(|rule| expected.keys().any(|(r, _)| r == rule)),
        "the stream exercises every rule: {expected:?}"
    );
    assert!(
        expected
            .keys()
            .filter(|(_, key)| key.starts_with("p-"))
            .count()
            < 3 * PLAYERS,
        "some players miss some rules: {expected:?}"
    );
    clean_run(&game).await?;
    Ok(())
}

/// The match ids of the players pinned to one partition, per (rule, key), in order of
/// production: with the events of a key in one partition, its order of counting, and thus each
/// match's contributing events and id, is the same in every run.
fn pinned_ids(seen: &[Seen]) -> BTreeMap<(String, String), Vec<String>> {
    let mut ids: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in seen.iter().filter(|s| Game::is_pinned(&s.key, PINNED)) {
        ids.entry((s.rule.clone(), s.key.clone()))
            .or_default()
            .push(s.match_id.clone());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_kill9s_and_a_worker_joining_and_leaving() -> anyhow::Result<()> {
    let game = Game::generate(2, EVENTS, PLAYERS, PINNED);
    let expected = game.oracle();
    let started = Instant::now();
    let clean = clean_run(&game).await?;
    eprintln!("clean run: {:?}", started.elapsed());

    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let files = game.lines(&schemas)?;
    // Small transactions, so that a kill lands between many of them.
    let (c1, t1) = config(&stack, "g", "w1", "batch_records = 100", "")?;
    let (c2, t2) = config(&stack, "g", "w2", "batch_records = 100", "")?;
    let mut w1 = service::start(CEP, &c1, t1).await?;
    RulesApi::new(t1)?.seed().await?;
    let mut progress = Progress::new(&stack, "g")?;
    let longest = Game::longest(&files);
    let parts: Vec<std::ops::Range<usize>> = (0..6)
        .map(|i| i * longest / 6..(i + 1) * longest / 6)
        .collect();
    // Produces a part and waits until the group has committed some of it (or of what was left
    // before it): the fault that follows lands mid-stream.
    let part = |i: usize| {
        let (stack, files, progress, range, started) =
            (&stack, &files, &progress, parts[i].clone(), &started);
        async move {
            let before = tokio::task::block_in_place(|| progress.clean_committed())?;
            let n = stack.produce(CLEAN, files, range).await?;
            progress
                .wait_clean_committed(before + 1, Duration::from_secs(120))
                .await?;
            let now = tokio::task::block_in_place(|| progress.clean_committed())?;
            eprintln!(
                "{:?}: part {i}: {n} records written, {before} then {now} committed as read",
                started.elapsed()
            );
            anyhow::Ok(())
        }
    };

    part(0).await?;
    w1.kill9()?;
    // Written while no worker runs.
    stack.produce(CLEAN, &files, parts[1].clone()).await?;
    w1 = service::start(CEP, &c1, t1).await?;
    part(2).await?;
    let mut w2 = service::start(CEP, &c2, t2).await?;
    part(3).await?;
    w1.kill9()?;
    part(4).await?;
    w1 = service::start(CEP, &c1, t1).await?;
    part(5).await?;
    // The second worker took a share of the work before it leaves.
    wait_until(Duration::from_secs(60), || async {
        metrics::total(t2, cep::EVENTS).await > 0.0
    })
    .await?;
    service::stop(&mut w2).await?;
    progress.wait_drained(DRAIN).await?;
    eprintln!("{:?}: drained", started.elapsed());

    let seen = read_matches(&stack).await?;
    assert_matches(&seen, &expected);
    let (crash, clean) = (pinned_ids(&seen), pinned_ids(&clean));
    assert!(!clean.is_empty());
    assert_eq!(
        crash, clean,
        "match ids of the pinned players differ from a clean run's"
    );
    service::stop(&mut w1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_api_checks_documents_fields_and_credentials() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let password = "s3cret-cep";
    let hash = logpipe_core::auth::hash_password(password);
    let auth = format!(
        "[auth]\nanonymous_read = true\n[[auth.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nrole = \"write\"\n"
    );
    let (config, telemetry) = config(&stack, "api", "w1", "", &auth)?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let anonymous = RulesApi::new(telemetry)?;
    let api = RulesApi::new(telemetry)?.with_credentials("ops", password);
    let (pvp, pvp_body, _) = RULES[0];

    // Anonymous writes are refused; a wrong password too.
    let (status, body) = anonymous.put(pvp, pvp_body, false).await?;
    assert_eq!(status, 401, "{body}");
    let (status, body) = RulesApi::new(telemetry)?
        .with_credentials("ops", "wrong")
        .put(pvp, pvp_body, false)
        .await?;
    assert_eq!(status, 401, "{body}");
    let (status, body) = anonymous.get(pvp).await?;
    assert_eq!(status, 404, "{body}");

    // A bad document names the key at fault.
    let bad = "source: clean.game\nkey: player_id\nevent_list:\n  - conditions: [{field: event, value: pvp_win}]\n    count: 0\n";
    let (status, body) = api.put("bad", bad, false).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["key"], "event_list[0].count", "{body}");
    let (status, body) = api
        .put(
            "bad",
            r#"{"source": "clean.game", "key": "player_id", "evnt_list": []}"#,
            true,
        )
        .await?;
    assert_eq!(
        (status, body["key"].as_str()),
        (400, Some("evnt_list")),
        "{body}"
    );

    // Before clean.game has records, fields cannot be checked: stored with a warning.
    let typo = "source: clean.game\nkey: player_id\nwhen: 'event == \"level_up\" && levle == 3'\n";
    let (status, body) = api.put("typo", typo, false).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{body}"
    );
    // Once it has records, a field no schema of theirs has is refused, naming the key.
    let game = Game::generate(3, 20, 5, 0);
    let files = game.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    let (status, body) = api.put("typo2", typo, false).await?;
    assert_eq!(status, 400, "{body}");
    // A lone `when` is step 0 of the rule.
    assert!(
        body["key"].as_str().is_some_and(|k| k.ends_with("when")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap_or_default().contains("levle"),
        "{body}"
    );
    let bad_key = "source: clean.game\nkey: playerid\nwhen: 'event == \"login\"'\n";
    let (status, body) = api.put("typo3", bad_key, false).await?;
    assert_eq!((status, body["key"].as_str()), (400, Some("key")), "{body}");
    let (status, body) = api.get("typo2").await?;
    assert_eq!(status, 404, "a refused rule is not stored: {body}");

    // A dry run over the records there are counts what the rule would: every PVP win.
    let each_win = "source: clean.game\nkey: player_id\nrepeat: every\nevent_list:\n  - {conditions: [{field: event, value: pvp_win}], count: 1}\n";
    let (status, body) = api.test("dry", each_win).await?;
    assert_eq!(status, 200, "{body}");
    let wins = game.events.iter().filter(|e| e.kind == "pvp_win").count();
    assert_eq!(
        (
            body["records_read"].as_u64(),
            body["undecodable"].as_u64(),
            body["matches"].as_u64()
        ),
        (Some(20), Some(0), Some(wins as u64)),
        "{body}"
    );

    // Versions increase with every write, a deletion included; GET shows created_at.
    let mut versions = Vec::new();
    for _ in 0..2 {
        let (status, body) = api.put(pvp, pvp_body, false).await?;
        assert_eq!(status, 200, "{body}");
        versions.push(body["version"].as_u64().unwrap());
    }
    let (status, body) = api.get(pvp).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"].as_u64(), versions.last().copied(), "{body}");
    assert!(
        body["created_at"].as_str().is_some_and(|t| t.contains('T')),
        "{body}"
    );
    assert_eq!(body["document"]["key"], "player_id", "{body}");
    let (status, body) = anonymous.delete(pvp).await?;
    assert_eq!(status, 401, "{body}");
    let (status, body) = api.delete(pvp).await?;
    assert_eq!(status, 200, "{body}");
    versions.push(body["version"].as_u64().unwrap());
    let (status, body) = api.get(pvp).await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.delete(pvp).await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.put(pvp, pvp_body, false).await?;
    assert_eq!(status, 200, "{body}");
    versions.push(body["version"].as_u64().unwrap());
    assert_eq!(versions, [1, 2, 3, 4], "versions never repeat");
    // Earlier versions stay readable; the list shows the current ones.
    let (status, body) = anonymous.get_path(&format!("/{pvp}/versions/1")).await?;
    assert_eq!((status, body["version"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = anonymous.get_path("").await?;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<(&str, u64)> = body
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["name"].as_str()?, r["version"].as_u64()?)))
        .collect();
    assert_eq!(listed, [(pvp, 4), ("typo", 1)], "{body}");

    // Timed rules: their keys are checked too, and a schedule shows in the status.
    let win = "source: clean.game\nkey: player_id\nevent_list:\n  - {conditions: [{field: event, value: pvp_win}]}\n";
    for (extra, key) in [
        ("within: 30d\n", "within"),
        ("window: {tumbling: 1x}\n", "window.tumbling"),
        ("from: earliest\n", "from"),
        ("ordered: true\nwithin: 1h\n", "ordered"),
        ("group_by: [server]\n", "group_by"),
    ] {
        let (status, body) = api.put("timed", &format!("{win}{extra}"), false).await?;
        assert_eq!(
            (status, body["key"].as_str()),
            (400, Some(key)),
            "{extra}: {body}"
        );
    }
    for (name, schedule, state) in [
        ("future", "{starts_at: 2099-01-01T00:00:00Z}", "scheduled"),
        ("over", "{ends_at: 2001-01-01T00:00:00Z}", "ended"),
        ("open", "{starts_at: 2001-01-01T00:00:00Z}", "active"),
    ] {
        let (status, body) = api
            .put(name, &format!("{win}schedule: {schedule}\n"), false)
            .await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = anonymous.get_path(&format!("/{name}/status")).await?;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some(state)),
            "{body}"
        );
    }

    service::stop(&mut worker).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_counts_from_zero_and_a_deleted_rule_stops() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "g", "w1", "batch_records = 100", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    api.seed().await?;
    let mut progress = Progress::new(&stack, "g")?;

    // Before: every rule at version 1.
    let before = Game::generate(4, EVENTS / 2, PLAYERS, 0);
    let files = before.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    progress.wait_drained(DRAIN).await?;

    // pvp_win gets version 2 (the same document: a new version all the same) and buy2_win3 is
    // deleted (version 2). level3 goes on.
    let (pvp, pvp_body, _) = RULES[0];
    let (status, body) = api.put(pvp, pvp_body, false).await?;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{body}");
    let (status, body) = api.delete("buy2_win3").await?;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{body}");
    // The worker counts with the new rules once it has dropped the old versions' state.
    wait_until(Duration::from_secs(30), || async {
        tombstoned(&stack, "g", pvp, 1).await.unwrap_or(false)
            && tombstoned(&stack, "g", "buy2_win3", 1)
                .await
                .unwrap_or(false)
    })
    .await?;

    // After, with a kill -9 mid-stream: the restarted worker restores the new versions only.
    let after = Game::generate(5, EVENTS / 2, PLAYERS, 0);
    let files = after.lines(&schemas)?;
    let half = Game::longest(&files) / 2;
    let at = tokio::task::block_in_place(|| progress.clean_committed())?;
    stack.produce(CLEAN, &files, 0..half).await?;
    progress
        .wait_clean_committed(at + 1, Duration::from_secs(60))
        .await?;
    worker.kill9()?;
    stack
        .produce(CLEAN, &files, half..Game::longest(&files))
        .await?;
    worker = service::start(CEP, &config, telemetry).await?;
    progress.wait_drained(DRAIN).await?;

    // The oracle per (rule@version, key).
    let versioned = |oracle: BTreeMap<(String, String), usize>, rule: &str, version: u32| {
        oracle
            .into_iter()
            .filter(|((r, _), _)| r == rule)
            .map(|((r, k), n)| ((format!("{r}@{version}"), k), n))
            .collect::<Vec<_>>()
    };
    let both = Game {
        seed: 0,
        events: before.events.iter().chain(&after.events).cloned().collect(),
    };
    let expected: BTreeMap<(String, String), usize> = versioned(before.oracle(), pvp, 1)
        .into_iter()
        .chain(versioned(after.oracle(), pvp, 2))
        .chain(versioned(before.oracle(), "buy2_win3", 1))
        .chain(versioned(both.oracle(), "level3", 1))
        .chain(versioned(both.oracle(), "server_logins", 1))
        .collect();
    let seen: Vec<Seen> = read_matches(&stack)
        .await?
        .into_iter()
        .map(|s| Seen {
            rule: format!("{}@{}", s.rule, s.version),
            ..s
        })
        .collect();
    assert_matches(&seen, &expected);
    service::stop(&mut worker).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_store_outage_pauses_counting_and_loses_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "g", "w1", "", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    RulesApi::new(telemetry)?.seed().await?;

    // The worker has fetched no schema yet: it cannot read a record until the store is back.
    stack.stop_store().await?;
    let game = Game::generate(6, EVENTS / 2, PLAYERS, 0);
    let files = game.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let ready = format!("http://{telemetry}/ready");
    wait_until(Duration::from_secs(60), || async {
        http.get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await?;
    let progress = Progress::new(&stack, "g")?;
    assert_eq!(
        tokio::task::block_in_place(|| progress.clean_committed())?,
        0,
        "nothing is committed while the records cannot be read"
    );
    worker.ensure_running()?;

    stack.start_store().await?;
    let mut progress = progress;
    progress.wait_drained(DRAIN).await?;
    wait_until(Duration::from_secs(30), || async {
        http.get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    assert_matches(&read_matches(&stack).await?, &game.oracle());
    service::stop(&mut worker).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_file_keeps_its_versions_and_state_across_restarts() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let path = logpipe_devkit::harness::write_file(stack.dir.path(), "rules.yaml", &rules_file()?)?;
    let (config, telemetry) = config(
        &stack,
        "g",
        "w1",
        &format!("rules_file = {:?}", path.display().to_string()),
        "",
    )?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    api.wait_for_rules(Duration::from_secs(10)).await?;
    let mut progress = Progress::new(&stack, "g")?;

    // Half the events, a restart with the same file, the other half: one stream to the rules.
    let game = Game::generate(7, EVENTS, PLAYERS, 0);
    let files = game.lines(&schemas)?;
    let half = Game::longest(&files) / 2;
    stack.produce(CLEAN, &files, 0..half).await?;
    progress.wait_drained(DRAIN).await?;
    service::stop(&mut worker).await?;
    worker = service::start(CEP, &config, telemetry).await?;
    for (name, _, _) in RULES {
        let (status, body) = api.get(name).await?;
        assert_eq!(
            (status, body["version"].as_u64()),
            (200, Some(1)),
            "the same document keeps its version: {body}"
        );
    }
    stack
        .produce(CLEAN, &files, half..Game::longest(&files))
        .await?;
    progress.wait_drained(DRAIN).await?;

    let seen = read_matches(&stack).await?;
    assert_matches(&seen, &game.oracle());
    assert!(seen.iter().all(|s| s.version == 1));

    // SIGHUP applies the file again: a rule added to it is stored, the others keep version 1.
    let added = "- name: wins3\n  source: clean.game\n  key: player_id\n  event_list:\n    - {conditions: [{field: event, value: pvp_win}], count: 3}\n";
    std::fs::write(&path, rules_file()? + added)?;
    worker.hangup()?;
    wait_until(Duration::from_secs(30), || async {
        api.get("wins3")
            .await
            .is_ok_and(|(status, body)| status == 200 && body["version"] == 1)
    })
    .await
    .unwrap_or_else(|_| panic!("the rules file was not applied again\n{}", worker.logs()));
    for (name, _, _) in RULES {
        assert_eq!(api.get(name).await?.1["version"], 1, "{name} was rewritten");
    }
    service::stop(&mut worker).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_put_while_the_worker_waits_counts_the_next_records() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "g", "w1", "", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    api.seed().await?;
    let mut progress = Progress::new(&stack, "g")?;
    let before = Game::generate(8, 300, PLAYERS, 0);
    let files = before.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    progress.wait_drained(DRAIN).await?;

    // The worker idles, subscribed. A rule on a key it already counts by needs no rebalance:
    // the records written right after the PUT answers are the first it counts.
    let wins2 = "source: clean.game\nkey: player_id\nrepeat: every\nevent_list:\n  - {conditions: [{field: event, value: pvp_win}], count: 2}\n";
    let (status, body) = api.put("wins2", wins2, false).await?;
    assert_eq!(status, 200, "{body}");
    let after = Game::generate(9, EVENTS / 2, PLAYERS, 0);
    let files = after.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    progress.wait_drained(DRAIN).await?;

    let both = Game {
        seed: 0,
        events: before.events.iter().chain(&after.events).cloned().collect(),
    };
    let mut expected = both.oracle();
    let mut wins: BTreeMap<&str, usize> = BTreeMap::new();
    for e in after.events.iter().filter(|e| e.kind == "pvp_win") {
        *wins.entry(e.player.as_str()).or_default() += 1;
    }
    for (player, n) in wins {
        if n >= 2 {
            expected.insert(("wins2".to_owned(), player.to_owned()), n / 2);
        }
    }
    assert_matches(&read_matches(&stack).await?, &expected);
    service::stop(&mut worker).await?;
    Ok(())
}

#[test]
fn created_at_times_read_as_the_worker_writes_them() {
    assert_eq!(
        rfc3339_ms("2023-11-14T22:13:20.123Z").unwrap(),
        1_700_000_000_123
    );
    assert_eq!(
        rfc3339_ms("2023-11-14T22:13:20Z").unwrap(),
        1_700_000_000_000
    );
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00.5Z").unwrap(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_put_mid_stream_counts_every_record_not_older_than_itself() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let (config, telemetry) = config(&stack, "g", "w1", "", "")?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let api = RulesApi::new(telemetry)?;
    api.seed().await?;
    let mut progress = Progress::new(&stack, "g")?;

    // A first few records, so the worker is subscribed and its partitions assigned.
    let warm = Game::generate(11, 100, PLAYERS, 0);
    let files = warm.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    progress.wait_drained(DRAIN).await?;

    // Records stream in small parts while the rule is put: the worker is busy when it lands.
    let game = Game::generate(10, EVENTS, PLAYERS, 0);
    let files = game.lines(&schemas)?;
    let longest = Game::longest(&files);
    let step = longest / 30 + 1;
    let parts = std::sync::atomic::AtomicUsize::new(0);
    let mut stream = {
        let (stack, files, parts) = (&stack, &files, &parts);
        Box::pin(async move {
            for start in (0..longest).step_by(step) {
                stack.produce(CLEAN, files, start..start + step).await?;
                parts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            anyhow::Ok(())
        })
    };
    let wins2 = "source: clean.game\nkey: player_id\nrepeat: every\nevent_list:\n  - {conditions: [{field: event, value: pvp_win}], count: 2}\n";
    let put = async {
        // Once a third of the stream is written.
        wait_until(Duration::from_secs(60), || async {
            parts.load(std::sync::atomic::Ordering::SeqCst) >= 10
        })
        .await?;
        api.put("wins2", wins2, false).await
    };
    let (status, body) = tokio::select! {
        r = &mut stream => { r?; anyhow::bail!("the stream ended before the rule was put") }
        r = put => r?,
    };
    assert_eq!(status, 200, "{body}");
    stream.await?;
    progress.wait_drained(DRAIN).await?;

    // The oracle: every rule over the whole stream, and wins2 over the records not older than
    // its version.
    let created = rfc3339_ms(body["created_at"].as_str().unwrap_or_default())?;
    let at = clean_timestamps(&stack).await?;
    let mut expected = Game {
        seed: 0,
        events: warm.events.iter().chain(&game.events).cloned().collect(),
    }
    .oracle();
    let mut wins: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut older, mut newer) = (0, 0);
    for (e, id) in game.events.iter().zip(game.record_ids()) {
        let ts = *at.get(&id).expect("every event is in clean.game");
        if ts < created {
            older += 1;
        } else {
            newer += 1;
            if e.kind == "pvp_win" {
                *wins.entry(e.player.as_str()).or_default() += 1;
            }
        }
    }
    assert!(
        older > 0 && newer > 0,
        "the rule lands mid-stream: {older} / {newer}"
    );
    for (player, n) in wins {
        if n >= 2 {
            expected.insert(("wins2".to_owned(), player.to_owned()), n / 2);
        }
    }
    assert_matches(&read_matches(&stack).await?, &expected);
    service::stop(&mut worker).await?;
    Ok(())
}

/// Issue 19: Schemathesis against the rules API's OpenAPI document (see
/// `logpipe_devkit::api_fuzz`): every operation, documents the schema allows and documents it
/// does not, with and without credentials. No 5xx, and every answer as documented. The worker
/// has a source with records, so rules that hold are stored and run while the fuzzer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_of_the_rules_api_that_breaks_its_document(
) -> anyhow::Result<()> {
    let Some(schemathesis) = logpipe_devkit::api_fuzz::schemathesis() else {
        return Ok(());
    };
    let stack = Stack::start(&[]).await?;
    let schemas = GameSchemas::register(&stack).await?;
    let game = Game::generate(7, 200, 10, 0);
    let files = game.lines(&schemas)?;
    stack
        .produce(CLEAN, &files, 0..Game::longest(&files))
        .await?;
    let (user, password) = ("fuzz", "fuzz-password");
    let hash = logpipe_core::auth::hash_password(password);
    let auth = format!(
        "[auth]\n[[auth.users]]\nname = \"{user}\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
    );
    let (config, telemetry) = config(&stack, "fuzz", "w1", "", &auth)?;
    let mut worker = service::start(CEP, &config, telemetry).await?;
    let found = logpipe_devkit::api_fuzz::run(
        &schemathesis,
        &format!("http://{telemetry}/openapi.json"),
        (user, password),
        "cep.toml",
        30,
        stack.dir.path(),
    )
    .await;
    if let Err(e) = found {
        anyhow::bail!("{e:#}\n{}", worker.logs());
    }
    service::stop(&mut worker).await?;
    Ok(())
}
