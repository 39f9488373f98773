//! The service binaries `up` runs: the ones built next to its own executable (the same cargo
//! profile). Launched through cargo (`cargo dev up`), it first builds them, so a fresh clone works
//! with one command and an edited service is never run from a stale binary. Also the pids of the
//! running services, which the user needs to `kill -9` one.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::pipeline::Component;

/// The directory `up`'s own executable is in (`target/<profile>`).
fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating logpipe-dev's own executable")?;
    Ok(exe
        .parent()
        .context("logpipe-dev's executable has no directory")?
        .to_owned())
}

/// Whether this process was started by `cargo run` for this package: cargo then sets `CARGO`
/// and the package's variables in the environment. A test or a user running the binary directly
/// does not get a build.
fn cargo_of_this_package() -> Option<(PathBuf, PathBuf)> {
    let cargo = std::env::var_os("CARGO")?;
    if std::env::var("CARGO_PKG_NAME").ok()? != env!("CARGO_PKG_NAME") {
        return None;
    }
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent()?.to_owned();
    Some((PathBuf::from(cargo), workspace))
}

/// Builds the service binaries with the profile `up` itself was built with, when started by
/// cargo; then checks that every binary is there, with a message saying how to build them.
pub fn prepare() -> anyhow::Result<()> {
    let dir = own_dir()?;
    if let Some((cargo, workspace)) = cargo_of_this_package() {
        build(&cargo, &workspace, &dir)?;
    }
    let binaries = Component::EVERY.map(Component::binary);
    let missing: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: build the service binaries first with `cargo build --release --bins` \
             (or start up with `cargo dev up`, which builds them)",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}

fn build(cargo: &Path, workspace: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut args = vec!["build".to_owned()];
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => args.push("--release".into()),
        Some(profile) => args.extend(["--profile".into(), profile.to_owned()]),
        None => bail!("cannot tell the cargo profile of {}", dir.display()),
    }
    // Each service's package is named like its binary.
    for c in Component::EVERY {
        args.extend(["-p".into(), c.binary().to_owned()]);
    }
    args.push("--bins".into());
    eprintln!(
        "logpipe-dev up: building the service binaries: cargo {}",
        args.join(" ")
    );
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args(&args).arg("--quiet");
    let status = command
        .status()
        .with_context(|| format!("running {}", cargo.display()))?;
    if !status.success() {
        bail!("building the service binaries failed ({status}); see cargo's output above");
    }
    Ok(())
}

/// The pids of this process's children running each service binary, read from `/proc` (the
/// pipeline keeps the processes; the pid is for the user, who may `kill -9` one to see the
/// pipeline recover). Empty where `/proc` is not available.
pub fn child_pids() -> Vec<(String, u32)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe")) {
            if let Some(name) = exe.file_name().and_then(|n| n.to_str()) {
                found.push((name.to_owned(), pid));
            }
        }
    }
    found
}
