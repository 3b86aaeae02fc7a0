//! The Docker Swarm source: keeps the registry's services and metrics true to a Swarm.
//!
//! - [`engine`]: the narrow [`Engine`](engine::Engine) trait, the only door to Docker;
//!   [`bollard_engine`] implements it for a real daemon.
//! - [`sync`]: events as hints, periodic lists as the authority, reconnect with `since`,
//!   the stall watchdog, refresh commands.
//! - [`coalesce`]: the pure in-flight/dirty tracker and the queue that applies answers in
//!   event order; [`running`]: running task counts moved by container events.
//! - [`node_sampler`]: keeps the tasks on one node measured every NODE_SAMPLE_INTERVAL_MS
//!   (cgroup files, [`cgroup`], or Docker's stats); the registry runs one for its own node, an
//!   agent one for each other node. Their reports land on the board ([`readings`]).
//! - [`sampler`]: metrics rounds and forced samples merged from the board; [`stats`] is the
//!   pure arithmetic.
//!
//! Connection failures are never fatal: they become the registry's source status, and the
//! last known services stay readable, marked stale.

pub mod bollard_engine;
pub mod cgroup;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod node_sampler;
pub mod readings;
pub mod running;
pub mod sampler;
pub mod stats;
pub mod sync;

use std::sync::Arc;

use pipeline::{Input, Registry, SourceStatus};
use tokio_util::sync::CancellationToken;

pub use bollard_engine::BollardEngine;
pub use config::SwarmConfig;
pub use engine::{Engine, EngineError};

use crate::backoff::Backoff;
use crate::control::SourceCommands;
use crate::telemetry::SourceCounters;
use node_sampler::{NodeSampler, NodeSamplerConfig};
use sampler::{Sampler, SamplingLoop};
use sync::SyncLoop;

/// Run the Swarm source against the engine at `config.docker_url` until `shutdown` is
/// cancelled. The first full sync is visible as the snapshot's `last_full_sync`.
pub async fn run(
    config: SwarmConfig,
    registry: Registry,
    commands: SourceCommands,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    // Building the client fails while the daemon's socket is absent (dockerd not started yet)
    // or for unusable settings (an unreadable certificate): report it as the source's status
    // and retry at the reconnect pace, so a daemon that comes up is used at once.
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut reported = None;
    let engine = loop {
        match BollardEngine::connect(&config.docker_url, config.request_timeout) {
            Ok(engine) => break engine,
            Err(e) => {
                let reason = e.to_string();
                if reported.as_ref() != Some(&reason) {
                    tracing::warn!("{reason}; retrying");
                    reported = Some(reason.clone());
                }
                let status = Input::SourceStatus(SourceStatus::Unreachable { reason });
                if registry.submit(status).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next(rand::random::<f64>())) => {}
                }
            }
        }
    };
    run_with_engine(
        Arc::new(engine),
        config,
        registry,
        commands,
        counters,
        shutdown,
    )
    .await;
}

/// [`run`] with any [`Engine`]: the same source against a stand-in. Refresh commands go to
/// the service-list loop, sample commands to the metrics loop.
pub async fn run_with_engine<E: Engine>(
    engine: Arc<E>,
    config: SwarmConfig,
    registry: Registry,
    commands: SourceCommands,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    let SourceCommands { refreshes, samples } = commands;
    let sync = tokio::spawn(
        SyncLoop::new(
            engine.clone(),
            registry.clone(),
            counters.clone(),
            config.clone(),
        )
        .run(refreshes, shutdown.clone()),
    );
    let local = tokio::spawn(sample_own_node(
        engine.clone(),
        config.clone(),
        registry.clone(),
        counters.clone(),
        shutdown.clone(),
    ));
    let sampler = Sampler::new(engine, counters, &config);
    let sampling =
        tokio::spawn(SamplingLoop::new(sampler, registry, &config).run(samples, shutdown.clone()));
    let _ = sync.await;
    let _ = sampling.await;
    let _ = local.await;
}

/// The registry's own node, sampled in process: its reports go straight to the board.
async fn sample_own_node<E: Engine>(
    engine: Arc<E>,
    config: SwarmConfig,
    registry: Registry,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    let sampler = NodeSampler::new(engine, node_sampler_config(&config), counters.clone());
    let wanted = move || {
        let snapshot = registry.load();
        Some(snapshot.ids.keys().map(|id| id.to_string()).collect())
    };
    sampler
        .run(
            wanted,
            |report| counters.nodes.record(report, true),
            shutdown,
        )
        .await;
}

/// A node sampler's settings from the source's.
pub fn node_sampler_config(config: &SwarmConfig) -> NodeSamplerConfig {
    NodeSamplerConfig {
        interval: config.node_sample_interval,
        cgroup_root: config.cgroup_root.clone().map(cgroup::CgroupRoot::new),
        stats_concurrency: config.stats_concurrency,
        stats_timeout: config.stats_timeout,
    }
}

#[cfg(test)]
mod tests;
