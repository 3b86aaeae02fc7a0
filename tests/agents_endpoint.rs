//! `POST /agents/readings` as an agent (or anyone else) meets it: a report is taken and shows
//! in /health and /metrics; bad JSON, readings of untracked services and a missing or wrong
//! token are refused with a 4xx and counted, and the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{spec, Options, TestServer, DEADLINE};
use swarm_registry::http::HttpConfig;

async fn post(server: &TestServer, token: Option<&str>, body: &str) -> (StatusCode, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/agents/readings", server.addr))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn report(service_id: &str) -> String {
    json!({
        "node_id": "worker-1",
        "interval_ms": 1000,
        "readings": [{
            "task_id": "task-1",
            "service_id": service_id,
            "cpu_pct": 97.5,
            "memory_bytes": 1048576,
            "window_ms": 1001,
            "via": "cgroup"
        }]
    })
    .to_string()
}

#[tokio::test]
async fn reports_are_taken_and_bad_ones_refused_and_counted() {
    let server = TestServer::start(Options {
        config: HttpConfig {
            api_token: Some("s3cret".into()),
            ..Options::default().config
        },
        ..Options::default()
    })
    .await;
    server.list(vec![spec("web")]).await;
    let token = Some("s3cret");

    let (status, body) = post(&server, token, &report("id-web")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["services"], json!(["id-web"]));

    let (status, body) = post(&server, token, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a node report"),
        "{body}"
    );
    let (status, _) = post(&server, token, r#"{"node_id":"w","interval_ms":0}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = post(&server, token, &report("id-unknown")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("id-unknown"),
        "{body}"
    );
    assert_eq!(
        body["services"],
        json!(["id-web"]),
        "so the agent corrects itself"
    );

    let (status, _) = post(&server, None, &report("id-web")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&server, Some("wrong"), &report("id-web")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Still serving; the accepted report shows, the refusals are counted by reason.
    let client = server.client(support::Protocol::Http1);
    let health = client.get("/health").await.json();
    let agents = health["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{health}");
    assert_eq!(agents[0]["node_id"], "worker-1");
    assert_eq!(agents[0]["tasks_reported"], 1);
    assert_eq!(agents[0]["live"], true);
    assert_eq!(agents[0]["in_process"], false);
    assert!(agents[0]["last_contact_ms"].as_i64().unwrap() > 0);

    let text = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
    for line in [
        "swarm_registry_node_sampler_up{node=\"worker-1\",in_process=\"false\"} 1",
        "swarm_registry_node_sampler_tasks_reported{node=\"worker-1\"} 1",
        "swarm_registry_agent_reports_accepted_total 1",
        "swarm_registry_agent_reports_rejected_total{reason=\"malformed\"} 2",
        "swarm_registry_agent_reports_rejected_total{reason=\"unknown_task\"} 1",
        "swarm_registry_agent_reports_rejected_total{reason=\"unauthorized\"} 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    server.stop().await.unwrap();
}
