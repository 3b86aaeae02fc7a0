//! Helpers for tests against the test bed's real Swarm: availability check, uniquely named
//! services removed on drop, a running Swarm source, polling with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pipeline::{Registry, RegistryConfig, Snapshot};
use swarm_registry::control::SourceControl;
use swarm_registry::docker::{Engine, SwarmConfig};
use swarm_registry::telemetry::SourceCounters;
use tokio_util::sync::CancellationToken;

pub const IMAGE: &str = "local/busybox:1";

/// The test bed's control script.
pub fn dev_env() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-env")
}

/// Whether the test bed's Swarm answers. When it does not: fail if
/// SWARM_REGISTRY_REQUIRE_DOCKER=1, otherwise print a skip notice and return false.
pub fn swarm_available(test: &str) -> bool {
    let answer = Command::new("timeout")
        .args([
            "10",
            "docker",
            "info",
            "--format",
            "{{.Swarm.ControlAvailable}}",
        ])
        .output();
    let ok = matches!(&answer, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true");
    if ok {
        return true;
    }
    if std::env::var("SWARM_REGISTRY_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("{test}: Docker Swarm is required (SWARM_REGISTRY_REQUIRE_DOCKER=1) but not available: {answer:?}");
    }
    eprintln!("SKIP {test}: no Docker Swarm manager on this machine (run scripts/dev-env up)");
    false
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Run the docker CLI; panics with its output on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A swarm service removed when dropped, even if the test fails.
pub struct ServiceGuard {
    pub name: String,
    pub id: String,
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["service", "rm", &self.name])
            .output();
    }
}

/// Create a service from the local busybox image, detached.
pub fn create_service(
    name: &str,
    labels: &[(&str, &str)],
    replicas: u32,
    command: &[&str],
) -> ServiceGuard {
    let mut args: Vec<String> = vec![
        "service".into(),
        "create".into(),
        "--detach".into(),
        "--quiet".into(),
        "--name".into(),
        name.into(),
        "--replicas".into(),
        replicas.to_string(),
        "--no-resolve-image".into(),
        "--stop-grace-period".into(),
        "1s".into(),
    ];
    for (k, v) in labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.push(IMAGE.into());
    args.extend(command.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = docker(&refs);
    ServiceGuard {
        name: name.to_owned(),
        id,
    }
}

/// A Swarm source running against the test bed, stopped when dropped.
pub struct Source {
    pub registry: Registry,
    pub control: SourceControl,
    pub counters: Arc<SourceCounters>,
    pub shutdown: CancellationToken,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Test settings: the poll and metrics periods the tests' waits are sized for, pinned so a
/// change of the defaults does not change what a test observes.
pub fn test_config() -> SwarmConfig {
    SwarmConfig {
        refresh_interval: Duration::from_secs(30),
        metrics_interval: Duration::from_secs(60),
        ..SwarmConfig::default()
    }
}

/// Start a registry and the Swarm source on `engine` (or the default socket), and wait for
/// the first full sync.
pub async fn start_source_with<E: Engine>(engine: Option<Arc<E>>, config: SwarmConfig) -> Source {
    let (registry, driver) = Registry::new(RegistryConfig::default());
    tokio::spawn(driver.run());
    let (control, commands) = SourceControl::channel(16);
    let counters = Arc::new(SourceCounters::default());
    let shutdown = CancellationToken::new();
    match engine {
        Some(engine) => {
            tokio::spawn(swarm_registry::docker::run_with_engine(
                engine,
                config,
                registry.clone(),
                commands,
                counters.clone(),
                shutdown.clone(),
            ));
        }
        None => {
            tokio::spawn(swarm_registry::docker::run(
                config,
                registry.clone(),
                commands,
                counters.clone(),
                shutdown.clone(),
            ));
        }
    }
    let source = Source {
        registry,
        control,
        counters,
        shutdown,
    };
    wait_for(
        &source.registry,
        Duration::from_secs(20),
        "the first full sync",
        |s| s.last_full_sync.is_some(),
    )
    .await;
    source
}

pub async fn start_source(config: SwarmConfig) -> Source {
    start_source_with::<swarm_registry::docker::BollardEngine>(None, config).await
}

/// Poll the snapshot until `check` holds; panics naming `what` after `limit`.
pub async fn wait_for(
    registry: &Registry,
    limit: Duration,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let snapshot = registry.snapshot();
        if check(&snapshot) {
            return snapshot;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; source: {:?}",
                snapshot.source
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run a test bed subcommand (`docker-stop`, `docker-start`) off the async runtime and insist
/// that it succeeded.
pub async fn run_dev_env(subcommand: &'static str) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(dev_env())
            .arg(subcommand)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "dev-env {subcommand}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
