//! The node sampler: keeps the running tasks of registered services on one node measured
//! continuously, so their latest figures are always at hand.
//!
//! Every interval (NODE_SAMPLE_INTERVAL_MS) a step lists the engine's task containers, reads
//! the counters of those whose service is wanted, and turns each container's last two
//! readings into CPU % over the latest interval and memory in use. Counters come from the
//! container's cgroup when the cgroup file system is visible (microseconds per container),
//! else from Docker's stats API (bounded concurrency, each call bounded in time; the engine
//! answers on its one-second tick). The registry runs one in process for its own node; the
//! `agent` command runs one on every other node and posts each step's report.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::cgroup::{CgroupFiles, CgroupRoot};
use super::engine::{Engine, EngineError, StatsReading, TaskContainer};
use super::readings::{NodeReport, TaskFailure, TaskReading};
use super::stats::task_figures;
use crate::backoff::Backoff;
use crate::telemetry::SourceCounters;

/// How a container's counters are read.
#[derive(Debug, Clone)]
enum Reader {
    Cgroup(CgroupFiles),
    DockerStats,
}

impl Reader {
    fn name(&self) -> &'static str {
        match self {
            Reader::Cgroup(_) => "cgroup",
            Reader::DockerStats => "docker-stats",
        }
    }
}

struct Tracked {
    task: TaskContainer,
    reader: Reader,
    memory_limit: Option<u64>,
    last: Option<StatsReading>,
}

/// How a node sampler reads and paces.
#[derive(Debug, Clone)]
pub struct NodeSamplerConfig {
    pub interval: Duration,
    /// The cgroup file system, or `None` to use Docker's stats only.
    pub cgroup_root: Option<CgroupRoot>,
    /// Docker stats calls in flight at once, and the bound on each.
    pub stats_concurrency: usize,
    pub stats_timeout: Duration,
}

/// One node's sampler and what it remembers between steps.
pub struct NodeSampler<E: Engine> {
    engine: Arc<E>,
    config: NodeSamplerConfig,
    counters: Arc<SourceCounters>,
    tracked: HashMap<String, Tracked>,
    /// The zero of cgroup readings' host clock (see [`cgroup_reading`]).
    origin: Instant,
}

impl<E: Engine> NodeSampler<E> {
    pub fn new(engine: Arc<E>, config: NodeSamplerConfig, counters: Arc<SourceCounters>) -> Self {
        let cgroup_root = config.cgroup_root.filter(CgroupRoot::is_visible);
        NodeSampler {
            engine,
            config: NodeSamplerConfig {
                cgroup_root,
                ..config
            },
            counters,
            tracked: HashMap::new(),
            origin: Instant::now(),
        }
    }

    /// Whether counters come from the cgroup file system (else from Docker's stats).
    pub fn reads_cgroups(&self) -> bool {
        self.config.cgroup_root.is_some()
    }

    /// One step: the figures of every running task of a `wanted` service on this node.
    pub async fn step(
        &mut self,
        node_id: &str,
        wanted: &HashSet<String>,
    ) -> Result<NodeReport, EngineError> {
        let containers = self.engine.task_containers().await?;
        let current: HashMap<String, TaskContainer> = containers
            .into_iter()
            .filter(|c| wanted.contains(&c.service_id))
            .map(|c| (c.container_id.clone(), c))
            .collect();
        self.tracked.retain(|id, _| current.contains_key(id));

        let mut failures = Vec::new();
        let new: Vec<TaskContainer> = current
            .values()
            .filter(|c| !self.tracked.contains_key(&c.container_id))
            .cloned()
            .collect();
        let engine = &self.engine;
        let inspected: Vec<_> = futures::stream::iter(new)
            .map(|task| async move {
                let cgroup = engine.container_cgroup(&task.container_id).await;
                (task, cgroup)
            })
            .buffer_unordered(self.config.stats_concurrency.max(1))
            .collect()
            .await;
        for (task, cgroup) in inspected {
            match cgroup {
                Ok(cgroup) => {
                    let reader = self
                        .config
                        .cgroup_root
                        .as_ref()
                        .and_then(|root| {
                            root.locate(&task.container_id, cgroup.cgroup_parent.as_deref())
                        })
                        .map_or(Reader::DockerStats, Reader::Cgroup);
                    self.tracked.insert(
                        task.container_id.clone(),
                        Tracked {
                            task,
                            reader,
                            memory_limit: cgroup.memory_limit,
                            last: None,
                        },
                    );
                }
                // Gone between the list and the inspect, or the engine failed: next step.
                Err(e) => failures.push(TaskFailure {
                    task_id: task.task_id,
                    service_id: task.service_id,
                    reason: format!("inspect failed: {e}"),
                }),
            }
        }

        let fresh = self.read_all().await;
        let mut readings = Vec::new();
        for (container, outcome) in fresh {
            let Some(tracked) = self.tracked.get_mut(&container) else {
                continue;
            };
            let fail = |reason: String| TaskFailure {
                task_id: tracked.task.task_id.clone(),
                service_id: tracked.task.service_id.clone(),
                reason,
            };
            let now = match outcome {
                Ok(now) => now,
                Err(reason) => {
                    failures.push(fail(reason));
                    continue;
                }
            };
            let Some(earlier) = tracked.last.replace(now) else {
                // The first reading of a container: its figures come with the next step.
                continue;
            };
            match task_figures(&earlier, &now, tracked.memory_limit) {
                Ok(figures) => readings.push(TaskReading {
                    task_id: tracked.task.task_id.clone(),
                    service_id: tracked.task.service_id.clone(),
                    cpu_pct: figures.cpu_pct,
                    memory_bytes: figures.memory_used,
                    memory_limit: tracked.memory_limit,
                    window_ms: (figures.window_secs * 1000.0).round() as u64,
                    via: tracked.reader.name().to_owned(),
                }),
                Err(reason) => failures.push(fail(reason)),
            }
        }
        readings.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        failures.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(NodeReport {
            node_id: node_id.to_owned(),
            interval_ms: u64::try_from(self.config.interval.as_millis()).unwrap_or(u64::MAX),
            readings,
            failures,
        })
    }

