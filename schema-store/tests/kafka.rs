//! Kafka storage, with real processes against a dev cluster: two instances serve one registry
//! (same ids through either, read-your-writes on the instance written to), the other instance
//! takes over when the leader is killed with SIGKILL and never reuses an id, and a `_schemas`
//! topic written the way Confluent writes it is adopted in place. Needs the binaries built
//! (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::CT;
use logpipe_core::metric_names::schema_store as metric;
use logpipe_devkit::harness::{free_addr, wait_until, DevCluster, Process};
use logpipe_devkit::prometheus;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rdkafka::Message;
use serde_json::{json, Value};

mod common;

struct Instance {
    process: Process,
    base: String,
    telemetry: SocketAddr,
}

/// Writers must authenticate (anonymous reads are allowed), so a forwarded write only succeeds
/// when the follower passes the caller's credentials on to the leader.
const USER: &str = "ci";
const PASSWORD: &str = "ci-password";

/// Starts an instance on `topic` without waiting for it.
fn spawn(dir: &std::path::Path, bootstrap: &str, topic: &str) -> Instance {
    let (api, telemetry) = (free_addr(), free_addr());
    let config = dir.join(format!("store-{}.toml", api.port()));
    let hash = logpipe_schema_store::hash_password(PASSWORD);
    std::fs::write(
        &config,
        format!(
            "listen = \"{api}\"\n[storage]\nkind = \"kafka\"\ntopic = \"{topic}\"\n[kafka]\nbootstrap = \"{bootstrap}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
             [auth]\nanonymous_read = true\n[[auth.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\nrole = \"write\"\n"
        ),
    )
    .unwrap();
    let process = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    Instance {
        process,
        base: format!("http://{api}"),
        telemetry,
    }
}

async fn start(dir: &std::path::Path, bootstrap: &str) -> Instance {
    let mut instance = spawn(dir, bootstrap, "_schemas");
    instance
        .process
        .wait_ready(instance.telemetry, Duration::from_secs(60))
        .await
        .unwrap();
    instance
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn register(base: &str, subject: &str, schema: &Value) -> (u16, Value) {
    let body = json!({"schema": schema.to_string()}).to_string();
    let response = client()
        .post(format!("{base}/subjects/{subject}/versions"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", CT)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) => (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

fn record(name: &str) -> Value {
    json!({"type": "record", "name": name, "fields": [{"name": "id", "type": "long"}]})
}

/// A metric's value from the instance's /metrics, if it has been recorded.
/// A metric of `instance` with these labels, `None` until it is written.
async fn scraped(instance: &Instance, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = prometheus::scrape(&client(), instance.telemetry).await;
    prometheus::sum(&prometheus::parse(&text), name, labels)
}

async fn is_leader(instance: &Instance) -> bool {
    scraped(instance, metric::KAFKA_LEADER, &[]).await == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_registry_and_the_survivor_takes_over() {
    let cluster = DevCluster::start(1, &[("_schemas", 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut instances = vec![
        start(dir.path(), cluster.bootstrap()).await,
        start(dir.path(), cluster.bootstrap()).await,
    ];

    // Registrations through either instance; each is readable at once from the instance that
    // took it (read-your-writes, also when it was forwarded) and then from the other.
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..8 {
        let (via, other) = (&instances[n % 2], &instances[(n + 1) % 2]);
        let subject = format!("s{n}-value");
        let (status, reply) = register(&via.base, &subject, &record(&format!("R{n}"))).await;
        assert_eq!(status, 200, "{subject}: {reply}");
        let id = reply["id"].as_u64().unwrap();
        let (status, read) = get(&via.base, &format!("/subjects/{subject}/versions/1")).await;
        assert_eq!(
            (status, read["id"].as_u64()),
            (200, Some(id)),
            "read-your-writes on the instance written to: {read}"
        );
        wait_until(Duration::from_secs(10), || async {
            get(&other.base, &format!("/schemas/ids/{id}")).await.0 == 200
        })
        .await
        .unwrap();
        ids.insert(subject, id);
    }
    // The same schema under another subject, through the other instance, shares the id.
    let (status, reply) = register(&instances[1].base, "copy-value", &record("R0")).await;
    assert_eq!(
        (status, reply["id"].as_u64()),
        (200, Some(ids["s0-value"])),
        "{reply}"
    );
    let distinct: std::collections::BTreeSet<u64> = ids.values().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "ids are unique: {ids:?}");
    for instance in &instances {
        for (subject, id) in &ids {
            let (_, read) = get(
                &instance.base,
                &format!("/subjects/{subject}/versions/latest"),
            )
            .await;
            assert_eq!(
                read["id"].as_u64(),
                Some(*id),
                "{subject} via {}: {read}",
                instance.base
            );
        }
    }

    // Without credentials a write is refused where it arrives.
    let anonymous = client()
        .post(format!(
            "{}/subjects/anon-value/versions",
            instances[1].base
        ))
        .header("content-type", CT)
        .body(json!({"schema": "\"int\""}).to_string());
    assert_eq!(anonymous.send().await.unwrap().status().as_u16(), 401);

    // The follower forwarded the writes it took (none failed).
    let mut forwarded = 0;
    for instance in &instances {
        forwarded += scraped(instance, metric::KAFKA_FORWARDED, &[("outcome", "ok")])
            .await
            .unwrap_or(0.0) as u64;
        assert_eq!(
            scraped(instance, metric::KAFKA_FORWARDED, &[("outcome", "failed")]).await,
            None
        );
    }
    assert!(
        forwarded >= 4,
        "writes through the follower are forwarded: {forwarded}"
    );

    // Exactly one leader; kill it with SIGKILL.
    wait_until(Duration::from_secs(30), || async {
        is_leader(&instances[0]).await || is_leader(&instances[1]).await
    })
    .await
    .unwrap();
    let leader = if is_leader(&instances[0]).await { 0 } else { 1 };
    assert!(
        !is_leader(&instances[1 - leader]).await,
        "two leaders at once"
    );
    // Writes keep arriving at the follower while the leader dies: every acknowledged one must
    // survive the takeover with its id.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let writer = {
        let (base, acked) = (instances[1 - leader].base.clone(), Arc::clone(&acked));
        tokio::spawn(async move {
            for n in 0..40 {
                let subject = format!("during-{n}-value");
                let (status, reply) =
                    register(&base, &subject, &record(&format!("During{n}"))).await;
                if status == 200 {
                    acked
                        .lock()
                        .unwrap()
                        .insert(subject, reply["id"].as_u64().unwrap());
                }
            }
        })
    };
    wait_until(Duration::from_secs(30), || async {
        acked.lock().unwrap().len() >= 3
    })
    .await
    .unwrap();
    instances[leader].process.kill9().unwrap();
    let survivor = instances.remove(1 - leader);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    for (subject, id) in &acked {
        let (_, read) = get(&survivor.base, &format!("/subjects/{subject}/versions/1")).await;
        assert_eq!(
            read["id"].as_u64(),
            Some(*id),
            "{subject}, acknowledged around the kill: {read}"
        );
    }
    ids.extend(acked);
    let distinct: std::collections::BTreeSet<u64> = ids.values().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "ids are unique across the takeover: {ids:?}"
    );

    // The survivor takes over and accepts writes; its ids continue above every earlier one.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let (status, reply) =
            register(&survivor.base, "after-takeover-value", &record("After")).await;
        if status == 200 {
            break reply["id"].as_u64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the survivor accepts no writes: {status} {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        after > *distinct.last().unwrap(),
        "id {after} reused or below earlier ids {distinct:?}"
    );
    assert!(is_leader(&survivor).await);
    for (subject, id) in &ids {
        let (_, read) = get(&survivor.base, &format!("/subjects/{subject}/versions/1")).await;
        assert_eq!(
            read["id"].as_u64(),
            Some(*id),
            "{subject} after takeover: {read}"
        );
    }
    assert!(scraped(&survivor, metric::KAFKA_REPLAY_OFFSET, &[])
        .await
        .is_some_and(|p| p >= 10.0));
    let mut survivor = survivor;
    let status = survivor
        .process
        .terminate(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Records exactly as Confluent Schema Registry writes them to `_schemas` (key and value bytes),
/// including kinds this store must skip or honour: a NOOP tombstone, a soft-deleted version, a
/// permanently deleted (tombstoned) schema whose id must stay burnt, a key type it does not use
/// and a PROTOBUF schema (skipped, its id burnt too).
fn confluent_records() -> Vec<(&'static str, Option<String>)> {
    let order_v1 = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
    let order_v2 = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"note","type":"string","default":""}]}"#;
    let payment = r#"{"type":"object","properties":{"amount":{"type":"number"}}}"#;
    let value = |subject: &str, version: u32, id: u32, schema: &str, extra: &str, deleted: bool| {
        Some(format!(
            r#"{{"subject":"{subject}","version":{version},"id":{id},{extra}"schema":{},"deleted":{deleted}}}"#,
            json!(schema)
        ))
    };
    vec![
        (r#"{"keytype":"NOOP","magic":0}"#, None),
        (
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#,
            Some(r#"{"compatibilityLevel":"FULL"}"#.to_owned()),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":1,"magic":1}"#,
            value("orders-value", 1, 1, order_v1, "", false),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"payments-value","version":1,"magic":1}"#,
            value(
                "payments-value",
                1,
                2,
                payment,
                r#""schemaType":"JSON","#,
                false,
            ),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":2,"magic":1}"#,
            value("orders-value", 2, 3, order_v2, "", false),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"old-value","version":1,"magic":1}"#,
            value("old-value", 1, 4, r#""string""#, "", true),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"gone-value","version":1,"magic":1}"#,
            value("gone-value", 1, 7, r#""long""#, "", true),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"gone-value","version":1,"magic":1}"#,
            None,
        ),
        (
            r#"{"keytype":"CONFIG","subject":"orders-value","magic":0}"#,
            Some(r#"{"compatibilityLevel":"NONE"}"#.to_owned()),
        ),
        (
            r#"{"keytype":"CONTEXT","tenant":"default","context":".","magic":0}"#,
            Some("{}".to_owned()),
        ),
        (
            r#"{"keytype":"SCHEMA","subject":"proto-value","version":1,"magic":1}"#,
            value(
                "proto-value",
                1,
                9,
                "syntax = \"proto3\"; message M {}",
                r#""schemaType":"PROTOBUF","#,
                false,
            ),
        ),
        (r#"{"keytype":"NOOP","magic":0}"#, None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_a_confluent_schemas_topic_in_place() {
    let cluster = DevCluster::start(1, &[]).await.unwrap();
    cluster.create_topic("_schemas", 1).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    for (key, value) in confluent_records() {
        let mut record = FutureRecord::to("_schemas").partition(0).key(key);
        if let Some(value) = &value {
            record = record.payload(value.as_str());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = start(dir.path(), cluster.bootstrap()).await;
    let base = &store.base;

    let (_, subjects) = get(base, "/subjects").await;
    assert_eq!(subjects, json!(["orders-value", "payments-value"]));
    let (_, v2) = get(base, "/subjects/orders-value/versions/latest").await;
    assert_eq!(
        (v2["version"].as_u64(), v2["id"].as_u64()),
        (Some(2), Some(3)),
        "{v2}"
    );
    let (_, payment) = get(base, "/schemas/ids/2").await;
    assert_eq!(payment["schemaType"], "JSON", "{payment}");
    let (_, order) = get(base, "/schemas/ids/1").await;
    assert_eq!(
        order["schema"],
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#
    );
    assert_eq!(
        get(base, "/schemas/ids/4").await.0,
        200,
        "a soft-deleted version stays readable by id"
    );
    assert_eq!(
        get(base, "/schemas/ids/7").await.0,
        404,
        "a permanently deleted schema is gone"
    );
    assert_eq!(get(base, "/config").await.1["compatibilityLevel"], "FULL");
    assert_eq!(
        get(base, "/config/orders-value").await.1["compatibilityLevel"],
        "NONE"
    );

    assert_eq!(
        get(base, "/schemas/ids/9").await.0,
        404,
        "PROTOBUF is not served"
    );
    // New ids continue above every id the topic ever held, including the deleted and skipped ones.
    let (status, reply) = register(base, "new-value", &record("Fresh")).await;
    assert_eq!((status, reply["id"].as_u64()), (200, Some(10)), "{reply}");
    // ... and the new record is in Confluent's format, so Confluent could adopt it back.
    let messages = cluster
        .read_topic("_schemas", Duration::from_secs(10))
        .await
        .unwrap();
    let written = messages
        .iter()
        .find(|m| {
            m.key()
                == Some(
                    br#"{"keytype":"SCHEMA","subject":"new-value","version":1,"magic":1}"#
                        .as_slice(),
                )
        })
        .expect("the registration is in the topic under Confluent's key");
    let value: Value = serde_json::from_slice(written.payload().unwrap()).unwrap();
    assert_eq!(
        (
            value["subject"].as_str(),
            value["version"].as_u64(),
            value["id"].as_u64(),
            value["deleted"].as_bool()
        ),
        (Some("new-value"), Some(1), Some(10), Some(false))
    );
}

/// A topic the store cannot use, or cannot create, stops it with a message saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_topic_stops_start_up_with_a_clear_error() {
    let cluster = DevCluster::start(1, &[("_schemas.wide", 2)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // CreateTopics is refused, as on a cluster where the store lacks the ACL.
    cluster
        .request_errors("CreateTopics", &["TOPIC_AUTHORIZATION_FAILED"])
        .await
        .unwrap();
    for (topic, expected) in [
        ("_schemas.wide", "has 2 partitions"),
        (
            "_schemas.absent",
            "does not exist and the store cannot create it",
        ),
    ] {
        let mut instance = spawn(dir.path(), cluster.bootstrap(), topic);
        wait_until(Duration::from_secs(60), || {
            let exited = instance.process.try_status().is_some();
            async move { exited }
        })
        .await
        .unwrap();
        let status = instance.process.try_status().unwrap();
        assert!(!status.success(), "{topic}: {status:?}");
        assert!(
            instance.process.stderr().contains(expected)
                || instance.process.stdout().contains(expected),
            "{topic}: {}",
            instance.process.logs()
        );
    }
}

/// A write as a follower forwards it: marked forwarded, with its id for retries.
async fn forwarded(base: &str, method: reqwest::Method, path: &str, id: &str) -> (u16, Value) {
    let response = client()
        .request(method, format!("{base}{path}"))
        .basic_auth(USER, Some(PASSWORD))
        .header("x-logpipe-forwarded", "1")
        .header("x-logpipe-write-id", id)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Issue 19: a follower retries a forwarded write when the first try failed after it was sent
/// (a connection reset): the leader must not run it twice. "Delete the latest version" run
/// twice would delete two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_forwarded_write_runs_once() {
    let cluster = DevCluster::start(1, &[("_schemas", 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), cluster.bootstrap()).await;
    wait_until(Duration::from_secs(30), || is_leader(&leader))
        .await
        .unwrap();
    // Three versions, each adding an optional field (compatible under the default BACKWARD).
    for n in 0..3 {
        let mut fields = vec![json!({"name": "id", "type": "long"})];
        for f in 0..n {
            fields
                .push(json!({"name": format!("f{f}"), "type": ["null", "long"], "default": null}));
        }
        let schema = json!({"type": "record", "name": "R", "fields": fields});
        let (status, reply) = register(&leader.base, "s", &schema).await;
        assert_eq!(status, 200, "{reply}");
    }

    let delete = || {
        forwarded(
            &leader.base,
            reqwest::Method::DELETE,
            "/subjects/s/versions/latest",
            "follower/1",
        )
    };
    let first = delete().await;
    let retry = delete().await;
    assert_eq!(first, (200, json!(3)));
    assert_eq!(retry, first, "a retry gets the first answer");
    assert_eq!(
        get(&leader.base, "/subjects/s/versions").await.1,
        json!([1, 2])
    );
    assert_eq!(
        scraped(&leader, metric::KAFKA_FORWARDED_RETRIES, &[]).await,
        Some(1.0)
    );
    // Another write with another id runs.
    let other = forwarded(
        &leader.base,
        reqwest::Method::DELETE,
        "/subjects/s/versions/latest",
        "follower/2",
    )
    .await;
    assert_eq!(other, (200, json!(2)));
    assert_eq!(
        get(&leader.base, "/subjects/s/versions").await.1,
        json!([1])
    );
}

/// `/ready`: (status, body).
async fn ready(instance: &Instance) -> (u16, String) {
    let response = client()
        .get(format!("http://{}/ready", instance.telemetry))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Issue 19: the Kafka storage goes away under a running instance. It must stop looking healthy
/// (its registry is no longer backed by anything a restart would find), go on serving reads, and
/// be ready again once the topic is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_when_the_storage_is_lost_and_when_it_is_back() {
    let cluster = DevCluster::start(1, &[("_schemas", 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let instance = start(dir.path(), cluster.bootstrap()).await;
    let (status, _) = register(&instance.base, "s", &record("R")).await;
    assert_eq!(status, 200);
    assert_eq!(ready(&instance).await.0, 200);

    cluster.broker_down(1).await.unwrap();
    wait_until(Duration::from_secs(30), || async {
        let (status, body) = ready(&instance).await;
        status == 503 && body.contains("storage") && body.contains("cannot reach")
    })
    .await
    .unwrap();
    assert_eq!(
        get(&instance.base, "/subjects").await,
        (200, json!(["s"])),
        "reads go on from memory"
    );

    cluster.broker_up(1).await.unwrap();
    wait_until(Duration::from_secs(30), || async {
        ready(&instance).await.0 == 200
    })
    .await
    .unwrap();
}
