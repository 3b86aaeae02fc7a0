//! Keeping the registry's service list true: events as hints, polls as the authority.
//!
//! One task owns the conversation with the engine about services and is the only one that
//! folds what it learns. Requests to the engine run concurrently (at most one inspect per
//! service), but what they answer is applied in one order, that of the events that asked for
//! them ([`ApplyQueue`]): a change never overtakes the change of an earlier event, and a full
//! list is never folded over an inspect issued before it (the fold trusts a list over
//! anything it knows). The task reacts to:
//! - events: a service created or updated is inspected at once, or, while an inspect of it is
//!   in flight, once more when that completes; a removal is applied from the event itself; a
//!   task container starting or dying moves the running count at once ([`RunningCounts`]);
//! - a service whose container steps the manager has still not matched after
//!   [`SETTLED_AFTER`]: one settling inspect, whose count is then trusted (a step counted
//!   twice or missed is wrong for seconds at most, not until the next poll);
//! - the event stream ending or failing: reconnect after a backoff, resuming from the last
//!   event seen, then list everything to cover what the engine no longer replays, and list
//!   once more [`SETTLED_AFTER`] later, when the manager has surely counted the containers
//!   that started or died while the stream was being opened;
//! - the periodic poll: a full list; if it finds a difference no event announced, the stream
//!   is presumed stalled and reopened (the watchdog);
//! - refresh commands: one list answers every request waiting at that moment.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use pipeline::{Change, ChangeKind, Input, Registry, ServiceSpec, SourceStatus, Submitted};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::coalesce::{ApplyQueue, InspectOrder, Slot};
use super::config::SwarmConfig;
use super::engine::{Engine, EngineError, EngineEvent, EventCursor, EventSubject};
use super::running::{RunningCounts, SETTLED_AFTER};
use crate::backoff::Backoff;
use crate::control::{CommandReply, ControlError};
use crate::telemetry::SourceCounters;

type EventStream = BoxStream<'static, Result<EngineEvent, EngineError>>;

/// The registry's driver has gone: nothing left to keep up to date.
struct Stopped;

/// Why a full list is made; only lists made while the stream was open (periodic polls and
/// the recount after opening it) feed the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListReason {
    Poll,
    Reconnect,
    /// The second list after a reconnect, once the manager's counts have settled.
    Recount,
    Command,
}

/// A full list on its way: why it was made, when, and who waits for its revision.
struct ListRequest {
    reason: ListReason,
    started: Instant,
    replies: Vec<CommandReply>,
}

/// What a request to the engine answered, with what is needed to put it in its place.
enum Answer {
    Inspect {
        service_id: String,
        slot: Slot,
        result: Result<Option<ServiceSpec>, EngineError>,
    },
    List {
        slot: Slot,
        request: ListRequest,
        result: Result<Vec<ServiceSpec>, EngineError>,
    },
}

/// One thing to fold, in its place in the apply order.
enum Step {
    /// A service as an inspect found it; `None`: it no longer exists.
    Inspected {
        service_id: String,
        spec: Option<ServiceSpec>,
    },
    /// An event said the service was removed.
    Removed { service_id: String },
    /// A task container of the service started (+1) or died (-1) on this engine.
    Container { service_id: String, step: i64 },
    /// Every service, from a full list.
    Listed {
        specs: Vec<ServiceSpec>,
        request: ListRequest,
    },
    /// The engine failed: the source is unreachable. Ordered like the rest so that an
    /// earlier answer, applied later, does not mark the engine reachable again.
    Failed(String),
}

/// Services a poll found changed without any event about them, waiting for a short grace in
/// case their events are merely late.
struct Suspects {
    judge_at: Instant,
    list_started: Instant,
    ids: Vec<String>,
}

