//! The core's costs: folding one upsert into snapshots of growing size, and reading the
//! current snapshot while the driver writes.
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
    Folder, Input, Registry, RegistryConfig, ServiceMode, ServiceSpec, Snapshot, Timestamp,
};

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
    targets = upsert, load_while_writing
}
criterion_main!(benches);
