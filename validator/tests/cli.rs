//! The binary's command line: `replay` is dispatched by `main.rs` before the shared runner, so
//! these check that it is listed in `--help` and that `run`/`check` still reach the runner.

use std::process::{Command, Output};

fn validator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logpipe-validator"))
        .args(args)
        .env_remove("LOGPIPE_CONFIG")
        .output()
        .expect("starting logpipe-validator")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_lists_replay_next_to_run_and_check() {
    for flag in ["--help", "-h", "help"] {
        let output = validator(&[flag]);
        let help = text(&output);
        assert!(output.status.success(), "{flag}: {help}");
        for wanted in ["run", "check", "replay", logpipe_validator::replay::ABOUT] {
            assert!(
                help.contains(wanted),
                "{flag} does not mention {wanted:?}:\n{help}"
            );
        }
    }
}

#[test]
fn replay_has_its_own_arguments() {
    let output = validator(&["replay", "--help"]);
    let help = text(&output);
    assert!(output.status.success(), "{help}");
    for wanted in ["--topic", "--stage", "--reason", "--since", "--until"] {
        assert!(
            help.contains(wanted),
            "replay --help does not mention {wanted}:\n{help}"
        );
    }
    let output = validator(&["replay", "--config", "/nonexistent/validator.toml"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing --topic is a usage error: {}",
        text(&output)
    );
    assert!(text(&output).contains("--topic"), "{}", text(&output));
}

#[test]
fn check_still_goes_through_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("validator.toml");
    std::fs::write(
        &path,
        "schema_store = \"http://127.0.0.1:8081\"\n[kafka]\nbootstrap = \"127.0.0.1:9092\"\n[telemetry]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\ntopics = \"raw\\\\..*\"\nsubject = \"topic\"\n",
    )
    .unwrap();
    let output = validator(&["check", "--config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("route 1: topics /raw\\..*/"),
        "{}",
        text(&output)
    );
    let output = validator(&["check", "--config", "/nonexistent/validator.toml"]);
    assert_eq!(
        output.status.code(),
        Some(78),
        "EX_CONFIG: {}",
        text(&output)
    );
    let output = validator(&["replya"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown command is a usage error: {}",
        text(&output)
    );
}
