//! The topics the validator writes to: created through CreateTopics when missing (outputs with
//! the raw topic's partition count, the replay-state changelog compacted); when the cluster
//! refuses CreateTopics, left to the cluster's auto-creation on the producer's metadata request,
//! with a warning that the changelog must be made compacted; or, with `create_topics = false`,
//! reported on `/ready` with the topic named while the raw topic is left unread, until an
//! operator creates them.

use std::time::Duration;

use logpipe_core::metric_names::validator;
use logpipe_core::record::FileId;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::validator::*;
use logpipe_tests::{metrics, service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const LOOT: &str = r#"{"type":"record","name":"Loot","fields":[{"name":"event_id","type":"string"},{"name":"n","type":"int"}]}"#;

/// `count` records of `{"event_id": "<prefix>-i", "n": i}`, every fifth one invalid.
fn loot(prefix: &str, count: u64) -> Lines {
    let lines = (0..count)
        .map(|i| {
            let n = if i % 5 == 0 {
                format!("\"{i}\"")
            } else {
                i.to_string()
            };
            (
                i * 100,
                format!(r#"{{"event_id":"{prefix}-{i}","n":{n}}}"#).into_bytes(),
            )
        })
        .collect();
    Lines {
        host: prefix.into(),
        path: format!("/var/log/{prefix}.log"),
        file: FileId(3),
        lines,
    }
}

fn route(stream: &str) -> String {
    format!("[[routes]]\ntopics = \"raw\\\\.{stream}\"\nsubject = {{ fixed = \"loot\" }}\n")
}

/// Waits until clean + DLQ of `stream` hold every record of `lines` exactly once.
async fn all_there(stack: &Stack, stream: &str, lines: &Lines) {
    let n = lines.lines.len();
    wait_until(Duration::from_secs(60), || async {
        let clean = read_clean(stack, &format!("clean.{stream}"))
            .await
            .unwrap_or_default();
        let dlq = read_dlq(stack, &format!("dlq.{stream}"))
            .await
            .unwrap_or_default();
        let seen = counts(clean.iter().chain(dlq.iter()));
        seen.len() == n && seen.values().all(|c| *c == 1) && dlq.len() == n / 5
    })
    .await
    .unwrap_or_else(|_| {
        panic!("clean.{stream} + dlq.{stream} do not hold the {n} records exactly once")
    });
}

/// How many partitions `topic` has.
fn partitions(stack: &Stack, topic: &str) -> anyhow::Result<usize> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.cluster.bootstrap())
        .create()?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()))
}

