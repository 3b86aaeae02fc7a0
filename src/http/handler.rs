//! Answering one request: routing, limits, authorisation, then the operation.
//!
//! Reads take the current snapshot without a lock and serve cached renderings where the data
//! did not change; commands go to the Swarm source (through [`SourceControl`]) or to the
//! registry, and answer once their result is readable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use pipeline::{Input, Snapshot, Timestamp};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::ApiBody;
use super::cache::BodyCache;
use super::config::HttpConfig;
use super::query::{self, Blocking, QueryError};
use super::render::{self, CacheStats, Freshness, ServicesMetadata};
use super::route::{self, Route, RouteError, UNMATCHED};
use super::sse::{EventStream, Start, StreamContext};
use super::ApiState;
use crate::control::ControlError;
use crate::telemetry::{self, HttpMetrics};

/// The resource's revision, as a number clients can compare (Consul's `X-Consul-Index`).
pub const INDEX_HEADER: &str = "x-registry-index";
/// The registry's current revision.
pub const REVISION_HEADER: &str = "x-registry-revision";
/// `true` when the engine has not answered within the staleness bound.
pub const STALE_HEADER: &str = "x-registry-stale";
/// Milliseconds since the engine last answered (absent when it never has).
pub const LAST_CONTACT_HEADER: &str = "x-registry-last-contact";
/// `connecting`, `connected` or `unreachable`.
pub const SOURCE_HEADER: &str = "x-registry-source";
/// Seconds since a metrics sample was taken.
pub const METRICS_AGE_HEADER: &str = "x-metrics-age";

const JSON: &str = "application/json";

/// Settings the handler needs, derived once from [`HttpConfig`] and [`ApiState`].
struct Settings {
    api_token: Option<String>,
    max_body_bytes: u64,
    /// How long a request body may take to arrive (the request head's deadline again).
    body_read_timeout: Duration,
    command_timeout: Duration,
    stale_after_ms: i64,
    refresh_interval_sec: u64,
}

/// Everything one request may need; shared by all connections.
pub struct Api {
    state: ApiState,
    settings: Settings,
    services_body: BodyCache<ServicesMetadata>,
    metrics: Arc<HttpMetrics>,
    streams: Arc<StreamContext>,
    revisions: watch::Receiver<u64>,
    shutdown: CancellationToken,
}

/// An answer that ends request handling early (a bad parameter, a missing service, ...).
type Answer = Response<ApiBody>;

