//! Throughput benchmark of the agent against a ceiling: a plain rdkafka producer sending the same
//! records (each line with the contract's key and headers) from memory with the same producer
//! settings, to the same dev cluster, in the same run.
//! Prints a Markdown table (MB/s, lines/s, CPU seconds per GB, peak RSS, ratio to the ceiling)
//! and an idle measurement with 1,000 watched files, and emits the same numbers as
//! `logpipe_devkit::benchreport` rows (for `bench/run`). Not a test: no assertion on speed.
//!
//! ```sh
//! cargo build --release -p logpipe-devkit --bins
//! cargo bench -p logpipe-agent --bench throughput [-- OUTPUT.md]
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use logpipe_agent::{client_config, line_headers};
use logpipe_core::kafka::KafkaConfig;
use logpipe_core::metric_names::agent::LINES_ACKED;
use logpipe_core::record::{FileId, KeyStrategy};
use logpipe_devkit::benchreport::Row as ReportRow;
use logpipe_devkit::harness::{
    free_addr, wait_until, wait_until_every, write_file, DevCluster, Process,
};
use logpipe_devkit::loadgen::{self, LoadgenArgs};
use logpipe_devkit::measure::{cpu_seconds, peak_rss_mib, rss_mib, send_waiting, warm_up};
use logpipe_devkit::prometheus;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

struct Row {
    name: String,
    bytes: u64,
    lines: u64,
    seconds: f64,
    cpu: f64,
    peak_rss_mib: f64,
}

impl Row {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
    fn render(&self, ceiling: f64) -> String {
        format!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} |",
            self.name,
            self.mb_s(),
            self.lines as f64 / self.seconds,
            self.cpu / (self.bytes as f64 / 1e9),
            self.peak_rss_mib,
            self.mb_s() / ceiling
        )
    }

    /// The benchreport row of this sender against `reference` (MB/s), with extra measurements.
    fn report_row(&self, case: &str, reference: &Row) -> ReportRow {
        ReportRow::new("agent", case, &self.name, self.mb_s(), "MB/s")
            .against(&reference.name, reference.mb_s())
            .extra("lines_per_s", (self.lines as f64 / self.seconds).round())
            .extra("cpu_s_per_gb", self.cpu / (self.bytes as f64 / 1e9))
            .extra("peak_rss_mib", self.peak_rss_mib)
    }
}

/// The agent's allocator, for librdkafka's C code too (see the agent's `main.rs`): the ceiling is
/// the same client, allocating as the agent does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rounds per line size (odd, so one round is the median).
const ROUNDS: usize = 5;

/// The round (ceiling, agent) whose ratio is the median: each round measures the two back to
/// back, so their ratio is steadier than either speed, which moves by a third between rounds
/// on a shared 2-core machine.
fn median_round(mut rounds: Vec<(Row, Row)>) -> (Row, Row) {
    rounds
        .sort_by(|(c1, a1), (c2, a2)| (a1.mb_s() / c1.mb_s()).total_cmp(&(a2.mb_s() / c2.mb_s())));
    rounds.swap_remove(rounds.len() / 2)
}

/// Host name both senders put in `lp.host` and the key.
const HOST: &str = "bench-host";

/// One line as the agent ships it: where it is read from (index into [`Files`]) and at which
/// offset, so the ceiling can send the same key and headers.
struct Line {
    file: usize,
    offset: u64,
    bytes: Vec<u8>,
}

/// Each generated file's path as the agent sees it (in its watched directory) and an `lp.file`
/// value of the same length as the agent's.
struct Files(Vec<(String, String)>);

/// Every line of `dir`'s files, with the files' paths as they will be under `watched`.
fn read_records(dir: &Path, watched: &Path) -> (Files, Vec<Line>) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut lines = Vec::new();
    for (file, path) in paths.iter().enumerate() {
        let shown = watched.join(path.file_name().unwrap());
        files.push((
            shown.display().to_string(),
            FileId(u64::MAX - file as u64).to_hex(),
        ));
        let data = std::fs::read(path).unwrap();
        let mut offset = 0;
        for line in data.split_inclusive(|b| *b == b'\n') {
            let bytes = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
            lines.push(Line {
                file,
                offset,
                bytes,
            });
            offset += line.len() as u64;
        }
    }
    (Files(files), lines)
}

