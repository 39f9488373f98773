//! Shared setup of the agent's end-to-end tests: a dev cluster, a log directory, an agent
//! process with its config, and a consumer that collects every record with its unique id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logpipe_core::record::{header, RecordId};
use logpipe_devkit::harness::{bin_path, free_addr, wait_until, write_file, DevCluster, Process};
use rdkafka::Message;
use tempfile::TempDir;

use crate::topic;

pub const TOPIC: &str = "raw.game";
pub const PARTITIONS: i32 = 4;

/// The uid and gid the agent runs as when the tests run as root.
const NOBODY: u32 = 65534;

/// A log directory, a state directory and a config for one agent.
pub struct Setup {
    pub dir: TempDir,
    pub logs: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub telemetry: SocketAddr,
    pub cluster: DevCluster,
}

impl Setup {
    /// A cluster with `brokers` brokers and the topic, and an agent config tailing
    /// `<logs>/*.log` (plus `extra` top-level keys and `input_extra` input keys).
    pub async fn new(brokers: i32, extra: &str, input_extra: &str) -> anyhow::Result<Setup> {
        let cluster = DevCluster::start(brokers, &[(TOPIC, PARTITIONS)]).await?;
        let dir = tempfile::Builder::new()
            .prefix("logpipe-agent-test-")
            .tempdir()?;
        // The agent may run as an unprivileged user (see `start`): let it in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let logs = dir.path().join("logs");
        let state = dir.path().join("state");
        for d in [&logs, &state] {
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))?;
        }
        let telemetry = free_addr();
        let text = format!(
            "state_dir = \"{}\"\nhost = \"test-host\"\ndetached_idle_ms = 500\n{extra}\n\
             [kafka]\nbootstrap = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
             [[inputs]]\npaths = [\"{}/*.log\"]\ntopic = \"{TOPIC}\"\n{input_extra}\n",
            state.display(),
            cluster.bootstrap(),
            logs.display()
        );
        let config = write_file(dir.path(), "agent.toml", &text)?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
        Ok(Setup {
            dir,
            logs,
            state,
            config,
            telemetry,
            cluster,
        })
    }

    /// Starts the agent and waits until it is ready. When the tests run as root, the agent
    /// runs as `nobody`, so that file permissions apply to it as they would in production.
    pub async fn start(&self) -> anyhow::Result<Process> {
        let mut command = if is_root() {
            let mut command = Command::new(self.binary_for_nobody()?);
            command.uid(NOBODY).gid(NOBODY);
            command
        } else {
            Command::new(bin_path("logpipe-agent")?)
        };
        command.args(["run", "--config", self.config.to_str().unwrap()]);
        let mut agent = Process::spawn("logpipe-agent", command)?;
        agent
            .wait_ready(self.telemetry, Duration::from_secs(60))
            .await?;
        Ok(agent)
    }

    /// The agent binary at a path `nobody` can execute: the build directory may sit where only
    /// root can enter (CI keeps cargo's target directory in root's home), so the agent runs from
    /// this setup's directory, which is open to it anyway. A hard link, not a copy, where the
    /// file system allows: writing an executable while other tests fork can make its exec fail
    /// with "text file busy".
    fn binary_for_nobody(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("logpipe-agent");
        if !path.is_file() {
            let built = bin_path("logpipe-agent")?;
            if std::fs::hard_link(&built, &path).is_err() {
                std::fs::copy(&built, &path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        Ok(path)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    /// The agent's metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.telemetry))
            .await?
            .text()
            .await?)
    }

    /// The sum of a metric's samples (all label sets) in the agent's metrics, 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        crate::metrics::total(self.telemetry, name).await
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// One record as the consumer saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: RecordId,
    pub value: Vec<u8>,
    pub path: String,
    pub truncated: Option<u64>,
    pub partition: i32,
}

impl Seen {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Reads the topic from the beginning in a background thread for as long as it lives.
pub struct Collector {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(bootstrap: &str) -> anyhow::Result<Collector> {
        let consumer = logpipe_devkit::measure::reader(
            bootstrap,
            "agent-test-collector",
            TOPIC,
            PARTITIONS,
            &[],
        )?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let headers = topic::headers(&message);
                    let find = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| topic::text(v.as_deref()))
                    };
                    let id = RecordId::from_headers(
                        headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
                    )
                    .expect("well-formed id headers")
                    .expect("agent records carry ids");
                    seen.lock().unwrap().push(Seen {
                        id,
                        value: message.payload().unwrap_or_default().to_vec(),
                        path: find(header::PATH).unwrap_or_default(),
                        truncated: find(header::TRUNCATED).map(|t| t.parse().unwrap()),
                        partition: message.partition(),
                    });
                }
            })
        };
        Ok(Collector {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    pub fn records(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Distinct values seen (one line's text each).
    pub fn distinct_values(&self) -> HashSet<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.value.clone())
            .collect()
    }

    /// Waits until every value in `expected` was seen.
    pub async fn wait_for_values(
        &self,
        expected: &HashSet<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let result = wait_until(timeout, || async {
            expected.is_subset(&self.distinct_values())
        })
        .await;
        if result.is_err() {
            let seen = self.distinct_values();
            let missing: Vec<String> = expected
                .difference(&seen)
                .take(5)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            anyhow::bail!(
                "{} of {} lines never arrived, e.g. {missing:?}",
                expected.difference(&seen).count(),
                expected.len()
            );
        }
        Ok(())
    }

    /// Records per unique id, and how many ids arrived more than once (and how often).
    pub fn duplicates(&self) -> (usize, usize) {
        let mut counts: HashMap<RecordId, usize> = HashMap::new();
        for s in self.seen.lock().unwrap().iter() {
            *counts.entry(s.id.clone()).or_default() += 1;
        }
        let extra = counts.values().map(|c| c - 1).sum();
        (counts.len(), extra)
    }

    /// Values per record id: the same id must always carry the same line.
    pub fn check_ids_are_stable(&self) -> anyhow::Result<()> {
        let mut by_id: BTreeMap<RecordId, Vec<u8>> = BTreeMap::new();
        for s in self.seen.lock().unwrap().iter() {
            if let Some(previous) = by_id.insert(s.id.clone(), s.value.clone()) {
                anyhow::ensure!(
                    previous == s.value,
                    "id {} carried two different lines",
                    s.id
                );
            }
        }
        Ok(())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends lines (each followed by `\n`) to a file, creating it.
pub fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).unwrap();
}

/// `n` distinct JSON lines tagged with `tag`.
pub fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{{\"event_id\":\"{tag}-{i}\",\"event\":\"login\",\"pad\":\"{}\"}}",
                "x".repeat(i % 50)
            )
        })
        .collect()
}

pub fn as_set(lines: &[String]) -> HashSet<Vec<u8>> {
    lines.iter().map(|l| l.as_bytes().to_vec()).collect()
}
