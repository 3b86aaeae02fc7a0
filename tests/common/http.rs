//! Shared by the HTTP integration tests: a real registry and server on 127.0.0.1:0, a stand-in
//! for the Swarm source answering its commands, and real clients (HTTP/1.1 and h2c) over real
//! sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use pipeline::{Input, Metrics, Registry, RegistryConfig, ServiceMode, ServiceSpec};
use serde_json::Value;
use swarm_registry::control::{ControlError, SampleRequest, SourceCommands, SourceControl};
use swarm_registry::http::{self as api, ApiState, HttpConfig, HttpError};
use swarm_registry::telemetry::{PublisherState, SourceCounters};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bounds every wait in these tests, so a regression fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A labelled service spec, as the Swarm source would report it.
pub fn spec(name: &str) -> ServiceSpec {
    spec_with(name, 2, 1)
}

pub fn spec_with(name: &str, replicas: u64, version: u64) -> ServiceSpec {
    ServiceSpec {
        id: format!("id-{name}"),
        name: name.to_owned(),
        labels: [
            ("autoscaler.enabled".to_owned(), "true".to_owned()),
            ("autoscaler.min".to_owned(), "1".to_owned()),
            ("autoscaler.max".to_owned(), "5".to_owned()),
            (
                "autoscaler.memory.limit_bytes".to_owned(),
                "268435456".to_owned(),
            ),
        ]
        .into(),
        mode: ServiceMode::Replicated(replicas),
        created_at: "2024-01-15T10:30:00.000000000Z".to_owned(),
        updated_at: "2024-01-15T10:30:00.000000000Z".to_owned(),
        version,
        running_tasks: Some(replicas),
        desired_tasks: Some(replicas),
    }
}

/// A metrics sample taken now.
pub fn sample(cpu_pct: f64) -> Metrics {
    let now = pipeline::Timestamp::now();
    Metrics {
        cpu_pct,
        memory_bytes: 1_048_576.0,
        memory_pct: None,
        sampled_at_ms: now.0,
        source: "docker".to_owned(),
        tasks_running: 2,
        tasks_sampled: 2,
        timestamp: now.epoch_seconds(),
        unsampled_tasks: vec![],
        window_seconds: 5,
    }
}

/// What the stand-in source answers: the services a refresh lists, the samples by name.
#[derive(Default)]
pub struct SourceScript {
    pub specs: Vec<ServiceSpec>,
    pub samples: BTreeMap<String, Option<Metrics>>,
    pub refreshes: u64,
    /// While set, commands are taken but never answered (an engine that hangs).
    pub unanswered: bool,
}

/// How to start a test server.
pub struct Options {
    pub config: HttpConfig,
    pub log_capacity: usize,
    pub broadcast_capacity: usize,
    pub publisher: PublisherState,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..HttpConfig::default()
            },
            log_capacity: 4096,
            broadcast_capacity: 1024,
            publisher: PublisherState::disabled(),
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub script: Arc<Mutex<SourceScript>>,
    pub publisher: Arc<PublisherState>,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<Result<(), HttpError>>,
}

/// Stand-in for the Swarm source: answers refreshes with the scripted list and samples with
/// the scripted metrics, folding both into the registry as the real source does.
async fn stand_in_source(
    registry: Registry,
    script: Arc<Mutex<SourceScript>>,
    commands: SourceCommands,
) {
    let SourceCommands {
        mut refreshes,
        mut samples,
    } = commands;
    // Commands taken while `unanswered` is set: held, so their callers wait instead of
    // hearing that the source stopped.
    let mut held_refreshes = Vec::new();
    let mut held_samples = Vec::new();
    loop {
        tokio::select! {
            Some(done) = refreshes.recv() => {
                if script.lock().unwrap().unanswered {
                    held_refreshes.push(done);
                    continue;
                }
                let specs = {
                    let mut script = script.lock().unwrap();
                    script.refreshes += 1;
                    script.specs.clone()
                };
                let folded = registry.submit(Input::FullList(specs)).await;
                let _ = done.send(folded.map_err(|_| ControlError::SourceStopped));
            }
            Some(SampleRequest { service, done }) = samples.recv() => {
                if script.lock().unwrap().unanswered {
                    held_samples.push(done);
                    continue;
                }
                let found = {
                    let script = script.lock().unwrap();
                    script.specs.iter().find(|s| s.name == service).map(|s| {
                        (
                            s.id.clone(),
                            script.samples.get(&service).cloned().flatten(),
                        )
                    })
                };
                let outcome = match found {
                    None => Err(ControlError::UnknownService),
                    Some((service_id, metrics)) => registry
                        .submit(Input::Metrics {
                            service_id,
                            metrics,
                        })
                        .await
                        .map_err(|_| ControlError::SourceStopped),
                };
                let _ = done.send(outcome);
            }
            else => return,
        }
    }
}

