//! Two mirror instances split the shards; one is killed mid-stream and the survivor takes over
//! its shards; the target still holds every record exactly once.

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::metrics;
use logpipe_tests::mirror::*;

const TOPIC: &str = "raw.pair";
const PARTITIONS: i32 = 4;
const SHARDS: i32 = 4;
const COUNT: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_takes_over_the_killed_instances_shards_exactly_once() -> anyhow::Result<()> {
    let (write, read) = clusters(&[(TOPIC, PARTITIONS)], SHARDS).await?;
    let dir = tempfile::tempdir()?;
    let (config_a, addr_a) = mirror_config(dir.path(), "a.toml", &write, &read, "")?;
    let (config_b, addr_b) = mirror_config(dir.path(), "b.toml", &write, &read, "")?;
    let mut a = start_mirror(&config_a, addr_a).await?;
    // Ready means copying: alone in the group, `a` got every shard, and each opened its session.
    let ready: serde_json::Value = reqwest::get(format!("http://{addr_a}/ready"))
        .await?
        .json()
        .await?;
    assert_eq!(ready["checks"]["shards"]["ready"], true, "{ready}");
    let mut b = start_mirror(&config_b, addr_b).await?;
    let owned = |addr| async move { metrics::total(addr, mirror::SHARDS_OWNED).await };
    wait_until(Duration::from_secs(60), || async {
        owned(addr_a).await >= 1.0
            && owned(addr_b).await >= 1.0
            && owned(addr_a).await + owned(addr_b).await == SHARDS as f64
    })
    .await?;

    let load = background_load(
        write.bootstrap(),
        TOPIC,
        PARTITIONS,
        COUNT,
        1_000,
        Duration::from_millis(200),
    );
    // Both copy before one dies.
    let copied = |addr| async move { metrics::total(addr, mirror::RECORDS).await };
    wait_until(Duration::from_secs(60), || async {
        copied(addr_a).await > 0.0 && copied(addr_b).await > 0.0
    })
    .await?;
    a.kill9()?;
    wait_until(Duration::from_secs(30), || async {
        owned(addr_b).await == SHARDS as f64
    })
    .await?;
    load.await??;
    wait_committed(addr_b, TOPIC, COUNT, Duration::from_secs(120)).await?;
    b.ensure_running()?;
    assert_mirrored(&write, &read, TOPIC, COUNT).await?;
    Ok(())
}
