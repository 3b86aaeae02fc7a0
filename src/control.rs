//! Commands from the rest of the service to the Swarm source: refresh now, sample one
//! service's metrics now. The HTTP API holds a [`SourceControl`]; the source owns the receiver.
//!
//! A channel is the whole interface, so the API can be tested against a stand-in that answers
//! commands however a test needs.

use tokio::sync::{mpsc, oneshot};

/// Why a command did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The source is not running (shutting down, or never started).
    #[error("the swarm source is not running")]
    SourceStopped,
    /// The engine could not do it; the text names the problem.
    #[error("{0}")]
    Engine(String),
    /// The named service is not registered.
    #[error("service not found")]
    UnknownService,
}

/// What the source is asked to do. Each carries where to send the outcome: the registry
/// revision at which the result is readable.
#[derive(Debug)]
pub enum SourceCommand {
    /// List every service now and fold the list. Concurrent requests share one list.
    Refresh {
        done: oneshot::Sender<Result<u64, ControlError>>,
    },
    /// Sample the metrics of one service (by name) now and fold them.
    SampleMetrics {
        service: String,
        done: oneshot::Sender<Result<u64, ControlError>>,
    },
}

/// A cloneable handle for sending [`SourceCommand`]s.
#[derive(Debug, Clone)]
pub struct SourceControl {
    tx: mpsc::Sender<SourceCommand>,
}

impl SourceControl {
    /// A handle and the receiving end the source reads.
    pub fn channel(capacity: usize) -> (SourceControl, mpsc::Receiver<SourceCommand>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (SourceControl { tx }, rx)
    }

    /// Refresh from the engine; returns the revision at which the fresh list is readable.
    pub async fn refresh(&self) -> Result<u64, ControlError> {
        let (done, rx) = oneshot::channel();
        self.send(SourceCommand::Refresh { done }).await?;
        rx.await.map_err(|_| ControlError::SourceStopped)?
    }

    /// Sample one service's metrics; returns the revision at which they are readable.
    pub async fn sample_metrics(&self, service: &str) -> Result<u64, ControlError> {
        let (done, rx) = oneshot::channel();
        self.send(SourceCommand::SampleMetrics {
            service: service.to_owned(),
            done,
        })
        .await?;
        rx.await.map_err(|_| ControlError::SourceStopped)?
    }

    async fn send(&self, command: SourceCommand) -> Result<(), ControlError> {
        self.tx
            .send(command)
            .await
            .map_err(|_| ControlError::SourceStopped)
    }
}
