//! `logpipe-dev up` as a user runs it: a real process starting the whole pipeline, printing one
//! plain line per interval (`--no-tui`), and ending, after `--duration` or on SIGINT, with a
//! reconciliation by event id that must be exact (and exit 0).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use logpipe_devkit::harness::Process;

/// Starting the pipeline takes a while in a debug build; the runs themselves are short.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The value of `key=` in a `--no-tui` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// The periodic lines of the output.
fn periodic(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("t=")).collect()
}

/// The numbers of the final `reconciliation: written N (I invalid), clean C, dead letters D,
/// replayed R: lost L, duplicated U, misrouted M` line.
#[derive(Debug, PartialEq)]
struct Outcome {
    written: u64,
    clean: u64,
    dead_letters: u64,
    replayed: u64,
    lost: u64,
    duplicated: u64,
    misrouted: u64,
}

fn outcome(stdout: &str) -> anyhow::Result<Outcome> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reconciliation: "))
        .context("no reconciliation line")?;
    let number_after = |label: &str| -> anyhow::Result<u64> {
        let rest = &line[line
            .find(label)
            .with_context(|| format!("no {label:?} in {line:?}"))?
            + label.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .with_context(|| format!("no number after {label:?} in {line:?}"))
    };
    Ok(Outcome {
        written: number_after("written")?,
        clean: number_after("clean")?,
        dead_letters: number_after("dead letters")?,
        replayed: number_after("replayed")?,
        lost: number_after("lost")?,
        duplicated: number_after("duplicated")?,
        misrouted: number_after("misrouted")?,
    })
}

fn check_exact(stdout: &str) -> anyhow::Result<Outcome> {
    let outcome = outcome(stdout)?;
    assert_eq!(
        (
            outcome.lost,
            outcome.duplicated,
            outcome.misrouted,
            outcome.replayed
        ),
        (0, 0, 0, 0),
        "{stdout}"
    );
    assert_eq!(
        outcome.clean + outcome.dead_letters,
        outcome.written,
        "{stdout}"
    );
    assert!(
        outcome.dead_letters > 0,
        "invalid lines were written, so some dead letters are expected: {stdout}"
    );
    assert!(stdout.contains("\nexact: "), "{stdout}");
    // The CEP worker's matches are checked against the seed rules the same way.
    assert!(
        stdout.contains("\ncep reconciliation: matches expected ")
            && stdout.contains("\nexact: every match the rules call for"),
        "{stdout}"
    );
    // And the lake's table of the clean topic holds every clean record once ...
    let lake = format!(
        "\nlake reconciliation: {0} rows for {0} clean records: missing 0, extra 0, repeated 0\n",
        outcome.clean
    );
    assert!(stdout.contains(&lake), "{lake:?} not in\n{stdout}");
    // And the dead-letter table every dead letter once.
    let dead = format!(
        "\nlake reconciliation: {0} rows for {0} dead letters: missing 0, extra 0, repeated 0\n",
        outcome.dead_letters
    );
    assert!(stdout.contains(&dead), "{dead:?} not in\n{stdout}");
    Ok(outcome)
}

#[tokio::test]
async fn a_timed_run_prints_lines_and_reconciles_exactly() -> anyhow::Result<()> {
    let mut up = Process::start(
        "logpipe-dev",
        &[
            "up",
            "--no-tui",
            "--duration",
            "20s",
            "--rate",
            "300",
            "--invalid",
            "0.1",
            "--rotate-bytes",
            "200000",
            "--interval",
            "1s",
        ],
    )?;
    let status = up.wait_exit(RUN_TIMEOUT).await?;
    let stdout = up.stdout();
    assert!(status.success(), "exit {status}\n{}", up.logs());
    let exact = check_exact(&stdout)?;
    // 300 lines/s for 20 s, paced by the generator.
    assert!((5_900..=6_001).contains(&exact.written), "{exact:?}");
    let lines = periodic(&stdout);
    assert!(lines.len() >= 15, "one line per second expected:\n{stdout}");
    for line in &lines {
        for key in [
            "generated",
            "write",
            "mirrored",
            "clean",
            "dlq",
            "agent_lag_bytes",
            "mirror_lag",
            "validator_lag",
            "matches",
            "cep_lag",
            "health",
        ] {
            assert!(field(line, key).is_some(), "{key} missing in {line}");
        }
    }
    // Every service was healthy while the generator ran, and the view counted it all: the
    // last line (drawn after the drain) shows what the reconciliation found.
    let running = &lines[lines.len() / 2];
    assert_eq!(
        field(running, "health"),
        Some("agent:ready,mirror:ready,validator:ready,cep:ready,lake:ready,schema-store:ready"),
        "{running}"
    );
    let last = lines.last().expect("lines");
    assert_eq!(
        field(last, "generated"),
        Some(exact.written.to_string().as_str()),
        "{last}"
    );
    assert_eq!(
        field(last, "clean"),
        Some(exact.clean.to_string().as_str()),
        "{last}"
    );
    assert_eq!(
        field(last, "dlq"),
        Some(exact.dead_letters.to_string().as_str()),
        "{last}"
    );
    // Where things are is printed at start, for the tour to refer to.
    for what in [
        "write cluster   bootstrap 127.0.0.1:",
        "control http://127.0.0.1:",
        "schema store    http://127.0.0.1:",
        "cep             http://127.0.0.1:",
    ] {
        assert!(stdout.contains(what), "{what:?} missing:\n{stdout}");
    }
    Ok(())
}

#[tokio::test]
async fn sigint_mid_run_drains_and_reconciles_exactly() -> anyhow::Result<()> {
    let mut up = Process::start(
        "logpipe-dev",
        &[
            "up",
            "--no-tui",
            "--rate",
            "300",
            "--invalid",
            "0.1",
            "--interval",
            "1s",
        ],
    )?;
    // Interrupt once records come out of the validator.
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        up.ensure_running()?;
        let stdout = up.stdout();
        if periodic(&stdout)
            .iter()
            .any(|l| field(l, "clean").is_some_and(|n| n != "0"))
        {
            break;
        }
        if Instant::now() >= deadline {
            bail!("no clean records within {RUN_TIMEOUT:?}\n{}", up.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &up.pid().to_string()])
        .status()?;
    assert!(status.success());
    let status = up.wait_exit(RUN_TIMEOUT).await?;
    let stdout = up.stdout();
    assert!(status.success(), "exit {status}\n{}", up.logs());
    let exact = check_exact(&stdout)?;
    assert!(exact.written > 0, "{exact:?}");
    assert!(stdout.contains("event: generator stopped"), "{stdout}");
    Ok(())
}

#[test]
fn the_reconciliation_line_is_read_back() {
    let out = "t=1s generated=5\nreconciliation: written 10 (2 invalid), clean 8, dead letters 2, replayed 3: lost 0, duplicated 1, misrouted 0\n";
    let parsed = outcome(out).unwrap();
    assert_eq!(
        parsed,
        Outcome {
            written: 10,
            clean: 8,
            dead_letters: 2,
            replayed: 3,
            lost: 0,
            duplicated: 1,
            misrouted: 0
        }
    );
    assert_eq!(field("t=1s generated=5 lag=1/2", "lag"), Some("1/2"));
    assert_eq!(periodic(out), ["t=1s generated=5"]);
}
