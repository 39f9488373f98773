//! `logpipe-schema-client`: the schema store, seen through the Confluent Schema Registry REST API
//! only (so Confluent and Karapace work too).
//!
//! Every reader of clean topics (the validator, the CEP worker, the lake loader) looks schemas up
//! through this one client, so they agree on what the store's answers mean: which schema types
//! are usable ([`SchemaType`]), which versions a reader may ask for ([`Version`]), the
//! `schema_store_auth` credentials ([`BasicAuth`]), and which failures are the store's
//! ([`LookupError::Unavailable`]: retry, never blame the record) and which are answers
//! ([`LookupError::NotFound`], [`LookupError::Unusable`]).
//!
//! The client does not cache; each reader caches what it derives from a schema (the validator
//! its compiled plans), by id, since ids are immutable.

use std::time::Duration;

use serde::Deserialize;

/// The schema types logpipe can use (`schemaType` in the Confluent API; absent means AVRO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaType {
    Avro,
    Json,
}

impl SchemaType {
    /// Reads the API's `schemaType`; PROTOBUF and unknown types are refused.
    pub fn from_api(name: Option<&str>) -> Result<SchemaType, String> {
        match name.unwrap_or("AVRO") {
            "AVRO" => Ok(SchemaType::Avro),
            "JSON" => Ok(SchemaType::Json),
            other => Err(format!(
                "schema type {other} is not supported (AVRO and JSON are)"
            )),
        }
    }
}

/// Which version of a subject is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Version {
    #[default]
    Latest,
    Pinned(u32),
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Pinned(v) => write!(f, "{v}"),
        }
    }
}

/// HTTP basic auth credentials for the store (the `schema_store_auth` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The store could not answer (connection errors, timeouts, 5xx, auth failures, an answer
    /// that is not the API's): retry later; never the record's fault.
    #[error("schema store unavailable: {0}")]
    Unavailable(String),
    /// The store answered 404 with an API error body: the subject, version or id does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store answered with a schema of a type logpipe cannot use.
    #[error("{0}")]
    Unusable(String),
}

/// A schema as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The store's global id, the one in the wire format.
    pub id: u32,
    pub schema_type: SchemaType,
    /// The schema's text.
    pub schema: String,
}

/// A client of the Confluent REST API.
#[derive(Debug, Clone)]
pub struct Client {
    base: reqwest::Url,
    http: reqwest::Client,
    auth: Option<BasicAuth>,
}

const ACCEPT: &str =
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";

/// `GET /subjects/{subject}/versions/{version}`'s answer (the fields used).
#[derive(Deserialize)]
struct SubjectVersion {
    id: u32,
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// `GET /schemas/ids/{id}`'s answer.
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    error_code: Option<i64>,
    message: Option<String>,
}

impl Client {
    /// A client of the store at `base` (`http` or `https`, with or without a path); `timeout`
    /// bounds connecting and each whole request.
    pub fn new(base: &str, auth: Option<&BasicAuth>, timeout: Duration) -> anyhow::Result<Client> {
        let mut base = reqwest::Url::parse(base)
            .map_err(|e| anyhow::anyhow!("schema_store {base:?} is not a URL: {e}"))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("schema_store {base} must be an http or https URL");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Client {
            base,
            http,
            auth: auth.cloned(),
        })
    }

    /// `GET /subjects/{subject}/versions/{version|latest}`.
    pub async fn subject_version(
        &self,
        subject: &str,
        version: Version,
    ) -> Result<RegisteredSchema, LookupError> {
        let found: SubjectVersion = self
            .get(&["subjects", subject, "versions", &version.to_string()])
            .await?;
        registered(found.id, found.schema_type.as_deref(), found.schema)
    }

    /// `GET /schemas/ids/{id}`: the schema a clean record's wire-format header names.
    pub async fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, LookupError> {
        let found: SchemaById = self.get(&["schemas", "ids", &id.to_string()]).await?;
        registered(id, found.schema_type.as_deref(), found.schema)
    }

    /// `GET /subjects`: every subject with a live version.
    pub async fn subjects(&self) -> Result<Vec<String>, LookupError> {
        self.get(&["subjects"]).await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, LookupError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base")
            .pop_if_empty()
            .extend(segments);
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, ACCEPT);
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.username, Some(&auth.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                LookupError::Unavailable(format!("GET {url}: unexpected answer: {e}"))
            });
        }
        let error: Option<ApiError> = serde_json::from_slice(&body).ok();
        let message = error
            .as_ref()
            .map(|e| {
                format!(
                    "{} (error {})",
                    e.message.as_deref().unwrap_or(""),
                    e.error_code.unwrap_or(0)
                )
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        // Only "this does not exist" is an answer about what was asked; anything else (auth,
        // server errors, a proxy's page) is the store's or the config's problem.
        if status == reqwest::StatusCode::NOT_FOUND && error.is_some() {
            Err(LookupError::NotFound(format!("GET {url}: {message}")))
        } else {
            Err(LookupError::Unavailable(format!(
                "GET {url}: {status}: {message}"
            )))
        }
    }
}

fn registered(
    id: u32,
    schema_type: Option<&str>,
    schema: String,
) -> Result<RegisteredSchema, LookupError> {
    let schema_type = SchemaType::from_api(schema_type)
        .map_err(|e| LookupError::Unusable(format!("schema id {id}: {e}")))?;
    Ok(RegisteredSchema {
        id,
        schema_type,
        schema,
    })
}

#[cfg(test)]
mod tests {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    use super::*;

