//! How the registry's costs grow with the work: the real `swarm-registry` binary, as a child
//! process, against the simulated engine (`swarm-engine-sim`, another child process) with
//! RabbitMQ publishing off.
//!
//! Two curves:
//! - services: for each count N of labelled services at steady churn, the registry's resident
//!   memory and its growth per service above an empty registry; the time to fold a full list
//!   of the same N services (in this process, with the `pipeline` crate); engine event to
//!   readable change (the engine's `timeNano` to this program reading the change on an event
//!   stream); and GET /services and GET /services/{name} over HTTP/1.1 and h2c.
//! - subscribers: for each count M of event-stream subscribers at steady churn, over HTTP/2
//!   (up to 1,000 streams on each connection) and over one HTTP/1.1 connection each: delivery
//!   latency from the engine's event to each subscriber, and the registry's memory per
//!   subscriber (connected with the churn paused, so idle; and again at the window's end).
//!
//! Run: `benches/scale.sh` (builds the simulated engine, then `cargo bench --bench
//! scale_curves`). Tables go to stdout and, with the curves as SVG, to `docs/bench/`
//! (`scale-services.md`, `scale-subscribers.md`, one file per curve, each saying its commit).
//! Under `cargo test --all-targets` (no `--bench` argument) it makes a smoke run: a few
//! services and subscribers, seconds long, files under `target/`, exit 1 if a step fails.
//!
//! Settings (environment): `SCALE_SERVICES` (default `0,100,1000,10000`; 0 is the empty
//! registry every growth is measured above), `SCALE_SUBSCRIBERS` (`100,1000,10000`),
//! `SCALE_SUBSCRIBER_SERVICES` (100), `SCALE_CHURN` (changes per second, 100),
//! `SCALE_WARMUP_SEC` (10), `SCALE_WINDOW_SEC` (10), `SCALE_HTTP_SEC` (5 per protocol and
//! path), `SCALE_OUT` (docs/bench), `SCALE_ONLY` (`services` or `subscribers`),
//! `SWARM_ENGINE_SIM` (the simulated engine's binary), `SCALE_REGISTRY_ENV` (extra
//! `NAME=value` settings for the registry, space-separated), `SCALE_REGISTRY_BIN` (another
//! build of the registry to run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/process.rs"]
mod process;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pipeline::{Folder, Input, ServiceMode, ServiceSpec, Snapshot, Timestamp};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use process::{free_port, Captured};

/// Streams per HTTP/2 connection (the registry allows HTTP2_MAX_STREAMS = 1024 by default).
const STREAMS_PER_CONNECTION: usize = 1000;
/// HTTP/1.1 connections opened at once while subscribers connect (the listen backlog is finite).
const CONNECTS_IN_FLIGHT: usize = 128;

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    full: bool,
    services: Vec<usize>,
    subscribers: Vec<usize>,
    subscriber_services: usize,
    churn: f64,
    warmup: Duration,
    window: Duration,
    http: Duration,
    /// How long changes emitted by the end of a window get to arrive everywhere.
    settle: Duration,
    /// RSS readings (200 ms apart) whose median is reported.
    rss_readings: usize,
    out: PathBuf,
    only: Option<String>,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {s:?} is not a count"))
        })
        .collect()
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number")),
        _ => default,
    }
}