/// The service-list side of the Swarm source.
pub struct SyncLoop<E: Engine> {
    engine: Arc<E>,
    registry: Registry,
    counters: Arc<SourceCounters>,
    config: SwarmConfig,
    queue: ApplyQueue<Step>,
    /// Inspects and lists in flight.
    requests: FuturesUnordered<BoxFuture<'static, Answer>>,
    lists_in_flight: usize,
    counts: RunningCounts,
    backoff: Backoff,
    /// The last event seen: where the next subscription resumes.
    cursor: Option<EventCursor>,
    /// Where the current subscription resumed: events up to it were seen before (Docker's
    /// `since` is inclusive), so their container steps are not counted twice.
    resumed_from: Option<EventCursor>,
    events: Option<EventStream>,
    /// When to (re)open the event stream; `Some` exactly while it is closed.
    reconnect_at: Option<Instant>,
    /// When to list again after a reconnect's list, for the counts the manager had not
    /// caught up with at that list.
    recount_at: Option<Instant>,
    opened_before: bool,
    /// When an event last named each service, for the watchdog.
    last_hint: HashMap<String, Instant>,
    suspects: Option<Suspects>,
    /// The failure being reported, so a long outage is logged once, not once per retry.
    failure: Option<String>,
}

impl<E: Engine> SyncLoop<E> {
    pub fn new(
        engine: Arc<E>,
        registry: Registry,
        counters: Arc<SourceCounters>,
        config: SwarmConfig,
    ) -> Self {
        SyncLoop {
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            queue: ApplyQueue::new(),
            requests: FuturesUnordered::new(),
            lists_in_flight: 0,
            counts: RunningCounts::new(),
            engine,
            registry,
            counters,
            config,
            cursor: None,
            resumed_from: None,
            events: None,
            reconnect_at: Some(Instant::now()),
            recount_at: None,
            opened_before: false,
            last_hint: HashMap::new(),
            suspects: None,
            failure: None,
        }
    }

    /// Run until `shutdown` is cancelled or the registry stops.
    pub async fn run(
        mut self,
        mut refreshes: mpsc::Receiver<CommandReply>,
        shutdown: CancellationToken,
    ) {
        let period = self.config.refresh_interval;
        let mut poll = tokio::time::interval_at(Instant::now() + period, period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refreshes_open = true;
        loop {
            if self.apply_ready().await.is_err() {
                tracing::info!("registry stopped; the swarm source ends");
                return;
            }
            let judge_at = self.suspects.as_ref().map(|s| s.judge_at);
            let reconnect_at = self.reconnect_at;
            let settle_at = self.counts.next_settle();
            let recount_at = self.recount_at;
            // A list answers requests made before it was issued: one at a time, and those
            // arriving meanwhile share the next one.
            let listing = self.lists_in_flight > 0;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                Some(answer) = self.requests.next(), if !self.requests.is_empty() => {
                    self.on_answer(answer);
                }
                item = next_event(&mut self.events) => self.on_event(item),
                _ = sleep_until(reconnect_at) => self.reconnect().await,
                reply = refreshes.recv(), if refreshes_open && !listing => match reply {
                    Some(reply) => self.refresh(reply, &mut refreshes),
                    None => refreshes_open = false,
                },
                _ = poll.tick(), if !listing => self.poll(),
                _ = sleep_until(judge_at) => self.judge(),
                _ = sleep_until(settle_at) => self.settle(),
                _ = sleep_until(recount_at), if !listing => self.recount(),
            }
        }
    }

