//! API conformance: every endpoint and every error code, against an in-process store on
//! loopback, with Confluent's status codes, error codes and bodies.

mod common;

use common::{assert_error, avro_record, Store, CT};
use logpipe_core::metric_names::schema_store as metric;
use logpipe_devkit::prometheus;
use logpipe_schema_store::{hash_password, AuthConfig, Role, UserConfig};
use reqwest::Method;
use serde_json::{json, Value};

fn avro(schema: &str) -> Value {
    json!({"schema": schema})
}

#[tokio::test]
async fn register_lookup_and_read_back() {
    let metrics = logpipe_core::telemetry::prometheus();
    let store = Store::start().await;
    let v1 = avro_record("Event", r#"{"name":"id","type":"long"}"#);
    // Unknown body fields (metadata, ruleSet) are accepted and ignored.
    let id = store
        .register(
            "events-value",
            json!({"schema": v1, "metadata": {"properties": {"a": "b"}}, "ruleSet": null}),
        )
        .await;
    assert_eq!(id, 1);
    // Same schema again (differently spaced): same id, no new version.
    let spaced = "{ \"type\": \"record\", \"name\": \"Event\",\n  \"fields\": [ {\"name\": \"id\", \"type\": {\"type\": \"long\"}} ] }";
    assert_eq!(store.register("events-value", avro(spaced)).await, 1);
    assert_eq!(
        store.get("/subjects/events-value/versions").await,
        (200, json!([1]))
    );
    // The same canonical schema under another subject shares the id.
    assert_eq!(store.register("other-value", avro(spaced)).await, 1);

    let stored = r#"{"type":"record","name":"Event","fields":[{"name":"id","type":"long"}]}"#;
    assert_eq!(
        store.get("/schemas/ids/1").await,
        (200, json!({"schema": stored}))
    );
    assert_eq!(
        store.get_text("/schemas/ids/1/schema").await,
        (200, stored.to_owned())
    );
    assert_eq!(
        store.get("/schemas/ids/1/subjects").await,
        (200, json!(["events-value", "other-value"]))
    );
    assert_eq!(
        store.get("/schemas/ids/1/versions").await,
        (
            200,
            json!([{"subject": "events-value", "version": 1}, {"subject": "other-value", "version": 1}])
        )
    );
    assert_error(&store.get("/schemas/ids/99").await, 404, 40403);
    assert_error(&store.get("/schemas/ids/abc").await, 404, 40403);
    assert_eq!(
        store.get("/schemas/types").await,
        (200, json!(["AVRO", "JSON"]))
    );
    assert_eq!(store.get("/").await, (200, json!({})));

    // A compatible v2 (new field with a default).
    let v2 = avro_record(
        "Event",
        r#"{"name":"id","type":"long"},{"name":"host","type":"string","default":""}"#,
    );
    assert_eq!(store.register("events-value", avro(&v2)).await, 2);
    let expected = json!({"subject": "events-value", "version": 2, "id": 2, "schema": store.get_text("/schemas/ids/2/schema").await.1});
    for v in ["2", "latest", "-1"] {
        assert_eq!(
            store
                .get(&format!("/subjects/events-value/versions/{v}"))
                .await,
            (200, expected.clone()),
            "version {v}"
        );
    }
    assert_eq!(
        store.get("/subjects/events-value/versions/1").await.1["id"],
        1
    );
    assert_eq!(
        store
            .get_text("/subjects/events-value/versions/latest/schema")
            .await
            .1,
        store.get_text("/schemas/ids/2/schema").await.1
    );
    assert_error(
        &store.get("/subjects/events-value/versions/3").await,
        404,
        40402,
    );
    assert_error(&store.get("/subjects/nope/versions/1").await, 404, 40401);
    assert_error(&store.get("/subjects/nope/versions").await, 404, 40401);
    for bad in ["abc", "0", "-2", "2147483648"] {
        assert_error(
            &store
                .get(&format!("/subjects/events-value/versions/{bad}"))
                .await,
            422,
            42202,
        );
    }

    // Lookup.
    let (status, found) = store.post("/subjects/events-value", &avro(spaced)).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found,
        json!({"subject": "events-value", "version": 1, "id": 1, "schema": stored})
    );
    assert_error(
        &store.post("/subjects/nope", &avro(spaced)).await,
        404,
        40401,
    );
    assert_error(
        &store
            .post("/subjects/events-value", &avro(&avro_record("Other", "")))
            .await,
        404,
        40403,
    );

    assert_eq!(
        store.get("/subjects").await,
        (200, json!(["events-value", "other-value"]))
    );
    assert_eq!(
        store.get("/subjects?subjectPrefix=oth").await,
        (200, json!(["other-value"]))
    );

    let rendered = metrics.render();
    let samples = prometheus::parse(&rendered);
    let count = |name: &str| format!("{name}_count");
    for (name, labels) in [
        (
            metric::HTTP_ERRORS.to_owned(),
            &[("route", "/schemas/ids/{id}"), ("status", "404")][..],
        ),
        (
            count(metric::HTTP_REQUEST),
            &[
                ("method", "POST"),
                ("route", "/subjects/{subject}/versions"),
            ],
        ),
        (metric::REGISTRATIONS.to_owned(), &[("outcome", "ok")]),
        (count(metric::LOG_APPEND), &[]),
    ] {
        assert!(
            prometheus::sum(&samples, &name, labels).is_some(),
            "{name} {labels:?} missing from\n{rendered}"
        );
    }
}

