//! The dev cluster as the other tests use it: a `logpipe-dev cluster` process, real clients.

use std::collections::HashSet;
use std::time::Duration;

use logpipe_devkit::harness::{read_topic, wait_until, DevCluster};
use logpipe_tests::topic;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// A consumer in `group` subscribed to `topic`, reading from the beginning.
fn group_member(bootstrap: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_round_trip_through_a_consumer_group() {
    const N: usize = 100_000;
    let cluster = DevCluster::start(3, &[("raw.roundtrip", 4)]).await.unwrap();
    let producer = producer(cluster.bootstrap(), &[]);
    let sends: Vec<_> = (0..N)
        .map(|i| {
            let key = format!("k{}", i % 97);
            let value = format!("value-{i}");
            producer
                .send_result(FutureRecord::to("raw.roundtrip").key(&key).payload(&value))
                .expect("queue has room")
        })
        .collect();
    for send in sends {
        send.await.unwrap().expect("delivered");
    }

    let consumer = group_member(cluster.bootstrap(), "roundtrip", "raw.roundtrip");
    let mut seen = HashSet::new();
    let mut partitions = HashSet::new();
    while seen.len() < N {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} records consumed", seen.len()))
            .unwrap();
        let value = std::str::from_utf8(message.payload().unwrap()).unwrap();
        let i: usize = value.strip_prefix("value-").unwrap().parse().unwrap();
        assert_eq!(
            message.key(),
            Some(format!("k{}", i % 97).as_bytes()),
            "key travels with its value"
        );
        assert!(seen.insert(i), "record {i} consumed twice");
        partitions.insert(message.partition());
    }
    assert_eq!(partitions.len(), 4, "keys spread over every partition");
    // Nothing beyond the N records.
    assert_eq!(
        read_topic(
            cluster.bootstrap(),
            "raw.roundtrip",
            Duration::from_secs(60)
        )
        .await
        .unwrap()
        .len(),
        N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_sees_committed_transactions_only() {
    let cluster = DevCluster::start(3, &[("raw.txn", 2)]).await.unwrap();
    let producer = producer(
        cluster.bootstrap(),
        &[("transactional.id", "devcluster-test")],
    );
    let timeout = Timeout::After(Duration::from_secs(30));
    producer.init_transactions(timeout).unwrap();
    let send_batch = |label: &'static str, n: usize| {
        let producer = producer.clone();
        async move {
            for i in 0..n {
                let value = format!("{label}-{i}");
                producer
                    .send(
                        FutureRecord::<(), _>::to("raw.txn")
                            .payload(&value)
                            .partition((i % 2) as i32),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("delivered");
            }
        }
    };
    producer.begin_transaction().unwrap();
    send_batch("committed", 100).await;
    producer.commit_transaction(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send_batch("aborted", 50).await;
    producer.abort_transaction(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send_batch("later", 10).await;
    producer.commit_transaction(timeout).unwrap();

    let values = topic::values(cluster.bootstrap(), "raw.txn").await.unwrap();
    assert_eq!(
        values
            .iter()
            .filter(|v| v.starts_with("committed-"))
            .count(),
        100
    );
    assert_eq!(
        values.iter().filter(|v| v.starts_with("later-")).count(),
        10
    );
    assert!(
        !values.iter().any(|v| v.starts_with("aborted-")),
        "aborted records are invisible: {values:?}"
    );
    assert_eq!(values.len(), 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_a_downed_leader_and_arrive_once() {
    let cluster = DevCluster::start(3, &[("raw.fault", 1)]).await.unwrap();
    let producer = producer(cluster.bootstrap(), &[("message.timeout.ms", "0")]);
    // Make broker 2 the leader, then take it down.
    cluster.set_leader("raw.fault", 0, 2).await.unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to("raw.fault").payload("before"),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered while the leader is up");
    cluster.broker_down(2).await.unwrap();
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let value = format!("during-{i}");
            producer
                .send_result(FutureRecord::<(), _>::to("raw.fault").payload(&value))
                .expect("queued")
        })
        .collect();
    // While the leader is down nothing is acknowledged.
    let waiting = unacknowledged_after_a_moment(&producer).await;
    assert!(waiting > 0, "records should be waiting for the leader");
    cluster.broker_up(2).await.unwrap();
    for send in sends {
        send.await
            .unwrap()
            .expect("delivered after the leader came back");
    }
    let values = topic::values(cluster.bootstrap(), "raw.fault")
        .await
        .unwrap();
    let mut expected = vec!["before".to_owned()];
    expected.extend((0..200).map(|i| format!("during-{i}")));
    assert_eq!(values, expected, "every record once, in order");
}

/// Records still in the producer's queue a moment after sending to a downed leader.
async fn unacknowledged_after_a_moment(producer: &FutureProducer) -> i32 {
    let _ = producer.flush(Timeout::After(Duration::from_millis(500)));
    producer.in_flight_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_are_injected_and_retried() {
    let cluster = DevCluster::start(1, &[("raw.errors", 1)]).await.unwrap();
    let producer = producer(cluster.bootstrap(), &[("message.timeout.ms", "0")]);
    cluster
        .request_errors(
            "Produce",
            &["NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT", "_TRANSPORT"],
        )
        .await
        .unwrap();
    for i in 0..20 {
        producer
            .send(
                FutureRecord::<(), _>::to("raw.errors").payload(&format!("v{i}")),
                Duration::from_secs(30),
            )
            .await
            .expect("delivered despite the injected errors");
    }
    let records = read_topic(cluster.bootstrap(), "raw.errors", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(records.len(), 20, "idempotent retries add no duplicates");
    assert!(cluster
        .request_errors("Produce", &["NO_SUCH_ERROR"])
        .await
        .is_err());
    assert!(cluster.broker_down(7).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_produces_and_consumes_through_the_dev_cluster() {
    let cluster = DevCluster::start(1, &[("raw.kcat", 1)]).await.unwrap();
    let kcat = which_kcat();
    let mut produce = std::process::Command::new(&kcat)
        .args(["-b", cluster.bootstrap(), "-t", "raw.kcat", "-P"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    produce
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    assert!(produce.wait().unwrap().success());
    let output = std::process::Command::new(&kcat)
        .args([
            "-b",
            cluster.bootstrap(),
            "-t",
            "raw.kcat",
            "-C",
            "-e",
            "-q",
            "-o",
            "beginning",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "one\ntwo\nthree\n");
}

fn which_kcat() -> String {
    for name in ["kcat", "kafkacat"] {
        if std::process::Command::new(name).arg("-V").output().is_ok() {
            return name.to_owned();
        }
    }
    panic!("kcat is not installed: scripts/test installs it (apt-get install kcat)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_exits_cleanly_on_sigterm() {
    let mut cluster = DevCluster::start(1, &[]).await.unwrap();
    let process = cluster.process().expect("a dev cluster process");
    let status = process.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// The dev cluster keeps every record by default, as Kafka does: 8 MiB written to one partition
/// is all still there. `--retention-bytes` (per partition) and `--memory-budget` (all partitions)
/// bound it, and each deletion is logged with the partition and offsets it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_everything_by_default_and_says_what_it_deletes() {
    async fn log_start_after_8_mib(args: &[&str]) -> i64 {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut cluster = DevCluster::start_with_args("", 1, &[("retained", 1)], &args)
            .await
            .unwrap();
        let producer = producer(cluster.bootstrap(), &[("linger.ms", "0")]);
        let payload = vec![b'x'; 512 * 1024];
        for i in 0..16 {
            // One batch per record, awaited, so every batch is its own message set.
            producer
                .send(
                    FutureRecord::<str, _>::to("retained")
                        .partition(0)
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
        }
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks("retained", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(high, 16);
        if low > 0 {
            let process = cluster.process().expect("a dev cluster");
            // The first deletion is reported at once; later ones are summed every 10 s.
            let said = "retained [0]: retention deleted offsets 0..";
            wait_until(Duration::from_secs(10), || {
                let found = process.stderr().contains(said);
                async move { found }
            })
            .await
            .unwrap_or_else(|_| panic!("no warning {said:?} in\n{}", process.stderr()));
        }
        low
    }
    assert_eq!(log_start_after_8_mib(&[]).await, 0);
    let five_mib = (5 * 1024 * 1024).to_string();
    assert!(log_start_after_8_mib(&["--retention-bytes", &five_mib]).await > 0);
    assert!(log_start_after_8_mib(&["--memory-budget", &five_mib]).await > 0);
}

/// The topic administration the dev cluster serves (patched mock): CreateTopics with a partition
/// count, a replication factor and configs; DescribeConfigs returning them; CreatePartitions
/// growing a topic that already holds data, with the old records intact and the new partitions
/// usable by producers and consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_described_and_grown_through_the_admin_api() {
    use rdkafka::admin::{
        AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
        TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let cluster = DevCluster::start(3, &[("raw.control", 1)]).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let options = |validate_only: bool| {
        AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .validate_only(validate_only)
    };
    let create = |topic: NewTopic<'static>, validate_only: bool| {
        let (admin, options) = (&admin, options(validate_only));
        async move {
            admin
                .create_topics([&topic], &options)
                .await
                .unwrap()
                .remove(0)
                .map_err(|(_, code)| code)
        }
    };
    let grow = |total: usize, validate_only: bool| {
        let (admin, options) = (&admin, options(validate_only));
        async move {
            admin
                .create_partitions([&NewPartitions::new("raw.admin", total)], &options)
                .await
                .unwrap()
                .remove(0)
                .map_err(|(_, code)| code)
        }
    };
    let plain = |name: &'static str, partitions: i32, replicas: i32| {
        NewTopic::new(name, partitions, TopicReplication::Fixed(replicas))
    };
    let partitions = |topic: &'static str| {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let topic = &metadata.topics()[0];
        if topic.error().is_some() {
            return Vec::new();
        }
        topic
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .collect::<Vec<_>>()
    };

    let topic = NewTopic::new("raw.admin", 3, TopicReplication::Fixed(2))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "3600000");
    assert_eq!(create(topic, false).await, Ok("raw.admin".to_owned()));
    assert_eq!(
        partitions("raw.admin"),
        vec![2, 2, 2],
        "3 partitions of 2 replicas"
    );
    assert_eq!(
        create(plain("raw.admin", 1, 1), false).await,
        Err(RDKafkaErrorCode::TopicAlreadyExists)
    );
    assert_eq!(
        create(plain("raw.wide", 1, 4), false).await,
        Err(RDKafkaErrorCode::InvalidReplicationFactor),
        "4 replicas on 3 brokers"
    );
    let unknown =
        NewTopic::new("raw.odd", 1, TopicReplication::Fixed(1)).set("no.such.config", "1");
    assert_eq!(
        create(unknown, false).await,
        Err(RDKafkaErrorCode::InvalidConfig)
    );
    assert_eq!(
        create(plain("raw.dry", 2, 1), true).await,
        Ok("raw.dry".to_owned())
    );
    assert_eq!(
        create(plain("bad name!", 1, 1), false).await,
        Err(RDKafkaErrorCode::InvalidTopic)
    );
    // Refused and validate-only requests create nothing (not even by the metadata request).
    for absent in ["raw.wide", "raw.odd", "raw.dry"] {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .set("allow.auto.create.topics", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(absent), Duration::from_secs(10))
            .unwrap();
        assert!(
            metadata.topics()[0].error().is_some(),
            "{absent} must not exist"
        );
    }

    let described = admin
        .describe_configs([&ResourceSpecifier::Topic("raw.admin")], &options(false))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let entry = |name: &str| {
        described
            .get(name)
            .unwrap_or_else(|| panic!("{name} described"))
    };
    let value_and_source = |name: &str| {
        let entry = entry(name);
        (entry.value.as_deref(), &entry.source)
    };
    for (name, value, source) in [
        ("cleanup.policy", "compact", ConfigSource::DynamicTopic),
        ("retention.ms", "3600000", ConfigSource::DynamicTopic),
        ("max.message.bytes", "1048588", ConfigSource::Default),
    ] {
        assert_eq!(value_and_source(name), (Some(value), &source), "{name}");
    }
    assert!(entry("max.message.bytes").is_default);
    assert_eq!(
        cluster.topic_configs("raw.admin").await.unwrap(),
        [
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("retention.ms".to_owned(), "3600000".to_owned())
        ]
        .into()
    );
    assert!(
        cluster
            .topic_configs("raw.control")
            .await
            .unwrap()
            .is_empty(),
        "a topic made by the control API sets nothing"
    );
    assert!(
        cluster.topic_configs("raw.none").await.is_err(),
        "an unknown topic is an error"
    );

    // Data in the old partitions, then grow the topic from 3 to 5 partitions.
    let send = |producer: &FutureProducer, partition: i32, value: String| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to("raw.admin")
                        .payload(&value)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await
                .expect("delivered")
        }
    };
    let before = producer(cluster.bootstrap(), &[]);
    for i in 0..30 {
        send(&before, i % 3, format!("before-{i}")).await;
    }
    assert_eq!(
        grow(2, false).await,
        Err(RDKafkaErrorCode::InvalidPartitions),
        "shrinking is refused"
    );
    assert_eq!(
        grow(3, false).await,
        Err(RDKafkaErrorCode::InvalidPartitions),
        "the same count is refused"
    );
    assert_eq!(grow(7, true).await, Ok("raw.admin".to_owned()));
    assert_eq!(
        partitions("raw.admin").len(),
        3,
        "validate_only adds nothing"
    );
    assert_eq!(grow(5, false).await, Ok("raw.admin".to_owned()));
    assert_eq!(
        partitions("raw.admin"),
        vec![2; 5],
        "new partitions keep the topic's replication"
    );
    cluster.add_partitions("raw.admin", 6).await.unwrap();
    assert_eq!(partitions("raw.admin").len(), 6);

    // Old and new partitions take records (from a new producer: a running one learns the new
    // partitions at its next metadata refresh).
    let after = producer(cluster.bootstrap(), &[]);
    for i in 0..60 {
        send(&after, i % 6, format!("after-{i}")).await;
    }
    let records = read_topic(cluster.bootstrap(), "raw.admin", Duration::from_secs(60))
        .await
        .unwrap();
    let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); 6];
    for record in &records {
        by_partition[record.partition() as usize]
            .push(String::from_utf8(record.payload().unwrap().to_vec()).unwrap());
    }
    for (partition, values) in by_partition.iter().enumerate() {
        let mut expected: Vec<String> = (0..30)
            .filter(|i| i % 3 == partition as i32)
            .map(|i| format!("before-{i}"))
            .collect();
        expected.extend(
            (0..60)
                .filter(|i| i % 6 == partition as i32)
                .map(|i| format!("after-{i}")),
        );
        assert_eq!(
            values, &expected,
            "partition {partition}: old records intact, new ones appended"
        );
    }

    // A consumer group is assigned the new partitions too.
    let consumer = group_member(cluster.bootstrap(), "grown", "raw.admin");
    let mut seen = HashSet::new();
    while seen.len() < 90 {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 90 records consumed", seen.len()))
            .unwrap();
        assert!(
            seen.insert((message.partition(), message.offset())),
            "consumed twice"
        );
    }
    assert_eq!(
        seen.iter().map(|(p, _)| *p).collect::<HashSet<_>>().len(),
        6
    );
}

/// Requests to the admin APIs take injected errors like any other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_take_injected_errors() {
    let cluster = DevCluster::start(1, &[]).await.unwrap();
    cluster
        .request_errors("CreateTopics", &["TOPIC_AUTHORIZATION_FAILED"])
        .await
        .unwrap();
    let refused = cluster
        .create_topic_with_configs("raw.denied", 1, -1, &[])
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("uthoriz"), "{refused:#}");
    cluster
        .create_topic_with_configs("raw.denied", 1, -1, &[])
        .await
        .expect("the next request is served");
}

/// The consumer's count of Fetch requests, from librdkafka's statistics.
#[derive(Default)]
struct FetchCount(std::sync::atomic::AtomicI64);

impl rdkafka::ClientContext for FetchCount {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let fetches = statistics
            .brokers
            .values()
            .filter_map(|b| b.req.get("Fetch"))
            .sum();
        self.0.store(fetches, std::sync::atomic::Ordering::Relaxed);
    }
}

impl rdkafka::consumer::ConsumerContext for FetchCount {}

/// Mock patch 0008: a fetch answers with every message set up to the byte limit, as Kafka does,
/// so reading many small batches (a changelog of one record per transaction, say) takes a few
/// fetches rather than one per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_returns_every_message_set_up_to_its_limit() {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::TopicPartitionList;
    const BATCHES: usize = 2_000;
    let cluster = DevCluster::start(1, &[("small.batches", 1)]).await.unwrap();
    // One record per batch, many requests in flight.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for i in 0..BATCHES {
        let value = format!("v{i}");
        producer
            .send(BaseRecord::<(), _>::to("small.batches").payload(&value))
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let consumer: BaseConsumer<FetchCount> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "fetch-count")
        .set("statistics.interval.ms", "100")
        .create_with_context(FetchCount::default())
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("small.batches", 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = 0;
    while read < BATCHES {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => panic!("{e}"),
            None => panic!("only {read} of {BATCHES} records read"),
        }
    }
    let fetches = || {
        consumer
            .context()
            .0
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_until(Duration::from_secs(10), || async {
        consumer.poll(Duration::from_millis(50));
        fetches() > 0
    })
    .await
    .unwrap();
    assert!(
        fetches() < (BATCHES / 20) as i64,
        "{} fetches for {BATCHES} batches",
        fetches()
    );
}

/// Counts the rebalances a consumer goes through (each one starts with a revocation).
#[derive(Default)]
struct Rebalances(std::sync::atomic::AtomicUsize);

impl rdkafka::ClientContext for Rebalances {}

impl rdkafka::consumer::ConsumerContext for Rebalances {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        _: &rdkafka::consumer::Rebalance<'_>,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A static member (`group.instance.id`) of `group` on `topic`, with a session long enough that
/// waiting for it would show.
fn static_member(
    bootstrap: &str,
    group: &str,
    topic: &str,
    instance: &str,
) -> rdkafka::consumer::BaseConsumer<Rebalances> {
    let consumer: rdkafka::consumer::BaseConsumer<Rebalances> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("group.instance.id", instance)
        .set("session.timeout.ms", "30000")
        .set("heartbeat.interval.ms", "500")
        .create_with_context(Rebalances::default())
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// The partitions a consumer owns, once it owns `count` of them; polls `others` meanwhile so
/// that they heartbeat and serve their rebalances.
async fn owned(
    consumer: &rdkafka::consumer::BaseConsumer<Rebalances>,
    others: &[&rdkafka::consumer::BaseConsumer<Rebalances>],
    count: usize,
) -> Vec<i32> {
    let partitions = || {
        let mut owned: Vec<i32> = consumer
            .assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        owned.sort();
        owned
    };
    wait_until(Duration::from_secs(20), || async {
        for c in std::iter::once(&consumer).chain(others) {
            c.poll(Duration::from_millis(20));
        }
        partitions().len() == count
    })
    .await
    .unwrap_or_else(|_| panic!("owns {:?}, not {count} partitions", partitions()));
    partitions()
}

/// Mock patch 0010 (KIP-345): a static member's new instance (a restart after kill -9) takes
/// its predecessor's place and partitions at once; the group does not rebalance, so neither
/// the restarted member nor the others wait for the dead one's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_takes_its_partitions_back_without_a_rebalance() {
    let cluster = DevCluster::start(1, &[("static.members", 4)])
        .await
        .unwrap();
    let bootstrap = cluster.bootstrap();
    let a = static_member(bootstrap, "static", "static.members", "instance-a");
    let b = static_member(bootstrap, "static", "static.members", "instance-b");
    let a_owned = owned(&a, &[&b], 2).await;
    let b_owned = owned(&b, &[&a], 2).await;
    let b_rebalances = b.context().0.load(std::sync::atomic::Ordering::Relaxed);

    drop(a); // a static member leaves no LeaveGroup behind, as after kill -9
    let restarted_at = std::time::Instant::now();
    let a = static_member(bootstrap, "static", "static.members", "instance-a");
    assert_eq!(owned(&a, &[&b], 2).await, a_owned, "the same partitions");
    let took = restarted_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} (session 30 s)"
    );
    // Both heartbeat for a while: a rebalance would reach b within a heartbeat interval.
    let heartbeats_later = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < heartbeats_later {
        a.poll(Duration::from_millis(20));
        b.poll(Duration::from_millis(20));
    }
    assert_eq!(
        b.context().0.load(std::sync::atomic::Ordering::Relaxed),
        b_rebalances,
        "b went through a rebalance"
    );
    assert_eq!(owned(&b, &[&a], 2).await, b_owned);
}

/// Mock patch 0011: a fetch that found nothing is answered as soon as the log grows, as Kafka
/// answers it, not a whole `fetch.wait.max.ms` later: every hop's consumer waited up to that
/// long (librdkafka's default: 500 ms) for each new record on the dev cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_answered_when_records_arrive() {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::TopicPartitionList;
    let cluster = DevCluster::start(1, &[("waiting.fetch", 1)]).await.unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "waiting-fetch")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("waiting.fetch", 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    // The consumer's fetch is waiting on the empty partition by now.
    assert!(consumer.poll(Duration::from_millis(1500)).is_none());
    let producer = producer(cluster.bootstrap(), &[("linger.ms", "0")]);
    producer
        .send(
            FutureRecord::<(), _>::to("waiting.fetch").payload("one"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    let acknowledged = std::time::Instant::now();
    let message = consumer
        .poll(Duration::from_secs(10))
        .expect("the record arrives")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"one"[..]));
    let took = acknowledged.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "the record arrived {took:?} after its acknowledgement (fetch.wait.max.ms 5 s)"
    );
}
