//! Keeping the registry's service list true: events as hints, polls as the authority.
//!
//! One task owns the conversation with the engine about services, so a full list is never
//! answered before an inspect that was issued earlier and folded later (the fold trusts a list
//! over anything it knows). It reacts to:
//! - events: the first event for a quiet service inspects it at once, bursts coalesce
//!   ([`Coalescer`]);
//! - the event stream ending or failing: reconnect after a backoff, resuming from the last
//!   event seen, then list everything to cover what the engine no longer replays;
//! - the periodic poll: a full list; if it finds a difference no event announced, the stream
//!   is presumed stalled and reopened (the watchdog);
//! - refresh commands: one list answers every request waiting at that moment.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use pipeline::{Change, ChangeKind, Input, Registry, SourceStatus, Submitted};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::coalesce::{Coalescer, Verdict};
use super::config::SwarmConfig;
use super::engine::{Engine, EngineError, EngineEvent, EventCursor};
use crate::backoff::Backoff;
use crate::control::{CommandReply, ControlError};
use crate::telemetry::SourceCounters;

type EventStream = BoxStream<'static, Result<EngineEvent, EngineError>>;

/// The registry's driver has gone: nothing left to keep up to date.
struct Stopped;

/// Why a full list is made; only periodic polls feed the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListReason {
    Poll,
    Reconnect,
    Command,
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
    coalescer: Coalescer,
    backoff: Backoff,
    /// The last event seen: where the next subscription resumes.
    cursor: Option<EventCursor>,
    events: Option<EventStream>,
    /// When to (re)open the event stream; `Some` exactly while it is closed.
    reconnect_at: Option<Instant>,
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
            coalescer: Coalescer::new(config.debounce_quiet, config.debounce_max),
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            engine,
            registry,
            counters,
            config,
            cursor: None,
            events: None,
            reconnect_at: Some(Instant::now()),
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
            let coalesce_at = self.coalescer.next_deadline();
            let judge_at = self.suspects.as_ref().map(|s| s.judge_at);
            let reconnect_at = self.reconnect_at;
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                item = next_event(&mut self.events) => self.on_event(item).await,
                _ = sleep_until(reconnect_at) => self.reconnect().await,
                _ = sleep_until(coalesce_at) => self.inspect_due().await,
                reply = refreshes.recv(), if refreshes_open => match reply {
                    Some(reply) => self.refresh(reply, &mut refreshes).await,
                    None => {
                        refreshes_open = false;
                        Ok(())
                    }
                },
                _ = poll.tick() => self.poll().await,
                _ = sleep_until(judge_at) => {
                    self.judge();
                    Ok(())
                }
            };
            if step.is_err() {
                tracing::info!("registry stopped; the swarm source ends");
                return;
            }
        }
    }

    async fn on_event(
        &mut self,
        item: Option<Result<EngineEvent, EngineError>>,
    ) -> Result<(), Stopped> {
        match item {
            None => {
                tracing::info!(
                    address = self.engine.address(),
                    "docker event stream ended; reopening"
                );
                self.close_events();
                Ok(())
            }
            Some(Err(e)) => self.on_failure(&e).await,
            Some(Ok(event)) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                if event.cursor > self.cursor {
                    self.cursor = event.cursor;
                }
                let Some(id) = event.service_id else {
                    return Ok(());
                };
                let now = Instant::now();
                self.last_hint.insert(id.clone(), now);
                match self.coalescer.note(&id, now) {
                    Verdict::InspectNow => self.inspect(&id).await,
                    Verdict::Deferred => Ok(()),
                }
            }
        }
    }

    async fn inspect_due(&mut self) -> Result<(), Stopped> {
        for id in self.coalescer.take_due(Instant::now()) {
            self.inspect(&id).await?;
            if self.events.is_none() {
                break; // the engine failed; the reconnect's full list covers the rest
            }
        }
        Ok(())
    }

    async fn inspect(&mut self, id: &str) -> Result<(), Stopped> {
        self.counters.inspects.fetch_add(1, Ordering::Relaxed);
        let input = match self.engine.inspect_service(id).await {
            Ok(Some(spec)) => Input::Upsert(spec),
            Ok(None) => Input::Remove { id: id.to_owned() },
            Err(e) => return self.on_failure(&e).await,
        };
        self.submit(input).await?;
        self.on_contact();
        Ok(())
    }

    /// Open the event stream (resuming after the last event seen), then list everything.
    async fn reconnect(&mut self) -> Result<(), Stopped> {
        self.reconnect_at = None;
        let identity = match self.engine.identify().await {
            Ok(identity) => identity,
            Err(e) => return self.on_failure(&e).await,
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
        self.opened_before = true;
        self.coalescer.clear();
        self.suspects = None;
        let _ = self.full_list(ListReason::Reconnect).await?;
        Ok(())
    }

    async fn poll(&mut self) -> Result<(), Stopped> {
        if self.events.is_none() {
            return Ok(()); // reconnecting: its own list follows
        }
        let horizon = self.config.refresh_interval * 2;
        let now = Instant::now();
        self.last_hint
            .retain(|_, t| now.saturating_duration_since(*t) < horizon);
        let _ = self.full_list(ListReason::Poll).await?;
        Ok(())
    }

    /// Answer this refresh request and every other one already waiting, with one list.
    async fn refresh(
        &mut self,
        first: CommandReply,
        more: &mut mpsc::Receiver<CommandReply>,
    ) -> Result<(), Stopped> {
        let mut replies = vec![first];
        while let Ok(reply) = more.try_recv() {
            replies.push(reply);
        }
        let outcome = self
            .full_list(ListReason::Command)
            .await?
            .map_err(|e| ControlError::Engine(e.to_string()));
        for reply in replies {
            let _ = reply.send(outcome.clone());
        }
        Ok(())
    }

    /// List every service and fold the list. The outer error means the registry is gone.
    async fn full_list(&mut self, reason: ListReason) -> Result<Result<u64, EngineError>, Stopped> {
        let started = Instant::now();
        let specs = match self.engine.list_services().await {
            Ok(specs) => specs,
            Err(e) => {
                self.on_failure(&e).await?;
                return Ok(Err(e));
            }
        };
        let submitted = self.submit(Input::FullList(specs)).await?;
        self.counters.full_lists.fetch_add(1, Ordering::Relaxed);
        self.on_contact();
        if reason == ListReason::Poll && self.events.is_some() {
            self.watch(&submitted.changes, started);
        }
        Ok(Ok(submitted.revision))
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
        if !ids.is_empty() {
            self.suspects = Some(Suspects {
                judge_at: Instant::now() + self.config.watchdog_grace,
                list_started,
                ids,
            });
        }
    }

    /// Whether events named `id` recently enough to explain a difference a list found.
    fn announced(&self, id: &str, list_started: Instant) -> bool {
        let window = self.config.debounce_max + self.config.watchdog_grace;
        self.coalescer.is_pending(id)
            || self
                .last_hint
                .get(id)
                .is_some_and(|t| *t + window >= list_started)
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
        self.reconnect_at = Some(Instant::now());
    }

    fn close_events(&mut self) {
        self.events = None;
        self.coalescer.clear();
        if self.reconnect_at.is_none() {
            let pause = self.backoff.next(rand::random::<f64>());
            self.reconnect_at = Some(Instant::now() + pause);
        }
    }

    /// The engine failed: report it (logging only a change of failure), keep every known
    /// service, and reconnect after a backoff.
    async fn on_failure(&mut self, e: &EngineError) -> Result<(), Stopped> {
        self.counters.engine_errors.fetch_add(1, Ordering::Relaxed);
        let reason = e.to_string();
        if self.failure.as_deref() != Some(reason.as_str()) {
            tracing::warn!("{reason}; keeping the last known services, marked stale");
            self.failure = Some(reason.clone());
        }
        self.close_events();
        self.submit(Input::SourceStatus(SourceStatus::Unreachable { reason }))
            .await
            .map(|_| ())
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
