//! Test support: start dev clusters and service processes on loopback, wait for readiness by
//! polling, read topics back, dump a process's logs when a test fails, and always clean up.
//!
//! Binaries are taken from the same target directory as the running test (`cargo build
//! --workspace --bins` first; `scripts/test` does), or from `LOGPIPE_BIN_DIR`.
//!
//! Tests can run against real Kafka clusters instead of dev clusters: set
//! `LOGPIPE_TEST_BOOTSTRAP` (or `LOGPIPE_TEST_WRITE_BOOTSTRAP` / `LOGPIPE_TEST_READ_BOOTSTRAP` for
//! the two sides). Topics are then created through the admin API, and fault injection is refused.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use logpipe_core::kafka::{
    create_topics, end_reader, partition_count, read_to_end, EndReader, KafkaConfig, Role,
};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset};
use tempfile::TempDir;

/// The path of a workspace binary built next to the running executable.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("LOGPIPE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test> => target/<profile>
            let exe = std::env::current_exe()?;
            let mut dir = exe
                .parent()
                .context("test executable has no directory")?
                .to_owned();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`, or run scripts/test), or set LOGPIPE_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the service to take).
///
/// Never one this process handed out before: the kernel offers a released port again, and two
/// services given the same one race for it (one fails to listen, and a readiness probe of its
/// address answers for the other).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if GIVEN.lock().expect("free ports lock").insert(port) {
            return port;
        }
    }
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `condition` every 50 ms until it is true, failing after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_every(Duration::from_millis(50), timeout, condition).await
}

/// [`wait_until`] polling every `interval`, for a measurement whose end must be seen closely.
pub async fn wait_until_every<F, Fut>(
    interval: Duration,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(interval).await;
    }
}

static OWN_PROCESS_GROUPS: AtomicBool = AtomicBool::new(false);

/// From now on, start every [`Process`] in a process group of its own. An interactive program
/// (`logpipe-dev up`) calls this so that Ctrl-C in its terminal, which signals the whole
/// foreground process group, reaches only the program, which then stops its children in order.
/// Tests leave it off: there Ctrl-C should reach the children too, or they would outlive the run.
pub fn own_process_groups() {
    OWN_PROCESS_GROUPS.store(true, Ordering::Relaxed);
}

fn apply_process_group(command: &mut Command) {
    if OWN_PROCESS_GROUPS.load(Ordering::Relaxed) {
        command.process_group(0);
    }
}

/// A child process whose output goes to files in a temporary directory (or to one log file the
/// caller names, see [`Process::spawn_logging_to`]). Killed when dropped, and by the kernel when
/// this process dies (a test run killed by a timeout leaves nothing behind); its output is
/// printed if the test is panicking, so failures explain themselves.
pub struct Process {
    name: String,
    child: Child,
    output: Output,
}

/// Where a process's output goes.
enum Output {
    /// `stdout` and `stderr` files in a directory removed with the process.
    Temp(TempDir),
    /// Both streams appended to one file that outlives the process (long runs, restarts).
    File(PathBuf),
}

/// How much of a log file [`Process::logs`] shows: the end, where a failure's cause usually is.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// How long an admin request (creating a topic) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The last `max` bytes of a file (from a line start when cut), or "" if it cannot be read.
fn file_tail(path: &Path, max: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut bytes))
        .is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    match (start > 0, text.find('\n')) {
        (true, Some(newline)) => format!(
            "[... {} earlier bytes in {}]\n{}",
            start,
            path.display(),
            &text[newline + 1..]
        ),
        _ => text.into_owned(),
    }
}

impl Process {
    /// Starts a workspace binary with arguments.
    pub fn start(bin: &str, args: &[&str]) -> anyhow::Result<Process> {
        Process::start_with_env(bin, args, &[])
    }

    /// Starts a workspace binary with arguments and extra environment variables.
    pub fn start_with_env(
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let mut command = Command::new(bin_path(bin)?);
        command.args(args).envs(env.iter().copied());
        Process::spawn(bin, command)
    }

    /// Starts any command (for example a reference tool in a benchmark).
    pub fn spawn(name: &str, command: Command) -> anyhow::Result<Process> {
        let logs = tempfile::Builder::new().prefix("logpipe-proc-").tempdir()?;
        let stdout = File::create(logs.path().join("stdout"))?;
        let stderr = File::create(logs.path().join("stderr"))?;
        Process::spawn_with_output(name, command, stdout, stderr, Output::Temp(logs))
    }

    /// Starts a command whose stdout and stderr are both appended to `log` (created if missing),
    /// for processes that run for hours or are restarted: the output is on disk, not in a
    /// temporary directory, and one file holds every run of the service in order.
    pub fn spawn_logging_to(name: &str, command: Command, log: &Path) -> anyhow::Result<Process> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        };
        let stdout = open().with_context(|| format!("opening {}", log.display()))?;
        let stderr = stdout.try_clone()?;
        Process::spawn_with_output(name, command, stdout, stderr, Output::File(log.to_owned()))
    }

    /// Starts `command` (in its own process group if asked) with no stdin and the given stdout
    /// and stderr, which `output` says how to read back. It dies with this process, however
    /// this process ends.
    fn spawn_with_output(
        name: &str,
        mut command: Command,
        stdout: File,
        stderr: File,
        output: Output,
    ) -> anyhow::Result<Process> {
        apply_process_group(&mut command);
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = crate::spawner::spawn(command).with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            output,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its stdout (for a process logging to a file: the whole file, both streams).
    pub fn stdout(&self) -> String {
        let path = match &self.output {
            Output::Temp(dir) => dir.path().join("stdout"),
            Output::File(path) => path.clone(),
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Its stderr (empty for a process logging to a file: it is in [`Process::stdout`]).
    pub fn stderr(&self) -> String {
        match &self.output {
            Output::Temp(dir) => {
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            }
            Output::File(_) => String::new(),
        }
    }

    /// Both outputs, labelled (of a log file, its last 64 KiB).
    pub fn logs(&self) -> String {
        match &self.output {
            Output::Temp(_) => {
                format!(
                    "--- {} stdout ---\n{}--- {} stderr ---\n{}",
                    self.name,
                    self.stdout(),
                    self.name,
                    self.stderr()
                )
            }
            Output::File(path) => format!(
                "--- {} output ---\n{}",
                self.name,
                file_tail(path, LOG_TAIL_BYTES)
            ),
        }
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the logs if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.try_status() {
            None => Ok(()),
            Some(status) => bail!("{} exited with {status}\n{}", self.name, self.logs()),
        }
    }

    /// Waits until `GET http://addr/ready` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://{addr}/ready");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready at {url} within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (a command that ends), failing
    /// with its logs past that.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match self.exit_within(timeout).await {
            Some(status) => Ok(status),
            None => bail!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// The exit status once the process has exited, `None` if it has not within `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the process's stdout has at least `n` complete lines and returns them.
    pub async fn stdout_lines(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout();
            let lines: Vec<String> = out
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| l.trim_end().to_owned())
                .collect();
            if lines.len() >= n {
                return Ok(lines);
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} printed {} of {n} lines within {timeout:?}\n{}",
                    self.name,
                    lines.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} {} failed", self.pid());
        }
        Ok(())
    }

    /// SIGKILL: the crash case. Waits for the process to be gone.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// SIGHUP.
    pub fn hangup(&self) -> anyhow::Result<()> {
        self.signal("-HUP")
    }

    /// SIGTERM, then waits up to `timeout` for the exit; kills and fails past it.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_status() {
            return Ok(status);
        }
        self.signal("-TERM")?;
        if let Some(status) = self.exit_within(timeout).await {
            return Ok(status);
        }
        self.child.kill()?;
        bail!(
            "{} did not exit within {timeout:?} of SIGTERM\n{}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A Kafka cluster for a test: a `logpipe-dev cluster` process, or a real cluster named by an
/// environment variable.
pub struct DevCluster {
    bootstrap: String,
    /// The control API and its process, for dev clusters.
    control: Option<(String, Process)>,
    http: reqwest::Client,
}

impl DevCluster {
    /// A cluster with `brokers` brokers and the given topics (name, partitions). Uses
    /// `LOGPIPE_TEST_BOOTSTRAP` instead when it is set.
    pub async fn start(brokers: i32, topics: &[(&str, i32)]) -> anyhow::Result<DevCluster> {
        DevCluster::start_as("", brokers, topics).await
    }

    /// The same for one side: `role` "write" reads `LOGPIPE_TEST_WRITE_BOOTSTRAP`, "read" reads
    /// `LOGPIPE_TEST_READ_BOOTSTRAP`.
    pub async fn start_as(
        role: &str,
        brokers: i32,
        topics: &[(&str, i32)],
    ) -> anyhow::Result<DevCluster> {
        DevCluster::start_retaining(role, brokers, topics, None).await
    }

    /// `start_as` with the dev cluster keeping at most `retention_bytes` per partition (by
    /// default it keeps every record, up to its memory budget), for tests of retention.
    pub async fn start_retaining(
        role: &str,
        brokers: i32,
        topics: &[(&str, i32)],
        retention_bytes: Option<u64>,
    ) -> anyhow::Result<DevCluster> {
        let args = retention_bytes.map_or_else(Vec::new, |bytes| {
            vec!["--retention-bytes".to_owned(), bytes.to_string()]
        });
        DevCluster::start_with_args(role, brokers, topics, &args).await
    }

    /// `start_as` with more `logpipe-dev cluster` arguments (ignored for a real cluster).
    pub async fn start_with_args(
        role: &str,
        brokers: i32,
        topics: &[(&str, i32)],
        extra_args: &[String],
    ) -> anyhow::Result<DevCluster> {
        let var = if role.is_empty() {
            "LOGPIPE_TEST_BOOTSTRAP".to_owned()
        } else {
            format!("LOGPIPE_TEST_{}_BOOTSTRAP", role.to_uppercase())
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let cluster = match std::env::var(&var) {
            Ok(bootstrap) if !bootstrap.is_empty() => DevCluster {
                bootstrap,
                control: None,
                http,
            },
            _ => {
                let brokers = brokers.to_string();
                let mut args = vec!["cluster", "--brokers", &brokers];
                let specs: Vec<String> = topics
                    .iter()
                    .map(|(name, n)| format!("{name}:{n}"))
                    .collect();
                for spec in &specs {
                    args.extend(["--topic", spec]);
                }
                args.extend(extra_args.iter().map(String::as_str));
                let mut process = Process::start("logpipe-dev", &args)?;
                let lines = process.stdout_lines(2, Duration::from_secs(30)).await?;
                let bootstrap = lines[0]
                    .strip_prefix("bootstrap=")
                    .context("first line is bootstrap=")?
                    .to_owned();
                let control = lines[1]
                    .strip_prefix("control=")
                    .context("second line is control=")?
                    .to_owned();
                return Ok(DevCluster {
                    bootstrap,
                    control: Some((control, process)),
                    http,
                });
            }
        };
        for (name, partitions) in topics {
            cluster.create_topic(name, *partitions).await?;
        }
        Ok(cluster)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The control API's base URL (`http://127.0.0.1:PORT`), for dev clusters.
    pub fn control_url(&self) -> Option<&str> {
        self.control.as_ref().map(|(url, _)| url.as_str())
    }

    /// Whether faults can be injected (a dev cluster, not a real one).
    pub fn is_dev(&self) -> bool {
        self.control.is_some()
    }

    /// The dev cluster's process, for its logs.
    pub fn process(&mut self) -> Option<&mut Process> {
        self.control.as_mut().map(|(_, p)| p)
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let (control, _) = self.control.as_ref().ok_or_else(|| {
            anyhow!(
                "fault injection needs a dev cluster; this test runs against the real cluster {}",
                self.bootstrap
            )
        })?;
        let response = self
            .http
            .post(format!("{control}{path}"))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "dev cluster {path}: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Creates a topic (through the control API, or the admin API on a real cluster).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        if self.is_dev() {
            return self
                .post(
                    "/topics",
                    serde_json::json!({ "name": name, "partitions": partitions }),
                )
                .await;
        }
        self.create_topic_with_configs(name, partitions, -1, &[])
            .await
    }

    fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(KafkaConfig::new(&self.bootstrap)
            .client_config(&Role::Admin, "logpipe-test-admin")
            .create()?)
    }

    /// Creates a topic with topic configs through the admin API (CreateTopics, which the dev
    /// cluster serves too); `replication` -1 takes the cluster's default. A topic that already
    /// exists is left as it is (see [`create_topics`]).
    pub async fn create_topic_with_configs(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let topic = configs.iter().fold(
            NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
            |topic, (key, value)| topic.set(key, value),
        );
        for (topic, result) in create_topics(&self.admin()?, &[topic], ADMIN_TIMEOUT).await? {
            result.map_err(|e| anyhow!("creating topic {topic}: {e}"))?;
        }
        Ok(())
    }

    /// Grows a topic to `total` partitions (CreatePartitions).
    pub async fn add_partitions(&self, topic: &str, total: usize) -> anyhow::Result<()> {
        for result in self
            .admin()?
            .create_partitions([&NewPartitions::new(topic, total)], &AdminOptions::new())
            .await?
        {
            result.map_err(|(topic, e)| anyhow!("adding partitions to {topic}: {e}"))?;
        }
        Ok(())
    }

    /// The configs set on a topic itself (DescribeConfigs entries whose source is the topic),
    /// by name.
    pub async fn topic_configs(
        &self,
        topic: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut configs = std::collections::BTreeMap::new();
        for result in self
            .admin()?
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await?
        {
            let resource = result.map_err(|e| anyhow!("describing topic {topic}: {e}"))?;
            // rdkafka drops a resource's error code (an unknown topic, say) and returns it with
            // no entries; an existing topic always has entries (defaults included).
            if resource.entries.is_empty() {
                bail!("describing topic {topic}: no configs returned (does it exist?)");
            }
            for entry in resource.entries {
                if entry.source == ConfigSource::DynamicTopic {
                    configs.insert(entry.name, entry.value.unwrap_or_default());
                }
            }
        }
        Ok(configs)
    }

    /// Replaces the configs set on a topic itself with `configs` (AlterConfigs: the ones left
    /// out return to their defaults).
    pub async fn set_topic_configs(
        &self,
        topic: &str,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let alter = configs.iter().fold(
            AlterConfig::new(ResourceSpecifier::Topic(topic)),
            |alter, (name, value)| alter.set(name, value),
        );
        for result in self
            .admin()?
            .alter_configs(&[alter], &AdminOptions::new())
            .await?
        {
            result.map_err(|(_, e)| anyhow!("altering the configs of topic {topic}: {e}"))?;
        }
        Ok(())
    }

    pub async fn broker_down(&self, broker: i32) -> anyhow::Result<()> {
        self.post(&format!("/brokers/{broker}/down"), serde_json::json!({}))
            .await
    }

    pub async fn broker_up(&self, broker: i32) -> anyhow::Result<()> {
        self.post(&format!("/brokers/{broker}/up"), serde_json::json!({}))
            .await
    }

    /// Adds a round-trip delay to every request to a broker.
    pub async fn set_rtt(&self, broker: i32, rtt: Duration) -> anyhow::Result<()> {
        self.post(
            &format!("/brokers/{broker}/rtt"),
            serde_json::json!({ "ms": rtt.as_millis() as u64 }),
        )
        .await
    }

    /// Makes the next requests of a kind fail with these errors, one each, in order.
    pub async fn request_errors(&self, api: &str, errors: &[&str]) -> anyhow::Result<()> {
        self.post(
            "/errors",
            serde_json::json!({ "api": api, "errors": errors }),
        )
        .await
    }

    /// Moves a partition's leadership to a broker.
    pub async fn set_leader(&self, topic: &str, partition: i32, broker: i32) -> anyhow::Result<()> {
        self.post(
            "/partitions/leader",
            serde_json::json!({ "topic": topic, "partition": partition, "broker": broker }),
        )
        .await
    }

    /// Everything committed in a topic now; see [`read_topic`].
    pub async fn read_topic(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        read_topic(&self.bootstrap, topic, timeout).await
    }
}

/// Reads every committed record of a topic, from the beginning of each partition to its end as
/// a read_committed consumer sees it (without a consumer group), in partition order.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic, timeout)).await?
}

