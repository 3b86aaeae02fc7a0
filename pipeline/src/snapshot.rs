//! The registry's state at one revision: immutable, shared by `Arc`, cheap to derive.
//!
//! Collections are persistent maps (`imbl`), so the next snapshot shares every untouched
//! service with the previous one: a change to one service costs O(log n), not a copy of all.
//! Each record renders its JSON once, lazily, so readers never re-serialise unchanged data.

use std::sync::{Arc, OnceLock};

use imbl::{OrdMap, Vector};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::change::{Change, ChangeKind};
use crate::model::{Metrics, ServiceEntry, SourceHealth, Timestamp};

/// Registered services by name, in name order.
pub type ServiceMap = OrdMap<String, Arc<ServiceRecord>>;

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
pub(crate) fn raw_json<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::to_string(value)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .unwrap_or_else(null_raw)
}

fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON, so this cannot fail; the default is there only to avoid a panic path.
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

/// Why the change log cannot answer "what happened after seq N".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistoryGone {
    /// N is older than the oldest change kept: the log has evicted what came after it.
    #[error("changes after {requested} were evicted (oldest kept: {oldest_kept})")]
    Evicted { requested: u64, oldest_kept: u64 },
    /// N is newer than anything this registry has emitted, e.g. an id from another deployment.
    #[error("revision {requested} is ahead of the current revision {current}")]
    Future { requested: u64, current: u64 },
    /// N was issued before this run started; this run cannot know what followed it.
    #[error("revision {requested} predates this run (which began after {floor})")]
    EarlierRun { requested: u64, floor: u64 },
}

/// The most recent changes, oldest first, bounded in count.
#[derive(Debug, Clone)]
pub struct ChangeLog {
    changes: Vector<Arc<Change>>,
    capacity: usize,
}

impl ChangeLog {
    pub fn new(capacity: usize) -> Self {
        ChangeLog {
            changes: Vector::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn push(&mut self, change: Arc<Change>) {
        self.changes.push_back(change);
        while self.changes.len() > self.capacity {
            self.changes.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The seq of the oldest change still kept.
    pub fn oldest(&self) -> Option<u64> {
        self.changes.front().map(|c| c.seq)
    }
}

/// The registry at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The seq of the last change folded in; `floor` before the first.
    pub revision: u64,
    /// The revision this run started from. Ids at or below it belong to earlier runs.
    pub floor: u64,
    pub services: ServiceMap,
    /// Service id to name, to resolve removals that name only the id.
    pub ids: OrdMap<String, String>,
    /// The last revision that changed any service entry or the set: the ETag of the list.
    pub services_revision: u64,
    /// Latest metrics by service name; only registered services with running tasks have one.
    pub metrics: OrdMap<String, MetricsRecord>,
    pub source: SourceHealth,
    /// When the last authoritative full list was folded.
    pub last_full_sync: Option<Timestamp>,
    /// The original registry's counter of cache refreshes: full lists and clears.
    pub cache_version: u64,
    pub log: ChangeLog,
}

impl PartialEq for Snapshot {
    /// Equal when they hold the same facts at the same revision; observation times (last
    /// contact, last full sync) and the log's contents are not facts about the services.
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.services == other.services
            && self.metrics == other.metrics
            && self.source.status == other.source.status
    }
}

impl Snapshot {
    /// The empty registry of a run whose revisions start above `floor`.
    pub fn empty(floor: u64, log_capacity: usize, at: Timestamp) -> Self {
        Snapshot {
            revision: floor,
            floor,
            services: OrdMap::new(),
            ids: OrdMap::new(),
            services_revision: floor,
            metrics: OrdMap::new(),
            source: SourceHealth::new(at),
            last_full_sync: None,
            cache_version: 0,
            log: ChangeLog::new(log_capacity),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Arc<ServiceRecord>> {
        self.services.get(name)
    }

    pub fn metrics_of(&self, name: &str) -> Option<&MetricsRecord> {
        self.metrics.get(name)
    }

    /// Every change after `seq`, oldest first, or why they cannot be had. Asking for the
    /// current revision gives an empty list: the caller is up to date.
    pub fn changes_since(&self, seq: u64) -> Result<Vec<Arc<Change>>, HistoryGone> {
        if seq > self.revision {
            return Err(HistoryGone::Future {
                requested: seq,
                current: self.revision,
            });
        }
        if seq < self.floor {
            return Err(HistoryGone::EarlierRun {
                requested: seq,
                floor: self.floor,
            });
        }
        if seq == self.revision {
            return Ok(Vec::new());
        }
        let oldest = self.log.oldest().unwrap_or(self.revision + 1);
        if seq + 1 < oldest {
            return Err(HistoryGone::Evicted {
                requested: seq,
                oldest_kept: oldest,
            });
        }
        let start = (seq + 1 - oldest) as usize;
        Ok(self.log.changes.iter().skip(start).cloned().collect())
    }

    /// Apply one emitted change to this snapshot's services and metrics.
    ///
    /// This is how an in-process consumer that keeps its own copy follows the registry, and the
    /// fold's tests use it to prove that the changes of a transition say everything that
    /// happened: old snapshot + changes = new snapshot.
    pub fn apply_change(&mut self, change: &Change) {
        match &change.kind {
            ChangeKind::ServiceAdded { service } | ChangeKind::ServiceUpdated { service, .. } => {
                let name = service.entry.name.clone();
                self.ids.insert(service.entry.id.clone(), name.clone());
                self.services.insert(name, service.clone());
                self.services_revision = change.seq;
            }
            ChangeKind::ServiceRemoved { id, name } => {
                self.ids.remove(id);
                self.services.remove(name);
                self.metrics.remove(name);
                self.services_revision = change.seq;
            }
            ChangeKind::ServicesUpdated { services } => {
                self.services = services.clone();
                self.services_revision = change.seq;
            }
            ChangeKind::MetricsUpdated {
                service_name,
                metrics,
            } => match metrics {
                Some(m) => {
                    self.metrics.insert(
                        service_name.clone(),
                        MetricsRecord {
                            metrics: m.clone(),
                            revision: change.seq,
                        },
                    );
                }
                None => {
                    self.metrics.remove(service_name);
                }
            },
            ChangeKind::HealthCheck { source } => {
                self.source.status = source.status.clone();
            }
        }
        self.revision = change.seq;
    }

    /// The `services` array of `GET /services`, rendered from the records' cached JSON.
    pub fn services_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.services.len() * 512);
        out.push('[');
        for (i, record) in self.services.values().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(record.json().get());
        }
        out.push(']');
        out
    }
}