#[tokio::test]
async fn json_schemas_register_and_check_compatibility() {
    let store = Store::start().await;
    let v1 = json!({"type": "object", "properties": {"level": {"type": "string"}}, "required": ["level"]});
    let id = store
        .register(
            "logs-value",
            json!({"schemaType": "JSON", "schema": v1.to_string()}),
        )
        .await;
    let (_, by_id) = store.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(by_id["schemaType"], "JSON");
    assert_eq!(
        store.get("/subjects/logs-value/versions/latest").await.1["schemaType"],
        "JSON"
    );
    // Making a new property required is not backward compatible.
    let v2 = json!({"type": "object", "properties": {"level": {"type": "string"}, "msg": {"type": "string"}}, "required": ["level", "msg"]});
    let reply = store
        .post(
            "/subjects/logs-value/versions",
            &json!({"schemaType": "JSON", "schema": v2.to_string()}),
        )
        .await;
    assert_error(&reply, 409, 40901);
    // The same JSON text as AVRO is an invalid Avro schema; AVRO and JSON ids never mix.
    assert_error(
        &store
            .post("/subjects/x/versions", &json!({"schema": v1.to_string()}))
            .await,
        422,
        42201,
    );
    assert_error(
        &store
            .post(
                "/subjects/x/versions",
                &json!({"schemaType": "PROTOBUF", "schema": "syntax = \"proto3\";"}),
            )
            .await,
        422,
        42201,
    );
    assert_error(
        &store
            .post(
                "/subjects/x/versions",
                &json!({"schemaType": "JSON", "schema": "{\"type\": 5}"}),
            )
            .await,
        422,
        42201,
    );
}