/// (a) the ceiling: the agent's records (each line with the contract's key and the headers of the
/// agent's own [`line_headers`]) sent from memory through one producer with the agent's settings,
/// timed from a warm producer ([`warm_up`]). What is left between the two is the agent's own
/// work: reading, splitting, tracking acknowledgements, checkpoints.
fn ceiling(bootstrap: &str, topic: &str, files: &Files, lines: &[Line]) -> Row {
    let config = client_config(&KafkaConfig::new(bootstrap), 64 << 20, 1 << 20);
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    warm_up(&producer, topic).expect("ceiling producer");
    let keys: Vec<Vec<u8>> = files
        .0
        .iter()
        .map(|(path, _)| KeyStrategy::HostPath.key(HOST, path, b"").unwrap())
        .collect();
    let before = cpu_seconds(None);
    let started = Instant::now();
    for line in lines {
        let (path, id) = &files.0[line.file];
        let headers = line_headers(HOST, path, id, line.offset);
        send_waiting(
            &producer,
            BaseRecord::<[u8], [u8]>::to(topic)
                .key(keys[line.file].as_slice())
                .payload(line.bytes.as_slice())
                .headers(headers),
        )
        .expect("ceiling producer");
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    Row {
        name: "rdkafka producer from memory (ceiling)".into(),
        bytes: lines.iter().map(|l| l.bytes.len() as u64 + 1).sum(),
        lines: lines.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds(None) - before,
        peak_rss_mib: f64::NAN,
    }
}

async fn agent_metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    prometheus::total(
        &prometheus::scrape(&reqwest::Client::new(), addr).await,
        name,
    )
}

/// Starts an agent shipping `glob` to `topic`, with state and config files named after `name`.
fn start_agent(
    work: &Path,
    bootstrap: &str,
    glob: &str,
    topic: &str,
    name: &str,
) -> (Process, std::net::SocketAddr) {
    let state = work.join(format!("state-{name}"));
    let addr = free_addr();
    let text = format!(
        "state_dir = \"{}\"\nhost = \"{HOST}\"\n[kafka]\nbootstrap = \"{bootstrap}\"\n[telemetry]\nlisten = \"{addr}\"\n\
         [[inputs]]\npaths = [\"{glob}\"]\ntopic = \"{topic}\"\n",
        state.display()
    );
    let config = write_file(work, &format!("agent-{name}.toml"), &text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_logpipe-agent"));
    command.args(["run", "--config", config.to_str().unwrap()]);
    (Process::spawn("logpipe-agent", command).unwrap(), addr)
}

/// (d) the agent, warmed up as the ceiling is: started on the empty directory `watched` and
/// ready (its producer connected), then the files are moved in from `dir`; from the move until
/// Kafka acknowledged every line.
async fn agent(
    work: &Path,
    bootstrap: &str,
    dir: &Path,
    watched: &Path,
    topic: &str,
    lines: u64,
    bytes: u64,
) -> Row {
    std::fs::create_dir_all(watched).unwrap();
    let (mut agent, addr) = start_agent(
        work,
        bootstrap,
        &format!("{}/*.log", watched.display()),
        topic,
        &watched.file_name().unwrap().to_string_lossy(),
    );
    agent
        .wait_ready(addr, Duration::from_secs(60))
        .await
        .expect("agent ready");
    let pid = agent.pid();
    let started = Instant::now();
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        std::fs::rename(&path, watched.join(path.file_name().unwrap())).unwrap();
    }
    // Polled every 10 ms, not `wait_until`'s 50: a run lasts about a second.
    wait_until_every(
        Duration::from_millis(10),
        Duration::from_secs(900),
        || async { agent_metric(addr, LINES_ACKED).await >= lines as f64 },
    )
    .await
    .expect("agent shipped every line");
    let seconds = started.elapsed().as_secs_f64();
    Row {
        name: "logpipe-agent".into(),
        bytes,
        lines,
        seconds,
        cpu: cpu_seconds(Some(pid)),
        peak_rss_mib: peak_rss_mib(pid),
    }
}

/// Records in a topic now (sum of the partitions' high watermarks).
fn topic_records(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map(|(_, high)| high)
                .unwrap_or(0)
        })
        .sum()
}

