//! What the HTTP edge measures about itself. Counters and gauges are plain atomics in fixed
//! arrays, so recording a request costs no lookup, and the label sets are bounded (routes, not
//! paths; a fixed list of statuses). Durations go into histograms of atomic buckets, one per
//! route: an observation is a few relaxed atomic adds and takes no lock, so the server's
//! threads never queue on a route's histogram (the crate's own histogram locks on every
//! observation); `prometheus-client` encodes them like its own.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

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

/// A histogram of durations, exposed in seconds: one atomic count per bucket (the last one
/// above every bound) and the sum of the observations in nanoseconds.
#[derive(Debug)]
pub struct SecondsHistogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl SecondsHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        SecondsHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl EncodeMetric for SecondsHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Each bucket's own count; the encoder writes them cumulatively and adds the +Inf
        // bucket from the total, which includes the observations above every bound.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = self
            .buckets
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
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
