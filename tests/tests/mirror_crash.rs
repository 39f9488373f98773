//! kill -9 the mirror repeatedly while records flow: a read_committed consumer of the target
//! sees every record exactly once, in the source's order. Scaled from the 1,000,000
//! records to 200,000 so that the test fits the CI budget; `LOGPIPE_MIRROR_CRASH_RECORDS=1000000`
//! runs it at full size (the dev clusters then keep enough per partition to hold every record).

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::metrics;
use logpipe_tests::mirror::*;

const TOPIC: &str = "raw.crash";
const PARTITIONS: i32 = 4;
const KILLS: usize = 5;

/// Records to mirror: 200,000 unless `LOGPIPE_MIRROR_CRASH_RECORDS` says otherwise.
fn count() -> u64 {
    std::env::var("LOGPIPE_MIRROR_CRASH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_five_times_while_records_flow_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let count = count();
    // Above the default size, every partition keeps 200 B per record, twice what one takes.
    let retention = (count > 200_000).then_some(count * 200 / PARTITIONS as u64);
    let (write, read) = clusters_retaining(&[(TOPIC, PARTITIONS)], 4, retention).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    // About 4,000 records/s (50 s at the default size): records flow through every kill.
    let load = background_load(
        write.bootstrap(),
        TOPIC,
        PARTITIONS,
        count,
        1_000,
        Duration::from_millis(250),
    );
    for kill in 0..KILLS {
        let mut mirror = start_mirror(&config, addr).await?;
        // Kill only once this incarnation copies records, at a different point each time.
        wait_until(Duration::from_secs(60), || async {
            metrics::total(addr, mirror::RECORDS).await > 0.0
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; source has {:?} records",
                record_count(write.bootstrap(), TOPIC, PARTITIONS)
            )
        })
        .logs_of(&mirror)?;
        tokio::time::sleep(Duration::from_millis(150 + 250 * kill as u64)).await;
        mirror.ensure_running()?;
        mirror.kill9()?;
    }
    let mut mirror = start_mirror(&config, addr).await?;
    load.await??;
    wait_committed(addr, TOPIC, count, Duration::from_secs(120))
        .await
        .logs_of(&mirror)?;
    mirror.ensure_running()?;
    assert_mirrored(&write, &read, TOPIC, count).await?;
    Ok(())
}
