//! The live event stream: snapshot then changes, resume by Last-Event-ID, resets, filters,
//! heartbeats, slow subscribers and shutdown, over HTTP/1.1 and h2c.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use pipeline::Input;
use support::{sample, spec, spec_with, Event, Options, Protocol, TestServer, DEADLINE, PROTOCOLS};
use swarm_registry::http::HttpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn names(event: &Event) -> Vec<String> {
    event.json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_new_stream_gets_a_snapshot_then_live_changes() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web")]).await;
        let client = server.client(protocol);
        let mut stream = client.events("/events/stream", &[]).await;
        assert_eq!(
            stream.headers.get("content-type").unwrap(),
            "text/event-stream"
        );
        assert_eq!(stream.headers.get("cache-control").unwrap(), "no-cache");
        assert_eq!(stream.headers.get("x-accel-buffering").unwrap(), "no");

        let snapshot = stream.next().await.unwrap();
        assert_eq!(snapshot.event, "snapshot", "{protocol:?}");
        assert_eq!(names(&snapshot), ["web"]);
        let revision = server.registry.snapshot().revision;
        assert_eq!(snapshot.id, Some(revision));
        assert_eq!(snapshot.json()["revision"], revision);
        assert!(stream.retry.is_some(), "a retry field precedes the events");

        server.list(vec![spec("web"), spec("api")]).await;
        let added = stream.next().await.unwrap();
        assert_eq!(added.event, "service.added");
        assert_eq!(added.id, Some(revision + 1));
        let body = added.json();
        assert_eq!(body["event"], "service.added");
        assert_eq!(body["service"]["name"], "api");
        assert_eq!(body["seq"], revision + 1);
        // The registry's services.updated (seq revision + 2) is not on a default stream.
        let list_seq = server.registry.snapshot().revision;
        assert_eq!(list_seq, revision + 2);

        server.metrics("api", Some(sample(3.0))).await;
        let metrics = stream.next().await.unwrap();
        // The SSE name is the body's event (one listener for every service's metrics).
        assert_eq!(metrics.event, "metrics.updated");
        assert_eq!(metrics.json()["service_name"], "api");
        assert_eq!(metrics.id, Some(revision + 3));
        assert_eq!(metrics.json()["event"], "metrics.updated");

        let text = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
        assert!(
            text.contains("swarm_registry_sse_subscribers 1\n"),
            "{text}"
        );
        assert!(!text.contains("swarm_registry_change_delivery_seconds_count 0\n"));
        drop(stream);
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn events_serves_the_stream_to_clients_that_accept_it() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web")]).await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let mut stream = client
            .events("/events", &[("accept", "text/event-stream")])
            .await;
        assert_eq!(stream.next().await.unwrap().event, "snapshot");
        // Without the Accept header, the contract's JSON.
        let json = client.get("/events").await;
        assert!(json.json()["available_events"].is_array());
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_full_list_comes_only_to_streams_that_ask_for_it() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web")]).await;
        let client = server.client(protocol);
        let mut streams = Vec::new();
        for query in [
            "",
            "?events=services.updated",
            "?events=*",
            "?events=services.*",
        ] {
            let mut stream = client.events(&format!("/events/stream{query}"), &[]).await;
            assert_eq!(stream.next().await.unwrap().event, "snapshot");
            streams.push((query, stream));
        }
        let before = server.registry.snapshot().revision;
        server.list(vec![spec("web"), spec("api")]).await;
        server.metrics("web", Some(sample(4.0))).await;
        let log = server.registry.snapshot().changes_since(before).unwrap();
        let keys: Vec<String> = log.iter().map(|c| c.routing_key()).collect();
        assert!(keys.contains(&"services.updated".to_owned()), "{keys:?}");

        for (query, stream) in &mut streams {
            let wants_list = !query.is_empty();
            let expected: Vec<(Option<u64>, String)> = log
                .iter()
                .filter(|c| {
                    let key = c.routing_key();
                    match *query {
                        "" => key != "services.updated",
                        "?events=services.updated" | "?events=services.*" => {
                            key == "services.updated"
                        }
                        _ => true,
                    }
                })
                .map(|c| (Some(c.seq), c.kind.event().to_owned()))
                .collect();
            let last = expected.last().unwrap().0;
            let got: Vec<(Option<u64>, String)> = stream
                .collect_until(|e| e.id == last)
                .await
                .into_iter()
                .map(|e| (e.id, e.event))
                .collect();
            assert_eq!(got, expected, "{protocol:?} {query:?}");
            let lists = got.iter().filter(|(_, e)| e == "services.updated").count();
            assert_eq!(lists > 0, wants_list, "{protocol:?} {query:?}");
        }
        // The list itself, when asked for, is the whole registry.
        let (_, only_lists) = &mut streams[1];
        server.list(vec![spec("api")]).await;
        let list = only_lists.next().await.unwrap();
        assert_eq!(list.event, "services.updated");
        assert_eq!(list.json()["services_count"], 1);
        drop(streams);
        server.stop().await.unwrap();
    }
}

