//! Publishing throughput and latency against the test bed's RabbitMQ.
//!
//! Run: `cargo bench --bench broker_publish` (needs RabbitMQ streams on 127.0.0.1:5552;
//! `scripts/dev-env up`). Optional arguments: `--changes N` (default 100000),
//! `--paced-seconds S` (default 10).
//!
//! Four measurements, side by side in one run:
//! 1. fold only: the registry folding metrics inputs with no publisher (the ceiling);
//! 2. fold + publisher: the same inputs, timed until the broker confirmed the last change,
//!    through the real path (the publisher asks the broker for the producer's last publishing
//!    id before every batch, to notice another writer under its name);
//! 3. the same without that question (a broker that cannot tell, which turns the check off),
//!    run alternately before and after 2, so the ratio of the two is what the question costs;
//! 4. bare client: pre-built messages sent through the client's producer in batches of the
//!    same size with confirms (what the client alone can do);
//!
//! and, at a paced 1,000 changes/s, the latency from submitting a change to its confirm, with
//! and without the question.
//!
//! Exits 1 when any measurement fails (a change not confirmed, the client failing), and when
//! RabbitMQ does not answer while SWARM_REGISTRY_REQUIRE_RABBITMQ=1 (otherwise it skips with
//! a notice), so its smoke run under `cargo test` is a check like any other.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use pipeline::{
    clock_floor, Folder, Input, Metrics, Registry, RegistryConfig, ServiceMode, ServiceSpec,
    Snapshot, Timestamp,
};
use rabbitmq_stream_client::Environment;
use swarm_registry::broker::rabbit::to_message;
use swarm_registry::broker::{
    BrokerConfig, BrokerError, Connected, Endpoint, Outgoing, Publisher, RabbitBroker, Secret,
    StreamBroker,
};
use swarm_registry::telemetry::PublisherState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SERVICES: u32 = 20;
/// Folded but unconfirmed changes the throughput feeder allows (below the default outbox
/// capacity and change log).
const MAX_BACKLOG: u64 = 3_000;

/// A stream name of its own for every run: a deleted stream's name is not reusable at once.
fn unique(label: &str) -> String {
    format!(
        "bench-{label}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn endpoint() -> Endpoint {
    Endpoint {
        host: "localhost".to_owned(),
        port: 5552,
        user: "guest".to_owned(),
        password: Secret::new("guest"),
        vhost: "/".to_owned(),
    }
}

fn spec(n: u32) -> ServiceSpec {
    ServiceSpec {
        id: format!("bench-id-{n}"),
        name: format!("bench-svc-{n}"),
        labels: [("autoscaler.enabled".to_owned(), "true".to_owned())].into(),
        mode: ServiceMode::Replicated(2),
        created_at: "2024-01-15T10:30:00Z".to_owned(),
        updated_at: "2024-01-15T10:30:00Z".to_owned(),
        version: 1,
        running_tasks: Some(2),
        desired_tasks: Some(2),
    }
}

/// A metrics sample for service `i % SERVICES`, different every time so each one is a change.
fn metrics_input(i: u64) -> Input {
    Input::Metrics {
        service_id: format!("bench-id-{}", i % u64::from(SERVICES)),
        metrics: Some(Metrics {
            cpu_pct: (i % 10_000) as f64 / 100.0,
            memory_bytes: 50_000_000.0 + i as f64,
            memory_pct: Some(12.5),
            sampled_at_ms: 1_700_000_000_000 + i as i64,
            source: "bench".to_owned(),
            tasks_running: 2,
            tasks_sampled: 2,
            timestamp: 1_700_000_000 + (i / 1000) as i64,
            unsampled_tasks: Vec::new(),
            window_seconds: 10,
        }),
    }
}

async fn registry_with_services() -> Registry {
    let (registry, driver) = Registry::new(RegistryConfig {
        floor: clock_floor(),
        ..RegistryConfig::default()
    });
    tokio::spawn(driver.run());
    for n in 0..SERVICES {
        let _ = registry.submit(Input::Upsert(spec(n))).await;
    }
    registry
}

/// Wraps the real broker and notes when each publishing id was confirmed. Everything else is
/// the real broker's, including the question the publisher asks before every batch (the
/// producer's last publishing id, one round trip on the query connection), unless
/// `mark_check` is off.
struct Timed {
    inner: RabbitBroker,
    confirmed_at: Arc<Mutex<HashMap<u64, Instant>>>,
    mark_check: bool,
}

impl StreamBroker for Timed {
    fn connect(&mut self) -> BoxFuture<'_, Result<Connected, BrokerError>> {
        self.inner.connect()
    }

    fn send_batch(&mut self, batch: Vec<Outgoing>) -> BoxFuture<'static, Result<(), BrokerError>> {
        let ids: Vec<u64> = batch.iter().map(|m| m.publishing_id).collect();
        let send = self.inner.send_batch(batch);
        let confirmed_at = self.confirmed_at.clone();
        Box::pin(async move {
            send.await?;
            let now = Instant::now();
            if let Ok(mut map) = confirmed_at.lock() {
                for id in ids {
                    map.insert(id, now);
                }
            }
            Ok(())
        })
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        self.inner.lost()
    }

    fn disconnect(&mut self) -> BoxFuture<'_, ()> {
        self.inner.disconnect()
    }

    fn last_publishing_id(&self) -> BoxFuture<'static, Result<Option<u64>, BrokerError>> {
        if self.mark_check {
            self.inner.last_publishing_id()
        } else {
            Box::pin(std::future::ready(Ok(None)))
        }
    }
}

