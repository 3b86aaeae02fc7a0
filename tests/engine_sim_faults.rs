//! The real `swarm-registry` binary against the simulated engine (`engine-sim`), for the
//! engine faults a real dockerd cannot stage on cue: a node that stops being a manager, an
//! event stream that hangs or is cut mid-line, malformed JSON, slow answers, and an API version
//! the registry does not know. For each: the last good services stay readable and are marked
//! stale while the engine is unusable, the registry recovers with fresh data once the fault is
//! cleared, and it never panics. Also: the seeded world is served as the engine describes it,
//! and churn reaches the registry's event stream.
//!
//! No Docker and no RabbitMQ: these tests need no test-bed lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod http_support;
#[path = "common/process.rs"]
mod process;

use process::{free_port, Captured};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine_sim::{ChurnStep, Fault, Scenario, Sim, SimHandle};
use http_support::{Event, Protocol, TestClient};
use serde_json::Value;
use tokio::time::Instant;

/// How long a condition may take to come true on a busy 2-core machine before the test
/// fails (a bound on waiting, not a measured figure).
const LIMIT: Duration = Duration::from_secs(30);

/// The registry binary as a child process, against one simulated engine.
struct RegistryProcess {
    child: Child,
    addr: SocketAddr,
    stdout: Captured,
    stderr: Captured,
}

impl RegistryProcess {
    /// Quick polls, short engine timeouts and reconnects, so faults show in seconds.
    fn start(docker_url: &str) -> RegistryProcess {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_swarm-registry"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DOCKER_BASE_URL", docker_url)
            .env("REFRESH_INTERVAL_SEC", "1")
            .env("METRICS_REFRESH_INTERVAL_SEC", "1")
            .env("DOCKER_TIMEOUT_SEC", "1")
            .env("EVENT_RECONNECT_MIN_MS", "50")
            .env("EVENT_RECONNECT_MAX_MS", "200")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the swarm-registry binary starts");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.follow(child.stdout.take().unwrap());
        stderr.follow(child.stderr.take().unwrap());
        RegistryProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdout,
            stderr,
        }
    }

    fn client(&self) -> TestClient {
        TestClient::new(self.addr, Protocol::Http1)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// Still running, and nothing it wrote says it panicked.
    fn assert_sound(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the registry exited ({status})\n{}", self.output());
        }
        let output = self.output();
        assert!(!output.contains("panicked"), "a panic\n{output}");
    }

    /// `/health`, `/services` and `/metrics` as one view, once the server answers.
    async fn view(&mut self) -> Option<View> {
        self.assert_sound();
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return None;
        }
        let client = self.client();
        let health = client.get("/health").await;
        let services = client.get("/services").await;
        let metrics = client.get("/metrics").await;
        Some(View {
            health: health.json(),
            services: services.json(),
            stale_header: services.header("x-registry-stale").map(str::to_owned),
            metrics: String::from_utf8_lossy(&metrics.body).into_owned(),
        })
    }

    /// Poll until `check` holds (within [`LIMIT`]); the view where it did.
    async fn wait_for(&mut self, what: &str, check: impl Fn(&View) -> bool) -> View {
        let deadline = Instant::now() + LIMIT;
        let mut last = None;
        loop {
            if let Some(view) = self.view().await {
                if check(&view) {
                    return view;
                }
                last = Some(view);
            }
            assert!(
                Instant::now() < deadline,
                "not within {LIMIT:?}: {what}\nlast view: {last:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("output of the registry:\n{}", self.output());
        }
    }
}

/// What the registry reports at one moment.
#[derive(Debug)]
struct View {
    health: Value,
    services: Value,
    stale_header: Option<String>,
    metrics: String,
}

impl View {
    fn state(&self) -> &str {
        self.health["source"]["state"].as_str().unwrap_or_default()
    }

    fn stale(&self) -> bool {
        self.health["source"]["stale"] == true
    }

    /// Connected, not stale, by /health and by the /services read alike.
    fn fresh(&self) -> bool {
        self.state() == "connected"
            && !self.stale()
            && self.services["metadata"]["stale"] == false
            && self.stale_header.as_deref() == Some("false")
    }

