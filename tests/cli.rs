//! The command line of the real binary: help, version, usage errors, `check-config`, secrets
//! from files, `healthcheck`, and the JSON log format.
//!
//! Most cases need nothing but the binary. `healthcheck_answers_for_a_running_registry` runs it
//! against the test bed's Swarm (skipped without one unless SWARM_REGISTRY_REQUIRE_DOCKER=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/process.rs"]
mod process;
#[path = "common/swarm.rs"]
mod swarm_support;

use process::{free_port, Captured};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use swarm_registry::config::{all_settings, Fallback};

const BINARY: &str = env!("CARGO_BIN_EXE_swarm-registry");
/// How long a command that answers and exits may take on a busy machine.
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// Start-up against the real engine (first full list) on a busy 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The binary with only these variables in its environment.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Run to completion; fails the test if the process does not exit in time.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = command(args, env).spawn().unwrap();
    let deadline = Instant::now() + EXIT_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within {EXIT_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A registry running in the background, killed on drop; stdout collected as it comes.
struct Running {
    child: Child,
    stdout: Captured,
}

impl Running {
    fn start(env: &[(&str, &str)]) -> Running {
        let mut child = command(&[], env).spawn().unwrap();
        let stdout = Captured::default();
        stdout.follow(child.stdout.take().unwrap());
        Running { child, stdout }
    }

    /// The first stdout line containing `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the registry exited ({status}): {}", self.stdout());
            }
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} line: {}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stdout(&self) -> String {
        self.stdout.text()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_lists_every_setting_with_its_flag_variable_and_default() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for command in ["serve", "check-config", "healthcheck"] {
        assert!(help.contains(command), "{command}: {help}");
    }
    for setting in all_settings() {
        let flag = format!("--{} <VALUE>", setting.flag());
        let start = help
            .find(&flag)
            .unwrap_or_else(|| panic!("{flag} missing: {help}"));
        let entry = &help[start..];
        let entry = &entry[..entry.find("\n      --").unwrap_or(entry.len())];
        assert!(
            entry.contains(&format!("[env: {}", setting.name)),
            "{entry}"
        );
        match setting.fallback {
            Fallback::Value(default) => {
                assert!(entry.contains(&format!("[default: {default}]")), "{entry}")
            }
            Fallback::Unset(meaning) => {
                assert!(entry.contains(&format!("[unset: {meaning}]")), "{entry}")
            }
        }
    }
}

#[test]
fn help_never_shows_a_secret_from_the_environment() {
    let out = run(
        &["--help"],
        &[
            ("API_TOKEN", "hunter2"),
            ("RABBITMQ_URL", "amqp://u:hunter3@h/"),
        ],
    );
    let help = text(&out.stdout);
    assert!(
        !help.contains("hunter2") && !help.contains("hunter3"),
        "{help}"
    );
}

