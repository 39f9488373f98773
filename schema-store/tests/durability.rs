//! Durability: the real binary is killed with SIGKILL in the middle of a stream of concurrent
//! registrations; after a restart every acknowledged registration is there with the same id, and
//! ids stay unique. And its data directory fills up: writes fail with a 500 that says why, reads
//! go on, and the log is whole afterwards. Needs the binaries built
//! (`cargo build --workspace --bins`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{send, CT};
use logpipe_devkit::harness::{free_addr, wait_until, Process};
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};

mod common;

const WRITERS: usize = 8;
/// Each writer stops after this many registrations, so the test is bounded even if the kill comes late.
const PER_WRITER: usize = 400;

/// Starts the binary over the data in `dir` and waits until it is ready; returns its API URL.
async fn start(dir: &std::path::Path) -> (Process, String) {
    let (api, telemetry) = (free_addr(), free_addr());
    let config = dir.join(format!("store-{}.toml", api.port()));
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!("listen = \"{api}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n", data.display()),
    )
    .unwrap();
    let mut process = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    process
        .wait_ready(telemetry, Duration::from_secs(30))
        .await
        .unwrap();
    (process, format!("http://{api}"))
}

fn register(client: &Client, base: &str, subject: &str, schema: String) -> RequestBuilder {
    client
        .post(format!("{base}/subjects/{subject}/versions"))
        .header("content-type", CT)
        .body(json!({ "schema": schema }).to_string())
}

fn schema(writer: usize, n: usize) -> String {
    json!({"type": "record", "name": format!("W{writer}N{n}"), "fields": [{"name": "f", "type": "long"}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut process, base) = start(dir.path()).await;
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, base, acked) = (client.clone(), base.clone(), Arc::clone(&acked));
        writers.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let subject = format!("dur-{w}-{n}");
                let request = register(&client, &base, &subject, schema(w, n));
                let Ok(response) = request.send().await else {
                    return;
                };
                if response.status() != 200 {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .insert(subject, body["id"].as_u64().unwrap());
            }
        }));
    }
    // Kill once a good number of registrations are acknowledged, while the writers are still going.
    let counter = Arc::clone(&acked);
    wait_until(Duration::from_secs(60), || {
        let n = counter.lock().unwrap().len();
        async move { n >= 200 }
    })
    .await
    .unwrap();
    process.kill9().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200 && acked.len() < WRITERS * PER_WRITER,
        "the kill should land mid-stream: {} acknowledged",
        acked.len()
    );
    let ids: HashSet<u64> = acked.values().copied().collect();
    assert_eq!(ids.len(), acked.len(), "ids must be unique");

    let (mut process, base) = start(dir.path()).await;
    for (subject, id) in &acked {
        let (_, body) = send(client.get(format!("{base}/subjects/{subject}/versions/1"))).await;
        assert_eq!(body["id"].as_u64(), Some(*id), "{subject}: {body}");
        let (_, by_id) = send(client.get(format!("{base}/schemas/ids/{id}"))).await;
        assert!(by_id["schema"].as_str().is_some(), "{id}: {by_id}");
    }
    // New ids continue above everything acknowledged before the crash.
    let (_, fresh) = send(register(&client, &base, "after-crash", schema(99, 0))).await;
    assert!(
        fresh["id"].as_u64().unwrap() > *ids.iter().max().unwrap(),
        "{fresh}"
    );
    let status = process.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// A schema whose record is several KiB, so its write cannot fit in the slack of the log's last
/// page on a full disk: part of it is written before the disk says no.
fn big_schema(name: &str) -> String {
    let fields: Vec<Value> = (0..120)
        .map(|i| json!({"name": format!("field_with_a_long_name_{i:03}"), "type": "string", "doc": "padding to span pages"}))
        .collect();
    json!({"type": "record", "name": name, "fields": fields}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_the_reason_and_leaves_the_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(disk) = logpipe_devkit::disk::Tmpfs::mount(&data, 64).unwrap() else {
        return;
    };
    let client = Client::new();
    let (mut process, base) = start(dir.path()).await;
    let (status, first) = send(register(&client, &base, "before", schema(0, 0))).await;
    assert_eq!(status, 200, "{first}");

    let filler = disk.fill().unwrap();
    let (status, body) = send(register(&client, &base, "full", big_schema("Full"))).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_code"], 50001, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("space"), "the error says why: {message}");
    // Reads go on.
    let (status, read) = send(client.get(format!("{base}/subjects/before/versions/1"))).await;
    assert_eq!((status, &read["id"]), (200, &first["id"]), "{read}");
    let (_, subjects) = send(client.get(format!("{base}/subjects"))).await;
    assert_eq!(subjects, json!(["before"]), "a failed write is not visible");

    std::fs::remove_file(&filler).unwrap();
    let (status, after) = send(register(&client, &base, "after", big_schema("After"))).await;
    assert_eq!(status, 200, "{after}");
    let status = process.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}");

    // The log reads back whole: what was acknowledged, not what failed.
    let (mut process, base) = start(dir.path()).await;
    let (_, subjects) = send(client.get(format!("{base}/subjects"))).await;
    assert_eq!(subjects, json!(["after", "before"]));
    let (_, read) = send(client.get(format!("{base}/subjects/after/versions/1"))).await;
    assert_eq!(read["id"], after["id"], "{read}");
    let status = process.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}");
    drop(disk);
}
