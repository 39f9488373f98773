//! The mirror copies records byte for byte: null keys, tombstones, binary values, repeated and
//! null headers, explicit timestamps, every partition, same order; it leaves internal and
//! excluded topics alone and writes nothing to the source cluster.

use std::time::Duration;

use logpipe_core::metric_names::mirror;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::mirror::*;
use logpipe_tests::{metrics, topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Message;

const TOPIC: &str = "raw.fidelity";
const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_byte_identical_in_the_same_partitions_and_order() -> anyhow::Result<()> {
    let (write, read) = clusters(&[(TOPIC, PARTITIONS)], 2).await?;
    // Outside the selection (internal, not matching): the mirror must neither copy nor need them.
    write.create_topic("_internal.x", 1).await?;
    write.create_topic("other.y", 1).await?;
    let producer = producer(write.bootstrap())?;
    let binary: Vec<u8> = (0..=255u8).collect();
    let mut count = 0;
    for i in 0..60i64 {
        let partition = (i % PARTITIONS as i64) as i32;
        let key = format!("key-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dup",
                value: Some(format!("first-{i}").as_bytes()),
            })
            .insert(Header {
                key: "null",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "dup",
                value: Some(&binary[..(i as usize % 256)]),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(TOPIC)
            .partition(partition)
            .timestamp(1_600_000_000_000 + i * 1000);
        match i % 4 {
            0 => record.payload = Some(&binary),    // binary value, null key
            1 => record.key = Some(key.as_bytes()), // tombstone: key, null value
            2 => {
                record.key = Some(b""); // empty key and empty value
                record.payload = Some(b"");
            }
            _ => {
                record.key = Some(key.as_bytes());
                record.payload = Some(key.as_bytes());
                record.headers = Some(headers);
            }
        }
        producer.send(record).map_err(|(e, _)| e)?;
        count += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    drop(producer);
    let source = write.read_topic(TOPIC, Duration::from_secs(30)).await?;
    assert_eq!(source.len(), count);

    let dir = tempfile::tempdir()?;
    let (config, addr) = mirror_config(dir.path(), "mirror.toml", &write, &read, "")?;
    let mut mirror = start_mirror(&config, addr).await?;
    wait_until(Duration::from_secs(30), || async {
        metrics::sum(addr, mirror::COMMITTED_OFFSET, &[]).await == Some(count as f64)
    })
    .await?;
    mirror.ensure_running()?;

    let target = read.read_topic(TOPIC, Duration::from_secs(30)).await?;
    assert_eq!(target.len(), source.len());
    for (s, t) in source.iter().zip(&target) {
        assert_eq!(s.partition(), t.partition(), "same partition, same order");
        assert_eq!(s.key(), t.key(), "key at {}:{}", s.partition(), s.offset());
        assert_eq!(
            s.payload(),
            t.payload(),
            "value at {}:{}",
            s.partition(),
            s.offset()
        );
        assert_eq!(
            s.timestamp(),
            t.timestamp(),
            "timestamp at {}:{}",
            s.partition(),
            s.offset()
        );
        assert_eq!(
            topic::headers(s),
            topic::headers(t),
            "headers at {}:{}",
            s.partition(),
            s.offset()
        );
    }
    // The tombstones stayed tombstones and the null keys null (not empty).
    assert!(target
        .iter()
        .any(|m| m.payload().is_none() && m.key().is_some()));
    assert!(target.iter().any(|m| m.key().is_none()));
    assert!(target.iter().any(|m| m.key() == Some(b"".as_slice())));

    // Positions live on the target; the source is untouched (same ends, no topic created), and
    // topics outside the selection were not created on the target.
    assert!(
        record_count(read.bootstrap(), STATE_TOPIC, 2)? > 0,
        "positions are stored in the target's state topic"
    );
    assert_eq!(
        write
            .read_topic(TOPIC, Duration::from_secs(30))
            .await?
            .len(),
        count,
        "nothing was written to the source"
    );
    let source_topics = metadata_topics(write.bootstrap())?;
    assert!(
        !source_topics.iter().any(|t| t.starts_with("_lp.")),
        "no state on the source: {source_topics:?}"
    );
    let target_topics = metadata_topics(read.bootstrap())?;
    assert!(
        !target_topics.contains(&"_internal.x".to_owned())
            && !target_topics.contains(&"other.y".to_owned()),
        "{target_topics:?}"
    );

    let status = mirror.terminate(Duration::from_secs(30)).await?;
    assert!(
        status.success(),
        "the mirror drains and exits 0 on SIGTERM: {status}\n{}",
        mirror.logs()
    );
    Ok(())
}

fn metadata_topics(bootstrap: &str) -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect())
}