impl Api {
    pub fn new(
        config: &HttpConfig,
        state: ApiState,
        revisions: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        let stale_after = config.stale_after(state.refresh_interval);
        let metrics = Arc::new(HttpMetrics::default());
        let streams = Arc::new(StreamContext::new(
            config.sse_heartbeat,
            config.sse_retry,
            metrics.clone(),
            shutdown.clone(),
        ));
        Api {
            settings: Settings {
                api_token: config.api_token.clone(),
                max_body_bytes: config.max_body_bytes,
                body_read_timeout: config.header_read_timeout,
                command_timeout: config.command_timeout,
                stale_after_ms: i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX),
                refresh_interval_sec: state.refresh_interval.as_secs(),
            },
            state,
            services_body: BodyCache::default(),
            metrics,
            streams,
            revisions,
            shutdown,
        }
    }

    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.metrics
    }

    /// Answer one request and count it.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ApiBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let head = request.method() == Method::HEAD;
        let (route_index, mut response) = match route::route(request.method(), request.uri().path())
        {
            Ok(route) => (route.index(), self.serve(route, request).await),
            Err(error) => (UNMATCHED, route_error(error)),
        };
        self.metrics
            .record_request(route_index, response.status().as_u16(), started.elapsed());
        if head {
            // HEAD answers carry the length the GET body would have, and no body.
            if let Some(length) = http_body::Body::size_hint(response.body()).exact() {
                if length > 0 {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                }
            }
            *response.body_mut() = ApiBody::empty();
        }
        response
    }

    async fn serve<B>(&self, route: Route, request: Request<B>) -> Answer
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        if route == Route::AgentReadings {
            // Agents' reports have their own body bound and count their refusals.
            if let Some(denied) = self.refuse_unauthorized(&parts.headers) {
                let rejection = crate::docker::readings::Rejection::Unauthorized;
                self.state.source_counters.nodes.reject(rejection);
                return denied;
            }
            let timeout = self.settings.body_read_timeout;
            return super::agents::receive(&self.state, body, timeout).await;
        }
        if let Some(length) = content_length(&parts.headers) {
            if length > self.settings.max_body_bytes {
                return self.too_large();
            }
        }
        if route.is_command() {
            if let Some(denied) = self.refuse_unauthorized(&parts.headers) {
                return denied;
            }
        }
        // No endpoint reads a body, but one that is sent is consumed (within the bounds) so the
        // connection stays usable, and an endless or trickling body is refused rather than
        // read forever.
        if !body.is_end_stream() {
            let limit = usize::try_from(self.settings.max_body_bytes).unwrap_or(usize::MAX);
            let deadline = self.settings.body_read_timeout;
            match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                    return self.too_large();
                }
                Ok(Err(error)) => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("could not read the request body: {error}"),
                    );
                }
                Err(_) => {
                    return json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!("request body not received within {} s", deadline.as_secs()),
                    );
                }
            }
        }
        let outcome = match route {
            Route::Root => Ok(self.root()),
            Route::Health => Ok(self.health()),
            Route::Live => Ok(self.live()),
            Route::Ready => Ok(self.ready()),
            Route::Metrics => Ok(self.prometheus()),
            Route::Services => self.services(&parts).await,
            Route::Service(name) => self.service(&parts, &name).await,
            Route::ServiceMetrics(name) => self.service_metrics(&parts, &name).await,
            Route::SampleMetrics(name) => Ok(self.sample_metrics(&name).await),
            Route::CacheStats => Ok(self.cache_stats(&parts)),
            Route::Refresh => Ok(self.refresh().await),
            Route::Clear => Ok(self.clear().await),
            Route::Events if accepts_event_stream(&parts.headers) => self.event_stream(&parts),
            Route::Events => Ok(self.events(&parts)),
            Route::EventStream => self.event_stream(&parts),
            // Answered above, with its body.
            Route::AgentReadings => Ok(route_error(RouteError::NotFound)),
        };
        outcome.unwrap_or_else(|e| query_error(&e))
    }

    fn too_large(&self) -> Answer {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body too large (limit {} bytes)",
                self.settings.max_body_bytes
            ),
        )
    }

    /// The 401 answer for a command without the configured bearer token, if it lacks it.
    fn refuse_unauthorized(&self, headers: &HeaderMap) -> Option<Answer> {
        let expected = self.settings.api_token.as_ref()?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => None,
            _ => {
                let mut answer = json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: this endpoint needs Authorization: Bearer <token>",
                );
                answer.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"swarm-registry\""),
                );
                Some(answer)
            }
        }
    }

    fn now_and_freshness(&self, snapshot: &Snapshot) -> (Timestamp, Freshness) {
        let now = Timestamp::now();
        let freshness = Freshness::of(snapshot, now, self.settings.stale_after_ms);
        (now, freshness)
    }

    /// Wait, for a blocking read, until `resource(snapshot)` passes the client's index, the
    /// wait is over, or the server shuts down; then return the snapshot to answer from.
    async fn settle(
        &self,
        blocking: Option<Blocking>,
        resource: impl Fn(&Snapshot) -> u64,
    ) -> Arc<Snapshot> {
        let registry = &self.state.registry;
        let Some(Blocking { index, wait }) = blocking else {
            return registry.snapshot();
        };
        let deadline = Instant::now() + query::jittered(wait, rand::random::<f64>());
        let mut revisions = self.revisions.clone();
        loop {
            revisions.borrow_and_update();
            let snapshot = registry.snapshot();
            // An index above the current revision comes from another run: waiting for it
            // could take forever, so the client gets the current state (as Consul does).
            if resource(&snapshot) > index || index > snapshot.revision {
                return snapshot;
            }
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return registry.snapshot();
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return registry.snapshot(),
                _ = self.shutdown.cancelled() => return registry.snapshot(),
            }
        }
    }

    fn root(&self) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let etag = concat!("root-", env!("CARGO_PKG_VERSION"));
        read_answer(
            StatusCode::OK,
            render::root_body(now),
            Some(etag),
            snapshot.revision,
            &snapshot,
            &freshness,
        )
    }

    fn health(&self) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let publisher = &self.state.publisher;
        let report = render::health_report(&snapshot, &freshness, publisher);
        let stats = CacheStats::of(&snapshot, self.settings.refresh_interval_sec);
        let nodes = self.state.source_counters.nodes.nodes();
        let body = render::health_body(
            &snapshot, &freshness, &report, &stats, publisher, &nodes, now,
        );
        probe_answer(StatusCode::OK, body, &snapshot, &freshness)
    }

    fn live(&self) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let body = render::probe_body("live", None, snapshot.revision, now);
        probe_answer(StatusCode::OK, body, &snapshot, &freshness)
    }

    fn ready(&self) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        match render::not_ready_reason(&snapshot) {
            None => {
                let body = render::probe_body("ready", None, snapshot.revision, now);
                probe_answer(StatusCode::OK, body, &snapshot, &freshness)
            }
            Some(reason) => {
                let body = render::probe_body("not ready", Some(&reason), snapshot.revision, now);
                probe_answer(StatusCode::SERVICE_UNAVAILABLE, body, &snapshot, &freshness)
            }
        }
    }

    fn prometheus(&self) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let text = telemetry::render(&telemetry::Exposition {
            http: &self.metrics,
            snapshot: &snapshot,
            now,
            stale: freshness.stale,
            source: &self.state.source_counters,
            publisher: &self.state.publisher,
        });
        let mut answer = probe_answer(StatusCode::OK, Bytes::from(text), &snapshot, &freshness);
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        answer
    }

    async fn services(&self, parts: &Parts) -> Result<Answer, QueryError> {
        let blocking = query::parse_blocking(parts.uri.query())?;
        let snapshot = self.settle(blocking, |s| s.services_revision).await;
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let revision = snapshot.services_revision;
        let etag = revision.to_string();
        if not_modified(&parts.headers, &etag) {
            return Ok(unchanged(&etag, revision, &snapshot, &freshness));
        }
        let metadata = ServicesMetadata::of(&snapshot, &freshness, now);
        let body = self.services_body.get_or_render(metadata.clone(), || {
            render::services_body(&snapshot, &metadata)
        });
        Ok(read_answer(
            StatusCode::OK,
            body,
            Some(&etag),
            revision,
            &snapshot,
            &freshness,
        ))
    }

    async fn service(&self, parts: &Parts, name: &str) -> Result<Answer, QueryError> {
        let blocking = query::parse_blocking(parts.uri.query())?;
        let snapshot = self
            .settle(blocking, |s| {
                s.service(name)
                    .map(|r| r.revision)
                    .unwrap_or(s.services_revision)
            })
            .await;
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let Some(record) = snapshot.service(name) else {
            return Ok(not_found("service not found", &snapshot, &freshness));
        };
        let etag = record.revision.to_string();
        if not_modified(&parts.headers, &etag) {
            return Ok(unchanged(&etag, record.revision, &snapshot, &freshness));
        }
        let body = render::service_body(record.json(), record.revision, now);
        Ok(read_answer(
            StatusCode::OK,
            body,
            Some(&etag),
            record.revision,
            &snapshot,
            &freshness,
        ))
    }

    async fn service_metrics(&self, parts: &Parts, name: &str) -> Result<Answer, QueryError> {
        let blocking = query::parse_blocking(parts.uri.query())?;
        let snapshot = self
            .settle(blocking, |s| {
                s.metrics_of(name).map(|m| m.revision).unwrap_or(s.revision)
            })
            .await;
        let (now, freshness) = self.now_and_freshness(&snapshot);
        if snapshot.service(name).is_none() {
            return Ok(not_found("service not found", &snapshot, &freshness));
        }
        // No metrics means no running task: never answer 200 with zeros, which would make the
        // autoscaler scale a stopped service up to its minimum.
        let Some(record) = snapshot.metrics_of(name) else {
            return Ok(not_found("metrics not available", &snapshot, &freshness));
        };
        let etag = record.revision.to_string();
        let age = render::metrics_age_seconds(&record.metrics, now);
        let mut answer = if not_modified(&parts.headers, &etag) {
            unchanged(&etag, record.revision, &snapshot, &freshness)
        } else {
            let body = render::metrics_body(
                name,
                Some(&record.metrics),
                Some(record.revision),
                false,
                now,
            );
            read_answer(
                StatusCode::OK,
                body,
                Some(&etag),
                record.revision,
                &snapshot,
                &freshness,
            )
        };
        answer
            .headers_mut()
            .insert(METRICS_AGE_HEADER, HeaderValue::from(age));
        Ok(answer)
    }

    fn cache_stats(&self, parts: &Parts) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        // The statistics are a function of these three (every full list and clear moves the
        // cache version, and with it last_refresh), so they make an exact validator.
        let etag = format!(
            "{}.{}.{}",
            snapshot.services_revision,
            snapshot.metrics.len(),
            snapshot.cache_version
        );
        if not_modified(&parts.headers, &etag) {
            return unchanged(&etag, snapshot.revision, &snapshot, &freshness);
        }
        let stats = CacheStats::of(&snapshot, self.settings.refresh_interval_sec);
        read_answer(
            StatusCode::OK,
            render::cache_stats_body(&stats, now),
            Some(&etag),
            snapshot.revision,
            &snapshot,
            &freshness,
        )
    }

    fn events(&self, parts: &Parts) -> Answer {
        let snapshot = self.state.registry.snapshot();
        let (now, freshness) = self.now_and_freshness(&snapshot);
        let publisher = &self.state.publisher;
        let etag = format!(
            "events.{}.{}",
            u8::from(publisher.enabled),
            u8::from(publisher.is_connected())
        );
        if not_modified(&parts.headers, &etag) {
            return unchanged(&etag, snapshot.revision, &snapshot, &freshness);
        }
        read_answer(
            StatusCode::OK,
            render::events_body(publisher, now),
            Some(&etag),
            snapshot.revision,
            &snapshot,
            &freshness,
        )
    }

    fn event_stream(&self, parts: &Parts) -> Result<Answer, QueryError> {
        let query = query::parse_stream(parts.uri.query())?;
        let last_event_id = match parts
            .headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
        {
            None | Some("") => None,
            Some(value) => Some(value.parse::<u64>().map_err(|_| {
                QueryError::new(
                    "Last-Event-ID",
                    value,
                    "expected the id of an event from this stream (a whole number)",
                )
            })?),
        };
        if self.shutdown.is_cancelled() {
            return Ok(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        let registry = &self.state.registry;
        let (start, subscription) = match last_event_id.or(query.since) {
            Some(seq) => (Start::Resume(seq), registry.subscribe_after(seq)),
            None => {
                let (snapshot, subscription) = registry.subscribe();
                (Start::Snapshot(snapshot), subscription)
            }
        };
        let revision = registry.load().revision;
        let stream = EventStream::new(start, subscription, query.filter, self.streams.clone());
        let mut answer = Response::new(ApiBody::stream(stream.into_stream()));
        let headers = answer.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers.insert(REVISION_HEADER, HeaderValue::from(revision));
        Ok(answer)
    }

    async fn sample_metrics(&self, name: &str) -> Answer {
        if self.state.registry.load().service(name).is_none() {
            return json_error(StatusCode::NOT_FOUND, "service not found");
        }
        let sampled = self
            .command(self.state.control.sample_metrics(name), "metrics sample")
            .await;
        if let Err(answer) = sampled {
            return answer;
        }
        let snapshot = self.state.registry.snapshot();
        let now = Timestamp::now();
        let record = snapshot.metrics_of(name);
        let body = render::metrics_body(
            name,
            record.map(|r| r.metrics.as_ref()),
            record.map(|r| r.revision),
            true,
            now,
        );
        let mut answer = json_answer(StatusCode::OK, body);
        if let Some(record) = record {
            let age = render::metrics_age_seconds(&record.metrics, now);
            answer
                .headers_mut()
                .insert(METRICS_AGE_HEADER, HeaderValue::from(age));
        }
        answer
    }

    async fn refresh(&self) -> Answer {
        let revision = match self.command(self.state.control.refresh(), "refresh").await {
            Ok(revision) => revision,
            Err(answer) => return answer,
        };
        let snapshot = self.state.registry.snapshot();
        let stats = CacheStats::of(&snapshot, self.settings.refresh_interval_sec);
        let revision = revision.max(snapshot.revision);
        json_answer(
            StatusCode::OK,
            render::refreshed_body(&stats, revision, Timestamp::now()),
        )
    }

    async fn clear(&self) -> Answer {
        let revision = match self.state.registry.submit(Input::Clear).await {
            Ok(revision) => revision,
            Err(stopped) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, &stopped.to_string());
            }
        };
        // Repopulate at once rather than at the next poll; the answer does not wait for it.
        let control = self.state.control.clone();
        tokio::spawn(async move {
            if let Err(error) = control.refresh().await {
                tracing::warn!(%error, "refresh after cache clear failed");
            }
        });
        json_answer(
            StatusCode::OK,
            render::cleared_body(revision, Timestamp::now()),
        )
    }

    /// Run a source command within the command timeout, mapping its failures to answers.
    async fn command(
        &self,
        command: impl std::future::Future<Output = Result<u64, ControlError>>,
        what: &str,
    ) -> Result<u64, Answer> {
        match tokio::time::timeout(self.settings.command_timeout, command).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(ControlError::UnknownService)) => {
                Err(json_error(StatusCode::NOT_FOUND, "service not found"))
            }
            Ok(Err(error @ ControlError::SourceStopped)) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &error.to_string(),
            )),
            Ok(Err(ControlError::Engine(reason))) => Err(json_error(
                StatusCode::BAD_GATEWAY,
                &format!("{what} failed: {reason}"),
            )),
            Err(_) => Err(json_error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "{what} did not complete within {} s",
                    self.settings.command_timeout.as_secs()
                ),
            )),
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compare secrets in time independent of where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the client asked for the event stream on `/events`.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Whether `If-None-Match` names this (weak) entity tag; weak comparison, as RFC 9110 asks
/// for this header, so `"5"` and `W/"5"` both match.
pub fn not_modified(headers: &HeaderMap, opaque: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            tag == "*" || {
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                tag.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .is_some_and(|t| t == opaque)
            }
        })
}

