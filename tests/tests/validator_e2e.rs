//! The validator end to end: a dev cluster, the real schema store and validator processes.
//! Every test reconciles by the generator's event ids across the clean topic (decoded with the
//! schema fetched from the store, as a Confluent deserializer would) and the dead-letter topic,
//! both read with read_committed.
//!
//! Sizes are scaled to the CI budget (two cores, debug builds) and to the dev cluster, which
//! keeps at most 5 MB per partition: 12,000 records through three kill -9s instead of the
//! issue's 1,000,000, an 8 s schema store outage instead of 20 s.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use logpipe_core::metric_names::validator;
use logpipe_core::record::{error_header, header, replay_header};
use logpipe_devkit::harness::wait_until;
use logpipe_tests::topic::text_headers;
use logpipe_tests::validator::*;
use logpipe_tests::{metrics, service};
use rdkafka::Message as _;

/// Every generated id exactly once across clean + DLQ, and every invalid one in the DLQ with
/// the stage and pointer the generator expects.
async fn assert_exactly_once(
    stack: &Stack,
    report: &logpipe_devkit::loadgen::Report,
) -> anyhow::Result<()> {
    let clean = read_clean(stack, CLEAN).await?;
    let dlq = read_dlq(stack, DLQ).await?;
    let all = counts(clean.iter().chain(dlq.iter()));
    let written: HashSet<String> = report.event_ids().collect();
    let missing = written
        .iter()
        .filter(|id| !all.contains_key(id.as_str()))
        .count();
    let duplicated = all.values().filter(|n| **n > 1).count();
    let unknown = all.keys().filter(|id| !written.contains(**id)).count();
    assert_eq!(
        (missing, duplicated, unknown),
        (0, 0, 0),
        "missing, duplicated and unknown ids"
    );
    assert_eq!(
        dlq.len() as u64,
        report.lines - report.valid,
        "dead letters are exactly the invalid lines"
    );
    let by_id: std::collections::HashMap<&str, &Seen> =
        dlq.iter().map(|s| (s.event_id.as_str(), s)).collect();
    for invalid in &report.invalid_lines {
        let seen = by_id
            .get(invalid.event_id.as_str())
            .unwrap_or_else(|| panic!("{} is not in the DLQ", invalid.event_id));
        assert_eq!(
            seen.headers[error_header::STAGE],
            invalid.stage.as_str(),
            "{}",
            invalid.event_id
        );
        assert_eq!(
            seen.headers.get(error_header::PATH),
            invalid.pointer.as_ref(),
            "{}",
            invalid.event_id
        );
        assert_eq!(seen.headers[error_header::TOPIC], RAW);
        assert!(
            seen.headers.contains_key(error_header::OFFSET)
                && seen.headers.contains_key(header::OFFSET)
        );
    }
    // The clean topic has the raw topic's partition count: each record stays in its raw
    // record's partition (the harness chose those per file, not by the key's hash). The DLQ has
    // fewer: the key's hash places them, so a file's dead letters share one partition.
    let mut raw_partitions = std::collections::HashMap::new();
    for m in stack.read(RAW).await? {
        raw_partitions.insert(text_headers(&m)[header::PATH].clone(), m.partition());
    }
    for seen in &clean {
        let path = &seen.headers[header::PATH];
        assert_eq!(
            Some(&seen.partition),
            raw_partitions.get(path),
            "clean {} of {path} is not in its raw record's partition",
            seen.event_id
        );
    }
    let mut dead_partitions = std::collections::HashMap::new();
    for seen in &dlq {
        let first = dead_partitions.entry(&seen.headers[header::PATH]);
        assert_eq!(
            *first.or_insert(seen.partition),
            seen.partition,
            "{}",
            seen.event_id
        );
    }
    Ok(())
}