fn read_topic_blocking(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut records = Vec::new();
    scan_topic(bootstrap, topic, timeout, |message| {
        records.push(message.detach());
        Ok(())
    })?;
    records.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(records)
}

/// Calls `each` on every committed record of a topic, from the beginning of each partition to
/// its end as a read_committed consumer sees it (without a consumer group), without keeping the
/// records: for topics too large to hold. Blocking; order is per partition only.
pub fn scan_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut reader = TopicReader::new(bootstrap, topic, timeout)?;
    reader.read_new(deadline.saturating_duration_since(Instant::now()), each)
}

/// The settings of a consumer that reads committed records only and never commits: how tests and
/// benchmarks read a topic back without joining a group's rebalances. The services' consumer
/// settings, so a test reads as a service does.
pub fn read_committed_config(bootstrap: &str, group: &str) -> ClientConfig {
    KafkaConfig::new(bootstrap).client_config(
        &Role::Consumer {
            group_id: group.to_owned(),
        },
        group,
    )
}

/// A reader of every partition of a topic that remembers where it stopped: each
/// [`TopicReader::read_new`] reads what was committed since the previous call, up to the end of
/// each partition as it is then. Polling a topic that grows (waiting for a pipeline to drain)
/// thus costs the new records, not the whole topic again.
pub struct TopicReader {
    topic: String,
    consumer: EndReader,
    /// Per partition, the offset after the last record read (`Beginning` before any).
    next: Vec<Offset>,
}

