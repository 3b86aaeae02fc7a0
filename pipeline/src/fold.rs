//! The fold: `(snapshot, input, time) -> (snapshot, changes)`, pure and synchronous.
//!
//! Everything the registry decides happens here: which services are registered, what their
//! entries say, what changed and in which order it is reported. The driver around it only moves
//! inputs in and results out, so this module is tested exhaustively without IO.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::change::{Change, ChangeKind};
use crate::labels::LabelRules;
use crate::model::{Metrics, ServiceEntry, ServiceSpec, SourceError, SourceStatus, Timestamp};
use crate::record::{Key, MetricsRecord, ServiceRecord};
use crate::snapshot::Snapshot;

/// Something that happened, as a source or a command reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Every service the engine has, from a poll. Authoritative: whatever is registered and
    /// missing from it is removed. It may include services without the label.
    FullList(Vec<ServiceSpec>),
    /// One service as just inspected. Registers, updates, or (when the label went away)
    /// removes it. An inspect older than what is known (by Docker's version index) is ignored.
    Upsert(ServiceSpec),
    /// A service that no longer exists, by id.
    Remove { id: String },
    /// A registered service's running task count moved (the engine saw one of its task
    /// containers start or die) while its spec stayed as last folded. Ignored for a service
    /// not registered. Only the count travels, so the source need not keep whole specs to
    /// say it.
    RunningTasks { service_id: String, running: u64 },
    /// A metrics sample for a service, by id; `None` when it has no running task to sample.
    Metrics {
        service_id: String,
        metrics: Option<Metrics>,
    },
    /// The source's connection changed (or was re-confirmed).
    SourceStatus(SourceStatus),
    /// Forget every service, as the contract's `POST /cache/clear` asks.
    Clear,
    /// A periodic beacon: emits `health.check`.
    Tick,
}

/// A transition's result: the next snapshot and the changes that lead to it, in order.
#[derive(Debug, Clone)]
pub struct Transition {
    pub snapshot: Snapshot,
    pub changes: Vec<Arc<Change>>,
}

/// The fold's fixed configuration.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub rules: LabelRules,
}

/// Where a service's spec comes from, which decides whether an older version may win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authority {
    /// A full list is the whole truth at its time: it wins even over a newer-looking entry
    /// (sources issue lists and inspects one after another, so a list is never older).
    List,
    /// A single inspect may be answered late, after a newer one: the older version is ignored.
    Inspect,
}

/// Accumulates the changes of one transition and numbers them.
struct Emitter {
    next_seq: u64,
    at: Timestamp,
    kinds: Vec<ChangeKind>,
}

impl Emitter {
    /// The seq the next emitted change will carry; records stamped with it match their change.
    fn peek(&self) -> u64 {
        self.next_seq + self.kinds.len() as u64
    }

    fn emit(&mut self, kind: ChangeKind) {
        self.kinds.push(kind);
    }

    fn finish(self, snapshot: &mut Snapshot, services_changed: bool) -> Vec<Arc<Change>> {
        let mut kinds = self.kinds;
        if services_changed {
            kinds.push(ChangeKind::ServicesUpdated {
                services: snapshot.services.clone(),
            });
        }
        if kinds.is_empty() {
            return Vec::new();
        }
        let last = self.next_seq + kinds.len() as u64 - 1;
        if services_changed {
            snapshot.services_revision = last;
        }
        snapshot.revision = last;
        let changes: Vec<Arc<Change>> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Arc::new(Change::new(self.next_seq + i as u64, last, self.at, kind)))
            .collect();
        changes
    }
}

impl Folder {
    pub fn new(rules: LabelRules) -> Self {
        Folder { rules }
    }