/// The events a stream with this query must carry, decided independently of the server's
/// filter code.
fn carried(query: &str, change: &pipeline::Change) -> bool {
    let key = change.routing_key();
    match query {
        "" => key != "services.updated",
        "events=*" => true,
        "service=web" => change.kind.service_name() == Some("web"),
        other => panic!("no expectation for {other}"),
    }
}

#[tokio::test]
async fn resuming_replays_exactly_the_missed_changes_in_order() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web")]).await;
        let client = server.client(protocol);
        let mut stream = client.events("/events/stream", &[]).await;
        stream.next().await.unwrap();
        server.metrics("web", Some(sample(1.0))).await;
        let seen = stream.next().await.unwrap();
        let last_id = seen.id.unwrap();
        drop(stream);

        // Missed while disconnected: additions, removals, metrics, and the full lists.
        server.list(vec![spec("web"), spec("api")]).await;
        server.metrics("web", Some(sample(2.0))).await;
        server.metrics("api", Some(sample(2.5))).await;
        server.list(vec![spec("api")]).await;
        let missed = server.registry.snapshot().changes_since(last_id).unwrap();
        let keys: Vec<String> = missed.iter().map(|c| c.routing_key()).collect();
        assert!(missed.len() >= 6, "{keys:?}");
        assert!(keys.contains(&"services.updated".to_owned()), "{keys:?}");
        let mut web_listed = false;
        for query in ["", "events=*", "service=web"] {
            for by_header in [true, false] {
                let (path, headers) = match (by_header, query) {
                    (true, "") => (
                        "/events/stream".to_owned(),
                        vec![("last-event-id", last_id)],
                    ),
                    (true, q) => (
                        format!("/events/stream?{q}"),
                        vec![("last-event-id", last_id)],
                    ),
                    (false, "") => (format!("/events/stream?since={last_id}"), vec![]),
                    (false, q) => (format!("/events/stream?since={last_id}&{q}"), vec![]),
                };
                let missed = server.registry.snapshot().changes_since(last_id).unwrap();
                let expected: Vec<(Option<u64>, String)> = missed
                    .iter()
                    .filter(|c| carried(query, c))
                    .map(|c| (Some(c.seq), c.kind.event().to_owned()))
                    .collect();
                assert!(!expected.is_empty());
                let headers: Vec<(&str, String)> = headers
                    .into_iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect();
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut stream = client.events(&path, &headers).await;
                let mut replayed = Vec::new();
                for _ in 0..expected.len() {
                    replayed.push(stream.next().await.unwrap());
                }
                let got: Vec<(Option<u64>, String)> =
                    replayed.iter().map(|e| (e.id, e.event.clone())).collect();
                assert_eq!(got, expected, "{protocol:?} {path}");
                for event in &replayed {
                    let change = missed.iter().find(|c| Some(c.seq) == event.id).unwrap();
                    assert_eq!(event.data, *change.json());
                }
                // Then live, with nothing else in between: a change every filter here carries.
                let next = server.registry.snapshot().revision + 1;
                web_listed = !web_listed;
                let (specs, event) = if web_listed {
                    (vec![spec("api"), spec("web")], "service.added")
                } else {
                    (vec![spec("api")], "service.removed")
                };
                server.list(specs).await;
                let live = stream.next().await.unwrap();
                assert_eq!(
                    (live.id, live.event.as_str()),
                    (Some(next), event),
                    "{path}"
                );
            }
        }
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_reset_larger_than_one_piece_arrives_whole_over_both_protocols() {
    let options = Options {
        log_capacity: 4,
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    // About 150 KB of services: the reset is given in several pieces.
    let specs: Vec<_> = (0..300).map(|i| spec(&format!("svc-{i:03}"))).collect();
    server.list(specs).await;
    let old = server.registry.snapshot().revision;
    for i in 0..10 {
        server.metrics("svc-007", Some(sample(f64::from(i)))).await;
    }
    let mut cpu = 9.0;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let mut stream = client
            .events("/events/stream", &[("last-event-id", &old.to_string())])
            .await;
        let reset = stream.next().await.unwrap();
        assert_eq!(reset.event, "reset", "{protocol:?}");
        let body = reset.json();
        assert_eq!(body["services_count"], 300, "{protocol:?}");
        let expected: Vec<String> = (0..300).map(|i| format!("svc-{i:03}")).collect();
        assert_eq!(names(&reset), expected, "{protocol:?}");
        assert_eq!(body["metrics"]["svc-007"]["cpu_pct"].as_f64(), Some(cpu));
        assert_eq!(reset.id, Some(server.registry.snapshot().revision));
        // And the stream goes on after it.
        cpu += 1.0;
        server.metrics("svc-007", Some(sample(cpu))).await;
        let next = stream.next().await.unwrap();
        assert_eq!(next.event, "metrics.updated", "{protocol:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn ids_the_log_cannot_answer_get_a_reset_with_a_snapshot() {
    let options = Options {
        log_capacity: 4,
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    let old = server.registry.snapshot().revision;
    for i in 0..10 {
        server.metrics("web", Some(sample(f64::from(i)))).await;
    }
    let floor = server.registry.snapshot().floor;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for (id, reason) in [
            (old, "evicted"),
            (floor - 10, "predates this run"),
            (u64::MAX - 1, "ahead of the current revision"),
        ] {
            let mut stream = client
                .events("/events/stream", &[("last-event-id", &id.to_string())])
                .await;
            let reset = stream.next().await.unwrap();
            assert_eq!(reset.event, "reset", "{protocol:?} {id}");
            let body = reset.json();
            assert!(body["reason"].as_str().unwrap().contains(reason), "{body}");
            assert_eq!(names(&reset), ["web"]);
            let revision = server.registry.snapshot().revision;
            assert_eq!(reset.id, Some(revision));
            assert_eq!(body["metrics"]["web"]["cpu_pct"].as_f64(), Some(9.0));
        }
        let bad = client
            .send(
                client
                    .request(http::Method::GET, "/events/stream")
                    .header("last-event-id", "yesterday"),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json()["parameter"], "Last-Event-ID");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn filters_select_services_and_event_kinds() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web"), spec("db")]).await;
        let client = server.client(protocol);
        let mut stream = client
            .events("/events/stream?service=web&events=service.*,metrics.*", &[])
            .await;
        let snapshot = stream.next().await.unwrap();
        assert_eq!(names(&snapshot), ["web"]);

        server
            .list(vec![spec("web"), spec("db"), spec("api")])
            .await; // api: not wanted
        server.metrics("db", Some(sample(1.0))).await; // db: not wanted
        server.metrics("web", Some(sample(2.0))).await;
        server
            .list(vec![spec_with("web", 4, 2), spec("db"), spec("api")])
            .await;
        server.list(vec![spec("db"), spec("api")]).await;
        let got: Vec<String> = stream
            .collect_until(|e| e.event == "service.removed")
            .await
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            got,
            ["metrics.updated", "service.updated", "service.removed"]
        );

        let bad = client.get("/events/stream?events=service.exploded").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json()["parameter"], "events");
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let mut options = Options::default();
    options.config = HttpConfig {
        sse_heartbeat: Duration::from_millis(200),
        ..options.config
    };
    let server = TestServer::start(options).await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let mut stream = client.events("/events/stream", &[]).await;
        stream.next().await.unwrap();
        assert!(stream
            .next_within(Duration::from_millis(700))
            .await
            .is_err());
        assert!(stream.comments >= 1, "{protocol:?}: no heartbeat");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_every_stream_with_a_final_event() {
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web")]).await;
    let mut streams = Vec::new();
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let mut stream = client.events("/events/stream", &[]).await;
        stream.next().await.unwrap();
        streams.push(stream);
    }
    // A blocking read in flight is answered, not cut off.
    let index = server.registry.snapshot().services_revision;
    let blocked = server
        .in_flight(&format!("/services?index={index}&wait=5m"))
        .await;
    assert!(
        !blocked.is_finished(),
        "the blocking read waits until shutdown"
    );

    let addr = server.addr;
    server.shutdown.cancel();
    for stream in &mut streams {
        let last = stream.next().await.unwrap();
        assert_eq!(last.event, "shutdown");
        assert_eq!(last.json()["reason"], "server shutting down");
        assert!(stream.next().await.is_none(), "the stream ends after it");
    }
    let reply = blocked.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    tokio::time::timeout(DEADLINE, server.server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Read from a raw socket until `needle` appears; returns everything read.
async fn read_until(socket: &mut tokio::net::TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    tokio::time::timeout(DEADLINE, async {
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before {:?}",
                String::from_utf8_lossy(needle)
            );
            // Only the new bytes (and the tail a needle could straddle) are searched: the
            // backlog of a stuck stream is megabytes, and rescanning it all is quadratic.
            let from = seen.len().saturating_sub(needle.len() - 1);
            seen.extend_from_slice(&chunk[..n]);
            if seen[from..].windows(needle.len()).any(|w| w == needle) {
                return;
            }
        }
    })
    .await
    .expect("the expected bytes within the deadline");
    seen
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_reset_and_slows_nobody() {
    let options = Options {
        log_capacity: 16,
        broadcast_capacity: 8,
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    // Large events (each services.updated carries every entry; the stuck client asks for them)
    // fill socket buffers quickly.
    let mut specs: Vec<_> = (0..200).map(|i| spec(&format!("svc-{i:03}"))).collect();
    server.list(specs.clone()).await;

    let mut stuck = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stuck
        .write_all(b"GET /events/stream?events=* HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stuck, b"event: snapshot").await;

    let client = server.client(Protocol::H2c);
    let mut reader = client
        .events("/events/stream?events=service.updated", &[])
        .await;
    reader.next().await.unwrap();

    // While the stuck client reads nothing, every change is still folded and reaches the
    // reading client, each within the deadline: a registry that waited for its slowest
    // subscriber would stall here and fail instead of hanging.
    for round in 0..150u64 {
        let i = (round % 200) as usize;
        let name = format!("svc-{i:03}");
        specs[i] = spec_with(&name, 3 + round, 2 + round);
        let revision = tokio::time::timeout(DEADLINE, server.list(specs.clone()))
            .await
            .expect("the registry folds while a subscriber is stuck");
        let update = reader.next().await.unwrap();
        assert_eq!(update.event, "service.updated");
        // This round's change, not an older one: the reader keeps up with the registry.
        assert_eq!(update.json()["service"]["name"], name);
        assert_eq!(update.json()["service"]["current_replicas"], 3 + round);
        assert!(update.id.unwrap() < revision, "the list change follows it");
    }
    // The stuck client reads again: it finds a reset (its place in history is gone), not a
    // stalled registry.
    let text = read_until(&mut stuck, b"event: reset").await;
    assert!(!text.is_empty());
    let metrics = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
    let lagged = metrics
        .lines()
        .find_map(|l| l.strip_prefix("swarm_registry_sse_lagged_total "))
        .unwrap();
    assert!(lagged.parse::<u64>().unwrap() >= 1, "{metrics}");
    tokio::time::timeout(DEADLINE, server.registry.submit(Input::Tick))
        .await
        .expect("the registry still folds")
        .unwrap();
    server.stop().await.unwrap();
}

/// The blocks of an event stream's body (text up to each blank line), read from the socket as
/// they arrive until `enough` holds for the blocks so far.
async fn blocks_until(
    response: http::Response<hyper::body::Incoming>,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut body = response.into_body();
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let blocks: Vec<String> = match text.rfind("\n\n") {
                Some(end) => text[..end].split("\n\n").map(str::to_owned).collect(),
                None => Vec::new(),
            };
            if enough(&blocks) {
                return blocks;
            }
            let frame = body
                .frame()
                .await
                .expect("the stream to stay open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    })
    .await
    .expect("the expected blocks within the deadline")
}

/// Some clients (Python's httpx-sse, for one) dispatch every block that sets a field, so a
/// block holding only `retry:` reaches the application as an empty message. The stream's first
/// block must therefore be its first event, carrying `retry:` itself: the snapshot for a new
/// client, the reset or the first missed change for a resuming one.
#[tokio::test]
async fn the_first_block_is_an_event_that_carries_the_retry_field() {
    let options = Options {
        log_capacity: 4,
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    let evicted = server.registry.snapshot().revision;
    for i in 0..10 {
        server.metrics("web", Some(sample(f64::from(i)))).await;
    }
    let recent = server.registry.snapshot().revision - 1;
    let cases = [
        (vec![], "event: snapshot"),
        (vec![("last-event-id", evicted.to_string())], "event: reset"),
        (
            vec![("last-event-id", recent.to_string())],
            "event: metrics.updated",
        ),
    ];
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for (headers, first_event) in &cases {
            let mut request = client.request(http::Method::GET, "/events/stream");
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let response = client.open(request).await;
            assert_eq!(response.status(), StatusCode::OK);
            let blocks = blocks_until(response, |blocks| {
                blocks
                    .iter()
                    .any(|b| b.lines().any(|l| l.starts_with("event:")))
            })
            .await;
            let at = blocks
                .iter()
                .position(|b| b.lines().any(|l| l.starts_with("event:")))
                .unwrap();
            for block in &blocks[..at] {
                assert!(
                    block
                        .lines()
                        .any(|l| l.starts_with("event:") || l.starts_with("data:")),
                    "{protocol:?} {headers:?}: a block without an event precedes it: {block:?}"
                );
            }
            let first = &blocks[0];
            assert!(
                first.lines().any(|l| l == *first_event),
                "{protocol:?} {headers:?}: first block {first:?}"
            );
            assert!(
                first.lines().any(|l| l == "retry: 2000"),
                "{protocol:?} {headers:?}: first block {first:?}"
            );
        }
    }
    server.stop().await.unwrap();
}

/// The value of an unlabelled counter or gauge in the /metrics text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout_and_counted() {
    let mut options = Options::default();
    options.config = HttpConfig {
        write_timeout: Duration::from_secs(1),
        ..options.config
    };
    let server = TestServer::start(options).await;
    let mut specs: Vec<_> = (0..200).map(|i| spec(&format!("svc-{i:03}"))).collect();
    server.list(specs.clone()).await;

    // A raw HTTP/1.1 client with a small receive buffer that reads the snapshot, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.addr).await.unwrap();
    stuck
        .write_all(b"GET /events/stream?events=* HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stuck, b"event: snapshot").await;

    let client = server.client(Protocol::H2c);
    let mut reader = client
        .events("/events/stream?events=service.updated", &[])
        .await;
    reader.next().await.unwrap();

    // Each round's services.updated carries all 200 entries: the stuck socket's buffers fill
    // within a few rounds. The reading client gets every change meanwhile.
    let mut round = 0u64;
    loop {
        let i = (round % 200) as usize;
        let name = format!("svc-{i:03}");
        specs[i] = spec_with(&name, 3 + round, 2 + round);
        server.list(specs.clone()).await;
        let update = reader.next().await.unwrap();
        assert_eq!(update.json()["service"]["name"], name);
        assert_eq!(update.json()["service"]["current_replicas"], 3 + round);
        round += 1;
        let text = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
        if metric(&text, "swarm_registry_http_write_timeouts_total") >= 1 {
            break;
        }
        assert!(
            round < 500,
            "the stuck client was never dropped for its write timeout: {text}"
        );
        // Give the stalled write its second to expire (the assert above bounds the wait).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server closed the stuck connection: reading what it had buffered ends in EOF
    // (or a reset), not in more events.
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match stuck.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the stuck connection");

    // The reading client is untouched.
    specs[0] = spec_with("svc-000", 9999, 9999);
    server.list(specs.clone()).await;
    let update = reader.next().await.unwrap();
    assert_eq!(update.json()["service"]["current_replicas"], 9999);
    server.stop().await.unwrap();
}

/// An event stream read with the h2 crate, giving back flow-control window for what it reads.
struct H2Events {
    body: h2::RecvStream,
    text: String,
}

impl H2Events {
    /// The next `service.updated` event's body.
    async fn next_update(&mut self) -> serde_json::Value {
        tokio::time::timeout(DEADLINE, async {
            loop {
                while let Some(end) = self.text.find("\n\n") {
                    let block: String = self.text.drain(..end + 2).collect();
                    if block.lines().any(|l| l == "event: service.updated") {
                        let data = block
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap();
                        return serde_json::from_str(data).unwrap();
                    }
                }
                let data = self
                    .body
                    .data()
                    .await
                    .expect("the stream to stay open")
                    .unwrap();
                self.body
                    .flow_control()
                    .release_capacity(data.len())
                    .unwrap();
                self.text.push_str(std::str::from_utf8(&data).unwrap());
            }
        })
        .await
        .expect("a service.updated event within the deadline")
    }
}

async fn open_h2_stream(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> h2::RecvStream {
    let request = http::Request::builder()
        .uri(format!("http://test{path}"))
        .body(())
        .unwrap();
    let mut ready = tokio::time::timeout(DEADLINE, client.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    *client = ready;
    response.into_body()
}

#[tokio::test]
async fn a_stuck_http2_stream_does_not_delay_the_others_on_its_connection() {
    let server = TestServer::with_defaults().await;
    // Every services.updated (and the snapshot) carries all 200 entries, more than one stream's
    // 64 KiB window: the stuck stream's window is full at once.
    let mut specs: Vec<_> = (0..200).map(|i| spec(&format!("svc-{i:03}"))).collect();
    server.list(specs.clone()).await;

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The connection's window is far larger than a stream's, so what the stuck stream holds
    // unread does not close the connection to the others: only the server's scheduling can.
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(64 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);

    let mut stuck = open_h2_stream(&mut client, "/events/stream?events=*").await;
    let mut healthy = Vec::new();
    for _ in 0..3 {
        let body = open_h2_stream(&mut client, "/events/stream?events=*").await;
        healthy.push(H2Events {
            body,
            text: String::new(),
        });
    }

    for round in 0..60u64 {
        let i = (round % 200) as usize;
        let name = format!("svc-{i:03}");
        specs[i] = spec_with(&name, 3 + round, 2 + round);
        server.list(specs.clone()).await;
        for stream in &mut healthy {
            let update = stream.next_update().await;
            assert_eq!(update["service"]["name"], name);
            assert_eq!(update["service"]["current_replicas"], 3 + round);
        }
    }

    // The stuck stream got one window's worth and no more: it was full all along.
    let mut held = 0;
    while let Some(Some(data)) = futures::FutureExt::now_or_never(stuck.data()) {
        held += data.unwrap().len();
    }
    assert!(
        held > 0 && held <= 65_535,
        "the stuck stream holds {held} bytes"
    );
    // Hang up (a stuck stream would hold the graceful shutdown for its whole grace period).
    connection.abort();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_thousand_subscribers_each_on_its_own_connection_all_get_every_change() {
    const SUBSCRIBERS: usize = 1000;
    // Each subscriber costs two descriptors here (the client's socket and the server's).
    let limit = rlimit::increase_nofile_limit(4 * SUBSCRIBERS as u64).unwrap();
    assert!(
        limit >= 2 * SUBSCRIBERS as u64 + 100,
        "the open-file limit ({limit}) is too low for this test"
    );
    let server = TestServer::with_defaults().await;
    server.list(vec![spec("web")]).await;
    // HTTP/1.1 carries one response at a time, so every open stream has its own connection.
    let client = server.client(Protocol::Http1);
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut stream = client.events("/events/stream", &[]).await;
        assert_eq!(stream.next().await.unwrap().event, "snapshot");
        streams.push(stream);
    }
    let text = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
    assert_eq!(
        metric(&text, "swarm_registry_sse_subscribers"),
        SUBSCRIBERS as u64
    );
    assert!(metric(&text, "swarm_registry_http_connections") > SUBSCRIBERS as u64);

    let mut specs = vec![spec("web")];
    let names: Vec<String> = (0..3).map(|i| format!("api-{i}")).collect();
    for name in &names {
        specs.push(spec(name));
        server.list(specs.clone()).await;
    }
    for stream in &mut streams {
        for name in &names {
            let added = stream.next().await.unwrap();
            assert_eq!(added.event, "service.added");
            assert_eq!(added.json()["service"]["name"], *name);
        }
    }
    drop(streams);
    server.stop().await.unwrap();
}