impl TopicReader {
    /// Waits up to `timeout` for the topic to have partitions; reads nothing yet.
    pub fn new(bootstrap: &str, topic: &str, timeout: Duration) -> anyhow::Result<TopicReader> {
        TopicReader::new_if_exists(bootstrap, topic, timeout)?
            .with_context(|| format!("topic {topic} has no partitions within {timeout:?}"))
    }

    /// As [`TopicReader::new`], but `None` when the topic still has no partitions after
    /// `timeout`: for a topic a service makes only once it has something to write.
    pub fn new_if_exists(
        bootstrap: &str,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<TopicReader>> {
        let consumer = end_reader(read_committed_config(bootstrap, "logpipe-test-reader"))?;
        let deadline = Instant::now() + timeout;
        let partitions = loop {
            let found = partition_count(&consumer, topic, Duration::from_secs(5))?;
            if found > 0 {
                break found;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Some(TopicReader {
            topic: topic.to_owned(),
            consumer,
            next: vec![Offset::Beginning; partitions],
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Each partition's first offset still stored (its log start): what retention deleted is
    /// below it.
    pub fn log_starts(&self, timeout: Duration) -> anyhow::Result<Vec<i64>> {
        (0..self.next.len() as i32)
            .map(|partition| {
                let (low, _) = self
                    .consumer
                    .fetch_watermarks(&self.topic, partition, timeout)
                    .with_context(|| {
                        format!("log start of {} partition {partition}", self.topic)
                    })?;
                Ok(low)
            })
            .collect()
    }

    /// Calls `each` on every record committed after the ones read before, until every partition
    /// is at its end (the last stable offset), failing past `timeout`. Returns how many were read.
    /// Blocking; order is per partition only.
    pub fn read_new(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        // Assigning again starts a new fetch at the positions kept, and librdkafka reports each
        // partition's end anew for it, also where nothing was added since the last call.
        let from: Vec<(i32, Offset)> = (0..).zip(self.next.iter().copied()).collect();
        let next = &mut self.next;
        read_to_end(
            &self.consumer,
            &self.topic,
            &from,
            timeout,
            None,
            |message| {
                next[message.partition() as usize] = Offset::Offset(message.offset() + 1);
                each(message)
            },
        )
    }
}

/// Writes a file (a config for a process under test) into `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Registers the load generator's Avro game schemas (`devkit/schemas/`) with a schema store at
/// `url` and returns each subject with its id. Idempotent: the same schema gets its id back.
pub async fn register_game_schemas(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Vec<(&'static str, u32)>> {
    let mut ids = Vec::new();
    for (subject, schema) in crate::loadgen::schemas() {
        let response = http
            .post(format!("{url}/subjects/{subject}/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema, "schemaType": "AVRO" }))
            .send()
            .await
            .with_context(|| format!("registering {subject}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("registering {subject}: {status}: {body}");
        }
        let id = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            .with_context(|| format!("registering {subject}: no id in {body}"))?;
        ids.push((subject, id as u32));
    }
    Ok(ids)
}

/// A `logpipe-schema-store` process (local storage under `dir`) holding the game schemas: the
/// process, its URL, and each game subject's id.
pub async fn game_schema_store(
    dir: &Path,
) -> anyhow::Result<(Process, String, Vec<(&'static str, u32)>)> {
    let (listen, telemetry) = (free_addr(), free_addr());
    let config = write_file(
        dir,
        "store.toml",
        &format!(
            "listen = \"{listen}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n",
            dir.join("store").display()
        ),
    )?;
    let mut store = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().context("config path")?],
    )?;
    store.wait_ready(telemetry, Duration::from_secs(30)).await?;
    let url = format!("http://{listen}");
    let ids = register_game_schemas(&reqwest::Client::new(), &url).await?;
    Ok((store, url, ids))
}
