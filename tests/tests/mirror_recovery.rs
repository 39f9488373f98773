//! The recovery path after a crash, made deterministic: the dev cluster shows records of an
//! unfinished transaction to read_committed readers, so a crashed owner can leave records on
//! the target after the last committed position. Here such leftovers are placed on the target
//! by hand: the restarted mirror must verify them against the source instead of writing them
//! again, and must refuse a target partition holding records that are not its copies.

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::{wait_until, Process};
use logpipe_tests::mirror::*;
use logpipe_tests::{metrics, service};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Message;

const TOPIC: &str = "raw.recovery";

/// Writes `records` to the target byte for byte, as the mirror would have.
fn leave_on_target(bootstrap: &str, records: &[OwnedMessage]) -> anyhow::Result<()> {
    let producer = producer(bootstrap)?;
    for m in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(TOPIC).partition(m.partition());
        record.key = m.key();
        record.payload = m.payload();
        record.timestamp = m.timestamp().to_millis();
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crashed_owner_are_verified_not_copied_again() -> anyhow::Result<()> {
    let (write, read) = clusters(&[(TOPIC, 1)], 1).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let source = producer(write.bootstrap())?;
    produce_ids(&source, TOPIC, 1, 0..100)?;
    let mut mirror = start_mirror(&config, addr).await?;
    wait_committed(addr, TOPIC, 100, Duration::from_secs(30)).await?;
    service::stop(&mut mirror).await?;

    // 50 more records; the first 30 of them already on the target, uncommitted leftovers.
    produce_ids(&source, TOPIC, 1, 100..150)?;
    let all = write.read_topic(TOPIC, Duration::from_secs(30)).await?;
    leave_on_target(read.bootstrap(), &all[100..130])?;

    let mirror = start_mirror(&config, addr).await?;
    wait_committed(addr, TOPIC, 150, Duration::from_secs(30))
        .await
        .logs_of(&mirror)?;
    assert_eq!(
        metrics::sum(addr, mirror::VERIFIED_RECORDS, &[]).await,
        Some(30.0)
    );
    assert_mirrored(&write, &read, TOPIC, 150).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_record_on_the_target_stops_the_shard() -> anyhow::Result<()> {
    let (write, read) = clusters(&[(TOPIC, 1)], 1).await?;
    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    produce_ids(&producer(write.bootstrap())?, TOPIC, 1, 0..10)?;
    // Someone else wrote to the target partition first.
    let foreign = producer(read.bootstrap())?;
    foreign
        .send(
            BaseRecord::<str, str>::to(TOPIC)
                .partition(0)
                .payload("not a copy"),
        )
        .map_err(|(e, _)| e)?;
    foreign.flush(Duration::from_secs(30))?;

    let mut mirror: Process = start_mirror(&config, addr).await?;
    wait_until(Duration::from_secs(30), || async {
        metrics::total(addr, mirror::SHARD_ERRORS).await >= 1.0
    })
    .await
    .logs_of(&mirror)?;
    mirror.ensure_running()?;
    assert!(
        mirror
            .stderr()
            .contains("another producer writes to the target partition"),
        "{}",
        mirror.stderr()
    );
    let target = read.read_topic(TOPIC, Duration::from_secs(30)).await?;
    assert_eq!(
        target.len(),
        1,
        "the mirror added nothing after the foreign record"
    );
    Ok(())
}
