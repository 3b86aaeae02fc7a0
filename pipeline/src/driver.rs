//! The driver: one task owns the state, folds every input, publishes the result.
//!
//! Order of publication matters: the new snapshot is stored (through `ArcSwap`) before its
//! changes are broadcast, so whoever receives change N and then loads the snapshot sees a
//! revision of at least N. Readers never lock and never wait for the fold; the fold never waits
//! for a reader: the broadcast channel is bounded and a subscriber that falls behind is told so
//! (and caught up from the change log, or reset) instead of slowing anyone down.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::change::Change;
use crate::fold::{Folder, Input};
use crate::labels::LabelRules;
use crate::model::Timestamp;
use crate::snapshot::{HistoryGone, Snapshot};

/// How a registry is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub rules: LabelRules,
    /// How many recent changes the log keeps for resuming clients.
    pub log_capacity: usize,
    /// How many changes a subscriber may fall behind before it is caught up from the log.
    pub broadcast_capacity: usize,
    /// Revisions of this run start above this. Supply something that only grows across
    /// restarts (see [`clock_floor`]), so ids from an earlier run are recognised as such.
    pub floor: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            rules: LabelRules::default(),
            log_capacity: 4096,
            broadcast_capacity: 1024,
            floor: clock_floor(),
        }
    }
}

/// A revision floor from the wall clock, in microseconds since the epoch: it grows across
/// restarts without any stored state, and stays below 2^53 (safe for JavaScript clients) for
/// centuries. A run would have to emit over a million changes a second to outrun it.
pub fn clock_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The driver is gone, so nothing will fold the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the registry's driver has stopped")]
pub struct RegistryStopped;

/// What one submitted input did, once its snapshot is readable.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The revision of the snapshot after the input.
    pub revision: u64,
    /// The changes the input's transition emitted, in order; empty when it changed nothing.
    pub changes: Vec<Arc<Change>>,
}

struct Command {
    input: Input,
    folded: Option<oneshot::Sender<Submitted>>,
}

/// A handle on a running registry: read the current snapshot, subscribe to changes, submit
/// inputs. Cheap to clone; this is the whole API for in-process consumers.
///
/// ```
/// use pipeline::{Input, Registry, RegistryConfig, ServiceMode, ServiceSpec, Update};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (registry, driver) = Registry::new(RegistryConfig::default());
/// tokio::spawn(driver.run());
///
/// // A consumer takes the current state and every change after it, with no gap.
/// let (snapshot, mut updates) = registry.subscribe();
/// assert!(snapshot.services.is_empty());
///
/// let spec = ServiceSpec {
///     id: "x1".into(),
///     name: "web".into(),
///     labels: [("autoscaler.enabled".to_string(), "true".to_string())].into(),
///     mode: ServiceMode::Replicated(2),
///     created_at: "2024-01-15T10:30:00Z".into(),
///     updated_at: "2024-01-15T10:30:00Z".into(),
///     version: 1,
///     running_tasks: Some(2),
///     desired_tasks: Some(2),
/// };
/// let revision = registry.submit(Input::Upsert(spec)).await.unwrap();
/// assert_eq!(registry.snapshot().revision, revision);
/// assert_eq!(registry.snapshot().services["web"].entry.max_replicas, 2);
///
/// let mut keys = Vec::new();
/// while keys.len() < 3 {
///     match updates.next().await {
///         Some(Update::Change(change)) => keys.push(change.routing_key()),
///         other => panic!("unexpected {other:?}"),
///     }
/// }
/// // The first contact with a source also reports the source's health.
/// assert_eq!(keys, ["service.added", "health.check", "services.updated"]);
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    current: Arc<ArcSwap<Snapshot>>,
    changes: broadcast::Sender<Arc<Change>>,
    revisions: watch::Receiver<u64>,
    commands: mpsc::Sender<Command>,
}

/// The task that owns the state. Run it with [`Driver::run`].
pub struct Driver {
    folder: Folder,
    current: Arc<ArcSwap<Snapshot>>,
    changes: broadcast::Sender<Arc<Change>>,
    revisions: watch::Sender<u64>,
    commands: mpsc::Receiver<Command>,
}

impl Registry {
    /// A registry and the driver that must run for it to change.
    pub fn new(config: RegistryConfig) -> (Registry, Driver) {
        let initial = Snapshot::empty(config.floor, config.log_capacity, Timestamp::now());
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let (changes, _) = broadcast::channel(config.broadcast_capacity.max(1));
        let (revisions_tx, revisions) = watch::channel(config.floor);
        let (tx, rx) = mpsc::channel(256);
        let registry = Registry {
            current: current.clone(),
            changes: changes.clone(),
            revisions,
            commands: tx,
        };
        let driver = Driver {
            folder: Folder::new(config.rules),
            current,
            changes,
            revisions: revisions_tx,
            commands: rx,
        };
        (registry, driver)
    }

    /// The current snapshot. Lock-free; the snapshot stays valid as long as it is held.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot without touching its reference count: the cheapest read, for
    /// short borrows on hot paths.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot and every change after it.
    pub fn subscribe(&self) -> (Arc<Snapshot>, Subscription) {
        let rx = self.changes.subscribe();
        let snapshot = self.current.load_full();
        let sub = Subscription {
            current: self.current.clone(),
            rx,
            last: snapshot.revision,
            pending: VecDeque::new(),
            catching_up: false,
            resets: 0,
        };
        (snapshot, sub)
    }

