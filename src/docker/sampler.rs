//! The sampler: the load of registered services, merged from every node's latest readings.
//!
//! A round lists each service's running tasks (the manager knows them all, with their nodes)
//! and looks each task up on the board of node readings ([`NodeReadings`]), where the node
//! samplers (the registry's own and one agent per other node) keep the figures of their
//! latest interval. It folds one metrics input per service. A task whose node has no live
//! sampler, or that its node could not measure, is listed unsampled with the reason. A forced
//! sample is the same for one service: one task list and lookups, no waiting on stats.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use pipeline::{Input, Metrics, Registry, Timestamp, UnsampledTask};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::config::SwarmConfig;
use super::engine::{Engine, EngineError, RunningTask};
use super::readings::{NodeReadings, TaskLookup};
use super::stats::{summarize, TaskFigures};
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
}

impl<E: Engine> Clone for Sampler<E> {
    fn clone(&self) -> Self {
        Sampler {
            engine: self.engine.clone(),
            counters: self.counters.clone(),
            concurrency: self.concurrency,
        }
    }
}

impl<E: Engine> Sampler<E> {
    pub fn new(engine: Arc<E>, counters: Arc<SourceCounters>, config: &SwarmConfig) -> Self {
        Sampler {
            engine,
            counters,
            concurrency: config.stats_concurrency.max(1),
        }
    }

    fn board(&self) -> &NodeReadings {
        &self.counters.nodes
    }

    /// Sample `services` (ids) from the board.
    pub async fn sample(&self, services: &[String]) -> Vec<ServiceSample> {
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
        let at = Timestamp::now();
        listed
            .into_iter()
            .map(|(service_id, tasks)| ServiceSample {
                metrics: tasks.map(|tasks| self.merge(&tasks, at)),
                service_id,
            })
            .collect()
    }

    /// One service's metrics from its running tasks' readings.
    fn merge(&self, tasks: &[RunningTask], at: Timestamp) -> Option<Metrics> {
        let mut sampled = Vec::new();
        let mut unsampled = Vec::new();
        for task in tasks {
            let mut skip = |reason: String| {
                unsampled.push(UnsampledTask {
                    task_id: task.task_id.clone(),
                    reason,
                })
            };
            if task.container_id.is_none() {
                skip("its container has not been created yet".to_owned());
                continue;
            }
            match self.board().lookup(&task.node_id, &task.task_id) {
                TaskLookup::Reading(r) => {
                    let memory_limit = task.memory_limit.or(r.memory_limit);
                    sampled.push(TaskFigures {
                        cpu_pct: r.cpu_pct,
                        memory_used: r.memory_bytes,
                        memory_limit,
                        window_secs: r.window_ms as f64 / 1000.0,
                    })
                }
                TaskLookup::Failed(reason) => skip(reason),
                TaskLookup::NotReported => skip(format!(
                    "no reading yet from node {} (measured from its next interval on)",
                    task.node_id
                )),
                TaskLookup::NoAgent => skip(format!("no agent on node {}", task.node_id)),
            }
        }
        summarize(&sampled, unsampled, tasks.len() as u64, at)
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
        let samples = self.sample(std::slice::from_ref(&id)).await;
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
}

impl<E: Engine> SamplingLoop<E> {
    pub fn new(sampler: Sampler<E>, registry: Registry, config: &SwarmConfig) -> Self {
        SamplingLoop {
            sampler,
            registry,
            interval: config.metrics_interval,
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
        // Readings of services that are gone are dropped with them.
        self.sampler
            .board()
            .retain_services(&services.iter().cloned().collect::<HashSet<String>>());
        let samples = self.sampler.sample(&services).await;
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
