//! Malformed and hostile input: garbage request lines, oversized heads and bodies, unknown
//! methods and paths, encoded and unicode names, slow and excess clients. Each gets a clear
//! status (JSON where the server writes a body) and the server keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{spec, Options, TestServer, DEADLINE, PROTOCOLS};
use swarm_registry::http::HttpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send raw bytes, then read until the server closes the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn body_of(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// The server still answers a well-formed request on both protocols.
async fn still_serving(server: &TestServer) {
    for protocol in PROTOCOLS {
        let reply = server.client(protocol).get("/services").await;
        assert_eq!(reply.status, StatusCode::OK, "{protocol:?}");
    }
}

#[tokio::test]
async fn garbage_request_lines_get_400() {
    let server = TestServer::with_defaults().await;
    for garbage in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /services HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET /ser vices HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /services HTTP/1.1\r\nbad header\r\n\r\n",
    ] {
        let answer = raw(server.addr, garbage).await;
        assert_eq!(status_of(&answer), 400, "{garbage:?} -> {answer:?}");
        assert!(!answer.to_ascii_lowercase().contains("<html"));
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let server = TestServer::with_defaults().await;
    let big = "x".repeat(40_000);
    let request = format!("GET /services HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let answer = raw(server.addr, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer:?}");

    // Over HTTP/2 the header list limit applies: the request is refused with 431 on its
    // stream (not a reset, not a closed connection), never served.
    let client = server.client(PROTOCOLS[1]);
    let request = http::Request::builder()
        .uri(format!("http://{}/services", server.addr))
        .header("x-big", &big)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let outcome = tokio::time::timeout(
        DEADLINE,
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http()
            .request(request),
    )
    .await
    .expect("an answer within the deadline");
    let response = outcome.expect("a 431 answer, not an error");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(client.get("/services").await.status, StatusCode::OK);
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_and_unknown_methods_get_405_with_allow() {
    let server = TestServer::with_defaults().await;
    let answer = raw(
        server.addr,
        b"BREW /services HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 405, "{answer:?}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("\r\nallow: get, head, options\r\n"));
    assert_eq!(body_of(&answer)["error"], "method not allowed");

    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for (method, path, allow) in [
            (Method::DELETE, "/services", "GET, HEAD, OPTIONS"),
            (Method::GET, "/cache/refresh", "POST, OPTIONS"),
            (
                Method::from_bytes(b"BREW").unwrap(),
                "/services/x/metrics",
                "GET, HEAD, POST, OPTIONS",
            ),
        ] {
            let reply = client.send(client.request(method.clone(), path)).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(reply.header("allow"), Some(allow));
            assert_eq!(reply.json()["error"], "method not allowed");
        }
        let options = client
            .send(client.request(Method::OPTIONS, "/cache/clear"))
            .await;
        assert_eq!(options.status, StatusCode::NO_CONTENT);
        assert_eq!(options.header("allow"), Some("POST, OPTIONS"));
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_paths_get_404_json() {
    let server = TestServer::with_defaults().await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        for path in [
            "/nope",
            "/services/",
            "/services/a/b/c",
            "/favicon.ico",
            "/health/x",
        ] {
            let reply = client.get(path).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(reply.json()["error"], "not found");
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn names_are_percent_decoded_and_may_be_unicode_or_long() {
    let server = TestServer::with_defaults().await;
    let long = "l".repeat(4000);
    server
        .list(vec![spec("a/b"), spec("café-☕"), spec(&long), spec("a b")])
        .await;
    for protocol in PROTOCOLS {
        let client = server.client(protocol);
        let slash = client.get("/services/a%2Fb").await;
        assert_eq!(slash.status, StatusCode::OK, "{protocol:?}");
        assert_eq!(slash.json()["service"]["name"], "a/b");
        let unicode = client.get("/services/caf%C3%A9-%E2%98%95").await;
        assert_eq!(unicode.json()["service"]["name"], "café-☕");
        let metrics = client.get("/services/caf%C3%A9-%E2%98%95/metrics").await;
        assert_eq!(metrics.json()["error"], "metrics not available");
        assert_eq!(client.get("/services/a%20b").await.status, StatusCode::OK);
        let long_reply = client.get(&format!("/services/{long}")).await;
        assert_eq!(long_reply.status, StatusCode::OK);
        assert_eq!(
            long_reply.json()["service"]["name"].as_str().unwrap().len(),
            4000
        );
        let unknown_long = client.get(&format!("/services/{}", "z".repeat(6000))).await;
        assert_eq!(unknown_long.status, StatusCode::NOT_FOUND);
        let invalid = client.get("/services/%FF%FE").await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
        assert!(invalid.json()["error"].as_str().unwrap().contains("UTF-8"));
    }
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mut options = Options::default();
    options.config = HttpConfig {
        max_body_bytes: 1024,
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    // Declared too large: refused without reading it.
    let answer = raw(
        server.addr,
        b"POST /cache/refresh HTTP/1.1\r\nhost: x\r\ncontent-length: 10485760\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 413, "{answer:?}");
    assert!(body_of(&answer)["error"]
        .as_str()
        .unwrap()
        .contains("too large"));
    // Chunked, with no declared length: refused once it passes the limit.
    let chunk = "a".repeat(4096);
    let request = format!(
        "POST /cache/clear HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = raw(server.addr, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 413, "{answer:?}");
    // A small body is accepted (and ignored).
    let answer = raw(
        server.addr,
        b"POST /cache/refresh HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer:?}");
    assert_eq!(
        server.registry.snapshot().services.len(),
        1,
        "clear was refused"
    );
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let mut options = Options::default();
    options.config = HttpConfig {
        header_read_timeout: Duration::from_secs(1),
        ..options.config
    };
    let server = TestServer::start(options).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /services HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || status_of(&answer) == 408, "{answer:?}");
    // Nor one that connects and says nothing at all (its protocol is not even known).
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut answer))
        .await
        .expect("the server closes a silent connection")
        .ok();
    assert!(answer.is_empty());
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_is_answered_408() {
    let mut options = Options::default();
    options.config = HttpConfig {
        header_read_timeout: Duration::from_secs(1),
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /cache/clear HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, slow.read(&mut buf))
        .await
        .expect("the server answers a body that never completes")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(status_of(&answer), 408, "{answer:?}");
    assert_eq!(
        server.registry.snapshot().services.len(),
        1,
        "the command ran without its whole request"
    );
    still_serving(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn clients_beyond_the_connection_limit_wait_for_a_slot() {
    let mut options = Options::default();
    options.config = HttpConfig {
        max_connections: 2,
        ..options.config
    };
    let server = TestServer::start(options).await;
    let request = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(socket);
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond the limit"
    );
    drop(held.pop());
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buf))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    server.stop().await.unwrap();
}