    const AVRO: &str = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"int"}]}"#;

    /// A tiny Confluent-compatible store: subject `s` has version 1 (id 10, no `schemaType`)
    /// and version 2 (id 11, PROTOBUF); ids 10 and 12 (JSON) exist; `/subjects` needs the
    /// credentials `u:p`; subject `broken` answers 500 and `proxy` a 404 page that is not the
    /// API's.
    async fn version(Path((subject, v)): Path<(String, String)>) -> (StatusCode, Json<Value>) {
        match (subject.as_str(), v.as_str()) {
            ("s", "1" | "latest") => (
                StatusCode::OK,
                Json(json!({"subject": "s", "version": 1, "id": 10, "schema": AVRO})),
            ),
            ("s", "2") => (
                StatusCode::OK,
                Json(
                    json!({"subject": "s", "version": 2, "id": 11, "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}),
                ),
            ),
            ("broken", _) => api_error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "store error"),
            ("proxy", _) => (StatusCode::NOT_FOUND, Json(json!("no such page"))),
            ("s", _) => api_error(StatusCode::NOT_FOUND, 40402, "Version not found."),
            _ => api_error(StatusCode::NOT_FOUND, 40401, "Subject not found."),
        }
    }

    /// The API's error body.
    fn api_error(status: StatusCode, code: u32, message: &str) -> (StatusCode, Json<Value>) {
        (
            status,
            Json(json!({"error_code": code, "message": message})),
        )
    }

    async fn by_id(Path(id): Path<u32>) -> (StatusCode, Json<Value>) {
        match id {
            10 => (StatusCode::OK, Json(json!({"schema": AVRO}))),
            12 => (
                StatusCode::OK,
                Json(json!({"schema": "{\"type\":\"object\"}", "schemaType": "JSON"})),
            ),
            _ => api_error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
        }
    }

    async fn subjects(headers: HeaderMap) -> (StatusCode, Json<Value>) {
        // "u:p" in base64.
        if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic dTpw") {
            (StatusCode::OK, Json(json!(["a-value", "s"])))
        } else {
            api_error(StatusCode::UNAUTHORIZED, 401, "Unauthorized")
        }
    }

    /// Serves the fake store on a loopback port under `/registry`; returns its base URL.
    async fn serve() -> String {
        let api = Router::new()
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(by_id));
        let app = Router::new().nest("/registry", api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/registry")
    }

    fn client(base: &str, auth: Option<&BasicAuth>) -> Client {
        Client::new(base, auth, Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn subject_versions_are_found_or_not() {
        let client = client(&serve().await, None);
        let found = client.subject_version("s", Version::Latest).await.unwrap();
        assert_eq!(
            found,
            RegisteredSchema {
                id: 10,
                schema_type: SchemaType::Avro,
                schema: AVRO.into()
            }
        );
        assert_eq!(
            client.subject_version("s", Version::Pinned(1)).await,
            Ok(found)
        );
        let err = client
            .subject_version("nope", Version::Latest)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LookupError::NotFound(m) if m.contains("40401")),
            "{err:?}"
        );
        assert!(matches!(
            client.subject_version("s", Version::Pinned(7)).await,
            Err(LookupError::NotFound(m)) if m.contains("40402")
        ));
        let err = client
            .subject_version("s", Version::Pinned(2))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LookupError::Unusable(m) if m.contains("PROTOBUF") && m.contains("11")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn only_an_api_404_is_not_found() {
        let client = client(&serve().await, None);
        for subject in ["broken", "proxy"] {
            let err = client
                .subject_version(subject, Version::Latest)
                .await
                .unwrap_err();
            assert!(matches!(err, LookupError::Unavailable(_)), "{err:?}");
        }
        // Nothing listens on this port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = self::client(&format!("http://127.0.0.1:{port}"), None);
        assert!(matches!(
            nowhere.subject_version("s", Version::Latest).await,
            Err(LookupError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn schemas_are_found_by_id() {
        let client = client(&serve().await, None);
        assert_eq!(
            client.schema_by_id(10).await,
            Ok(RegisteredSchema {
                id: 10,
                schema_type: SchemaType::Avro,
                schema: AVRO.into()
            })
        );
        let json = client.schema_by_id(12).await.unwrap();
        assert_eq!((json.id, json.schema_type), (12, SchemaType::Json));
        assert!(matches!(
            client.schema_by_id(13).await,
            Err(LookupError::NotFound(m)) if m.contains("40403")
        ));
    }

    #[tokio::test]
    async fn subjects_are_listed_with_credentials() {
        let base = serve().await;
        let auth = BasicAuth {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(
            client(&base, Some(&auth)).subjects().await,
            Ok(vec!["a-value".to_owned(), "s".to_owned()])
        );
        // A refused request is the config's problem, not an answer.
        assert!(matches!(
            client(&base, None).subjects().await,
            Err(LookupError::Unavailable(m)) if m.contains("401")
        ));
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(Client::new("not a url", None, Duration::from_secs(1)).is_err());
        assert!(Client::new("ftp://x", None, Duration::from_secs(1)).is_err());
        assert!(Client::new("http://x:8081/registry", None, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn schema_types_are_read_from_the_api() {
        assert_eq!(SchemaType::from_api(None), Ok(SchemaType::Avro));
        assert_eq!(SchemaType::from_api(Some("AVRO")), Ok(SchemaType::Avro));
        assert_eq!(SchemaType::from_api(Some("JSON")), Ok(SchemaType::Json));
        assert!(SchemaType::from_api(Some("PROTOBUF")).is_err());
    }

    #[test]
    fn versions_display_as_the_api_spells_them() {
        assert_eq!(Version::Latest.to_string(), "latest");
        assert_eq!(Version::Pinned(3).to_string(), "3");
        assert_eq!(Version::default(), Version::Latest);
    }
}