impl Settings {
    fn read() -> Settings {
        // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
        let full = std::env::args().any(|a| a == "--bench");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        if full {
            Settings {
                full,
                services: env_list("SCALE_SERVICES", "0,100,1000,10000"),
                subscribers: env_list("SCALE_SUBSCRIBERS", "100,1000,10000"),
                subscriber_services: env_num("SCALE_SUBSCRIBER_SERVICES", 100),
                churn: env_num("SCALE_CHURN", 100.0),
                warmup: Duration::from_secs(env_num("SCALE_WARMUP_SEC", 10)),
                window: Duration::from_secs(env_num("SCALE_WINDOW_SEC", 10)),
                http: Duration::from_secs(env_num("SCALE_HTTP_SEC", 5)),
                settle: Duration::from_secs(2),
                rss_readings: 5,
                out: std::env::var("SCALE_OUT")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| root.join("docs/bench")),
                only: std::env::var("SCALE_ONLY").ok().filter(|s| !s.is_empty()),
            }
        } else {
            Settings {
                full,
                services: vec![0, 20],
                subscribers: vec![10],
                subscriber_services: 10,
                churn: 20.0,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(1),
                http: Duration::from_millis(300),
                settle: Duration::from_millis(500),
                rss_readings: 1,
                out: root.join("target/scale-curves-smoke"),
                only: None,
            }
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == part)
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: the simulated engine and the registry

/// A child process killed when dropped; what it wrote to stderr is kept for failures.
struct Process {
    child: Child,
    stderr: Captured,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        let text = self.stderr.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails the run if the process has exited.
    fn check_alive(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{what} exited ({status}); its last output:\n{}",
                self.stderr_tail()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first so the registry drains as it would in production, then kill.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let limit = Instant::now() + Duration::from_secs(5);
        while Instant::now() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the child writes to stderr, gathered as it comes.
fn capture_stderr(child: &mut Child) -> Captured {
    let stderr = Captured::default();
    if let Some(pipe) = child.stderr.take() {
        stderr.follow(pipe);
    }
    stderr
}

/// The simulated engine's binary: `SWARM_ENGINE_SIM`, else beside this program's profile
/// directory (built by `cargo build -p engine-sim`), built now if absent.
fn sim_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SWARM_ENGINE_SIM") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/scale_curves-<hash> -> target/<profile>/swarm-engine-sim
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let binary = profile_dir.join("swarm-engine-sim");
    if !binary.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "engine-sim", "--bin", "swarm-engine-sim"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building swarm-engine-sim");
    }
    assert!(binary.exists(), "{} after building", binary.display());
    binary
}

struct Engine {
    process: Process,
    /// Where the engine answers (its `tcp://` URL made an address).
    addr: SocketAddr,
    url: String,
}

fn start_engine(services: usize, churn: f64, seed: u64) -> Engine {
    let mut child = Command::new(sim_binary())
        .args(["--listen", "tcp://127.0.0.1:0"])
        .args(["--services", &services.to_string()])
        .args(["--labelled-share", "1.0"])
        .args(["--churn", &churn.to_string()])
        .args(["--nodes", "1", "--tasks", "1"])
        .args(["--seed", &seed.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting swarm-engine-sim");
    let stderr = capture_stderr(&mut child);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // Keep draining stdout so the engine never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    let process = Process { child, stderr };
    let url = first
        .trim()
        .strip_prefix("swarm-engine-sim listening on ")
        .unwrap_or_else(|| {
            panic!(
                "swarm-engine-sim's first line was {first:?}; its output:\n{}",
                process.stderr_tail()
            )
        })
        .to_owned();
    let addr = url
        .strip_prefix("tcp://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("swarm-engine-sim listens on {url}, not tcp://HOST:PORT"));
    Engine { process, addr, url }
}

struct Registry {
    process: Process,
    addr: SocketAddr,
}

fn start_registry(engine: &Engine, max_connections: usize) -> Registry {
    let port = free_port();
    // SCALE_REGISTRY_BIN runs another build of the registry (paired before/after rounds).
    let binary = std::env::var("SCALE_REGISTRY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_swarm-registry").to_owned());
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DOCKER_BASE_URL", &engine.url)
        .env("LOG_LEVEL", "warn")
        .env("MAX_CONNECTIONS", max_connections.to_string())
        // The node sampler reads Docker's stats for the simulated containers (there are no
        // cgroup files for them), a call per task: at 10,000 tasks every second the simulated
        // engine alone would take a core of the two. Sampling runs once at start-up and then
        // every 10 minutes, so every service still holds its metrics record and no window
        // shares the cores with it (the sampler's own cost: "Node sampler" above).
        .env("CGROUP_ROOT", "/nonexistent-cgroup-root")
        .env("NODE_SAMPLE_INTERVAL_MS", "600000")
        .env("METRICS_REFRESH_INTERVAL_SEC", "600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Extra settings for experiments, e.g. SCALE_REGISTRY_ENV="CHANGE_LOG_CAPACITY=64".
    for pair in std::env::var("SCALE_REGISTRY_ENV")
        .unwrap_or_default()
        .split_whitespace()
    {
        if let Some((name, value)) = pair.split_once('=') {
            command.env(name, value);
        }
    }
    let mut child = command.spawn().expect("starting swarm-registry");
    let stderr = capture_stderr(&mut child);
    Registry {
        process: Process { child, stderr },
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// Resident memory of a process, in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The median of `count` readings 200 ms apart: one reading can land on a passing
/// allocation.
async fn steady_rss_kib(pid: u32, count: usize) -> u64 {
    let mut readings = vec![rss_kib(pid)];
    for _ in 1..count {
        tokio::time::sleep(Duration::from_millis(200)).await;
        readings.push(rss_kib(pid));
    }
    readings.sort_unstable();
    readings[readings.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn epoch_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = request(addr, "GET", path, "").await?;
    if status != 200 {
        return Err(format!(
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: {e}"))
}

async fn set_churn(engine: &Engine, per_second: f64) {
    let body = serde_json::json!({ "per_second": per_second }).to_string();
    let (status, answer) = request(engine.addr, "POST", "/_sim/churn", &body)
        .await
        .unwrap();
    assert!(
        (200..300).contains(&status),
        "POST /_sim/churn: {status} {}",
        String::from_utf8_lossy(&answer)
    );
}

/// The registry's services, once it lists `n` of them (start-up and the first full list).
async fn wait_for_services(registry: &mut Registry, n: usize) -> Vec<Value> {
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        registry.process.check_alive("swarm-registry");
        // The body is {"metadata": {...}, "services": [...]}.
        if let Ok(Value::Object(mut body)) = get_json(registry.addr, "/services").await {
            if let Some(Value::Array(services)) = body.remove("services") {
                if services.len() >= n {
                    return services;
                }
            }
        }
        assert!(
            Instant::now() < limit,
            "the registry did not list {n} services within 120 s; its output:\n{}",
            registry.process.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The engine's service events, and the registry's changes, on one clock

/// A service event as the engine emitted it.
#[derive(Clone)]
struct EngineEvent {
    service_id: String,
    time_nano: u64,
}

/// Follows the engine's service events (its Docker events endpoint) until `stop`.
fn follow_engine_events(
    engine_addr: SocketAddr,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<EngineEvent>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let stream = tokio::net::TcpStream::connect(engine_addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        // filters={"type":["service"]}
        let request = http::Request::builder()
            .uri("/events?filters=%7B%22type%22%3A%5B%22service%22%5D%7D")
            .header("host", "docker")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "the engine's GET /events");
        let mut body = response.into_body();
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(data) = next_data(&mut body, &stop).await {
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if event["Type"] != "service" {
                    continue;
                }
                let (Some(id), Some(time_nano)) =
                    (event["Actor"]["ID"].as_str(), event["timeNano"].as_u64())
                else {
                    continue;
                };
                seen.push(EngineEvent {
                    service_id: id.to_owned(),
                    time_nano,
                });
            }
        }
        seen
    })
}

/// A `service.*` change as one event-stream reader received it.
struct ObservedChange {
    seq: u64,
    service_id: String,
    received_nano: u64,
}

/// One event-stream subscription that reads every change's body (the others look only at
/// ids): which service each seq is about, and when it arrived.
fn observe_changes(
    registry: SocketAddr,
    stop: CancellationToken,
    ready: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<ObservedChange>> {
    tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(registry).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .uri("/events/stream?events=service.*")
            .header("host", "bench")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let mut body = response.into_body();
        let mut buffer: Vec<u8> = Vec::new();
        let mut seen = Vec::new();
        while let Some(data) = next_data(&mut body, &stop).await {
            let received_nano = epoch_nanos();
            buffer.extend_from_slice(&data);
            while let Some(end) = find_blank_line(&buffer) {
                let block: Vec<u8> = buffer.drain(..end + 2).collect();
                let parsed = parse_block(&block);
                if parsed.event == "snapshot" {
                    ready.store(true, Ordering::Release);
                    continue;
                }
                let (Some(seq), true) = (parsed.id, parsed.event.starts_with("service.")) else {
                    continue;
                };
                let Ok(body) = serde_json::from_str::<Value>(&parsed.data) else {
                    continue;
                };
                let service_id = body["service"]["id"]
                    .as_str()
                    .or(body["service_id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                seen.push(ObservedChange {
                    seq,
                    service_id,
                    received_nano,
                });
            }
        }
        seen
    })
}

/// The body's next DATA bytes (other frames skipped); `None` once it ends, fails, or `stop`
/// fires.
async fn next_data(body: &mut Incoming, stop: &CancellationToken) -> Option<Bytes> {
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return None,
            frame = body.frame() => frame,
        };
        if let Ok(data) = frame?.ok()?.into_data() {
            return Some(data);
        }
    }
}

fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}

struct Block {
    id: Option<u64>,
    event: String,
    data: String,
}

fn parse_block(block: &[u8]) -> Block {
    let text = String::from_utf8_lossy(block);
    let mut parsed = Block {
        id: None,
        event: String::new(),
        data: String::new(),
    };
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            parsed.id = id.trim().parse().ok();
        } else if let Some(event) = line.strip_prefix("event: ") {
            parsed.event = event.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            parsed.data.push_str(data);
        }
    }
    parsed
}

/// Which engine event each change answers, matched per service in order: a change is
/// charged to the earliest engine event of its service not yet answered and emitted before
/// the change arrived (later events of that service emitted before it also count as
/// answered by it: the registry folds one inspect for several events that arrive while one
/// is in flight). Returns seq -> the engine's `timeNano`, and counts.
struct Matching {
    origin: HashMap<u64, u64>,
    /// Changes with no engine event to answer (e.g. a running count moved by a task).
    unmatched_changes: usize,
    /// Engine events answered by a change that also answered an earlier one.
    coalesced_events: usize,
    /// Engine events in the window with no change seen by the end.
    unanswered_events: usize,
}

fn match_changes(events: &[EngineEvent], changes: &[ObservedChange], from_nano: u64) -> Matching {
    let mut pending: HashMap<&str, VecDeque<u64>> = HashMap::new();
    for event in events {
        pending
            .entry(event.service_id.as_str())
            .or_default()
            .push_back(event.time_nano);
    }
    let mut origin = HashMap::new();
    let (mut unmatched_changes, mut coalesced_events) = (0, 0);
    for change in changes {
        let Some(queue) = pending.get_mut(change.service_id.as_str()) else {
            unmatched_changes += 1;
            continue;
        };
        let mut answered = Vec::new();
        while queue.front().is_some_and(|t| *t <= change.received_nano) {
            answered.extend(queue.pop_front());
        }
        match answered.first() {
            Some(first) => {
                coalesced_events += answered.len() - 1;
                if *first >= from_nano {
                    origin.insert(change.seq, *first);
                }
            }
            None => unmatched_changes += 1,
        }
    }
    let unanswered_events = pending
        .values()
        .flatten()
        .filter(|t| **t >= from_nano)
        .count();
    Matching {
        origin,
        unmatched_changes,
        coalesced_events,
        unanswered_events,
    }
}

// ---------------------------------------------------------------------------------------------
// Latency summaries

#[derive(Clone, Copy, Default)]
struct Quantiles {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank quantiles of latencies in microseconds, reported in milliseconds.
fn quantiles(mut micros: Vec<u64>) -> Quantiles {
    if micros.is_empty() {
        return Quantiles::default();
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let rank = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len());
        micros[rank - 1] as f64 / 1000.0
    };
    Quantiles {
        n: micros.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: micros[micros.len() - 1] as f64 / 1000.0,
    }
}

/// The registry's own change-to-delivery histogram (`/metrics`): cumulative bucket counts.
async fn delivery_histogram(addr: SocketAddr) -> Vec<(String, u64)> {
    let Ok((_, body)) = request(addr, "GET", "/metrics", "").await else {
        return Vec::new();
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("swarm_registry_change_delivery_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound holding quantile `q` of what the histogram gained between two readings.
fn histogram_quantile(before: &[(String, u64)], after: &[(String, u64)], q: f64) -> String {
    let gained: Vec<(String, u64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before.iter().find(|(b, _)| b == le).map_or(0, |(_, c)| *c);
            (le.clone(), count.saturating_sub(earlier))
        })
        .collect();
    let Some(total) = gained.last().map(|(_, c)| *c).filter(|c| *c > 0) else {
        return "-".to_owned();
    };
    let wanted = (total as f64 * q).ceil() as u64;
    gained
        .into_iter()
        .find(|(_, count)| *count >= wanted)
        .map(|(le, _)| format!("<= {le} s"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// HTTP read load: closed loop, fixed concurrency

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    H2c,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct LoadResult {
    per_second: f64,
    latency: Quantiles,
    failures: usize,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: SocketAddr, protocol: Protocol) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    match protocol {
        Protocol::Http1 => {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            Sender::Http1(sender)
        }
        Protocol::H2c => {
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(1 << 22)
                    .initial_connection_window_size(1 << 26)
                    .handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        }
    }
}

async fn send(sender: &mut Sender, path: &str) -> Result<Incoming, String> {
    let request = http::Request::builder()
        .uri(path)
        .header("host", "bench")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = match sender {
        Sender::Http1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(request).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(request).await
        }
    }
    .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    Ok(response.into_body())
}

/// `GET path` for `duration`: HTTP/1.1 over 16 connections, one request each at a time;
/// h2c over 4 connections with 16 streams each. Every response body is read to its end.
async fn read_load(
    addr: SocketAddr,
    protocol: Protocol,
    path: &str,
    duration: Duration,
) -> LoadResult {
    let (connections, per_connection) = match protocol {
        Protocol::Http1 => (16, 1),
        Protocol::H2c => (4, 16),
    };
    let deadline = Instant::now() + duration;
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let first = connect(addr, protocol).await;
        let mut senders = Vec::with_capacity(per_connection);
        if let Sender::H2(shared) = &first {
            for _ in 1..per_connection {
                senders.push(Sender::H2(shared.clone()));
            }
        }
        senders.push(first);
        for mut sender in senders {
            let path = path.to_owned();
            let failures = failures.clone();
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let outcome = match send(&mut sender, &path).await {
                        Ok(body) => body.collect().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(_) => latencies.push(started.elapsed().as_micros() as u64),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                latencies
            }));
        }
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    LoadResult {
        per_second: all.len() as f64 / elapsed,
        latency: quantiles(all),
        failures: failures.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// The services curve

struct ServicesRow {
    services: usize,
    listed: usize,
    rss_kib: u64,
    fold_full_ms: f64,
    fold_again_ms: f64,
    readable: Quantiles,
    matching: (usize, usize, usize, usize),
    engine_events: usize,
    reads: Vec<(Protocol, &'static str, LoadResult)>,
    load_average: String,
}

/// A registry entry made back into what the engine reported (the fold's input).
fn spec_of(entry: &Value) -> Option<ServiceSpec> {
    let text = |key: &str| entry[key].as_str().map(str::to_owned);
    let desired = entry["desired_tasks"].as_u64();
    Some(ServiceSpec {
        id: text("id")?,
        name: text("name")?,
        labels: entry["labels"]
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
        mode: if entry["mode"] == "global" {
            ServiceMode::Global
        } else {
            ServiceMode::Replicated(desired.unwrap_or(1))
        },
        created_at: text("created_at")?,
        updated_at: text("updated_at")?,
        version: entry["version"].as_u64()?,
        running_tasks: entry["running_tasks"].as_u64(),
        desired_tasks: desired,
    })
}

/// Milliseconds to fold `specs` as a full list into an empty registry (every service added)
/// and into one that already holds them (a periodic list that finds nothing new): the
/// median of 5 rounds each.
fn fold_times(specs: &[ServiceSpec]) -> (f64, f64) {
    let folder = Folder::default();
    let list = Input::FullList(specs.to_vec());
    let empty = Snapshot::empty(0, 4096, Timestamp(0));
    let mut first = Vec::new();
    let mut again = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let filled = folder.fold(&empty, &list, Timestamp(1));
        first.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let unchanged = folder.fold(&filled.snapshot, &list, Timestamp(2));
        again.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(unchanged);
    }
    first.sort_by(f64::total_cmp);
    again.sort_by(f64::total_cmp);
    (first[2], again[2])
}

async fn services_point(settings: &Settings, n: usize) -> ServicesRow {
    eprintln!(
        "[services] {n} labelled services, churn {}/s",
        settings.churn
    );
    let mut engine = start_engine(n, 0.0, 1);
    let mut registry = start_registry(&engine, 4096);
    let listed = wait_for_services(&mut registry, n).await;
    let specs: Vec<ServiceSpec> = listed.iter().filter_map(spec_of).collect();
    assert_eq!(
        specs.len(),
        listed.len(),
        "every listed entry reads as a spec"
    );
    let (fold_full_ms, fold_again_ms) = fold_times(&specs);

    let stop = CancellationToken::new();
    let engine_events = follow_engine_events(engine.addr, stop.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let observed = observe_changes(registry.addr, stop.clone(), ready.clone());
    while !ready.load(Ordering::Acquire) {
        registry.process.check_alive("swarm-registry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let churn = if n == 0 { 0.0 } else { settings.churn };
    set_churn(&engine, churn).await;
    tokio::time::sleep(settings.warmup).await;
    let window_start = epoch_nanos();
    let rss = steady_rss_kib(registry.process.pid(), settings.rss_readings).await;
    tokio::time::sleep(settings.window).await;
    let window_end = epoch_nanos();
    set_churn(&engine, 0.0).await;
    // Changes for events emitted up to now still arrive.
    tokio::time::sleep(settings.settle).await;
    registry.process.check_alive("swarm-registry");
    engine.process.check_alive("swarm-engine-sim");
    stop.cancel();
    let events = engine_events.await.unwrap();
    let changes = observed.await.unwrap();
    let matching = match_changes(&events, &changes, window_start);
    let in_window = |t: u64| t >= window_start && t < window_end;
    let latencies: Vec<u64> = changes
        .iter()
        .filter_map(|c| {
            let origin = matching.origin.get(&c.seq).filter(|t| in_window(**t))?;
            Some(c.received_nano.saturating_sub(*origin) / 1000)
        })
        .collect();
    let engine_events = events.iter().filter(|e| in_window(e.time_nano)).count();

    // Reads, with the churn paused (at 100 changes/s a service read by name is soon
    // removed), then the whole list again with the churn on (its rendering is cached per
    // revision, so churn makes reads render it again).
    let mut reads = Vec::new();
    if n > 0 {
        let listed_now = wait_for_services(&mut registry, 1).await;
        let one = listed_now
            .get(listed_now.len() / 2)
            .and_then(|e| e["name"].as_str())
            .map(|name| format!("/services/{name}"))
            .unwrap();
        for protocol in [Protocol::Http1, Protocol::H2c] {
            for (label, path) in [("/services", "/services"), ("/services/{name}", &one)] {
                let load = read_load(registry.addr, protocol, path, settings.http).await;
                reads.push((protocol, label, load));
            }
        }
        set_churn(&engine, settings.churn).await;
        for protocol in [Protocol::Http1, Protocol::H2c] {
            let load = read_load(registry.addr, protocol, "/services", settings.http).await;
            reads.push((protocol, "/services, churn on", load));
        }
        set_churn(&engine, 0.0).await;
        registry.process.check_alive("swarm-registry");
    }
    ServicesRow {
        services: n,
        listed: listed.len(),
        rss_kib: rss,
        fold_full_ms,
        fold_again_ms,
        readable: quantiles(latencies),
        matching: (
            matching.origin.len(),
            matching.unmatched_changes,
            matching.coalesced_events,
            matching.unanswered_events,
        ),
        engine_events,
        reads,
        load_average: load_average(),
    }
}

// ---------------------------------------------------------------------------------------------
// The subscribers curve

struct SubscribersRow {
    subscribers: usize,
    protocol: Protocol,
    connected: usize,
    connections: usize,
    rss_before_kib: u64,
    /// With the subscribers connected and idle (churn paused).
    rss_after_kib: u64,
    /// At the end of the window, with whatever the subscribers' backlog holds.
    rss_loaded_kib: u64,
    delivery: Quantiles,
    /// Changes every subscriber should have had, and how many subscribers had them all.
    expected: usize,
    complete: usize,
    server_p50: String,
    server_p99: String,
    load_average: String,
    note: String,
}

/// What one subscriber received while recording: (seq, arrival in ns since the epoch).
type Arrivals = Vec<(u64, u64)>;

/// One subscriber's loop: counts its snapshot, records the id and arrival time of every
/// event while `recording` is set, until `stop`.
async fn subscriber_loop(
    mut body: Incoming,
    ready: Arc<AtomicUsize>,
    recording: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Arrivals {
    let mut buffer: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    while let Some(data) = next_data(&mut body, &stop).await {
        let now = epoch_nanos();
        buffer.extend_from_slice(&data);
        while let Some(end) = find_blank_line(&buffer) {
            // Only the head of each block is read: `id: N` then `event: NAME`.
            let head = &buffer[..end.min(80)];
            if head.windows(15).any(|w| w == b"event: snapshot") {
                ready.fetch_add(1, Ordering::Relaxed);
            } else if recording.load(Ordering::Relaxed) {
                if let Some(id) = head
                    .strip_prefix(b"id: ")
                    .and_then(|rest| rest.split(|b| *b == b'\n').next())
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse().ok())
                {
                    seen.push((id, now));
                }
            }
            buffer.drain(..end + 2);
        }
    }
    seen
}

async fn subscribers_point(settings: &Settings, m: usize, protocol: Protocol) -> SubscribersRow {
    eprintln!(
        "[subscribers] {m} over {}, {} services, churn {}/s",
        protocol.name(),
        settings.subscriber_services,
        settings.churn
    );
    let mut engine = start_engine(settings.subscriber_services, 0.0, 2);
    let mut registry = start_registry(&engine, m + 64);
    wait_for_services(&mut registry, settings.subscriber_services).await;

    let stop = CancellationToken::new();
    let engine_events = follow_engine_events(engine.addr, stop.clone());
    let observer_ready = Arc::new(AtomicBool::new(false));
    let observed = observe_changes(registry.addr, stop.clone(), observer_ready.clone());
    while !observer_ready.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_churn(&engine, settings.churn).await;
    tokio::time::sleep(settings.warmup.min(Duration::from_secs(3))).await;
    let rss_before = steady_rss_kib(registry.process.pid(), settings.rss_readings).await;
    // Subscribers connect with the churn paused, so the memory read below is what idle
    // subscribers hold, not a backlog queued for subscribers that fall behind.
    set_churn(&engine, 0.0).await;

    let path = "/events/stream?events=service.*";
    let ready = Arc::new(AtomicUsize::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let subscribers_stop = CancellationToken::new();
    let failed = Arc::new(AtomicUsize::new(0));
    let first_failure = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::with_capacity(m);
    let connections = match protocol {
        Protocol::H2c => m.div_ceil(STREAMS_PER_CONNECTION),
        Protocol::Http1 => m,
    };
    let gate = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let mut shared = Vec::new();
    if protocol == Protocol::H2c {
        for _ in 0..connections {
            if let Sender::H2(s) = connect(registry.addr, Protocol::H2c).await {
                shared.push(s);
            }
        }
    }
    for s in 0..m {
        let ready = ready.clone();
        let recording = recording.clone();
        let stop = subscribers_stop.clone();
        let failed = failed.clone();
        let first_failure = first_failure.clone();
        let gate = gate.clone();
        let h2 = shared.get(s % connections.max(1)).cloned();
        let addr = registry.addr;
        tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let mut sender = match h2 {
                    Some(s) => Sender::H2(s),
                    None => {
                        let stream = tokio::net::TcpStream::connect(addr)
                            .await
                            .map_err(|e| e.to_string())?;
                        stream.set_nodelay(true).map_err(|e| e.to_string())?;
                        let (sender, connection) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                .await
                                .map_err(|e| e.to_string())?;
                        tokio::spawn(connection);
                        Sender::Http1(sender)
                    }
                };
                send(&mut sender, path).await
            }
            .await;
            match opened {
                Ok(body) => subscriber_loop(body, ready, recording, stop).await,
                Err(why) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_failure.lock().unwrap().get_or_insert(why);
                    Vec::new()
                }
            }
        }));
    }
    let limit = Instant::now() + Duration::from_secs(180);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < m
        && Instant::now() < limit
    {
        registry.process.check_alive("swarm-registry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = ready.load(Ordering::Relaxed);
    let mut note = String::new();
    if connected < m {
        note = format!(
            "{} of {m} did not connect: {}",
            m - connected,
            first_failure
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "no snapshot within 180 s".to_owned())
        );
    }
    tokio::time::sleep(settings.settle).await;
    let rss_after = steady_rss_kib(registry.process.pid(), settings.rss_readings).await;
    set_churn(&engine, settings.churn).await;
    tokio::time::sleep(settings.warmup.min(Duration::from_secs(5))).await;

    let histogram_before = delivery_histogram(registry.addr).await;
    let window_start = epoch_nanos();
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(settings.window).await;
    let window_end = epoch_nanos();
    set_churn(&engine, 0.0).await;
    // Let what was emitted in the window arrive everywhere before stopping.
    tokio::time::sleep(settings.settle).await;
    let histogram_after = delivery_histogram(registry.addr).await;
    registry.process.check_alive("swarm-registry");
    engine.process.check_alive("swarm-engine-sim");
    let rss_loaded = rss_kib(registry.process.pid());
    subscribers_stop.cancel();
    stop.cancel();
    let events = engine_events.await.unwrap();
    let changes = observed.await.unwrap();
    let matching = match_changes(&events, &changes, window_start);
    // The changes every subscriber should have: those answering an engine event of the window.
    let expected: HashSet<u64> = changes
        .iter()
        .filter(|c| {
            matching
                .origin
                .get(&c.seq)
                .is_some_and(|t| *t >= window_start && *t < window_end)
        })
        .map(|c| c.seq)
        .collect();
    let mut latencies = Vec::new();
    let mut complete = 0;
    for task in tasks {
        let arrivals = task.await.unwrap_or_default();
        let mut had = 0;
        for (seq, at) in arrivals {
            if !expected.contains(&seq) {
                continue;
            }
            had += 1;
            if let Some(origin) = matching.origin.get(&seq) {
                latencies.push(at.saturating_sub(*origin) / 1000);
            }
        }
        if had == expected.len() {
            complete += 1;
        }
    }
    SubscribersRow {
        subscribers: m,
        protocol,
        connected,
        connections,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_loaded_kib: rss_loaded,
        delivery: quantiles(latencies),
        expected: expected.len(),
        complete,
        server_p50: histogram_quantile(&histogram_before, &histogram_after, 0.50),
        server_p99: histogram_quantile(&histogram_before, &histogram_after, 0.99),
        load_average: load_average(),
        note,
    }
}

// ---------------------------------------------------------------------------------------------
// SVG curves

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart with a logarithmic x axis (the counts) and a linear or logarithmic y axis;
/// an optional horizontal target line.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
    target: Option<(f64, &str)>,
) -> String {
    let (width, height) = (640.0, 400.0);
    let (left, right, top, bottom) = (72.0, 170.0, 40.0, 56.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| *x > 0.0 && y.is_finite() && (!log_y || *y > 0.0))
        .collect();
    let mut ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    if let Some((t, _)) = target {
        ys.push(t);
    }
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let (x_lo, x_hi) = (
        x_min.log10().floor(),
        x_max.log10().ceil().max(x_min.log10().floor() + 1.0),
    );
    let y_max = ys.iter().copied().fold(0.0, f64::max);
    let y_min = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let (y_lo, y_hi) = if log_y {
        let lo = y_min.max(1e-6).log10().floor();
        (lo, y_max.max(1e-6).log10().ceil().max(lo + 1.0))
    } else {
        (0.0, if y_max > 0.0 { y_max * 1.1 } else { 1.0 })
    };
    let sx = |x: f64| left + (x.log10() - x_lo) / (x_hi - x_lo) * plot_w;
    let sy = |y: f64| {
        let v = if log_y {
            (y.max(1e-9).log10() - y_lo) / (y_hi - y_lo)
        } else {
            (y - y_lo) / (y_hi - y_lo)
        };
        top + plot_h - v * plot_h
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"14\" text-anchor=\"middle\">{}</text>\n",
        left + plot_w / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    let mut decade = x_lo;
    while decade <= x_hi + 1e-9 {
        let x = sx(10f64.powf(decade));
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            top + plot_h,
            top + plot_h + 16.0,
            thousands(10f64.powf(decade))
        ));
        decade += 1.0;
    }
    let y_ticks: Vec<f64> = if log_y {
        (y_lo as i32..=y_hi as i32).map(|d| 10f64.powi(d)).collect()
    } else {
        (0..=5).map(|i| y_hi * i as f64 / 5.0).collect()
    };
    for tick in y_ticks {
        let y = sy(tick);
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            short_number(tick)
        ));
    }
    svg.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        left + plot_w / 2.0,
        height - 14.0,
        escape(x_label),
        top + plot_h / 2.0,
        escape(y_label)
    ));
    if let Some((value, label)) = target {
        let y = sy(value);
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{}</text>\n",
            left + plot_w,
            left + plot_w + 6.0,
            y + 4.0,
            escape(label)
        ));
    }
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let drawn: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| *x > 0.0 && y.is_finite() && (!log_y || *y > 0.0))
            .map(|(x, y)| (sx(x), sy(y)))
            .collect();
        let path: Vec<String> = drawn
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        svg.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        ));
        for (x, y) in &drawn {
            svg.push_str(&format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>\n"
            ));
        }
        let legend_y = top + 14.0 + i as f64 * 18.0;
        svg.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{legend_y:.1}\" x2=\"{:.1}\" y2=\"{legend_y:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            left + plot_w + 8.0,
            left + plot_w + 26.0,
            left + plot_w + 30.0,
            legend_y + 4.0,
            escape(&s.name)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn short_number(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value.abs() >= 1000.0 {
        thousands(value)
    } else if value.abs() >= 10.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

fn services_tables(rows: &[ServicesRow], churn: f64) -> String {
    let empty = rows.iter().find(|r| r.services == 0).map(|r| r.rss_kib);
    let mut out = String::new();
    out.push_str(&format!(
        "#### Memory, fold and engine event to readable change ({churn} changes/s)\n\n\
         | services | listed | RSS | above empty, per service | fold full list (first / again) | event to readable p50 | p99 | max | changes timed | unmatched changes / coalesced / unanswered events | load avg |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    for r in rows {
        let per_service = match (empty, r.services) {
            (Some(e), n) if n > 0 => {
                format!("{:.2} KiB", r.rss_kib.saturating_sub(e) as f64 / n as f64)
            }
            _ => "-".to_owned(),
        };
        let (_, unmatched, coalesced, unanswered) = r.matching;
        out.push_str(&format!(
            "| {} | {} | {:.1} MiB | {} | {:.2} ms / {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} of {} events | {} / {} / {} | {} |\n",
            thousands(r.services as f64),
            thousands(r.listed as f64),
            r.rss_kib as f64 / 1024.0,
            per_service,
            r.fold_full_ms,
            r.fold_again_ms,
            r.readable.p50,
            r.readable.p99,
            r.readable.max,
            r.readable.n,
            r.engine_events,
            unmatched,
            coalesced,
            unanswered,
            r.load_average
        ));
    }
    out.push_str(
        "\n#### Reads (HTTP/1.1: 16 connections; h2c: 4 connections x 16 streams; closed loop; churn paused unless said)\n\n\
         | services | protocol | path | req/s | p50 | p99 | max | failures |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.services > 0) {
        for (protocol, path, load) in &r.reads {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
                thousands(r.services as f64),
                protocol.name(),
                path,
                thousands(load.per_second),
                load.latency.p50,
                load.latency.p99,
                load.latency.max,
                load.failures
            ));
        }
    }
    out
}

