//! The real broker: RabbitMQ Streams through rabbitmq-stream-client.
//!
//! Facts about the client this module works around (see the field notes):
//! - A named producer deduplicates only by explicit publishing ids; every message sets one.
//! - Small integer application properties are framed wrongly; all properties are strings.
//! - A dropped producer closes itself by blocking its thread on the broker's answer, and its
//!   sends wait forever when the broker vanishes. So producers are always closed explicitly,
//!   under a timeout, before they are dropped, and the publisher bounds every wait.
//! - Frames are limited to 1 MiB and the client does not split them; the outbox cuts batches
//!   by bytes, and the producer's own grouping is set to the batch size so one batch is one
//!   frame at most.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rabbitmq_stream_client::error::{ProducerCreateError, StreamCreateError};
use rabbitmq_stream_client::types::{ByteCapacity, Message, ResponseCode};
use rabbitmq_stream_client::{Client, ClientOptions, Dedup, Environment, OnClosed, Producer};
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Mutex};

use super::config::{BrokerConfig, Endpoint};
use super::error::BrokerError;
use super::message::{Outgoing, CONTENT_TYPE};
use super::publisher::{Connected, StreamBroker};

/// The message the client sends for one outgoing change.
pub fn to_message(outgoing: &Outgoing) -> Message {
    let created = chrono::DateTime::from_timestamp_millis(outgoing.created_at.0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let mut properties = Message::builder()
        .publishing_id(outgoing.publishing_id)
        .body(outgoing.body.as_bytes())
        .properties()
        .content_type(CONTENT_TYPE)
        .message_id(outgoing.publishing_id)
        .subject(outgoing.routing_key.as_str())
        .creation_time(created)
        .message_builder()
        .application_properties();
    for (key, value) in outgoing.application_properties() {
        properties = properties.insert(key, value.as_str());
    }
    properties.message_builder().build()
}

/// The filter value of a message: its subject, which is its routing key.
fn filter_value(message: &Message) -> String {
    message
        .properties()
        .and_then(|p| p.subject.clone())
        .unwrap_or_default()
}

fn environment_builder(endpoint: &Endpoint) -> rabbitmq_stream_client::EnvironmentBuilder {
    Environment::builder()
        .host(&endpoint.host)
        .port(endpoint.port)
        .username(&endpoint.user)
        .password(endpoint.password.expose())
        .virtual_host(&endpoint.vhost)
        .client_provided_name("swarm-registry")
}

fn client_options(endpoint: &Endpoint) -> ClientOptions {
    ClientOptions::builder()
        .host(&endpoint.host)
        .port(endpoint.port)
        .user(&endpoint.user)
        .password(endpoint.password.expose())
        .v_host(&endpoint.vhost)
        .client_provided_name("swarm-registry-query".to_owned())
        .build()
}

/// The named producer's last stored publishing id on the configured stream, asked within
/// `timeout`. `None` when it never published (or the stream does not exist yet).
///
/// The binary calls this at start-up to start the registry's revisions above it, so ids keep
/// rising across restarts even when the clock does not.
pub async fn last_publishing_id(
    config: &BrokerConfig,
    timeout: Duration,
) -> Result<Option<u64>, BrokerError> {
    match tokio::time::timeout(timeout, query_last_id(config)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Timeout {
            operation: "asking for the producer's last publishing id",
            after: timeout,
        }),
    }
}

/// Where this run's revisions should start: above the wall clock's floor and above the last
/// id the broker stored for this producer, so ids keep rising even if the clock went back.
/// The broker is asked within `timeout`; when it cannot answer (it may be down at start-up,
/// which must not stop the registry) the clock alone decides, and the reason is logged.
pub async fn starting_floor(config: &BrokerConfig, timeout: Duration) -> u64 {
    let clock = pipeline::clock_floor();
    match last_publishing_id(config, timeout).await {
        Ok(last) => {
            let floor = floor_above(clock, last);
            if floor > clock {
                tracing::warn!(
                    last_publishing_id = ?last,
                    "the broker holds publishing ids above the clock; continuing above them"
                );
            }
            floor
        }
        Err(error) => {
            tracing::warn!(%error, "cannot ask the broker where publishing stopped; revisions start from the clock");
            clock
        }
    }
}

/// The floor for a run: revisions start above it, and it is above the broker's last id too,
/// because the floor itself is the run's first publishing id (its opening resync, see
/// [`Outbox::starting_run`](super::outbox::Outbox::starting_run)).
pub fn floor_above(clock_floor: u64, last_publishing_id: Option<u64>) -> u64 {
    clock_floor.max(last_publishing_id.map_or(0, |last| last.saturating_add(1)))
}

async fn query_last_id(config: &BrokerConfig) -> Result<Option<u64>, BrokerError> {
    let client = query_client(config).await?;
    let sequence = ask_last_id(&client, &config.producer_name, &config.stream).await;
    let _ = client.close().await;
    sequence
}

