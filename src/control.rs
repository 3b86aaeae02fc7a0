//! Commands from the rest of the service to the Swarm source: refresh now, sample one
//! service's metrics now. The HTTP API holds a [`SourceControl`]; the source owns the
//! [`SourceCommands`], one queue per command, each read by the loop that carries it out.
//!
//! Channels are the whole interface, so the API can be tested against a stand-in that answers
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

/// Where a command's outcome goes: the registry revision at which its result is readable.
pub type CommandReply = oneshot::Sender<Result<u64, ControlError>>;

/// A request to sample the metrics of one service (by name) now and fold them.
#[derive(Debug)]
pub struct SampleRequest {
    pub service: String,
    pub done: CommandReply,
}

/// The source's ends of a [`SourceControl`].
#[derive(Debug)]
pub struct SourceCommands {
    /// Requests to list every service now and fold the list; concurrent ones share one list.
    pub refreshes: mpsc::Receiver<CommandReply>,
    /// Requests to sample one service's metrics now.
    pub samples: mpsc::Receiver<SampleRequest>,
}

/// A cloneable handle for commanding the source.
#[derive(Debug, Clone)]
pub struct SourceControl {
    refreshes: mpsc::Sender<CommandReply>,
    samples: mpsc::Sender<SampleRequest>,
}

impl SourceControl {
    /// A handle and the receiving ends the source reads; each queue holds `capacity` commands.
    pub fn channel(capacity: usize) -> (SourceControl, SourceCommands) {
        let (refresh_tx, refreshes) = mpsc::channel(capacity.max(1));
        let (sample_tx, samples) = mpsc::channel(capacity.max(1));
        let control = SourceControl {
            refreshes: refresh_tx,
            samples: sample_tx,
        };
        (control, SourceCommands { refreshes, samples })
    }

    /// Refresh from the engine; returns the revision at which the fresh list is readable.
    pub async fn refresh(&self) -> Result<u64, ControlError> {
        let (done, rx) = oneshot::channel();
        self.refreshes
            .send(done)
            .await
            .map_err(|_| ControlError::SourceStopped)?;
        rx.await.map_err(|_| ControlError::SourceStopped)?
    }

    /// Sample one service's metrics; returns the revision at which they are readable.
    pub async fn sample_metrics(&self, service: &str) -> Result<u64, ControlError> {
        let (done, rx) = oneshot::channel();
        let request = SampleRequest {
            service: service.to_owned(),
            done,
        };
        self.samples
            .send(request)
            .await
            .map_err(|_| ControlError::SourceStopped)?;
        rx.await.map_err(|_| ControlError::SourceStopped)?
    }
}
