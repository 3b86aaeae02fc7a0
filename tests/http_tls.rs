//! TLS with ALPN: HTTP/2 clients get HTTP/2, HTTP/1.1 clients HTTP/1.1, on the same port.
//! The certificate is made for the test with the `openssl` command, which the test bed
//! installs (scripts/dev-env): without it the test fails rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::{spec, Options, TestServer, DEADLINE};
use swarm_registry::http::{HttpConfig, TlsFiles};
use tokio_rustls::TlsConnector;

/// A self-signed certificate for localhost and 127.0.0.1, made with the openssl command.
fn make_certificate(dir: &Path) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output();
    match made {
        Ok(output) if output.status.success() => files,
        Ok(output) => panic!(
            "openssl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            panic!("cannot run openssl ({error}); the test bed installs it: scripts/dev-env up")
        }
    }
}

fn connector(cert: &Path, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_serves_both_protocols_chosen_by_alpn() {
    let dir = std::env::temp_dir().join(format!("swarm-registry-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = make_certificate(&dir);
    let mut options = Options::default();
    options.config = HttpConfig {
        tls: Some(files.clone()),
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;

    for (alpn, expected) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        // Offer one protocol at a time, to check both paths.
        let connector = connector(&files.cert, alpn);
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio::time::timeout(
            DEADLINE,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let request = http::Request::builder()
            .uri("https://localhost/services")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = if expected == http::Version::HTTP_2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["services"][0]["name"], "web");
    }
    server.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn unusable_tls_files_are_reported_by_name() {
    let options = Options::default();
    let listener = swarm_registry::http::bind(&options.config).await.unwrap();
    let config = HttpConfig {
        tls: Some(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ..options.config
    };
    let server = TestServer::with_defaults().await;
    let state = swarm_registry::http::ApiState {
        registry: server.registry.clone(),
        control: swarm_registry::control::SourceControl::channel(1).0,
        source_counters: Default::default(),
        publisher: Default::default(),
        refresh_interval: std::time::Duration::from_secs(30),
    };
    let error = swarm_registry::http::serve(
        listener,
        config,
        state,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
    server.stop().await.unwrap();
}

/// Read an event-stream body until `needle` appears in it.
async fn read_body_until(body: &mut hyper::body::Incoming, text: &mut String, needle: &str) {
    tokio::time::timeout(DEADLINE, async {
        while !text.contains(needle) {
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
    .unwrap_or_else(|_| panic!("{needle:?} within the deadline; got {text:?}"));
}

#[tokio::test]
async fn event_streams_work_over_tls_with_either_protocol() {
    let dir = std::env::temp_dir().join(format!("swarm-registry-tls-sse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = make_certificate(&dir);
    let mut options = Options::default();
    options.config = HttpConfig {
        tls: Some(files.clone()),
        ..options.config
    };
    let server = TestServer::start(options).await;
    server.list(vec![spec("web")]).await;

    let mut services = vec![spec("web")];
    for (alpn, expected) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let connector = connector(&files.cert, alpn);
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio::time::timeout(
            DEADLINE,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        let request = http::Request::builder()
            .uri("https://localhost/events/stream")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = if expected == http::Version::HTTP_2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        let mut body = response.into_body();
        let mut text = String::new();
        read_body_until(&mut body, &mut text, "event: snapshot").await;
        read_body_until(&mut body, &mut text, "\"name\":\"web\"").await;

        // A change made now arrives on the open stream.
        let name = format!("api-{}", services.len());
        services.push(spec(&name));
        server.list(services.clone()).await;
        read_body_until(&mut body, &mut text, "event: service.added").await;
        read_body_until(&mut body, &mut text, &format!("\"name\":\"{name}\"")).await;
    }
    server.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
