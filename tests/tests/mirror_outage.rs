//! A broker outage on the source, then on the target, while records flow: the mirror resumes by
//! itself, losing and duplicating nothing.

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::metrics;
use logpipe_tests::mirror::*;

const TOPIC: &str = "raw.outage";
const PARTITIONS: i32 = 3;
const COUNT: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outages_on_each_side_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let (write, read) = clusters(&[(TOPIC, PARTITIONS)], 3).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = start_mirror(&config, addr).await?;
    let load = background_load(
        write.bootstrap(),
        TOPIC,
        PARTITIONS,
        COUNT,
        500,
        Duration::from_millis(200),
    );
    let copied = || async { metrics::total(addr, mirror::RECORDS).await };
    for (side, cluster) in [("source", &write), ("target", &read)] {
        let before = copied().await;
        wait_until(Duration::from_secs(60), || async {
            copied().await > before
        })
        .await?;
        // Broker 1 leads some partitions, and may be a coordinator, on either side.
        cluster.broker_down(1).await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.broker_up(1).await?;
        mirror.ensure_running()?;
        let after_outage = copied().await;
        wait_until(Duration::from_secs(60), || async {
            copied().await > after_outage
        })
        .await
        .map_err(|e| anyhow::anyhow!("no progress after the {side} outage: {e}"))?;
    }
    load.await??;
    wait_committed(addr, TOPIC, COUNT, Duration::from_secs(120)).await?;
    mirror.ensure_running()?;
    assert_mirrored(&write, &read, TOPIC, COUNT).await?;
    Ok(())
}
