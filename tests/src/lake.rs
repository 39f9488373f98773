//! What the lake loader's end-to-end tests share: `logpipe-lake` configs over a [`Stack`], the
//! game stream's rows the table must hold (by record id, with their event ids), and the table
//! read back by outside readers: Python `deltalake` and `polars`, each in a process of its own
//! (`tests/lake-reader/read_table.py`, installed by `scripts/lake-reader-venv`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use logpipe_devkit::harness::{free_addr, wait_until, write_file, Process};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::cep::Game;
use crate::validator::{Lines, Stack};

/// The loader binary.
pub const LAKE: &str = "logpipe-lake";
/// The dead-letter topic of the table `game`.
pub const LAKE_DLQ: &str = "dlq.lake.game";

/// A record's id in the table: (`lp_host`, `lp_file`, `lp_offset`).
pub type RowId = (String, String, i64);

/// Writes a loader config for the table `game` loading `clean.game` into `uri`; returns it and
/// its telemetry address.
pub fn config(
    stack: &Stack,
    instance: &str,
    uri: &str,
    extra: &str,
) -> anyhow::Result<(PathBuf, SocketAddr)> {
    let telemetry = free_addr();
    let text = format!(
        "schema_store = \"{}\"\ninstance = \"{instance}\"\n\
         [kafka]\nbootstrap = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n\
         [telemetry]\nlisten = \"{telemetry}\"\n\
         [[tables]]\nname = \"game\"\ntopics = [\"clean.game\"]\nuri = \"{uri}\"\nevent_time = \"event_time\"\n{extra}",
        stack.store_url(),
        stack.cluster.bootstrap(),
    );
    Ok((
        write_file(stack.dir.path(), &format!("lake-{instance}.toml"), &text)?,
        telemetry,
    ))
}

/// Every row the table must hold once: each game line's record id, with its event id.
pub fn oracle(game: &Game, files: &[Lines]) -> BTreeMap<RowId, String> {
    let mut expected = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        let events = game.events.iter().filter(|e| e.file == i);
        for ((offset, _), event) in file.lines.iter().zip(events) {
            expected.insert(
                (file.host.clone(), file.file.to_hex(), *offset as i64),
                event.event_id.clone(),
            );
        }
    }
    expected
}

/// The table as an outside reader sees it.
#[derive(Debug, Deserialize)]
pub struct Read {
    pub rows: usize,
    pub columns: Vec<String>,
    pub ids: Vec<RowId>,
    /// Per row, in the order of `ids`: the asked columns' values as text.
    pub values: Vec<BTreeMap<String, Option<String>>>,
}

