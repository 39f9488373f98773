//! Target topics: a topic created on the write side while the mirror runs is created on the read
//! side with the same partition count, the copied configs and min(source replication, target
//! brokers) replicas, and mirrored within 10 s; partitions added on the source are added on the
//! target and their records mirrored within 10 s, at the same partition numbers, exactly once; a
//! target that refuses to create topics makes the mirror fail naming exactly what to create, and
//! with `create_topics = false` a later topic waits for the operator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::{wait_until, DevCluster};
use logpipe_tests::mirror::*;
use logpipe_tests::{metrics, service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The replica count of each partition of a topic, as metadata reports it.
fn replicas(cluster: &DevCluster, topic: &str) -> anyhow::Result<Vec<usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("allow.auto.create.topics", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let topic = &metadata.topics()[0];
    anyhow::ensure!(
        topic.error().is_none(),
        "topic {} does not exist",
        topic.name()
    );
    Ok(topic
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .collect())
}

/// The time left of a 10 s budget started at `since`.
fn left_of_ten_seconds(since: Instant) -> Duration {
    Duration::from_secs(10).saturating_sub(since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topic_is_created_like_the_source_and_mirrored_within_ten_seconds() -> anyhow::Result<()>
{
    let (write, read) = clusters(&[("raw.first", 2)], 2).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mirror = start_mirror(&config, addr).await?;

    // Two replicas on the write side (3 brokers) and configs of which the mirror copies some.
    let configs = [
        ("cleanup.policy", "compact"),
        ("retention.ms", "3600000"),
        ("max.message.bytes", "2000000"),
        ("min.compaction.lag.ms", "60000"),
        ("segment.bytes", "10485760"),
        ("message.timestamp.type", "LogAppendTime"),
    ];
    write
        .create_topic_with_configs("raw.late", 3, 2, &configs)
        .await?;
    let created = Instant::now();
    produce_ids(&producer(write.bootstrap())?, "raw.late", 3, 0..300)?;
    wait_committed(addr, "raw.late", 300, left_of_ten_seconds(created))
        .await
        .logs_of(&mirror)?;

    assert_eq!(
        replicas(&read, "raw.late")?,
        vec![2, 2, 2],
        "the source's partition count and replication"
    );
    let mut expected: BTreeMap<String, String> = [
        ("cleanup.policy", "compact"),
        ("max.message.bytes", "2000000"),
        ("message.timestamp.type", "LogAppendTime"),
        ("min.compaction.lag.ms", "60000"),
        ("retention.ms", "3600000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(
        read.topic_configs("raw.late").await?,
        expected,
        "segment.bytes is not copied; a LogAppendTime topic stays one"
    );
    assert_mirrored(&write, &read, "raw.late", 300).await?;

    // Re-sync: the target's operators set segment.bytes themselves; then the source's
    // retention changes, and the target follows within 10 s, keeping its own segment.bytes.
    expected.insert("segment.bytes".into(), "5000000".into());
    let own: Vec<(&str, &str)> = expected
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    read.set_topic_configs("raw.late", &own).await?;
    let changed: Vec<(&str, &str)> = configs
        .iter()
        .map(|&(k, v)| (k, if k == "retention.ms" { "7200000" } else { v }))
        .collect();
    write.set_topic_configs("raw.late", &changed).await?;
    let altered = Instant::now();
    expected.insert("retention.ms".into(), "7200000".into());
    wait_until(left_of_ten_seconds(altered), || async {
        read.topic_configs("raw.late")
            .await
            .is_ok_and(|c| c == expected)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the target's configs did not follow the source's"))
    .logs_of(&mirror)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_are_mirrored_within_ten_seconds_at_the_same_numbers() -> anyhow::Result<()>
{
    let (write, read) = clusters(&[("raw.grow", 2)], 2).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mirror = start_mirror(&config, addr).await?;
    produce_ids(&producer(write.bootstrap())?, "raw.grow", 2, 0..100)?;
    wait_committed(addr, "raw.grow", 100, Duration::from_secs(30))
        .await
        .logs_of(&mirror)?;

    write.add_partitions("raw.grow", 4).await?;
    let grown = Instant::now();
    // A new producer sees the 4 partitions at once; ids 100.. go round-robin over all four.
    produce_ids(&producer(write.bootstrap())?, "raw.grow", 4, 100..400)?;
    wait_committed(addr, "raw.grow", 400, left_of_ten_seconds(grown))
        .await
        .logs_of(&mirror)?;

    assert_eq!(
        replicas(&read, "raw.grow")?.len(),
        4,
        "the target topic grew too"
    );
    // Each target partition holds exactly its source partition's records, in order, once.
    assert_mirrored(&write, &read, "raw.grow", 400).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_topics_fails_the_start_naming_what_to_create() -> anyhow::Result<()>
{
    let write = DevCluster::start_as("write", 1, &[("raw.b", 2)]).await?;
    write
        .create_topic_with_configs(
            "raw.a",
            4,
            1,
            &[("cleanup.policy", "compact"), ("retention.ms", "1000")],
        )
        .await?;
    let read = DevCluster::start_as("read", 1, &[("raw.b", 2)]).await?;
    // Like a cluster where the mirror lacks the ACL.
    read.request_errors("CreateTopics", &["TOPIC_AUTHORIZATION_FAILED"; 4])
        .await?;
    let dir = tempfile::tempdir()?;
    let (config, _) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = service::spawn("logpipe-mirror", &config)?;
    wait_until(Duration::from_secs(60), || {
        let exited = mirror.try_status().is_some();
        async move { exited }
    })
    .await?;
    assert!(!mirror.try_status().unwrap().success());
    let stderr = mirror.stderr();
    assert!(stderr.contains("topic raw.a with 4 partitions, replication factor 1 and cleanup.policy=compact, retention.ms=1000"), "{stderr}");
    assert!(stderr.contains(&format!("topic {STATE_TOPIC} with 8 partitions, replication factor 1 and cleanup.policy=compact")), "{stderr}");
    assert!(
        !stderr.contains("topic raw.b"),
        "raw.b exists on the target: {stderr}"
    );
    // Nothing was auto-created on the target by asking for it.
    assert!(
        replicas(&read, "raw.a").is_err(),
        "raw.a must not exist on the target"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_topics_a_new_topic_waits_for_the_operator() -> anyhow::Result<()> {
    let (write, read) = clusters(&[("raw.first", 2)], 2).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(
        dir.path(),
        "mirror.toml",
        &write,
        &read,
        "create_topics = false",
    )?;
    let mut mirror = start_mirror(&config, addr).await?;

    // The source gets a topic the target lacks: the mirror reports it missing and keeps running.
    write.create_topic("raw.late", 3).await?;
    produce_ids(&producer(write.bootstrap())?, "raw.late", 3, 0..300)?;
    wait_until(Duration::from_secs(30), || async {
        metrics::sum(addr, mirror::TARGET_TOPICS_MISSING, &[]).await == Some(1.0)
    })
    .await?;
    mirror.ensure_running()?;
    assert!(
        replicas(&read, "raw.late").is_err(),
        "the mirror must not create it"
    );

    read.create_topic("raw.late", 3).await?;
    let created = Instant::now();
    wait_committed(addr, "raw.late", 300, left_of_ten_seconds(created))
        .await
        .logs_of(&mirror)?;
    assert_mirrored(&write, &read, "raw.late", 300).await?;
    assert!(
        mirror.stderr().contains("topic raw.late with 3 partitions"),
        "the log names what to create:\n{}",
        mirror.stderr()
    );
    Ok(())
}

/// SIGHUP with a wider `include`: the newly selected topic is created and mirrored from its
/// start within 10 s, exactly once, without a restart; a narrower one stops copying the topic
/// it leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_which_topics_are_mirrored() -> anyhow::Result<()> {
    let (write, read) = clusters(&[("raw.kept", 2)], 2).await?;
    write.create_topic("audit.moves", 2).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = start_mirror(&config, addr).await?;
    let source = producer(write.bootstrap())?;
    produce_ids(&source, "raw.kept", 2, 0..100)?;
    produce_ids(&source, "audit.moves", 2, 0..100)?;
    wait_committed(addr, "raw.kept", 100, Duration::from_secs(30))
        .await
        .logs_of(&mirror)?;
    assert!(
        replicas(&read, "audit.moves").is_err(),
        "audit.moves was mirrored before it was included"
    );

    let text = std::fs::read_to_string(&config)?;
    let wider = text.replace(
        "include = [\"raw\\\\..*\"]",
        "include = [\"raw\\\\..*\", \"audit\\\\..*\"]",
    );
    assert_ne!(wider, text);
    std::fs::write(&config, &wider)?;
    mirror.hangup()?;
    let reloaded = Instant::now();
    wait_committed(addr, "audit.moves", 100, left_of_ten_seconds(reloaded))
        .await
        .logs_of(&mirror)?;
    assert_mirrored(&write, &read, "audit.moves", 100).await?;

    // Narrower again: audit.moves' new records stay on the write side; raw.kept goes on. Its
    // two partitions are on both shards (consecutive partitions, consecutive shards), which
    // both start a session without it.
    std::fs::write(&config, &text)?;
    mirror.hangup()?;
    wait_until(Duration::from_secs(10), || async {
        let logs = mirror.stderr();
        logs.matches("topic selection in force").count() == 2
            && logs
                .rsplit("topic selection in force")
                .next()
                .is_some_and(|after| after.matches("starting a new session").count() == 2)
    })
    .await
    .logs_of(&mirror)?;
    produce_ids(&source, "audit.moves", 2, 100..200)?;
    produce_ids(&source, "raw.kept", 2, 100..200)?;
    wait_committed(addr, "raw.kept", 200, Duration::from_secs(30))
        .await
        .logs_of(&mirror)?;
    assert_mirrored(&write, &read, "raw.kept", 200).await?;
    assert_exactly_once(
        &read
            .read_topic("audit.moves", Duration::from_secs(60))
            .await?,
        100,
    );
    assert!(
        !mirror.stderr().contains("take effect at the next start"),
        "{}",
        mirror.logs()
    );
    service::stop(&mut mirror).await?;
    Ok(())
}