#[test]
fn version_prints_the_package_version() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("swarm-registry {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_is_a_usage_error_and_starts_nothing() {
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("HOST", "127.0.0.1"),
        ("PORT", port_text.as_str()),
        ("DOCKER_BASE_URL", "unix:///nonexistent/docker.sock"),
    ];
    for args in [
        &["--no-such-flag"][..],
        &["frobnicate"],
        &["serve", "--porrt", "1"],
    ] {
        let out = run(args, &env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("Usage"), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        // Nothing listened on the port.
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn check_config_reports_a_bad_value_and_exits_1() {
    let out = run(&["check-config"], &[("PORT", "abc")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid PORT=\"abc\""), "{stderr}");
    assert!(stderr.contains("invalid digit"), "{stderr}");
    assert!(out.stdout.is_empty());

    // The same message for a flag as for the variable.
    let out = run(&["check-config", "--port", "abc"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid PORT=\"abc\""));
}

#[test]
fn check_config_reports_every_bad_value() {
    let out = run(
        &["check-config", "--sse-heartbeat-sec", "0"],
        &[("PORT", "abc"), ("REFRESH_INTERVAL_SEC", "soon")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid PORT=\"abc\""), "{stderr}");
    assert!(
        stderr.contains("invalid REFRESH_INTERVAL_SEC=\"soon\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid SSE_HEARTBEAT_SEC=\"0\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}

/// A change log too large to allocate is refused while the settings are read: exit 1 with the
/// setting named, never an allocation failure that aborts the process.
#[test]
fn a_huge_change_log_capacity_is_a_start_up_error() {
    let port = free_port().to_string();
    for huge in ["100000000000000", "18446744073709551615"] {
        let out = run(
            &[],
            &[
                ("CHANGE_LOG_CAPACITY", huge),
                ("PORT", &port),
                ("DOCKER_BASE_URL", "tcp://127.0.0.1:9"),
            ],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{huge}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid CHANGE_LOG_CAPACITY=\"{huge}\": must be at most"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_masked() {
    let out = run(
        &["check-config", "--port", "7001"],
        &[
            ("API_TOKEN", "hunter2"),
            (
                "RABBITMQ_URL",
                "rabbitmq-stream://admin:hunter3@broker:5552/",
            ),
            ("LOG_LEVEL", "  "),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("hunter3"),
        "{stdout}"
    );
    let lines: BTreeSet<&str> = stdout.lines().collect();
    for expected in [
        "PORT=7001",
        "API_TOKEN=***",
        "RABBITMQ_URL=rabbitmq-stream://admin:***@broker:5552/",
        "LOG_LEVEL=info  (default)",
    ] {
        assert!(lines.contains(expected), "{expected}: {stdout}");
    }
    for setting in all_settings() {
        assert!(
            stdout.contains(&format!("\n{}=", setting.name)),
            "{}: {stdout}",
            setting.name
        );
    }
}

#[test]
fn secrets_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("swarm-registry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url_file = dir.join("url");
    std::fs::write(
        &url_file,
        "rabbitmq-stream://admin:hunter3@filehost:5552/\n",
    )
    .unwrap();
    let url_path = url_file.to_str().unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "hunter2\r\n").unwrap();
    let token_path = token_file.to_str().unwrap();

    let out = run(
        &["check-config", "--api-token-file", token_path],
        &[("RABBITMQ_URL_FILE", url_path)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\nRABBITMQ_URL=rabbitmq-stream://admin:***@filehost:5552/\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\nAPI_TOKEN=***\n"), "{stdout}");
    assert!(!stdout.contains("hunter"), "{stdout}");

    // Both forms: an error naming both.
    let out = run(
        &["check-config"],
        &[
            ("RABBITMQ_URL_FILE", url_path),
            ("RABBITMQ_URL", "amqp://h/"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("RABBITMQ_URL_FILE") && stderr.contains("RABBITMQ_URL is set too"),
        "{stderr}"
    );

    // An unreadable file: an error naming the variable and the path.
    let missing = dir.join("missing");
    let missing = missing.to_str().unwrap();
    let out = run(&["check-config"], &[("API_TOKEN_FILE", missing)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("API_TOKEN_FILE") && stderr.contains(missing),
        "{stderr}"
    );
    // Serving refuses the same way.
    let out = run(&[], &[("API_TOKEN_FILE", missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(missing));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn healthcheck_fails_against_a_closed_port() {
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let out = run(&["healthcheck", "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
    // The default URL comes from HOST and PORT.
    let out = run(&["healthcheck", "--live"], &[("PORT", &port)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn healthcheck_answers_for_a_running_registry() {
    if !swarm_support::swarm_available("healthcheck_answers_for_a_running_registry") {
        return;
    }
    let port = free_port().to_string();
    let prefix = format!("cli{:08x}", rand::random::<u32>());
    let mut env = vec![
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", port.clone()),
        ("LABEL_PREFIX", prefix),
    ];
    if let Ok(docker_url) = std::env::var("DOCKER_BASE_URL") {
        env.push(("DOCKER_BASE_URL", docker_url));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut registry = Running::start(&env);
    registry.wait_line("service registry initialized");

    let live = run(&["healthcheck", "--live"], &env);
    assert!(live.status.success(), "{}", text(&live.stderr));
    assert!(
        text(&live.stdout).contains("/health/live: 200"),
        "{}",
        text(&live.stdout)
    );

    // Ready once the first full list is in.
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let ready = run(&["healthcheck"], &env);
        if ready.status.success() {
            assert!(text(&ready.stdout).contains("/health/ready: 200"));
            break;
        }
        assert_eq!(ready.status.code(), Some(1));
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            text(&ready.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The keys of a text line: time, level, role, logger, message and each `key=value` field.
fn text_line_keys(line: &str) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = ["time", "level", "message"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for word in line.split(' ') {
        if let Some((key, _)) = word.split_once('=') {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.insert(key.to_owned());
            }
        }
    }
    keys
}

#[test]
fn json_log_lines_carry_the_same_fields_as_text_lines() {
    // An engine that is not there: the registry serves anyway and logs why it has no data.
    let start = |format: &str| {
        let port = free_port().to_string();
        Running::start(&[
            ("HOST", "127.0.0.1"),
            ("PORT", &port),
            ("DOCKER_BASE_URL", "unix:///nonexistent/docker.sock"),
            ("LOG_FORMAT", format),
        ])
    };
    let mut text_registry = start("text");
    let text_line = text_registry.wait_line("service registry initialized");
    let mut json_registry = start("json");
    let json_line = json_registry.wait_line("service registry initialized");

    let object: serde_json::Value = serde_json::from_str(&json_line).expect(&json_line);
    let object = object.as_object().unwrap();
    let json_keys: BTreeSet<String> = object.keys().cloned().collect();
    assert_eq!(
        json_keys,
        text_line_keys(&text_line),
        "{text_line}\n{json_line}"
    );
    assert_eq!(object["message"], "service registry initialized");
    assert_eq!(object["level"], "INFO");
    assert_eq!(object["role"], "service-registry");
    assert_eq!(object["logger"], "main");
    assert_eq!(object["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(object["sinks"], "http,sse");
    assert_eq!(object["source"], "unix:///nonexistent/docker.sock");
    assert!(object["listen"].as_str().unwrap().starts_with("127.0.0.1:"));

    // Every line of the JSON run parses, whatever logged it.
    std::thread::sleep(Duration::from_millis(500));
    for line in json_registry.stdout().lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect(line);
        for key in ["time", "level", "role", "logger", "message"] {
            assert!(value.get(key).is_some(), "{key} missing: {line}");
        }
    }
}
