//! A small file system that can be filled up: a tmpfs mounted over a test's directory, for the
//! full-disk tests. Mounting needs privileges (root, or CAP_SYS_ADMIN); where they are missing
//! [`Tmpfs::mount`] says so and the test reports itself skipped rather than passing silently.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory; unmounted (lazily, in case a process still holds it) when
/// dropped.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB, open to every user, over `at`. `Ok(None)` when this
    /// machine does not let the tests mount.
    pub fn mount(at: &Path, kib: u64) -> anyhow::Result<Option<Tmpfs>> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={kib}k,mode=0777"))
            .arg("tmpfs")
            .arg(at)
            .output();
        match output {
            Ok(o) if o.status.success() => Ok(Some(Tmpfs { at: at.to_owned() })),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} (needs root): {}",
                    at.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                Ok(None)
            }
        }
    }

    /// Fills the file system to the last byte with `<dir>/filler`; removing it frees the space.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.at.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Smaller writes take the last partial block.
        while let Ok(n) = file.write(&block[..64]) {
            if n == 0 {
                break;
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
