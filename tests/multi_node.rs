//! Metrics from every node of a real two-node swarm: the test bed's manager and a second
//! engine joined as a worker (`scripts/dev-env node2-up`). The registry samples its own node
//! in process; an agent (the real `agent` code, over the real HTTP endpoint) samples the
//! worker. Also: cgroup counters and Docker's stats give the same figures for one busy task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/swarm.rs"]
mod swarm;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pipeline::Metrics;
use swarm::{docker, start_source, swarm_available, test_config, unique, ServiceGuard, IMAGE};
use swarm_registry::agent::{AgentConfig, RegistryAddress};
use swarm_registry::docker::cgroup::CgroupRoot;
use swarm_registry::docker::node_sampler::{NodeSampler, NodeSamplerConfig};
use swarm_registry::docker::readings::TaskReading;
use swarm_registry::docker::{BollardEngine, SwarmConfig};
use swarm_registry::http::{self as api, ApiState, HttpConfig};
use swarm_registry::telemetry::{PublisherState, SourceCounters};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NODE2_SOCK: &str = "unix:///var/run/docker-n2.sock";
const LIMIT: Duration = Duration::from_secs(60);

/// Whether the second node is up. When not: fail if SWARM_REGISTRY_REQUIRE_SECOND_NODE=1,
/// otherwise print a skip notice.
fn second_node(test: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args([
            "10",
            "docker",
            "-H",
            NODE2_SOCK,
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
        ])
        .output();
    let text = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if let Some(id) = text.strip_prefix("active ") {
        return Some(id.to_owned());
    }
    if std::env::var("SWARM_REGISTRY_REQUIRE_SECOND_NODE").as_deref() == Ok("1") {
        panic!("{test}: a second swarm node is required (SWARM_REGISTRY_REQUIRE_SECOND_NODE=1) but not up: {out:?}");
    }
    eprintln!("SKIP {test}: no second swarm node (run scripts/dev-env node2-up)");
    None
}

/// The worker open for tasks while the guard lives. The test bed keeps it paused so that no
/// other test's tasks land there.
struct ActiveWorker(String);

impl ActiveWorker {
    fn new(node: &str) -> Self {
        docker(&["node", "update", "--availability", "active", node]);
        ActiveWorker(node.to_owned())
    }
}

impl Drop for ActiveWorker {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["node", "update", "--availability", "pause", &self.0])
            .output();
    }
}

/// A busy service with one task on each node.
fn spread_service(name: &str) -> ServiceGuard {
    let id = docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        name,
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--no-resolve-image",
        "--stop-grace-period",
        "1s",
        "--label",
        "autoscaler.enabled=true",
        IMAGE,
        "sh",
        "-c",
        "yes > /dev/null",
    ]);
    ServiceGuard {
        name: name.to_owned(),
        id,
    }
}

fn agent(registry: SocketAddr, config: &SwarmConfig) -> CancellationToken {
    let stop = CancellationToken::new();
    let config = AgentConfig {
        swarm: SwarmConfig {
            docker_url: NODE2_SOCK.to_owned(),
            ..config.clone()
        },
        registry: RegistryAddress::parse(&format!("http://{registry}")).unwrap(),
        api_token: Some("agent-token".into()),
    };
    tokio::spawn(swarm_registry::agent::run(config, stop.clone()));
    stop
}

