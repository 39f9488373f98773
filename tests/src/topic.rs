//! Reading a topic's records back: their values and headers, the way tests compare them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_devkit::harness::read_topic;
use rdkafka::message::Headers as _;
use rdkafka::Message;

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

/// A record's headers in order, byte for byte (`None` for a null value).
pub fn headers(m: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// A record's headers as text by name (invalid UTF-8 replaced, a null value empty): what a test
/// that checks header values compares.
pub fn text_headers(m: &impl Message) -> HashMap<String, String> {
    headers(m)
        .into_iter()
        .map(|(name, value)| (name, text(value.as_deref())))
        .collect()
}

/// A header value as text, the way the tests print and compare it.
pub fn text(value: Option<&[u8]>) -> String {
    String::from_utf8_lossy(value.unwrap_or_default()).into_owned()
}