/// (b) rsyslog: imfile (inotify) + omkafka with the same producer settings, if installed.
async fn rsyslog(
    work: &Path,
    bootstrap: &str,
    dir: &Path,
    topic: &str,
    lines: u64,
    bytes: u64,
) -> Option<Row> {
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let state = work.join(format!("rsyslog-{topic}"));
    std::fs::create_dir_all(&state).unwrap();
    let conf = format!(
        "global(workDirectory=\"{state}\" maxMessageSize=\"64k\")\n\
         module(load=\"imfile\" mode=\"inotify\")\n\
         module(load=\"omkafka\")\n\
         template(name=\"line\" type=\"string\" string=\"%msg%\")\n\
         input(type=\"imfile\" file=\"{dir}/*.log\" tag=\"game\" ruleset=\"kafka\" freshStartTail=\"off\")\n\
         ruleset(name=\"kafka\") {{ action(type=\"omkafka\" broker=[\"{bootstrap}\"] topic=\"{topic}\" template=\"line\" \
         confParam=[\"acks=all\", \"enable.idempotence=true\", \"compression.codec=lz4\", \"linger.ms=20\", \"batch.size=1048576\"]) }}\n",
        state = state.display(),
        dir = dir.display(),
    );
    let conf_path = write_file(work, &format!("rsyslog-{topic}.conf"), &conf).unwrap();
    let started = Instant::now();
    let mut command = Command::new(rsyslogd);
    command.args([
        "-n",
        "-f",
        conf_path.to_str().unwrap(),
        "-i",
        state.join("pid").to_str().unwrap(),
    ]);
    let process = Process::spawn("rsyslogd", command).ok()?;
    let pid = process.pid();
    let bootstrap = bootstrap.to_owned();
    let topic_name = topic.to_owned();
    let done = wait_until(Duration::from_secs(600), || {
        let (bootstrap, topic) = (bootstrap.clone(), topic_name.clone());
        async move {
            tokio::task::spawn_blocking(move || topic_records(&bootstrap, &topic))
                .await
                .unwrap_or(0)
                >= lines as i64
        }
    })
    .await;
    if done.is_err() {
        eprintln!(
            "rsyslog did not ship every line within 600 s:\n{}",
            process.logs()
        );
        return None;
    }
    Some(Row {
        name: "rsyslog imfile + omkafka".into(),
        bytes,
        lines,
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds(Some(pid)),
        peak_rss_mib: peak_rss_mib(pid),
    })
}

