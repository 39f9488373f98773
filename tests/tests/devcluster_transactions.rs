//! The dev cluster's transaction semantics (the patched mock cluster): each behaviour that the
//! exactly-once components rely on, checked with real clients against a `logpipe-dev cluster`.

use std::time::Duration;

use logpipe_devkit::harness::{wait_until, DevCluster};
use logpipe_devkit::measure::Ends;
use logpipe_tests::topic;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const T: Timeout = Timeout::After(Duration::from_secs(30));

fn transactional(bootstrap: &str, id: &str, timeout_ms: u32) -> FutureProducer {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    producer.init_transactions(T).expect("init_transactions");
    producer
}

/// A consumer in group `group` that never subscribes: its group metadata and committed offsets.
fn group_member(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer")
}

async fn send(producer: &FutureProducer, topic: &str, values: &[&str]) {
    for value in values {
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .payload(*value)
                    .partition(0),
                Duration::from_secs(30),
            )
            .await
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_stay_hidden_until_committed() {
    let cluster = DevCluster::start(1, &[("raw.open", 1)]).await.unwrap();
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    send(&plain, "raw.open", &["before"]).await;
    let producer = transactional(cluster.bootstrap(), "open", 60_000);
    producer.begin_transaction().unwrap();
    send(&producer, "raw.open", &["in-flight-1", "in-flight-2"]).await;
    // Written after the open transaction began: above the last stable offset, so hidden too.
    send(&plain, "raw.open", &["after"]).await;
    assert_eq!(
        topic::values(cluster.bootstrap(), "raw.open")
            .await
            .unwrap(),
        ["before"]
    );
    // What the pipeline benchmark polls: a read_committed reader's end is the last stable offset.
    let ends = Ends::new(cluster.bootstrap(), "ends", "raw.open", 1).unwrap();
    assert_eq!(ends.now().unwrap(), [1]);
    producer.commit_transaction(T).unwrap();
    assert_eq!(
        topic::values(cluster.bootstrap(), "raw.open")
            .await
            .unwrap(),
        ["before", "in-flight-1", "in-flight-2", "after"]
    );
    // Four records and the commit's marker.
    assert_eq!(ends.now().unwrap(), [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producer_fences_the_old_one_and_aborts_its_transaction() {
    let cluster = DevCluster::start(3, &[("raw.fence", 1)]).await.unwrap();
    let zombie = transactional(cluster.bootstrap(), "shard-0", 60_000);
    zombie.begin_transaction().unwrap();
    send(&zombie, "raw.fence", &["zombie-1", "zombie-2"]).await;

    let successor = transactional(cluster.bootstrap(), "shard-0", 60_000);
    successor.begin_transaction().unwrap();
    send(&successor, "raw.fence", &["successor"]).await;
    successor.commit_transaction(T).unwrap();

    let err = zombie
        .commit_transaction(T)
        .expect_err("the fenced producer cannot commit");
    assert!(matches!(err, KafkaError::Transaction(_)), "{err:?}");
    assert_eq!(
        topic::values(cluster.bootstrap(), "raw.fence")
            .await
            .unwrap(),
        ["successor"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_offsets_apply_only_on_commit() {
    let cluster = DevCluster::start(1, &[("raw.offsets", 1), ("clean.offsets", 1)])
        .await
        .unwrap();
    let group = group_member(cluster.bootstrap(), "validator");
    let metadata = group.group_metadata().expect("group metadata");
    let producer = transactional(cluster.bootstrap(), "offsets", 60_000);
    let offsets = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("raw.offsets", 0, Offset::Offset(offset))
            .unwrap();
        tpl
    };
    let committed = || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("raw.offsets", 0);
        group
            .committed_offsets(tpl, T)
            .unwrap()
            .find_partition("raw.offsets", 0)
            .unwrap()
            .offset()
    };

    // A transaction that writes `value` and sends offset `offset`, then commits or aborts.
    let transaction = |value: &'static str, offset: i64, commit: bool| {
        let (producer, metadata, offsets) = (&producer, &metadata, &offsets);
        async move {
            producer.begin_transaction().unwrap();
            send(producer, "clean.offsets", &[value]).await;
            producer
                .send_offsets_to_transaction(&offsets(offset), metadata, T)
                .unwrap();
            if commit {
                producer.commit_transaction(T).unwrap();
            } else {
                producer.abort_transaction(T).unwrap();
            }
        }
    };

    transaction("a", 10, false).await;
    assert_eq!(
        committed(),
        Offset::Invalid,
        "aborted offsets are not committed"
    );

    transaction("b", 20, true).await;
    assert_eq!(committed(), Offset::Offset(20));
    assert_eq!(
        topic::values(cluster.bootstrap(), "clean.offsets")
            .await
            .unwrap(),
        ["b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transactions_are_aborted_after_their_timeout() {
    let cluster = DevCluster::start(1, &[("raw.timeout", 1)]).await.unwrap();
    let abandoned = transactional(cluster.bootstrap(), "abandoned", 2_000);
    abandoned.begin_transaction().unwrap();
    send(&abandoned, "raw.timeout", &["lost-1"]).await;
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    send(&plain, "raw.timeout", &["later"]).await;
    // Until the cluster aborts the transaction, it holds the stable end of the partition back.
    assert_eq!(
        topic::values(cluster.bootstrap(), "raw.timeout")
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let bootstrap = cluster.bootstrap().to_owned();
    wait_until(Duration::from_secs(30), || {
        let bootstrap = bootstrap.clone();
        async move { topic::values(&bootstrap, "raw.timeout").await.unwrap() == ["later"] }
    })
    .await
    .expect("the abandoned transaction is aborted after its 2 s timeout");
    assert!(
        abandoned.commit_transaction(T).is_err(),
        "the timed-out producer is fenced"
    );
}

/// The client half of the vendored patch: upstream librdkafka drops a group-coordinator lookup
/// whose retries are used up and then waits for it forever, so `send_offsets_to_transaction`
/// never returns, whatever its timeout (librdkafka issue 5456; seen as a validator hung for good
/// after a read-cluster broker outage). Patched, the lookup is repeated every second and the
/// request fails at its timeout at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_offsets_outlives_a_failing_coordinator_lookup() {
    let cluster = DevCluster::start(1, &[("raw.lookup", 1), ("clean.lookup", 1)])
        .await
        .unwrap();
    let group = group_member(cluster.bootstrap(), "lookup");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("raw.lookup", 0);
    // The consumer finds its coordinator now, so the injected errors below reach the producer.
    group
        .committed_offsets(tpl, T)
        .expect("group coordinator found");
    let metadata = group.group_metadata().expect("group metadata");
    let producer = transactional(cluster.bootstrap(), "lookup", 60_000);
    producer.begin_transaction().unwrap();
    send(&producer, "clean.lookup", &["x"]).await;
    // Exactly one more failure than FindCoordinator's two retries: a fourth would disturb the
    // transaction coordinator too, whose state change re-runs the lookup even unpatched.
    cluster
        .request_errors("FindCoordinator", &["COORDINATOR_NOT_AVAILABLE"; 3])
        .await
        .unwrap();

    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("raw.lookup", 0, Offset::Offset(7))
            .unwrap();
        let sent =
            producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(20));
        let _ = done.send(sent.and_then(|()| producer.commit_transaction(T)));
    });
    // A hung call never answers; the thread is left behind and ends with the test process.
    let outcome = result
        .recv_timeout(Duration::from_secs(60))
        .expect("send_offsets_to_transaction returned");
    outcome.expect("offsets sent and committed once the lookup succeeds");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("raw.lookup", 0);
    let committed = group.committed_offsets(tpl, T).unwrap();
    assert_eq!(
        committed.find_partition("raw.lookup", 0).unwrap().offset(),
        Offset::Offset(7)
    );
}
