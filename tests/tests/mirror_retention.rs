//! Retention overtaking the mirror: while the mirror is stopped, the source deletes records it
//! had not copied yet (the test's dev clusters keep at most 5 MiB per partition and delete the
//! oldest batches beyond that, like size-based retention). The restarted mirror raises the data-loss
//! alarm and follows the policy: `stop` copies nothing more of that partition,
//! `resume-from-earliest` continues from the earliest retained record.

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::mirror::*;
use logpipe_tests::{metrics, service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Message;

const TOPIC: &str = "raw.retention";
const RETENTION_BYTES: u64 = 5 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_loss_is_detected_and_the_policy_followed() -> anyhow::Result<()> {
    let (write, read) = clusters_retaining(&[(TOPIC, 1)], 1, Some(RETENTION_BYTES)).await?;
    let dir = tempfile::tempdir()?;
    let (stop_config, addr) = mirror_config(dir.path(), "stop.toml", &write, &read, "")?;

    // Phase 1: 100 small records, mirrored and committed.
    let producer = producer(write.bootstrap())?;
    produce_ids(&producer, TOPIC, 1, 0..100)?;
    let mut mirror = start_mirror(&stop_config, addr).await?;
    wait_committed(addr, TOPIC, 100, Duration::from_secs(30)).await?;
    service::stop(&mut mirror).await?;

    // Phase 2, mirror stopped: 12 records of 600 KB push the first batches out of the source.
    let big: Vec<u8> = (0..600 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for i in 0..12 {
        let key = format!("big-{i}");
        producer
            .send(BaseRecord::to(TOPIC).partition(0).key(&key).payload(&big))
            .map_err(|(e, _)| e)?;
        producer.flush(Duration::from_secs(30))?;
    }
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", write.bootstrap())
        .create()?;
    let (log_start, end) = consumer.fetch_watermarks(TOPIC, 0, Duration::from_secs(10))?;
    assert!(
        log_start > 100,
        "retention deleted the records after position 100 (log start {log_start})"
    );
    assert_eq!(end, 112);

    // Policy stop: alarm, error log, and nothing more copied for the partition.
    let mut mirror = start_mirror(&stop_config, addr).await?;
    wait_until(Duration::from_secs(30), || async {
        metrics::sum(addr, mirror::DATA_LOSS_RECORDS, &[("topic", TOPIC)]).await
            == Some((log_start - 100) as f64)
    })
    .await?;
    // The shard's session decides each partition once, when it starts: a session that started
    // with the partition stopped never copies it, so once it is up the target's count is final.
    wait_until(Duration::from_secs(30), || async {
        mirror
            .stderr()
            .lines()
            .any(|l| l.contains("shard session started") && l.contains("stopped=1"))
    })
    .await
    .logs_of(&mirror)?;
    assert_eq!(
        read.read_topic(TOPIC, Duration::from_secs(30)).await?.len(),
        100
    );
    assert!(mirror.stderr().contains("DATA LOSS"), "{}", mirror.stderr());
    service::stop(&mut mirror).await?;

    // Policy resume-from-earliest: continues from the log start, the alarm stays visible.
    let (resume_config, addr) = mirror_config(
        dir.path(),
        "resume.toml",
        &write,
        &read,
        "on_data_loss = \"resume-from-earliest\"",
    )?;
    let mirror = start_mirror(&resume_config, addr).await?;
    wait_committed(addr, TOPIC, 112, Duration::from_secs(30)).await?;
    assert_eq!(
        metrics::sum(addr, mirror::DATA_LOSS_EVENTS, &[("topic", TOPIC)]).await,
        Some(1.0)
    );
    let target = read.read_topic(TOPIC, Duration::from_secs(30)).await?;
    let retained = write.read_topic(TOPIC, Duration::from_secs(30)).await?;
    assert_eq!(target.len(), 100 + retained.len());
    let copied: Vec<_> = target[100..]
        .iter()
        .map(|m| (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))
        .collect();
    let expected: Vec<_> = retained
        .iter()
        .map(|m| (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))
        .collect();
    assert!(
        copied == expected,
        "the target continues with exactly the retained source records"
    );
    drop(mirror);
    Ok(())
}
