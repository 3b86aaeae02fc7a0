//! swarm-registry: a live registry of the Docker Swarm services under autoscaling.
//!
//! The core (the `pipeline` crate) folds inputs into snapshots and changes; this crate holds
//! the edges around it. See ARCHITECTURE.md for the map.

pub mod agent;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod docker;
pub mod http;
pub mod logging;
pub mod memory;
pub mod telemetry;