#[tokio::test]
async fn compatibility_levels_and_checks() {
    let store = Store::start().await;
    let v1 = avro_record("R", r#"{"name":"a","type":"int"}"#);
    let no_default = avro_record(
        "R",
        r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#,
    );
    store.register("c-value", avro(&v1)).await;

    // Default level BACKWARD: a field without default is rejected with details.
    let (status, reply) = store
        .post("/subjects/c-value/versions", &avro(&no_default))
        .await;
    assert_eq!(
        (status, reply["error_code"].as_u64()),
        (409, Some(40901)),
        "{reply}"
    );
    assert!(
        reply["message"].as_str().unwrap().contains("/fields/b"),
        "{reply}"
    );

    let (status, reply) = store
        .post(
            "/compatibility/subjects/c-value/versions/latest?verbose=true",
            &avro(&no_default),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["is_compatible"], false);
    assert!(!reply["messages"].as_array().unwrap().is_empty());
    let (_, reply) = store
        .post("/compatibility/subjects/c-value/versions", &avro(&v1))
        .await;
    assert_eq!(reply, json!({"is_compatible": true}));
    // A subject with no versions: anything is compatible; a missing version is 40402.
    assert_eq!(
        store
            .post("/compatibility/subjects/new-value/versions", &avro(&v1))
            .await,
        (200, json!({"is_compatible": true}))
    );
    assert_error(
        &store
            .post("/compatibility/subjects/c-value/versions/7", &avro(&v1))
            .await,
        404,
        40402,
    );
    assert_error(
        &store
            .post("/compatibility/subjects/nope/versions/1", &avro(&v1))
            .await,
        404,
        40401,
    );
    assert_error(
        &store
            .post("/compatibility/subjects/c-value/versions/x", &avro(&v1))
            .await,
        422,
        42202,
    );

    // Config: global, per subject, 40408 and defaultToGlobal, invalid levels.
    assert_eq!(
        store.get("/config").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_error(&store.get("/config/c-value").await, 404, 40408);
    assert_eq!(
        store.get("/config/c-value?defaultToGlobal=true").await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        store
            .put("/config/c-value", &json!({"compatibility": "forward"}))
            .await,
        (200, json!({"compatibility": "FORWARD"}))
    );
    assert_eq!(
        store.get("/config/c-value").await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    // Under FORWARD the new field without default is fine.
    assert_eq!(store.register("c-value", avro(&no_default)).await, 2);
    assert_error(
        &store
            .put("/config/c-value", &json!({"compatibility": "SIDEWAYS"}))
            .await,
        422,
        42203,
    );
    assert_error(
        &store.put("/config", &json!({"compatibility": "x"})).await,
        422,
        42203,
    );
    assert_error(&store.put("/config", &json!({})).await, 422, 42203);
    assert_eq!(
        store.delete("/config/c-value").await,
        (200, json!({"compatibilityLevel": "FORWARD"}))
    );
    assert_error(&store.delete("/config/c-value").await, 404, 40401);
    assert_eq!(
        store
            .put("/config", &json!({"compatibility": "NONE"}))
            .await,
        (200, json!({"compatibility": "NONE"}))
    );
    assert_eq!(
        store
            .register(
                "c-value",
                avro(&avro_record("R", r#"{"name":"z","type":"bytes"}"#))
            )
            .await,
        3
    );
    assert_eq!(
        store.delete("/config").await,
        (200, json!({"compatibilityLevel": "NONE"}))
    );
    assert_eq!(
        store.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );

    // Transitive: v4 is backward compatible with v3 but not with v1/v2.
    store
        .put(
            "/config/c-value",
            &json!({"compatibility": "BACKWARD_TRANSITIVE"}),
        )
        .await;
    let v4 = avro_record(
        "R",
        r#"{"name":"z","type":"bytes"},{"name":"a","type":"int"}"#,
    );
    assert_error(
        &store.post("/subjects/c-value/versions", &avro(&v4)).await,
        409,
        40901,
    );
    store
        .put("/config/c-value", &json!({"compatibility": "BACKWARD"}))
        .await;
    let v4 = avro_record(
        "R",
        r#"{"name":"z","type":"bytes"},{"name":"a","type":"int","default":0}"#,
    );
    assert_eq!(store.register("c-value", avro(&v4)).await, 4);
}

#[tokio::test]
async fn deletes_follow_confluent_ordering() {
    let store = Store::start().await;
    store
        .put("/config", &json!({"compatibility": "NONE"}))
        .await;
    let a = avro_record("A", r#"{"name":"x","type":"int"}"#);
    let b = avro_record("B", r#"{"name":"y","type":"int"}"#);
    let c = avro_record("C", r#"{"name":"z","type":"int"}"#);
    assert_eq!(store.register("d", avro(&a)).await, 1);
    assert_eq!(store.register("d", avro(&b)).await, 2);

    // Version deletes: permanent first is refused, soft then permanent works.
    assert_error(
        &store.delete("/subjects/d/versions/1?permanent=true").await,
        404,
        40407,
    );
    assert_eq!(
        store.delete("/subjects/d/versions/1").await,
        (200, json!(1))
    );
    assert_error(&store.delete("/subjects/d/versions/1").await, 404, 40406);
    assert_error(&store.get("/subjects/d/versions/1").await, 404, 40402);
    assert_eq!(
        store.get("/subjects/d/versions/1?deleted=true").await.1["id"],
        1
    );
    assert_eq!(store.get("/subjects/d/versions").await.1, json!([2]));
    assert_eq!(
        store.get("/subjects/d/versions?deleted=true").await.1,
        json!([1, 2])
    );
    // A soft-deleted schema stays readable by id.
    assert_eq!(store.get("/schemas/ids/1").await.0, 200);
    assert_eq!(store.get("/schemas/ids/1/subjects").await.1, json!([]));
    assert_eq!(
        store.get("/schemas/ids/1/subjects?deleted=true").await.1,
        json!(["d"])
    );
    assert_eq!(
        store.delete("/subjects/d/versions/1?permanent=true").await,
        (200, json!(1))
    );
    assert_error(
        &store.get("/subjects/d/versions/1?deleted=true").await,
        404,
        40402,
    );
    assert_error(&store.get("/schemas/ids/1").await, 404, 40403);
    assert_error(&store.delete("/subjects/d/versions/9").await, 404, 40402);
    assert_error(&store.delete("/subjects/d/versions/x").await, 422, 42202);
    assert_error(&store.delete("/subjects/nope/versions/1").await, 404, 40401);

    // Re-registering a permanently deleted schema gets a new id: ids are never reused.
    assert_eq!(store.register("d", avro(&a)).await, 3);
    assert_eq!(store.get("/subjects/d/versions").await.1, json!([2, 3]));

    // Subject deletes.
    assert_error(
        &store.delete("/subjects/d?permanent=true").await,
        404,
        40405,
    );
    assert_eq!(store.delete("/subjects/d").await, (200, json!([2, 3])));
    assert_error(&store.delete("/subjects/d").await, 404, 40404);
    assert_error(&store.get("/subjects/d/versions").await, 404, 40401);
    assert_error(&store.get("/subjects/d/versions/latest").await, 404, 40401);
    assert_eq!(store.get("/subjects").await.1, json!([]));
    assert_eq!(store.get("/subjects?deleted=true").await.1, json!(["d"]));
    // Registering again after a soft delete continues the version numbers.
    assert_eq!(store.register("d", avro(&c)).await, 4);
    assert_eq!(
        store.get("/subjects/d/versions/latest").await.1["version"],
        4
    );
    assert_eq!(store.delete("/subjects/d").await.1, json!([4]));
    assert_eq!(
        store.delete("/subjects/d?permanent=true").await,
        (200, json!([2, 3, 4]))
    );
    assert_error(&store.delete("/subjects/d").await, 404, 40401);
    assert_eq!(store.get("/subjects?deleted=true").await.1, json!([]));
    // After a permanent delete the versions start again at 1, the ids still do not repeat.
    assert_eq!(store.register("d", avro(&b)).await, 5);
    assert_eq!(store.get("/subjects/d/versions").await.1, json!([1]));
}

#[tokio::test]
async fn references_and_referencedby() {
    let store = Store::start().await;
    let address = r#"{"type":"record","name":"Address","namespace":"com.acme","fields":[{"name":"city","type":"string"}]}"#;
    let address_id = store.register("address", avro(address)).await;
    let user = r#"{"type":"record","name":"User","namespace":"com.acme","fields":[{"name":"home","type":"com.acme.Address"}]}"#;
    let refs = json!([{"name": "com.acme.Address", "subject": "address", "version": 1}]);
    let user_id = store
        .register("user-value", json!({"schema": user, "references": refs}))
        .await;
    assert_ne!(user_id, address_id);
    let (_, by_id) = store.get(&format!("/schemas/ids/{user_id}")).await;
    assert_eq!(by_id["references"], refs);
    assert_eq!(
        by_id["schema"],
        r#"{"type":"record","name":"User","namespace":"com.acme","fields":[{"name":"home","type":"Address"}]}"#
    );
    assert_eq!(
        store.get("/subjects/user-value/versions/1").await.1["references"],
        refs
    );
    assert_eq!(
        store.get("/subjects/address/versions/1/referencedby").await,
        (200, json!([user_id]))
    );
    // Lookup with the references finds it.
    assert_eq!(
        store
            .post(
                "/subjects/user-value",
                &json!({"schema": user, "references": refs})
            )
            .await
            .1["id"],
        user_id
    );
    // Without its references the schema does not parse.
    assert_error(
        &store.post("/subjects/u2/versions", &avro(user)).await,
        422,
        42201,
    );
    // A reference to a missing version is an invalid schema.
    let missing = json!([{"name": "com.acme.Address", "subject": "address", "version": 5}]);
    assert_error(
        &store
            .post(
                "/subjects/u2/versions",
                &json!({"schema": user, "references": missing}),
            )
            .await,
        422,
        42201,
    );
    // A referenced version cannot be deleted.
    assert_error(
        &store.delete("/subjects/address/versions/1").await,
        422,
        42206,
    );
    assert_error(&store.delete("/subjects/address").await, 422, 42206);
    // Once the referrer is gone for good, it can.
    store.delete("/subjects/user-value").await;
    store.delete("/subjects/user-value?permanent=true").await;
    assert_eq!(
        store
            .get("/subjects/address/versions/1/referencedby")
            .await
            .1,
        json!([])
    );
    assert_eq!(
        store.delete("/subjects/address/versions/1").await,
        (200, json!(1))
    );
}

#[tokio::test]
async fn json_schema_references() {
    let store = Store::start().await;
    let address =
        r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;
    let address_id = store
        .register(
            "address-json",
            json!({"schemaType": "JSON", "schema": address}),
        )
        .await;
    let customer = r#"{"type":"object","properties":{"home":{"$ref":"address.json"}}}"#;
    let refs = json!([{"name": "address.json", "subject": "address-json", "version": 1}]);
    // The $ref resolves only through the reference named like it.
    assert_error(
        &store
            .post(
                "/subjects/customer-json/versions",
                &json!({"schemaType": "JSON", "schema": customer}),
            )
            .await,
        422,
        42201,
    );
    let customer_id = store
        .register(
            "customer-json",
            json!({"schemaType": "JSON", "schema": customer, "references": refs}),
        )
        .await;
    assert_ne!(customer_id, address_id);
    let (_, by_id) = store.get(&format!("/schemas/ids/{customer_id}")).await;
    assert_eq!(
        (by_id["schemaType"].as_str(), &by_id["references"]),
        (Some("JSON"), &refs)
    );
    assert_eq!(
        store
            .get("/subjects/address-json/versions/1/referencedby")
            .await,
        (200, json!([customer_id]))
    );
    assert_eq!(
        store
            .post(
                "/subjects/customer-json",
                &json!({"schemaType": "JSON", "schema": customer, "references": refs})
            )
            .await
            .1["id"],
        customer_id
    );
    assert_error(
        &store.delete("/subjects/address-json/versions/1").await,
        422,
        42206,
    );
    // A new version with the same references is checked for compatibility like any other.
    let (status, _) = store
        .post(
            "/compatibility/subjects/customer-json/versions/latest",
            &json!({"schemaType": "JSON", "schema": customer, "references": refs}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn modes() {
    let store = Store::start().await;
    let a = avro_record("A", r#"{"name":"x","type":"int"}"#);
    assert_eq!(
        store.get("/mode").await,
        (200, json!({"mode": "READWRITE"}))
    );
    assert_error(
        &store.put("/mode", &json!({"mode": "SLEEPY"})).await,
        422,
        42204,
    );
    assert_eq!(
        store.put("/mode/m", &json!({"mode": "READONLY"})).await,
        (200, json!({"mode": "READONLY"}))
    );
    assert_eq!(
        store.get("/mode/m").await,
        (200, json!({"mode": "READONLY"}))
    );
    assert_error(
        &store.post("/subjects/m/versions", &avro(&a)).await,
        422,
        42205,
    );
    assert_error(&store.delete("/subjects/m").await, 422, 42205);
    assert_eq!(
        store.delete("/mode/m").await,
        (200, json!({"mode": "READONLY"}))
    );
    assert_error(&store.get("/mode/m").await, 404, 40409);
    assert_eq!(
        store.get("/mode/m?defaultToGlobal=true").await,
        (200, json!({"mode": "READWRITE"}))
    );
    assert_error(&store.delete("/mode/m").await, 404, 40401);
    store.register("m", avro(&a)).await;
    // An explicit id needs IMPORT mode.
    let b = avro_record("B", r#"{"name":"y","type":"int"}"#);
    assert_error(
        &store
            .post(
                "/subjects/m/versions",
                &json!({"schema": b, "id": 100, "version": 7}),
            )
            .await,
        422,
        42205,
    );
    // Global IMPORT with subjects present needs force.
    assert_error(
        &store.put("/mode", &json!({"mode": "IMPORT"})).await,
        422,
        42205,
    );
    assert_eq!(
        store
            .put("/mode?force=true", &json!({"mode": "IMPORT"}))
            .await
            .0,
        200
    );
    // IMPORT: explicit id and version, compatibility skipped.
    assert_eq!(
        store
            .register("m", json!({"schema": b, "id": 100, "version": 7}))
            .await,
        100
    );
    assert_eq!(store.get("/subjects/m/versions/7").await.1["id"], 100);
    // The id is taken by another schema.
    let c = avro_record("C", r#"{"name":"z","type":"int"}"#);
    assert_error(
        &store
            .post("/subjects/m/versions", &json!({"schema": c, "id": 100}))
            .await,
        422,
        42207,
    );
    assert_eq!(
        store.delete("/mode").await,
        (200, json!({"mode": "IMPORT"}))
    );
    // New ids continue above the imported one.
    assert_eq!(store.register("m2", avro(&c)).await, 101);
    // Global READONLY blocks writes everywhere.
    store.put("/mode", &json!({"mode": "READONLY"})).await;
    assert_error(
        &store.post("/subjects/m3/versions", &avro(&c)).await,
        422,
        42205,
    );
    assert_eq!(store.get("/subjects/m2/versions").await.0, 200);
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let store = Store::start().await;
    let a = avro_record("A", r#"{"name":"x","type":"int"}"#);
    // Invalid JSON body.
    let r = store
        .send_body(Method::POST, "/subjects/s/versions", CT, "{nope")
        .await;
    assert_error(&r, 400, 400);
    // Missing or empty schema, invalid Avro with the parser's message.
    assert_error(
        &store.post("/subjects/s/versions", &json!({})).await,
        422,
        42201,
    );
    let r = store
        .post(
            "/subjects/s/versions",
            &avro(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nosuch"}]}"#),
        )
        .await;
    assert_error(&r, 422, 42201);
    assert!(
        r.1["message"].as_str().unwrap().contains("Invalid schema"),
        "{}",
        r.1
    );
    // Control characters in subjects.
    assert_error(
        &store
            .post("/subjects/bad%0Asubject/versions", &avro(&a))
            .await,
        422,
        42208,
    );
    assert_error(&store.get("/subjects/bad%01/versions").await, 422, 42208);
    assert_error(&store.get("/subjects?deleted=maybe").await, 400, 400);
    // A body over the limit.
    let huge = json!({"schema": format!("\"{}\"", "x".repeat(128 * 1024))});
    assert_error(&store.post("/subjects/s/versions", &huge).await, 413, 413);
    // Content negotiation.
    let accepting = |accept: &str| {
        store
            .request(Method::GET, "/subjects")
            .header("accept", accept)
    };
    assert_error(&common::send(accepting("text/html")).await, 406, 406);
    for accept in [
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
        "*/*",
        "text/html, application/json;q=0.9",
    ] {
        let r = accepting(accept).send().await.unwrap();
        assert_eq!(r.status(), 200, "{accept}");
        assert_eq!(r.headers()["content-type"], CT);
    }
    let r = store
        .send_body(
            Method::POST,
            "/subjects/s/versions",
            "text/plain",
            avro(&a).to_string(),
        )
        .await;
    assert_error(&r, 415, 415);
    for ct in [
        "application/json",
        "application/vnd.schemaregistry+json; charset=utf-8",
    ] {
        let r = store
            .send_body(
                Method::POST,
                "/subjects/s/versions",
                ct,
                avro(&a).to_string(),
            )
            .await;
        assert_eq!(r.0, 200, "{ct}: {}", r.1);
    }
    // Nothing but the last registration changed the registry.
    assert_eq!(store.get("/subjects").await.1, json!(["s"]));
    assert_eq!(store.get("/subjects/s/versions").await.1, json!([1]));
    // Unknown routes answer in Confluent's error shape.
    assert_error(&store.get("/nothing/here").await, 404, 404);
    assert_error(
        &common::send(store.request(Method::PATCH, "/subjects")).await,
        405,
        405,
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let store = Store::start().await;
    let (status, document) = store.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.0.3");
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "1")
                .replace("{subject}", "s")
                .replace("{version}", "1");
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let (status, body) = store.send_body(method.clone(), &concrete, CT, "{}").await;
            // Served routes answer with their own result or error, never the router's fallback.
            assert!(
                !(status == 404 && body["error_code"] == 404) && status != 405,
                "{method} {concrete}: {status} {body}"
            );
            checked += 1;
        }
    }
    // That the document holds every route of the table is the openapi module's unit test.
    assert!(checked > 0, "the document lists no route");
}

#[tokio::test]
async fn basic_auth_roles() {
    let auth = AuthConfig {
        anonymous_read: true,
        users: vec![
            UserConfig {
                name: "app".into(),
                password_hash: hash_password("app-pw"),
                role: Role::Write,
            },
            UserConfig {
                name: "ops".into(),
                password_hash: hash_password("ops-pw"),
                role: Role::Admin,
            },
        ],
    };
    let store = Store::start_with(Some(auth), 64 * 1024, tempfile::tempdir().unwrap()).await;
    let a = avro(&avro_record("A", r#"{"name":"x","type":"int"}"#));
    // A request as `user` (anonymous without one).
    let as_user = |user: Option<(&str, &str)>, method: Method, path: &str, body: &Value| {
        let mut request = store
            .request(method, path)
            .header("content-type", CT)
            .body(body.to_string());
        if let Some((u, p)) = user {
            request = request.basic_auth(u, Some(p));
        }
        request
    };
    let register = |user| as_user(user, Method::POST, "/subjects/s/versions", &a);
    let (app, ops) = (Some(("app", "app-pw")), Some(("ops", "ops-pw")));
    // Anonymous may read, not write.
    assert_eq!(store.get("/subjects").await.0, 200);
    let r = register(None).send().await.unwrap();
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"logpipe-schema-store\""
    );
    assert_error(&common::response(r).await, 401, 401);
    let wrong = common::send(register(Some(("app", "wrong")))).await;
    assert_error(&wrong, 401, 401);
    assert_eq!(common::send(register(app)).await.0, 200);
    // Config changes need admin.
    let none = json!({"compatibility": "NONE"});
    let put_config = |user| as_user(user, Method::PUT, "/config", &none);
    assert_error(&common::send(put_config(app)).await, 403, 403);
    assert_eq!(common::send(put_config(ops)).await.0, 200);
    // Soft delete is write, permanent delete is admin.
    let delete = |user, path| as_user(user, Method::DELETE, path, &Value::Null);
    assert_eq!(common::send(delete(app, "/subjects/s")).await.0, 200);
    let permanent = "/subjects/s?permanent=true";
    assert_error(&common::send(delete(app, permanent)).await, 403, 403);
    assert_eq!(common::send(delete(ops, permanent)).await.0, 200);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let store = Store::start().await;
    let a = avro_record("A", r#"{"name":"x","type":"int"}"#);
    let b = avro_record("B", r#"{"name":"y","type":"int"}"#);
    store
        .put("/config", &json!({"compatibility": "NONE"}))
        .await;
    store
        .put("/config/s", &json!({"compatibility": "FULL"}))
        .await;
    store.put("/mode/t", &json!({"mode": "READONLY"})).await;
    assert_eq!(store.register("s", avro(&a)).await, 1);
    assert_eq!(store.register("s2", avro(&b)).await, 2);
    store.delete("/subjects/s2").await;
    store.delete("/subjects/s2?permanent=true").await;
    let dir = store.stop().await;

    let store = Store::start_with(None, 64 * 1024, dir).await;
    assert_eq!(
        store.get("/config").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        store.get("/config/s").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(store.get("/mode/t").await.1, json!({"mode": "READONLY"}));
    assert_eq!(store.get("/subjects").await.1, json!(["s"]));
    assert_eq!(store.get("/subjects/s/versions/1").await.1["id"], 1);
    // The permanently deleted id 2 stays burnt after the restart.
    assert_eq!(store.register("s3", avro(&b)).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_in_one_batch_see_each_other() {
    let store = Store::start().await;
    let same = avro(&avro_record("Same", r#"{"name":"x","type":"int"}"#));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (client, base, same) = (store.client.clone(), store.base.clone(), same.clone());
        tasks.spawn(async move {
            // Half register one schema in one subject, half register distinct schemas.
            let (subject, body) = if i % 2 == 0 {
                ("same".to_owned(), same)
            } else {
                (
                    format!("other-{i}"),
                    avro(&avro_record(&format!("O{i}"), "")),
                )
            };
            let r = client
                .post(format!("{base}/subjects/{subject}/versions"))
                .header("content-type", CT)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            (
                subject,
                r.json::<Value>().await.unwrap()["id"].as_u64().unwrap(),
            )
        });
    }
    let mut same_ids = std::collections::HashSet::new();
    let mut other_ids = std::collections::HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let (subject, id) = result.unwrap();
        if subject == "same" {
            same_ids.insert(id)
        } else {
            other_ids.insert(id)
        };
    }
    // One schema: one id and one version however the writes were batched; others all distinct.
    assert_eq!(same_ids.len(), 1);
    assert_eq!(store.get("/subjects/same/versions").await.1, json!([1]));
    assert_eq!(other_ids.len(), 16);
    assert!(other_ids.is_disjoint(&same_ids));
}
