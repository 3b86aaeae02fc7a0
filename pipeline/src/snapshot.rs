//! The registry's state at one revision: immutable, shared by `Arc`, cheap to derive.
//!
//! Collections are persistent maps (`imbl`), so the next snapshot shares every untouched
//! service with the previous one: a change to one service costs O(log n), not a copy of all.
//! Each record renders its JSON once, lazily, so readers never re-serialise unchanged data.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use imbl::OrdMap;

use crate::change::{Change, ChangeKind};
use crate::model::{SourceHealth, Timestamp};
use crate::record::{Key, MetricsRecord, ServiceMap, ServiceRecord};

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

/// The most recent changes, bounded in count, shared by every snapshot of a run.
///
/// A ring of slots indexed by `seq % capacity`. The driver records each change before it
/// stores the snapshot that includes it, so a snapshot at revision R finds every kept change up
/// to R. A slot later reused by a newer change reads as evicted (its seq no longer matches).
/// Appending is one atomic store and nothing is copied, which a persistent vector inside each
/// snapshot could not offer: it copied a chunk of the log on every transition. Readers never
/// lock; there is one writer, the driver.
pub struct ChangeLog {
    slots: Box<[ArcSwapOption<Change>]>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("capacity", &self.slots.len())
            .finish()
    }
}

impl ChangeLog {
    pub fn new(capacity: usize) -> Self {
        ChangeLog {
            slots: (0..capacity.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keep `change`, evicting the one `capacity` seqs older.
    pub fn record(&self, change: &Arc<Change>) {
        self.slot(change.seq).store(Some(change.clone()));
    }

    /// The change numbered `seq`, if still kept.
    pub fn get(&self, seq: u64) -> Option<Arc<Change>> {
        self.slot(seq).load_full().filter(|c| c.seq == seq)
    }

    fn slot(&self, seq: u64) -> &ArcSwapOption<Change> {
        &self.slots[(seq % self.slots.len() as u64) as usize]
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
    pub ids: OrdMap<Key, Key>,
    /// The last revision that changed any service entry or the set: the ETag of the list.
    pub services_revision: u64,
    /// Latest metrics by service name; only registered services with running tasks have one.
    pub metrics: OrdMap<Key, MetricsRecord>,
    pub source: SourceHealth,
    /// When the last authoritative full list was folded.
    pub last_full_sync: Option<Timestamp>,
    /// The original registry's counter of cache refreshes: full lists and clears.
    pub cache_version: u64,
    /// Recent changes for resuming clients (see [`ChangeLog`]); shared, not copied.
    pub log: Arc<ChangeLog>,
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
            log: Arc::new(ChangeLog::new(log_capacity)),
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
        self.changes_after(seq, usize::MAX)
    }

    /// The first `limit` changes after `seq`, oldest first, or why they cannot be had. A
    /// subscriber catching up takes the log a batch at a time this way, so what it holds is
    /// bounded by the batch rather than by how far behind it fell.
    pub fn changes_after(&self, seq: u64, limit: usize) -> Result<Vec<Arc<Change>>, HistoryGone> {
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
        let wanted = self.revision - seq;
        let evicted = || HistoryGone::Evicted {
            requested: seq,
            oldest_kept: (self.revision + 1).saturating_sub(self.log.capacity() as u64),
        };
        if wanted > self.log.capacity() as u64 {
            return Err(evicted());
        }
        let last = self
            .revision
            .min(seq.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX)));
        (seq + 1..=last)
            .map(|s| self.log.get(s).ok_or_else(evicted))
            .collect()
    }

    /// Apply one emitted change to this snapshot's services and metrics.
    ///
    /// This is how an in-process consumer that keeps its own copy follows the registry, and the
    /// fold's tests use it to prove that the changes of a transition say everything that
    /// happened: old snapshot + changes = new snapshot.
    pub fn apply_change(&mut self, change: &Change) {
        self.services = services_after(&self.services, &change.kind);
        match &change.kind {
            ChangeKind::ServiceAdded { service } | ChangeKind::ServiceUpdated { service, .. } => {
                self.ids.insert(
                    Key::from(service.entry.id.as_str()),
                    Key::from(service.entry.name.as_str()),
                );
                self.services_revision = change.seq;
            }
            ChangeKind::ServiceRemoved { id, name } => {
                self.ids.remove(id.as_str());
                self.metrics.remove(name.as_str());
                self.services_revision = change.seq;
            }
            ChangeKind::ServicesUpdated { .. } => {
                self.services_revision = change.seq;
            }
            ChangeKind::MetricsUpdated {
                service_name,
                metrics,
            } => match metrics {
                Some(m) => {
                    self.metrics.insert(
                        Key::from(service_name.as_str()),
                        MetricsRecord {
                            metrics: m.clone(),
                            revision: change.seq,
                        },
                    );
                }
                None => {
                    self.metrics.remove(service_name.as_str());
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

/// The service list after `change`, given the list before it: the services part of
/// [`Snapshot::apply_change`], for a consumer that keeps only the list (the broker's outbox
/// remembers it after every change, to stand in for changes it drops).
pub fn services_after(before: &ServiceMap, change: &ChangeKind) -> ServiceMap {
    match change {
        ChangeKind::ServiceAdded { service } | ChangeKind::ServiceUpdated { service, .. } => {
            before.update(Key::from(service.entry.name.as_str()), service.clone())
        }
        ChangeKind::ServiceRemoved { name, .. } => before.without(name.as_str()),
        ChangeKind::ServicesUpdated { services } => services.clone(),
        ChangeKind::MetricsUpdated { .. } | ChangeKind::HealthCheck { .. } => before.clone(),
    }
}
