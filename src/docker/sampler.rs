//! The sampler: the load of registered services, from container stats.
//!
//! A round lists each service's running tasks, reads the stats of all their containers at
//! once (bounded concurrency, each call bounded in time), and folds one metrics input per
//! service. CPU % needs two readings of a container: the previous round's when there is one
//! (so the figure covers the whole interval), otherwise a second reading a short window later.
//! A forced sample of one service always uses a fresh short window, so it answers in well
//! under a second with figures about now.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use pipeline::{Input, Metrics, Registry, Timestamp, UnsampledTask};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::config::SwarmConfig;
use super::engine::{Engine, EngineError, RunningTask, StatsReading};
use super::stats::{summarize, task_figures, ReadingCache, TaskFigures};
use crate::control::{ControlError, SampleRequest};
use crate::telemetry::SourceCounters;

/// One service's outcome of a sampling pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSample {
    pub service_id: String,
    /// `Err` when its tasks could not be listed: its previous metrics stay as they are.
    pub metrics: Result<Option<Metrics>, EngineError>,
}

/// What the sampler needs, cheap to clone into forced-sample tasks.
pub struct Sampler<E: Engine> {
    engine: Arc<E>,
    counters: Arc<SourceCounters>,
    concurrency: usize,
    window: std::time::Duration,
    timeout: std::time::Duration,
}

impl<E: Engine> Clone for Sampler<E> {
    fn clone(&self) -> Self {
        Sampler {
            engine: self.engine.clone(),
            counters: self.counters.clone(),
            concurrency: self.concurrency,
            window: self.window,
            timeout: self.timeout,
        }
    }
}

impl<E: Engine> Sampler<E> {
    pub fn new(engine: Arc<E>, counters: Arc<SourceCounters>, config: &SwarmConfig) -> Self {
        Sampler {
            engine,
            counters,
            concurrency: config.stats_concurrency.max(1),
            window: config.stats_window,
            timeout: config.stats_timeout,
        }
    }

    /// Sample `services` (ids). Readings in `previous` are used as the earlier half of a CPU
    /// delta; the readings taken are returned for the next round.
    pub async fn sample(
        &self,
        services: &[String],
        previous: &ReadingCache,
    ) -> Result<(Vec<ServiceSample>, BTreeMap<String, StatsReading>), EngineError> {
        let local_node = self.engine.identify().await?.node_id;
        let engine = &self.engine;
        let listed: Vec<(String, Result<Vec<RunningTask>, EngineError>)> =
            futures::stream::iter(services.iter().cloned())
                .map(|id| async move {
                    let tasks = engine.running_tasks(&id).await;
                    (id, tasks)
                })
                .buffered(self.concurrency)
                .collect()
                .await;

        // Which containers to read, and which tasks cannot be read at all.
        let mut unsampled: BTreeMap<String, Vec<UnsampledTask>> = BTreeMap::new();
        let mut to_read: Vec<(String, RunningTask, String)> = Vec::new();
        for (service, tasks) in &listed {
            let Ok(tasks) = tasks else { continue };
            for task in tasks {
                let skip = |reason: String| UnsampledTask {
                    task_id: task.task_id.clone(),
                    reason,
                };
                match &task.container_id {
                    _ if task.node_id != local_node => unsampled
                        .entry(service.clone())
                        .or_default()
                        .push(skip(format!(
                            "runs on node {}; stats are only available from the engine this registry talks to",
                            task.node_id
                        ))),
                    None => unsampled
                        .entry(service.clone())
                        .or_default()
                        .push(skip("its container has not been created yet".to_owned())),
                    Some(container) => {
                        to_read.push((service.clone(), task.clone(), container.clone()))
                    }
                }
            }
        }

        let containers: Vec<String> = to_read.iter().map(|(_, _, c)| c.clone()).collect();
        let first = self.read_all(&containers).await;
        let need_second: Vec<String> = containers
            .iter()
            .filter(|c| match (first.get(*c), previous.get(c)) {
                (Some(Ok(now)), Some(before)) => before.taken_at >= now.taken_at,
                (Some(Ok(_)), None) => true,
                _ => false,
            })
            .cloned()
            .collect();
        let second = if need_second.is_empty() {
            BTreeMap::new()
        } else {
            tokio::time::sleep(self.window).await;
            self.read_all(&need_second).await
        };

        let mut figures: BTreeMap<String, Vec<TaskFigures>> = BTreeMap::new();
        let mut latest = BTreeMap::new();
        for (service, task, container) in &to_read {
            let pair = match (first.get(container), second.get(container)) {
                (Some(Ok(a)), Some(Ok(b))) => Ok((*a, *b)),
                (Some(Ok(a)), None) => previous
                    .get(container)
                    .map(|p| (*p, *a))
                    .ok_or_else(|| "no earlier reading".to_owned()),
                (Some(Err(e)), _) | (_, Some(Err(e))) => Err(format!("stats failed: {e}")),
                (None, _) => Err("not read".to_owned()),
            };
            let outcome = pair.and_then(|(earlier, later)| {
                latest.insert(container.clone(), later);
                task_figures(&earlier, &later, task.memory_limit)
            });
            match outcome {
                Ok(f) => figures.entry(service.clone()).or_default().push(f),
                Err(reason) => unsampled
                    .entry(service.clone())
                    .or_default()
                    .push(UnsampledTask {
                        task_id: task.task_id.clone(),
                        reason,
                    }),
            }
        }

        let at = Timestamp::now();
        let samples = listed
            .into_iter()
            .map(|(service, tasks)| {
                let metrics = tasks.map(|tasks| {
                    summarize(
                        figures.get(&service).map(Vec::as_slice).unwrap_or(&[]),
                        unsampled.remove(&service).unwrap_or_default(),
                        tasks.len() as u64,
                        at,
                    )
                });
                ServiceSample {
                    service_id: service,
                    metrics,
                }
            })
            .collect();
        Ok((samples, latest))
    }

