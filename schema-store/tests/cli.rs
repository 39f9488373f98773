//! The binary's own commands: `hash-password` and `check`; and `run` under systemd's
//! notification protocol. Needs the binaries built.

use std::io::Write;
use std::process::{Command, Stdio};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use logpipe_devkit::harness::{bin_path, free_addr, wait_until, Process};

#[test]
fn hash_password_reads_stdin_and_prints_a_verifiable_hash() {
    let mut child = Command::new(bin_path("logpipe-schema-store").unwrap())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let hash = PasswordHash::new(hash.trim()).unwrap();
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    assert!(argon2::Argon2::default()
        .verify_password(b"s3cret pass", &hash)
        .is_ok());
    assert!(argon2::Argon2::default()
        .verify_password(b"s3cret", &hash)
        .is_err());
}

#[test]
fn check_accepts_both_storages_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let check = |storage: &str| {
        let path = dir.path().join("store.toml");
        std::fs::write(&path, format!("listen = \"127.0.0.1:8081\"\n[telemetry]\nlisten = \"127.0.0.1:9304\"\n[storage]\n{storage}\n")).unwrap();
        Command::new(bin_path("logpipe-schema-store").unwrap())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = check("kind = \"local\"\npath = \"/var/lib/logpipe-schema-store\"");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("auth: none"));
    let kafka = check("kind = \"kafka\"\n[kafka]\nbootstrap = \"k1:9092\"");
    assert!(kafka.status.success(), "{kafka:?}");
    assert!(
        String::from_utf8_lossy(&kafka.stdout)
            .contains("one writer elected through group _lp.schema-store.default.election"),
        "{kafka:?}"
    );
    let kafka = check("kind = \"kafka\"");
    assert_eq!(kafka.status.code(), Some(78), "EX_CONFIG");
    assert!(
        String::from_utf8_lossy(&kafka.stderr).contains("[kafka]"),
        "{kafka:?}"
    );
}

/// `Type=notify` units: READY=1 once started, WATCHDOG=1 every half `WatchdogSec`,
/// STOPPING=1 when SIGTERM starts the drain (the runner sends them for every service but the
/// agent, which sends its own from its tailing loop).
#[tokio::test]
async fn systemd_hears_ready_the_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{}\"\n",
            free_addr(),
            dir.path().join("data").display(),
            free_addr()
        ),
    )
    .unwrap();
    // As systemd starts it: the watchdog's pid is the service's own (the shell execs it).
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"")
        .arg(bin_path("logpipe-schema-store").unwrap())
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // WatchdogSec=0.4s: a ping every 200 ms.
        .env("WATCHDOG_USEC", "400000");
    let mut store = Process::spawn("logpipe-schema-store", command).unwrap();
    let mut heard: Vec<String> = Vec::new();
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    while heard.iter().filter(|m| *m == "WATCHDOG=1").count() < 2 {
        heard.push(next());
    }
    assert_eq!(
        heard.first().map(String::as_str),
        Some("READY=1"),
        "{heard:?}"
    );
    assert_eq!(
        heard.iter().filter(|m| *m == "READY=1").count(),
        1,
        "{heard:?}"
    );
    store
        .terminate(std::time::Duration::from_secs(20))
        .await
        .unwrap();
    // Whatever came since, up to the end of the queue.
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

/// SIGHUP puts a changed `[auth]` table in force at once: a changed password stops working even
/// for a client whose header was verified before, and the other keys need no restart warning
/// when only auth and the log filter changed.
#[tokio::test]
async fn a_reload_changes_users_and_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("store.toml");
    let (api, telemetry) = (free_addr(), free_addr());
    let write_config = |password: &str, anonymous_read: bool| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{api}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
                 [auth]\nanonymous_read = {anonymous_read}\n[[auth.users]]\nname = \"ops\"\npassword_hash = \"{}\"\nrole = \"admin\"\n",
                dir.path().join("data").display(),
                logpipe_schema_store::hash_password(password),
            ),
        )
        .unwrap();
    };
    write_config("one", false);
    let mut store = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    store
        .wait_ready(telemetry, std::time::Duration::from_secs(20))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let status = |password: Option<&'static str>| {
        let request = http.get(format!("http://{api}/subjects"));
        let request = match password {
            Some(p) => request.basic_auth("ops", Some(p)),
            None => request,
        };
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status(Some("one")).await, 200);
    assert_eq!(status(None).await, 401);

    write_config("two", true);
    store.hangup().unwrap();
    wait_until(std::time::Duration::from_secs(20), || async {
        status(Some("one")).await == 401
    })
    .await
    .unwrap_or_else(|_| panic!("the old password still works\n{}", store.logs()));
    assert_eq!(status(Some("two")).await, 200);
    assert_eq!(status(None).await, 200, "anonymous_read = true");
    assert!(
        !store.stderr().contains("take effect at the next start"),
        "{}",
        store.logs()
    );
    store
        .terminate(std::time::Duration::from_secs(20))
        .await
        .unwrap();
}
