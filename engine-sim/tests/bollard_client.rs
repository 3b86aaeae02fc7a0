//! The simulation through the Docker client the registry uses (bollard 0.21): every answer the
//! registry and its agent ask for parses, filters select, `since`/`until` bound the events, and
//! each fault shows the way a client meets it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, ListServicesOptions,
    ListTasksOptions, StatsOptions,
};
use bollard::Docker;
use engine_sim::{ChurnStep, Fault, Scenario, Sim, SimHandle};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(scenario: Scenario) -> (SimHandle, Docker) {
    let sim = Sim::start("tcp://127.0.0.1:0", scenario).await.unwrap();
    let docker = Docker::connect_with_host(sim.url()).unwrap();
    (sim, docker)
}

fn world() -> Scenario {
    Scenario {
        services: 12,
        labelled_share: 0.5,
        nodes: 3,
        tasks_per_service: 3,
        seed: 42,
        ..Scenario::default()
    }
}

fn filters(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

/// A raw HTTP/1.1 exchange with the simulation's listener: status and body.
async fn raw(sim: &SimHandle, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = sim.url().trim_start_matches("tcp://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let status = reply[9..12].parse().unwrap();
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn the_registry_calls_parse_and_filter() {
    let (sim, docker) = start(world()).await;
    let docker = docker.negotiate_version().await.unwrap();
    assert_eq!(docker.client_version().to_string(), "1.41");

    let info = docker.info().await.unwrap();
    let swarm = info.swarm.unwrap();
    assert_eq!(swarm.node_id.as_deref(), Some(sim.node_ids()[0].as_str()));
    assert_eq!(swarm.control_available, Some(true));
    assert_eq!(swarm.local_node_state.unwrap().to_string(), "active");

    let all = docker
        .list_services(Some(ListServicesOptions {
            filters: None,
            status: Some(true),
        }))
        .await
        .unwrap();
    assert_eq!(all.len(), 12);
    let status = all[0].service_status.as_ref().unwrap();
    assert_eq!(
        (status.running_tasks, status.desired_tasks),
        (Some(3), Some(3))
    );
    assert!(all[0].version.as_ref().unwrap().index.unwrap() > 0);
    let labelled = docker
        .list_services(Some(ListServicesOptions {
            filters: Some(filters(&[("label", &["autoscaler.enabled=true"])])),
            status: Some(true),
        }))
        .await
        .unwrap();
    assert_eq!(labelled.len(), 6);
    let target = &labelled[2];
    let id = target.id.clone().unwrap();
    let by_id = docker
        .list_services(Some(ListServicesOptions {
            filters: Some(filters(&[("id", &[&id])])),
            status: Some(true),
        }))
        .await
        .unwrap();
    assert_eq!(by_id, vec![target.clone()]);
    let inspected = docker.inspect_service(&id, None).await.unwrap();
    assert_eq!(inspected.spec, target.spec);
    assert!(
        inspected.service_status.is_none(),
        "an inspect has no counts"
    );
    let missing = docker.inspect_service("nosuchservice", None).await;
    assert!(
        matches!(
            missing,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ),
        "{missing:?}"
    );

    let tasks = docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(filters(&[
                ("service", &[&id]),
                ("desired-state", &["running"]),
            ])),
        }))
        .await
        .unwrap();
    assert_eq!(tasks.len(), 3);
    let nodes: std::collections::BTreeSet<_> = tasks.iter().map(|t| t.node_id.clone()).collect();
    assert_eq!(nodes.len(), 3, "three tasks over three nodes");
    assert!(tasks
        .iter()
        .all(|t| t.status.as_ref().unwrap().state == Some(bollard::models::TaskState::RUNNING)));
    let two_nodes = sim.node_ids()[..2].to_vec();
    let on_two = docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(HashMap::from([("node".to_owned(), two_nodes.clone())])),
        }))
        .await
        .unwrap();
    assert_eq!(on_two.len(), 24, "two thirds of 36 tasks");
    assert!(on_two
        .iter()
        .all(|t| two_nodes.contains(t.node_id.as_ref().unwrap())));

    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filters(&[
                ("label", &["com.docker.swarm.task.id"]),
                ("status", &["running"]),
            ])),
            ..ListContainersOptions::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        containers.len(),
        12,
        "one task of each service on the engine's node"
    );
    let container = containers
        .iter()
        .find(|c| c.labels.as_ref().unwrap()["com.docker.swarm.service.id"] == id)
        .unwrap();
    let container_id = container.id.clone().unwrap();
    let inspect = docker
        .inspect_container(&container_id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let limit = target
        .spec
        .as_ref()
        .unwrap()
        .task_template
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap()
        .memory_bytes;
    assert_eq!(inspect.host_config.unwrap().memory, limit);

    let one_shot = docker
        .stats(
            &container_id,
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        )
        .next()
        .await
        .unwrap()
        .unwrap();
    let cpu = one_shot.cpu_stats.unwrap();
    assert!(cpu.cpu_usage.unwrap().total_usage.unwrap() > 0);
    assert_eq!(cpu.online_cpus, Some(2));
    let memory = one_shot.memory_stats.unwrap();
    assert!(memory.usage.unwrap() > memory.stats.unwrap()["inactive_file"]);

    // Streamed: a reading a second, each with the previous one as precpu.
    let mut stream = docker.stats(
        &container_id,
        Some(StatsOptions {
            stream: true,
            one_shot: false,
        }),
    );
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    let total = |s: &bollard::models::ContainerStatsResponse| {
        s.cpu_stats
            .as_ref()
            .unwrap()
            .cpu_usage
            .as_ref()
            .unwrap()
            .total_usage
            .unwrap()
    };
    assert!(total(&second) > total(&first));
    assert_eq!(
        second.precpu_stats.unwrap().cpu_usage.unwrap().total_usage,
        Some(total(&first))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn events_honour_since_until_and_filters() {
    let (sim, docker) = start(world()).await;
    let steps: Vec<ChurnStep> = (0..6).map(|_| sim.churn_once()).collect();
    // With an `until` already past, the stream is the history and ends.
    let until_now = EventsOptions {
        since: Some("0".to_owned()),
        until: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                .to_string(),
        ),
        filters: None,
    };
    let events: Vec<_> = docker
        .events(Some(until_now.clone()))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.len(), 6);
    for (event, step) in events.iter().zip(&steps) {
        let (action, id) = match step {
            ChurnStep::Created { id } => ("create", id),
            ChurnStep::Updated { id } => ("update", id),
            ChurnStep::Removed { id } => ("remove", id),
        };
        assert_eq!(event.action.as_deref(), Some(action));
        let actor = event.actor.as_ref().unwrap();
        assert_eq!(actor.id.as_deref(), Some(id.as_str()));
        assert!(actor.attributes.as_ref().unwrap()["name"].starts_with("sim-"));
        assert_eq!(
            event.typ,
            Some(bollard::models::EventMessageTypeEnum::SERVICE)
        );
        let nanos = event.time_nano.unwrap();
        assert_eq!(event.time, Some(nanos / 1_000_000_000));
    }
    // since = the third event's time, until = the fifth's: both inclusive.
    let t = |i: usize| {
        let n = events[i].time_nano.unwrap();
        format!("{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
    };
    let window: Vec<_> = docker
        .events(Some(EventsOptions {
            since: Some(t(2)),
            until: Some(t(4)),
            filters: None,
        }))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(window.len(), 3);
    // The registry's own filters: types service and container, its five actions.
    let registry_filter = filters(&[
        ("type", &["service", "container"]),
        ("event", &["create", "update", "remove", "start", "die"]),
    ]);
    let filtered: Vec<_> = docker
        .events(Some(EventsOptions {
            filters: Some(registry_filter),
            ..until_now.clone()
        }))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(filtered.len(), 6);
    let updates = steps
        .iter()
        .filter(|s| matches!(s, ChurnStep::Updated { .. }))
        .count();
    let only_updates: Vec<_> = docker
        .events(Some(EventsOptions {
            filters: Some(filters(&[("event", &["update"])])),
            ..until_now.clone()
        }))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(only_updates.len(), updates);
    let no_containers: Vec<_> = docker
        .events(Some(EventsOptions {
            filters: Some(filters(&[("type", &["container"])])),
            ..until_now
        }))
        .collect::<Vec<_>>()
        .await;
    assert!(no_containers.is_empty());

    // Live: a stream without `until` delivers changes made after it opened. The subscription
    // is taken when the request is answered, so change things until one arrives.
    let mut live = docker.events(Some(EventsOptions {
        since: None,
        until: None,
        filters: None,
    }));
    let next = tokio::spawn(async move { live.next().await });
    for _ in 0..500 {
        sim.churn_once();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if next.is_finished() {
            break;
        }
    }
    let event = next.await.unwrap().unwrap().unwrap();
    assert!(event.time_nano.unwrap() > events[5].time_nano.unwrap());
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_reach_the_client_and_clear() {
    let (sim, docker) = start(world()).await;
    let list = |docker: Docker| async move {
        docker
            .list_services(Some(ListServicesOptions {
                filters: None,
                status: Some(true),
            }))
            .await
    };

    sim.set_fault(Fault::NotManager);
    let docker = docker.negotiate_version().await.unwrap();
    let swarm = docker.info().await.unwrap().swarm.unwrap();
    assert_eq!(swarm.control_available, Some(false));
    match list(docker.clone()).await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        }) => {
            assert_eq!(status_code, 503);
            assert!(message.contains("not a swarm manager"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    sim.clear_faults();
    assert_eq!(list(docker.clone()).await.unwrap().len(), 12);

    sim.set_fault(Fault::MalformedJson {
        lists: true,
        events: false,
    });
    let broken = list(docker.clone()).await;
    assert!(
        matches!(broken, Err(bollard::errors::Error::JsonSerdeError { .. })),
        "{broken:?}"
    );
    sim.clear_faults();

    // A version older than the client's: the client steps down to it, and is served.
    sim.set_fault(Fault::UnknownVersion {
        version: "1.12".to_owned(),
    });
    let old = Docker::connect_with_host(sim.url())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    assert_eq!(old.client_version().to_string(), "1.12");
    assert_eq!(list(old).await.unwrap().len(), 12);
    // A newer one: the client keeps its own, which the engine now accepts.
    sim.set_fault(Fault::UnknownVersion {
        version: "9.99".to_owned(),
    });
    let new = Docker::connect_with_host(sim.url())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    assert_eq!(new.client_version().to_string(), "1.53");
    assert_eq!(list(new.clone()).await.unwrap().len(), 12);
    let (status, _) = raw(&sim, "GET", "/v1.53/services", "").await;
    assert_eq!(status, 200, "9.99 accepts a 1.53 prefix");
    sim.clear_faults();
    // Without the fault, a 1.53 prefix is too new for a 1.41 engine, as dockerd says. (bollard
    // 0.21 joins its absolute paths onto the versioned base, which drops the prefix: its
    // requests arrive unversioned, so this only meets clients that do send one.)
    let (status, body) = raw(&sim, "GET", "/v1.53/services", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("too new"), "{body}");
    let (status, _) = raw(&sim, "GET", "/v1.12/services", "").await;
    assert_eq!(status, 200);
    assert_eq!(list(new).await.unwrap().len(), 12);

    sim.set_fault(Fault::Slow { delay_ms: 300 });
    let started = tokio::time::Instant::now();
    list(docker.clone()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.clear_faults();

    // Cut mid-line: half a JSON line, then the end of the stream.
    sim.churn_once();
    sim.set_fault(Fault::EventsCutMidLine);
    let cut: Vec<_> = docker
        .events(Some(EventsOptions {
            since: Some("0".to_owned()),
            until: None,
            filters: None,
        }))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert!(cut[0].is_err(), "{cut:?}");
    sim.clear_faults();

    // Malformed event lines: each one is a decoding error for the client.
    sim.set_fault(Fault::MalformedJson {
        lists: false,
        events: true,
    });
    let mut malformed = docker.events(Some(EventsOptions {
        since: Some("0".to_owned()),
        until: None,
        filters: None,
    }));
    assert!(malformed.next().await.unwrap().is_err());
    drop(malformed);
    assert_eq!(
        list(docker.clone()).await.unwrap().len(),
        12,
        "lists stay good"
    );
    sim.clear_faults();

    // Hang: the stream opens and then says nothing, even when something happens.
    sim.set_fault(Fault::EventsHang);
    let mut hung = docker.events(Some(EventsOptions {
        since: Some("0".to_owned()),
        until: None,
        filters: None,
    }));
    sim.churn_once();
    let waited = tokio::time::timeout(Duration::from_millis(500), hung.next()).await;
    assert!(waited.is_err(), "a hung stream delivered {waited:?}");
    sim.clear_faults();
    sim.shutdown().await;
}

#[tokio::test]
async fn the_control_endpoints_steer_the_simulation() {
    let (sim, _docker) = start(world()).await;
    let (status, body) = raw(
        &sim,
        "POST",
        "/_sim/fault",
        r#"{"kind":"slow","delay_ms":5}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.stats().faults, vec![Fault::Slow { delay_ms: 5 }]);
    let (status, body) = raw(&sim, "POST", "/_sim/fault", r#"{"kind":"gremlins"}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("expected"), "{body}");
    let (status, _) = raw(&sim, "POST", "/_sim/fault", r#"{"kind":"malformed_json"}"#).await;
    assert_eq!(status, 200);
    assert!(sim.stats().faults.contains(&Fault::MalformedJson {
        lists: true,
        events: true
    }));
    let (status, _) = raw(&sim, "POST", "/_sim/faults/clear", "").await;
    assert_eq!(status, 200);
    assert!(sim.stats().faults.is_empty());

    let (status, _) = raw(&sim, "POST", "/_sim/churn", r#"{"per_second": 12.5}"#).await;
    assert_eq!(status, 200);
    assert_eq!(sim.stats().churn_per_sec, 12.5);
    let (status, _) = raw(&sim, "POST", "/_sim/churn", r#"{"per_second": -1}"#).await;
    assert_eq!(status, 400);
    let (status, _) = raw(&sim, "POST", "/_sim/churn", r#"{"per_second": 0}"#).await;
    assert_eq!(status, 200);

    let (status, _) = raw(&sim, "GET", "/v1.41/services?status=true", "").await;
    assert_eq!(status, 200);
    let (status, _) = raw(&sim, "GET", "/services", "").await;
    assert_eq!(status, 200);
    let (status, body) = raw(&sim, "GET", "/_sim/stats", "").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["services"].as_u64().unwrap(), 12);
    assert_eq!(stats["labelled"], 6);
    assert_eq!(
        stats["requests"]["services"], 2,
        "with and without a version prefix"
    );
    assert_eq!(stats["requests"]["sim_fault"], 3);
    let (status, body) = raw(&sim, "GET", "/v1.41/nowhere", "").await;
    assert_eq!((status, body.contains("page not found")), (404, true));
    sim.shutdown().await;
}

#[tokio::test]
async fn it_serves_a_unix_socket() {
    let path = std::env::temp_dir().join(format!("engine-sim-{}.sock", std::process::id()));
    let url = format!("unix://{}", path.display());
    let sim = Sim::start(&url, world()).await.unwrap();
    assert_eq!(sim.url(), url);
    let docker = Docker::connect_with_host(sim.url())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    assert_eq!(
        docker
            .list_services(None::<ListServicesOptions>)
            .await
            .unwrap()
            .len(),
        12
    );
    sim.shutdown().await;
    assert!(!path.exists(), "the socket file is removed on shutdown");
    assert!(Sim::start("ftp://x", world()).await.is_err());
}
