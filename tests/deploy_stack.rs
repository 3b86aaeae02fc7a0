//! The deployment a user makes, end to end on the test bed's swarm: the image built from the
//! Dockerfile's runtime stage (around the binary under test), `samples/deploy.sh cpu`, the
//! registry answering through its published port with the sample services, an SSE snapshot, a
//! POST with the token from the stack's secret, the broker of the stack connected through the
//! URL secret, then `samples/down.sh cpu` leaving nothing of the stack behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;
#[path = "common/swarm.rs"]
mod swarm;

use process::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

use serde_json::Value;
use swarm::swarm_available;

const STACK: &str = "autoscale-cpu";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a project script; returns (success, stdout + stderr).
fn script(path: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new(repo().join(path))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Everything that still carries the stack's namespace label.
fn stack_leftovers() -> Vec<String> {
    let filter = format!("label=com.docker.stack.namespace={STACK}");
    let mut found = Vec::new();
    for kind in ["service", "network", "secret", "config"] {
        for line in docker_lines(&[kind, "ls", "--filter", &filter, "--format", "{{.Name}}"]) {
            found.push(format!("{kind} {line}"));
        }
    }
    found
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body). `None` when nothing
/// answers.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` until it yields a value or `limit` passes; panics with `what` and the last
/// observation otherwise.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Removes the stack, the image and the secrets' folder whatever the test's outcome.
struct Cleanup {
    image: String,
    secrets: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = script("samples/down.sh", &["cpu"], &[]);
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.image])
            .output();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

#[test]
fn the_sample_stack_deploys_serves_and_leaves_nothing_behind() {
    if !swarm_available("deploy_stack") {
        return;
    }
    // A stack left over by an interrupted run would hold the names.
    let (ok, text) = script("samples/down.sh", &["cpu"], &[]);
    assert!(ok, "samples/down.sh cpu before the test: {text}");

    let tag = format!("test-{}", std::process::id());
    let image = format!("swarm-registry:{tag}");
    let secrets = std::env::temp_dir().join(format!("swarm-registry-stack-{}", std::process::id()));
    let _cleanup = Cleanup {
        image: image.clone(),
        secrets: secrets.clone(),
    };

    let binary = env!("CARGO_BIN_EXE_swarm-registry");
    let (ok, text) = script("scripts/build-image", &["--binary", binary, &image], &[]);
    assert!(ok, "scripts/build-image: {text}");
    let health = docker_lines(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{json .Config.Healthcheck.Test}} {{.Config.StopSignal}}",
    ]);
    assert_eq!(
        health,
        vec![r#"["CMD","swarm-registry","healthcheck"] SIGTERM"#.to_owned()],
        "the image's health check and stop signal"
    );

    let port = free_port();
    let env = [
        ("REGISTRY_PORT", port.to_string()),
        ("SECRETS_DIR", secrets.display().to_string()),
        ("RABBITMQ_IMAGE", "local/rabbitmq:4".to_owned()),
        ("SAMPLE_IMAGE", swarm::IMAGE.to_owned()),
    ];
    let (ok, text) = script("samples/deploy.sh", &["cpu", "swarm-registry", &tag], &env);
    assert!(ok, "samples/deploy.sh cpu: {text}");

    wait_for(
        "GET /health/ready answers 200",
        Duration::from_secs(120),
        || match http(port, "GET", "/health/ready", &[]) {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let names = wait_for(
        "both sample services listed",
        Duration::from_secs(30),
        || {
            let (status, body) = http(port, "GET", "/services", &[]).ok_or("no answer")?;
            let json: Value =
                serde_json::from_str(&body).map_err(|e| format!("{status} {e}: {body}"))?;
            let mut names: Vec<String> = json["services"]
                .as_array()
                .ok_or(format!("no services array: {body}"))?
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .filter(|n| n.starts_with(STACK))
                .collect();
            names.sort();
            if names.len() == 2 {
                Ok(names)
            } else {
                Err(body)
            }
        },
    );
    assert_eq!(names, ["autoscale-cpu_web", "autoscale-cpu_worker"]);

    // The event stream opens with the snapshot.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /events/stream HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    while !seen.contains("event: snapshot") {
        let n = stream.read(&mut buf).expect("reading the event stream");
        assert!(n > 0, "the event stream ended before its snapshot: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.contains("autoscale-cpu_worker"),
        "snapshot lists the samples: {seen}"
    );
    drop(stream);

    // POST needs the token the stack gave the registry as a Docker secret.
    let token = std::fs::read_to_string(secrets.join("api_token")).unwrap();
    let (status, body) = http(port, "POST", "/cache/refresh", &[]).unwrap();
    assert_eq!(status, 401, "POST without the token: {body}");
    let bearer = format!("Bearer {}", token.trim());
    let (status, body) = http(
        port,
        "POST",
        "/cache/refresh",
        &[("authorization", &bearer)],
    )
    .unwrap();
    assert_eq!(status, 200, "POST with the token from the secret: {body}");
    assert!(body.contains("cache refreshed"), "{body}");

    // The broker URL came from its secret: the stack's RabbitMQ takes the registry's stream.
    wait_for(
        "the publisher connected to the stack's RabbitMQ",
        Duration::from_secs(120),
        || {
            let (_, body) = http(port, "GET", "/health", &[]).ok_or("no answer")?;
            let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            if json["publisher"]["enabled"] == true && json["publisher"]["connected"] == true {
                Ok(())
            } else {
                Err(body)
            }
        },
    );

    let (ok, text) = script("samples/down.sh", &["cpu"], &[]);
    assert!(ok, "samples/down.sh cpu: {text}");
    assert_eq!(
        stack_leftovers(),
        Vec::<String>::new(),
        "left after down.sh"
    );
    assert!(
        http(port, "GET", "/health/live", &[]).is_none(),
        "the registry still answers after down.sh"
    );
}

#[test]
fn the_sample_scripts_refuse_bad_input_with_a_message() {
    let (ok, text) = script("samples/deploy.sh", &["gpu"], &[]);
    assert!(!ok && text.contains("usage:"), "unknown kind: {text}");
    let (ok, text) = script("samples/down.sh", &["gpu"], &[]);
    assert!(!ok && text.contains("usage:"), "unknown kind: {text}");
    // No Docker at all: a clear message, not a shell error. The PATH holds only what the
    // script needs before it looks for docker.
    let bin = std::env::temp_dir().join(format!("swarm-registry-nodocker-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["/usr/bin/env", "/bin/bash", "/usr/bin/dirname"] {
        let link = bin.join(Path::new(tool).file_name().unwrap());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(tool, link).unwrap();
    }
    let out = Command::new(repo().join("samples/deploy.sh"))
        .arg("cpu")
        .env("PATH", &bin)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&bin);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("docker not found"),
        "{text}"
    );
    // An engine that does not answer.
    let out = Command::new(repo().join("samples/deploy.sh"))
        .arg("cpu")
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("does not answer"),
        "{text}"
    );
}

#[test]
fn both_sample_stacks_are_valid_stack_files() {
    // `docker stack config` checks a stack file as `docker stack deploy` would, without a
    // swarm; the memory stack is not deployed by the test above.
    for kind in ["cpu", "memory"] {
        let out = Command::new("docker")
            .args(["stack", "config", "-c"])
            .arg(repo().join(format!("samples/swarm-stack-{kind}.yml")))
            .env("SECRETS_DIR", std::env::temp_dir())
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "samples/swarm-stack-{kind}.yml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for service in ["registry:", "rabbitmq:", "agent:"] {
            assert!(
                text.contains(service),
                "{kind} stack lacks {service}\n{text}"
            );
        }
    }
}
