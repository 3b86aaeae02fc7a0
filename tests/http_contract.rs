//! The wire contract of every endpoint, over HTTP/1.1 and h2c, against a real registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::sync::atomic::Ordering;

use http::{Method, StatusCode};
use pipeline::{Input, SourceStatus};
use serde_json::Value;
use support::{sample, spec, spec_with, Options, TestServer, DEADLINE, PROTOCOLS};
use swarm_registry::http::HttpConfig;
use swarm_registry::telemetry::PublisherState;

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_has_keys(value: &Value, expected: &[&str]) {
    let present = keys(value);
    for key in expected {
        assert!(present.contains(key), "missing {key:?} in {value}");
    }
}

#[tokio::test]
async fn every_endpoint_keeps_the_contract_shape() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        let client = server.client(protocol);

        // Before the first full list: empty, not ready, last_refresh 0.0.
        let ready = client.get("/health/ready").await;
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{protocol:?}"
        );
        assert!(ready.json()["error"]
            .as_str()
            .unwrap()
            .contains("first full list"));
        let services = client.get("/services").await;
        assert_eq!(services.status, StatusCode::OK);
        let body = services.json();
        assert_eq!(body["services"], Value::Array(vec![]));
        assert_eq!(body["metadata"]["count"], 0);
        assert!(body["metadata"]["last_refresh"].is_f64());
        assert_eq!(body["metadata"]["last_refresh"].as_f64(), Some(0.0));

        server.list(vec![spec("web"), spec("api")]).await;

        let services = client.get("/services").await;
        assert_eq!(services.status, StatusCode::OK);
        assert_eq!(services.header("content-type"), Some("application/json"));
        let body = services.json();
        assert_eq!(keys(&body), ["metadata", "services"]);
        let list = body["services"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        let web = list.iter().find(|s| s["name"] == "web").unwrap();
        assert_has_keys(
            web,
            &[
                "id",
                "name",
                "labels",
                "current_replicas",
                "metric",
                "thresholds",
                "min_replicas",
                "max_replicas",
                "created_at",
                "updated_at",
            ],
        );
        assert_eq!(web["id"], "id-web");
        assert_eq!(web["current_replicas"], 2);
        assert_eq!(web["metric"], "cpu");
        assert_eq!(web["thresholds"]["cpu"].as_f64(), Some(70.0));
        assert_eq!(web["thresholds"]["memory"].as_f64(), Some(70.0));
        assert_eq!(web["min_replicas"], 1);
        assert_eq!(web["max_replicas"], 5);
        assert_eq!(web["labels"]["autoscaler.memory.limit_bytes"], "268435456");
        let meta = &body["metadata"];
        assert_eq!(meta["count"], 2);
        assert_eq!(meta["cache_version"], 1);
        assert!(meta["last_refresh"].as_f64().unwrap() > 1.6e9);
        assert!(meta["timestamp"].is_i64());
        assert_eq!(meta["stale"], false);
        assert_eq!(meta["source_status"], "connected");
        let revision = server.registry.snapshot().services_revision;
        assert_eq!(services.header("etag"), Some(&*format!("W/\"{revision}\"")));
        assert_eq!(
            services.header("x-registry-index"),
            Some(&*revision.to_string())
        );
        assert_eq!(services.header("x-registry-stale"), Some("false"));
        assert_eq!(services.header("x-registry-source"), Some("connected"));
        assert!(services.header("x-registry-last-contact").is_some());

        let one = client.get("/services/web").await;
        assert_eq!(one.status, StatusCode::OK);
        let body = one.json();
        assert_eq!(body["service"], *web);
        assert!(body["timestamp"].is_i64());
        assert!(one.header("etag").is_some());

        let missing = client.get("/services/nope").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(
            missing.json(),
            serde_json::json!({"error": "service not found"})
        );

        // No metrics yet: 404 "metrics not available", never 200 with zeros.
        let none = client.get("/services/web/metrics").await;
        assert_eq!(none.status, StatusCode::NOT_FOUND);
        assert_eq!(
            none.json(),
            serde_json::json!({"error": "metrics not available"})
        );
        let unknown = client.get("/services/nope/metrics").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json()["error"], "service not found");

        server.metrics("web", Some(sample(42.5))).await;
        let metrics = client.get("/services/web/metrics").await;
        assert_eq!(metrics.status, StatusCode::OK);
        let body = metrics.json();
        assert_eq!(body["service_name"], "web");
        assert!(body["timestamp"].is_i64());
        assert_has_keys(
            &body["metrics"],
            &[
                "cpu_pct",
                "memory_bytes",
                "window_seconds",
                "timestamp",
                "source",
            ],
        );
        assert_eq!(body["metrics"]["cpu_pct"].as_f64(), Some(42.5));
        assert_eq!(body["metrics"]["source"], "docker");
        assert!(body["age_seconds"].as_u64().unwrap() <= 2);
        assert!(metrics.header("x-metrics-age").is_some());

        let root = client.get("/").await;
        assert_eq!(root.status, StatusCode::OK);
        let body = root.json();
        assert_eq!(body["service"], "Service Registry");
        assert_has_keys(&body, &["version", "description", "endpoints", "timestamp"]);
        assert!(body["endpoints"].is_object());

        let stats = client.get("/cache/stats").await;
        assert_eq!(stats.status, StatusCode::OK);
        let body = stats.json();
        assert!(body["timestamp"].is_i64());
        assert_eq!(
            keys(&body["cache_stats"]),
            [
                "cache_version",
                "last_refresh",
                "metrics_count",
                "refresh_interval_sec",
                "services_count"
            ]
        );
        assert_eq!(body["cache_stats"]["services_count"], 2);
        assert_eq!(body["cache_stats"]["metrics_count"], 1);
        assert_eq!(body["cache_stats"]["refresh_interval_sec"], 30);

        let events = client.get("/events").await;
        assert_eq!(events.status, StatusCode::OK);
        let body = events.json();
        assert_eq!(
            body["available_events"],
            serde_json::json!([
                "services.updated",
                "service.added",
                "service.removed",
                "service.updated",
                "metrics.{service_name}",
                "health.check"
            ])
        );
        assert!(body["exchange"].is_null());
        assert_eq!(body["enabled"], false);
        assert_eq!(body["connected"], false);

        let health = client.get("/health").await;
        assert_eq!(health.status, StatusCode::OK);
        let body = health.json();
        assert_eq!(body["status"], "healthy", "{body}");
        assert_eq!(body["service"], "service-registry");
        assert!(body["timestamp"].is_i64());
        assert_eq!(body["cache"]["services_count"], 2);
        assert_eq!(body["publisher"]["enabled"], false);
        assert_eq!(body["publisher"]["connected"], false);
        assert!(body.get("warnings").is_none());

        assert_eq!(client.get("/health/live").await.status, StatusCode::OK);
        let ready = client.get("/health/ready").await;
        assert_eq!(ready.status, StatusCode::OK);
        assert_eq!(ready.json()["status"], "ready");

        let metrics = client.get("/metrics").await;
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
        let text = String::from_utf8(metrics.body.to_vec()).unwrap();
        assert!(
            text.contains("swarm_registry_http_requests_total{route=\"/services\",status=\"200\"}"),
            "{text}"
        );
        assert!(text.contains("swarm_registry_services 2\n"), "{text}");
        assert!(
            text.contains("swarm_registry_sse_subscribers 0\n"),
            "{text}"
        );
        assert!(text.contains("swarm_registry_engine_reconnects_total 0\n"));

        let full = client.get("/services").await;
        let head = client.send(client.request(Method::HEAD, "/services")).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(&*full.body.len().to_string())
        );

        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn etags_change_only_with_their_resource() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        let client = server.client(protocol);
        server.list(vec![spec("web")]).await;
        server.metrics("web", Some(sample(10.0))).await;

        let first = client.get("/services").await;
        let etag = first.header("etag").unwrap().to_owned();
        let metrics_etag = client
            .get("/services/web/metrics")
            .await
            .header("etag")
            .unwrap()
            .to_owned();

        // Metrics moving changes the metrics resource, not the list.
        server.metrics("web", Some(sample(20.0))).await;
        let again = client.get("/services").await;
        assert_eq!(again.header("etag"), Some(&*etag), "{protocol:?}");
        let cached = client
            .send(
                client
                    .request(Method::GET, "/services")
                    .header("if-none-match", &etag),
            )
            .await;
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
        assert!(cached.body.is_empty());
        assert_eq!(cached.header("etag"), Some(&*etag));
        assert_eq!(cached.header("x-registry-stale"), Some("false"));
        let moved = client
            .send(
                client
                    .request(Method::GET, "/services/web/metrics")
                    .header("if-none-match", &metrics_etag),
            )
            .await;
        assert_eq!(moved.status, StatusCode::OK);
        assert_ne!(moved.header("etag"), Some(&*metrics_etag));

        // A changed entry changes the list's tag and the entry's.
        let entry_etag = client
            .get("/services/web")
            .await
            .header("etag")
            .unwrap()
            .to_owned();
        server.list(vec![spec_with("web", 3, 2)]).await;
        let changed = client
            .send(
                client
                    .request(Method::GET, "/services")
                    .header("if-none-match", &etag),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK);
        assert_ne!(changed.header("etag"), Some(&*etag));
        let entry = client
            .send(
                client
                    .request(Method::GET, "/services/web")
                    .header("if-none-match", &entry_etag),
            )
            .await;
        assert_eq!(entry.status, StatusCode::OK);
        assert_eq!(entry.json()["service"]["current_replicas"], 3);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn commands_answer_once_their_result_is_readable() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        let client = server.client(protocol);
        server.script.lock().unwrap().specs = vec![spec("web"), spec("db")];

        let refreshed = client.post("/cache/refresh").await;
        assert_eq!(refreshed.status, StatusCode::OK, "{protocol:?}");
        let body = refreshed.json();
        assert_eq!(body["message"], "cache refreshed");
        assert_eq!(body["cache_stats"]["services_count"], 2);
        assert_eq!(body["cache_stats"]["cache_version"], 1);
        assert!(body["timestamp"].is_i64());
        // Readable at once: the next read sees the fresh list.
        assert_eq!(client.get("/services").await.json()["metadata"]["count"], 2);

        server.script_sample("web", Some(sample(55.0)));
        let sampled = client.post("/services/web/metrics").await;
        assert_eq!(sampled.status, StatusCode::OK);
        let body = sampled.json();
        assert_eq!(body["service_name"], "web");
        assert_eq!(body["refreshed"], true);
        assert_eq!(body["metrics"]["cpu_pct"].as_f64(), Some(55.0));
        assert!(body["timestamp"].is_i64());

        // A service without running tasks: the sample is null, and reads say so with a 404.
        server.script_sample("db", None);
        let sampled = client.post("/services/db/metrics").await;
        assert_eq!(sampled.status, StatusCode::OK);
        assert!(sampled.json()["metrics"].is_null());
        assert_eq!(
            client.get("/services/db/metrics").await.json()["error"],
            "metrics not available"
        );

        let unknown = client.post("/services/nope/metrics").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json()["error"], "service not found");

        let refreshes_before = server.script.lock().unwrap().refreshes;
        let cleared = client.post("/cache/clear").await;
        assert_eq!(cleared.status, StatusCode::OK);
        assert_eq!(cleared.json()["message"], "cache cleared");
        assert!(cleared.json()["timestamp"].is_i64());
        // The registry repopulates at once, without waiting for the next poll.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let snapshot = server.registry.snapshot();
            if snapshot.services.len() == 2 && snapshot.cache_version >= 3 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not repopulated");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(server.script.lock().unwrap().refreshes > refreshes_before);
        server.stop().await.unwrap();
    }
}

