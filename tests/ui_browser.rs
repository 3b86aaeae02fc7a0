//! The dashboard in a real browser (headless Chromium, driven over the DevTools protocol).
//!
//! Against the test bed's Swarm and the real binary: the page shows a labelled service when it
//! is created, changes the row when its labels change, drops it when it is removed, and after
//! the registry is stopped and started again it reconnects by itself and catches up with a
//! change made while the registry was down. A screenshot is saved as target/ui-screenshot.png.
//!
//! Against an in-process server with a thousand services: the page lists them all and applies
//! a burst of a thousand metrics events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/browser.rs"]
mod browser;
#[path = "common/http.rs"]
mod http_support;
#[path = "common/process.rs"]
mod process;
#[path = "common/swarm.rs"]
mod swarm_support;

use process::free_port;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use browser::{chromium_installed, dashboard, row, Browser, Page};
use serde_json::Value;
use swarm_support::{create_service, docker, swarm_available, unique};
use tokio::time::Instant;

/// Start-up against the real engine on a busy 2-core machine, and any one step of the page.
const LIMIT: Duration = Duration::from_secs(60);

/// The registry binary on a fixed port (so the page can reconnect to it after a restart).
struct RegistryProcess {
    child: Option<Child>,
    port: u16,
    prefix: String,
    log: PathBuf,
}

