//! The records a snapshot keeps and a change carries: a registered service with its cached
//! JSON, and a service's latest metrics. Both [`crate::snapshot`] and [`crate::change`] use
//! them, so they live apart from either.

use std::sync::{Arc, OnceLock};

use imbl::OrdMap;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{Metrics, ServiceEntry};

/// A map key. Shared strings, because a persistent map copies the keys of every node on the
/// path it changes: cloning an `Arc<str>` is a counter increment, a `String` an allocation.
pub type Key = Arc<str>;

/// Registered services by name, in name order.
pub type ServiceMap = OrdMap<Key, Arc<ServiceRecord>>;

/// A registered service and the revision at which its entry last changed (its ETag).
#[derive(Debug)]
pub struct ServiceRecord {
    pub entry: ServiceEntry,
    pub revision: u64,
    json: OnceLock<Box<RawValue>>,
}

impl ServiceRecord {
    pub fn new(entry: ServiceEntry, revision: u64) -> Self {
        ServiceRecord {
            entry,
            revision,
            json: OnceLock::new(),
        }
    }

    /// The entry as JSON, rendered on first use and kept.
    pub fn json(&self) -> &RawValue {
        self.json.get_or_init(|| raw_json(&self.entry))
    }
}

impl PartialEq for ServiceRecord {
    fn eq(&self, other: &Self) -> bool {
        self.entry == other.entry && self.revision == other.revision
    }
}

/// A service's latest metrics and the revision at which they were folded.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRecord {
    pub metrics: Arc<Metrics>,
    pub revision: u64,
}

/// Render a value that is known to serialise (plain data without maps keyed by non-strings).
/// Falls back to `null` rather than panicking should that ever stop being true.
fn raw_json<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::to_string(value)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_else(null_raw)
}

fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON, so this cannot fail; the default is there only to avoid a panic path.
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}
