//! Local development tools for logpipe.
//!
//! - [`cluster`]: `logpipe-dev cluster`, a Kafka cluster in a process (librdkafka's mock cluster)
//!   with a control API for faults;
//! - [`loadgen`]: `logpipe-dev loadgen`, generated game logs with a reconcilable report;
//! - [`harness`]: what tests use to start clusters and services and read topics back.

pub mod cluster;
pub mod harness;
pub mod loadgen;