/// A plain client connection for questions (not publishing).
async fn query_client(config: &BrokerConfig) -> Result<Client, BrokerError> {
    Client::connect(client_options(&config.endpoint))
        .await
        .map_err(|e| BrokerError::Connect {
            endpoint: config.endpoint.to_string(),
            reason: e.to_string(),
        })
}

async fn ask_last_id(
    client: &Client,
    producer: &str,
    stream: &str,
) -> Result<Option<u64>, BrokerError> {
    let sequence = client
        .query_publisher_sequence(producer, stream)
        .await
        .map_err(|e| BrokerError::QuerySequence {
            producer: producer.to_owned(),
            reason: e.to_string(),
        })?;
    // The broker answers 0 for a producer it does not know; real ids are far above 0.
    Ok((sequence > 0).then_some(sequence))
}

/// Tells the publisher, through a watch, that the producer's connection closed.
struct LostSignal(watch::Sender<bool>);

impl OnClosed for LostSignal {
    fn on_closed<'life0, 'async_trait>(
        &'life0 self,
        _unconfirmed: Vec<Message>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        // The unconfirmed messages are still in the publisher's outbox; it re-sends them.
        let _ = self.0.send(true);
        Box::pin(std::future::ready(()))
    }
}

/// RabbitMQ Streams as a [`StreamBroker`].
pub struct RabbitBroker {
    config: BrokerConfig,
    /// Shared with the send in flight, which needs it only while queueing its messages.
    /// `Producer<Dedup>` cannot be cloned, hence the lock.
    producer: Arc<Mutex<Option<Producer<Dedup>>>>,
    /// A second connection, kept with the producer's, on which the publisher asks for the
    /// producer's last id before each batch (one round trip, no new connection each time).
    query: Option<Client>,
    lost: watch::Receiver<bool>,
    /// Set once the stream was found with other arguments, so it is reported once, not at
    /// every reconnection.
    arguments_reported: bool,
}

impl RabbitBroker {
    pub fn new(config: BrokerConfig) -> Self {
        // No connection yet: a receiver whose sender is gone reads as "lost".
        let (_, lost) = watch::channel(true);
        RabbitBroker {
            config,
            producer: Arc::new(Mutex::new(None)),
            query: None,
            lost,
            arguments_reported: false,
        }
    }

    async fn open(&mut self) -> Result<Connected, BrokerError> {
        self.close_producer().await;
        let config = &self.config;
        let environment = environment_builder(&config.endpoint)
            .build()
            .await
            .map_err(|e| BrokerError::Connect {
                endpoint: config.endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let mut notice = None;
        let created = environment
            .stream_creator()
            .max_length(ByteCapacity::B(config.retention.max_bytes))
            .max_age(config.retention.max_age)
            .create(&config.stream)
            .await;
        match created {
            Ok(()) => tracing::info!(stream = %config.stream, "created the stream"),
            Err(StreamCreateError::Create {
                status: ResponseCode::StreamAlreadyExists,
                ..
            }) => {}
            Err(StreamCreateError::Create {
                status: ResponseCode::PreconditionFailed,
                ..
            }) => {
                if !self.arguments_reported {
                    let message = format!(
                        "stream {:?} exists with other arguments than configured (max {} bytes, \
                         max age {} s); publishing to it as it is",
                        config.stream,
                        config.retention.max_bytes,
                        config.retention.max_age.as_secs()
                    );
                    tracing::warn!("{message}");
                    notice = Some(message);
                    self.arguments_reported = true;
                }
            }
            Err(e) => {
                return Err(BrokerError::CreateStream {
                    stream: config.stream.clone(),
                    reason: e.to_string(),
                })
            }
        }
        let query = query_client(config).await?;
        let last_publishing_id =
            match ask_last_id(&query, &config.producer_name, &config.stream).await {
                Ok(last) => last,
                Err(error) => {
                    let _ = query.close().await;
                    return Err(error);
                }
            };
        self.query = Some(query);
        let (lost_tx, lost_rx) = watch::channel(false);
        let producer = match self
            .build_producer(&environment, true, lost_tx.clone())
            .await
        {
            Err(ProducerCreateError::FilteringNotSupport) => {
                tracing::warn!(
                    "the broker cannot filter streams; publishing without filter values"
                );
                self.build_producer(&environment, false, lost_tx).await
            }
            other => other,
        }
        .map_err(|e| BrokerError::DeclareProducer {
            producer: self.config.producer_name.clone(),
            stream: self.config.stream.clone(),
            reason: e.to_string(),
        })?;
        *self.producer.lock().await = Some(producer);
        self.lost = lost_rx;
        Ok(Connected {
            last_publishing_id,
            notice,
        })
    }

    async fn build_producer(
        &self,
        environment: &Environment,
        with_filter: bool,
        lost: watch::Sender<bool>,
    ) -> Result<Producer<Dedup>, ProducerCreateError> {
        // `name` starts a new builder that forgets the connection name, so it comes first.
        let mut builder = environment
            .producer()
            .name(&self.config.producer_name)
            .client_provided_name("swarm-registry-publisher")
            .batch_size(self.config.tuning.batch_size.max(1))
            .on_closed(Box::new(LostSignal(lost)));
        if with_filter {
            builder = builder.filter_value_extractor(filter_value);
        }
        builder.build(&self.config.stream).await
    }

    async fn close_producer(&mut self) {
        let producer = self.producer.lock().await.take();
        if let Some(producer) = producer {
            let _ = tokio::time::timeout(self.config.tuning.timeout, producer.close()).await;
        }
        if let Some(query) = self.query.take() {
            let _ = tokio::time::timeout(self.config.tuning.timeout, query.close()).await;
        }
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        // Polling the close once marks the producer closed, so its own drop does not block the
        // thread waiting for a broker that may be gone.
        if let Ok(mut slot) = self.producer.try_lock() {
            if let Some(producer) = slot.take() {
                let _ = producer.close().now_or_never();
            }
        }
    }
}

impl StreamBroker for RabbitBroker {
    fn connect(&mut self) -> BoxFuture<'_, Result<Connected, BrokerError>> {
        Box::pin(self.open())
    }

    fn send_batch(&mut self, batch: Vec<Outgoing>) -> BoxFuture<'static, Result<(), BrokerError>> {
        let producer = self.producer.clone();
        let mut lost = self.lost.clone();
        Box::pin(async move {
            let expected = batch.len();
            let messages: Vec<Message> = batch.iter().map(to_message).collect();
            let (confirms_tx, mut confirms) = mpsc::unbounded_channel();
            {
                let mut slot = producer.lock().await;
                let producer = slot.as_mut().ok_or(BrokerError::NotConnected)?;
                producer
                    .batch_send(messages, move |status| {
                        let confirms_tx = confirms_tx.clone();
                        async move {
                            let _ = confirms_tx.send(status);
                        }
                    })
                    .await
                    .map_err(|e| BrokerError::Publish(e.to_string()))?;
            }
            let mut confirmed = 0;
            while confirmed < expected {
                tokio::select! {
                    status = confirms.recv() => match status {
                        Some(Ok(status)) if status.confirmed() => confirmed += 1,
                        Some(Ok(status)) => {
                            return Err(BrokerError::Refused {
                                publishing_id: status.publishing_id(),
                                code: format!("{:?}", status.status()),
                            })
                        }
                        Some(Err(e)) => return Err(BrokerError::Publish(e.to_string())),
                        None => return Err(BrokerError::ConnectionLost),
                    },
                    _ = lost.wait_for(|lost| *lost) => return Err(BrokerError::ConnectionLost),
                }
            }
            Ok(())
        })
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        let mut lost = self.lost.clone();
        Box::pin(async move {
            // An error means the signal's sender is gone, which also means no connection.
            let _ = lost.wait_for(|lost| *lost).await;
        })
    }