fn json_answer(status: StatusCode, body: Bytes) -> Answer {
    let mut answer = Response::new(ApiBody::full(body));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    answer
}

pub fn json_error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, render::error_body(message))
}

fn query_error(error: &QueryError) -> Answer {
    json_answer(
        StatusCode::BAD_REQUEST,
        render::parameter_error_body(&error.to_string(), error.parameter),
    )
}

fn route_error(error: RouteError) -> Answer {
    match error {
        RouteError::NotFound => json_error(StatusCode::NOT_FOUND, "not found"),
        RouteError::BadPath(reason) => json_error(StatusCode::BAD_REQUEST, &reason),
        RouteError::MethodNotAllowed { allow } => {
            let mut answer = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            answer
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            answer
        }
        RouteError::Options { allow } => {
            let mut answer = Response::new(ApiBody::empty());
            *answer.status_mut() = StatusCode::NO_CONTENT;
            answer
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            answer
        }
    }
}

/// Revision and staleness headers, carried by every read.
fn freshness_headers(headers: &mut HeaderMap, snapshot: &Snapshot, freshness: &Freshness) {
    headers.insert(
        HeaderName::from_static(REVISION_HEADER),
        HeaderValue::from(snapshot.revision),
    );
    headers.insert(
        HeaderName::from_static(STALE_HEADER),
        HeaderValue::from_static(if freshness.stale { "true" } else { "false" }),
    );
    headers.insert(
        HeaderName::from_static(SOURCE_HEADER),
        HeaderValue::from_static(freshness.source_state),
    );
    if let Some(age) = freshness.last_contact_age_ms {
        headers.insert(
            HeaderName::from_static(LAST_CONTACT_HEADER),
            HeaderValue::from(age),
        );
    }
}

