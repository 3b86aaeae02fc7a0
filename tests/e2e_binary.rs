//! End to end: the real `swarm-registry` binary as a child process, against the test bed's real
//! Swarm and RabbitMQ, over real sockets.
//!
//! Each run of the binary is isolated from every other test on the same swarm and broker: it
//! reads only labels under its own random prefix (so it registers only the services this test
//! labels), publishes to its own stream under its own producer name, and listens on its own
//! port. The child is killed when its guard drops, and its output is printed when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker_support;
#[path = "common/http.rs"]
mod http_support;
#[path = "common/process.rs"]
mod process;
#[path = "common/swarm.rs"]
mod swarm_support;

use process::{free_port, Captured};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use broker_support::{
    endpoint, rabbitmq_available, BrokerOutage, Received, StreamCleanup, StreamReader, BROKER_LOCK,
};
use http::StatusCode;
use http_support::{Event, EventReader, Protocol, TestClient};
use serde_json::{json, Value};
use swarm_support::{create_service, docker, swarm_available, unique};
use tokio::time::Instant;

/// Start-up against the real engine (first full list) on a busy 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(30);
/// A change in the swarm reaching the registry's sinks (events, with the periodic list behind).
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping or misconfigured process may take to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// How long a SIGTERM may take at most: the binary's own bound (a grace of at least 10 s,
/// then 1 s for abandoned tasks) and a margin for a busy machine.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// The bound on one forced metrics sample: one-shot stats answer in milliseconds and the CPU
/// window is half a second, so an answer that takes longer means the sample hangs (or reads
/// stats the slow streaming way, about 2 s per container, as the old registry did).
const SAMPLE_BOUND: Duration = Duration::from_secs(5);

/// The running binary. Dropping it kills the process; a failing test prints what it wrote.
struct Binary {
    child: Child,
    addr: SocketAddr,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
}

/// A label prefix no other test (or run) uses.
fn unique_prefix() -> String {
    format!("e2e{:08x}", rand::random::<u32>())
}

impl Binary {
    /// Start the binary with only these settings (plus HOST and PORT), nothing inherited from
    /// the test's environment but where the engine is.
    fn start(prefix: &str, settings: &[(&str, &str)]) -> Binary {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_swarm-registry"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("LABEL_PREFIX", prefix)
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Ok(docker_url) = std::env::var("DOCKER_BASE_URL") {
            command.env("DOCKER_BASE_URL", docker_url);
        }
        for (name, value) in settings {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the swarm-registry binary starts");
        let stdout = Captured::default();
        let stderr = Captured::default();
        let readers = vec![
            stdout.follow(child.stdout.take().unwrap()),
            stderr.follow(child.stderr.take().unwrap()),
        ];
        Binary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdout,
            stderr,
            readers,
        }
    }

    fn client(&self, protocol: Protocol) -> TestClient {
        TestClient::new(self.addr, protocol)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {}", self.pid());
    }

    /// SIGTERM, then the exit status (which must come within [`STOP_LIMIT`]).
    fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(STOP_LIMIT).unwrap_or_else(|| {
            panic!(
                "still running {STOP_LIMIT:?} after SIGTERM\n{}",
                self.output()
            )
        })
    }

    /// SIGKILL: the process gets no chance to flush anything.
    fn kill_9(&mut self) {
        self.signal("-KILL");
        self.wait_exit(EXIT_LIMIT)
            .expect("a killed process is gone at once");
    }

    /// The revision floor of this run, from its start-up line.
    fn revision_floor(&self) -> u64 {
        let stdout = self.stdout.text();
        stdout
            .lines()
            .find(|l| l.contains("service registry initialized"))
            .and_then(|l| l.split(" revision_floor=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no revision_floor in the start-up line\n{stdout}"))
    }

    /// The last line the process logged.
    fn last_log_line(&self) -> String {
        self.stdout
            .text()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned()
    }

    /// The exit status, once the process has ended within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything the process wrote is in once its pipes close.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the binary exited ({status})\n{}", self.output());
        }
    }

    /// Wait until the server accepts connections and `/health/ready` answers 200 (the first
    /// full list of the swarm is in).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        let client = self.client(Protocol::Http1);
        let mut last = String::from("no connection yet");
        loop {
            self.assert_running();
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                let ready = client.get("/health/ready").await;
                if ready.status == StatusCode::OK {
                    return;
                }
                last = format!("{} {}", ready.status, String::from_utf8_lossy(&ready.body));
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {START_LIMIT:?}: {last}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll `GET path` until `check` holds for its JSON body; returns that body.
    async fn poll_json(&mut self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + CHANGE_LIMIT;
        let client = self.client(Protocol::Http1);
        loop {
            self.assert_running();
            let reply = client.get(path).await;
            let body = reply.json();
            if check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {CHANGE_LIMIT:?} waiting for {what}; last GET {path}: {} {body}",
                reply.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("output of the swarm-registry binary:\n{}", self.output());
        }
    }
}

