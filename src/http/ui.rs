//! The live dashboard: `GET /ui` (and `GET /` for clients that prefer HTML).
//!
//! The page is rendered here from the current snapshot, so it reads without JavaScript (a
//! table of every service as of that moment); its script (`ui/app.js`) then follows the
//! event stream and keeps the table current. Every file the page needs is embedded in the
//! binary and served from `/ui/`, so it works with no network beyond the registry, and its
//! Content-Security-Policy allows nothing else.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use pipeline::{LabelError, Metrics, ScalingMetric, ServiceEntry, Timestamp};

use super::body::ApiBody;
use super::handler::{json_error, Answer};
use super::read::{not_modified, ReadContext};
use super::render::HealthReport;
use crate::telemetry::PublisherState;

const INDEX: &str = include_str!("../../ui/index.html");

/// The page's files: name, content type, content.
const FILES: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

/// A fingerprint of the page's files, fixed at build time: their ETag, and the `?v=` the page
/// requests them with, so a new build is never served an old script from a cache.
const ASSETS_TAG: u64 = {
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, INDEX.as_bytes());
    let mut i = 0;
    while i < FILES.len() {
        hash = fnv1a(hash, FILES[i].2.as_bytes());
        i += 1;
    }
    hash
};

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Only the registry's own files and connections; inline scripts and styles are refused.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Whether a `GET /` wants the page rather than the contract's JSON: only when `Accept`
/// ranks `text/html` above `application/json` (browsers do; curl's `*/*`, a missing header
/// and JSON clients get the JSON body, as before).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let (mut html, mut json) = (0.0_f32, 0.0_f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "text/html" => html = html.max(quality),
                "application/json" => json = json.max(quality),
                _ => {}
            }
        }
    }
    html > json
}

/// One of the page's files, or 404.
pub fn asset(name: &str, request: &HeaderMap) -> Answer {
    let Some((_, content_type, content)) = FILES.iter().find(|(file, _, _)| *file == name) else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let etag = format!("\"{ASSETS_TAG:016x}\"");
    let mut answer = if not_modified(request, &etag[1..etag.len() - 1]) {
        let mut answer = Response::new(ApiBody::empty());
        *answer.status_mut() = StatusCode::NOT_MODIFIED;
        answer
    } else {
        let mut answer = Response::new(ApiBody::full(Bytes::from_static(content.as_bytes())));
        answer
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        answer
    };
    let headers = answer.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    answer
}

/// The page, with the state of `read` filled in.
pub fn page(read: &ReadContext<'_>, report: &HealthReport, publisher: &PublisherState) -> Answer {
    let html = render_page(read, report, publisher);
    let mut answer = read.probe(StatusCode::OK, Bytes::from(html));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `/` answers HTML or JSON by Accept: caches must keep the two apart.
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    answer
}

fn render_page(
    read: &ReadContext<'_>,
    report: &HealthReport,
    publisher: &PublisherState,
) -> String {
    let snapshot = &read.snapshot;
    let mut rows = String::with_capacity(snapshot.services.len() * 640);
    for (name, record) in snapshot.services.iter() {
        let metrics = snapshot.metrics.get(name).map(|m| m.metrics.as_ref());
        push_row(&mut rows, &record.entry, metrics, read.now);
    }
    let mut warnings = String::new();
    for warning in &report.warnings {
        let _ = write!(warnings, "<li>{}</li>", Escaped(warning));
    }
    let health = if report.healthy {
        "healthy"
    } else {
        "degraded"
    };
    let hidden = |hide: bool| if hide { " hidden" } else { "" };
    let count = snapshot.services.len().to_string();
    let revision = snapshot.revision.to_string();
    let assets = format!("{ASSETS_TAG:016x}");
    let generated = format_time(read.now);
    let publisher = match (publisher.enabled, publisher.is_connected()) {
        (false, _) => "off",
        (true, true) => "connected",
        (true, false) => "disconnected",
    };
    let fields: [(&str, &str); 12] = [
        ("{{ASSETS}}", &assets),
        ("{{VERSION}}", env!("CARGO_PKG_VERSION")),
        ("{{HEALTH}}", health),
        ("{{SOURCE}}", read.freshness.source_state),
        ("{{STALE_HIDDEN}}", hidden(!read.freshness.stale)),
        ("{{REVISION}}", &revision),
        ("{{COUNT}}", &count),
        ("{{PUBLISHER}}", publisher),
        ("{{GENERATED}}", &generated),
        ("{{WARNINGS}}", &warnings),
        ("{{ROWS}}", &rows),
        ("{{EMPTY_HIDDEN}}", hidden(!snapshot.services.is_empty())),
    ];
    fill(INDEX, &fields)
}

