//! The `swarm-registry` binary: `serve` (the default) reads configuration, starts the pipeline
//! and its edges, and stops them all on SIGTERM or SIGINT; `check-config` and `healthcheck`
//! answer and exit.
//!
//! Wiring only: every behaviour lives in the library (see ARCHITECTURE.md, `cli.rs`).

use std::sync::Arc;
use std::time::Duration;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pipeline::{Input, LabelRules, Registry, RegistryConfig};
use swarm_registry::broker;
use swarm_registry::cli::{self, Cli, Command, HealthcheckArgs};
use swarm_registry::config::{Settings, Vars};
use swarm_registry::control::SourceControl;
use swarm_registry::docker;
use swarm_registry::http::{self, ApiState};
use swarm_registry::logging;
use swarm_registry::telemetry::{PublisherState, SourceCounters};
use tokio_util::sync::CancellationToken;

/// How long start-up waits for the broker to say where publishing stopped.
const BROKER_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the edges get to finish after a stop signal before the process exits anyway, at
/// the least (see [`shutdown_grace`]).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long tasks abandoned after the grace may hold the runtime before the process exits.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    // A usage error exits 2 here, before anything starts; --help and --version exit 0.
    let cli = Cli::parse();
    let vars = cli.settings.vars;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&vars),
        Command::CheckConfig => check_config(&vars),
        Command::Healthcheck(args) => healthcheck(&vars, &args),
        Command::Agent => agent(&vars),
    }
}

/// Every bad setting, one line each, on stderr.
fn report_config_errors(errors: &swarm_registry::config::ConfigErrors) {
    for error in errors.iter() {
        eprintln!("swarm-registry: configuration: {error}");
    }
}

