//! What the lake loader's end-to-end tests share: `logpipe-lake` configs over a [`Stack`], the
//! game stream's rows the table must hold (by record id, with their event ids), and the table
//! read back by outside readers: Python `deltalake` and `polars`, each in a process of its own
//! (`tests/lake-reader/read_table.py`, installed by `scripts/lake-reader-venv`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use logpipe_devkit::harness::{free_addr, write_file};
use serde::Deserialize;

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
    uri: &Path,
    extra: &str,
) -> anyhow::Result<(PathBuf, SocketAddr)> {
    let telemetry = free_addr();
    let text = format!(
        "schema_store = \"{}\"\ninstance = \"{instance}\"\n\
         [kafka]\nbootstrap = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n\
         [telemetry]\nlisten = \"{telemetry}\"\n\
         [[tables]]\nname = \"game\"\ntopics = [\"clean.game\"]\nuri = \"{}\"\nevent_time = \"event_time\"\n{extra}",
        stack.store_url(),
        stack.cluster.bootstrap(),
        uri.display()
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

/// Reads the table at `uri` with `reader` (`deltalake` or `polars`), asking for `columns`.
pub async fn read(reader: &str, uri: &Path, columns: &[&str]) -> anyhow::Result<Read> {
    let python = std::env::var_os("LOGPIPE_LAKE_PYTHON").context(
        "LOGPIPE_LAKE_PYTHON is not set: run the tests with scripts/test, or export LOGPIPE_LAKE_PYTHON=$(scripts/lake-reader-venv)",
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lake-reader/read_table.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(reader)
        .arg(uri)
        .env("LOGPIPE_LAKE_COLUMNS", columns.join(","))
        .output()
        .await?;
    // polars can abort at exit after printing a correct answer: judge by the output.
    match serde_json::from_slice(&output.stdout) {
        Ok(read) => Ok(read),
        Err(e) => bail!(
            "{reader} could not read {}: {e}\n{}",
            uri.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// How many rows the table holds now (0 while there is no table).
pub async fn count(uri: &Path) -> usize {
    read("deltalake", uri, &[]).await.map_or(0, |r| r.rows)
}
