//! The core's costs: folding one upsert into snapshots of growing size; the driver's whole
//! transition for one input (fold, change log, snapshot store, broadcast to live subscribers)
//! through `Registry::submit_with_changes`; reading the current snapshot while the driver
//! writes; and the part of an HTTP read that is ours before hyper writes (snapshot, lookup,
//! rendered body).
//!
//! `cargo bench --bench fold`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use pipeline::{
    Folder, Input, Registry, RegistryConfig, ServiceMode, ServiceSpec, Snapshot, Timestamp, Update,
};
use swarm_registry::http::cache::BodyCache;
use swarm_registry::http::render::{self, Freshness, ServicesMetadata};

fn spec(i: usize, replicas: u64) -> ServiceSpec {
    let labels = BTreeMap::from([
        ("autoscaler.enabled".to_owned(), "true".to_owned()),
        ("autoscaler.metric".to_owned(), "cpu".to_owned()),
        ("autoscaler.cpu.threshold".to_owned(), "50".to_owned()),
        ("autoscaler.min".to_owned(), "2".to_owned()),
        ("autoscaler.max".to_owned(), "5".to_owned()),
        (
            "com.docker.stack.namespace".to_owned(),
            "autoscale-cpu".to_owned(),
        ),
    ]);
    ServiceSpec {
        id: format!("{i:025}"),
        name: format!("stack_service-{i:05}"),
        labels,
        mode: ServiceMode::Replicated(replicas),
        created_at: "2024-01-15T10:30:00.123456789Z".to_owned(),
        updated_at: "2024-01-15T10:31:00.123456789Z".to_owned(),
        version: replicas,
        running_tasks: Some(replicas),
        desired_tasks: Some(replicas),
    }
}

const LOG: usize = 4096;
fn snapshot_of(n: usize) -> Snapshot {
    let folder = Folder::default();
    let list = Input::FullList((0..n).map(|i| spec(i, 2)).collect());
    folder
        .fold(&Snapshot::empty(0, LOG, Timestamp(0)), &list, Timestamp(1))
        .snapshot
}

