//! Helpers for tests against the real RabbitMQ of the test bed: the availability check, a
//! registry fed by hand, a stream reader built with the same client crate, and a guard that
//! stops the broker for an outage and always starts it again.
//!
//! Include with `#[path = "common/broker.rs"] mod broker_support;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pipeline::{Input, Registry, RegistryConfig, ServiceMode, ServiceSpec};
use rabbitmq_stream_client::types::{OffsetSpecification, SimpleValue};
use rabbitmq_stream_client::{Consumer, Environment, FilterConfiguration};
use swarm_registry::broker::{BrokerConfig, Endpoint, Secret, Tuning};
use tokio::sync::RwLock;
use tokio::time::Instant;

/// The test bed's stream port.
pub const STREAM_PORT: u16 = 5552;

/// Tests that use the broker share it; a test that stops it takes this exclusively, so no
/// other broker test of the same binary runs into its outage.
pub static BROKER_LOCK: RwLock<()> = RwLock::const_new(());

/// Whether the broker answers. When it does not: fails if SWARM_REGISTRY_REQUIRE_RABBITMQ=1
/// (CI), else prints a skip notice and returns false.
pub fn rabbitmq_available(test: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], STREAM_PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    // Another test's broker outage may have it down for a few seconds: wait that out.
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let required = std::env::var("SWARM_REGISTRY_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: RabbitMQ is required (SWARM_REGISTRY_REQUIRE_RABBITMQ=1) but 127.0.0.1:{STREAM_PORT} does not answer"
    );
    eprintln!("SKIPPED {test}: RabbitMQ does not answer on 127.0.0.1:{STREAM_PORT}");
    false
}

/// The test bed's broker endpoint.
pub fn endpoint() -> Endpoint {
    Endpoint {
        host: "localhost".to_owned(),
        port: STREAM_PORT,
        user: "guest".to_owned(),
        password: Secret::new("guest"),
        vhost: "/".to_owned(),
    }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A publisher configuration on a fresh stream and producer, tuned to notice outages fast.
pub fn test_config(prefix: &str) -> BrokerConfig {
    let name = unique(prefix);
    let mut config = BrokerConfig::new(endpoint(), &name, &format!("{name}-producer"));
    config.tuning = Tuning {
        timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(1000),
        ..Tuning::default()
    };
    config
}

/// A registry fed by hand, with revisions starting above `floor`.
pub fn start_registry(floor: u64) -> Registry {
    let (registry, driver) = Registry::new(RegistryConfig {
        floor,
        ..RegistryConfig::default()
    });
    tokio::spawn(driver.run());
    registry
}

/// A Swarm service as a source would report it, labelled for the registry.
pub fn labelled_spec(id: &str, name: &str, replicas: u64, version: u64) -> ServiceSpec {
    ServiceSpec {
        id: id.to_owned(),
        name: name.to_owned(),
        labels: [
            ("autoscaler.enabled".to_owned(), "true".to_owned()),
            ("autoscaler.max_replicas".to_owned(), "5".to_owned()),
        ]
        .into(),
        mode: ServiceMode::Replicated(replicas),
        created_at: "2024-01-15T10:30:00Z".to_owned(),
        updated_at: format!("2024-01-15T10:30:{:02}Z", version % 60),
        version,
        running_tasks: Some(replicas),
        desired_tasks: Some(replicas),
    }
}

/// Submit `input` and return the revision it produced.
pub async fn submit(registry: &Registry, input: Input) -> u64 {
    registry.submit(input).await.expect("registry running")
}

/// Poll `condition` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message as a consumer of the stream sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub offset: u64,
    pub message_id: Option<u64>,
    pub subject: Option<String>,
    pub content_type: Option<String>,
    pub has_creation_time: bool,
    pub application_properties: BTreeMap<String, String>,
    pub raw_body: String,
    pub body: serde_json::Value,
}

impl Received {
    pub fn routing_key(&self) -> &str {
        self.application_properties
            .get("routing_key")
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn seq(&self) -> u64 {
        self.body["seq"].as_u64().unwrap_or(0)
    }
}

/// Reads a stream from its first message, as a client of the registry would.
pub struct StreamReader {
    consumer: Consumer,
    pub received: Vec<Received>,
}

impl StreamReader {
    pub async fn open(endpoint: &Endpoint, stream: &str) -> Self {
        Self::open_with(endpoint, stream, None).await
    }

    /// A reader that asks the broker to deliver only chunks with these filter values (and
    /// keeps only messages whose subject matches, as filtering clients must).
    pub async fn open_filtered(endpoint: &Endpoint, stream: &str, keys: &[&str]) -> Self {
        let wanted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let kept = wanted.clone();
        let filter = FilterConfiguration::new(wanted, false).post_filter(move |message| {
            message
                .properties()
                .and_then(|p| p.subject.clone())
                .is_some_and(|subject| kept.contains(&subject))
        });
        Self::open_with(endpoint, stream, Some(filter)).await
    }