    /// Every change after `seq` (replayed from the log), then live ones. When the log cannot
    /// say what followed `seq`, the first update is a [`Update::Reset`] with a full snapshot.
    pub fn subscribe_after(&self, seq: u64) -> Subscription {
        let rx = self.changes.subscribe();
        let mut sub = Subscription {
            current: self.current.clone(),
            rx,
            last: seq,
            pending: VecDeque::new(),
            catching_up: false,
            resets: 0,
        };
        sub.catch_up();
        sub
    }

    /// A watch of the current revision: it changes once a snapshot with new changes is
    /// readable, so a waiter can sleep on one cheap signal instead of holding a subscription.
    /// It reports [`watch::error::RecvError`] once the driver has stopped.
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revisions.clone()
    }

    /// Fold `input` and wait until the resulting snapshot is readable; returns its revision.
    pub async fn submit(&self, input: Input) -> Result<u64, RegistryStopped> {
        Ok(self.submit_with_changes(input).await?.revision)
    }

    /// [`submit`](Self::submit), also returning the changes the input's transition emitted,
    /// for a source that reacts to what its own input did.
    pub async fn submit_with_changes(&self, input: Input) -> Result<Submitted, RegistryStopped> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command {
                input,
                folded: Some(tx),
            })
            .await
            .map_err(|_| RegistryStopped)?;
        rx.await.map_err(|_| RegistryStopped)
    }

    /// Queue `input` without waiting for it to be folded.
    pub async fn send(&self, input: Input) -> Result<(), RegistryStopped> {
        self.commands
            .send(Command {
                input,
                folded: None,
            })
            .await
            .map_err(|_| RegistryStopped)
    }
}

impl Driver {
    /// Fold the inputs sent through the [`Registry`] handles, in the order they arrive, until
    /// every handle was dropped. Returns the last snapshot.
    pub async fn run(self) -> Arc<Snapshot> {
        let Driver {
            folder,
            current,
            changes,
            revisions,
            mut commands,
        } = self;
        while let Some(Command { input, folded }) = commands.recv().await {
            let at = Timestamp::now();
            let transition = folder.fold(&current.load(), &input, at);
            let revision = transition.snapshot.revision;
            // Log first, then store, then signal: each step can rely on the one before.
            for change in &transition.changes {
                transition.snapshot.log.record(change);
            }
            // Stored even when nothing was emitted: observation times (last contact, last
            // full sync) still moved, and readers show them.
            current.store(Arc::new(transition.snapshot));
            revisions.send_if_modified(|seen| std::mem::replace(seen, revision) != revision);
            for change in &transition.changes {
                // An error only means nobody listens right now; the log still has the change.
                let _ = changes.send(change.clone());
            }
            if let Some(folded) = folded {
                let _ = folded.send(Submitted {
                    revision,
                    changes: transition.changes,
                });
            }
        }
        current.load_full()
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Update {
    /// The next change, in order, with no gap since the previous one.
    Change(Arc<Change>),
    /// The changes since the subscriber's position cannot be had (evicted from the log, or
    /// from another run); here is the full state instead. Changes after it follow.
    Reset {
        snapshot: Arc<Snapshot>,
        reason: HistoryGone,
    },
}

/// A subscriber's ordered view of changes. A subscriber that falls behind the broadcast
/// channel is caught up from the change log; if the log has moved on too, it gets a reset.
pub struct Subscription {
    current: Arc<ArcSwap<Snapshot>>,
    rx: broadcast::Receiver<Arc<Change>>,
    last: u64,
    /// At most [`CATCH_UP_BATCH`] changes from the log, or one reset.
    pending: VecDeque<Update>,
    /// Whether the log may hold more changes after `last` than the last batch took.
    catching_up: bool,
    resets: u64,
}

/// Changes a subscriber behind the broadcast takes from the log at a time. Taken all at once,
/// a subscriber up to a whole log behind held a reference to each missed change (measured:
/// about 60 KB per subscriber, 650 MB for 10,000 HTTP/2 subscribers that fell behind) and
/// kept changes the log had already let go of alive.
pub const CATCH_UP_BATCH: usize = 64;

impl Subscription {
    /// The next update, or `None` once the registry has stopped and all changes were seen.
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return Some(update);
            }
            if self.catching_up {
                self.catch_up();
                continue;
            }
            match self.rx.recv().await {
                Ok(change) if change.seq <= self.last => continue,
                Ok(change) if change.seq == self.last + 1 => {
                    self.last = change.seq;
                    return Some(Update::Change(change));
                }
                // A gap (or a lag reported by the channel): fill it from the log.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The seq of the last change delivered (or the revision of the last reset).
    pub fn position(&self) -> u64 {
        self.last
    }

    /// Updates taken from the log and not yet returned: at most [`CATCH_UP_BATCH`] changes,
    /// however far behind the subscriber is.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// How many times this subscriber fell so far behind that it had to be reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn catch_up(&mut self) {
        let snapshot = self.current.load_full();
        match snapshot.changes_after(self.last, CATCH_UP_BATCH) {
            Ok(changes) => {
                self.catching_up = changes.len() == CATCH_UP_BATCH;
                if let Some(last) = changes.last() {
                    self.last = last.seq;
                }
                self.pending.extend(changes.into_iter().map(Update::Change));
            }
            Err(reason) => {
                self.catching_up = false;
                self.resets += 1;
                self.last = snapshot.revision;
                self.pending.push_back(Update::Reset { snapshot, reason });
            }
        }
    }
}
