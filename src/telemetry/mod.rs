//! The registry's own measurements, in one place: the counters and states the edges update
//! (the Swarm source's, the publisher's, the HTTP server's), which /health, /events and
//! /metrics report, and the Prometheus exposition of all of them.
//!
//! - [`status`]: the source's counters and the publisher's state (plain atomics: writers never
//!   wait for readers).
//! - [`http`]: request counts and durations, connections, event-stream figures.
//! - [`exposition`]: the /metrics text, encoded with `prometheus-client`.

pub mod exposition;
pub mod http;
pub mod status;

pub use exposition::{render, Exposition, METRIC_PREFIX};
pub use http::{HttpMetrics, SecondsHistogram};
pub use status::{PublisherState, SourceCounters};
