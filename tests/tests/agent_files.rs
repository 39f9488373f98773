//! The agent end to end on awkward files: every test runs a dev cluster and an agent process,
//! and checks what a consumer reads by unique id (`lp.host`, `lp.file`, `lp.offset`).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use logpipe_core::metric_names::agent;
use logpipe_devkit::harness::wait_until;
use logpipe_tests::agent::{append, as_set, lines, Collector, Setup};
use logpipe_tests::service;

const WAIT: Duration = Duration::from_secs(30);

/// Oversized, partial, CRLF, invalid UTF-8 and empty lines; a 0-byte file; a file deleted while
/// read; identical first lines in two files; a symlinked file; a file below the glob's depth is
/// left alone.
#[tokio::test]
async fn awkward_lines_and_files_arrive_exactly_as_the_contract_says() -> anyhow::Result<()> {
    let setup = Setup::new(1, "", "max_line_bytes = 100").await?;
    std::fs::write(setup.log("empty.log"), b"")?;
    let mut agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;

    // One file with every kind of line; the partial last line is finished later.
    let long = "L".repeat(250);
    let mut mixed = std::fs::File::create(setup.log("mixed.log"))?;
    let mut bytes = format!("first\r\n\n\r\n{long}\n").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe not utf8\nhalf");
    mixed.write_all(&bytes)?;
    mixed.flush()?;
    // The 0-byte file gets a line now.
    append(&setup.log("empty.log"), &["was empty".to_owned()]);
    // Two files with the same first line are two files.
    let same = vec!["same header".to_owned(), "a".to_owned()];
    append(&setup.log("twin-1.log"), &same);
    append(&setup.log("twin-2.log"), &same);

    wait_until(WAIT, || async { collector.count() >= 7 }).await?;
    // The partial line is not shipped before its newline.
    assert!(!collector.distinct_values().contains(b"half".as_slice()));
    mixed.write_all(b" done\n")?;
    mixed.flush()?;
    collector
        .wait_for_values(&as_set(&["half done".to_owned()]), WAIT)
        .await?;

    let records = collector.records();
    let mixed_records: Vec<_> = records
        .iter()
        .filter(|r| r.path.ends_with("mixed.log"))
        .collect();
    let got: Vec<(u64, Vec<u8>, Option<u64>)> = mixed_records
        .iter()
        .map(|r| (r.id.offset, r.value.clone(), r.truncated))
        .collect();
    let mut expected_long = long.clone().into_bytes();
    expected_long.truncate(100);
    assert_eq!(
        got,
        vec![
            (0, b"first".to_vec(), None),
            (10, expected_long, Some(250)),
            (261, b"\xff\xfe not utf8".to_vec(), None),
            (273, b"half done".to_vec(), None),
        ],
        "offsets are of each line's first byte; CRLF stripped; empty lines skipped"
    );
    let twins: HashSet<_> = records
        .iter()
        .filter(|r| r.path.contains("twin"))
        .map(|r| r.id.file)
        .collect();
    assert_eq!(
        twins.len(),
        2,
        "identical first lines must not merge two files"
    );
    assert_eq!(
        records.iter().filter(|r| r.value == b"same header").count(),
        2
    );
    assert!(records
        .iter()
        .any(|r| r.value == b"was empty" && r.id.offset == 0));
    assert_eq!(setup.metric(agent::LINES_EMPTY).await, 2.0);
    assert_eq!(setup.metric(agent::LINES_OVERSIZED).await, 1.0);

    // A file deleted while being read: everything written before the delete arrives, and its
    // unterminated last line is shipped once the file is gone and idle.
    let doomed = lines("doomed", 2000);
    append(&setup.log("doomed.log"), &doomed[..1]);
    // Once the agent has the file open, the rest is written and the file deleted at once.
    collector
        .wait_for_values(&as_set(&doomed[..1]), WAIT)
        .await?;
    append(&setup.log("doomed.log"), &doomed[1..]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(setup.log("doomed.log"))?
        .write_all(b"no newline")?;
    std::fs::remove_file(setup.log("doomed.log"))?;
    let mut expected = as_set(&doomed);
    expected.insert(b"no newline".to_vec());
    collector.wait_for_values(&expected, WAIT).await?;
    wait_until(WAIT, || async {
        setup.metric(agent::DETACHED_FILES).await == 0.0
    })
    .await?;

    // A symlinked file: read through the link (its target lives outside the watched
    // directory, so the periodic stat of open files sees it grow).
    let target = setup.dir.path().join("real.txt");
    append(&target, &["through the link 1".to_owned()]);
    std::os::unix::fs::symlink(&target, setup.log("link.log"))?;
    collector
        .wait_for_values(&as_set(&["through the link 1".to_owned()]), WAIT)
        .await?;
    append(&target, &["through the link 2".to_owned()]);
    collector
        .wait_for_values(&as_set(&["through the link 2".to_owned()]), WAIT)
        .await?;
    assert!(collector
        .records()
        .iter()
        .any(|r| r.value == b"through the link 2" && r.path.ends_with("link.log")));

    // A file in a subdirectory is not matched by `logs/*.log`.
    std::fs::create_dir(setup.logs.join("sub"))?;
    append(&setup.logs.join("sub/x.log"), &lines("nested", 1));
    append(&setup.log("marker.log"), &["marker".to_owned()]);
    collector
        .wait_for_values(&as_set(&["marker".to_owned()]), WAIT)
        .await?;
    assert!(!collector
        .distinct_values()
        .iter()
        .any(|v| v.starts_with(b"{\"event_id\":\"nested")));
    agent.ensure_running()?;

    let (_, extra) = collector.duplicates();
    assert_eq!(extra, 0, "no restart, no duplicates");
    collector.check_ids_are_stable()?;
    agent.terminate(WAIT).await?;
    Ok(())
}

/// A directory created after the start, matched by the glob's base: its files are found.
#[tokio::test]
async fn directory_created_after_start_is_watched() -> anyhow::Result<()> {
    let setup = Setup::new(1, "rescan_interval_ms = 60000", "").await?;
    // Point the input at a directory that does not exist yet.
    let text = std::fs::read_to_string(&setup.config)?.replace("/logs/*.log", "/logs/app/*.log");
    std::fs::write(&setup.config, text)?;
    let _agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    std::fs::create_dir(setup.logs.join("app"))?;
    let written = lines("app", 5);
    append(&setup.logs.join("app/a.log"), &written);
    // Rescans are a minute apart here: only the watch on the parent can find it this fast.
    collector
        .wait_for_values(&as_set(&written), Duration::from_secs(10))
        .await?;
    Ok(())
}

/// Rotation (rename + create) and truncation while the agent is stopped, inode reuse, a corrupt
/// checkpoint and an unreadable file.
#[tokio::test]
async fn changes_while_stopped_lose_nothing_and_resend_nothing() -> anyhow::Result<()> {
    let setup = Setup::new(1, "", "").await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    let first = lines("rot-a", 500);
    let trunc_a = lines("trunc-a", 300);
    let reuse_a = lines("reuse-a", 100);
    append(&setup.log("rot.log"), &first);
    append(&setup.log("trunc.log"), &trunc_a);
    append(&setup.log("reuse.log"), &reuse_a);
    let mut agent = setup.start().await?;
    let mut expected = as_set(&first);
    expected.extend(as_set(&trunc_a));
    expected.extend(as_set(&reuse_a));
    collector.wait_for_values(&expected, WAIT).await?;
    service::stop(&mut agent).await?;

    // While stopped: more lines, then rename + create; truncate and rewrite (same first
    // line, longer than before); delete and re-create (the inode is often reused).
    let second = lines("rot-b", 200);
    append(&setup.log("rot.log"), &second);
    std::fs::rename(setup.log("rot.log"), setup.log("rot.log.1"))?;
    let third = lines("rot-c", 100);
    append(&setup.log("rot.log"), &third);
    let mut trunc_b = vec![trunc_a[0].clone()];
    trunc_b.extend(lines("trunc-b", 400));
    std::fs::write(setup.log("trunc.log"), b"")?;
    append(&setup.log("trunc.log"), &trunc_b);
    let old_inode = std::fs::metadata(setup.log("reuse.log"))?.ino();
    std::fs::remove_file(setup.log("reuse.log"))?;
    let reuse_b = lines("reuse-b", 50);
    append(&setup.log("reuse.log"), &reuse_b);
    let reused = std::fs::metadata(setup.log("reuse.log"))?.ino() == old_inode;
    eprintln!("inode reused: {reused}");
    // An unreadable file: logged and counted, the others go on.
    append(&setup.log("secret.log"), &lines("secret", 3));
    std::fs::set_permissions(
        setup.log("secret.log"),
        std::fs::Permissions::from_mode(0o000),
    )?;

    let before = collector.count();
    let mut agent = setup.start().await?;
    for batch in [&second, &third, &trunc_b, &reuse_b] {
        expected.extend(as_set(batch));
    }
    collector.wait_for_values(&expected, WAIT).await?;
    wait_until(WAIT, || async {
        setup.metric(agent::FILE_ERRORS).await >= 1.0
    })
    .await?;
    // trunc.log (rewritten) and, when its inode was reused, reuse.log (replaced) were
    // recognised as new contents.
    let renewed =
        setup.metric(agent::TRUNCATIONS).await + setup.metric(agent::IDENTITY_CHANGES).await;
    assert!(renewed >= 1.0 + f64::from(u8::from(reused)), "{renewed}");
    // Exactly the new lines were sent: 200 + 100 + 401 + 50, no replays (clean stop).
    wait_until(Duration::from_secs(5), || async {
        collector.count() >= before + 751
    })
    .await?;
    assert_eq!(
        collector.count() - before,
        751,
        "only new lines after a clean restart"
    );
    assert!(!collector
        .distinct_values()
        .iter()
        .any(|v| v.starts_with(b"{\"event_id\":\"secret")));
    agent.ensure_running()?;
    service::stop(&mut agent).await?;

    // A corrupt checkpoint: logged, the agent starts (from the beginning, the default) and
    // ships; nothing is lost.
    std::fs::write(setup.state.join("checkpoints.json"), b"{not json")?;
    let more = lines("after-corrupt", 10);
    append(&setup.log("rot.log"), &more);
    let _agent = setup.start().await?;
    expected.extend(as_set(&more));
    collector.wait_for_values(&expected, WAIT).await?;
    assert!(setup.metric(agent::CHECKPOINT_ERRORS).await >= 1.0);
    assert!(setup.state.join("checkpoints.json.corrupt").exists());
    collector.check_ids_are_stable()?;
    Ok(())
}

/// SIGHUP with a new input: its files are tailed, the old input's positions and in-flight
/// records are kept (nothing resent, nothing lost).
#[tokio::test]
async fn reload_adds_an_input_without_resending_or_losing() -> anyhow::Result<()> {
    let setup = Setup::new(1, "", "").await?;
    let agent = setup.start().await?;
    let collector = Collector::start(setup.cluster.bootstrap())?;
    let before = lines("before-reload", 2000);
    append(&setup.log("a.log"), &before);
    collector.wait_for_values(&as_set(&before), WAIT).await?;

    let other = setup.dir.path().join("other");
    std::fs::create_dir(&other)?;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o777))?;
    let text = std::fs::read_to_string(&setup.config)?
        + &format!(
            "[[inputs]]\npaths = [\"{}/*.txt\"]\ntopic = \"raw.game\"\nname = \"other\"\n",
            other.display()
        );
    std::fs::write(&setup.config, text)?;
    agent.hangup()?;
    let during = lines("during-reload", 2000);
    append(&setup.log("a.log"), &during);
    let added = lines("added-input", 10);
    append(&other.join("b.txt"), &added);
    let mut expected = as_set(&before);
    expected.extend(as_set(&during));
    expected.extend(as_set(&added));
    collector.wait_for_values(&expected, WAIT).await?;
    wait_until(WAIT, || async {
        setup.metric(agent::LINES_ACKED).await >= 4010.0
    })
    .await?;
    assert_eq!(collector.duplicates().1, 0, "a reload resends nothing");
    assert_eq!(collector.count(), 4010);
    Ok(())
}