struct Bench {
    config: BrokerConfig,
    registry: Registry,
    state: Arc<PublisherState>,
    confirmed_at: Arc<Mutex<HashMap<u64, Instant>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A publisher on a stream of its own, once it confirmed the registry's initial changes;
/// `None` (with the reason on stderr) when it did not within 30 s.
async fn start_publisher(label: &str, mark_check: bool) -> Option<Bench> {
    let name = unique(label);
    let config = BrokerConfig::new(endpoint(), &name, &format!("{name}-producer"));
    let registry = registry_with_services().await;
    let state = Arc::new(PublisherState::enabled(&config.stream));
    let confirmed_at = Arc::new(Mutex::new(HashMap::new()));
    let broker = Timed {
        inner: RabbitBroker::new(config.clone()),
        confirmed_at: confirmed_at.clone(),
        mark_check,
    };
    let publisher = Publisher::new(broker, &registry, config.tuning, state.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(publisher.run(shutdown.clone()));
    let target = registry.snapshot().revision;
    let started = wait_confirmed(&state, target, Duration::from_secs(30)).await;
    let bench = Bench {
        config,
        registry,
        state,
        confirmed_at,
        shutdown,
        task,
    };
    if !started {
        eprintln!("{label}: the publisher did not confirm the initial changes within 30 s");
        bench.finish().await;
        return None;
    }
    Some(bench)
}

async fn wait_confirmed(state: &PublisherState, target: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while state.last_confirmed.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    true
}

impl Bench {
    async fn finish(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        delete_stream(&self.config.stream).await;
    }
}

async fn delete_stream(stream: &str) {
    if let Ok(env) = Environment::builder()
        .host("localhost")
        .port(5552)
        .build()
        .await
    {
        let _ = env.delete_stream(stream).await;
    }
}

/// Changes per second the registry folds with nobody publishing.
async fn fold_only(changes: u64) -> f64 {
    let registry = registry_with_services().await;
    let start = Instant::now();
    for i in 0..changes {
        let _ = registry.send(metrics_input(i)).await;
    }
    let _ = registry.submit(Input::Tick).await;
    changes as f64 / start.elapsed().as_secs_f64()
}

/// Changes per second folded, published and confirmed.
async fn fold_and_publish(changes: u64, mark_check: bool) -> Option<f64> {
    let bench = start_publisher("throughput", mark_check).await?;
    let start = Instant::now();
    for i in 0..changes {
        // Keep the backlog (folded, not yet confirmed) within the default outbox and change
        // log, so this measures sustained publishing, not how fast a backlog can pile up.
        if i % 500 == 0 {
            while bench.registry.snapshot().revision
                > bench.state.last_confirmed.load(Ordering::Relaxed) + MAX_BACKLOG
            {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        let _ = bench.registry.send(metrics_input(i)).await;
    }
    let target = bench.registry.submit(Input::Tick).await.ok()?;
    let done = wait_confirmed(&bench.state, target, Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    let dropped = bench.state.dropped.load(Ordering::Relaxed);
    bench.finish().await;
    if !done || dropped > 0 {
        eprintln!("fold + publisher: not all confirmed (dropped {dropped})");
        return None;
    }
    Some((changes + 1) as f64 / elapsed.as_secs_f64())
}

/// Messages per second the client's producer confirms on its own, same batches, same bodies.
async fn bare_client(changes: u64, batch_size: usize) -> Option<f64> {
    let stream = unique("bare");
    let env = Environment::builder()
        .host("localhost")
        .port(5552)
        .build()
        .await
        .ok()?;
    let _ = env.stream_creator().create(&stream).await;
    let mut producer = env
        .producer()
        .batch_size(batch_size)
        .name(&format!("{stream}-producer"))
        .build(&stream)
        .await
        .ok()?;
    // The same bodies the publisher sends, rendered beforehand by the pure fold.
    let folder = Folder::default();
    let now = Timestamp::now();
    let mut snapshot = Snapshot::empty(clock_floor(), 16, now);
    for n in 0..SERVICES {
        snapshot = folder
            .fold(&snapshot, &Input::Upsert(spec(n)), now)
            .snapshot;
    }
    let mut outgoing = Vec::with_capacity(changes as usize);
    for i in 0..changes {
        let transition = folder.fold(&snapshot, &metrics_input(i), now);
        outgoing.extend(transition.changes.iter().map(|c| Outgoing::from_change(c)));
        snapshot = transition.snapshot;
    }
    let start = Instant::now();
    for chunk in outgoing.chunks(batch_size) {
        let messages = chunk.iter().map(to_message).collect();
        if let Err(e) = producer.batch_send_with_confirm(messages).await {
            eprintln!("bare client: {e}");
            return None;
        }
    }
    let rate = changes as f64 / start.elapsed().as_secs_f64();
    let _ = producer.close().await;
    let _ = env.delete_stream(&stream).await;
    Some(rate)
}

/// Latencies (ms) from submitting a change to its confirm, at `rate` changes per second.
async fn paced_latency(rate: u64, seconds: u64, mark_check: bool) -> Option<Vec<f64>> {
    let bench = start_publisher("latency", mark_check).await?;
    let mut submitted = Vec::with_capacity((rate * seconds) as usize);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..rate * seconds {
        ticker.tick().await;
        let at = Instant::now();
        let revision = bench.registry.submit(metrics_input(i)).await.ok()?;
        submitted.push((revision, at));
    }
    let last = submitted.last()?.0;
    wait_confirmed(&bench.state, last, Duration::from_secs(30)).await;
    let confirmed = bench.confirmed_at.lock().ok()?.clone();
    bench.finish().await;
    let mut latencies: Vec<f64> = submitted
        .iter()
        .filter_map(|(revision, at)| {
            confirmed
                .get(revision)
                .map(|c| c.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    if latencies.len() != submitted.len() {
        eprintln!(
            "paced: {} of {} changes confirmed",
            latencies.len(),
            submitted.len()
        );
        return None;
    }
    latencies.sort_by(f64::total_cmp);
    Some(latencies)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it, and then
    // a short smoke run checks that the program works without taking a minute.
    let full = std::env::args().any(|a| a == "--bench");
    let changes = argument("--changes", if full { 100_000 } else { 2_000 });
    let paced_seconds = argument("--paced-seconds", if full { 10 } else { 1 });
    let rounds = if full { 3 } else { 1 };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker_publish: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if std::net::TcpStream::connect(("127.0.0.1", 5552)).is_err() {
            if std::env::var("SWARM_REGISTRY_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1") {
                eprintln!(
                    "broker_publish: RabbitMQ is required (SWARM_REGISTRY_REQUIRE_RABBITMQ=1) but 127.0.0.1:5552 does not answer"
                );
                return ExitCode::FAILURE;
            }
            eprintln!("broker_publish: RabbitMQ does not answer on 127.0.0.1:5552; skipped");
            return ExitCode::SUCCESS;
        }
        let mut failed = false;
        println!("changes per throughput run: {changes}; services: {SERVICES}");
        let shown = |rate: Option<f64>| rate.map_or("failed".to_owned(), |r| format!("{r:.0}/s"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        let (mut folds, mut checked_all, mut unchecked_all, mut bares) =
            (vec![], vec![], vec![], vec![]);
        let (mut bare_ratios, mut check_ratios) = (vec![], vec![]);
        for round in 1..=rounds {
            let fold = fold_only(changes).await;
            // Order alternated, so neither variant always runs on a warmer broker.
            let (checked, unchecked) = if round % 2 == 1 {
                let c = fold_and_publish(changes, true).await;
                (c, fold_and_publish(changes, false).await)
            } else {
                let u = fold_and_publish(changes, false).await;
                (fold_and_publish(changes, true).await, u)
            };
            let bare = bare_client(changes, 1000).await;
            println!(
                "round {round}: fold only {fold:.0}/s | fold + publisher (confirmed) {} | without the last-id question {} | bare client (confirmed) {} | publisher/bare {} | with/without question {}",
                shown(checked),
                shown(unchecked),
                shown(bare),
                ratio(checked, bare),
                ratio(checked, unchecked),
            );
            failed |= checked.is_none() || unchecked.is_none() || bare.is_none();
            folds.push(fold);
            checked_all.extend(checked);
            unchecked_all.extend(unchecked);
            bares.extend(bare);
            if let (Some(p), Some(b)) = (checked, bare) {
                bare_ratios.push(p / b);
            }
            if let (Some(c), Some(u)) = (checked, unchecked) {
                check_ratios.push(c / u);
            }
        }
        println!(
            "median of {rounds}: fold only {:.0}/s | fold + publisher {:.0}/s | without the last-id question {:.0}/s | bare client {:.0}/s | publisher/bare {:.2} | with/without question {:.2}",
            median(&mut folds),
            median(&mut checked_all),
            median(&mut unchecked_all),
            median(&mut bares),
            median(&mut bare_ratios),
            median(&mut check_ratios),
        );
        for mark_check in [true, false] {
            let label = if mark_check {
                "with the last-id question"
            } else {
                "without the last-id question"
            };
            match paced_latency(1_000, paced_seconds, mark_check).await {
                Some(latencies) => println!(
                    "paced 1000 changes/s for {paced_seconds} s, {label}: change->confirm p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} changes)",
                    percentile(&latencies, 0.50),
                    percentile(&latencies, 0.90),
                    percentile(&latencies, 0.99),
                    latencies.last().copied().unwrap_or(f64::NAN),
                    latencies.len()
                ),
                None => {
                    println!("paced run {label} failed");
                    failed = true;
                }
            }
        }
        if failed {
            eprintln!("broker_publish: a measurement failed (see above)");
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}
