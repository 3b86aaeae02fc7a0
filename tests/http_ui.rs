//! The dashboard's HTTP side, over HTTP/1.1 and h2c: the server-rendered page (what a
//! browser without JavaScript shows), `/` negotiated by `Accept`, the embedded files, and
//! CORS for reads and the event stream (off by default, origins from a setting).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/http.rs"]
mod support;

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use pipeline::ServiceSpec;
use support::{sample, spec, Options, TestServer, PROTOCOLS};
use swarm_registry::http::cors::AllowedOrigins;
use swarm_registry::http::HttpConfig;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// A service whose name and label values would break the page if they were not escaped.
fn hostile() -> ServiceSpec {
    let mut spec = spec("<b>x</b>");
    spec.labels = BTreeMap::from([
        ("autoscaler.enabled".to_owned(), "true".to_owned()),
        ("autoscaler.max".to_owned(), "<script>".to_owned()),
    ]);
    spec
}

#[tokio::test]
async fn the_page_lists_every_service_without_javascript() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        server.list(vec![spec("web"), spec("api"), hostile()]).await;
        server.metrics("web", Some(sample(12.34))).await;
        let client = server.client(protocol);

        let page = client.get("/ui").await;
        assert_eq!(page.status, StatusCode::OK, "{protocol:?}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        let revision = server.registry.snapshot().revision.to_string();
        assert_eq!(page.header("x-registry-revision"), Some(revision.as_str()));
        let html = String::from_utf8(page.body.to_vec()).unwrap();
        assert_eq!(html.matches("<tr data-name=").count(), 3, "{html}");
        // Rows in name order, with the figures the script would show.
        let api = html.find("data-name=\"api\"").unwrap();
        let web = html.find("data-name=\"web\"").unwrap();
        assert!(api < web);
        assert!(html.contains("<td class=\"range\">1–5</td>"), "{html}");
        assert!(html.contains("<td class=\"replicas\">2/2</td>"), "{html}");
        assert!(html.contains(">12.3 %</td>"), "{html}");
        assert!(html.contains(&format!("<dd id=\"revision\">{revision}</dd>")));
        // Names and label values are text, never markup.
        assert!(!html.contains("<b>x</b>") && !html.contains("\"<script>"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(
            html.contains("autoscaler.max=&quot;&lt;script&gt;&quot;"),
            "{html}"
        );
        // Everything the page loads is served by the registry itself.
        for file in ["app.js", "style.css"] {
            let at = html.find(&format!("/ui/{file}?v=")).unwrap();
            let url: String = html[at..].chars().take_while(|c| *c != '"').collect();
            let asset = client.get(&url).await;
            assert_eq!(asset.status, StatusCode::OK, "{url}");
            assert!(!asset.body.is_empty());
            let etag = asset.header("etag").unwrap().to_owned();
            let again = client
                .send(
                    client
                        .request(Method::GET, &url)
                        .header("if-none-match", etag),
                )
                .await;
            assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{url}");
        }
        assert_eq!(
            client.get("/ui/nope.js").await.status,
            StatusCode::NOT_FOUND
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_root_is_html_for_browsers_and_json_for_everyone_else() {
    for protocol in PROTOCOLS {
        let server = TestServer::with_defaults().await;
        let client = server.client(protocol);
        let browser = client
            .send(
                client
                    .request(Method::GET, "/")
                    .header("accept", BROWSER_ACCEPT),
            )
            .await;
        assert_eq!(browser.status, StatusCode::OK);
        assert!(browser
            .header("content-type")
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(browser.header("vary"), Some("accept"));
        assert!(browser.body.starts_with(b"<!doctype html>"));

        for accept in [None, Some("*/*"), Some("application/json")] {
            let mut request = client.request(Method::GET, "/");
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let json = client.send(request).await;
            assert_eq!(json.status, StatusCode::OK, "{accept:?}");
            assert_eq!(json.json()["service"], "Service Registry", "{accept:?}");
        }
        server.stop().await.unwrap();
    }
}

async fn server_with_origins(origins: Option<AllowedOrigins>) -> TestServer {
    let defaults = Options::default();
    TestServer::start(Options {
        config: HttpConfig {
            cors_allowed_origins: origins,
            ..defaults.config.clone()
        },
        ..defaults
    })
    .await
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let server = server_with_origins(None).await;
    let client = server.client(PROTOCOLS[0]);
    let reply = client
        .send(
            client
                .request(Method::GET, "/services")
                .header("origin", "https://ops.example.com"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply
        .headers
        .keys()
        .all(|name| !name.as_str().starts_with("access-control-")));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn configured_origins_may_read_and_follow_the_stream() {
    let origins = AllowedOrigins::List(vec!["https://ops.example.com".into()]);
    for protocol in PROTOCOLS {
        let server = server_with_origins(Some(origins.clone())).await;
        server.list(vec![spec("web")]).await;
        let client = server.client(protocol);
        let from = |method: Method, path: &str, origin: &str| {
            client
                .request(method, path)
                .header("origin", origin.to_owned())
        };

        let read = client
            .send(from(Method::GET, "/services", "https://ops.example.com"))
            .await;
        assert_eq!(
            read.header("access-control-allow-origin"),
            Some("https://ops.example.com")
        );
        assert!(read
            .header("access-control-expose-headers")
            .unwrap()
            .contains("x-registry-revision"));

        let stream = client
            .open(from(
                Method::GET,
                "/events/stream",
                "https://ops.example.com",
            ))
            .await;
        assert_eq!(stream.status(), StatusCode::OK);
        assert_eq!(
            stream.headers()["access-control-allow-origin"],
            "https://ops.example.com"
        );
        drop(stream);

        let preflight = client
            .send(
                from(Method::OPTIONS, "/events/stream", "https://ops.example.com")
                    .header("access-control-request-method", "GET")
                    .header("access-control-request-headers", "last-event-id"),
            )
            .await;
        assert_eq!(preflight.status, StatusCode::NO_CONTENT);
        assert_eq!(
            preflight.header("access-control-allow-methods"),
            Some("GET, HEAD")
        );
        assert!(preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("last-event-id"));

        // Another origin, and commands from the allowed one, get nothing.
        let other = client
            .send(from(Method::GET, "/services", "https://evil.example"))
            .await;
        assert_eq!(other.header("access-control-allow-origin"), None);
        let command = client
            .send(from(
                Method::POST,
                "/cache/refresh",
                "https://ops.example.com",
            ))
            .await;
        assert_eq!(command.header("access-control-allow-origin"), None);
        server.stop().await.unwrap();
    }
}
