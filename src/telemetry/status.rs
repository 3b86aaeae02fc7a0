//! Counters and states that IO edges update and the HTTP API reports (in /health, /events and
//! /metrics). Plain atomics: writers never wait for readers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What the Swarm source has been through since start-up.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Engine events received.
    pub events: AtomicU64,
    /// Single-service inspects made (after event coalescing).
    pub inspects: AtomicU64,
    /// Of those, inspects asked for because container steps stayed unmatched by the
    /// manager's count for the settling time (not prompted by a service event).
    pub settle_inspects: AtomicU64,
    /// Full lists folded.
    pub full_lists: AtomicU64,
    /// Requests to the engine that failed.
    pub engine_errors: AtomicU64,
    /// Times the event stream was reopened after ending or failing.
    pub event_reconnects: AtomicU64,
    /// Times a poll found a difference the events never reported (stream presumed stalled).
    pub event_stalls: AtomicU64,
    /// Container stats samples taken, and those that failed.
    pub stats_samples: AtomicU64,
    pub stats_failures: AtomicU64,
    /// The latest readings of every node's sampler, and the agents' report counters. Here
    /// because this is the handle the source (which merges readings) and the API (which
    /// receives agents' reports and shows them in /health and /metrics) both hold.
    pub nodes: crate::docker::readings::NodeReadings,
}

/// The broker publisher's state, as /health, /events and /metrics report it.
#[derive(Debug, Default)]
pub struct PublisherState {
    /// Whether publishing is configured at all (RABBITMQ_URL set).
    pub enabled: bool,
    /// The stream's name (RABBITMQ_EXCHANGE).
    pub stream: Option<String>,
    pub connected: AtomicBool,
    /// The highest publishing id (change seq) the broker confirmed.
    pub last_confirmed: AtomicU64,
    /// Changes waiting to be sent or confirmed.
    pub outbox_len: AtomicU64,
    /// Changes dropped because the outbox overflowed while the broker was away.
    pub dropped: AtomicU64,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub failed: AtomicU64,
    pub reconnects: AtomicU64,
    /// The broker's last publishing id for our producer name when it was found above every id
    /// this process sent (0: never): another writer uses the name, and publishing stopped for
    /// the rest of the run.
    pub foreign_publishing_id: AtomicU64,
    /// The last error, for operators.
    pub last_error: Mutex<Option<String>>,
}

impl PublisherState {
    /// The state of a registry without a broker.
    pub fn disabled() -> Self {
        PublisherState::default()
    }

    /// The state of a configured publisher, not yet connected.
    pub fn enabled(stream: &str) -> Self {
        PublisherState {
            enabled: true,
            stream: Some(stream.to_owned()),
            ..PublisherState::default()
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether publishing stopped because another writer uses the producer name; with the
    /// broker's id that gave it away.
    pub fn another_writer(&self) -> Option<u64> {
        match self.foreign_publishing_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }
}