/// Runs a validator `name` (replay-state topic `_lp.validator.<name>.replay-state`) on
/// `raw.<stream>`, writes 200 records there, waits until clean + DLQ hold them all, stops it
/// and returns its stderr.
async fn validate_all(stack: &Stack, name: &str, stream: &str) -> anyhow::Result<String> {
    let settings = format!("resend_state_topic = \"_lp.validator.{name}.replay-state\"");
    let (config, telemetry) = stack.validator_config(name, &settings, &route(stream))?;
    let mut validator = stack.validator(&config, telemetry).await?;
    let lines = loot(name, 200);
    stack
        .produce(
            &format!("raw.{stream}"),
            std::slice::from_ref(&lines),
            0..200,
        )
        .await?;
    all_there(stack, stream, &lines).await;
    service::stop(&mut validator).await?;
    Ok(validator.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_created_or_reported() -> anyhow::Result<()> {
    let stack = Stack::start(&[("raw.loot", 2), ("raw.gems", 3), ("raw.coins", 2)]).await?;
    stack.register("loot", "AVRO", LOOT).await?;
    let http = reqwest::Client::new();

    // create_topics = false: clean.loot and dlq.loot are missing, so raw.loot is not read and
    // /ready says which topic to create.
    let (config, telemetry) =
        stack.validator_config("manual", "create_topics = false", &route("loot"))?;
    let mut manual = service::spawn("logpipe-validator", &config)?;
    let lines = loot("manual", 200);
    stack
        .produce("raw.loot", std::slice::from_ref(&lines), 0..200)
        .await?;
    let ready = || async {
        http.get(format!("http://{telemetry}/ready"))
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    wait_until(Duration::from_secs(30), || async {
        ready().await.is_some_and(|r| {
            let detail = r["checks"]["topics"]["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            r["ready"] == false
                && detail.contains("clean.loot")
                && detail.contains("create_topics = false")
        })
    })
    .await
    .unwrap_or_else(|_| panic!("/ready does not name the missing topic\n{}", manual.logs()));
    assert_eq!(
        metrics::total(telemetry, validator::RECORDS_VALID).await,
        0.0,
        "raw.loot was read"
    );
    stack.cluster.create_topic("clean.loot", 2).await?;
    stack.cluster.create_topic("dlq.loot", 2).await?;
    manual
        .wait_ready(telemetry, Duration::from_secs(30))
        .await?;
    all_there(&stack, "loot", &lines).await;
    service::stop(&mut manual).await?;

    // The default: the replay-state, clean and DLQ topics of raw.gems do not exist; the
    // validator creates them.
    let state = "_lp.validator.auto.replay-state";
    let stderr = validate_all(&stack, "auto", "gems").await?;
    assert!(
        stderr.contains(state),
        "the state topic's creation is not logged:\n{stderr}"
    );
    assert_eq!(
        stack
            .cluster
            .topic_configs(state)
            .await?
            .get("cleanup.policy")
            .map(String::as_str),
        Some("compact")
    );
    assert_eq!(partitions(&stack, state)?, 1);
    assert_eq!(
        partitions(&stack, "clean.gems")?,
        3,
        "clean topics take the raw topic's partition count"
    );
    assert_eq!(
        partitions(&stack, "dlq.gems")?,
        3,
        "DLQ topics take the raw topic's partition count"
    );

    // CreateTopics refused (ACLs on a real cluster): the validator goes on with the topics the
    // cluster creates on first use, and says the auto-created changelog must be made compacted.
    stack
        .cluster
        .request_errors("CreateTopics", &["TOPIC_AUTHORIZATION_FAILED"; 3])
        .await?;
    let stderr = validate_all(&stack, "refused", "coins").await?;
    assert!(
        stderr.contains("could not create the topic")
            && stderr.contains("--add-config cleanup.policy=compact"),
        "the refusal and the changelog's fix are not logged:\n{stderr}"
    );
    Ok(())
}

/// Writes 200 records to each of `raw.loot` and `raw.gems` and waits until those of raw.loot
/// are all in its clean and DLQ topics; returns both.
async fn loot_then_gems(stack: &Stack) -> anyhow::Result<(Lines, Lines)> {
    let (loot_lines, gems) = (loot("loot", 200), loot("gems", 200));
    stack
        .produce("raw.loot", std::slice::from_ref(&loot_lines), 0..200)
        .await?;
    stack
        .produce("raw.gems", std::slice::from_ref(&gems), 0..200)
        .await?;
    all_there(stack, "loot", &loot_lines).await;
    Ok((loot_lines, gems))
}

/// SIGHUP puts a changed config's routes and log filter in force without a restart: a route
/// added starts reading its topic (every record once), a route removed stops reading its topic
/// (its records stay unread, not dead-lettered), and the other routes go on without a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_and_log_filter() -> anyhow::Result<()> {
    let stack = Stack::start(&[("raw.loot", 2), ("raw.gems", 2)]).await?;
    stack.register("loot", "AVRO", LOOT).await?;
    let (config, telemetry) = stack.validator_config("reload", "", &route("loot"))?;
    // Two checking loops, each putting a reload in force on its own (and logging it).
    let text = format!("workers = 2\n{}", std::fs::read_to_string(&config)?);
    let quiet = text.replace("[telemetry]\n", "[telemetry]\nlog = \"warn\"\n");
    std::fs::write(&config, &quiet)?;
    let mut validator = stack.validator(&config, telemetry).await?;
    let (loot_lines, gems) = loot_then_gems(&stack).await?;
    assert_eq!(
        metrics::total(telemetry, validator::RECORDS_VALID).await,
        160.0,
        "raw.gems was read without a route"
    );
    assert!(
        !validator.stderr().contains("INFO"),
        "log = \"warn\" was not applied at start:\n{}",
        validator.stderr()
    );

    // Add a route for raw.gems and turn info logs on.
    let both = text.replace("[telemetry]\n", "[telemetry]\nlog = \"info\"\n") + &route("gems");
    std::fs::write(&config, &both)?;
    validator.hangup()?;
    all_there(&stack, "gems", &gems).await;
    all_there(&stack, "loot", &loot_lines).await;
    let logs = validator.stderr();
    assert!(
        logs.contains("new routes in force") && !logs.contains("take effect at the next start"),
        "the reload is not logged at info, or called a restart necessary:\n{logs}"
    );

    // Remove raw.loot's route: its new records stay in raw.loot, unread.
    let gems_only = text.replace(&route("loot"), &route("gems"));
    std::fs::write(&config, &gems_only)?;
    validator.hangup()?;
    wait_until(Duration::from_secs(30), || async {
        let logs = validator.stderr();
        // Both loops took the second reload (the third and fourth log lines) and subscribed.
        logs.matches("new routes in force").count() == 4
            && logs
                .splitn(4, "new routes in force")
                .nth(3)
                .is_some_and(|after| after.matches("subscribing").count() >= 2)
    })
    .await
    .unwrap_or_else(|_| panic!("the second reload was not applied:\n{}", validator.logs()));
    let (late_loot, late_gems) = (loot("loot-late", 100), loot("gems-late", 100));
    stack
        .produce("raw.loot", std::slice::from_ref(&late_loot), 0..100)
        .await?;
    stack
        .produce("raw.gems", std::slice::from_ref(&late_gems), 0..100)
        .await?;
    wait_until(Duration::from_secs(60), || async {
        let clean = read_clean(&stack, "clean.gems").await.unwrap_or_default();
        let dlq = read_dlq(&stack, "dlq.gems").await.unwrap_or_default();
        counts(clean.iter().chain(dlq.iter())).len() == 300
    })
    .await
    .unwrap_or_else(|_| panic!("raw.gems' new records did not arrive\n{}", validator.logs()));
    let clean = read_clean(&stack, "clean.loot").await?;
    let dlq = read_dlq(&stack, "dlq.loot").await?;
    let loot_seen = counts(clean.iter().chain(dlq.iter()));
    assert_eq!(
        loot_seen.len(),
        200,
        "records of raw.loot were written after its route was removed"
    );
    assert!(loot_seen.values().all(|c| *c == 1));
    service::stop(&mut validator).await?;
    Ok(())
}

/// A validator allowed records larger than Kafka's default creates its output topics to take
/// its batches, and does not read a raw topic whose existing output topic takes less (every
/// transaction into it would fail on a real broker): `/ready` names the topic and the command
/// that raises its limit, and the other raw topics go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_topics_must_take_the_producers_batches() -> anyhow::Result<()> {
    let stack = Stack::start(&[("raw.loot", 2), ("raw.gems", 2)]).await?;
    stack.register("loot", "AVRO", LOOT).await?;
    stack
        .cluster
        .create_topic_with_configs("clean.gems", 2, 1, &[("max.message.bytes", "1048588")])
        .await?;
    let routes = route("loot") + &route("gems");
    let (config, telemetry) = stack.validator_config("limits", "", &routes)?;
    let text = std::fs::read_to_string(&config)?;
    let large = text.replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"message.max.bytes\" = 4000000\n",
    );
    assert_ne!(large, text);
    std::fs::write(&config, large)?;
    let mut validator = service::spawn("logpipe-validator", &config)?;
    loot_then_gems(&stack).await?;
    for created in ["clean.loot", "dlq.loot", "dlq.gems"] {
        assert_eq!(
            stack
                .cluster
                .topic_configs(created)
                .await?
                .get("max.message.bytes")
                .map(String::as_str),
            Some("4000000"),
            "{created} was created to take the producer's batches"
        );
    }
    let http = reqwest::Client::new();
    let ready: serde_json::Value = http
        .get(format!("http://{telemetry}/ready"))
        .send()
        .await?
        .json()
        .await?;
    let detail = ready["checks"]["topics"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ready["ready"] == false
            && detail.contains("topic clean.gems takes batches of at most 1048588 bytes")
            && detail.contains("--add-config max.message.bytes=4000000"),
        "{ready}\n{}",
        validator.logs()
    );
    assert_eq!(
        metrics::total(telemetry, validator::RECORDS_VALID).await,
        160.0,
        "raw.gems was read although clean.gems cannot take the batches"
    );
    service::stop(&mut validator).await?;
    Ok(())
}
