//! The binary's own commands: `hash-password` and `check`. Needs the binaries built.

use std::io::Write;
use std::process::{Command, Stdio};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use logpipe_devkit::harness::bin_path;

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