    /// A reading of every tracked container: cgroup files at once, Docker stats concurrently.
    async fn read_all(&self) -> Vec<(String, Result<StatsReading, String>)> {
        let mut out = Vec::with_capacity(self.tracked.len());
        let mut via_stats = Vec::new();
        for (id, tracked) in &self.tracked {
            match &tracked.reader {
                Reader::Cgroup(files) => {
                    let reading = files
                        .read()
                        .map(|c| cgroup_reading(self.origin, c.cpu_nanos, c.memory_used))
                        .map_err(|e| format!("cgroup read failed: {e}"));
                    out.push((id.clone(), reading));
                }
                Reader::DockerStats => via_stats.push(id.clone()),
            }
        }
        let engine = &self.engine;
        let counters = &self.counters;
        let timeout = self.config.stats_timeout;
        let from_stats: Vec<_> = futures::stream::iter(via_stats)
            .map(|id| async move {
                let reading = match tokio::time::timeout(timeout, engine.container_stats(&id)).await
                {
                    Ok(Ok(reading)) => Ok(reading),
                    Ok(Err(e)) => Err(format!("stats failed: {e}")),
                    Err(_) => Err(format!("no stats answer within {timeout:?}")),
                };
                counters.stats_samples.fetch_add(1, Ordering::Relaxed);
                if reading.is_err() {
                    counters.stats_failures.fetch_add(1, Ordering::Relaxed);
                }
                (id, reading)
            })
            .buffer_unordered(self.config.stats_concurrency.max(1))
            .collect()
            .await;
        out.extend(from_stats);
        out
    }

    /// Learn this engine's node id, then step every interval until `shutdown`, handing each
    /// report to `publish`. `wanted` names the services to measure at each step (`None`: none
    /// known yet). A failed step is logged once per distinct error and retried next interval.
    pub async fn run(
        mut self,
        wanted: impl Fn() -> Option<HashSet<String>>,
        mut publish: impl FnMut(NodeReport),
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let node_id = loop {
            match self.engine.local_node_id().await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!("node sampler: cannot learn the node id: {e}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next(rand::random::<f64>())) => {}
                    }
                }
            }
        };
        tracing::info!(
            node = %node_id,
            via = if self.reads_cgroups() { "cgroup" } else { "docker-stats" },
            interval_ms = self.config.interval.as_millis() as u64,
            "node sampler started"
        );
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failure: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let wanted = wanted().unwrap_or_default();
            let step = tokio::select! {
                _ = shutdown.cancelled() => return,
                step = self.step(&node_id, &wanted) => step,
            };
            match step {
                Ok(report) => {
                    failure = None;
                    publish(report);
                }
                Err(e) => {
                    let reason = e.to_string();
                    if failure.as_deref() != Some(reason.as_str()) {
                        tracing::warn!("node sampler step failed: {reason}");
                        failure = Some(reason);
                    }
                }
            }
        }
    }
}

/// A cgroup reading in the shape of a stats reading. The cgroup gives the container's CPU
/// time only; the host's share is the elapsed wall time, so `system_total` is the nanoseconds
/// since `origin` on one CPU and CPU % = container CPU time / wall time × 100, which is what
/// `docker stats` computes from the host's CPU time over all CPUs times their number.
fn cgroup_reading(origin: Instant, cpu_nanos: u64, memory_used: u64) -> StatsReading {
    let taken_at = Instant::now();
    StatsReading {
        taken_at,
        cpu_total: cpu_nanos,
        system_total: u64::try_from(taken_at.saturating_duration_since(origin).as_nanos())
            .unwrap_or(u64::MAX),
        online_cpus: 1,
        memory_used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::stats::cpu_percent;

    #[tokio::test(start_paused = true)]
    async fn cgroup_readings_give_cpu_over_wall_time() {
        let origin = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let a = cgroup_reading(origin, 1_000_000_000, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        // 3 s of CPU in 2 s of wall time: one and a half cores.
        let b = cgroup_reading(origin, 4_000_000_000, 5);
        assert_eq!(cpu_percent(&a, &b), Some(150.0));
    }
}