    async fn open_with(
        endpoint: &Endpoint,
        stream: &str,
        filter: Option<FilterConfiguration>,
    ) -> Self {
        let environment = Environment::builder()
            .host(&endpoint.host)
            .port(endpoint.port)
            .username(&endpoint.user)
            .password(endpoint.password.expose())
            .virtual_host(&endpoint.vhost)
            .build()
            .await
            .expect("environment");
        let consumer = environment
            .consumer()
            .offset(OffsetSpecification::First)
            .filter_input(filter)
            .build(stream)
            .await
            .expect("consumer");
        StreamReader {
            consumer,
            received: Vec::new(),
        }
    }

    /// Read until `done` holds for everything received so far, or `limit` passes.
    pub async fn read_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> &[Received] {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.received) {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let message = delivery.message();
                    let properties = message.properties();
                    let raw_body =
                        String::from_utf8(message.data().unwrap_or_default().to_vec()).unwrap();
                    let application_properties = message
                        .application_properties()
                        .map(|props| {
                            props
                                .iter()
                                .map(|(k, v)| {
                                    let v = match v {
                                        SimpleValue::String(s) => s.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    (k.clone(), v)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.received.push(Received {
                        offset: delivery.offset(),
                        message_id: properties
                            .and_then(|p| p.message_id.clone())
                            .and_then(|id| u64::try_from(id).ok()),
                        subject: properties.and_then(|p| p.subject.clone()),
                        content_type: properties
                            .and_then(|p| p.content_type.clone())
                            .map(|c| format!("{c:?}")),
                        has_creation_time: properties.is_some_and(|p| p.creation_time.is_some()),
                        application_properties,
                        body: serde_json::from_str(&raw_body).unwrap(),
                        raw_body,
                    });
                }
                Ok(Some(Err(e))) => panic!("delivery failed: {e:?}"),
                Ok(None) | Err(_) => break,
            }
        }
        &self.received
    }

    pub async fn close(self) {
        let _ = self.consumer.handle().close().await;
    }
}

/// Deletes a test's stream when dropped (best effort, off the test's runtime).
pub struct StreamCleanup(pub Endpoint, pub String);

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        let (endpoint, stream) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    if let Ok(env) = Environment::builder()
                        .host(&endpoint.host)
                        .port(endpoint.port)
                        .build()
                        .await
                    {
                        let _ = env.delete_stream(&stream).await;
                    }
                })
                .await;
            });
        })
        .join();
    }
}

/// The test bed script: SWARM_REGISTRY_DEV_ENV if set, else the repository's own.
fn dev_env_script() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("SWARM_REGISTRY_DEV_ENV") {
        return path.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-env")
}

fn dev_env(command: &str) {
    let script = dev_env_script();
    let status = Command::new(&script).arg(command).status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("{} {command} failed: {other:?}", script.display()),
    }
}

/// A broker outage: stops RabbitMQ now and starts it again on `end` or, whatever happens to
/// the test, on drop.
pub struct BrokerOutage {
    running: bool,
}

impl BrokerOutage {
    pub fn begin() -> Self {
        dev_env("rabbitmq-stop");
        BrokerOutage { running: false }
    }

    /// A crash: the broker is killed with SIGKILL, so no connection is closed cleanly and
    /// confirms of a batch in flight never come.
    pub fn crash() -> Self {
        let outage = BrokerOutage { running: false };
        dev_env("rabbitmq-kill");
        outage
    }

    pub fn end(mut self) {
        self.restart();
    }

    fn restart(&mut self) {
        if !self.running {
            self.running = true;
            dev_env("rabbitmq-start");
        }
    }
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        self.restart();
    }
}

/// The running broker closes every client connection (as an operator's
/// `rabbitmqctl close_all_connections` or a broker-side idle policy would).
pub fn close_broker_connections() {
    dev_env("rabbitmq-close-connections");
}

/// Run the publisher for `registry` on the real broker; returns its state and a way to stop it.
pub fn spawn_publisher(
    config: &BrokerConfig,
    registry: &Registry,
) -> (
    Arc<swarm_registry::telemetry::PublisherState>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let state = Arc::new(swarm_registry::telemetry::PublisherState::enabled(
        &config.stream,
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(swarm_registry::broker::run(
        config.clone(),
        registry.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    (state, shutdown, task)
}

/// Stop a publisher started by [`spawn_publisher`] and wait (bounded) for it to finish.
pub async fn stop_publisher(
    shutdown: &tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the publisher stops within 10 s")
        .expect("the publisher task does not panic");
}