impl RegistryProcess {
    fn start(port: u16, prefix: &str, log: PathBuf) -> RegistryProcess {
        let mut registry = RegistryProcess {
            child: None,
            port,
            prefix: prefix.to_owned(),
            log,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_swarm-registry"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .env("LABEL_PREFIX", &self.prefix)
            .env("METRICS_REFRESH_INTERVAL_SEC", "2")
            .env("SSE_RETRY_MS", "500")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Ok(url) = std::env::var("DOCKER_BASE_URL") {
            command.env("DOCKER_BASE_URL", url);
        }
        self.child = Some(command.spawn().expect("the swarm-registry binary starts"));
    }

    /// SIGTERM, as an orchestrator stops it, and wait for the exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(status.success(), "the registry stops cleanly: {status}");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "registry output:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Where test artifacts go: the target directory.
fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join(name)
}

/// Poll the page until `check` holds for what it shows.
fn wait_for(
    browser: &mut Browser,
    page: &Page,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let state = dashboard(browser, page);
        if check(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {LIMIT:?}; it shows {state:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn curl_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "5", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_ready(registry: &RegistryProcess) {
    let deadline = Instant::now() + LIMIT;
    while !curl_ok(&registry.url("/health/ready")) {
        assert!(
            Instant::now() < deadline,
            "the registry was not ready within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_follows_the_swarm_across_a_registry_restart() {
    let test = "the_dashboard_follows_the_swarm_across_a_registry_restart";
    if !swarm_available(test) || !chromium_installed(test) {
        return;
    }
    let prefix = format!("ui{:08x}", rand::random::<u32>());
    let label = |key: &str| format!("{prefix}.{key}");
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{}.log", unique("ui-registry")));
    let mut registry = RegistryProcess::start(port, &prefix, log);
    wait_ready(&registry);

    let mut browser = Browser::launch(&unique("ui-browser"));
    let page = browser.open(&registry.url("/ui"));
    wait_for(&mut browser, &page, "a live connection", |s| {
        s["state"] == "live"
    });

    // A labelled service appears, with its scaling range and, once sampled, its CPU.
    let web = unique("ui-web");
    let enabled = label("enabled");
    let max = label("max");
    let web_service = create_service(
        &web,
        &[(enabled.as_str(), "true"), (max.as_str(), "3")],
        1,
        &["sleep", "3600"],
    );
    wait_for(&mut browser, &page, "the new service's row", |s| {
        row(s, &web).is_some_and(|cells| cells[2] == "1–3")
    });
    wait_for(&mut browser, &page, "the service's CPU figure", |s| {
        row(s, &web).is_some_and(|cells| cells[4].ends_with(" %"))
    });

    // Its labels change: a new maximum, and a threshold that cannot be read.
    docker(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        &format!("{max}=5"),
        "--label-add",
        &format!("{}=lots", label("cpu.threshold")),
        &web,
    ]);
    let shown = wait_for(&mut browser, &page, "the changed labels", |s| {
        row(s, &web).is_some_and(|cells| cells[2] == "1–5" && cells[8].contains("lots"))
    });
    let cells = row(&shown, &web).unwrap();
    assert!(cells[9].starts_with("updated: "), "{cells:?}");
    browser.screenshot(&page, &artifact("ui-screenshot.png"));

    // Removed: the row goes.
    drop(web_service);
    wait_for(&mut browser, &page, "the removed service's row gone", |s| {
        row(s, &web).is_none()
    });

    // The registry stops and starts again; a change made meanwhile reaches the page.
    let api = unique("ui-api");
    let _api_service = create_service(
        &api,
        &[(enabled.as_str(), "true"), (max.as_str(), "2")],
        0,
        &["sleep", "3600"],
    );
    wait_for(&mut browser, &page, "the second service's row", |s| {
        row(s, &api).is_some_and(|cells| cells[2] == "1–2")
    });
    registry.stop();
    wait_for(&mut browser, &page, "the connection as reconnecting", |s| {
        s["state"] == "reconnecting"
    });
    docker(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        &format!("{max}=4"),
        &api,
    ]);
    registry.spawn();
    let caught_up = wait_for(&mut browser, &page, "the change made while down", |s| {
        s["state"] == "live" && row(s, &api).is_some_and(|cells| cells[2] == "1–4")
    });
    assert!(
        caught_up["resumes"].as_u64().unwrap() >= 1,
        "the page resumed its stream: {caught_up:#}"
    );
    // The id the page resumed from belongs to the stopped run: the registry answered with a
    // full state, and the page says so.
    assert!(
        caught_up["detail"].as_str().unwrap().contains("reset"),
        "{caught_up:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_keeps_up_with_a_thousand_services() {
    let test = "the_dashboard_keeps_up_with_a_thousand_services";
    if !chromium_installed(test) {
        return;
    }
    const SERVICES: usize = 1000;
    let server = http_support::TestServer::with_defaults().await;
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc-{i:04}")).collect();
    server
        .list(names.iter().map(|n| http_support::spec(n)).collect())
        .await;
    let addr: SocketAddr = server.addr;
    let names_for_page = names.clone();
    let page_task = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch(&unique("ui-browser-1000"));
        let page = browser.open(&format!("http://{addr}/ui"));
        let loaded = Instant::now();
        wait_for(&mut browser, &page, "every service, live", |s| {
            s["state"] == "live" && s["rows"].as_array().unwrap().len() == SERVICES
        });
        eprintln!(
            "{SERVICES} services listed and live {:?} after the page was opened",
            loaded.elapsed()
        );
        (browser, page, names_for_page)
    });
    let (browser, page, names) = page_task.await.unwrap();

    // A burst: every service gets a new sample.
    let burst = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let cpu = f64::from(u32::try_from(i % 90).unwrap()) + 0.5;
        server.metrics(name, Some(http_support::sample(cpu))).await;
    }
    let folded = burst.elapsed();
    let last = names.last().unwrap().clone();
    let shown = tokio::task::spawn_blocking(move || {
        let mut browser = browser;
        let state = wait_for(&mut browser, &page, "every service's new CPU", |s| {
            s["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["cells"][4].as_str().unwrap().ends_with(" %"))
        });
        let responsive = browser.evaluate(&page, "1 + 1");
        (state, responsive)
    })
    .await
    .unwrap();
    eprintln!(
        "{SERVICES} metrics events folded in {folded:?}; the page showed all of them {:?} after the burst began",
        burst.elapsed()
    );
    let (state, responsive) = shown;
    assert_eq!(responsive, 2);
    let cells = row(&state, &last).unwrap();
    let cpu = f64::from(u32::try_from((SERVICES - 1) % 90).unwrap()) + 0.5;
    assert_eq!(cells[4], format!("{cpu:.1} %"));
    server.stop().await.unwrap();
}