    fn on_event(&mut self, item: Option<Result<EngineEvent, EngineError>>) {
        let event = match item {
            None => {
                tracing::info!(
                    address = self.engine.address(),
                    "docker event stream ended; reopening"
                );
                self.close_events();
                return;
            }
            Some(Err(e)) => return self.on_failure(&e),
            Some(Ok(event)) => event,
        };
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        self.backoff.reset();
        if event.cursor > self.cursor {
            self.cursor = event.cursor;
        }
        let Some(id) = event.subject.service_id() else {
            return;
        };
        self.last_hint.insert(id.to_owned(), Instant::now());
        let replayed = event.cursor.is_some() && event.cursor <= self.resumed_from;
        match event.subject {
            EventSubject::ServiceChanged { service_id } => {
                if let Some(order) = self.queue.changed(&service_id) {
                    self.start_inspect(order);
                }
            }
            EventSubject::ServiceRemoved { service_id } => {
                let step = Step::Removed {
                    service_id: service_id.clone(),
                };
                self.queue.removed(&service_id, step);
            }
            EventSubject::TaskContainerStarted { service_id } if !replayed => {
                self.queue.push(Step::Container {
                    service_id,
                    step: 1,
                });
            }
            EventSubject::TaskContainerDied { service_id } if !replayed => {
                self.queue.push(Step::Container {
                    service_id,
                    step: -1,
                });
            }
            _ => {}
        }
    }

    fn start_inspect(&mut self, order: InspectOrder) {
        self.counters.inspects.fetch_add(1, Ordering::Relaxed);
        let engine = self.engine.clone();
        let InspectOrder { service_id, slot } = order;
        self.requests.push(
            async move {
                let result = engine.inspect_service(&service_id).await;
                Answer::Inspect {
                    service_id,
                    slot,
                    result,
                }
            }
            .boxed(),
        );
    }

    fn start_list(&mut self, reason: ListReason, replies: Vec<CommandReply>) {
        let slot = self.queue.list_issued();
        self.lists_in_flight += 1;
        let engine = self.engine.clone();
        let request = ListRequest {
            reason,
            started: Instant::now(),
            replies,
        };
        self.requests.push(
            async move {
                let result = engine.list_services().await;
                Answer::List {
                    slot,
                    request,
                    result,
                }
            }
            .boxed(),
        );
    }

