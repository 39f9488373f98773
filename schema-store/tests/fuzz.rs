//! An outside fuzzer on the API: Schemathesis against the OpenAPI document the store serves
//! (see `logpipe_devkit::api_fuzz`): no 5xx, documented status codes, content types and bodies,
//! requests the document allows accepted (`tests/api-fuzz/schema-store.toml` says which refusals
//! are fine), auth enforced. Needs the binaries built and Schemathesis installed (`scripts/test`).

use std::time::Duration;

use logpipe_devkit::api_fuzz;
use logpipe_devkit::harness::{free_addr, Process};

const USER: &str = "fuzz";
const PASSWORD: &str = "fuzz-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_document() {
    let Some(schemathesis) = api_fuzz::schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (api, telemetry) = (free_addr(), free_addr());
    let hash = logpipe_schema_store::hash_password(PASSWORD);
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{api}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n[telemetry]\nlisten = \"{telemetry}\"\n\
             [auth]\n[[auth.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut store = Process::start(
        "logpipe-schema-store",
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();
    store
        .wait_ready(telemetry, Duration::from_secs(30))
        .await
        .unwrap();
    let found = api_fuzz::run(
        &schemathesis,
        &format!("http://{api}/openapi.json"),
        (USER, PASSWORD),
        "schema-store.toml",
        50,
        dir.path(),
    )
    .await;
    if let Err(e) = found {
        panic!("{e:#}\n{}", store.logs());
    }
    store.terminate(Duration::from_secs(20)).await.unwrap();
}