/// Force samples of `name` until `check` holds; the metrics it held for.
async fn sample_until(
    source: &swarm::Source,
    name: &str,
    what: &str,
    check: impl Fn(Option<&Metrics>) -> bool,
) -> Option<Metrics> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let asked = Instant::now();
        source.control.sample_metrics(name).await.unwrap();
        let elapsed = asked.elapsed();
        let metrics = source
            .registry
            .snapshot()
            .metrics
            .get(name)
            .map(|m| Metrics::clone(&m.metrics));
        if check(metrics.as_ref()) {
            eprintln!("{what}: forced sample answered in {elapsed:?}: {metrics:?}");
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_two_nodes_is_sampled_on_both_through_the_agent() {
    if !swarm_available("multi-node") {
        return;
    }
    let Some(worker) = second_node("multi-node") else {
        return;
    };
    let _open = ActiveWorker::new(&worker);
    let config = SwarmConfig {
        node_sample_interval: Duration::from_millis(500),
        ..test_config()
    };
    let source = start_source(config.clone()).await;
    let http = HttpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_token: Some("agent-token".into()),
        ..HttpConfig::default()
    };
    let listener = api::bind(&http).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ApiState {
        registry: source.registry.clone(),
        control: source.control.clone(),
        source_counters: source.counters.clone(),
        publisher: Arc::new(PublisherState::disabled()),
        refresh_interval: config.refresh_interval,
    };
    tokio::spawn(api::serve(listener, http, state, source.shutdown.clone()));
    let mut stop_agent = agent(addr, &config);

    let name = unique("spread");
    let service = spread_service(&name);
    swarm::wait_for(&source.registry, LIMIT, "both tasks running", |s| {
        s.services
            .get(name.as_str())
            .is_some_and(|e| e.entry.running_tasks == Some(2))
    })
    .await;
    let both = sample_until(&source, &name, "both tasks sampled", |m| {
        m.is_some_and(|m| (m.tasks_running, m.tasks_sampled) == (2, 2))
    })
    .await
    .unwrap();
    // One busy task per node, each measured by its own node's sampler. On a shared 2-core
    // machine a busy task may get well under a core, but it is clearly busy.
    let per_node = source.counters.nodes.readings_of(&service.id);
    eprintln!("per node: {per_node:?}");
    let nodes: HashSet<&str> = per_node.iter().map(|(node, _)| node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{per_node:?}");
    assert!(nodes.contains(worker.as_str()));
    assert!(
        per_node.iter().all(|(_, r)| r.cpu_pct > 10.0),
        "{per_node:?}"
    );
    assert!(both.memory_bytes > 0.0);
    assert_eq!(both.window_seconds, 1);
    let nodes = source.counters.nodes.nodes();
    let reported = nodes.iter().find(|n| n.node_id == worker).unwrap();
    assert!(reported.live && !reported.in_process, "{nodes:?}");
    assert!(reported.tasks_reported >= 1);

    // The worker's agent stops: its task is listed unsampled, with the reason.
    stop_agent.cancel();
    let expected = format!("no agent on node {worker}");
    let one = sample_until(&source, &name, "the worker's task unsampled", |m| {
        m.is_some_and(|m| m.tasks_sampled == 1)
    })
    .await
    .unwrap();
    assert_eq!(one.tasks_running, 2);
    assert_eq!(one.unsampled_tasks.len(), 1, "{one:?}");
    assert_eq!(one.unsampled_tasks[0].reason, expected);

    // Started again, it is sampled again.
    stop_agent = agent(addr, &config);
    sample_until(&source, &name, "both sampled again", |m| {
        m.is_some_and(|m| m.tasks_sampled == 2)
    })
    .await;

    // Removed: no metrics, and no node reports its readings any more.
    let service_id = service.id.clone();
    drop(service);
    swarm::wait_for(&source.registry, LIMIT, "the service to go", |s| {
        !s.services.contains_key(name.as_str())
    })
    .await;
    assert!(!source
        .registry
        .snapshot()
        .metrics
        .contains_key(name.as_str()));
    let deadline = Instant::now() + LIMIT;
    loop {
        let worker_tasks = source
            .counters
            .nodes
            .nodes()
            .into_iter()
            .find(|n| n.node_id == worker)
            .map(|n| n.tasks_reported);
        if worker_tasks == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker still reports {worker_tasks:?} task(s) of the removed {service_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_agent.cancel();
}

/// The same busy container measured both ways, side by side: equal within 5 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_counters_and_docker_stats_agree() {
    if !swarm_available("cgroup-vs-stats") {
        return;
    }
    let root = CgroupRoot::new("/sys/fs/cgroup");
    if !root.is_visible() {
        eprintln!("SKIP cgroup-vs-stats: no cgroup file system at /sys/fs/cgroup");
        return;
    }
    let name = unique("half");
    // Half a core, enforced by the CFS quota: a steady load to compare.
    let service = docker(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &name,
        "--constraint",
        "node.role==manager",
        "--limit-cpu",
        "0.5",
        "--no-resolve-image",
        "--stop-grace-period",
        "1s",
        IMAGE,
        "sh",
        "-c",
        "yes > /dev/null",
    ]);
    let _guard = ServiceGuard {
        name: name.clone(),
        id: service.clone(),
    };
    let engine = Arc::new(
        BollardEngine::connect("unix:///var/run/docker.sock", Duration::from_secs(10)).unwrap(),
    );
    let node = {
        use swarm_registry::docker::Engine;
        engine.local_node_id().await.unwrap()
    };
    let sampler = |cgroup_root: Option<CgroupRoot>| {
        NodeSampler::new(
            engine.clone(),
            NodeSamplerConfig {
                interval: Duration::from_secs(2),
                cgroup_root,
                stats_concurrency: 4,
                stats_timeout: Duration::from_secs(5),
            },
            Arc::new(SourceCounters::default()),
        )
    };
    let mut via_cgroup = sampler(Some(root));
    let mut via_stats = sampler(None);
    assert!(via_cgroup.reads_cgroups() && !via_stats.reads_cgroups());
    let wanted = HashSet::from([service.clone()]);
    let reading = |report: swarm_registry::docker::readings::NodeReport| -> Option<TaskReading> {
        report.readings.into_iter().next()
    };
    let deadline = Instant::now() + LIMIT;
    let (a, b) = loop {
        let (c, s) = tokio::join!(
            via_cgroup.step(&node, &wanted),
            via_stats.step(&node, &wanted)
        );
        if let (Some(c), Some(s)) = (reading(c.unwrap()), reading(s.unwrap())) {
            break (c, s);
        }
        assert!(Instant::now() < deadline, "no figures for {name}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!("cgroup: {a:?}\ndocker stats: {b:?}");
    assert_eq!((a.via.as_str(), b.via.as_str()), ("cgroup", "docker-stats"));
    assert!(
        (40.0..=55.0).contains(&a.cpu_pct),
        "quota of half a core: {a:?}"
    );
    let cpu_gap = (a.cpu_pct - b.cpu_pct).abs() / b.cpu_pct;
    assert!(cpu_gap <= 0.05, "cpu {} vs {}", a.cpu_pct, b.cpu_pct);
    let memory_gap =
        (a.memory_bytes as f64 - b.memory_bytes as f64).abs() / b.memory_bytes.max(1) as f64;
    assert!(
        memory_gap <= 0.05,
        "memory {} vs {}",
        a.memory_bytes,
        b.memory_bytes
    );
}
