//! HTTP basic authentication with roles, for every service with an HTTP API.
//!
//! Users and their roles come from the `[auth]` config table; passwords are stored as Argon2 PHC
//! strings (a service's `hash-password` command prints one, see [`hash_password_command`]). Roles
//! are ordered, each including the ones before it (`read` < `write` < `admin`); which requests
//! need which role is the service's (the schema store's is its route table). Without an `[auth]`
//! table the API is open. Each service counts its refusals under its own metric name, by
//! reason (`unauthorized`, `forbidden`).
//!
//! Argon2 is deliberately slow, so a verified `Authorization` header is remembered (bounded)
//! and later requests with it cost a hash-map lookup. A reload ([`Auth::replace`]) forgets them,
//! so a removed user or changed password stops working at once.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::{Mutex, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether requests without credentials may read.
    #[serde(default)]
    pub anonymous_read: bool,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// One `[[auth.users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An Argon2 PHC string, e.g. `$argon2id$v=19$m=19456,t=2,p=1$...`.
    pub password_hash: String,
    pub role: Role,
}

impl AuthConfig {
    /// Checks what deserializing cannot: unique names without `:`, PHC hashes, and that
    /// someone can use the API at all.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            if user.name.is_empty() || user.name.contains(':') {
                anyhow::bail!("auth.users[{i}].name must be non-empty and contain no ':'");
            }
            if !seen.insert(&user.name) {
                anyhow::bail!("auth.users[{i}]: user {:?} is listed twice", user.name);
            }
            PasswordHash::new(&user.password_hash)
                .map_err(|e| anyhow::anyhow!("auth.users[{i}].password_hash is not a PHC password hash ({e}); make one with the service's `hash-password` command"))?;
        }
        if self.users.is_empty() && !self.anonymous_read {
            anyhow::bail!(
                "[auth] has no users and anonymous_read = false: nobody could use the store"
            );
        }
        Ok(())
    }
}

/// Why a request was refused; the API turns it into a 401 or a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid credentials: the caller should authenticate.
    Unauthorized,
    /// A known user whose role is below the one needed.
    Forbidden { user: String, needed: Role },
}

impl Denied {
    /// 401 (the caller should authenticate, with a `WWW-Authenticate` challenge) or 403.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Denied::Unauthorized => axum::http::StatusCode::UNAUTHORIZED,
            Denied::Forbidden { .. } => axum::http::StatusCode::FORBIDDEN,
        }
    }

    /// What the refusal tells the caller.
    pub fn message(&self) -> String {
        match self {
            Denied::Unauthorized => {
                "Unauthorized: valid HTTP basic credentials are required".to_owned()
            }
            Denied::Forbidden { user, needed } => {
                format!("User '{user}' is not allowed to do this: it needs the {needed:?} role")
                    .to_lowercase()
            }
        }
    }

    /// The `WWW-Authenticate` header value of a 401 from the service `realm`.
    pub fn challenge(realm: &str) -> String {
        format!("Basic realm=\"{realm}\"")
    }
}

const CACHE_LIMIT: usize = 1024;

/// The authorizer built from config.
#[derive(Debug)]
pub struct Auth {
    config: RwLock<Option<AuthConfig>>,
    /// The service's counter of refused requests (a [`crate::metric_names`] constant).
    denied_metric: &'static str,
    verified: Mutex<HashMap<String, (String, Role)>>,
}

impl Auth {
    /// Without `config` every request is allowed; refusals are counted under `denied_metric`.
    pub fn new(config: Option<AuthConfig>, denied_metric: &'static str) -> Auth {
        Auth {
            config: RwLock::new(config),
            denied_metric,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Puts a reloaded `[auth]` table in force: users, roles, passwords and anonymous reads as
    /// it says from the next request on.
    pub fn replace(&self, config: Option<AuthConfig>) {
        let mut current = self.config.write().expect("auth config lock");
        if *current != config {
            // Under the config lock, so no verification against the old users lands after it.
            self.verified.lock().expect("auth cache lock").clear();
            *current = config;
            tracing::info!("auth reloaded");
        }
    }

    /// Ok when the request's credentials (or anonymity) carry `needed`.
    pub fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<(), Denied> {
        let config = self.config.read().expect("auth config lock");
        let Some(config) = config.as_ref() else {
            return Ok(());
        };
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            if config.anonymous_read && needed == Role::Read {
                return Ok(());
            }
            return Err(self.unauthorized());
        };
        let (user, role) = self.verify(config, value)?;
        if role >= needed {
            Ok(())
        } else {
            metrics::counter!(self.denied_metric, "reason" => "forbidden").increment(1);
            Err(Denied::Forbidden { user, needed })
        }
    }

    fn verify(&self, config: &AuthConfig, header_value: &str) -> Result<(String, Role), Denied> {
        if let Some(known) = self
            .verified
            .lock()
            .expect("auth cache lock")
            .get(header_value)
        {
            return Ok(known.clone());
        }
        let encoded = header_value
            .strip_prefix("Basic ")
            .ok_or_else(|| self.unauthorized())?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| self.unauthorized())?;
        let decoded = String::from_utf8(decoded).map_err(|_| self.unauthorized())?;
        let (name, password) = decoded.split_once(':').ok_or_else(|| self.unauthorized())?;
        let user = config
            .users
            .iter()
            .find(|u| u.name == name)
            .ok_or_else(|| self.unauthorized())?;
        let hash = PasswordHash::new(&user.password_hash).map_err(|_| self.unauthorized())?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| self.unauthorized())?;
        let known = (user.name.clone(), user.role);
        let mut cache = self.verified.lock().expect("auth cache lock");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(header_value.to_owned(), known.clone());
        Ok(known)
    }

    fn unauthorized(&self) -> Denied {
        metrics::counter!(self.denied_metric, "reason" => "unauthorized").increment(1);
        Denied::Unauthorized
    }
}