fn subscribers_table(rows: &[SubscribersRow], churn: f64, services: usize) -> String {
    let mut out = format!(
        "#### Event-stream subscribers ({churn} changes/s over {services} services, `?events=service.*`)\n\n\
         | subscribers | protocol | connections | connected | got every change | delivery p50 | p99 | max | server histogram p50 / p99 | RSS before / idle subscribers / end of window | per idle subscriber | load avg | note |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let per = if r.connected > 0 {
            format!(
                "{:.2} KiB",
                r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / r.connected as f64
            )
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} ({} changes, {} deliveries timed) | {:.2} ms | {:.2} ms | {:.2} ms | {} / {} | {:.1} / {:.1} / {:.1} MiB | {} | {} | {} |\n",
            thousands(r.subscribers as f64),
            r.protocol.name(),
            thousands(r.connections as f64),
            thousands(r.connected as f64),
            thousands(r.complete as f64),
            r.expected,
            thousands(r.delivery.n as f64),
            r.delivery.p50,
            r.delivery.p99,
            r.delivery.max,
            r.server_p50,
            r.server_p99,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.rss_loaded_kib as f64 / 1024.0,
            per,
            r.load_average,
            r.note
        ));
    }
    out
}

fn write_services_charts(out: &Path, rows: &[ServicesRow]) {
    let empty = rows.iter().find(|r| r.services == 0).map(|r| r.rss_kib);
    let measured: Vec<&ServicesRow> = rows.iter().filter(|r| r.services > 0).collect();
    let n = |r: &ServicesRow| r.services as f64;
    let mut memory = vec![Series {
        name: "RSS, MiB".into(),
        points: measured
            .iter()
            .map(|r| (n(r), r.rss_kib as f64 / 1024.0))
            .collect(),
    }];
    if let Some(e) = empty {
        memory.push(Series {
            name: "KiB/service".into(),
            points: measured
                .iter()
                .map(|r| (n(r), r.rss_kib.saturating_sub(e) as f64 / n(r)))
                .collect(),
        });
    }
    write(
        out,
        "services-memory.svg",
        &line_chart(
            "Registry memory by labelled services",
            "labelled services",
            "MiB / KiB per service",
            &memory,
            true,
            Some((2.0, "2 KiB/service")),
        ),
    );
    write(
        out,
        "services-latency.svg",
        &line_chart(
            "Engine event to readable change",
            "labelled services",
            "ms",
            &[
                Series {
                    name: "p50".into(),
                    points: measured.iter().map(|r| (n(r), r.readable.p50)).collect(),
                },
                Series {
                    name: "p99".into(),
                    points: measured.iter().map(|r| (n(r), r.readable.p99)).collect(),
                },
                Series {
                    name: "fold full list".into(),
                    points: measured.iter().map(|r| (n(r), r.fold_full_ms)).collect(),
                },
            ],
            true,
            Some((5.0, "5 ms target")),
        ),
    );
    let mut reads = Vec::new();
    for protocol in [Protocol::Http1, Protocol::H2c] {
        for path in ["/services", "/services/{name}", "/services, churn on"] {
            reads.push(Series {
                name: format!("{path} {}", protocol.name()),
                points: measured
                    .iter()
                    .filter_map(|r| {
                        r.reads
                            .iter()
                            .find(|(p, q, _)| *p == protocol && *q == path)
                            .map(|(_, _, l)| (n(r), l.per_second))
                    })
                    .collect(),
            });
        }
    }
    write(
        out,
        "services-reads.svg",
        &line_chart(
            "GET throughput by labelled services",
            "labelled services",
            "requests/s",
            &reads,
            true,
            None,
        ),
    );
}

