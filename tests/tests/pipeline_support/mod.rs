//! What the pipeline suites share: where written lines went missing, hop by hop, when a
//! reconciliation is not exact.
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::HashSet;
use std::time::Duration;

use logpipe_devkit::harness::scan_topic;
use logpipe_devkit::loadgen::{self, Report};
use logpipe_devkit::pipeline::{Component, Pipeline};
use rdkafka::Message as _;

/// How many of the written ids each raw topic holds (unique and in all), plus the agent's
/// counters: says which hop lost or duplicated lines.
pub async fn hops(pipeline: &Pipeline, written: &[Report]) -> String {
    let expected: HashSet<String> = written.iter().flat_map(|r| r.event_ids()).collect();
    let mut text = format!("written {} ids", expected.len());
    for (side, bootstrap) in [("write", pipeline.write_cluster().bootstrap()), ("read", pipeline.read_cluster().bootstrap())] {
        let (bootstrap, topic, expected) = (bootstrap.to_owned(), pipeline.raw_topic().to_owned(), expected.clone());
        let counted = tokio::task::spawn_blocking(move || {
            let mut unique = HashSet::new();
            let mut total = 0u64;
            scan_topic(&bootstrap, &topic, Duration::from_secs(120), |m| {
                if let Some(id) = loadgen::event_id(m.payload().unwrap_or_default()).filter(|id| expected.contains(*id)) {
                    total += 1;
                    unique.insert(id.to_owned());
                }
                Ok(())
            })
            .map(|_| (unique.len(), total))
        })
        .await;
        match counted {
            Ok(Ok((unique, total))) => text += &format!("; {side} cluster raw: {unique} unique, {total} in all"),
            Ok(Err(e)) => text += &format!("; {side} cluster raw: {e:#}"),
            Err(e) => text += &format!("; {side} cluster raw: {e}"),
        }
    }
    if let Ok(metrics) = pipeline.metrics(Component::Agent).await {
        for name in ["logpipe_agent_lines_read_total", "logpipe_agent_lines_acked_total", "logpipe_agent_rotations_total", "logpipe_agent_truncations_total"] {
            text += &format!("; {name} {}", logpipe_devkit::pipeline::metric_sum(&metrics, name, &[]));
        }
    }
    text
}

/// Every copy of some ids in the write cluster's raw topic (partition, offset, `lp.*` headers):
/// tells an agent replay (same file and offset) from a line sent under two identities.
pub async fn raw_copies(pipeline: &Pipeline, ids: &[String]) -> String {
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let (bootstrap, topic) = (pipeline.write_cluster().bootstrap().to_owned(), pipeline.raw_topic().to_owned());
    let found = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        scan_topic(&bootstrap, &topic, Duration::from_secs(120), |m| {
            if let Some(id) = loadgen::event_id(m.payload().unwrap_or_default()).filter(|id| wanted.contains(*id)) {
                let headers: Vec<String> = m
                    .headers()
                    .map(|hs| {
                        use rdkafka::message::Headers as _;
                        hs.iter().map(|h| format!("{}={}", h.key, String::from_utf8_lossy(h.value.unwrap_or_default()))).collect()
                    })
                    .unwrap_or_default();
                lines.push(format!("{id} at {}/{}: {}", m.partition(), m.offset(), headers.join(" ")));
            }
            Ok(())
        })?;
        lines.sort();
        Ok::<_, anyhow::Error>(lines.join("\n"))
    })
    .await;
    match found {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => e.to_string(),
    }
}