/// Idle cost: 1,000 watched files, all read, nothing written for 10 s.
async fn idle(work: &Path, bootstrap: &str) -> String {
    let dir = work.join("idle");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("f{i}.log")), format!("line {i}\n")).unwrap();
    }
    let (agent, addr) = start_agent(
        work,
        bootstrap,
        &format!("{}/*.log", dir.display()),
        "bench.idle",
        "idle",
    );
    let pid = agent.pid();
    wait_until(Duration::from_secs(120), || async {
        agent_metric(addr, LINES_ACKED).await >= 1000.0
    })
    .await
    .expect("idle files read");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds(Some(pid));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let core = (cpu_seconds(Some(pid)) - before) / 10.0 * 100.0;
    let rss = rss_mib(pid);
    let case = "idle, 1,000 watched files";
    ReportRow::new("agent", case, "logpipe-agent CPU", core, "% of a core")
        .target_at_most(2.0)
        .emit()
        .expect("benchreport row");
    ReportRow::new("agent", case, "logpipe-agent RSS", rss, "MiB")
        .target_at_most(20.0)
        .emit()
        .expect("benchreport row");
    format!("Idle with 1,000 watched files: {core:.2}% of a core, RSS {rss:.1} MiB (targets: < 2%, <= 20 MiB).")
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: a benchmark is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: a benchmark; run it with `cargo bench -p logpipe-agent --bench throughput`");
        return;
    }
    let output = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let work = tempfile::Builder::new()
        .prefix("logpipe-agent-bench-")
        .tempdir()
        .unwrap();
    let sizes: [(usize, u64); 2] = [(250, 1_000_000), (1000, 250_000)];
    let topics: Vec<(String, i32)> = sizes
        .iter()
        .flat_map(|(s, _)| {
            [
                (format!("bench.ceiling.{s}"), 4),
                (format!("raw.bench{s}"), 4),
                (format!("bench.rsyslog.{s}"), 4),
            ]
        })
        .chain([("bench.idle".to_owned(), 4)])
        .collect();
    let topic_refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    // Nothing reads the topics back but rsyslog's count (high watermarks), so the cluster keeps
    // only the newest 64 MiB per partition: ten 250 MB rounds would otherwise sit in its memory.
    let cluster = DevCluster::start_retaining("", 1, &topic_refs, Some(64 << 20))
        .await
        .expect("dev cluster (cargo build --release -p logpipe-devkit --bins)");
    let mut report = String::from(
        "# logpipe-agent throughput\n\nSame generated files, same dev cluster (librdkafka mock, 1 broker, 4 partitions), \
         same producer settings (acks=all, idempotence, lz4, linger 20 ms). The ceiling sends the agent's records from memory \
         (each line with its key and the four `lp.` headers, which the agent cannot leave out). The ceiling's clock starts after its producer \
         delivered a first record, the agent's when it is ready and its files are moved in: both senders are connected and \
         hold a producer id. CPU s/GB = CPU seconds of the sending process per GB of lines.\n",
    );
    for (size, lines) in sizes {
        let dir = work.path().join(format!("lines-{size}"));
        let mut args = LoadgenArgs::new(&dir);
        args.files = 4;
        args.lines = lines;
        args.line_size = size.to_string().parse().unwrap();
        args.seed = size as u64;
        let written = loadgen::run(&args, &AtomicBool::new(false)).unwrap();
        let topic = format!("raw.bench{size}");
        // Rounds alternate the two senders; each round's agent reads the files from where the
        // last one left them.
        let mut rounds = Vec::new();
        let mut current = dir;
        for round in 1..=ROUNDS {
            let watched = work.path().join(format!("watched-{topic}-{round}"));
            let (files, in_memory) = read_records(&current, &watched);
            assert_eq!(in_memory.len() as u64, written.lines);
            if round == 1 {
                // The files only move between rounds.
                let distinct: HashSet<&[u8]> =
                    in_memory.iter().map(|l| l.bytes.as_slice()).collect();
                assert_eq!(
                    distinct.len(),
                    in_memory.len(),
                    "generated lines are unique"
                );
            }
            let ceiling = ceiling(
                cluster.bootstrap(),
                &format!("bench.ceiling.{size}"),
                &files,
                &in_memory,
            );
            drop(in_memory);
            let agent = agent(
                work.path(),
                cluster.bootstrap(),
                &current,
                &watched,
                &topic,
                written.lines,
                written.bytes,
            )
            .await;
            eprintln!(
                "~{size} B, round {round}: ceiling {:.1} MB/s, agent {:.1} MB/s ({:.2}x)",
                ceiling.mb_s(),
                agent.mb_s(),
                agent.mb_s() / ceiling.mb_s()
            );
            rounds.push((ceiling, agent));
            current = watched;
        }
        let per_round: Vec<String> = rounds
            .iter()
            .map(|(c, a)| format!("{:.2}x", a.mb_s() / c.mb_s()))
            .collect();
        let (ceiling, agent) = median_round(rounds);
        let rsyslog = rsyslog(
            work.path(),
            cluster.bootstrap(),
            &current,
            &format!("bench.rsyslog.{size}"),
            written.lines,
            written.bytes,
        )
        .await;
        report.push_str(&format!(
            "\n## ~{size} B lines ({} lines, {:.0} MB)\n\n| sender | MB/s | lines/s | CPU s/GB | peak RSS MiB | ratio to ceiling |\n|---|---|---|---|---|---|\n{}\n{}\n",
            written.lines,
            written.bytes as f64 / 1e6,
            ceiling.render(ceiling.mb_s()),
            agent.render(ceiling.mb_s()),
        ));
        let case = format!("~{size} B lines");
        agent
            .report_row(&case, &ceiling)
            .target(0.8)
            .emit()
            .expect("benchreport row");
        ReportRow::new(
            "agent",
            &case,
            "logpipe-agent peak RSS",
            agent.peak_rss_mib,
            "MiB",
        )
        .target_at_most(64.0)
        .emit()
        .expect("benchreport row");
        if let Some(row) = &rsyslog {
            agent
                .report_row(&case, row)
                .target(2.0)
                .emit()
                .expect("benchreport row");
            row.report_row(&case, &ceiling)
                .emit()
                .expect("benchreport row");
        }
        match rsyslog {
            Some(row) => report.push_str(&format!(
                "{}\n\nlogpipe-agent / rsyslog: {:.2}x\n",
                row.render(ceiling.mb_s()),
                agent.mb_s() / row.mb_s()
            )),
            None => report
                .push_str("\nrsyslog: not installed (Debian `rsyslog-kafka`) or did not finish.\n"),
        }
        report.push_str(&format!(
            "\nThe median of {ROUNDS} rounds; the agent against the ceiling in each round: {}.\n",
            per_round.join(", ")
        ));
        println!("{report}");
    }
    report.push_str(&format!(
        "\n{}\n",
        idle(work.path(), cluster.bootstrap()).await
    ));
    report.push_str(
        "\nNot measured: syslog-ng's kafka destination (`syslog-ng-mod-rdkafka` was not installable next to this \
         machine's packages).\n",
    );
    println!("{report}");
    if let Some(path) = output {
        std::fs::write(&path, &report).unwrap();
        eprintln!("written to {path}");
    }
}