impl TestServer {
    pub async fn start(options: Options) -> TestServer {
        let (registry, driver) = Registry::new(RegistryConfig {
            log_capacity: options.log_capacity,
            broadcast_capacity: options.broadcast_capacity,
            ..RegistryConfig::default()
        });
        tokio::spawn(driver.run());
        let (control, commands) = SourceControl::channel(16);
        let script = Arc::new(Mutex::new(SourceScript::default()));
        tokio::spawn(stand_in_source(registry.clone(), script.clone(), commands));
        let publisher = Arc::new(options.publisher);
        let state = ApiState {
            registry: registry.clone(),
            control,
            source_counters: Arc::new(SourceCounters::default()),
            publisher: publisher.clone(),
            refresh_interval: Duration::from_secs(30),
        };
        let listener = api::bind(&options.config).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(api::serve(
            listener,
            options.config,
            state,
            shutdown.clone(),
        ));
        TestServer {
            addr,
            registry,
            script,
            publisher,
            shutdown,
            server,
        }
    }

    pub async fn with_defaults() -> TestServer {
        TestServer::start(Options::default()).await
    }

    /// Register these services through a full list, as a poll would.
    pub async fn list(&self, specs: Vec<ServiceSpec>) -> u64 {
        self.script.lock().unwrap().specs = specs.clone();
        self.registry.submit(Input::FullList(specs)).await.unwrap()
    }

    pub fn script_sample(&self, name: &str, metrics: Option<Metrics>) {
        self.script
            .lock()
            .unwrap()
            .samples
            .insert(name.to_owned(), metrics);
    }

    /// Fold a metrics sample for a registered service.
    pub async fn metrics(&self, name: &str, metrics: Option<Metrics>) -> u64 {
        self.registry
            .submit(Input::Metrics {
                service_id: format!("id-{name}"),
                metrics,
            })
            .await
            .unwrap()
    }

    /// Send a GET the server will hold (a blocking read) and return once the server has read
    /// it, with the task that yields its answer. The request goes first on an HTTP/2
    /// connection, then a probe on the same connection: the server reads frames in order and
    /// dispatches each request as it reads it, so once the probe is answered the held request
    /// is in the server's hands. No sleep guesses when that is.
    pub async fn in_flight(&self, path: &str) -> JoinHandle<Reply> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let get = |path: &str| {
            Request::get(format!("http://{}{path}", self.addr))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let held = sender.send_request(get(path));
        let probe = tokio::time::timeout(DEADLINE, sender.send_request(get("/health/live")))
            .await
            .expect("the probe is answered within the deadline")
            .unwrap();
        assert_eq!(probe.status(), StatusCode::OK);
        tokio::spawn(async move {
            let response = tokio::time::timeout(DEADLINE, held)
                .await
                .expect("the held request is answered within the deadline")
                .expect("the held request is answered, not reset");
            let (parts, body) = response.into_parts();
            let body = tokio::time::timeout(DEADLINE, body.collect())
                .await
                .expect("body within the deadline")
                .unwrap()
                .to_bytes();
            // The connection lives as long as its sender.
            drop(sender);
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
                version: parts.version,
            }
        })
    }

    pub fn client(&self, protocol: Protocol) -> TestClient {
        TestClient::new(self.addr, protocol)
    }

    /// Cancel the token and wait for `serve` to return.
    pub async fn stop(self) -> Result<(), HttpError> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge, over cleartext.
    H2c,
}

pub const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::H2c];

pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    pub protocol: Protocol,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    /// The body as JSON; panics unless it is JSON whose objects list their keys in sorted
    /// order, as the original registry serialised them.
    pub fn json(&self) -> Value {
        let value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        let KeysSorted(sorted) = serde_json::from_slice(&self.body).unwrap();
        assert!(
            sorted,
            "keys are not sorted: {}",
            String::from_utf8_lossy(&self.body)
        );
        value
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Whether every object in a JSON text lists its keys in sorted order. A parsed [`Value`]
/// sorts its keys itself, so the order is checked while reading the text.
struct KeysSorted(bool);

impl<'de> serde::Deserialize<'de> for KeysSorted {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeysSortedVisitor)
    }
}

struct KeysSortedVisitor;

impl<'de> serde::de::Visitor<'de> for KeysSortedVisitor {
    type Value = KeysSorted;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_i64<E>(self, _: i64) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_u64<E>(self, _: u64) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_f64<E>(self, _: f64) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_str<E>(self, _: &str) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_unit<E>(self) -> Result<KeysSorted, E> {
        Ok(KeysSorted(true))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeysSorted, A::Error> {
        let mut sorted = true;
        while let Some(KeysSorted(inner)) = seq.next_element()? {
            sorted &= inner;
        }
        Ok(KeysSorted(sorted))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeysSorted, A::Error> {
        let mut sorted = true;
        let mut previous: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            let KeysSorted(inner) = map.next_value()?;
            sorted &= inner && previous.as_ref().is_none_or(|p| *p < key);
            previous = Some(key);
        }
        Ok(KeysSorted(sorted))
    }
}

impl TestClient {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> TestClient {
        let mut builder = Client::builder(TokioExecutor::new());
        if protocol == Protocol::H2c {
            builder.http2_only(true);
        }
        TestClient {
            client: builder.build_http(),
            base: format!("http://{addr}"),
            protocol,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
    }

    pub async fn send(&self, request: http::request::Builder) -> Reply {
        let response = self.open(request).await;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .expect("body within the deadline")
            .unwrap()
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }

    pub async fn open(&self, request: http::request::Builder) -> http::Response<Incoming> {
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = tokio::time::timeout(DEADLINE, self.client.request(request))
            .await
            .expect("response within the deadline")
            .unwrap();
        let expected = match self.protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            Protocol::H2c => http::Version::HTTP_2,
        };
        assert_eq!(response.version(), expected);
        response
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str) -> Reply {
        self.send(self.request(Method::POST, path)).await
    }

    /// Open an event stream.
    pub async fn events(&self, path: &str, headers: &[(&str, &str)]) -> EventReader {
        let mut request = self.request(Method::GET, path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.open(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        EventReader {
            headers,
            body: response.into_body(),
            buffer: BytesMut::new(),
            retry: None,
            comments: 0,
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads an event stream by the WHATWG rules that matter here: fields until a blank line,
/// comments ignored (but counted), `retry:` remembered.
pub struct EventReader {
    pub headers: HeaderMap,
    body: Incoming,
    buffer: BytesMut,
    pub retry: Option<u64>,
    pub comments: u64,
}

impl EventReader {
    /// The next event, or `None` when the stream ended cleanly. Panics after [`DEADLINE`], and
    /// when the body breaks (a reset, a connection cut mid-stream): that is not an end.
    pub async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(DEADLINE, self.next_unbounded())
            .await
            .expect("an event (or the end of the stream) within the deadline")
    }

    /// The next event within `wait`, `Err(())` if none came in time (a broken body panics,
    /// as in [`EventReader::next`]).
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Event>, ()> {
        tokio::time::timeout(wait, self.next_unbounded())
            .await
            .map_err(|_| ())
    }

    async fn next_unbounded(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(error)) => panic!("the event stream broke instead of ending: {error}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Take one complete block from the buffer and return it if it dispatches an event.
    fn parse_one(&mut self) -> Option<Event> {
        loop {
            let text = std::str::from_utf8(&self.buffer).unwrap();
            let end = text.find("\n\n")?;
            let block = text[..end].to_owned();
            let _ = self.buffer.split_to(end + 2);
            let mut event = Event {
                id: None,
                event: "message".to_owned(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.parse().unwrap()),
                    "event" => event.event = value.to_owned(),
                    "retry" => self.retry = Some(value.parse().unwrap()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            if has_data {
                return Some(event);
            }
        }
    }

    /// Events until one satisfies `until` (included).
    pub async fn collect_until(&mut self, until: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await.expect("the stream to stay open");
            let done = until(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}
