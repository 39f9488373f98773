//! What every logpipe service shares.
//!
//! - [`record`]: the record contract (headers, unique id, keys, topic names);
//! - [`config`]: TOML loading with unknown keys rejected and `${ENV}` secrets;
//! - [`kafka`]: the `[kafka]` table and librdkafka settings per client role;
//! - [`http`]: a bound HTTP listener served until shutdown (telemetry and service APIs);
//! - [`auth`]: HTTP basic auth with ordered roles for service APIs, and password hashing;
//! - [`openapi`]: OpenAPI documents generated from a service API's route table;
//! - [`telemetry`]: `/metrics`, `/health`, `/ready`;
//! - [`metric_names`]: every service's metric names, the contract its readers share;
//! - [`logging`]: `tracing` output, human or JSON;
//! - [`shutdown`]: signals as a shutdown token and a reload counter;
//! - [`service`]: the `run`/`check` binary around a service;
//! - [`systemd`]: `Type=notify` readiness, watchdog and stopping notifications;
//! - [`wire`]: the Confluent wire format of clean records.

pub mod auth;
pub mod config;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod metric_names;
pub mod openapi;
pub mod record;
pub mod service;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod wire;
