//! What the pipeline suites share: where written lines went missing, hop by hop, when a
//! reconciliation is not exact; the README tour's schema fix and dead-letter replay.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use logpipe_core::metric_names::agent;
use logpipe_devkit::harness::scan_topic;
use logpipe_devkit::loadgen::{self, Report};
use logpipe_devkit::pipeline::{Component, Pipeline};
use rdkafka::Message as _;

use crate::topic;

/// How many of the written ids each raw topic holds (unique and in all), plus the agent's
/// counters: says which hop lost or duplicated lines.
pub async fn hops(pipeline: &Pipeline, written: &[Report]) -> String {
    let expected: HashSet<String> = written.iter().flat_map(|r| r.event_ids()).collect();
    let mut text = format!("written {} ids", expected.len());
    for (side, bootstrap) in [
        ("write", pipeline.write_cluster().bootstrap()),
        ("read", pipeline.read_cluster().bootstrap()),
    ] {
        let (bootstrap, topic, expected) = (
            bootstrap.to_owned(),
            pipeline.raw_topic().to_owned(),
            expected.clone(),
        );
        let counted = tokio::task::spawn_blocking(move || {
            let mut unique = HashSet::new();
            let mut total = 0u64;
            scan_topic(&bootstrap, &topic, Duration::from_secs(120), |m| {
                if let Some(id) = loadgen::event_id(m.payload().unwrap_or_default())
                    .filter(|id| expected.contains(*id))
                {
                    total += 1;
                    unique.insert(id.to_owned());
                }
                Ok(())
            })
            .map(|_| (unique.len(), total))
        })
        .await;
        match counted {
            Ok(Ok((unique, total))) => {
                text += &format!("; {side} cluster raw: {unique} unique, {total} in all")
            }
            Ok(Err(e)) => text += &format!("; {side} cluster raw: {e:#}"),
            Err(e) => text += &format!("; {side} cluster raw: {e}"),
        }
    }
    if let Ok(metrics) = pipeline.metrics(Component::Agent).await {
        for name in [
            agent::LINES_READ,
            agent::LINES_ACKED,
            agent::ROTATIONS,
            agent::TRUNCATIONS,
        ] {
            text += &format!(
                "; {name} {}",
                logpipe_devkit::prometheus::total(&metrics, name)
            );
        }
    }
    text
}

/// Every copy of some ids in the write cluster's raw topic (partition, offset, `lp.*` headers):
/// tells an agent replay (same file and offset) from a line sent under two identities.
pub async fn raw_copies(pipeline: &Pipeline, ids: &[String]) -> String {
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let (bootstrap, topic) = (
        pipeline.write_cluster().bootstrap().to_owned(),
        pipeline.raw_topic().to_owned(),
    );
    let found = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        scan_topic(&bootstrap, &topic, Duration::from_secs(120), |m| {
            if let Some(id) =
                loadgen::event_id(m.payload().unwrap_or_default()).filter(|id| wanted.contains(*id))
            {
                let headers: Vec<String> = topic::headers(m)
                    .into_iter()
                    .map(|(name, value)| format!("{name}={}", topic::text(value.as_deref())))
                    .collect();
                lines.push(format!(
                    "{id} at {}/{}: {}",
                    m.partition(),
                    m.offset(),
                    headers.join(" ")
                ));
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

/// Registers a new version of every game subject with `player_id` optional (the README tour's
/// "fix a schema"): lines the generator wrote without it become valid.
pub async fn make_player_id_optional(store: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for (subject, schema) in loadgen::schemas() {
        let mut fixed: serde_json::Value = serde_json::from_str(schema)?;
        let fields = fixed["fields"]
            .as_array_mut()
            .with_context(|| format!("{subject}: no fields"))?;
        let player = fields
            .iter_mut()
            .find(|f| f["name"] == "player_id")
            .with_context(|| format!("{subject}: no player_id"))?;
        player["type"] = serde_json::json!(["null", "string"]);
        player["default"] = serde_json::Value::Null;
        let response = http
            .post(format!("{store}/subjects/{subject}/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": fixed.to_string() }))
            .send()
            .await?;
        let status = response.status();
        ensure!(
            status.is_success(),
            "registering the fixed {subject}: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}