/// Reads the table at `uri` with `reader` (`deltalake` or `polars`), asking for `columns`;
/// `storage`: the object store's `AWS_*` options.
pub async fn read(
    reader: &str,
    uri: &str,
    storage: &[(&str, String)],
    columns: &[&str],
) -> anyhow::Result<Read> {
    let python = std::env::var_os("LOGPIPE_LAKE_PYTHON").context(
        "LOGPIPE_LAKE_PYTHON is not set: run the tests with scripts/test, or export LOGPIPE_LAKE_PYTHON=$(scripts/lake-reader-venv)",
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lake-reader/read_table.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(reader)
        .arg(uri)
        .env("LOGPIPE_LAKE_COLUMNS", columns.join(","))
        .envs(storage.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await?;
    // polars can abort at exit after printing a correct answer: judge by the output.
    match serde_json::from_slice(&output.stdout) {
        Ok(read) => Ok(read),
        Err(e) => bail!(
            "{reader} could not read {uri}: {e}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// How many rows the table holds now (0 while there is no table or it cannot be read).
pub async fn count(uri: &str, storage: &[(&str, String)]) -> usize {
    read("deltalake", uri, storage, &[])
        .await
        .map_or(0, |r| r.rows)
}

/// An S3-compatible server for the tests (moto's, from the readers' virtualenv), reached
/// through a [`Gate`] that can cut it off; its bucket `lake` exists.
pub struct S3 {
    _server: Process,
    pub gate: Gate,
}

/// The bucket the tests' tables are in.
pub const BUCKET: &str = "lake";

impl S3 {
    pub async fn start() -> anyhow::Result<S3> {
        let python = std::env::var_os("LOGPIPE_LAKE_PYTHON")
            .context("LOGPIPE_LAKE_PYTHON is not set (see lake::read)")?;
        let moto = Path::new(&python).with_file_name("moto_server");
        let addr = free_addr();
        let mut command = std::process::Command::new(moto);
        command.args(["-H", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
        let server = Process::spawn("moto_server", command)?;
        let http = reqwest::Client::new();
        let bucket = format!("http://{addr}/{BUCKET}");
        wait_until(Duration::from_secs(30), || async {
            http.put(&bucket)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .context("moto_server did not come up")?;
        Ok(S3 {
            _server: server,
            gate: Gate::open(addr).await?,
        })
    }

    /// The object store options for the server, as `AWS_*` pairs (the loader's
    /// `[tables.storage]` and the readers' environment).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://{}", self.gate.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    /// The options as a `[tables.storage]` table.
    pub fn storage_toml(&self) -> String {
        let mut text = String::from("[tables.storage]\n");
        for (k, v) in self.options() {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
        text
    }
}

/// A TCP forwarder in front of a server that can be closed (every connection cut, new ones
/// refused) and opened again: an outage of the server without losing what it holds. It can also
/// hold the next Delta commit that passes (see [`Gate::hold_commit`]).
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    armed: Armed,
    task: tokio::task::JoinHandle<()>,
}

/// Which half of a Delta commit the gate holds.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// The request writing the log entry: the commit is never made.
    Request,
    /// The server's answer to it: the commit is made and the writer never learns it.
    Answer,
}

/// The hold asked for, and whom to tell once it holds.
type Armed = Arc<Mutex<Option<(Hold, oneshot::Sender<()>)>>>;

impl Gate {
    pub async fn open(target: SocketAddr) -> anyhow::Result<Gate> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let armed = Armed::default();
        let task = {
            let (open, cut, armed) = (open.clone(), cut.clone(), armed.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let (cut, armed) = (cut.clone(), armed.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = forward(client, server, &armed) => {}
                            _ = cut.notified() => {}
                        }
                    });
                }
            })
        };
        Ok(Gate {
            addr,
            open,
            cut,
            armed,
            task,
        })
    }

    /// Cuts every connection and refuses new ones until [`Gate::reopen`].
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Holds `hold` of the next Delta commit (a `PUT` of `_delta_log/<version>.json`) for as long
    /// as its connection lasts; the answer comes once it is held.
    pub fn hold_commit(&self, hold: Hold) -> oneshot::Receiver<()> {
        let (held, holding) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((hold, held));
        holding
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways between `client` and `server` until both ends close, holding what `armed`
/// asks for.
async fn forward(client: TcpStream, server: TcpStream, armed: &Armed) -> std::io::Result<()> {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Set once a commit passed whose answer is to be held: the next bytes from the server are
    // that answer (HTTP/1.1 clients send a request once the last answer is in).
    let answer: Mutex<Option<oneshot::Sender<()>>> = Mutex::new(None);
    let up = async {
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                return to_server.shutdown().await;
            }
            if is_commit(&buf[..n]) {
                let armed = armed.lock().unwrap().take();
                match armed {
                    Some((Hold::Request, held)) => {
                        let _ = held.send(());
                        return std::future::pending().await;
                    }
                    Some((Hold::Answer, held)) => *answer.lock().unwrap() = Some(held),
                    None => {}
                }
            }
            to_server.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = from_server.read(&mut buf).await?;
            if n == 0 {
                return to_client.shutdown().await;
            }
            let held = answer.lock().unwrap().take();
            if let Some(held) = held {
                let _ = held.send(());
                return std::future::pending().await;
            }
            to_client.write_all(&buf[..n]).await?;
        }
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// Whether `bytes` begin a request writing a Delta log entry, `PUT <table>/_delta_log/<version>.json`
/// (a request's first line comes in one read; a body never begins with `PUT `).
fn is_commit(bytes: &[u8]) -> bool {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let Some(path) = line
        .strip_prefix(b"PUT ")
        .and_then(|rest| rest.split(|b| *b == b' ').next())
    else {
        return false;
    };
    let path = String::from_utf8_lossy(path);
    path.rsplit_once("/_delta_log/")
        .and_then(|(_, entry)| entry.strip_suffix(".json"))
        .is_some_and(|version| !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::is_commit;

    #[test]
    fn a_commit_is_a_put_of_a_numbered_log_entry() {
        for (request, commit) in [
            (
                &b"PUT /lake/t/_delta_log/00000000000000000007.json HTTP/1.1\r\n"[..],
                true,
            ),
            (
                b"PUT /lake/t/_delta_log/00000000000000000007.json?x=1 HTTP/1.1\r\n",
                false,
            ),
            (
                b"GET /lake/t/_delta_log/00000000000000000007.json HTTP/1.1\r\n",
                false,
            ),
            (
                b"PUT /lake/t/_delta_log/_last_checkpoint HTTP/1.1\r\n",
                false,
            ),
            (
                b"PUT /lake/t/_delta_log/_commit_1a2b.json.tmp HTTP/1.1\r\n",
                false,
            ),
            (
                b"PUT /lake/t/dt=2023-11-01/part-00000-1a2b.parquet HTTP/1.1\r\n",
                false,
            ),
            (b"\x28\xb5\x2f\xfd binary body", false),
        ] {
            assert_eq!(
                is_commit(request),
                commit,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }
}