/// One upsert that really changes an entry (replicas alternate, the version index rises), so
/// every iteration emits a service.updated and a services.updated and derives a new snapshot.
/// Building the input is excluded from the measurement.
fn upsert(c: &mut Criterion) {
    let mut group = c.benchmark_group("fold_one_upsert");
    for n in [100usize, 1_000, 10_000] {
        let base = snapshot_of(n);
        let folder = Folder::default();
        let mut current = base;
        let mut version = 10u64;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    version += 1;
                    let mut s = spec(n / 2, 3 + version % 2);
                    s.version = version;
                    Input::Upsert(s)
                },
                |input| {
                    let t = folder.fold(&current, &input, Timestamp(2));
                    assert_eq!(t.changes.len(), 2);
                    current = t.snapshot;
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One upsert through the driver, as a source submits it: `submit_with_changes` sends the input
/// to the driver task, which folds it, records its two changes in the shared change log, stores
/// the new snapshot (arc-swap), signals the revision watch and broadcasts both changes; the call
/// returns once the snapshot is readable. The driver and the caller share one current-thread
/// runtime, so the figure also holds the command channel's and the reply's hand-over (no
/// thread switch). Live subscribers run on a runtime of their own (one more thread), each
/// draining its `Subscription` as an SSE connection or the publisher would, so the driver pays
/// the broadcast's wake-ups but not the subscribers' work. The change log is full (4,096
/// changes) long before measuring starts: warm-up alone submits far more.
fn driver_transition(c: &mut Criterion) {
    let mut group = c.benchmark_group("driver_transition");
    for n in [100usize, 1_000, 10_000] {
        for receivers in [0usize, 1, 100] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let subscribers_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (registry, driver) = Registry::new(RegistryConfig::default());
            runtime.spawn(driver.run());
            runtime
                .block_on(registry.submit(Input::FullList((0..n).map(|i| spec(i, 2)).collect())))
                .unwrap();
            for _ in 0..receivers {
                let (_, mut updates) = registry.subscribe();
                subscribers_runtime.spawn(async move {
                    while let Some(update) = updates.next().await {
                        if let Update::Change(change) = update {
                            black_box(change.seq);
                        }
                    }
                });
            }
            let mut version = 10u64;
            let id = BenchmarkId::new(format!("{n}"), format!("receivers-{receivers}"));
            group.bench_function(id, |b| {
                b.iter_batched(
                    || {
                        version += 1;
                        let mut s = spec(n / 2, 3 + version % 2);
                        s.version = version;
                        Input::Upsert(s)
                    },
                    |input| {
                        let submitted = runtime
                            .block_on(registry.submit_with_changes(input))
                            .unwrap();
                        assert_eq!(submitted.changes.len(), 2);
                        submitted.revision
                    },
                    BatchSize::SmallInput,
                )
            });
            drop(registry);
            subscribers_runtime.shutdown_timeout(Duration::from_secs(1));
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
    group.finish();
}

/// What `GET /services/{name}` and `GET /services` pay of ours before hyper writes the
/// response: `Registry::snapshot()` (an `Arc` clone: one atomic increment and, when dropped,
/// one decrement), the clock, the freshness of the source, then for one service the map lookup
/// and the small envelope around the entry's cached JSON, and for the list the metadata
/// (the key of the rendered-body cache) and a clone of the cached body's `Bytes`. Headers,
/// routing and the socket write are not in it. No writer runs: this is the read alone.
fn http_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_read");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in [100usize, 1_000, 10_000] {
        let (registry, driver) = Registry::new(RegistryConfig::default());
        runtime.spawn(driver.run());
        runtime
            .block_on(registry.submit(Input::FullList((0..n).map(|i| spec(i, 2)).collect())))
            .unwrap();
        let name = spec(n / 2, 2).name;
        // Each entry renders its JSON once, on first use; the server's first reader pays it.
        let first = registry.snapshot();
        black_box(first.service(&name).unwrap().json());
        group.bench_with_input(BenchmarkId::new("one_service", n), &n, |b, _| {
            b.iter(|| {
                let snapshot = registry.snapshot();
                let now = Timestamp::now();
                let freshness = Freshness::of(&snapshot, now, 30_000);
                let record = snapshot.service(&name).unwrap();
                black_box((
                    render::service_body(record.json(), record.revision, now),
                    freshness.stale,
                ))
            })
        });
        let cache = BodyCache::default();
        group.bench_with_input(BenchmarkId::new("services_cached", n), &n, |b, _| {
            b.iter(|| {
                let snapshot = registry.snapshot();
                let now = Timestamp::now();
                let freshness = Freshness::of(&snapshot, now, 30_000);
                let metadata = ServicesMetadata::of(&snapshot, &freshness, now);
                black_box(cache.get_or_render(metadata.clone(), || {
                    render::services_body(&snapshot, &metadata)
                }))
            })
        });
    }
    group.finish();
}

/// `Registry::load` (the lock-free read every HTTP request makes) while the driver stores a
/// new snapshot as fast as it can fold inputs.
fn load_while_writing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (registry, driver) = Registry::new(RegistryConfig::default());
    let writing = Arc::new(AtomicBool::new(true));
    runtime.spawn(driver.run());
    {
        let registry = registry.clone();
        let writing = writing.clone();
        runtime.spawn(async move {
            registry
                .submit(Input::FullList((0..1_000).map(|i| spec(i, 2)).collect()))
                .await
                .unwrap();
            let mut version = 10;
            while writing.load(Ordering::Relaxed) {
                version += 1;
                let mut s = spec(7, 3 + version % 2);
                s.version = version;
                let _ = registry.submit(Input::Upsert(s)).await;
            }
        });
    }
    // Measure only once the writer is folding.
    let started = registry.load().revision;
    while registry.load().revision < started + 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.bench_function("snapshot_load_while_folding", |b| {
        b.iter(|| black_box(registry.load().revision))
    });
    writing.store(false, Ordering::Relaxed);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = upsert, driver_transition, load_while_writing, http_read
}
criterion_main!(benches);
