//! The Docker Swarm source: keeps the registry's services and metrics true to a Swarm.
//!
//! - [`engine`]: the narrow [`Engine`](engine::Engine) trait, the only door to Docker;
//!   [`bollard_engine`] implements it for a real daemon.
//! - [`sync`]: events as hints, periodic lists as the authority, reconnect with `since`,
//!   the stall watchdog, refresh commands.
//! - [`sampler`]: stats rounds and forced samples; [`stats`] is their pure arithmetic.
//! - [`coalesce`]: the pure burst-coalescing policy (reconnect pacing is [`crate::backoff`]).
//!
//! Connection failures are never fatal: they become the registry's source status, and the
//! last known services stay readable, marked stale.

pub mod bollard_engine;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod sampler;
pub mod stats;
pub mod sync;

use std::sync::Arc;

use pipeline::{Input, Registry, SourceStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use bollard_engine::BollardEngine;
pub use config::SwarmConfig;
pub use engine::{Engine, EngineError};

use crate::backoff::Backoff;
use crate::control::{ControlError, SourceCommand};
use crate::telemetry::SourceCounters;
use sampler::{Sampler, SamplingLoop};
use sync::SyncLoop;

/// Run the Swarm source against the engine at `config.docker_url` until `shutdown` is
/// cancelled. The first full sync is visible as the snapshot's `last_full_sync`.
pub async fn run(
    config: SwarmConfig,
    registry: Registry,
    commands: mpsc::Receiver<SourceCommand>,
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

/// [`run`] with any [`Engine`]: the same source against a stand-in.
pub async fn run_with_engine<E: Engine>(
    engine: Arc<E>,
    config: SwarmConfig,
    registry: Registry,
    mut commands: mpsc::Receiver<SourceCommand>,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    let (refresh_tx, refresh_rx) = mpsc::channel(64);
    let (sample_tx, sample_rx) = mpsc::channel(64);
    let sync = tokio::spawn(
        SyncLoop::new(
            engine.clone(),
            registry.clone(),
            counters.clone(),
            config.clone(),
        )
        .run(refresh_rx, shutdown.clone()),
    );
    let sampler = Sampler::new(engine, counters, &config);
    let sampling = tokio::spawn(
        SamplingLoop::new(sampler, registry, &config).run(sample_rx, shutdown.clone()),
    );
    let mut open = true;
    loop {
        let command = tokio::select! {
            _ = shutdown.cancelled() => break,
            command = commands.recv(), if open => command,
        };
        match command {
            None => open = false,
            Some(SourceCommand::Refresh { done }) => {
                if let Err(mpsc::error::SendError(done)) = refresh_tx.send(done).await {
                    let _ = done.send(Err(ControlError::SourceStopped));
                }
            }
            Some(SourceCommand::SampleMetrics { service, done }) => {
                if let Err(mpsc::error::SendError((_, done))) =
                    sample_tx.send((service, done)).await
                {
                    let _ = done.send(Err(ControlError::SourceStopped));
                }
            }
        }
    }
    let _ = sync.await;
    let _ = sampling.await;
}

#[cfg(test)]
mod tests;
