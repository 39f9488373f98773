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
