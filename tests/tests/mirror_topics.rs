//! Topic discovery and target topics: a topic created on the write side while the mirror runs is
//! mirrored within 10 s of its target topic existing (the dev cluster cannot add partitions to
//! an existing topic, so added partitions are covered by unit tests of the topology only), and a
//! target that cannot create topics makes the mirror fail naming exactly what to create.

mod mirror_support;

use std::time::{Duration, Instant};

use logpipe_devkit::harness::{wait_until, Process};
use mirror_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topic_is_mirrored_within_ten_seconds() -> anyhow::Result<()> {
    let (write, read) = clusters(&[("raw.first", 2)], 2).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = start_mirror(&config, addr).await?;

    // The source gets a topic the target lacks: the mirror reports it missing (the dev cluster
    // refuses CreateTopics) and keeps running.
    write.create_topic("raw.late", 3).await?;
    produce_ids(&producer(write.bootstrap())?, "raw.late", 3, 0..300)?;
    wait_until(Duration::from_secs(30), || async { metric(addr, "logpipe_mirror_target_topics_missing", &[]).await == Some(1.0) }).await?;
    mirror.ensure_running()?;

    read.create_topic("raw.late", 3).await?;
    let created = Instant::now();
    wait_committed(addr, "raw.late", 300, Duration::from_secs(10)).await?;
    let took = created.elapsed();
    assert!(took <= Duration::from_secs(10), "took {took:?}");
    let target = read.read_topic("raw.late", Duration::from_secs(30)).await?;
    assert_exactly_once(&target, 300);

    // And a topic that appears on both sides at once.
    read.create_topic("raw.later", 1).await?;
    write.create_topic("raw.later", 1).await?;
    produce_ids(&producer(write.bootstrap())?, "raw.later", 1, 0..50)?;
    wait_committed(addr, "raw.later", 50, Duration::from_secs(10)).await?;
    assert!(mirror.stderr().contains("raw.late with 3 partitions"), "the log names what to create:\n{}", mirror.stderr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_topics_at_start_fail_with_what_to_create() -> anyhow::Result<()> {
    let write = logpipe_devkit::harness::DevCluster::start_as("write", 1, &[("raw.a", 4), ("raw.b", 2)]).await?;
    let read = logpipe_devkit::harness::DevCluster::start_as("read", 1, &[("raw.b", 2)]).await?;
    let dir = tempfile::tempdir()?;
    let (config, _) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = Process::start("logpipe-mirror", &["run", "--config", config.to_str().unwrap()])?;
    wait_until(Duration::from_secs(60), || {
        let exited = mirror.try_status().is_some();
        async move { exited }
    })
    .await?;
    assert!(!mirror.try_status().unwrap().success());
    let stderr = mirror.stderr();
    assert!(stderr.contains("topic raw.a with 4 partitions"), "{stderr}");
    assert!(stderr.contains(&format!("topic {STATE_TOPIC} with 8 partitions and cleanup.policy=compact")), "{stderr}");
    assert!(!stderr.contains("topic raw.b"), "raw.b exists on the target: {stderr}");
    // Nothing was auto-created on the target by asking for it.
    assert!(read.read_topic("raw.a", Duration::from_secs(2)).await.is_err(), "raw.a must not exist on the target");
    Ok(())
}
