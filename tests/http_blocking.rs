//! Consul-style blocking reads: `?index=N&wait=D` answers when the resource passes N.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::time::Duration;

use http::StatusCode;
use support::{sample, spec, spec_with, TestServer, PROTOCOLS};
use tokio::time::Instant;

/// Whether a request task is still waiting after a short while: it must, while nothing it
/// watches has changed.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(150)).await;
    !task.is_finished()
}

#[tokio::test]
async fn a_blocking_read_is_woken_by_a_change_to_its_resource() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web")]).await;
        let index = server.registry.snapshot().services_revision;
        let client = server.client(protocol);
        let waiting = tokio::spawn(async move {
            client
                .get(&format!("/services?index={index}&wait=30s"))
                .await
        });
        assert!(still_waiting(&waiting).await, "{protocol:?}");
        // Metrics are not part of the list: the read keeps waiting.
        server.metrics("web", Some(sample(1.0))).await;
        assert!(still_waiting(&waiting).await, "{protocol:?}");

        server.list(vec![spec("web"), spec("api")]).await;
        let reply = waiting.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["metadata"]["count"], 2);
        let woken_at: u64 = reply.header("x-registry-index").unwrap().parse().unwrap();
        assert!(woken_at > index);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_blocking_read_times_out_with_the_unchanged_resource() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web")]).await;
        let index = server.registry.snapshot().services_revision;
        let client = server.client(protocol);
        let started = Instant::now();
        let reply = client
            .get(&format!("/services?index={index}&wait=700ms"))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-registry-index"), Some(&*index.to_string()));
        assert_eq!(reply.json()["metadata"]["count"], 1);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_blocking_read_on_one_service_ignores_the_others() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web"), spec("api")]).await;
    let index = server.registry.snapshot().services["web"].revision;
    let client = server.client(PROTOCOLS[1]);
    let waiting = tokio::spawn(async move {
        client
            .get(&format!("/services/web?index={index}&wait=30s"))
            .await
    });
    server.list(vec![spec("web"), spec_with("api", 4, 2)]).await;
    assert!(still_waiting(&waiting).await);
    server
        .list(vec![spec_with("web", 3, 2), spec_with("api", 4, 2)])
        .await;
    let reply = waiting.await.unwrap();
    assert_eq!(reply.json()["service"]["current_replicas"], 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_blocking_read_on_metrics_is_woken_by_new_metrics() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web"), spec("api")]).await;
    server.metrics("web", Some(sample(1.0))).await;
    let index = server
        .registry
        .snapshot()
        .metrics_of("web")
        .unwrap()
        .revision;
    let waiting = server
        .in_flight(&format!("/services/web/metrics?index={index}&wait=5m"))
        .await;
    // Another service's metrics, and a change to the list, are not this resource.
    server.metrics("api", Some(sample(9.0))).await;
    server.list(vec![spec("web"), spec_with("api", 4, 2)]).await;
    assert!(still_waiting(&waiting).await);

    let revision = server.metrics("web", Some(sample(2.0))).await;
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["service_name"], "web");
    assert_eq!(body["metrics"]["cpu_pct"].as_f64(), Some(2.0));
    assert_eq!(
        reply.header("x-registry-index"),
        Some(&*revision.to_string())
    );
    server.stop().await.unwrap();
}

/// A service removed while a blocking read waits on it: the read answers 404 at once, not
/// when its wait runs out (five minutes here; the client's deadline is far shorter).
#[tokio::test]
async fn a_blocking_read_on_a_removed_service_answers_404_at_once() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web"), spec("api")]).await;
    server.metrics("web", Some(sample(1.0))).await;
    let snapshot = server.registry.snapshot();
    let metrics_index = snapshot.metrics_of("web").unwrap().revision;
    let service_index = snapshot.services["web"].revision;
    let on_metrics = server
        .in_flight(&format!(
            "/services/web/metrics?index={metrics_index}&wait=5m"
        ))
        .await;
    let on_service = server
        .in_flight(&format!("/services/web?index={service_index}&wait=5m"))
        .await;
    assert!(still_waiting(&on_metrics).await);
    assert!(still_waiting(&on_service).await);

    server.list(vec![spec("api")]).await;
    for (reply, what) in [
        (on_metrics.await.unwrap(), "metrics"),
        (on_service.await.unwrap(), "service"),
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{what}");
        assert_eq!(reply.json()["error"], "service not found", "{what}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn indexes_that_cannot_be_waited_for_answer_at_once() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web")]).await;
    let client = server.client(PROTOCOLS[0]);
    // From the future (another deployment): answered with the current state.
    let reply = client
        .get(&format!("/services?index={}&wait=5m", u64::MAX - 1))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // Already passed.
    assert_eq!(
        client.get("/services?index=0&wait=5m").await.status,
        StatusCode::OK
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_blocking_parameters_name_the_parameter() {
    let server = TestServer::with_defaults().await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for (query, parameter) in [
            ("index=abc", "index"),
            ("index=-3", "index"),
            ("index=1&wait=forever", "wait"),
            ("index=1&wait=1.5s", "wait"),
        ] {
            let reply = client.get(&format!("/services?{query}")).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
            let body = reply.json();
            assert_eq!(body["parameter"], parameter, "{query}");
            assert!(body["error"].as_str().unwrap().contains(parameter));
        }
    }
    server.stop().await.unwrap();
}
