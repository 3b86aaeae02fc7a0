//! The `swarm-engine-sim` program: its first line says where it listens, it serves there, a bad
//! flag is a usage error, and SIGTERM stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_swarm-engine-sim");

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn it_says_where_it_listens_serves_there_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--services", "7", "--labelled-share", "0.5", "--nodes", "2"])
        .args(["--tasks", "3", "--seed", "9", "--churn", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim_end()
        .strip_prefix("swarm-engine-sim listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    let addr = url.strip_prefix("tcp://").unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{url}");
    let stats = get(addr, "/_sim/stats");
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    let body: serde_json::Value =
        serde_json::from_str(stats.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        (
            &body["services"],
            &body["labelled"],
            &body["nodes"],
            &body["tasks"]
        ),
        (&7.into(), &4.into(), &2.into(), &21.into())
    );
    let version = get(addr, "/v1.41/version");
    assert!(version.contains("\"ApiVersion\":\"1.41\""), "{version}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["--labelled-share", "1.5"][..],
        &["--churn", "-1"],
        &["--nodes", "0"],
        &["--services", "many"],
        &["--colour", "blue"],
        &["--listen", "ftp://x"],
        &["--listen", "127.0.0.1:80"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // A usable address that cannot be bound is a failure to start (exit 1), said on stderr.
    let out = Command::new(BIN)
        .args(["--listen", "unix:///nonexistent-dir/sim.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on unix:///nonexistent-dir/sim.sock"),
        "{stderr}"
    );
}