    /// Fold one input observed at `at` into `current`.
    pub fn fold(&self, current: &Snapshot, input: &Input, at: Timestamp) -> Transition {
        let mut next = current.clone();
        let mut out = Emitter {
            next_seq: current.revision + 1,
            at,
            kinds: Vec::new(),
        };
        let mut services_changed = false;
        match input {
            Input::FullList(specs) => {
                let mut seen = BTreeSet::new();
                for spec in specs.iter().filter(|s| self.rules.is_enabled(s)) {
                    if !seen.insert(spec.id.as_str()) {
                        continue; // a duplicated id in one list: the first wins
                    }
                    services_changed |= self.upsert(&mut next, spec, Authority::List, &mut out);
                }
                let gone: Vec<(Key, Key)> = next
                    .ids
                    .iter()
                    .filter(|(id, _)| !seen.contains(&id.as_ref()))
                    .map(|(id, name)| (id.clone(), name.clone()))
                    .collect();
                for (id, name) in gone {
                    remove(&mut next, &id, &name, &mut out);
                    services_changed = true;
                }
                next.last_full_sync = Some(at);
                next.cache_version += 1;
                observe_contact(&mut next, at, &mut out);
            }
            Input::Upsert(spec) => {
                if self.rules.is_enabled(spec) {
                    services_changed |= self.upsert(&mut next, spec, Authority::Inspect, &mut out);
                } else if let Some(name) = next.ids.get(spec.id.as_str()).cloned() {
                    remove(&mut next, &spec.id, &name, &mut out);
                    services_changed = true;
                }
                observe_contact(&mut next, at, &mut out);
            }
            Input::Remove { id } => {
                if let Some(name) = next.ids.get(id.as_str()).cloned() {
                    remove(&mut next, id, &name, &mut out);
                    services_changed = true;
                }
                observe_contact(&mut next, at, &mut out);
            }
            Input::RunningTasks {
                service_id,
                running,
            } => {
                services_changed |= set_running(&mut next, service_id, *running, &mut out);
                observe_contact(&mut next, at, &mut out);
            }
            Input::Metrics {
                service_id,
                metrics,
            } => {
                if let Some(name) = next.ids.get(service_id.as_str()).cloned() {
                    set_metrics(&mut next, &name, metrics.as_ref(), &mut out);
                }
            }
            Input::SourceStatus(status) => {
                set_status(&mut next, status, at, &mut out);
            }
            Input::Clear => {
                let all: Vec<(Key, Key)> = next
                    .ids
                    .iter()
                    .map(|(id, name)| (id.clone(), name.clone()))
                    .collect();
                services_changed = !all.is_empty();
                for (id, name) in all {
                    remove(&mut next, &id, &name, &mut out);
                }
                next.cache_version += 1;
            }
            Input::Tick => out.emit(ChangeKind::HealthCheck {
                source: next.source.clone(),
            }),
        }
        let changes = out.finish(&mut next, services_changed);
        Transition {
            snapshot: next,
            changes,
        }
    }

    /// Register or update one enabled service. Returns whether anything changed.
    fn upsert(
        &self,
        next: &mut Snapshot,
        spec: &ServiceSpec,
        authority: Authority,
        out: &mut Emitter,
    ) -> bool {
        let mut previous = next
            .ids
            .get(spec.id.as_str())
            .and_then(|name| next.services.get(name))
            .cloned();
        if let Some(prev) = &previous {
            if authority == Authority::Inspect && spec.version < prev.entry.version {
                return false; // a late answer about an older version of the spec
            }
        }
        let entry = self.rules.entry(spec);
        if previous.as_ref().is_some_and(|prev| prev.entry == entry) {
            return false;
        }
        // Names are the registry's keys, so a renamed service is reported as removed under
        // its old name and added under the new one.
        if let Some(prev) = previous.take_if(|prev| prev.entry.name != spec.name) {
            remove(next, &prev.entry.id, &prev.entry.name, out);
        }
        // Another service still holds this name: it was removed and a new one created under
        // the same name while we were not looking. The old one is gone.
        if let Some(holder) = next.services.get(spec.name.as_str()).cloned() {
            if holder.entry.id != spec.id {
                remove(next, &holder.entry.id, &holder.entry.name, out);
            }
        }
        store(next, entry, previous.as_deref(), out);
        true
    }
}

fn remove(next: &mut Snapshot, id: &str, name: &str, out: &mut Emitter) {
    next.ids.remove(id);
    next.services.remove(name);
    next.metrics.remove(name);
    out.emit(ChangeKind::ServiceRemoved {
        id: id.to_owned(),
        name: name.to_owned(),
    });
}

