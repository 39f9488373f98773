//! Children that die with the process that started them, however it ends: the kernel sends each
//! SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), so a test run killed by a timeout or by
//! kill -9, or a `logpipe-dev up` killed the same way, leaves no cluster or service behind.
//!
//! Linux sends that signal when the *thread* that forked the child ends, not the process: a
//! child forked on a test's thread or on a tokio worker would die with that thread while its
//! [`crate::harness::Process`] still lives. So every child is forked on one thread that lives
//! as long as the process.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `command` from the spawner thread, with SIGKILL as its parent-death signal.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let requests = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (command, reply) in incoming {
                    let _ = reply.send(spawn_here(command));
                }
            })
            .expect("starting the spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    requests
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread has ended"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread has ended"))?
}

fn spawn_here(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls; it allocates nothing (errors are raw OS errors).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A parent that died before the prctl would never signal: do not start orphaned.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    /// Set in the middle process of the test below: where it writes its child's pid.
    const PID_FILE: &str = "LOGPIPE_SPAWNER_TEST_PID_FILE";

    /// Whether `pid` runs (a zombie waiting for a reaper does not).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .map(str::trim_start)
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_child_dies_with_its_parent_not_with_the_thread_that_started_it() {
        if let Some(pid_file) = std::env::var_os(PID_FILE) {
            // The middle process: start a child from a thread that then ends, say which child,
            // and wait to be killed.
            // Never waited for: this process is killed, and the test checks the child dies too.
            #[allow(clippy::zombie_processes)]
            let child = std::thread::spawn(|| {
                let mut sleep = Command::new("sleep");
                sleep.arg("600");
                spawn(sleep).expect("starting sleep")
            })
            .join()
            .expect("the starting thread");
            std::fs::write(Path::new(&pid_file), child.id().to_string()).unwrap();
            std::thread::park();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut middle = Command::new(std::env::current_exe().unwrap());
        middle
            .args([
                "--exact",
                "spawner::tests::a_child_dies_with_its_parent_not_with_the_thread_that_started_it",
            ])
            .env(PID_FILE, &pid_file);
        // Itself started through the spawner, so a failing run does not leave it behind.
        let mut middle = spawn(middle).unwrap();
        let mut child = None;
        wait_for("the middle process to start its child", || {
            child = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.parse::<u32>().ok());
            child.is_some()
        });
        let child = child.unwrap();
        assert!(
            running(child),
            "the child died with the thread that started it"
        );
        middle.kill().unwrap();
        middle.wait().unwrap();
        wait_for("the child to die with its parent", || !running(child));
    }
}
