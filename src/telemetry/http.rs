//! What the HTTP edge measures about itself. Counters and gauges are plain atomics in fixed
//! arrays, so recording a request costs no lookup, and the label sets are bounded (routes, not
//! paths; a fixed list of statuses). Durations go into `prometheus-client` histograms, one per
//! route, whose observation holds that histogram's own lock for a few instructions.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::http::route::ROUTE_LABELS;

/// Statuses counted under their own label; anything else is counted as `other`.
const STATUSES: [u16; 16] = [
    200, 204, 304, 400, 401, 404, 405, 408, 413, 422, 431, 500, 501, 502, 503, 504,
];

/// The `status` label of each slot of a requests row: the statuses above, then `other`.
pub(super) const STATUS_LABELS: [&str; STATUSES.len() + 1] = [
    "200", "204", "304", "400", "401", "404", "405", "408", "413", "422", "431", "500", "501",
    "502", "503", "504", "other",
];

/// Request duration bucket bounds, in seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// Change-to-delivery latency bucket bounds, in seconds.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram of durations, exposed in seconds.
#[derive(Debug, Clone)]
pub struct SecondsHistogram(Histogram);

impl SecondsHistogram {
    fn new(bounds: &[f64]) -> Self {
        SecondsHistogram(Histogram::new(bounds.iter().copied()))
    }

    pub fn observe(&self, value: Duration) {
        self.0.observe(value.as_secs_f64());
    }

    pub(super) fn histogram(&self) -> &Histogram {
        &self.0
    }
}

/// Everything the HTTP edge measures about itself.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Requests by route (index into ROUTE_LABELS) and status (index into STATUS_LABELS).
    pub(super) requests: Vec<[AtomicU64; STATUS_LABELS.len()]>,
    /// Request durations by route (index into ROUTE_LABELS).
    pub(super) durations: Vec<SecondsHistogram>,
    pub delivery: SecondsHistogram,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// Connections dropped because a write made no progress for WRITE_TIMEOUT_SEC (a client
    /// that stopped reading).
    pub write_timeouts: AtomicU64,
    pub sse_subscribers: AtomicI64,
    pub sse_lagged: AtomicU64,
    pub sse_events: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: ROUTE_LABELS
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            durations: ROUTE_LABELS
                .iter()
                .map(|_| SecondsHistogram::new(&REQUEST_BUCKETS))
                .collect(),
            delivery: SecondsHistogram::new(&DELIVERY_BUCKETS),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            sse_subscribers: AtomicI64::new(0),
            sse_lagged: AtomicU64::new(0),
            sse_events: AtomicU64::new(0),
        }
    }
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

impl HttpMetrics {
    /// Count one answered request of route `route` (its index into ROUTE_LABELS).
    pub fn record_request(&self, route: usize, status: u16, elapsed: Duration) {
        if let Some(row) = self.requests.get(route) {
            row[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.durations.get(route) {
            histogram.observe(elapsed);
        }
    }
}
