//! The consumer guide's examples, run as written against the real binary, the test bed's
//! Swarm and RabbitMQ: the curl commands of docs/consumers.md, the Python SSE client, the
//! browser page (in headless Chromium, when installed), and the stream consumers in Rust and
//! Python. Each must see the `service.added` of a service created during the test, and the
//! ids must agree: SSE id = body `seq` = the stream message's id.
//!
//! The binary reads only labels under a random prefix and publishes to its own stream, so
//! nothing else on the shared swarm or broker shows up in what the examples print.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker_support;
#[path = "common/browser.rs"]
mod browser_support;
#[path = "common/swarm.rs"]
mod swarm_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use broker_support::{rabbitmq_available, StreamCleanup};
use serde_json::Value;
use swarm_support::{create_service, swarm_available, unique};

/// Start-up against the real engine on a busy 2-core machine, and any one example's run.
const LIMIT: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The registry binary, killed when dropped; its output is printed when a test fails.
struct Registry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Registry {
    fn start(prefix: &str, stream: &str) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("{stream}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_swarm-registry"));
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("LABEL_PREFIX", prefix)
            .env(
                "RABBITMQ_URL",
                format!(
                    "rabbitmq-stream://guest:guest@localhost:{}/",
                    broker_support::STREAM_PORT
                ),
            )
            .env("RABBITMQ_EXCHANGE", stream)
            .env("RABBITMQ_PRODUCER_NAME", format!("{stream}-producer"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Ok(url) = std::env::var("DOCKER_BASE_URL") {
            command.env("DOCKER_BASE_URL", url);
        }
        let child = command.spawn().expect("the swarm-registry binary starts");
        Registry {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the registry exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Poll `curl -s path` until `check` holds for its JSON body.
    fn poll(&mut self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            self.assert_running();
            let out = run(
                Command::new("curl").args(["-s", &format!("{}{path}", self.url())]),
                Duration::from_secs(10),
            );
            let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {LIMIT:?}: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The registry's current revision (the x-registry-revision header of a read).
    fn revision(&self) -> u64 {
        let out = run(
            Command::new("curl")
                .args(["-s", "-D", "-", "-o", "/dev/null"])
                .arg(format!("{}/services", self.url())),
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-registry-revision")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("an x-registry-revision header")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "registry output:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Run a command to its end, killed after `limit` with every process it started (its output
/// so far is kept): a shell's curl would otherwise hold the pipes open.
fn run(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = follow(child.stdout.take().unwrap());
    let stderr = follow(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn follow(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = pipe.read_to_end(&mut all);
        all
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One server-sent event.
#[derive(Debug)]
struct Event {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn parse_sse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("data is JSON"));
                }
            }
            Some(Event {
                id,
                event: event?,
                data: data?,
            })
        })
        .collect()
}

/// The service an event body is about, if any.
fn subject(body: &Value) -> Option<&str> {
    body["service"]["name"]
        .as_str()
        .or(body["service_name"].as_str())
}

/// The curl commands of the guide's tested block, one per line.
fn documented_curl_commands() -> Vec<String> {
    let guide = std::fs::read_to_string(root().join("docs/consumers.md")).unwrap();
    let marker = "<!-- tested: curl -->";
    let start = guide
        .find(marker)
        .expect("docs/consumers.md marks its tested curl block");
    let block = guide[start + marker.len()..]
        .split("```")
        .nth(1)
        .expect("a fenced block after the marker");
    let commands: Vec<String> = block
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(str::to_owned)
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    commands
}

/// The documented example (service `web`, revision below, port 5001) made concrete.
const DOC_REVISION: &str = "1796086426338738";

fn concrete(command: &str, registry: &Registry, name: &str, since: u64) -> String {
    command
        .replace("localhost:5001", &registry.addr.to_string())
        .replace(DOC_REVISION, &since.to_string())
        .replace("/services/web", &format!("/services/{name}"))
        .replace("service=web", &format!("service={name}"))
}

fn check_curl_examples(registry: &Registry, name: &str, since: u64, added_seq: u64) {
    for documented in documented_curl_commands() {
        let command = concrete(&documented, registry, name, since);
        // Streams run until stopped: the command is ended after a few seconds.
        let out = run(
            Command::new("sh").args(["-c", &command]),
            Duration::from_secs(4),
        );
        let stdout = text(&out.stdout);
        assert!(
            !stdout.is_empty(),
            "{command}: no output; {}",
            text(&out.stderr)
        );
        if command.contains("/events/stream") {
            assert!(stdout.starts_with("retry: "), "{command}: {stdout}");
            let events = parse_sse(&stdout);
            assert!(!events.is_empty(), "{command}: {stdout}");
            assert!(events.iter().all(|e| e.id.is_some()), "{command}: {stdout}");
            if command.contains("Last-Event-ID") {
                // A resume: the missed changes, the service's arrival among them.
                let added = events
                    .iter()
                    .find(|e| e.event == "service.added" && subject(&e.data) == Some(name))
                    .unwrap_or_else(|| panic!("{command}: no service.added: {stdout}"));
                assert_eq!(added.id, Some(added_seq), "{command}");
                assert_eq!(added.data["seq"], added_seq, "{command}");
            } else {
                let snapshot = &events[0];
                assert_eq!(snapshot.event, "snapshot", "{command}: {stdout}");
                let names: Vec<&str> = snapshot.data["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|s| s["name"].as_str())
                    .collect();
                assert_eq!(names, [name], "{command}");
            }
            if command.contains("service=") {
                for e in &events[1..] {
                    assert_eq!(subject(&e.data), Some(name), "{command}: {e:?}");
                }
            }
            assert!(
                events.iter().all(|e| e.event != "services.updated"),
                "{command}: services.updated is opt-in"
            );
        } else {
            let body: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {stdout}"));
            assert!(body.get("error").is_none(), "{command}: {body}");
            if let Some(services) = body["services"].as_array() {
                assert!(
                    services.iter().any(|s| s["name"] == name),
                    "{command}: {body}"
                );
            } else if body.get("service").is_some() {
                assert_eq!(body["service"]["name"], name, "{command}");
            } else {
                assert!(body["available_events"].is_array(), "{command}: {body}");
            }
        }
        eprintln!("ok: {documented}");
    }
}

/// Whether a Python module imports. When not: fail if the tests require the broker (the
/// project's test command installs it with scripts/python-deps), else say so and skip.
fn python_module_available(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("SWARM_REGISTRY_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "python3 cannot import {module}: run scripts/python-deps"
        );
        eprintln!("SKIPPED the {module} example: python3 cannot import it (scripts/python-deps)");
    }
    ok
}

/// The example binary built by `cargo test --all-targets`, or built now.
fn stream_consumer_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/stream_consumer
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let example = profile_dir.join("examples/stream_consumer");
    if !example.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--example", "stream_consumer"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "building the stream_consumer example");
    }
    assert!(example.exists(), "{} after building", example.display());
    example
}

/// The first line of a stream consumer's output: the service's service.added message.
fn check_stream_output(what: &str, out: &Output, name: &str, added_seq: u64) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let line = stdout.lines().next().unwrap_or_default();
    let message: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"));
    assert_eq!(message["subject"], "service.added", "{what}: {message}");
    assert_eq!(
        message["application_properties"]["routing_key"], "service.added",
        "{what}"
    );
    assert_eq!(
        message["application_properties"]["service_name"], name,
        "{what}"
    );
    assert_eq!(message["body"]["service"]["name"], name, "{what}");
    assert_eq!(
        message["message_id"], added_seq,
        "{what}: publishing id = seq"
    );
    assert_eq!(message["body"]["seq"], added_seq, "{what}");
    assert_eq!(
        message["application_properties"]["revision"],
        message["body"]["revision"].to_string(),
        "{what}"
    );
}

/// Serves the browser page and passes `/events/*` on to the registry, so page and stream
/// share one origin, as the page requires. The page's log entries are posted back to
/// `/report` by a script added here (the page itself has no test hook).
struct PageServer {
    addr: SocketAddr,
    reports: Arc<Mutex<Vec<String>>>,
}

const REPORTER: &str = r##"<script>
new MutationObserver(() => {
  const items = [...document.querySelectorAll("#log li")].map((li) => li.textContent);
  fetch("/report", { method: "POST", body: items.join("\n") });
}).observe(document.getElementById("log"), { childList: true });
</script>"##;

impl PageServer {
    fn start(registry: SocketAddr) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let page = std::fs::read_to_string(root().join("docs/examples/eventsource.html"))
            .unwrap()
            .replace("</body>", &format!("{REPORTER}\n</body>"));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let shared = reports.clone();
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let (page, reports) = (page.clone(), shared.clone());
                std::thread::spawn(move || serve(connection, registry, &page, &reports));
            }
        });
        PageServer { addr, reports }
    }
}