/// Events until one satisfies `until` (included), bounded by [`CHANGE_LIMIT`] overall (the
/// health beacon keeps the stream busy, so the per-event deadline alone would never fire).
async fn events_until(
    stream: &mut EventReader,
    what: &str,
    until: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    tokio::time::timeout(CHANGE_LIMIT, stream.collect_until(until))
        .await
        .unwrap_or_else(|_| panic!("no {what} on the event stream within {CHANGE_LIMIT:?}"))
}

fn is_service_event(event: &Event, kind: &str, name: &str) -> bool {
    if event.event != kind {
        return false;
    }
    let body = event.json();
    body["service"]["name"] == name || body["service_name"] == name
}

/// The settings of a binary publishing to its own fresh stream on the test bed's broker.
fn broker_settings(stream: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "RABBITMQ_URL",
            format!(
                "rabbitmq-stream://guest:guest@localhost:{}/",
                broker_support::STREAM_PORT
            ),
        ),
        ("RABBITMQ_EXCHANGE", stream.to_owned()),
        ("RABBITMQ_PRODUCER_NAME", format!("{stream}-producer")),
    ]
}

fn as_pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The contract fields of a service entry, as the autoscaler and the UI read them.
fn assert_contract_entry(entry: &Value, name: &str, id: &str, prefix: &str) {
    assert_eq!(entry["name"], name, "{entry}");
    assert_eq!(entry["id"], id, "{entry}");
    assert_eq!(entry["current_replicas"].as_u64(), Some(0), "{entry}");
    assert_eq!(entry["metric"], "memory", "{entry}");
    assert_eq!(entry["thresholds"]["cpu"].as_f64(), Some(55.0), "{entry}");
    assert_eq!(
        entry["thresholds"]["memory"].as_f64(),
        Some(70.0),
        "{entry}"
    );
    assert_eq!(entry["min_replicas"].as_u64(), Some(2), "{entry}");
    assert_eq!(entry["max_replicas"].as_u64(), Some(4), "{entry}");
    assert_eq!(
        entry["labels"][format!("{prefix}.enabled")],
        "true",
        "{entry}"
    );
    assert_eq!(entry["labels"][format!("{prefix}.metric")], "memory");
    assert!(entry["created_at"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(entry["updated_at"].as_str().is_some_and(|s| !s.is_empty()));
}

fn etag_number(etag: &str) -> u64 {
    etag.strip_prefix("W/\"")
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ETag {etag:?} is not W/\"<revision>\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_service_reaches_http_sse_and_the_stream_with_one_revision() {
    let test = "a_labelled_service_reaches_http_sse_and_the_stream_with_one_revision";
    let _shared = BROKER_LOCK.read().await;
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    let prefix = unique_prefix();
    let stream_name = unique("e2e-stream");
    let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
    let mut settings = broker_settings(&stream_name);
    settings.push(("REFRESH_INTERVAL_SEC", "5".to_owned()));
    settings.push(("HEALTH_CHECK_INTERVAL_SEC", "2".to_owned()));
    let mut binary = Binary::start(&prefix, &as_pairs(&settings));
    binary.wait_ready().await;
    // The publisher creates the stream when it connects; read it only once it exists.
    binary
        .poll_json("/health", "the publisher to connect", |h| {
            h["publisher"]["connected"] == true
        })
        .await;

    let http1 = binary.client(Protocol::Http1);
    let h2c = binary.client(Protocol::H2c);
    let mut events = http1.events("/events/stream", &[]).await;
    let snapshot = events.next().await.expect("a snapshot first");
    assert_eq!(snapshot.event, "snapshot");
    assert!(snapshot.id.is_some());
    assert_eq!(
        snapshot.json()["services"],
        json!([]),
        "only services under the prefix {prefix} are registered"
    );

    let name = unique("e2e-svc");
    let labels = [
        (format!("{prefix}.enabled"), "true"),
        (format!("{prefix}.metric"), "memory"),
        (format!("{prefix}.cpu.threshold"), "55"),
        (format!("{prefix}.min"), "2"),
        (format!("{prefix}.max"), "4"),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let service = create_service(&name, &labels, 0, &["sleep", "3600"]);

    // SSE: the service arrives as service.added, numbered.
    let seen = events_until(&mut events, "service.added", |e| {
        is_service_event(e, "service.added", &name)
    })
    .await;
    let added = seen.last().unwrap().clone();
    let added_seq = added.id.expect("service.added carries an id");
    assert_eq!(added.json()["seq"], added_seq);
    assert_contract_entry(&added.json()["service"], &name, &service.id, &prefix);

    // HTTP: the same entry over HTTP/1.1 and h2c, with the revision headers.
    let mut listed = Vec::new();
    for client in [&http1, &h2c] {
        let reply = client.get("/services").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", client.protocol);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let etag = etag_number(reply.header("etag").expect("an ETag"));
        let index: u64 = reply.header("x-registry-index").unwrap().parse().unwrap();
        let revision: u64 = reply
            .header("x-registry-revision")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(etag, index, "ETag and x-registry-index are one number");
        assert!(etag >= added_seq && revision >= etag, "{etag} {revision}");
        assert_eq!(reply.header("x-registry-stale"), Some("false"));
        assert_eq!(reply.header("x-registry-source"), Some("connected"));
        let body = reply.json();
        let services = body["services"].as_array().expect("a services array");
        assert_eq!(services.len(), 1, "{body}");
        assert_contract_entry(&services[0], &name, &service.id, &prefix);
        assert_eq!(body["metadata"]["count"], 1);
        listed.push(services[0].clone());
    }
    assert_eq!(listed[0], listed[1], "both protocols serve the same entry");

    let one = h2c.get(&format!("/services/{name}")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_contract_entry(&one.json()["service"], &name, &service.id, &prefix);
    // The entry's ETag is the seq of the change that last touched it: the SSE id of
    // service.added, unless the engine reported a later update of it, which SSE then carries
    // under exactly that number.
    let entry_etag = etag_number(one.header("etag").unwrap());
    assert!(entry_etag >= added_seq, "{entry_etag} < {added_seq}");
    if entry_etag > added_seq {
        let later = events_until(&mut events, "the change behind the entry's ETag", |e| {
            e.id.is_some_and(|id| id >= entry_etag)
        })
        .await;
        let behind = later.iter().find(|e| e.id == Some(entry_etag));
        assert!(
            behind.is_some_and(|e| is_service_event(e, "service.updated", &name)),
            "ETag {entry_etag} is no SSE change of {name}: {later:?}"
        );
    }

    // The broker: the same change, under the same number.
    let mut reader = StreamReader::open(&endpoint(), &stream_name).await;
    let published = reader
        .read_until(CHANGE_LIMIT, |got| got.iter().any(|m| m.seq() == added_seq))
        .await
        .iter()
        .find(|m| m.seq() == added_seq)
        .cloned()
        .unwrap_or_else(|| panic!("no message with seq {added_seq} on {stream_name}"));
    assert_eq!(published.routing_key(), "service.added");
    assert_eq!(published.subject.as_deref(), Some("service.added"));
    assert_eq!(published.message_id, Some(added_seq));
    assert_eq!(published.body["service"]["name"], name);
    assert_eq!(published.body, added.json(), "one body for every sink");

    // Removal travels the same ways.
    docker(&["service", "rm", &name]);
    let seen = events_until(&mut events, "service.removed", |e| {
        is_service_event(e, "service.removed", &name)
    })
    .await;
    let removed = seen.last().unwrap().clone();
    let removed_seq = removed.id.expect("service.removed carries an id");
    assert!(removed_seq > added_seq);
    assert_eq!(removed.json()["service_id"], service.id);
    assert_eq!(removed.json()["seq"], removed_seq);

    let published = reader
        .read_until(CHANGE_LIMIT, |got| {
            got.iter().any(|m| m.seq() == removed_seq)
        })
        .await
        .iter()
        .find(|m| m.seq() == removed_seq)
        .cloned()
        .unwrap_or_else(|| panic!("no message with seq {removed_seq} on {stream_name}"));
    assert_eq!(published.routing_key(), "service.removed");
    assert_eq!(published.message_id, Some(removed_seq));
    assert_eq!(published.body, removed.json());
    reader.close().await;

    for client in [&http1, &h2c] {
        let gone = client.get(&format!("/services/{name}")).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.json(), json!({"error": "service not found"}));
        let listing = client.get("/services").await.json();
        assert_eq!(listing["services"], json!([]), "{listing}");
    }
    drop(events);
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_zero() {
    let test = "sigterm_ends_streams_and_exits_zero";
    let _shared = BROKER_LOCK.read().await;
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    let prefix = unique_prefix();
    let stream_name = unique("e2e-stop");
    let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
    // Every edge runs (engine, broker, HTTP, beacon), so each must stop on its own.
    let mut settings = broker_settings(&stream_name);
    settings.push(("HEALTH_CHECK_INTERVAL_SEC", "1".to_owned()));
    let mut binary = Binary::start(&prefix, &as_pairs(&settings));
    binary.wait_ready().await;

    let mut events = binary
        .client(Protocol::Http1)
        .events("/events/stream", &[])
        .await;
    assert_eq!(events.next().await.unwrap().event, "snapshot");
    let mut h2_events = binary
        .client(Protocol::H2c)
        .events("/events/stream", &[])
        .await;
    assert_eq!(h2_events.next().await.unwrap().event, "snapshot");

    let killed = Command::new("kill")
        .args(["-TERM", &binary.pid()])
        .status()
        .unwrap();
    assert!(killed.success());

    for stream in [&mut events, &mut h2_events] {
        let seen =
            tokio::time::timeout(EXIT_LIMIT, stream.collect_until(|e| e.event == "shutdown"))
                .await
                .expect("event: shutdown within the limit");
        let shutdown = seen.last().unwrap();
        assert_eq!(shutdown.json()["event"], "shutdown");
        assert!(
            shutdown.id.is_some(),
            "the id tells clients where to resume"
        );
        assert_eq!(stream.next().await, None, "the stream ends after shutdown");
    }

    let status = binary
        .wait_exit(EXIT_LIMIT)
        .unwrap_or_else(|| panic!("still running {EXIT_LIMIT:?} after SIGTERM"));
    assert!(
        status.success(),
        "exit status {status}\n{}",
        binary.output()
    );
    let output = binary.output();
    assert!(
        !output.contains("did not stop within"),
        "every task stopped by itself: {output}"
    );
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_setting_stops_start_up_with_a_clear_error() {
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "RABBITMQ_URL",
            "rabbitmq-stream://guest:secretpw@:5552/",
            &["RABBITMQ_URL", "host"],
        ),
        (
            "RABBITMQ_URL",
            "rabbitmq-stream://guest:secretpw@localhost:99999/",
            &["RABBITMQ_URL", "not a URL"],
        ),
        ("PORT", "abc", &["invalid PORT=\"abc\"", "invalid digit"]),
        (
            "REFRESH_INTERVAL_SEC",
            "0",
            &["REFRESH_INTERVAL_SEC", "must be at least 1"],
        ),
    ];
    for (variable, value, expected) in cases {
        let mut binary = Binary::start(&unique_prefix(), &[(variable, value)]);
        let status = binary
            .wait_exit(EXIT_LIMIT)
            .unwrap_or_else(|| panic!("{variable}={value}: still running"));
        assert!(!status.success(), "{variable}={value}: exited {status}");
        let stderr = binary.stderr.text();
        for part in expected {
            assert!(
                stderr.contains(part),
                "{variable}={value}: stderr lacks {part:?}: {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !binary.output().contains("secretpw"),
            "the password leaked: {}",
            binary.output()
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one clear line, not a trace: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_does_not_stop_the_registry() {
    let test = "an_unreachable_broker_does_not_stop_the_registry";
    if !swarm_available(test) {
        return;
    }
    let prefix = unique_prefix();
    let stream_name = unique("e2e-nobroker");
    // Port 1 on loopback: nothing listens, connections are refused at once.
    let mut binary = Binary::start(
        &prefix,
        &[
            ("RABBITMQ_URL", "rabbitmq-stream://guest:guest@127.0.0.1:1/"),
            ("RABBITMQ_EXCHANGE", &stream_name),
            ("RABBITMQ_PRODUCER_NAME", &stream_name),
            ("RABBITMQ_RECONNECT_MIN_MS", "100"),
            ("RABBITMQ_RECONNECT_MAX_MS", "500"),
        ],
    );
    binary.wait_ready().await;
    // At least one connection attempt has failed by now, and the process lives on.
    let health = binary
        .poll_json("/health", "a failed broker connection", |h| {
            h["publisher"]["last_error"].is_string()
        })
        .await;
    assert_eq!(health["publisher"]["enabled"], true, "{health}");
    assert_eq!(health["publisher"]["connected"], false, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap().contains("broker"))),
        "{health}"
    );

    for protocol in [Protocol::Http1, Protocol::H2c] {
        let client = binary.client(protocol);
        let services = client.get("/services").await;
        assert_eq!(services.status, StatusCode::OK);
        assert!(services.json()["services"].is_array());
        let ready = client.get("/health/ready").await;
        assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.json());
        let events = client.get("/events").await;
        assert_eq!(events.status, StatusCode::OK);
        let body = events.json();
        assert_eq!(body["enabled"], true, "{body}");
        assert_eq!(body["connected"], false, "{body}");
        assert_eq!(body["exchange"], stream_name, "{body}");
    }
    binary.assert_running();
}

/// Wait until the service has a task in the running state.
async fn wait_task_running(name: &str) {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let states = docker(&[
            "service",
            "ps",
            name,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ]);
        if states.lines().any(|s| s.starts_with("Running")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} has no running task within {START_LIMIT:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_contract_holds() {
    let test = "the_autoscaler_contract_holds";
    if !swarm_available(test) {
        return;
    }
    let prefix = unique_prefix();
    // Short metrics rounds: the periodic sampler runs several times during the test, and must
    // never give the idle service figures either.
    let mut binary = Binary::start(
        &prefix,
        &[
            ("METRICS_REFRESH_INTERVAL_SEC", "1"),
            ("REFRESH_INTERVAL_SEC", "5"),
        ],
    );
    binary.wait_ready().await;

    let enabled = format!("{prefix}.enabled");
    let limit = format!("{prefix}.memory.limit_bytes");
    let cpu = format!("{prefix}.cpu.threshold");
    let labels = [
        (enabled.as_str(), "true"),
        (limit.as_str(), "268435456"),
        (cpu.as_str(), "50"),
    ];
    let idle_name = unique("e2e-idle");
    let busy_name = unique("e2e-busy");
    let _idle = create_service(&idle_name, &labels, 0, &["sleep", "3600"]);
    let _busy = create_service(&busy_name, &labels, 1, &["sleep", "3600"]);
    binary
        .poll_json("/services", "both services to be listed", |body| {
            body["services"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    wait_task_running(&busy_name).await;

    let client = binary.client(Protocol::Http1);
    // Until the busy task has been sampled, its GET may rightly be 404: force fresh samples.
    let sampled_after_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let deadline = Instant::now() + CHANGE_LIMIT;
    let forced = loop {
        let asked = Instant::now();
        let reply = tokio::time::timeout(
            SAMPLE_BOUND,
            client.post(&format!("/services/{busy_name}/metrics")),
        )
        .await
        .unwrap_or_else(|_| panic!("POST metrics did not answer within {SAMPLE_BOUND:?}"));
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        let body = reply.json();
        assert_eq!(body["refreshed"], true, "{body}");
        if !body["metrics"].is_null() {
            eprintln!("forced sample answered in {:?}", asked.elapsed());
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics for the running {busy_name}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        forced["metrics"]["sampled_at_ms"].as_i64().unwrap() >= sampled_after_ms,
        "a fresh sample, not an old one: {forced}"
    );

    // The autoscaler's pass: the list, then each service's metrics.
    let listing = client.get("/services").await;
    assert_eq!(listing.status, StatusCode::OK);
    let services = listing.json()["services"].as_array().unwrap().clone();
    assert_eq!(services.len(), 2);
    for service in &services {
        let name = service["name"].as_str().unwrap();
        let replicas = service["current_replicas"].as_u64().unwrap();
        assert_eq!(service["thresholds"]["cpu"].as_f64(), Some(50.0));
        assert_eq!(service["thresholds"]["memory"].as_f64(), Some(70.0));
        assert_eq!(service["metric"], "cpu");
        assert!(service["min_replicas"].as_u64().is_some());
        assert!(service["max_replicas"].as_u64().unwrap() >= 2);
        assert_eq!(service["labels"][&limit], "268435456");

        let reply = client.get(&format!("/services/{name}/metrics")).await;
        if name == idle_name {
            assert_eq!(replicas, 0);
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "a service without tasks has no metrics, never zeros: {:?}",
                reply.json()
            );
            assert_eq!(reply.json(), json!({"error": "metrics not available"}));
        } else {
            assert_eq!(name, busy_name);
            assert_eq!(replicas, 1);
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
            let body = reply.json();
            assert_eq!(body["service_name"], name);
            let metrics = &body["metrics"];
            assert!(
                metrics["cpu_pct"].as_f64().is_some_and(|c| c >= 0.0),
                "{body}"
            );
            assert!(
                metrics["memory_bytes"].as_f64().is_some_and(|m| m > 0.0),
                "{body}"
            );
            assert_eq!(metrics["source"], "docker");
            assert!(metrics["timestamp"].as_i64().is_some());
            assert!(metrics["window_seconds"].as_u64().is_some());
        }
    }

    // Forcing a sample of the idle service does not invent figures either.
    let idle_path = format!("/services/{idle_name}/metrics");
    let forced_idle = tokio::time::timeout(SAMPLE_BOUND, client.post(&idle_path))
        .await
        .unwrap_or_else(|_| panic!("POST metrics did not answer within {SAMPLE_BOUND:?}"));
    assert_eq!(forced_idle.status, StatusCode::OK);
    assert_eq!(forced_idle.json()["metrics"], Value::Null);
    let after = client.get(&idle_path).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(after.json(), json!({"error": "metrics not available"}));

    // A name the registry does not know is a different 404, for reads and forced samples.
    let unknown = format!("/services/{}/metrics", unique("e2e-unknown"));
    for reply in [client.get(&unknown).await, client.post(&unknown).await] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.json(), json!({"error": "service not found"}));
    }
    binary.assert_running();
}

/// Log lines keep the suite's format with plain `key=value` fields even when written to a pipe
/// or a file: colour escapes there would break every `grep listen=` over the suite's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_plain_text_in_the_suite_format() {
    let mut binary = Binary::start(&unique_prefix(), &[]);
    let deadline = Instant::now() + START_LIMIT;
    let line = loop {
        binary.assert_running();
        let stdout = binary.stdout.text();
        if let Some(line) = stdout
            .lines()
            .find(|l| l.contains("service registry initialized"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no start-up line: {stdout}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        time.len() == 25 && time.ends_with("+00:00") && time.as_bytes()[10] == b'T',
        "{line:?}"
    );
    assert!(
        rest.starts_with("INFO role=service-registry logger=main service registry initialized"),
        "{line:?}"
    );
    assert!(
        rest.contains(&format!(" listen={}", binary.addr)),
        "fields are plain key=value: {line:?}"
    );
    assert!(!binary.output().contains('\x1b'), "{line:?}");
}

/// Wait until `stream` can be read again after a broker restart: the stream port answers a
/// moment before the broker has recovered its streams.
async fn wait_until_readable(stream: &str) {
    let deadline = Instant::now() + CHANGE_LIMIT;
    loop {
        let endpoint = endpoint();
        let consumer = async {
            let environment = rabbitmq_stream_client::Environment::builder()
                .host(&endpoint.host)
                .port(endpoint.port)
                .build()
                .await
                .ok()?;
            environment
                .consumer()
                .offset(rabbitmq_stream_client::types::OffsetSpecification::First)
                .build(stream)
                .await
                .ok()
        };
        if let Some(consumer) = consumer.await {
            let _ = consumer.handle().close().await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} not readable within {CHANGE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Read `stream` from its first message until one with an id at or above `through` arrives,
/// then a little longer, so a duplicate or a later message would show.
async fn read_stream_through(stream: &str, through: u64) -> Vec<Received> {
    let mut reader = StreamReader::open(&endpoint(), stream).await;
    let got = reader
        .read_until(CHANGE_LIMIT, |got| {
            got.iter()
                .any(|m| m.message_id.is_some_and(|id| id >= through))
        })
        .await
        .len();
    let received = reader
        .read_until(Duration::from_millis(500), |r| r.len() > got)
        .await
        .to_vec();
    reader.close().await;
    assert!(
        received
            .iter()
            .any(|m| m.message_id.is_some_and(|id| id >= through)),
        "no message with an id from {through} on {stream}: {} messages",
        received.len()
    );
    received
}

fn ids(received: &[Received]) -> Vec<u64> {
    received.iter().map(|m| m.message_id.unwrap()).collect()
}

/// One run's messages: its opening resync (an empty `services.updated` under its floor), then
/// its changes numbered on from the floor without a gap and none twice.
fn assert_one_run(received: &[Received], floor: u64) {
    let first = received.first().expect("the run published something");
    assert_eq!(
        first.message_id,
        Some(floor),
        "the run opens under its floor"
    );
    assert_eq!(first.routing_key(), "services.updated", "{:?}", first.body);
    assert_eq!(first.body["services"], json!([]), "{:?}", first.body);
    let expected: Vec<u64> = (floor..floor + received.len() as u64).collect();
    assert_eq!(ids(received), expected, "every seq once, in order");
    for message in received {
        assert_eq!(Some(message.seq()), message.message_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_unconfirmed_backlog_flushes_within_the_bound_and_counts_the_rest() {
    let test = "sigterm_with_an_unconfirmed_backlog_flushes_within_the_bound_and_counts_the_rest";
    let _exclusive = BROKER_LOCK.write().await;
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    // First the broker is back (but the publisher is in a minute-long pause) when the stop
    // comes: the stop's flush publishes the backlog. Then it stays away: nothing more can be
    // published, and the last line says how much was not.
    for broker_back in [true, false] {
        let prefix = unique_prefix();
        let stream_name = unique("e2e-backlog");
        let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
        let mut settings = broker_settings(&stream_name);
        // One health.check at start-up and no more: the backlog is the changes made here.
        settings.push(("HEALTH_CHECK_INTERVAL_SEC", "3600".to_owned()));
        settings.push(("RABBITMQ_RECONNECT_MIN_MS", "60000".to_owned()));
        settings.push(("RABBITMQ_RECONNECT_MAX_MS", "60000".to_owned()));
        settings.push(("RABBITMQ_TIMEOUT_MS", "3000".to_owned()));
        let mut binary = Binary::start(&prefix, &as_pairs(&settings));
        binary.wait_ready().await;
        let floor = binary.revision_floor();
        let health = binary
            .poll_json("/health", "everything so far confirmed", |h| {
                h["publisher"]["connected"] == true
                    && h["publisher"]["outbox_len"] == 0
                    && h["publisher"]["last_confirmed"] == h["revision"]
            })
            .await;
        let confirmed_before = health["revision"].as_u64().unwrap();

        let mut outage = Some(BrokerOutage::begin());
        binary
            .poll_json("/health", "the publisher to notice the outage", |h| {
                h["publisher"]["connected"] == false
            })
            .await;
        let enabled = format!("{prefix}.enabled");
        let service = create_service(
            &unique("e2e-backlog-svc"),
            &[(enabled.as_str(), "true")],
            0,
            &["sleep", "3600"],
        );
        let health = binary
            .poll_json("/health", "the new service waiting in the outbox", |h| {
                let revision = h["revision"].as_u64().unwrap_or(0);
                revision > confirmed_before
                    && h["publisher"]["outbox_len"].as_u64() == Some(revision - confirmed_before)
            })
            .await;
        let revision = health["revision"].as_u64().unwrap();
        let backlog = revision - confirmed_before;

        if broker_back {
            outage.take().unwrap().end();
        }
        let status = binary.stop();
        assert!(status.success(), "{status}\n{}", binary.output());
        let last = binary.last_log_line();
        assert!(last.contains("stopped"), "{last}");
        if broker_back {
            assert!(
                last.contains("unpublished=0"),
                "{last}\n{}",
                binary.output()
            );
            wait_until_readable(&stream_name).await;
            let received = read_stream_through(&stream_name, revision).await;
            assert_one_run(&received, floor);
            assert_eq!(ids(&received).last(), Some(&revision));
        } else {
            assert!(
                last.contains(&format!("unpublished={backlog}"))
                    && last.contains("not confirmed by the broker"),
                "{last}\n{}",
                binary.output()
            );
            outage.take().unwrap().end();
            wait_until_readable(&stream_name).await;
            let received = read_stream_through(&stream_name, confirmed_before).await;
            assert_one_run(&received, floor);
            assert_eq!(ids(&received).last(), Some(&confirmed_before));
        }
        drop(service);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_publishing_then_a_restart_stores_nothing_twice_and_opens_with_a_resync() {
    let test =
        "kill_9_while_publishing_then_a_restart_stores_nothing_twice_and_opens_with_a_resync";
    let _shared = BROKER_LOCK.read().await;
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    let stream_name = unique("e2e-kill9");
    let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
    let mut settings = broker_settings(&stream_name);
    // A health.check every second: the first run is publishing when it is killed.
    settings.push(("HEALTH_CHECK_INTERVAL_SEC", "1".to_owned()));
    let prefix = unique_prefix();

    let mut first = Binary::start(&prefix, &as_pairs(&settings));
    first.wait_ready().await;
    let first_floor = first.revision_floor();
    first
        .poll_json("/health", "a few confirmed changes", |h| {
            h["publisher"]["last_confirmed"]
                .as_u64()
                .is_some_and(|c| c >= first_floor + 3)
        })
        .await;
    first.kill_9();

    let mut second = Binary::start(&prefix, &as_pairs(&settings));
    second.wait_ready().await;
    let second_floor = second.revision_floor();
    second
        .poll_json("/health", "the second run publishing", |h| {
            h["publisher"]["last_confirmed"]
                .as_u64()
                .is_some_and(|c| c >= second_floor + 2)
        })
        .await;

    let received = read_stream_through(&stream_name, second_floor + 2).await;
    let all = ids(&received);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "no id twice, ids rising: {all:?}"
    );
    let split = received
        .iter()
        .position(|m| m.message_id.is_some_and(|id| id >= second_floor))
        .unwrap();
    // What the first run got confirmed is there once; the second run starts above all of it
    // and opens with a resync a consumer replaces its list with.
    assert_one_run(&received[..split], first_floor);
    assert_one_run(&received[split..], second_floor);
    second.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_raises_revisions_and_etags_and_resets_event_ids_of_the_earlier_run() {
    let test = "a_restart_raises_revisions_and_etags_and_resets_event_ids_of_the_earlier_run";
    let _shared = BROKER_LOCK.read().await;
    if !swarm_available(test) {
        return;
    }
    for with_broker in [false, true] {
        if with_broker && !rabbitmq_available(test) {
            return;
        }
        let prefix = unique_prefix();
        let stream_name = unique("e2e-restart");
        let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
        let settings = if with_broker {
            broker_settings(&stream_name)
        } else {
            Vec::new()
        };
        let name = unique("e2e-restart-svc");
        let enabled = format!("{prefix}.enabled");
        let _service = create_service(&name, &[(enabled.as_str(), "true")], 0, &["sleep", "3600"]);

        // Run 1: the numbers a client keeps.
        let mut first = Binary::start(&prefix, &as_pairs(&settings));
        first.wait_ready().await;
        first
            .poll_json("/services", "the service listed", |b| {
                b["services"].as_array().is_some_and(|s| s.len() == 1)
            })
            .await;
        let client = first.client(Protocol::Http1);
        let list = client.get("/services").await;
        let first_etag = list.header("etag").unwrap().to_owned();
        let first_revision: u64 = list.header("x-registry-revision").unwrap().parse().unwrap();
        let first_entry_etag = etag_number(
            client
                .get(&format!("/services/{name}"))
                .await
                .header("etag")
                .unwrap(),
        );
        let mut events = client.events("/events/stream", &[]).await;
        let snapshot = events.next().await.unwrap();
        assert_eq!(snapshot.event, "snapshot");
        let first_event_id = snapshot.id.unwrap();
        drop(events);
        assert!(first.stop().success(), "{}", first.output());

        // Run 2: every number above run 1's.
        let mut second = Binary::start(&prefix, &as_pairs(&settings));
        second.wait_ready().await;
        second
            .poll_json("/services", "the service listed again", |b| {
                b["services"].as_array().is_some_and(|s| s.len() == 1)
            })
            .await;
        assert!(
            second.revision_floor() >= first_revision,
            "with_broker={with_broker}: floor {} below run 1's revision {first_revision}",
            second.revision_floor()
        );
        let client = second.client(Protocol::Http1);
        let list = client.get("/services").await;
        let second_revision: u64 = list.header("x-registry-revision").unwrap().parse().unwrap();
        assert!(
            second_revision > first_revision,
            "with_broker={with_broker}"
        );
        assert!(
            etag_number(list.header("etag").unwrap()) > etag_number(&first_etag),
            "with_broker={with_broker}"
        );
        let entry_etag = etag_number(
            client
                .get(&format!("/services/{name}"))
                .await
                .header("etag")
                .unwrap(),
        );
        assert!(entry_etag > first_entry_etag, "with_broker={with_broker}");
        // Run 1's ETag never matches run 2's data.
        let revalidated = client
            .send(
                client
                    .request(http::Method::GET, "/services")
                    .header("if-none-match", &first_etag),
            )
            .await;
        assert_eq!(
            revalidated.status,
            StatusCode::OK,
            "with_broker={with_broker}"
        );
        // Run 1's event id: a reset that says why, never a silent gap.
        let mut resumed = client
            .events(
                "/events/stream",
                &[("last-event-id", &first_event_id.to_string())],
            )
            .await;
        let reset = resumed.next().await.unwrap();
        assert_eq!(reset.event, "reset", "with_broker={with_broker}");
        let reason = reset.json()["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("predates this run"),
            "with_broker={with_broker}: {reason}"
        );
        assert!(reason.contains(&first_event_id.to_string()), "{reason}");
        drop(resumed);
        second.assert_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_under_one_producer_name_the_first_stops_publishing_and_says_so() {
    let test = "two_registries_under_one_producer_name_the_first_stops_publishing_and_says_so";
    let _shared = BROKER_LOCK.read().await;
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    let stream_name = unique("e2e-twins");
    let _cleanup = StreamCleanup(endpoint(), stream_name.clone());
    let mut settings = broker_settings(&stream_name);
    settings.push(("HEALTH_CHECK_INTERVAL_SEC", "1".to_owned()));

    let mut first = Binary::start(&unique_prefix(), &as_pairs(&settings));
    first.wait_ready().await;
    let first_floor = first.revision_floor();
    first
        .poll_json("/health", "the first registry publishing", |h| {
            h["publisher"]["last_confirmed"]
                .as_u64()
                .is_some_and(|c| c > first_floor)
        })
        .await;

    // The second starts above everything the first published and raises the broker's mark:
    // from then on, the first one's ids would be dropped as duplicates.
    let mut second = Binary::start(&unique_prefix(), &as_pairs(&settings));
    second.wait_ready().await;
    let second_floor = second.revision_floor();

    let health = first
        .poll_json("/health", "the first registry to notice", |h| {
            h["publisher"]["another_writer"] == true
        })
        .await;
    let publisher = &health["publisher"];
    assert_eq!(publisher["connected"], false, "{health}");
    assert!(
        publisher["foreign_publishing_id"]
            .as_u64()
            .is_some_and(|id| id >= second_floor),
        "{health}"
    );
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().unwrap().contains("another writer"))),
        "{health}"
    );
    assert!(
        publisher["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("RABBITMQ_PRODUCER_NAME")),
        "{health}"
    );
    let metrics = first.client(Protocol::Http1).get("/metrics").await;
    assert!(String::from_utf8_lossy(&metrics.body)
        .contains("swarm_registry_publisher_another_writer 1\n"));
    assert!(
        first
            .stdout
            .text()
            .contains("another writer publishes under this producer name"),
        "{}",
        first.output()
    );
    first.assert_running();

    // The second keeps publishing and sees nothing wrong.
    let health = second
        .poll_json("/health", "the second registry publishing", |h| {
            h["publisher"]["last_confirmed"]
                .as_u64()
                .is_some_and(|c| c >= second_floor + 2)
        })
        .await;
    assert_eq!(health["publisher"]["another_writer"], false, "{health}");
    assert_eq!(health["publisher"]["connected"], true, "{health}");
    let received = read_stream_through(&stream_name, second_floor + 2).await;
    let split = received
        .iter()
        .position(|m| m.message_id.is_some_and(|id| id >= second_floor))
        .unwrap();
    assert_one_run(&received[..split], first_floor);
    assert_one_run(&received[split..], second_floor);
}