fn serve(vars: &Vars) -> ExitCode {
    let settings = match Settings::from_vars(vars) {
        Ok(settings) => settings,
        Err(errors) => {
            report_config_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    run_to_exit(
        tokio::runtime::Builder::new_multi_thread(),
        "swarm-registry",
        run(settings),
    )
}

/// Runs `work` to its end on a runtime from `builder`, and the process's exit code from its
/// outcome. A task abandoned after the grace (or a blocking call it left behind) must not keep
/// the process alive: dropping the runtime would wait for it without bound, so it gets
/// RUNTIME_STOP.
fn run_to_exit(
    mut builder: tokio::runtime::Builder,
    who: &str,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{who}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(RUNTIME_STOP);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{who}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `agent`: the node sampler of this node, reporting to the registry, until SIGTERM/SIGINT.
fn agent(vars: &Vars) -> ExitCode {
    let (config, core) = match (
        swarm_registry::agent::AgentConfig::from_vars(vars),
        swarm_registry::config::CoreConfig::from_vars(vars),
    ) {
        (Ok(config), Ok(core)) => (config, core),
        (Err(errors), _) | (_, Err(errors)) => {
            report_config_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    let work = async move {
        logging::init(&core.log_level, core.log_format);
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            engine = %config.swarm.docker_url,
            registry = %config.registry.authority,
            "node agent starting"
        );
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(swarm_registry::agent::run(config, shutdown.clone()));
        let stopped = wait_for_stop_signal().await;
        shutdown.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, agent).await;
        stopped
    };
    run_to_exit(
        tokio::runtime::Builder::new_current_thread(),
        "swarm-registry agent",
        work,
    )
}

/// `check-config`: the effective configuration on stdout (exit 0), or every error (exit 1).
fn check_config(vars: &Vars) -> ExitCode {
    match Settings::from_vars(vars) {
        Ok(_) => {
            print!("{}", Settings::describe(vars));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report_config_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

/// `healthcheck`: exit 0 when the registry answers 2xx, 1 otherwise.
fn healthcheck(vars: &Vars, args: &HealthcheckArgs) -> ExitCode {
    let target = match args.target(vars) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("swarm-registry healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("swarm-registry healthcheck: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(args.timeout_sec.max(1));
    let answer = runtime.block_on(cli::probe(&target, timeout));
    runtime.shutdown_timeout(RUNTIME_STOP);
    match answer {
        Ok(status) if status.is_success() => {
            println!("{target}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("swarm-registry healthcheck: {target}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("swarm-registry healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long the edges get after a stop signal: the HTTP drain bound (SHUTDOWN_GRACE_SEC) and
/// the publisher's flush (one timeout for the confirms, one for closing), never less than
/// [`SHUTDOWN_GRACE`].
fn shutdown_grace(settings: &Settings) -> Duration {
    let flush = settings.broker.as_ref().map_or(Duration::ZERO, |broker| {
        broker.tuning.timeout.saturating_mul(2)
    });
    SHUTDOWN_GRACE.max(settings.http.shutdown_grace).max(flush)
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    logging::init(&settings.core.log_level, settings.core.log_format);
    let grace = shutdown_grace(&settings);

    // Revisions keep rising across restarts: above the clock, and above whatever the broker
    // already stored for our producer.
    let floor = match &settings.broker {
        Some(config) => broker::starting_floor(config, BROKER_QUERY_TIMEOUT).await,
        None => pipeline::clock_floor(),
    };
    let (registry, driver) = Registry::new(RegistryConfig {
        rules: LabelRules::new(&settings.core.label_prefix),
        log_capacity: settings.core.change_log_capacity,
        floor,
        ..RegistryConfig::default()
    });
    let shutdown = CancellationToken::new();
    // The driver outlives the edges: it stops by itself once every handle is gone.
    tokio::spawn(driver.run());
    let mut tasks = tokio::task::JoinSet::new();

    let listener = http::bind(&settings.http).await?;
    let sinks = match &settings.broker {
        Some(config) => format!("http,sse,rabbitmq:{}@{}", config.stream, config.endpoint),
        None => "http,sse".to_owned(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        source = %settings.swarm.docker_url,
        sinks = %sinks,
        listen = %settings.http.listen,
        revision_floor = floor,
        "service registry initialized"
    );

    let (control, commands) = SourceControl::channel(64);
    let counters = Arc::new(SourceCounters::default());
    tasks.spawn(docker::run(
        settings.swarm.clone(),
        registry.clone(),
        commands,
        counters.clone(),
        shutdown.clone(),
    ));

    let publisher = match settings.broker {
        Some(config) => {
            let state = Arc::new(PublisherState::enabled(&config.stream));
            tasks.spawn(broker::run(
                config,
                registry.clone(),
                state.clone(),
                shutdown.clone(),
            ));
            state
        }
        // Publishing is off (RABBITMQ_URL unset): the start-up line's sinks say so.
        None => Arc::new(PublisherState::disabled()),
    };

    tasks.spawn(health_beacon(
        registry.clone(),
        settings.core.health_check_interval,
        shutdown.clone(),
    ));

    let publishing = publisher.clone();
    let api = ApiState {
        registry: registry.clone(),
        control,
        source_counters: counters,
        publisher,
        refresh_interval: settings.swarm.refresh_interval,
    };
    let server = tokio::spawn(http::serve(listener, settings.http, api, shutdown.clone()));

    wait_for_stop_signal().await?;
    tracing::info!("stopping: no new connections, event streams closing");
    shutdown.cancel();
    drop(registry);
    let stopped = async {
        let served = server.await;
        while tasks.join_next().await.is_some() {}
        served
    };
    let outcome = tokio::time::timeout(grace, stopped).await;
    if outcome.is_err() {
        tracing::warn!(
            "some tasks did not stop within {}s; exiting anyway",
            grace.as_secs()
        );
    }
    match outcome {
        Ok(Ok(Err(e))) => return Err(e).context("HTTP server"),
        Ok(Err(e)) => anyhow::bail!("HTTP server task failed: {e}"),
        _ => {}
    }
    // The last line: whether every change reached the broker (what a stop could not flush
    // within its bound is lost with the process, the next run re-describes the services).
    if publishing.enabled {
        let unpublished = publishing
            .outbox_len
            .load(std::sync::atomic::Ordering::Relaxed);
        if unpublished == 0 {
            tracing::info!(unpublished, "stopped");
        } else {
            tracing::warn!(
                unpublished,
                "stopped; {unpublished} changes were not confirmed by the broker"
            );
        }
    } else {
        tracing::info!("stopped");
    }
    Ok(())
}

/// `health.check` to every sink at a steady pace: it is how consumers tell a quiet registry
/// from a dead one.
async fn health_beacon(registry: Registry, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                if registry.send(Input::Tick).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_grace_covers_the_http_drain_and_the_publishers_flush() {
        let grace = |pairs: &[(&str, &str)]| {
            shutdown_grace(&Settings::from_vars(&Vars::from_pairs(pairs.iter().copied())).unwrap())
        };
        assert_eq!(grace(&[]), SHUTDOWN_GRACE);
        assert_eq!(
            grace(&[("SHUTDOWN_GRACE_SEC", "30")]),
            Duration::from_secs(30)
        );
        assert_eq!(
            grace(&[
                (
                    "RABBITMQ_URL",
                    "rabbitmq-stream://guest:guest@localhost:5552/"
                ),
                ("RABBITMQ_TIMEOUT_MS", "8000"),
            ]),
            Duration::from_secs(16)
        );
    }
}
