//! What the end-to-end tests share, one module per part of the system they start: the support
//! code lives here once, as a library every test binary links, instead of a copy compiled into
//! each.
//!
//! - [`faults`]: kill -9 and broker outages injected into a running pipeline, and the load
//!   generator writing meanwhile;
//! - [`agent`]: an agent process over a log directory, and a collector of what it produced;
//! - [`cep`]: game events in clean topics, the matches an oracle expects of them, CEP workers'
//!   configs and rules API, and the matches read back;
//! - [`lake`]: lake loader configs, the rows a game stream must become, and Delta tables read
//!   back by outside readers;
//! - [`mirror`]: write and read clusters, mirror processes, records with countable ids;
//! - [`validator`]: a cluster with a schema store, validator processes, agent-style records, and
//!   clean and dead-letter topics read back by event id;
//! - [`metrics`]: a service's counters from its `/metrics` page;
//! - [`service`]: starting a service the way an operator does;
//! - [`topic`]: a topic's records read back: values and headers;
//! - [`pipeline`]: where lost lines went, hop by hop, and the README tour's schema fix and replay.

pub mod agent;
pub mod cep;
pub mod faults;
pub mod lake;
pub mod metrics;
pub mod mirror;
pub mod pipeline;
pub mod service;
pub mod topic;
pub mod validator;
