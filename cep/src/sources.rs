//! What a rule's source topics hold: the writer schemas of their latest records, read from the
//! topics themselves (the schema ids in the wire format), so a PUT can refuse a field that none
//! of them has, and a rule test can run over recent records.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use logpipe_core::kafka::{end_reader, read_to_end, KafkaConfig, Role};
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset};

use crate::decode::{field_paths, Decoder};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A recent record of a source topic.
pub(crate) struct Recent {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) id: Option<String>,
    pub(crate) value: Vec<u8>,
}

/// Reads up to the last `per_partition` records of each partition of `topic` (none when the
/// topic does not exist).
pub(crate) async fn recent(
    kafka: &KafkaConfig,
    topic: &str,
    per_partition: i64,
) -> anyhow::Result<Vec<Recent>> {
    let config = kafka.client_config(
        &Role::Consumer {
            group_id: "logpipe-cep.sources".into(),
        },
        "logpipe-cep-sources",
    );
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader = end_reader(config).context("creating a reader")?;
        let metadata = reader.fetch_metadata(Some(&topic), KAFKA_TIMEOUT)?;
        let mut from = Vec::new();
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                let (low, high) = reader.fetch_watermarks(&topic, p.id(), KAFKA_TIMEOUT)?;
                if high > low {
                    from.push((p.id(), Offset::Offset((high - per_partition).max(low))));
                }
            }
        }
        let mut records = Vec::new();
        if from.is_empty() {
            return Ok(records);
        }
        read_to_end(&reader, &topic, &from, Duration::from_secs(30), None, |m| {
            let pairs = m
                .headers()
                .into_iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value));
            let id = logpipe_core::record::RecordId::from_headers(pairs)
                .ok()
                .flatten()
                .map(|id| format!("{}/{}/{}", id.host, id.file.to_hex(), id.offset));
            records.push(Recent {
                topic: topic.clone(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis().unwrap_or(0),
                id,
                value: m.payload().unwrap_or_default().to_vec(),
            });
            Ok(())
        })?;
        Ok(records)
    })
    .await
    .context("reading recent records")?
}

/// The schema ids of a topic's recent records and every field path their schemas give.
pub(crate) async fn fields(
    kafka: &KafkaConfig,
    decoder: &mut Decoder,
    topic: &str,
) -> anyhow::Result<(BTreeSet<u32>, BTreeSet<String>)> {
    let ids: BTreeSet<u32> = recent(kafka, topic, 200)
        .await?
        .iter()
        .filter_map(|r| logpipe_core::wire::parse(&r.value).ok().map(|(id, _)| id))
        .collect();
    let mut paths = BTreeSet::new();
    for id in &ids {
        let writer = decoder
            .writer(*id)
            .await
            .map_err(|e| anyhow::anyhow!("schema id {id} of {topic}: {e}"))?;
        paths.extend(field_paths(&writer));
    }
    Ok((ids, paths))
}

/// Whether `path` is a field of a schema with these field paths: listed itself, or under a
/// listed field that has no listed children (a map or a free-form object).
pub(crate) fn has_field(paths: &BTreeSet<String>, path: &str) -> bool {
    if paths.contains(path) {
        return true;
    }
    let mut prefix = path;
    while let Some((head, _)) = prefix.rsplit_once('.') {
        if paths.contains(head) {
            let nested = format!("{head}.");
            return !paths.iter().any(|p| p.starts_with(&nested));
        }
        prefix = head;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_under_maps_are_fields_and_others_are_not() {
        let paths: BTreeSet<String> = ["event", "context", "member", "member.playerId"]
            .into_iter()
            .map(String::from)
            .collect();
        assert!(has_field(&paths, "event"));
        assert!(has_field(&paths, "member.playerId"));
        assert!(has_field(&paths, "context.region"), "context is a map");
        assert!(
            !has_field(&paths, "member.level"),
            "member is a record without that field"
        );
        assert!(!has_field(&paths, "evnt"));
    }
}
