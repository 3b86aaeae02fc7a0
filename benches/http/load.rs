//! The HTTP API under load: a bench server with synthetic services and an SSE fan-out
//! client. Driven by benches/http-load.sh; see
//! BENCHMARKS.md ("HTTP API and event stream") for figures.
//!
//! ```text
//! http_load serve --port P [--services N]
//! http_load sse   --addr HOST:PORT --pid SERVER_PID [--subscribers N] [--connections C]
//!                 [--changes K] [--query "events=service.updated"]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pipeline::{Input, Registry, RegistryConfig, ServiceMode, ServiceSpec};
use swarm_registry::control::{ControlError, SampleRequest, SourceCommands, SourceControl};
use swarm_registry::http::{self as api, ApiState, HttpConfig};
use swarm_registry::telemetry::{PublisherState, SourceCounters};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg_or<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .map(|v| v.parse().ok().expect("a valid value"))
        .unwrap_or(default)
}

fn synthetic(i: usize, replicas: u64, version: u64) -> ServiceSpec {
    let name = format!("svc-{i:03}");
    ServiceSpec {
        id: format!("{i:025}"),
        name: name.clone(),
        labels: [
            ("autoscaler.enabled", "true"),
            (
                "autoscaler.metric",
                if i % 2 == 0 { "cpu" } else { "memory" },
            ),
            ("autoscaler.cpu.threshold", "60"),
            ("autoscaler.min", "1"),
            ("autoscaler.max", "8"),
            ("com.docker.stack.namespace", "bench"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        mode: ServiceMode::Replicated(replicas),
        created_at: "2024-01-15T10:30:00.123456789Z".to_owned(),
        updated_at: "2024-01-15T10:30:00.123456789Z".to_owned(),
        version,
        running_tasks: Some(replicas),
        desired_tasks: Some(replicas),
    }
}

/// The bench server: `n` services; each refresh changes the next service's replica count,
/// so a refresh is a change with a known subject.
async fn serve(args: &[String]) {
    let port: u16 = arg_or(args, "--port", 5801);
    let n: usize = arg_or(args, "--services", 200);
    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let mut specs: Vec<ServiceSpec> = (0..n).map(|i| synthetic(i, 2, 1)).collect();
    registry
        .submit(Input::FullList(specs.clone()))
        .await
        .unwrap();
    let (control, commands) = SourceControl::channel(64);
    let SourceCommands {
        mut refreshes,
        mut samples,
    } = commands;
    let source_registry = registry.clone();
    tokio::spawn(async move {
        let mut round = 0usize;
        loop {
            tokio::select! {
                Some(done) = refreshes.recv() => {
                    let i = round % specs.len().max(1);
                    round += 1;
                    if let Some(spec) = specs.get_mut(i) {
                        let replicas = match spec.mode {
                            ServiceMode::Replicated(r) => r + 1,
                            ServiceMode::Global => 1,
                        };
                        *spec = synthetic(i, replicas, spec.version + 1);
                    }
                    let folded = source_registry.submit(Input::FullList(specs.clone())).await;
                    let _ = done.send(folded.map_err(|_| ControlError::SourceStopped));
                }
                Some(SampleRequest { done, .. }) = samples.recv() => {
                    let _ = done.send(Err(ControlError::UnknownService));
                }
                else => return,
            }
        }
    });
    let config = HttpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..HttpConfig::default()
    };
    let state = ApiState {
        registry,
        control,
        source_counters: Arc::new(SourceCounters::default()),
        publisher: Arc::new(PublisherState::disabled()),
        refresh_interval: Duration::from_secs(30),
    };
    let listener = api::bind(&config).await.unwrap();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    println!("ready pid={}", std::process::id());
    api::serve(listener, config, state, shutdown).await.unwrap();
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(label: &str, mut micros: Vec<u64>) {
    // Latencies in microseconds, summarised by nearest-rank percentiles.
    micros.sort_unstable();
    println!(
        "{label}: n={} p50={}us p90={}us p99={}us p99.9={}us max={}us",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.90),
        percentile(&micros, 0.99),
        percentile(&micros, 0.999),
        micros.last().copied().unwrap_or(0)
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn get_text(addr: SocketAddr, method: &str, path: &str) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The server's own change-to-delivery histogram: the bucket bound at quantile `q`.
fn server_quantile(metrics: &str, q: f64) -> Option<String> {
    let buckets: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("swarm_registry_change_delivery_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    let wanted = (total as f64 * q).ceil() as u64;
    buckets
        .into_iter()
        .find(|(_, count)| *count >= wanted)
        .map(|(le, _)| le)
}

/// `n` event-stream subscribers over `c` HTTP/2 connections; `k` changes, one at a time.
async fn sse(args: &[String]) {
    let addr: SocketAddr = arg_or(args, "--addr", SocketAddr::from(([127, 0, 0, 1], 5801)));
    let pid: u32 = arg_or(args, "--pid", 0);
    let subscribers: usize = arg_or(args, "--subscribers", 1000);
    let connections: usize = arg_or(args, "--connections", 4);
    let changes: usize = arg_or(args, "--changes", 50);
    let query: String = arg_or(args, "--query", String::new());
    let path = if query.is_empty() {
        "/events/stream".to_owned()
    } else {
        format!("/events/stream?{query}")
    };

    get_text(addr, "GET", "/services").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = if pid > 0 { rss_kib(pid) } else { 0 };

    let mut senders = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(1 << 26)
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    let ready = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for s in 0..subscribers {
        let mut sender = senders[s % connections].clone();
        let ready = ready.clone();
        let stop = stop.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            let request = http::Request::builder()
                .uri(path.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let mut body = response.into_body();
            let mut buffer: Vec<u8> = Vec::new();
            let mut seen: Vec<Instant> = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => break,
                    frame = body.frame() => frame,
                };
                let Some(Ok(frame)) = frame else { break };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let now = Instant::now();
                buffer.extend_from_slice(&data);
                // Events end with a blank line; only the head of each is looked at.
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let head = &buffer[..end.min(96)];
                    if contains(head, b"event: snapshot") {
                        ready.fetch_add(1, Ordering::Relaxed);
                    } else if contains(head, b"event: service.updated") {
                        seen.push(now);
                    }
                    buffer.drain(..end + 2);
                }
            }
            seen
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < subscribers {
        assert!(Instant::now() < deadline, "subscribers did not all connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = if pid > 0 { rss_kib(pid) } else { 0 };

    // One change per round, far enough apart that they never overlap: the k-th
    // service.updated a subscriber receives belongs to round k.
    let mut sent = Vec::with_capacity(changes);
    for _ in 0..changes {
        sent.push(Instant::now());
        get_text(addr, "POST", "/cache/refresh").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut latencies = Vec::new();
    let mut per_subscriber: BTreeMap<usize, usize> = BTreeMap::new();
    for task in tasks {
        let seen = task.await.unwrap();
        *per_subscriber.entry(seen.len()).or_default() += 1;
        for (at, t0) in seen.iter().zip(&sent) {
            latencies.push(at.duration_since(*t0).as_micros() as u64);
        }
    }
    let metrics = get_text(addr, "GET", "/metrics").await;
    println!(
        "sse: subscribers={subscribers} connections={connections} changes={changes} query={query:?}"
    );
    println!("sse: events received per subscriber (count: subscribers) {per_subscriber:?}");
    summary("change->delivery (client, from POST sent)", latencies);
    println!(
        "change->delivery (server histogram): p50<={}s p99<={}s",
        server_quantile(&metrics, 0.50).unwrap_or_default(),
        server_quantile(&metrics, 0.99).unwrap_or_default()
    );
    if pid > 0 {
        let delta = rss_idle.saturating_sub(rss_before);
        println!(
            "memory: rss_before={rss_before}KiB rss_with_idle_subscribers={rss_idle}KiB per_subscriber={:.1}KiB",
            delta as f64 / subscribers as f64
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("serve") => runtime.block_on(serve(&args)),
        Some("sse") => runtime.block_on(sse(&args)),
        _ => {
            eprintln!("usage: http_load serve|sse [options] (see the file's header)");
            std::process::exit(2);
        }
    }
}