    async fn read_all(
        &self,
        containers: &[String],
    ) -> BTreeMap<String, Result<StatsReading, EngineError>> {
        let engine = &self.engine;
        let counters = &self.counters;
        let timeout = self.timeout;
        futures::stream::iter(containers.iter().cloned())
            .map(|c| async move {
                let reading = tokio::time::timeout(timeout, engine.container_stats(&c))
                    .await
                    .unwrap_or_else(|_| {
                        Err(EngineError::Unreachable {
                            address: engine.address().to_owned(),
                            detail: format!("no stats answer within {timeout:?}"),
                        })
                    });
                counters.stats_samples.fetch_add(1, Ordering::Relaxed);
                if reading.is_err() {
                    counters.stats_failures.fetch_add(1, Ordering::Relaxed);
                }
                (c, reading)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }

    /// Sample one registered service (by name) now and fold the result; the revision at
    /// which it is readable.
    pub async fn sample_one(&self, registry: &Registry, name: &str) -> Result<u64, ControlError> {
        let id = registry
            .load()
            .services
            .get(name)
            .map(|r| r.entry.id.clone())
            .ok_or(ControlError::UnknownService)?;
        let (samples, _) = self
            .sample(std::slice::from_ref(&id), &ReadingCache::default())
            .await
            .map_err(|e| ControlError::Engine(e.to_string()))?;
        let metrics = samples
            .into_iter()
            .next()
            .map(|s| s.metrics)
            .unwrap_or(Ok(None))
            .map_err(|e| ControlError::Engine(e.to_string()))?;
        registry
            .submit(Input::Metrics {
                service_id: id,
                metrics,
            })
            .await
            .map_err(|_| ControlError::SourceStopped)
    }
}

/// The periodic rounds and the forced samples.
pub struct SamplingLoop<E: Engine> {
    sampler: Sampler<E>,
    registry: Registry,
    interval: std::time::Duration,
    cache: ReadingCache,
    /// The failure being reported, so it is logged once.
    failure: Option<String>,
}

impl<E: Engine> SamplingLoop<E> {
    pub fn new(sampler: Sampler<E>, registry: Registry, config: &SwarmConfig) -> Self {
        SamplingLoop {
            sampler,
            registry,
            interval: config.metrics_interval,
            cache: ReadingCache::default(),
            failure: None,
        }
    }

    /// Run until `shutdown`. The first round starts as soon as the first full list is folded.
    pub async fn run(
        mut self,
        requests: mpsc::Receiver<SampleRequest>,
        shutdown: CancellationToken,
    ) {
        // Forced samples are answered by their own tasks, so a long round never delays them.
        let forced = tokio::spawn(serve_forced(
            self.sampler.clone(),
            self.registry.clone(),
            requests,
            shutdown.clone(),
        ));
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut first_sync = tokio::time::interval(std::time::Duration::from_millis(50));
        // Wait for the first full list: before it there is nothing to sample.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = first_sync.tick() => {
                    if self.registry.load().last_full_sync.is_some() {
                        break;
                    }
                }
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        stop = self.round() => if stop.is_err() { break },
                    }
                }
            }
        }
        let _ = forced.await;
    }

    async fn round(&mut self) -> Result<(), pipeline::RegistryStopped> {
        let started = Instant::now();
        let services: Vec<String> = self
            .registry
            .load()
            .ids
            .keys()
            .map(|id| id.to_string())
            .collect();
        let (samples, latest) = match self.sampler.sample(&services, &self.cache).await {
            Ok(result) => result,
            Err(e) => {
                let reason = e.to_string();
                if self.failure.as_deref() != Some(reason.as_str()) {
                    tracing::warn!("metrics round skipped: {reason}");
                    self.failure = Some(reason);
                }
                return Ok(());
            }
        };
        self.failure = None;
        self.cache.replace(latest);
        let mut failed = 0;
        for sample in samples {
            match sample.metrics {
                Ok(metrics) => {
                    self.registry
                        .send(Input::Metrics {
                            service_id: sample.service_id,
                            metrics,
                        })
                        .await?;
                }
                Err(_) => failed += 1,
            }
        }
        tracing::debug!(
            services = services.len(),
            failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metrics round done"
        );
        Ok(())
    }
}

async fn serve_forced<E: Engine>(
    sampler: Sampler<E>,
    registry: Registry,
    mut requests: mpsc::Receiver<SampleRequest>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = requests.recv() => request,
        };
        let Some(SampleRequest { service, done }) = request else {
            return;
        };
        let sampler = sampler.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                outcome = sampler.sample_one(&registry, &service) => {
                    let _ = done.send(outcome);
                }
            }
        });
    }
}