/// An engine that never answers within COMMAND_TIMEOUT_SEC: the command gets 504 with a JSON
/// error saying so, and the server serves the next command once the engine answers again.
#[tokio::test]
async fn a_command_the_engine_does_not_answer_in_time_gets_504() {
    let mut options = Options::default();
    options.config = HttpConfig {
        command_timeout: std::time::Duration::from_secs(1),
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    server.script.lock().unwrap().unanswered = true;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for (path, what) in [
            ("/cache/refresh", "refresh"),
            ("/services/web/metrics", "metrics sample"),
        ] {
            let reply = client.post(path).await;
            assert_eq!(
                reply.status,
                StatusCode::GATEWAY_TIMEOUT,
                "{protocol:?} {path}"
            );
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(
                reply.json()["error"],
                format!("{what} did not complete within 1 s"),
                "{path}"
            );
        }
    }
    server.script.lock().unwrap().unanswered = false;
    let client = server.client(PROTOCOLS[0]);
    assert_eq!(client.post("/cache/refresh").await.status, StatusCode::OK);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_api_token_guards_commands_only() {
    let mut options = Options::default();
    options.config = HttpConfig {
        api_token: Some("s3cret".to_owned()),
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let refused = client.post("/cache/refresh").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{protocol:?}");
        assert!(refused.json()["error"].as_str().unwrap().contains("Bearer"));
        assert!(refused
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let wrong = client
            .send(
                client
                    .request(Method::POST, "/cache/clear")
                    .header("authorization", "Bearer s3creT"),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let right = client
            .send(
                client
                    .request(Method::POST, "/cache/refresh")
                    .header("authorization", "Bearer s3cret"),
            )
            .await;
        assert_eq!(right.status, StatusCode::OK);
        assert_eq!(client.get("/services").await.status, StatusCode::OK);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_absent_engine_degrades_health_and_readiness() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web")]).await;
    server
        .registry
        .submit(Input::SourceStatus(SourceStatus::Unreachable {
            reason: "connection refused".to_owned(),
        }))
        .await
        .unwrap();
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let health = client.get("/health").await;
        assert_eq!(health.status, StatusCode::OK);
        let body = health.json();
        assert_eq!(body["status"], "degraded");
        let warnings = body["warnings"].as_array().unwrap();
        assert!(warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("connection refused")));
        assert_eq!(body["source"]["stale"], true);
        let ready = client.get("/health/ready").await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready.json()["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"));
        // The last good list is still served, marked stale.
        let services = client.get("/services").await;
        assert_eq!(services.json()["metadata"]["count"], 1);
        assert_eq!(services.json()["metadata"]["stale"], true);
        assert_eq!(services.header("x-registry-stale"), Some("true"));
        assert_eq!(services.header("x-registry-source"), Some("unreachable"));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_publisher_state_is_reported() {
    let options = Options {
        publisher: PublisherState::enabled("registry-events"),
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    let client = server.client(PROTOCOLS[0]);
    let health = client.get("/health").await.json();
    assert_eq!(health["publisher"]["enabled"], true);
    assert_eq!(health["publisher"]["connected"], false);
    assert_eq!(health["status"], "degraded");

    server.publisher.connected.store(true, Ordering::Relaxed);
    server.publisher.published.store(7, Ordering::Relaxed);
    let health = client.get("/health").await.json();
    assert_eq!(health["publisher"]["connected"], true);
    assert_eq!(health["status"], "healthy");
    let events = client.get("/events").await.json();
    assert_eq!(events["exchange"], "registry-events");
    assert_eq!(events["enabled"], true);
    assert_eq!(events["connected"], true);
    let text = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        text.contains("swarm_registry_publisher_connected 1\n"),
        "{text}"
    );
    assert!(
        text.contains("swarm_registry_publisher_published_total 7\n"),
        "{text}"
    );
    server.stop().await.unwrap();
}
