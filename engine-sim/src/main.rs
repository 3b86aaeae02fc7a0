//! `swarm-engine-sim`: the simulated Docker engine as a program. Its first line on stdout says
//! where it listens (`swarm-engine-sim listening on <url>`, the url usable as DOCKER_BASE_URL);
//! it runs until SIGTERM or SIGINT.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use engine_sim::{Scenario, Sim};

/// A simulated Docker engine (swarm manager) with a seeded world, churn and faults on request.
#[derive(Debug, Parser)]
#[command(name = "swarm-engine-sim", version)]
struct Args {
    /// Where to listen: tcp://HOST:PORT (port 0: any free port) or unix:///PATH.
    #[arg(long, default_value = "tcp://127.0.0.1:0")]
    listen: String,
    /// Services in the world.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Share of the services labelled autoscaler.enabled=true, 0 to 1.
    #[arg(long, default_value_t = 1.0, value_parser = share)]
    labelled_share: f64,
    /// Seeded changes (create, update, remove) per second; 0 for none.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    churn: f64,
    /// Swarm nodes (the first is this engine's own).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    nodes: u64,
    /// Running tasks per service.
    #[arg(long, default_value_t = 1)]
    tasks: u64,
    /// Seed of the world and of the churn.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{text}' is not a share between 0 and 1")),
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{text}' is not a rate of 0 or more per second")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let scenario = Scenario {
        services: args.services,
        labelled_share: args.labelled_share,
        churn_per_sec: args.churn,
        nodes: usize::try_from(args.nodes).unwrap_or(1),
        tasks_per_service: args.tasks,
        seed: args.seed,
    };
    let sim = match Sim::start(&args.listen, scenario).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("swarm-engine-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "swarm-engine-sim listening on {}", sim.url());
        let _ = out.flush();
    }
    wait_for_stop().await;
    sim.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