    /// Unreachable and stale, by /health and by the /services read alike.
    fn marked_stale(&self) -> bool {
        self.state() == "unreachable"
            && self.stale()
            && self.services["metadata"]["stale"] == true
            && self.services["metadata"]["source_status"] == "unreachable"
            && self.stale_header.as_deref() == Some("true")
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.services["services"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    fn has(&self, id: &str) -> bool {
        self.ids().iter().any(|i| i == id)
    }

    /// A counter of /metrics (0 when absent).
    fn counter(&self, name: &str) -> f64 {
        self.metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn scenario() -> Scenario {
    Scenario {
        services: 12,
        labelled_share: 0.5,
        nodes: 2,
        tasks_per_service: 2,
        seed: 13,
        ..Scenario::default()
    }
}

/// The labelled service ids the engine holds, sorted.
fn labelled_ids(sim: &SimHandle) -> Vec<String> {
    let mut ids: Vec<String> = sim
        .services()
        .iter()
        .filter(|s| s["Spec"]["Labels"]["autoscaler.enabled"] == "true")
        .map(|s| s["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Churn until a service is created; its id.
fn create_one(sim: &SimHandle) -> String {
    loop {
        if let ChurnStep::Created { id } = sim.churn_once() {
            return id;
        }
    }
}

async fn start() -> (SimHandle, RegistryProcess) {
    let sim = Sim::start("tcp://127.0.0.1:0", scenario()).await.unwrap();
    let mut registry = RegistryProcess::start(sim.url());
    let expected = labelled_ids(&sim);
    registry
        .wait_for("the seeded world, fresh", |v| {
            v.fresh() && v.ids() == expected
        })
        .await;
    (sim, registry)
}

/// A fault that makes the engine unusable: the last good services stay, marked stale; after
/// the fault, the registry is fresh again and shows a change made since.
async fn stale_then_recovered(fault: Fault) -> (View, View) {
    let (sim, mut registry) = start().await;
    let before = labelled_ids(&sim);
    sim.set_fault(fault.clone());
    let during = registry
        .wait_for(&format!("stale under {fault:?}"), View::marked_stale)
        .await;
    assert_eq!(during.ids(), before, "the last good services are kept");
    sim.clear_faults();
    let created = create_one(&sim);
    let after = registry
        .wait_for("fresh again, with the change made after the fault", |v| {
            v.fresh() && v.has(&created) && v.ids() == labelled_ids(&sim)
        })
        .await;
    registry.assert_sound();
    sim.shutdown().await;
    (during, after)
}

#[tokio::test]
async fn not_a_manager_keeps_the_last_services_stale_and_recovers() {
    let (during, _) = stale_then_recovered(Fault::NotManager).await;
    let error = during.health["source"]["last_error"].as_str().unwrap();
    assert!(error.contains("not a swarm manager"), "{error}");
}

#[tokio::test]
async fn malformed_lists_keep_the_last_services_stale_and_recover() {
    let (during, _) = stale_then_recovered(Fault::MalformedJson {
        lists: true,
        events: false,
    })
    .await;
    let error = during.health["source"]["last_error"].as_str().unwrap();
    assert!(error.contains("unusable"), "{error}");
}

#[tokio::test]
async fn answers_slower_than_the_timeout_keep_the_last_services_stale_and_recover() {
    // DOCKER_TIMEOUT_SEC is 1 here.
    let (during, _) = stale_then_recovered(Fault::Slow { delay_ms: 2500 }).await;
    let error = during.health["source"]["last_error"].as_str().unwrap();
    assert!(error.contains("no answer"), "{error}");
}

#[tokio::test]
async fn an_unparseable_api_version_keeps_the_last_services_stale_and_recovers() {
    // The version fault ends the open event stream; the reconnect's negotiation fails.
    let (during, _) = stale_then_recovered(Fault::UnknownVersion {
        version: "x.y".to_owned(),
    })
    .await;
    let error = during.health["source"]["last_error"].as_str().unwrap();
    assert!(error.contains("version"), "{error}");
}

#[tokio::test]
async fn slow_answers_within_the_timeout_are_only_slow() {
    let (sim, mut registry) = start().await;
    sim.set_fault(Fault::Slow { delay_ms: 200 });
    let created = create_one(&sim);
    registry
        .wait_for("the change, through slow answers", |v| {
            v.fresh() && v.has(&created)
        })
        .await;
    let view = registry.view().await.unwrap();
    assert!(view.fresh(), "{view:?}");
    registry.assert_sound();
    sim.shutdown().await;
}

#[tokio::test]
async fn versions_the_registry_does_not_know_are_negotiated() {
    for (reported, used) in [("1.12", "1.12"), ("9.99", "1.53")] {
        let sim = Sim::start("tcp://127.0.0.1:0", scenario()).await.unwrap();
        sim.set_fault(Fault::UnknownVersion {
            version: reported.to_owned(),
        });
        let mut registry = RegistryProcess::start(sim.url());
        let expected = labelled_ids(&sim);
        registry
            .wait_for(&format!("served by an engine at {reported}"), |v| {
                v.fresh() && v.ids() == expected
            })
            .await;
        let log = registry.stdout.text();
        assert!(
            log.contains(&format!("api_version={used}")),
            "engine {reported}, client {used}\n{log}"
        );
        let created = create_one(&sim);
        registry
            .wait_for("a change", |v| v.fresh() && v.has(&created))
            .await;
        registry.assert_sound();
        sim.shutdown().await;
    }
}

/// An event fault leaves lists working: the registry stays fresh and learns every change from
/// its polls, while the stream's failures are counted; after the fault, events flow again.
async fn events_fail_lists_carry_on(fault: Fault, failures: &str) {
    let (sim, mut registry) = start().await;
    let base = registry.view().await.unwrap();
    sim.set_fault(fault.clone());
    // Steady churn: every poll finds changes the stream did not report.
    sim.set_churn(4.0);
    registry
        .wait_for(&format!("{failures} to move under {fault:?}"), |v| {
            v.counter(failures) > base.counter(failures)
        })
        .await;
    sim.set_churn(0.0);
    let created = create_one(&sim);
    let during = registry
        .wait_for(&format!("a change under {fault:?}"), |v| v.has(&created))
        .await;
    assert!(
        during.fresh(),
        "lists work, so the data is fresh: {during:?}"
    );
    sim.clear_faults();
    let events_before = during.counter("swarm_registry_engine_events_total");
    // A hung stream stays hung after the fault (that is the fault): the registry must find
    // that out by itself, so keep changing things until events arrive again.
    let mut changes = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        let id = create_one(&sim);
        let view = registry
            .wait_for("a change after the fault", |v| v.has(&id))
            .await;
        if view.counter("swarm_registry_engine_events_total") > events_before {
            assert!(view.fresh(), "{view:?}");
            break;
        }
        changes += 1;
        assert!(
            Instant::now() < deadline,
            "no engine event reached the registry after {fault:?} was cleared ({changes} changes)\n{}",
            registry.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    registry.assert_sound();
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hung_event_stream_is_found_by_the_watchdog_and_replaced() {
    events_fail_lists_carry_on(Fault::EventsHang, "swarm_registry_engine_stalls_total").await;
}

#[tokio::test]
async fn an_event_stream_cut_mid_line_is_reopened() {
    events_fail_lists_carry_on(
        Fault::EventsCutMidLine,
        "swarm_registry_engine_reconnects_total",
    )
    .await;
}

#[tokio::test]
async fn malformed_event_lines_reopen_the_stream() {
    events_fail_lists_carry_on(
        Fault::MalformedJson {
            lists: false,
            events: true,
        },
        "swarm_registry_engine_reconnects_total",
    )
    .await;
}

#[tokio::test]
async fn the_seeded_world_is_served_as_the_engine_describes_it() {
    let (sim, mut registry) = start().await;
    let view = registry.view().await.unwrap();
    assert_eq!(view.ids().len(), 6, "half of twelve services are labelled");
    let doc = sim
        .services()
        .into_iter()
        .find(|s| s["Spec"]["Labels"]["autoscaler.enabled"] == "true")
        .unwrap();
    let name = doc["Spec"]["Name"].as_str().unwrap();
    let labels = &doc["Spec"]["Labels"];
    let label = |key: &str| {
        labels[format!("autoscaler.{key}")]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let body = registry
        .client()
        .get(&format!("/services/{name}"))
        .await
        .json();
    let entry = &body["service"];
    assert_eq!(entry["id"], doc["ID"], "{entry}");
    assert_eq!(entry["metric"], label("metric").as_str(), "{entry}");
    assert_eq!(
        entry["thresholds"]["cpu"].as_f64(),
        label("cpu.threshold").parse::<f64>().ok()
    );
    assert_eq!(
        entry["thresholds"]["memory"].as_f64(),
        label("memory.threshold").parse::<f64>().ok()
    );
    assert_eq!(entry["min_replicas"].as_u64(), label("min").parse().ok());
    assert_eq!(entry["max_replicas"].as_u64(), label("max").parse().ok());
    assert_eq!(
        entry["current_replicas"],
        doc["Spec"]["Mode"]["Replicated"]["Replicas"]
    );
    assert_eq!(entry["running_tasks"], doc["ServiceStatus"]["RunningTasks"]);
    assert_eq!(entry["version"], doc["Version"]["Index"]);
    assert_eq!(entry["created_at"], doc["CreatedAt"]);
    assert_eq!(&entry["labels"], labels);
    assert_eq!(entry["config_errors"], serde_json::json!([]));
    // Of its two tasks, the one on the engine's own node is measured through the engine's
    // stats; the other runs on the second node, whose agent does not exist here.
    let deadline = Instant::now() + LIMIT;
    let metrics = loop {
        let body = registry
            .client()
            .get(&format!("/services/{name}/metrics"))
            .await
            .json();
        if body["metrics"]["cpu_pct"].as_f64().is_some_and(|c| c > 0.0) {
            break body["metrics"].clone();
        }
        assert!(Instant::now() < deadline, "no metrics: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metrics["source"], "docker", "{metrics}");
    assert_eq!(metrics["tasks_running"], 2, "{metrics}");
    assert_eq!(metrics["tasks_sampled"], 1, "{metrics}");
    assert!(metrics["memory_bytes"].as_f64().unwrap() > 0.0, "{metrics}");
    let reason = metrics["unsampled_tasks"][0]["reason"].as_str().unwrap();
    assert_eq!(reason, format!("no agent on node {}", sim.node_ids()[1]));
    registry.assert_sound();
    sim.shutdown().await;
}

#[tokio::test]
async fn churn_reaches_the_event_stream_one_change_per_engine_change() {
    let (sim, mut registry) = start().await;
    let mut stream = registry.client().events("/events/stream", &[]).await;
    let snapshot = stream.next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    // Churn until it has created, updated and removed, one change at a time: each is on the
    // registry's stream before the next is made (changes made faster than the registry asks
    // about them are coalesced, by design).
    // The run ends with a creation: anything doubled or late is on the stream before it.
    let mut steps = Vec::new();
    let mut events = Vec::new();
    loop {
        let step = sim.churn_once();
        let (kind, id) = change_of(&step);
        steps.push(step);
        let arrived = tokio::time::timeout(
            LIMIT,
            stream.collect_until(|e| service_change(e) == Some((kind.to_owned(), id.clone()))),
        )
        .await
        .unwrap_or_else(|_| panic!("no {kind} of {id}\n{}", registry.output()));
        events.extend(arrived);
        let all_kinds = ["create", "update", "remove"]
            .iter()
            .all(|kind| steps.iter().any(|s| step_kind(s) == *kind));
        if steps.len() >= 6 && all_kinds && kind == "service.added" {
            break;
        }
    }
    let reported: Vec<(String, String)> = events.iter().filter_map(service_change).collect();
    let expected: Vec<(String, String)> = steps
        .iter()
        .map(change_of)
        .map(|(k, id)| (k.to_owned(), id))
        .collect();
    assert_eq!(
        reported, expected,
        "one registry change per engine change, in order"
    );
    registry.assert_sound();
    sim.shutdown().await;
}

fn step_kind(step: &ChurnStep) -> &'static str {
    match step {
        ChurnStep::Created { .. } => "create",
        ChurnStep::Updated { .. } => "update",
        ChurnStep::Removed { .. } => "remove",
    }
}

/// The registry change an engine change must give, as (event, service id).
fn change_of(step: &ChurnStep) -> (&'static str, String) {
    match step {
        ChurnStep::Created { id } => ("service.added", id.clone()),
        ChurnStep::Updated { id } => ("service.updated", id.clone()),
        ChurnStep::Removed { id } => ("service.removed", id.clone()),
    }
}

/// A service change on the registry's stream, as (event, service id).
fn service_change(event: &Event) -> Option<(String, String)> {
    let body = event.json();
    let id = match event.event.as_str() {
        "service.added" | "service.updated" => body["service"]["id"].as_str()?.to_owned(),
        "service.removed" => body["service_id"].as_str()?.to_owned(),
        _ => return None,
    };
    Some((event.event.clone(), id))
}
