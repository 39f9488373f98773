//! `harness::TopicReader` against a dev cluster: each read takes only what was committed since
//! the previous one (transaction markers and aborted records included), a read with nothing new
//! still ends, and reaching a partition's end is not logged as an error.
//!
//! Needs the `logpipe-dev` binary, which cargo builds for this package's tests.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logpipe_devkit::harness::{DevCluster, TopicReader};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

const TOPIC: &str = "raw.reader";
const T: Duration = Duration::from_secs(30);

/// Sends `values` round-robin over two partitions in one transaction, committed or aborted.
fn transaction(producer: &BaseProducer, values: std::ops::Range<u32>, commit: bool) {
    producer.begin_transaction().unwrap();
    for v in values {
        let value = v.to_string();
        producer
            .send(
                BaseRecord::<(), _>::to(TOPIC)
                    .payload(&value)
                    .partition((v % 2) as i32),
            )
            .unwrap();
    }
    producer.flush(T).unwrap();
    if commit {
        producer.commit_transaction(T).unwrap();
    } else {
        producer.abort_transaction(T).unwrap();
    }
}

/// Everything logged while `f` runs, at any level.
fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    (result, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_takes_what_was_committed_since_the_last() -> anyhow::Result<()> {
    let cluster = DevCluster::start(1, &[(TOPIC, 2)]).await?;
    let bootstrap = cluster.bootstrap().to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "topic-reader-test")
            .set("linger.ms", "1")
            .create()
            .unwrap();
        producer.init_transactions(T).unwrap();
        let mut reader = TopicReader::new(&bootstrap, TOPIC, T).unwrap();
        let read = |reader: &mut TopicReader| {
            let mut values = Vec::new();
            let (count, log) = logged(|| {
                reader
                    .read_new(T, |m| {
                        values.push(
                            std::str::from_utf8(m.payload().unwrap())
                                .unwrap()
                                .parse::<u32>()
                                .unwrap(),
                        );
                        Ok(())
                    })
                    .unwrap()
            });
            assert!(
                !log.contains("EOF") && !log.contains("ERROR"),
                "a partition's end is not an error: {log}"
            );
            assert_eq!(count as usize, values.len());
            values.sort();
            values
        };

        // An empty topic: the read ends at once.
        assert_eq!(read(&mut reader), Vec::<u32>::new());
        transaction(&producer, 0..10, true);
        assert_eq!(read(&mut reader), (0..10).collect::<Vec<_>>());
        // Nothing new since (the commit markers are past the last record): ends, reads nothing.
        assert_eq!(read(&mut reader), Vec::<u32>::new());
        transaction(&producer, 10..20, false);
        transaction(&producer, 20..25, true);
        assert_eq!(
            read(&mut reader),
            (20..25).collect::<Vec<_>>(),
            "only the new committed records"
        );
        assert_eq!(read(&mut reader), Vec::<u32>::new());
        // A fresh reader reads everything committed, from the beginning.
        let mut fresh = TopicReader::new(&bootstrap, TOPIC, T).unwrap();
        assert_eq!(read(&mut fresh), (0..10).chain(20..25).collect::<Vec<_>>());
    })
    .await?;
    Ok(())
}
