//! Interop with the Rust `schema_registry_converter` crate: it registers a schema through the
//! store, encodes a value in Confluent's wire format, and decodes it back by schema id.

mod common;

use avro_for_converter::types::Value;
use common::Store;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const HEARTBEAT: &str = r#"{"type":"record","name":"Heartbeat","namespace":"com.acme","fields":[{"name":"beat","type":"long"},{"name":"host","type":"string","default":"?"}]}"#;

#[tokio::test]
async fn converter_registers_encodes_and_decodes() {
    let store = Store::start().await;
    let encoder = AvroEncoder::new(SrSettings::new(store.base.clone()));
    let supplied = SuppliedSchema::new(
        Some("com.acme.Heartbeat".into()),
        SchemaType::Avro,
        HEARTBEAT.into(),
    );
    let values = || {
        vec![
            ("beat", Value::Long(3)),
            ("host", Value::String("web-1".into())),
        ]
    };

    // Registers through POST /subjects/heartbeat-value/versions.
    let bytes = encoder
        .encode(
            values(),
            SubjectNameStrategy::TopicNameStrategyWithSchema("heartbeat".into(), false, supplied),
        )
        .await
        .unwrap();
    let (_, latest) = store.get("/subjects/heartbeat-value/versions/latest").await;
    let id = latest["id"].as_u64().unwrap() as u32;
    let (written_id, _) = logpipe_core::wire::parse(&bytes).expect("Confluent wire format");
    assert_eq!(written_id, id);

    // Encodes with the registered latest version (GET .../versions/latest).
    let again = AvroEncoder::new(SrSettings::new(store.base.clone()))
        .encode(
            values(),
            SubjectNameStrategy::TopicNameStrategy("heartbeat".into(), false),
        )
        .await
        .unwrap();
    assert_eq!(again, bytes);

    // Decodes by id (GET /schemas/ids/{id}).
    let decoded = AvroDecoder::new(SrSettings::new(store.base.clone()))
        .decode(Some(&bytes))
        .await
        .unwrap();
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("beat".into(), Value::Long(3)),
            ("host".into(), Value::String("web-1".into()))
        ])
    );
    assert_eq!(
        decoded.name.map(|n| n.fullname(None)),
        Some("com.acme.Heartbeat".to_owned())
    );
}