/// An Argon2id PHC string for `password`, for the `password_hash` config key.
pub fn hash_password(password: &str) -> String {
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password")
        .to_string()
}

/// A service binary's `hash-password` command (`bin` names the binary in the usage text): reads a
/// password from the first line of stdin and prints its hash, so the password never appears in
/// the process list or shell history.
pub fn hash_password_command(bin: &str) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!(
            "usage: echo -n 'PASSWORD' | {bin} hash-password  (the password is read from stdin)"
        );
        return ExitCode::FAILURE;
    }
    println!("{}", hash_password(password));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn auth(anonymous_read: bool) -> Auth {
        Auth::new(
            Some(AuthConfig {
                anonymous_read,
                users: vec![
                    UserConfig {
                        name: "reader".into(),
                        password_hash: hash_password("r-pass"),
                        role: Role::Read,
                    },
                    UserConfig {
                        name: "ops".into(),
                        password_hash: hash_password("o-pass"),
                        role: Role::Admin,
                    },
                ],
            }),
            "logpipe_test_auth_denied_total",
        )
    }

    #[test]
    fn roles_are_ordered_and_checked() {
        let auth = auth(false);
        assert!(auth
            .authorize(&basic("reader", "r-pass"), Role::Read)
            .is_ok());
        let denied = auth
            .authorize(&basic("reader", "r-pass"), Role::Write)
            .unwrap_err();
        assert_eq!(
            denied,
            Denied::Forbidden {
                user: "reader".into(),
                needed: Role::Write
            }
        );
        assert!(auth.authorize(&basic("ops", "o-pass"), Role::Admin).is_ok());
        assert_eq!(
            auth.authorize(&basic("ops", "wrong"), Role::Read),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            auth.authorize(&basic("nobody", "x"), Role::Read),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            auth.authorize(&HeaderMap::new(), Role::Read),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn a_replaced_table_is_in_force_at_once_even_for_remembered_headers() {
        let auth = auth(false);
        assert!(auth.authorize(&basic("ops", "o-pass"), Role::Admin).is_ok());
        auth.replace(Some(AuthConfig {
            anonymous_read: false,
            users: vec![UserConfig {
                name: "ops".into(),
                password_hash: hash_password("new-pass"),
                role: Role::Read,
            }],
        }));
        assert_eq!(
            auth.authorize(&basic("ops", "o-pass"), Role::Read),
            Err(Denied::Unauthorized),
            "the old password was remembered"
        );
        assert!(auth
            .authorize(&basic("ops", "new-pass"), Role::Read)
            .is_ok());
        assert!(auth
            .authorize(&basic("ops", "new-pass"), Role::Admin)
            .is_err());
        auth.replace(None);
        assert!(auth.authorize(&HeaderMap::new(), Role::Admin).is_ok());
    }

    #[test]
    fn anonymous_read_only_reads() {
        let auth = auth(true);
        assert!(auth.authorize(&HeaderMap::new(), Role::Read).is_ok());
        assert_eq!(
            auth.authorize(&HeaderMap::new(), Role::Write),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn denials_are_counted_under_the_services_name() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let auth = auth(false);
            let _ = auth.authorize(&HeaderMap::new(), Role::Read);
            let _ = auth.authorize(&basic("reader", "r-pass"), Role::Admin);
        });
        let rendered = handle.render();
        for reason in ["unauthorized", "forbidden"] {
            assert!(
                rendered.contains(&format!(
                    "logpipe_test_auth_denied_total{{reason=\"{reason}\"}} 1"
                )),
                "{rendered}"
            );
        }
    }

    #[test]
    fn config_rejects_plain_passwords() {
        let config = AuthConfig {
            anonymous_read: false,
            users: vec![UserConfig {
                name: "a".into(),
                password_hash: "secret".into(),
                role: Role::Read,
            }],
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("hash-password"));
    }
}