/// Waits until clean + DLQ hold `n` records.
async fn wait_for(stack: &Stack, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = stack
            .cluster
            .read_topic(CLEAN, Duration::from_secs(60))
            .await?
            .len()
            + stack
                .cluster
                .read_topic(DLQ, Duration::from_secs(60))
                .await?
                .len();
        if have >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{have} of {n} records in clean + DLQ within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Processed records (valid + invalid) according to a validator's own metrics.
async fn processed(telemetry: std::net::SocketAddr) -> f64 {
    metrics::total(telemetry, validator::RECORDS_VALID).await
        + metrics::total(telemetry, validator::RECORDS_INVALID).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_three_kill9s_and_agent_resends() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    stack.register_game_schemas().await?;
    let (report, files) = generate(stack.dir.path(), "eo", 12_000, 4)?;
    let per_file = files.iter().map(|f| f.lines.len()).max().unwrap();
    let (config, telemetry) = stack.validator_config("a", "batch_records = 500", GAME_ROUTE)?;

    // Records arrive in three parts while the validator is killed three times.
    let parts = [
        0..per_file / 3,
        per_file / 3..2 * per_file / 3,
        2 * per_file / 3..per_file,
    ];
    for part in parts {
        stack.produce(RAW, &files, part).await?;
        let mut validator = stack.validator(&config, telemetry).await?;
        wait_until(Duration::from_secs(60), || async {
            processed(telemetry).await >= 1_000.0
        })
        .await
        .unwrap();
        validator.kill9()?;
    }
    let mut validator = stack.validator(&config, telemetry).await?;
    wait_for(&stack, report.lines as usize, Duration::from_secs(120))
        .await
        .unwrap();
    assert_exactly_once(&stack, &report).await?;

    // The agent resends the first 500 lines of every file (same lp.file / lp.offset): all are
    // dropped and counted, by a process that restored its state from the changelog.
    let resent = stack.produce(RAW, &files, 0..500).await?;
    wait_until(Duration::from_secs(60), || async {
        metrics::total(telemetry, validator::RESENDS_DROPPED).await >= resent as f64
    })
    .await
    .unwrap();
    assert_eq!(
        metrics::total(telemetry, validator::RESENDS_DROPPED).await,
        resent as f64
    );
    // The old name is still exported for one release, with the same count.
    assert_eq!(
        metrics::total(telemetry, validator::REPLAYS_DROPPED_ALIAS).await,
        resent as f64
    );
    assert_exactly_once(&stack, &report).await?;
    service::stop(&mut validator).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_survive_one_kill9() -> anyhow::Result<()> {
    let stack = Stack::start(&[]).await?;
    stack.register_game_schemas().await?;
    let (report, files) = generate(stack.dir.path(), "two", 8_000, 4)?;
    let per_file = files.iter().map(|f| f.lines.len()).max().unwrap();
    let (config_a, telemetry_a) = stack.validator_config("a", "batch_records = 200", GAME_ROUTE)?;
    let (config_b, telemetry_b) = stack.validator_config("b", "batch_records = 200", GAME_ROUTE)?;
    let mut a = stack.validator(&config_a, telemetry_a).await?;
    let mut b = stack.validator(&config_b, telemetry_b).await?;
    stack.produce(RAW, &files, 0..per_file / 2).await?;
    // Both work (the group split the partitions), then one dies mid-stream.
    wait_until(Duration::from_secs(60), || async {
        processed(telemetry_a).await > 0.0 && processed(telemetry_b).await > 0.0
    })
    .await
    .unwrap();
    a.kill9()?;
    stack.produce(RAW, &files, per_file / 2..per_file).await?;
    wait_for(&stack, report.lines as usize, Duration::from_secs(120))
        .await
        .unwrap();
    assert_exactly_once(&stack, &report).await?;
    service::stop(&mut b).await?;
    Ok(())
}

const CHAT_V1: &str = r#"{"type":"record","name":"Chat","fields":[{"name":"event_id","type":"string"},{"name":"text","type":"string"}]}"#;
const CHAT_V2: &str = r#"{"type":"record","name":"Chat","fields":[{"name":"event_id","type":"string"},{"name":"text","type":"string"},{"name":"channel","type":["null","string"],"default":null}]}"#;

fn chat_lines(prefix: &str, n: usize, with_channel: bool) -> Lines {
    let lines = (0..n)
        .map(|i| {
            let line = if with_channel {
                format!(r#"{{"event_id":"{prefix}-{i}","text":"hi","channel":"guild"}}"#)
            } else {
                format!(r#"{{"event_id":"{prefix}-{i}","text":"hi"}}"#)
            };
            (i as u64 * 1000, line.into_bytes())
        })
        .collect();
    let file =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), prefix);
    Lines {
        host: "chat-host".into(),
        path: format!("/var/log/{prefix}.log"),
        file: logpipe_core::record::FileId(file),
        lines,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_pauses_without_dead_letters_and_new_versions_are_used() -> anyhow::Result<()>
{
    let mut stack = Stack::start(&[("raw.chat", 1), ("clean.chat", 1), ("dlq.chat", 1)]).await?;
    stack.register_game_schemas().await?;
    let chat_v1 = stack.register("chat", "AVRO", CHAT_V1).await?;
    let routes = format!("{GAME_ROUTE}[[routes]]\ntopics = \"raw\\\\.chat\"\nsubject = {{ fixed = \"chat\" }}\nextra_fields = \"reject\"\n");
    let (config, telemetry) = stack.validator_config("a", "", &routes)?;
    let mut validator = stack.validator(&config, telemetry).await?;

    let (report, files) = generate(stack.dir.path(), "out", 4_000, 2)?;
    let per_file = files.iter().map(|f| f.lines.len()).max().unwrap();
    let first_half = stack.produce(RAW, &files, 0..per_file / 2).await?;
    wait_for(&stack, first_half, Duration::from_secs(60))
        .await
        .unwrap();

    // The store goes away; game records keep flowing on cached schemas, the first chat record
    // (an uncached subject) makes the validator pause and report not ready.
    stack.stop_store().await?;
    let outage = Instant::now();
    stack.produce(RAW, &files, per_file / 2..per_file).await?;
    let chat = chat_lines("chat", 100, false);
    stack
        .produce("raw.chat", std::slice::from_ref(&chat), 0..100)
        .await?;
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(20), || async {
        metrics::total(telemetry, validator::STORE_PAUSES).await >= 1.0
            && http
                .get(format!("http://{telemetry}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
    })
    .await
    .unwrap();
    // Keep it down for 8 s in all.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(outage.elapsed())).await;
    stack.start_store().await?;
    validator
        .wait_ready(telemetry, Duration::from_secs(30))
        .await?;
    wait_for(&stack, report.lines as usize, Duration::from_secs(60))
        .await
        .unwrap();
    assert_exactly_once(&stack, &report).await?;
    // One validator saw every game record: its dead-letter counts by reason are the generator's
    // invalid kinds (the loadgen names its kinds as the validator's reason labels).
    for (kind, n) in &report.invalid_by_kind {
        let reason = serde_json::to_value(kind)?;
        let labels = [
            ("topic", RAW),
            ("stage", kind.stage().as_str()),
            ("reason", reason.as_str().unwrap()),
        ];
        wait_until(Duration::from_secs(10), || async {
            metrics::sum(telemetry, validator::RECORDS_INVALID, &labels).await == Some(*n as f64)
        })
        .await
        .unwrap_or_else(|_| panic!("{kind:?}: expected {n} dead letters counted under {labels:?}"));
    }
    let dlq = stack
        .cluster
        .read_topic("dlq.chat", Duration::from_secs(30))
        .await?;
    assert!(
        dlq.is_empty(),
        "the outage dead-lettered {} chat records",
        dlq.len()
    );
    wait_until(Duration::from_secs(30), || async {
        read_clean(&stack, "clean.chat")
            .await
            .is_ok_and(|c| c.len() == 100)
    })
    .await
    .unwrap();

    // Evolution: v2 adds an optional field. Records using it are rejected under v1 (extra fields
    // are rejected on this route) and pass once the validator has picked up v2.
    let chat_v2 = stack.register("chat", "AVRO", CHAT_V2).await?;
    assert_ne!(chat_v1, chat_v2);
    let registered = Instant::now();
    let mut probes = 0;
    let mut first_v2 = None;
    while first_v2.is_none() {
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "v2 not used within 10 s of registration"
        );
        let probe = chat_lines(&format!("probe{probes}"), 1, true);
        stack
            .produce("raw.chat", std::slice::from_ref(&probe), 0..1)
            .await?;
        probes += 1;
        let clean = read_clean(&stack, "clean.chat").await?;
        first_v2 = clean
            .iter()
            .find(|s| s.decoded.as_ref().is_some_and(|(id, _)| *id == chat_v2))
            .map(|s| s.event_id.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let picked_up = registered.elapsed();
    let with_channel = chat_lines("chat2", 200, true);
    stack
        .produce("raw.chat", std::slice::from_ref(&with_channel), 0..200)
        .await?;
    wait_until(Duration::from_secs(30), || async {
        read_clean(&stack, "clean.chat").await.is_ok_and(|c| {
            c.iter()
                .filter(|s| s.event_id.starts_with("chat2-"))
                .count()
                == 200
        })
    })
    .await
    .unwrap();
    let clean = read_clean(&stack, "clean.chat").await?;
    let dlq = read_dlq(&stack, "dlq.chat").await?;
    let all = counts(clean.iter().chain(dlq.iter()));
    assert!(all.values().all(|n| *n == 1), "a chat record twice");
    assert_eq!(all.len(), 100 + probes + 200);
    assert!(
        dlq.iter().all(|s| s.event_id.starts_with("probe")),
        "only probes sent before the refresh may be rejected"
    );
    for s in clean.iter().filter(|s| s.event_id.starts_with("chat2-")) {
        let (id, value) = s.decoded.as_ref().unwrap();
        assert_eq!(*id, chat_v2);
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("not a record")
        };
        assert_eq!(
            fields[2],
            (
                "channel".to_owned(),
                apache_avro::types::Value::Union(
                    1,
                    Box::new(apache_avro::types::Value::String("guild".into()))
                )
            )
        );
    }
    eprintln!("v2 used {picked_up:?} after registration ({probes} probes)");
    service::stop(&mut validator).await?;
    Ok(())
}

const SHOP_V1: &str = r#"{"type":"record","name":"Sale","fields":[{"name":"event_id","type":"string"},{"name":"amount","type":"int"}]}"#;
const SHOP_V2: &str = r#"{"type":"record","name":"Sale","fields":[{"name":"event_id","type":"string"},{"name":"amount","type":["int","string"]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_schema_fix_lands_fixed_records_exactly_once() -> anyhow::Result<()> {
    let stack = Stack::start(&[("raw.shop", 2), ("clean.shop", 2), ("dlq.shop", 2)]).await?;
    stack.register("shop", "AVRO", SHOP_V1).await?;
    let routes = "[[routes]]\ntopics = \"raw\\\\.shop\"\nsubject = { fixed = \"shop\" }\n";
    let (config, telemetry) = stack.validator_config("a", "", routes)?;
    let mut validator = stack.validator(&config, telemetry).await?;

    // 100 valid, 200 with a string amount (invalid under v1), 20 cut short (never valid).
    let mut lines = Vec::new();
    for i in 0..320u64 {
        let line = match i {
            0..100 => format!(r#"{{"event_id":"shop-{i}","amount":{i}}}"#),
            100..300 => format!(r#"{{"event_id":"shop-{i}","amount":"{i}"}}"#),
            _ => format!(r#"{{"event_id":"shop-{i}","amou"#),
        };
        lines.push((i * 100, line.into_bytes()));
    }
    let file = Lines {
        host: "shop".into(),
        path: "/var/log/shop.log".into(),
        file: logpipe_core::record::FileId(7),
        lines,
    };
    stack
        .produce("raw.shop", std::slice::from_ref(&file), 0..320)
        .await?;
    wait_until(Duration::from_secs(60), || async {
        stack
            .cluster
            .read_topic("dlq.shop", Duration::from_secs(30))
            .await
            .is_ok_and(|d| d.len() == 220)
    })
    .await
    .unwrap();

    // The fix: amounts may be strings. Then replay the DLQ.
    stack.compatibility("shop", "NONE").await?;
    stack.register("shop", "AVRO", SHOP_V2).await?;
    assert_eq!(replay(&config, "dlq.shop", &[]).await?, (200, 20));

    let clean = read_clean(&stack, "clean.shop").await?;
    let dlq = read_dlq(&stack, "dlq.shop").await?;
    let clean_counts = counts(&clean);
    assert_eq!(clean_counts.len(), 300);
    assert!(
        clean_counts.values().all(|n| *n == 1),
        "a fixed record landed twice"
    );
    // The cut lines are in the DLQ twice: the first verdict and the replay's.
    assert_eq!(dlq.len(), 240);
    let dlq_counts = counts(&dlq);
    let replayed_again: Vec<&Seen> = dlq
        .iter()
        .filter(|s| dlq_counts[s.event_id.as_str()] == 2)
        .collect();
    assert_eq!(replayed_again.len(), 40);
    assert!(replayed_again
        .iter()
        .all(|s| s.headers[error_header::STAGE] == "parse"
            && s.headers[error_header::TOPIC] == "raw.shop"));

    // A second replay starts where the first committed: only the 20 new dead letters.
    assert_eq!(replay(&config, "dlq.shop", &[]).await?, (0, 20));
    assert_eq!(counts(&read_clean(&stack, "clean.shop").await?).len(), 300);
    service::stop(&mut validator).await?;
    Ok(())
}

const BIG: &str = r#"{"type":"record","name":"Big","fields":[{"name":"event_id","type":"string"},{"name":"amount","type":"int"},{"name":"pad","type":"string"}]}"#;

/// Outputs too large for the producer's `message.max.bytes` never stall the partition: a clean
/// record too large becomes an `output_too_large` dead letter, a dead letter too large goes
/// without its record, and everything after them is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_too_large_to_produce_become_dead_letters_and_the_partition_goes_on(
) -> anyhow::Result<()> {
    const MAX: usize = 20_000;
    let stack = Stack::start(&[("raw.big", 1), ("clean.big", 1), ("dlq.big", 1)]).await?;
    stack.register("big", "AVRO", BIG).await?;
    let routes = "[[routes]]\ntopics = \"raw\\\\.big\"\nsubject = { fixed = \"big\" }\n";
    let (config, telemetry) = stack.validator_config("big", "", routes)?;
    let text = std::fs::read_to_string(&config)?.replace(
        "[kafka.properties]\n",
        &format!("[kafka.properties]\n\"message.max.bytes\" = {MAX}\n"),
    );
    std::fs::write(&config, text)?;
    let mut validator = stack.validator(&config, telemetry).await?;

    let line = |id: &str, amount: &str, pad: usize| {
        format!(
            r#"{{"event_id":"{id}","amount":{amount},"pad":"{}"}}"#,
            "p".repeat(pad)
        )
    };
    let mut texts = Vec::new();
    for i in 0..5 {
        texts.push(line(&format!("before-{i}"), "1", 10));
    }
    texts.push(line("clean-fits", "1", MAX - 1_000));
    texts.push(line("clean-too-large", "1", MAX + 500));
    texts.push(line("dead-too-large", "\"x\"", MAX - 100));
    texts.push(line("dead-fits", "\"x\"", 100));
    for i in 0..5 {
        texts.push(line(&format!("after-{i}"), "1", 10));
    }
    let file = Lines {
        host: "big".into(),
        path: "/var/log/big.log".into(),
        file: logpipe_core::record::FileId(9),
        lines: texts
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 * 100_000, t.clone().into_bytes()))
            .collect(),
    };
    stack
        .produce("raw.big", std::slice::from_ref(&file), 0..texts.len())
        .await?;
    wait_until(Duration::from_secs(60), || async {
        let (clean, dlq) = (stack.read("clean.big").await, stack.read("dlq.big").await);
        clean.is_ok_and(|c| c.len() == 11) && dlq.is_ok_and(|d| d.len() == 3)
    })
    .await
    .context("the partition stalled")?;

    let clean: HashSet<String> = read_clean(&stack, "clean.big")
        .await?
        .into_iter()
        .map(|s| s.event_id)
        .collect();
    let mut expected: HashSet<String> = (0..5)
        .flat_map(|i| [format!("before-{i}"), format!("after-{i}")])
        .collect();
    expected.insert("clean-fits".into());
    assert_eq!(clean, expected);

    // Dead letters by the line they came from (its lp.offset; the big ones have no value).
    let index = |m: &rdkafka::message::OwnedMessage| {
        logpipe_tests::topic::text_headers(m)[logpipe_core::record::header::OFFSET]
            .parse::<usize>()
            .unwrap()
            / 100_000
    };
    let dlq = stack.read("dlq.big").await?;
    let dead: std::collections::HashMap<usize, _> = dlq.iter().map(|m| (index(m), m)).collect();
    use rdkafka::Message as _;
    let headers = |i: usize| logpipe_tests::topic::text_headers(dead[&i]);
    let too_large = headers(6);
    assert_eq!(too_large[error_header::STAGE], "encode");
    assert!(
        too_large[error_header::REASON].contains("message.max.bytes of 20000")
            && too_large[error_header::REASON].contains("written without it"),
        "{too_large:?}"
    );
    assert_eq!(dead[&6].payload().unwrap_or_default().len(), 0);
    let invalid_big = headers(7);
    assert_eq!(invalid_big[error_header::STAGE], "validate");
    assert!(
        invalid_big[error_header::REASON].contains("written without it"),
        "{invalid_big:?}"
    );
    // One raw partition, produced in order from offset 0: line 7 is at offset 7.
    assert_eq!(invalid_big[error_header::OFFSET], "7");
    assert_eq!(dead[&7].payload().unwrap_or_default().len(), 0);
    assert_eq!(dead[&8].payload(), Some(texts[8].as_bytes()));
    assert!(metrics::total(telemetry, validator::RECORDS_INVALID).await >= 3.0);
    for i in [6, 7] {
        assert_eq!(
            headers(i)[error_header::OMITTED],
            texts[i].len().to_string()
        );
    }
    assert!(!headers(8).contains_key(error_header::OMITTED));

    // With a limit they fit in, the dead letters written without their records are replayed
    // from the raw topic: line 6 is clean now, lines 7 and 8 (invalid) go to the DLQ again,
    // line 7 this time with its record.
    let raised = std::fs::read_to_string(&config)?.replace(
        &format!("\"message.max.bytes\" = {MAX}"),
        "\"message.max.bytes\" = 100000",
    );
    std::fs::write(&config, raised)?;
    assert_eq!(replay(&config, "dlq.big", &[]).await?, (1, 2));
    let clean = read_clean(&stack, "clean.big").await?;
    assert!(clean.iter().any(|s| s.event_id == "clean-too-large"));
    let again: Vec<_> = stack
        .read("dlq.big")
        .await?
        .into_iter()
        .filter(|m| {
            logpipe_tests::topic::text_headers(m).get(replay_header::OFFSET)
                == Some(&dead[&7].offset().to_string())
        })
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload(), Some(texts[7].as_bytes()));
    service::stop(&mut validator).await?;
    Ok(())
}

/// Records deleted by retention while the validator was stopped are never a silent gap: the
/// restarted validator logs an error naming the topic, partition and first offset lost, and
/// counts exactly the records between its committed position and the new log start, whether
/// records follow the gap or retention emptied the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lost_to_retention_are_logged_and_counted() -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    let stack = Stack::start_retaining(
        &[("raw.big", 1), ("clean.big", 1), ("dlq.big", 1)],
        Some(200_000),
    )
    .await?;
    stack.register("big", "AVRO", BIG).await?;
    let routes = "[[routes]]\ntopics = \"raw\\\\.big\"\nsubject = { fixed = \"big\" }\n";
    let (config, telemetry) = stack.validator_config("lost", "", routes)?;
    let file = Lines {
        host: "lost".into(),
        path: "/var/log/lost.log".into(),
        file: logpipe_core::record::FileId(3),
        lines: (0..800u64)
            .map(|i| {
                let pad = "p".repeat(2_000);
                let line = format!(r#"{{"event_id":"lost-{i}","amount":1,"pad":"{pad}"}}"#);
                (i * 10_000, line.into_bytes())
            })
            .collect(),
    };
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.cluster.bootstrap())
        .create()?;
    let watermarks = || probe.fetch_watermarks("raw.big", 0, Duration::from_secs(10));
    let clean_count = || async { stack.read("clean.big").await.map_or(0, |c| c.len() as i64) };

    let mut validator = stack.validator(&config, telemetry).await?;
    stack
        .produce("raw.big", std::slice::from_ref(&file), 0..20)
        .await?;
    wait_until(Duration::from_secs(60), || async {
        clean_count().await == 20
    })
    .await?;
    service::stop(&mut validator).await?;

    // Down once: 380 records of ~2 KB, in batches of 20, push unread ones past the 200 KB of
    // retention; records remain after the new log start.
    for start in (20..400).step_by(20) {
        stack
            .produce("raw.big", std::slice::from_ref(&file), start..start + 20)
            .await?;
    }
    let (start, end) = watermarks()?;
    assert!(
        start > 20 && start < end && end == 400,
        "log {start}..{end}"
    );
    let mut lost = start - 20;
    let clean = 20 + end - start;
    let lost_metric =
        || async { metrics::total(telemetry, validator::RECORDS_LOST_TO_RETENTION).await as i64 };
    let mut validator = stack.validator(&config, telemetry).await?;
    wait_until(Duration::from_secs(60), || async {
        clean_count().await == clean && lost_metric().await == lost
    })
    .await
    .with_context(|| format!("{clean} clean and {lost} counted lost"))?;
    service::stop(&mut validator).await?;

    // Down again: one batch larger than the retention empties the partition (the dev cluster
    // deletes the batch it was written in): no record follows the gap.
    stack
        .produce("raw.big", std::slice::from_ref(&file), 400..800)
        .await?;
    let (start, end) = watermarks()?;
    assert_eq!((start, end), (800, 800), "retention emptied the partition");
    // A new process counts from zero.
    lost = 800 - 400;
    let mut validator = stack.validator(&config, telemetry).await?;
    wait_until(Duration::from_secs(30), || async {
        lost_metric().await == lost
    })
    .await
    .with_context(|| format!("{lost} counted lost"))?;
    assert_eq!(clean_count().await, clean);
    let logs = validator.logs();
    assert!(
        logs.contains("were deleted by retention before they were read")
            && logs.contains("raw.big"),
        "{logs}"
    );
    service::stop(&mut validator).await?;
    Ok(())
}
