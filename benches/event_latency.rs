//! Event-to-snapshot latency of the Swarm source on the local swarm.
//!
//! With 200 labelled services registered, each of N label updates is timed three ways, side
//! by side in one run: when Docker delivers the service event to a plain events subscription
//! beside the registry, and when the registry's subscription reports the changed service (the
//! snapshot holding it is readable before the change is broadcast). The registry's extra
//! delay is the difference. Run: `cargo bench --bench event_latency` (needs the test bed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/swarm.rs"]
mod swarm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::{EventsOptions, UpdateServiceOptions};
use bollard::Docker;
use futures::StreamExt;
use pipeline::{ChangeKind, Registry, RegistryConfig, Update};
use swarm_registry::control::SourceControl;
use swarm_registry::docker::SwarmConfig;
use swarm_registry::telemetry::SourceCounters;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Services registered and updates timed in a real run (`cargo bench`). Under `cargo test`
/// (no `--bench` argument) the program makes a short smoke run instead, so the test suite stays
/// quick while still proving the bench works.
const FULL_RUN: usize = 200;
const SMOKE_RUN: usize = 10;

fn spec(name: &str, run: &str, max: u32) -> ServiceSpec {
    ServiceSpec {
        name: Some(name.to_owned()),
        labels: Some(HashMap::from([
            ("autoscaler.enabled".to_owned(), "true".to_owned()),
            ("autoscaler.max".to_owned(), max.to_string()),
            ("swarm-registry.bench".to_owned(), run.to_owned()),
        ])),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("local/busybox:1".to_owned()),
                command: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&values, 0.5);
    println!(
        "{label:<48} median {median:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms",
        percentile(&values, 0.9),
        percentile(&values, 0.99)
    );
    median
}

async fn remove_all(docker: &Docker, ids: &[String]) {
    futures::stream::iter(ids.iter())
        .for_each_concurrent(16, |id| async move {
            let _ = docker.delete_service(id).await;
        })
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size = if std::env::args().any(|a| a == "--bench") {
        FULL_RUN
    } else {
        SMOKE_RUN
    };
    let (services, updates) = (size, size);
    if !swarm::swarm_available("event_latency") {
        return;
    }
    let docker = Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker engine");
    let run = format!("{:08x}", rand::random::<u32>());
    println!("creating {services} labelled services with 0 replicas (run {run})");
    let names: Vec<String> = (0..services)
        .map(|i| format!("bench-{run}-{i:03}"))
        .collect();
    let created: Vec<Result<String, String>> = futures::stream::iter(names.iter())
        .map(|name| {
            let docker = docker.clone();
            let run = run.clone();
            async move {
                docker
                    .create_service(spec(name, &run, 2), None)
                    .await
                    .map(|r| r.id.unwrap_or_default())
                    .map_err(|e| e.to_string())
            }
        })
        .buffered(8)
        .collect()
        .await;
    let ids: Vec<String> = created.iter().filter_map(|r| r.clone().ok()).collect();
    if ids.len() != services {
        remove_all(&docker, &ids).await;
        panic!(
            "could not create the services: {:?}",
            created.iter().find(|r| r.is_err())
        );
    }

    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let (_control, commands) = SourceControl::channel(4);
    let shutdown = CancellationToken::new();
    let counters = Arc::new(SourceCounters::default());
    tokio::spawn(swarm_registry::docker::run(
        SwarmConfig::default(),
        registry.clone(),
        commands,
        counters.clone(),
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while names
        .iter()
        .any(|n| !registry.load().services.contains_key(n.as_str()))
    {
        assert!(
            Instant::now() < deadline,
            "the services never all registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "registered: {} services in the registry",
        registry.load().services.len()
    );

    // Docker's own delivery: a plain subscription beside the registry.
    let (docker_tx, mut docker_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([(
            "type".to_owned(),
            vec!["service".to_owned()],
        )])),
        ..Default::default()
    }));
    tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            let at = Instant::now();
            if let Some(id) = event.actor.and_then(|a| a.id) {
                let _ = docker_tx.send((id, at));
            }
        }
    });
    // The registry's delivery: the subscription reports a change after its snapshot is stored.
    let (registry_tx, mut registry_rx) = mpsc::unbounded_channel::<(String, u64, Instant)>();
    let (_, mut sub) = registry.subscribe();
    tokio::spawn(async move {
        while let Some(update) = sub.next().await {
            let at = Instant::now();
            if let Update::Change(change) = update {
                if let ChangeKind::ServiceUpdated { service, .. } = &change.kind {
                    let _ = registry_tx.send((
                        service.entry.id.clone(),
                        service.entry.max_replicas,
                        at,
                    ));
                }
            }
        }
    });

    let mut docker_ms = Vec::new();
    let mut registry_ms = Vec::new();
    let mut extra_ms = Vec::new();
    let inspects_before = counters.inspects.load(std::sync::atomic::Ordering::Relaxed);
    for round in 0..=updates {
        let i = round % services;
        let (id, name) = (&ids[i], &names[i]);
        let max = 3 + round as u32;
        let current = docker.inspect_service(id, None).await.expect("inspect");
        let version = current.version.and_then(|v| v.index).unwrap_or(0) as i32;
        let options = UpdateServiceOptions {
            version,
            ..Default::default()
        };
        let sent = Instant::now();
        docker
            .update_service(id, spec(name, &run, max), options, None)
            .await
            .expect("update");
        let limit = Instant::now() + Duration::from_secs(10);
        let docker_at = loop {
            match tokio::time::timeout_at(limit, docker_rx.recv()).await {
                Ok(Some((got, at))) if got == *id => break at,
                Ok(Some(_)) => continue,
                _ => panic!("docker never delivered the event for {name}"),
            }
        };
        let registry_at = loop {
            match tokio::time::timeout_at(limit, registry_rx.recv()).await {
                Ok(Some((got, m, at))) if got == *id && m == u64::from(max) => break at,
                Ok(Some(_)) => continue,
                _ => panic!("the registry never showed the update of {name}"),
            }
        };
        if round == 0 {
            continue; // warm-up: both subscriptions are now surely open
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        docker_ms.push(ms(docker_at.saturating_duration_since(sent)));
        registry_ms.push(ms(registry_at.saturating_duration_since(sent)));
        extra_ms.push(ms(registry_at.saturating_duration_since(docker_at)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let inspects = counters.inspects.load(std::sync::atomic::Ordering::Relaxed) - inspects_before;

    println!("\n{updates} label updates, one per service, {services} services registered");
    report("update sent -> docker event delivered", docker_ms);
    report("update sent -> registry snapshot readable", registry_ms);
    let extra = report(
        "registry's extra delay (docker event -> snapshot)",
        extra_ms,
    );
    println!(
        "inspects made: {inspects} (full lists during the run: {})",
        counters
            .full_lists
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "target: extra delay median under 5 ms -> {}",
        if extra < 5.0 { "met" } else { "NOT met" }
    );

    shutdown.cancel();
    remove_all(&docker, &ids).await;
    println!("removed the {services} services");
}
