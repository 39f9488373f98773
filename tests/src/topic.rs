//! Reading a topic back the way the dev cluster tests compare it.

use std::time::Duration;

use anyhow::Context as _;
use logpipe_devkit::harness::read_topic;
use rdkafka::Message as _;

/// Every committed record's value of `topic`, as text, in the order read (per partition, in
/// offset order).
pub async fn values(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<String>> {
    read_topic(bootstrap, topic, Duration::from_secs(60))
        .await?
        .iter()
        .map(|m| {
            String::from_utf8(m.payload().unwrap_or_default().to_vec())
                .with_context(|| format!("a value of {topic} is not UTF-8"))
        })
        .collect()
}
