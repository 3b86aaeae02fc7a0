//! The node sampler's CPU cost with N running containers, cgroup files against Docker's stats.
//!
//!     cargo run --release --example node_sampler_cost -- 100 [seconds]
//!
//! Starts N idle containers (local/busybox:1, labelled like swarm task containers so the
//! sampler takes them for tasks), then runs the node sampler's step once per second for the
//! given time (default 20 s) reading cgroup files, then the same reading Docker's stats, and
//! prints the process CPU time each way as a share of one core, with the step durations. The
//! containers are removed at the end. Needs the test bed (run it under the itest lock).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use swarm_registry::docker::cgroup::CgroupRoot;
use swarm_registry::docker::node_sampler::{NodeSampler, NodeSamplerConfig};
use swarm_registry::docker::BollardEngine;
use swarm_registry::telemetry::SourceCounters;
use tokio::time::Instant;

const SERVICE: &str = "bench-node-sampler";

/// User plus system CPU time of this process, in seconds (from /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn start_containers(n: usize) {
    let existing = docker(&["ps", "-q", "--filter", &format!("label=bench={SERVICE}")]);
    let have = existing.lines().count();
    let mut children = Vec::new();
    for i in have..n {
        children.push(
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--label",
                    &format!("bench={SERVICE}"),
                    "--label",
                    &format!("com.docker.swarm.task.id=bench-task-{i}"),
                    "--label",
                    &format!("com.docker.swarm.service.id={SERVICE}"),
                    "local/busybox:1",
                    "sleep",
                    "36000",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        if children.len() >= 8 {
            for mut c in children.drain(..) {
                c.wait().unwrap();
            }
        }
    }
    for mut c in children {
        c.wait().unwrap();
    }
}

fn remove_containers() {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label=bench={SERVICE}")]);
    let ids: Vec<&str> = ids.lines().collect();
    for chunk in ids.chunks(100) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk);
        docker(&args);
    }
}

async fn run(label: &str, cgroup_root: Option<CgroupRoot>, seconds: u64, node: &str) {
    let engine = Arc::new(
        BollardEngine::connect("unix:///var/run/docker.sock", Duration::from_secs(30)).unwrap(),
    );
    let mut sampler = NodeSampler::new(
        engine,
        NodeSamplerConfig {
            interval: Duration::from_secs(1),
            cgroup_root,
            stats_concurrency: 8,
            stats_timeout: Duration::from_secs(10),
        },
        Arc::new(SourceCounters::default()),
    );
    let wanted = HashSet::from([SERVICE.to_owned()]);
    // The first step inspects every container: measured apart from the steady state.
    let started = Instant::now();
    let cpu = cpu_seconds();
    sampler.step(node, &wanted).await.unwrap();
    println!(
        "{label}: first step (inspects) {:.0} ms, {:.3} CPU s",
        started.elapsed().as_secs_f64() * 1000.0,
        cpu_seconds() - cpu
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let cpu = cpu_seconds();
    let wall = Instant::now();
    let mut steps = Vec::new();
    let mut readings = 0;
    while wall.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let step = Instant::now();
        let report = sampler.step(node, &wanted).await.unwrap();
        readings = report.readings.len();
        steps.push(step.elapsed().as_secs_f64() * 1000.0);
    }
    let used = cpu_seconds() - cpu;
    let elapsed = wall.elapsed().as_secs_f64();
    steps.sort_by(f64::total_cmp);
    println!(
        "{label}: {} steps in {elapsed:.1} s, {readings} readings per step, CPU {:.1} % of one core, step median {:.1} ms, max {:.1} ms",
        steps.len(),
        used / elapsed * 100.0,
        steps[steps.len() / 2],
        steps[steps.len() - 1],
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
    let created = Instant::now();
    start_containers(n);
    println!(
        "{n} containers running ({:.0} s to start)",
        created.elapsed().as_secs_f64()
    );
    run(
        "cgroup",
        Some(CgroupRoot::new("/sys/fs/cgroup")),
        seconds,
        &node,
    )
    .await;
    run("docker-stats", None, seconds, &node).await;
    remove_containers();
}