fn write_subscriber_charts(out: &Path, rows: &[SubscribersRow]) {
    let mut latency = Vec::new();
    let mut memory = Vec::new();
    for protocol in [Protocol::H2c, Protocol::Http1] {
        let of: Vec<&SubscribersRow> = rows.iter().filter(|r| r.protocol == protocol).collect();
        let m = |r: &SubscribersRow| r.subscribers as f64;
        let label = match protocol {
            Protocol::H2c => "HTTP/2",
            Protocol::Http1 => "HTTP/1.1",
        };
        latency.push(Series {
            name: format!("{label} p50"),
            points: of.iter().map(|r| (m(r), r.delivery.p50)).collect(),
        });
        latency.push(Series {
            name: format!("{label} p99"),
            points: of.iter().map(|r| (m(r), r.delivery.p99)).collect(),
        });
        latency.push(Series {
            name: format!("{label} max"),
            points: of.iter().map(|r| (m(r), r.delivery.max)).collect(),
        });
        memory.push(Series {
            name: label.into(),
            points: of
                .iter()
                .filter(|r| r.connected > 0)
                .map(|r| {
                    (
                        m(r),
                        r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64
                            / r.connected as f64,
                    )
                })
                .collect(),
        });
    }
    write(
        out,
        "subscribers-latency.svg",
        &line_chart(
            "Engine event to subscriber",
            "subscribers",
            "ms",
            &latency,
            true,
            Some((100.0, "100 ms target")),
        ),
    );
    write(
        out,
        "subscribers-memory.svg",
        &line_chart(
            "Registry memory per subscriber",
            "subscribers",
            "KiB per subscriber",
            &memory,
            false,
            Some((8.0, "8 KiB target")),
        ),
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

// ---------------------------------------------------------------------------------------------

async fn run(settings: Settings) {
    let mut report = String::new();
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    report.push_str(&format!(
        "Commit {commit}{}, started with load average {}, {} build.\n\n",
        std::env::var("SCALE_REGISTRY_BIN")
            .map(|b| format!(" (registry binary {b})"))
            .unwrap_or_default(),
        load_average(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    ));
    // Each curve's file holds the heading and its own tables; stdout gets everything.
    let heading = report.clone();
    if settings.runs("services") {
        let mut rows = Vec::new();
        for &n in &settings.services {
            rows.push(services_point(&settings, n).await);
        }
        let tables = services_tables(&rows, settings.churn);
        write(
            &settings.out,
            "scale-services.md",
            &format!("{heading}{tables}"),
        );
        report.push_str(&tables);
        report.push('\n');
        write_services_charts(&settings.out, &rows);
    }
    if settings.runs("subscribers") {
        let mut rows = Vec::new();
        for &m in &settings.subscribers {
            for protocol in [Protocol::H2c, Protocol::Http1] {
                rows.push(subscribers_point(&settings, m, protocol).await);
            }
        }
        let table = subscribers_table(&rows, settings.churn, settings.subscriber_services);
        write(
            &settings.out,
            "scale-subscribers.md",
            &format!("{heading}{table}"),
        );
        report.push_str(&table);
        write_subscriber_charts(&settings.out, &rows);
        if !settings.full {
            // The smoke run checks that the bench works: every subscriber connected and got
            // every change of the window.
            for r in &rows {
                assert_eq!(r.connected, r.subscribers, "{}", r.note);
                assert!(r.expected > 0, "no change in the window");
                assert_eq!(r.complete, r.connected, "subscribers missed changes");
            }
        }
    }
    println!("{report}");
    eprintln!(
        "tables and curves in {} (load average now {})",
        settings.out.display(),
        load_average()
    );
}

fn main() {
    let settings = Settings::read();
    // Thousands of HTTP/1.1 subscribers each hold a socket here and in the registry (which
    // inherits this limit): raise the open-file limit as far as the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => eprintln!("open-file limit: {limit}"),
        Err(e) => eprintln!("open-file limit not raised: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(settings));
}