/// Set a registered service's running task count. Returns whether anything changed.
fn set_running(next: &mut Snapshot, service_id: &str, running: u64, out: &mut Emitter) -> bool {
    let Some(prev) = next
        .ids
        .get(service_id)
        .and_then(|name| next.services.get(name))
        .cloned()
    else {
        return false;
    };
    if prev.entry.running_tasks == Some(running) {
        return false;
    }
    let entry = ServiceEntry {
        running_tasks: Some(running),
        ..prev.entry.clone()
    };
    store(next, entry, Some(&prev), out);
    true
}

/// Put `entry` in the snapshot under its name and id, and emit it as added, or as updated
/// from `previous` (the record it replaces under the same name).
fn store(
    next: &mut Snapshot,
    entry: ServiceEntry,
    previous: Option<&ServiceRecord>,
    out: &mut Emitter,
) {
    let record = Arc::new(ServiceRecord::new(entry, out.peek()));
    let name = Key::from(record.entry.name.as_str());
    next.services.insert(name.clone(), record.clone());
    next.ids.insert(Key::from(record.entry.id.as_str()), name);
    match previous {
        Some(prev) => out.emit(ChangeKind::ServiceUpdated {
            changed_fields: changed_fields(&prev.entry, &record.entry),
            service: record,
        }),
        None => out.emit(ChangeKind::ServiceAdded { service: record }),
    }
}

fn set_metrics(next: &mut Snapshot, name: &str, metrics: Option<&Metrics>, out: &mut Emitter) {
    let current = next.metrics.get(name).map(|r| r.metrics.as_ref());
    if current == metrics {
        return;
    }
    let metrics = metrics.map(|m| Arc::new(m.clone()));
    match &metrics {
        Some(m) => {
            next.metrics.insert(
                Key::from(name),
                MetricsRecord {
                    metrics: m.clone(),
                    revision: out.peek(),
                },
            );
        }
        None => {
            next.metrics.remove(name);
        }
    }
    out.emit(ChangeKind::MetricsUpdated {
        service_name: name.to_owned(),
        metrics,
    });
}

/// Record that the engine answered at `at`. When it was not known to be connected, this is a
/// status change and emits `health.check`.
fn observe_contact(next: &mut Snapshot, at: Timestamp, out: &mut Emitter) {
    set_status(next, &SourceStatus::Connected, at, out);
}

fn set_status(next: &mut Snapshot, status: &SourceStatus, at: Timestamp, out: &mut Emitter) {
    match status {
        SourceStatus::Connected => next.source.last_contact = Some(at),
        SourceStatus::Unreachable { reason } => {
            next.source.last_error = Some(SourceError {
                at,
                message: reason.clone(),
            });
        }
        SourceStatus::Connecting => {}
    }
    if next.source.status == *status {
        return;
    }
    next.source.status = status.clone();
    next.source.since = at;
    out.emit(ChangeKind::HealthCheck {
        source: next.source.clone(),
    });
}

/// The names of the entry fields that differ, for `service.updated`'s `changed_fields`.
fn changed_fields(old: &ServiceEntry, new: &ServiceEntry) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            fields.push(name);
        }
    };
    check("config_errors", old.config_errors != new.config_errors);
    check("created_at", old.created_at != new.created_at);
    check(
        "current_replicas",
        old.current_replicas != new.current_replicas,
    );
    check("desired_tasks", old.desired_tasks != new.desired_tasks);
    check("id", old.id != new.id);
    check("labels", old.labels != new.labels);
    check("max_replicas", old.max_replicas != new.max_replicas);
    check("metric", old.metric != new.metric);
    check("min_replicas", old.min_replicas != new.min_replicas);
    check("mode", old.mode != new.mode);
    check("name", old.name != new.name);
    check("running_tasks", old.running_tasks != new.running_tasks);
    check("thresholds", old.thresholds != new.thresholds);
    check("updated_at", old.updated_at != new.updated_at);
    check("version", old.version != new.version);
    fields
}