    /// Put what the engine answered in its place; start a dirty service's trailing inspect.
    fn on_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Inspect {
                service_id,
                slot,
                result,
            } => {
                let step = match result {
                    Ok(spec) => Step::Inspected {
                        service_id: service_id.clone(),
                        spec,
                    },
                    Err(e) => {
                        self.on_failure(&e);
                        Step::Failed(e.to_string())
                    }
                };
                if let Some(order) = self.queue.inspected(&service_id, slot, Some(step)) {
                    self.start_inspect(order);
                }
            }
            Answer::List {
                slot,
                request,
                result,
            } => {
                self.lists_in_flight = self.lists_in_flight.saturating_sub(1);
                let step = match result {
                    Ok(specs) => {
                        // Dirty services are answered by the list, in their own places.
                        self.queue
                            .answer_bound(slot, |service_id, _| Step::Inspected {
                                service_id: service_id.to_owned(),
                                spec: specs.iter().find(|s| s.id == service_id).cloned(),
                            });
                        Step::Listed { specs, request }
                    }
                    Err(e) => {
                        self.on_failure(&e);
                        let outcome = Err(ControlError::Engine(e.to_string()));
                        for reply in request.replies {
                            let _ = reply.send(outcome.clone());
                        }
                        Step::Failed(e.to_string())
                    }
                };
                self.queue.list_completed(slot, Some(step));
            }
        }
    }

    /// Fold every step whose turn has come. The error means the registry is gone.
    async fn apply_ready(&mut self) -> Result<(), Stopped> {
        while let Some(step) = self.queue.pop() {
            self.apply(step).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, step: Step) -> Result<(), Stopped> {
        let now = Instant::now();
        match step {
            Step::Inspected {
                spec: Some(spec), ..
            } => {
                let spec = self.counts.reported(spec, now);
                self.submit(Input::Upsert(spec)).await?;
                self.on_contact();
            }
            Step::Inspected {
                service_id,
                spec: None,
            }
            | Step::Removed { service_id } => {
                self.counts.forget(&service_id);
                self.submit(Input::Remove { id: service_id }).await?;
                self.on_contact();
            }
            Step::Container { service_id, step } => {
                if let Some(running) = self.counts.container_step(&service_id, step, now) {
                    self.submit(Input::RunningTasks {
                        service_id,
                        running,
                    })
                    .await?;
                }
            }
            Step::Listed { specs, request } => {
                let specs: Vec<ServiceSpec> = specs
                    .into_iter()
                    .map(|spec| self.counts.reported(spec, now))
                    .collect();
                let ids: HashSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
                self.counts.keep_only(&ids);
                let listed = specs.len();
                let submitted = self.submit(Input::FullList(specs)).await?;
                self.counters.full_lists.fetch_add(1, Ordering::Relaxed);
                if listed >= crate::memory::TRIM_AFTER_LIST_OF {
                    // The list's parse and its fold are freed by now.
                    tokio::task::spawn_blocking(crate::memory::return_free_pages);
                }
                self.on_contact();
                if matches!(request.reason, ListReason::Poll | ListReason::Recount)
                    && self.events.is_some()
                {
                    self.watch(&submitted.changes, request.started);
                }
                if request.reason == ListReason::Reconnect {
                    self.recount_at = Some(now + SETTLED_AFTER);
                }
                for reply in request.replies {
                    let _ = reply.send(Ok(submitted.revision));
                }
            }
            Step::Failed(reason) => {
                self.on_failure_applied(&reason);
                self.submit(Input::SourceStatus(SourceStatus::Unreachable { reason }))
                    .await?;
            }
        }
        Ok(())
    }

    /// Open the event stream (resuming after the last event seen), then list everything.
    async fn reconnect(&mut self) {
        self.reconnect_at = None;
        let identity = match self.engine.identify().await {
            Ok(identity) => identity,
            Err(e) => {
                self.on_failure(&e);
                self.queue.push(Step::Failed(e.to_string()));
                return;
            }
        };
        if self.opened_before {
            self.counters
                .event_reconnects
                .fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::info!(
                address = self.engine.address(),
                api_version = %identity.api_version,
                node = %identity.node_id,
                "connected to the swarm manager"
            );
        }
        // Without any event seen yet there is nothing to resume; the list below covers the
        // past, and `now` closes the gap between the list and the subscription.
        let since = self.cursor.unwrap_or_else(EventCursor::now);
        self.events = Some(self.engine.events(Some(since)));
        self.resumed_from = self.cursor;
        self.opened_before = true;
        self.suspects = None;
        self.start_list(ListReason::Reconnect, Vec::new());
    }

    /// Inspect the services whose uncounted container steps have settled.
    fn settle(&mut self) {
        for service_id in self.counts.due_to_settle(Instant::now()) {
            self.counters
                .settle_inspects
                .fetch_add(1, Ordering::Relaxed);
            if let Some(order) = self.queue.changed(&service_id) {
                self.start_inspect(order);
            }
        }
    }

    fn recount(&mut self) {
        self.recount_at = None;
        if self.events.is_some() {
            self.start_list(ListReason::Recount, Vec::new());
        }
    }

    fn poll(&mut self) {
        if self.events.is_none() {
            return; // reconnecting: its own list follows
        }
        let horizon = self.config.refresh_interval * 2;
        let now = Instant::now();
        self.last_hint
            .retain(|_, t| now.saturating_duration_since(*t) < horizon);
        self.start_list(ListReason::Poll, Vec::new());
    }

    /// Answer this refresh request and every other one already waiting, with one list.
    fn refresh(&mut self, first: CommandReply, more: &mut mpsc::Receiver<CommandReply>) {
        let mut replies = vec![first];
        while let Ok(reply) = more.try_recv() {
            replies.push(reply);
        }
        self.start_list(ListReason::Command, replies);
    }

    /// After a poll: note the services whose spec changed (or which appeared or vanished)
    /// without any event about them, from the changes the list's transition emitted.
    fn watch(&mut self, changes: &[Arc<Change>], list_started: Instant) {
        let ids: Vec<String> = changes
            .iter()
            .filter_map(|c| match &c.kind {
                ChangeKind::ServiceAdded { service } => Some(service.entry.id.clone()),
                // Task counts move without service events (containers on other nodes): only
                // a new spec version is something the stream must have announced.
                ChangeKind::ServiceUpdated {
                    service,
                    changed_fields,
                } if changed_fields.contains(&"version") => Some(service.entry.id.clone()),
                ChangeKind::ServiceRemoved { id, .. } => Some(id.clone()),
                _ => None,
            })
            .filter(|id| !self.announced(id, list_started))
            .collect();
        if ids.is_empty() {
            return;
        }
        match &mut self.suspects {
            // The earlier verdict stands and takes the new suspects along: replacing it would
            // move its deadline out at every poll, so under steady churn with polls as frequent
            // as the grace a stalled stream would never be judged.
            Some(earlier) => {
                earlier.ids.extend(ids);
                earlier.ids.sort_unstable();
                earlier.ids.dedup();
            }
            None => {
                self.suspects = Some(Suspects {
                    judge_at: Instant::now() + self.config.watchdog_grace,
                    list_started,
                    ids,
                })
            }
        }
    }

    /// Whether events named `id` recently enough to explain a difference a list found.
    fn announced(&self, id: &str, list_started: Instant) -> bool {
        self.queue.is_pending(id)
            || self
                .last_hint
                .get(id)
                .is_some_and(|t| *t + self.config.watchdog_grace >= list_started)
    }

    fn judge(&mut self) {
        let Some(suspects) = self.suspects.take() else {
            return;
        };
        let silent = suspects
            .ids
            .iter()
            .filter(|id| !self.announced(id, suspects.list_started))
            .count();
        if silent == 0 || self.events.is_none() {
            return;
        }
        self.counters.event_stalls.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            address = self.engine.address(),
            services = silent,
            "a poll found changes the docker event stream never reported; restarting the stream"
        );
        self.events = None;
        self.queue.drop_trailing();
        self.reconnect_at = Some(Instant::now());
    }

    /// The stream is gone: inspects not started yet are left to the reconnect's full list.
    fn close_events(&mut self) {
        self.events = None;
        self.queue.drop_trailing();
        if self.reconnect_at.is_none() {
            let pause = self.backoff.next(rand::random::<f64>());
            self.reconnect_at = Some(Instant::now() + pause);
        }
    }

    /// The engine failed: count it and reconnect after a backoff, keeping every known
    /// service. The caller puts the failure in its place in the apply order, where it is
    /// logged and becomes the source's status.
    fn on_failure(&mut self, _e: &EngineError) {
        self.counters.engine_errors.fetch_add(1, Ordering::Relaxed);
        self.close_events();
    }

    /// A failure's turn has come: log it (only a change of failure, so a long outage is
    /// logged once, not once per retry).
    fn on_failure_applied(&mut self, reason: &str) {
        if self.failure.as_deref() != Some(reason) {
            tracing::warn!("{reason}; keeping the last known services, marked stale");
            self.failure = Some(reason.to_owned());
        }
    }

    fn on_contact(&mut self) {
        if self.failure.take().is_some() {
            tracing::info!(
                address = self.engine.address(),
                "docker engine answers again"
            );
        }
    }

    /// Fold `input`; the answer carries the changes it caused. The future does not borrow the
    /// loop (whose event stream is not `Sync`), so the loop's futures stay `Send`.
    fn submit(
        &self,
        input: Input,
    ) -> impl std::future::Future<Output = Result<Submitted, Stopped>> + Send + 'static {
        let registry = self.registry.clone();
        async move {
            registry
                .submit_with_changes(input)
                .await
                .map_err(|_| Stopped)
        }
    }
}

async fn next_event(events: &mut Option<EventStream>) -> Option<Result<EngineEvent, EngineError>> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