fn serve(client: TcpStream, registry: SocketAddr, page: &str, reports: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut client = client;
    if target.starts_with("/events/") {
        let mut upstream = TcpStream::connect(registry).unwrap();
        upstream.write_all(head.as_bytes()).unwrap();
        let mut back = upstream.try_clone().unwrap();
        let mut to_client = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Both);
        });
        let _ = std::io::copy(&mut reader, &mut upstream);
        return;
    }
    let (status, body) = if target.starts_with("/report") {
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_ok() {
            reports.lock().unwrap().push(text(&body));
        }
        ("204 No Content", String::new())
    } else if target.starts_with("/eventsource.html") {
        ("200 OK", page.to_owned())
    } else {
        ("404 Not Found", String::new())
    };
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Headless Chromium, in its own process group so the whole browser is ended on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = std::env::temp_dir().join(unique("chromium-profile"));
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        Browser { child, profile }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn check_browser_example(registry: &Registry, name: &str, since: u64, added_seq: u64) {
    let server = PageServer::start(registry.addr);
    let url = format!(
        "http://{}/eventsource.html?since={since}&service={name}",
        server.addr
    );
    let _browser = Browser::open(&url);
    let wanted = format!("{added_seq} service.added {name}");
    let deadline = Instant::now() + LIMIT;
    loop {
        let reports = server.reports.lock().unwrap().clone();
        if reports.iter().any(|r| r.lines().any(|l| l == wanted)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {wanted:?} within {LIMIT:?}; it reported {reports:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_consumer_example_sees_a_new_service() {
    let test = "every_consumer_example_sees_a_new_service";
    if !swarm_available(test) || !rabbitmq_available(test) {
        return;
    }
    let prefix = format!("doc{:08x}", rand::random::<u32>());
    let stream = unique("docs-examples");
    let _cleanup = StreamCleanup(broker_support::endpoint(), stream.clone());
    let mut registry = Registry::start(&prefix, &stream);
    registry.poll("/health/ready", "readiness", |b| b["status"] == "ready");
    // The publisher creates the stream when it connects.
    registry.poll("/health", "a connected publisher", |b| {
        b["publisher"]["connected"] == true
    });

    // Every example starts from this revision, so each replays the service's arrival.
    let since = registry.revision();
    let name = unique("docs-web");
    let enabled = format!("{prefix}.enabled");
    let max = format!("{prefix}.max");
    let _service = create_service(
        &name,
        &[(enabled.as_str(), "true"), (max.as_str(), "3")],
        0,
        &["sleep", "3600"],
    );
    registry.poll("/services", "the new service", |b| {
        b["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == name))
    });

    // The Python SSE client, resuming from the revision before the service existed.
    let out = run(
        Command::new("python3")
            .arg(root().join("docs/examples/sse_client.py"))
            .arg(registry.url())
            .args(["--since", &since.to_string(), "--service", &name])
            .args(["--until", "service.added", "--timeout", "30"]),
        LIMIT,
    );
    assert!(
        out.status.success(),
        "sse_client.py: {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("service.added"))
        .unwrap_or_else(|| panic!("sse_client.py printed no service.added: {stdout}"));
    let (id, rest) = line.split_once(' ').unwrap();
    let added_seq: u64 = id.parse().unwrap();
    let body: Value = serde_json::from_str(rest.split_once(' ').unwrap().1).unwrap();
    assert_eq!(body["service"]["name"], name);
    assert_eq!(body["seq"], added_seq, "the SSE id is the change's seq");
    assert!(added_seq > since);

    check_curl_examples(&registry, &name, since, added_seq);

    let out = run(
        Command::new(stream_consumer_example())
            .args(["--url", "rabbitmq-stream://guest:guest@localhost:5552/"])
            .args(["--stream", &stream, "--routing-key", "service.added"])
            .args(["--offset", "first", "--limit", "1"]),
        LIMIT,
    );
    check_stream_output("examples/stream_consumer.rs", &out, &name, added_seq);

    if python_module_available("rstream") {
        let out = run(
            Command::new("python3")
                .arg(root().join("docs/examples/stream_consumer.py"))
                .args(["--stream", &stream, "--routing-key", "service.added"])
                .args(["--offset", "first", "--limit", "1", "--timeout", "30"]),
            LIMIT,
        );
        check_stream_output("docs/examples/stream_consumer.py", &out, &name, added_seq);
    }

    if browser_support::chromium_installed("the browser example") {
        check_browser_example(&registry, &name, since, added_seq);
    }
    registry.assert_running();
}