    fn disconnect(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.close_producer())
    }

    fn last_publishing_id(&self) -> BoxFuture<'static, Result<Option<u64>, BrokerError>> {
        let query = self.query.clone();
        let producer = self.config.producer_name.clone();
        let stream = self.config.stream.clone();
        Box::pin(async move {
            let query = query.ok_or(BrokerError::NotConnected)?;
            ask_last_id(&query, &producer, &stream).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{Change, ChangeKind, Timestamp};
    use rabbitmq_stream_client::types::SimpleValue;

    #[test]
    fn the_floor_is_above_both_the_clock_and_the_broker() {
        assert_eq!(floor_above(1_000, None), 1_000);
        assert_eq!(floor_above(1_000, Some(400)), 1_000);
        assert_eq!(floor_above(1_000, Some(999)), 1_000);
        assert_eq!(floor_above(1_000, Some(1_000)), 1_001);
        assert_eq!(floor_above(1_000, Some(5_000)), 5_001);
    }

    #[test]
    fn messages_carry_the_contracts_properties() {
        let change = Change::new(
            1_700_000_000_000_001,
            1_700_000_000_000_002,
            Timestamp(1_700_000_000_123),
            ChangeKind::ServiceRemoved {
                id: "abc".to_owned(),
                name: "web".to_owned(),
            },
        );
        let message = to_message(&Outgoing::from_change(&change));
        assert_eq!(message.publishing_id(), Some(&change.seq));
        assert_eq!(message.data(), Some(change.json().as_bytes()));
        let properties = message.properties().unwrap();
        assert_eq!(properties.subject.as_deref(), Some("service.removed"));
        assert_eq!(
            format!("{:?}", properties.message_id),
            format!("Some(ULong({}))", change.seq)
        );
        assert!(format!("{:?}", properties.content_type).contains("application/json"));
        assert!(properties.creation_time.is_some());
        let app = message.application_properties().unwrap();
        let get = |key: &str| app.get(key).cloned();
        assert_eq!(
            get("routing_key"),
            Some(SimpleValue::from("service.removed"))
        );
        assert_eq!(get("event"), Some(SimpleValue::from("service.removed")));
        assert_eq!(get("service_name"), Some(SimpleValue::from("web")));
        assert_eq!(get("revision"), Some(SimpleValue::from("1700000000000002")));
        assert_eq!(filter_value(&message), "service.removed");
    }
}