fn etag_value(opaque: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("W/\"{opaque}\"")).ok()
}

fn read_answer(
    status: StatusCode,
    body: Bytes,
    etag: Option<&str>,
    index: u64,
    snapshot: &Snapshot,
    freshness: &Freshness,
) -> Answer {
    let mut answer = json_answer(status, body);
    let headers = answer.headers_mut();
    if let Some(etag) = etag.and_then(etag_value) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        HeaderName::from_static(INDEX_HEADER),
        HeaderValue::from(index),
    );
    freshness_headers(headers, snapshot, freshness);
    answer
}

/// Probes and /metrics describe the present moment, so caches must not keep them.
fn probe_answer(
    status: StatusCode,
    body: Bytes,
    snapshot: &Snapshot,
    freshness: &Freshness,
) -> Answer {
    let mut answer = json_answer(status, body);
    let headers = answer.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    freshness_headers(headers, snapshot, freshness);
    answer
}

fn unchanged(etag: &str, index: u64, snapshot: &Snapshot, freshness: &Freshness) -> Answer {
    let mut answer = Response::new(ApiBody::empty());
    *answer.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = answer.headers_mut();
    if let Some(etag) = etag_value(etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        HeaderName::from_static(INDEX_HEADER),
        HeaderValue::from(index),
    );
    freshness_headers(headers, snapshot, freshness);
    answer
}

fn not_found(message: &str, snapshot: &Snapshot, freshness: &Freshness) -> Answer {
    let mut answer = json_error(StatusCode::NOT_FOUND, message);
    freshness_headers(answer.headers_mut(), snapshot, freshness);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(not_modified(&headers(&[("if-none-match", "\"5\"")]), "5"));
        assert!(not_modified(&headers(&[("if-none-match", "W/\"5\"")]), "5"));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"1\", W/\"5\"")]),
            "5"
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), "5"));
        assert!(!not_modified(&headers(&[("if-none-match", "\"50\"")]), "5"));
        assert!(!not_modified(&headers(&[("if-none-match", "5")]), "5"));
        assert!(!not_modified(&headers(&[]), "5"));
    }

    #[test]
    fn bearer_tokens_are_extracted() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn event_stream_is_negotiated_by_accept() {
        assert!(accepts_event_stream(&headers(&[(
            "accept",
            "Text/Event-Stream"
        )])));
        assert!(!accepts_event_stream(&headers(&[(
            "accept",
            "application/json"
        )])));
        assert!(!accepts_event_stream(&headers(&[])));
    }
}