/// The template with each `{{NAME}}` replaced; values are already escaped HTML.
fn fill(template: &str, fields: &[(&str, &str)]) -> String {
    let extra: usize = fields.iter().map(|(_, v)| v.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match fields.iter().find(|(key, _)| tail.starts_with(key)) {
            Some((key, value)) => {
                out.push_str(value);
                rest = &tail[key.len()..];
            }
            None => {
                out.push_str("{{");
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One service's row, the same cells `ui/app.js` renders.
fn push_row(out: &mut String, entry: &ServiceEntry, metrics: Option<&Metrics>, now: Timestamp) {
    let name = Escaped(&entry.name);
    let running = entry
        .running_tasks
        .map_or_else(|| "–".to_owned(), |n| n.to_string());
    let (metric, threshold) = match entry.metric {
        ScalingMetric::Cpu => ("cpu", entry.thresholds.cpu),
        ScalingMetric::Memory => ("memory", entry.thresholds.memory),
    };
    let _ = write!(
        out,
        "<tr data-name=\"{name}\"><td class=\"name\">{name} <small>{mode}</small></td>\
         <td class=\"replicas\">{running}/{desired}</td>\
         <td class=\"range\">{min}–{max}</td>\
         <td class=\"scaling\">{metric} &gt; {threshold} %</td>",
        mode = Escaped(&entry.mode),
        desired = entry.current_replicas,
        min = entry.min_replicas,
        max = entry.max_replicas,
    );
    match metrics {
        Some(m) => {
            let age = (now.0 - m.sampled_at_ms).max(0) / 1000;
            let _ = write!(
                out,
                "<td class=\"cpu\" title=\"sampled {age} s ago\">{:.1} %</td><td class=\"cpu-history spark\"></td>\
                 <td class=\"memory\">{}</td><td class=\"memory-history spark\"></td>",
                m.cpu_pct,
                memory_text(m),
            );
        }
        None => out.push_str(
            "<td class=\"cpu\" title=\"no running task sampled\">–</td><td class=\"cpu-history spark\"></td>\
             <td class=\"memory\">–</td><td class=\"memory-history spark\"></td>",
        ),
    }
    push_errors(out, &entry.config_errors);
    out.push_str("<td class=\"change\"></td></tr>");
}

fn push_errors(out: &mut String, errors: &[LabelError]) {
    if errors.is_empty() {
        out.push_str("<td class=\"errors\"></td>");
        return;
    }
    out.push_str("<td class=\"errors bad\"><ul>");
    for error in errors {
        let _ = write!(
            out,
            "<li>{}=&quot;{}&quot;: {}</li>",
            Escaped(&error.label),
            Escaped(&error.value),
            Escaped(&error.reason)
        );
    }
    out.push_str("</ul></td>");
}

fn memory_text(metrics: &Metrics) -> String {
    let bytes = metrics.memory_bytes;
    let size = if bytes >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", bytes / (1024.0 * 1024.0 * 1024.0))
    } else if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    };
    match metrics.memory_pct {
        Some(pct) => format!("{size} ({pct:.1} %)"),
        None => size,
    }
}

/// `HH:MM:SS UTC` of a moment, for the static page's "as of".
fn format_time(now: Timestamp) -> String {
    let seconds = now.0.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Text made safe for HTML content and quoted attribute values.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn only_clients_preferring_html_get_the_page_at_the_root() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(&accept(browser)));
        assert!(!prefers_html(&HeaderMap::new()));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("application/json, text/html")));
        assert!(!prefers_html(&accept("text/html;q=0.5, application/json")));
        assert!(prefers_html(&accept("application/json;q=0.5, text/html")));
        assert!(!prefers_html(&accept("text/html;q=0")));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            Escaped("<a href=\"x\">&'").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn templates_are_filled_and_unknown_braces_kept() {
        assert_eq!(fill("a{{X}}b{{Y}}c{{", &[("{{X}}", "1")]), "a1b{{Y}}c{{");
    }

    #[test]
    fn assets_are_served_with_a_validator() {
        let answer = asset("app.js", &HeaderMap::new());
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let etag = answer.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(asset("app.js", &again).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            asset("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_template_loads_every_file_by_its_fingerprint() {
        assert!(INDEX.contains("{{ROWS}}"));
        for (file, _, _) in FILES {
            assert!(
                INDEX.contains(&format!("/ui/{file}?v={{{{ASSETS}}}}")),
                "{file}"
            );
        }
    }
}
