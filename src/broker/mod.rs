//! Publishing every registry change to a RabbitMQ stream: exactly once, in order, through
//! broker outages.
//!
//! - [`config`]: RABBITMQ_* settings, URL parsing (with the legacy `amqp://` mapping).
//! - [`message`]: a change as a stream message, as plain data.
//! - [`outbox`]: the bounded, ordered outbox with its resync markers (pure).
//! - [`publisher`]: the loop, over the narrow [`StreamBroker`] trait.
//! - [`rabbit`]: the real broker behind that trait.
//!
//! Exactly once rests on one number: a change's seq is its publishing id, the producer is
//! named, and the broker stores an id only if it is above the last one it stored for that
//! name. The publisher re-sends anything it is unsure of; the broker keeps one copy.
//!
//! What it does not promise: the outbox lives in memory, so changes not yet confirmed when the
//! process dies (rather than stops: a stop flushes within one timeout) are gone; the next run
//! starts above them, opens with an empty `services.updated` (so consumers see a run began) and
//! its first changes re-describe every service. And one producer name belongs to one running
//! registry: two publishing under the same name would have each other's lower ids discarded
//! as duplicates. The publisher that finds the broker's mark above everything it sent stops
//! publishing for the rest of its run and says so.

pub mod config;
pub mod error;
pub mod message;
pub mod outbox;
pub mod publisher;
pub mod rabbit;

use std::sync::Arc;

use pipeline::Registry;
use tokio_util::sync::CancellationToken;

pub use config::{BrokerConfig, Endpoint, Retention, Secret, Tuning};
pub use error::BrokerError;
pub use message::Outgoing;
pub use publisher::{Connected, Publisher, StreamBroker};
pub use rabbit::{floor_above, last_publishing_id, starting_floor, RabbitBroker};

use crate::telemetry::PublisherState;

/// Publish every change of `registry`'s run to the configured stream until `shutdown`, then
/// try (within one timeout) to publish what is still pending. Never returns early on broker
/// errors: it reconnects. Returns earlier only if the registry stops and all is published.
///
/// `state` should be `PublisherState::enabled(&config.stream)`; this keeps its counters.
pub async fn run(
    config: BrokerConfig,
    registry: Registry,
    state: Arc<PublisherState>,
    shutdown: CancellationToken,
) {
    let tuning = config.tuning;
    if let Some(amqp_port) = config.mapped_from_amqp {
        tracing::info!(
            "RABBITMQ_URL is an AMQP URL (port {amqp_port}); publishing to RabbitMQ Streams at {} \
             instead (port from RABBITMQ_STREAM_PORT)",
            config.endpoint
        );
    }
    tracing::info!(
        endpoint = %config.endpoint,
        stream = %config.stream,
        producer = %config.producer_name,
        "publishing changes to RabbitMQ Streams"
    );
    let publisher = Publisher::new(RabbitBroker::new(config), &registry, tuning, state);
    // The subscription is all the publisher needs; holding the handle would keep the registry
    // alive after everyone else let go of it.
    drop(registry);
    publisher.run(shutdown).await;
}
