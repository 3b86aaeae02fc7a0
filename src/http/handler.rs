//! Answering one request: routing, limits, authorisation, then the operation.
//!
//! Reads go through the one conditional-read path in [`read`](super::read) (a snapshot loaded
//! once without a lock, blocking waits, entity tags, freshness headers) and serve cached
//! renderings where the data did not change, so each read endpoint here says only what is its
//! own. Commands live in [`commands`](super::commands); the event stream in
//! [`sse`](super::sse).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::ApiBody;
use super::cache::BodyCache;
use super::commands::Commands;
use super::config::HttpConfig;
use super::cors::Cors;
use super::query::{self, QueryError};
use super::read::{ReadContext, Reads};
use super::render::{self, CacheStats, ServicesMetadata};
use super::route::{self, Route, RouteError, UNMATCHED};
use super::sse::{EventStream, Start, StreamContext};
use super::ui;
use super::ApiState;
use crate::telemetry::{self, HttpMetrics};

pub use super::commands::bearer_token;
pub use super::read::{
    not_modified, INDEX_HEADER, LAST_CONTACT_HEADER, METRICS_AGE_HEADER, REVISION_HEADER,
    SOURCE_HEADER, STALE_HEADER,
};

const JSON: &str = "application/json";

/// An answer, including one that ends request handling early (a bad parameter, a missing
/// service, ...).
pub type Answer = Response<ApiBody>;

/// Everything one request may need; shared by all connections.
pub struct Api {
    state: ApiState,
    reads: Reads,
    commands: Commands,
    max_body_bytes: u64,
    /// How long a request body may take to arrive (the request head's deadline again).
    body_read_timeout: Duration,
    refresh_interval_sec: u64,
    services_body: BodyCache<ServicesMetadata>,
    metrics: Arc<HttpMetrics>,
    streams: Arc<StreamContext>,
    shutdown: CancellationToken,
    cors: Cors,
}

impl Api {
    /// `revisions` carries the registry's latest revision; blocking reads wait on it.
    pub fn new(
        config: &HttpConfig,
        state: ApiState,
        revisions: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        let stale_after = config.stale_after(state.refresh_interval);
        let stale_after_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let refresh_interval_sec = state.refresh_interval.as_secs();
        let metrics = Arc::new(HttpMetrics::default());
        let streams = Arc::new(StreamContext::new(
            config.sse_heartbeat,
            config.sse_retry,
            metrics.clone(),
            shutdown.clone(),
        ));
        Api {
            reads: Reads::new(
                state.registry.clone(),
                revisions,
                shutdown.clone(),
                stale_after_ms,
            ),
            commands: Commands::new(
                state.registry.clone(),
                state.control.clone(),
                config.api_token.clone(),
                config.command_timeout,
                refresh_interval_sec,
            ),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.header_read_timeout,
            refresh_interval_sec,
            state,
            services_body: BodyCache::default(),
            metrics,
            streams,
            shutdown,
            cors: Cors::new(config.cors_allowed_origins.clone()),
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
        let routed = route::route(request.method(), request.uri().path());
        let cors = self.cors.grant(request.headers(), &routed);
        let (route_index, mut response) = match routed {
            Ok(route) => (route.index(), self.serve(route, request).await),
            Err(error) => (UNMATCHED, route_error(error)),
        };
        if let Some(grant) = cors {
            grant.apply(response.headers_mut());
        }
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
            if let Some(denied) = self.commands.refuse_unauthorized(&parts.headers) {
                let rejection = crate::docker::readings::Rejection::Unauthorized;
                self.state.source_counters.nodes.reject(rejection);
                return denied;
            }
            let timeout = self.body_read_timeout;
            return super::agents::receive(&self.state, body, timeout).await;
        }
        if let Some(length) = content_length(&parts.headers) {
            if length > self.max_body_bytes {
                return self.too_large();
            }
        }
        if route.is_command() {
            if let Some(denied) = self.commands.refuse_unauthorized(&parts.headers) {
                return denied;
            }
        }
        if let Err(refused) = self.drain_body(body).await {
            return refused;
        }
        let outcome = match route {
            Route::Root if ui::prefers_html(&parts.headers) => Ok(self.ui_page(&parts)),
            Route::Root => Ok(self.root(&parts)),
            Route::Health => Ok(self.health(&parts)),
            Route::Live => Ok(self.live(&parts)),
            Route::Ready => Ok(self.ready(&parts)),
            Route::Metrics => Ok(self.prometheus(&parts)),
            Route::Services => self.services(&parts).await,
            Route::Service(name) => self.service(&parts, &name).await,
            Route::ServiceMetrics(name) => self.service_metrics(&parts, &name).await,
            Route::SampleMetrics(name) => Ok(self.commands.sample_metrics(&name).await),
            Route::CacheStats => Ok(self.cache_stats(&parts)),
            Route::Refresh => Ok(self.commands.refresh().await),
            Route::Clear => Ok(self.commands.clear().await),
            Route::Events if accepts_event_stream(&parts.headers) => self.event_stream(&parts),
            Route::Events => Ok(self.events(&parts)),
            Route::EventStream => self.event_stream(&parts),
            // Answered above, with its body.
            Route::AgentReadings => Ok(route_error(RouteError::NotFound)),
            Route::Ui => Ok(self.ui_page(&parts)),
            Route::UiAsset(file) => Ok(ui::asset(&file, &parts.headers)),
        };
        outcome.unwrap_or_else(|e| query_error(&e))
    }

    /// No endpoint reads a body, but one that is sent is consumed (within the bounds) so the
    /// connection stays usable, and an endless or trickling body is refused rather than read
    /// forever.
    async fn drain_body<B>(&self, body: B) -> Result<(), Answer>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if body.is_end_stream() {
            return Ok(());
        }
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let deadline = self.body_read_timeout;
        match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                Err(self.too_large())
            }
            Ok(Err(error)) => Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {error}"),
            )),
            Err(_) => Err(json_error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("request body not received within {} s", deadline.as_secs()),
            )),
        }
    }

    fn too_large(&self) -> Answer {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body too large (limit {} bytes)",
                self.max_body_bytes
            ),
        )
    }

    fn root(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let etag = concat!("root-", env!("CARGO_PKG_VERSION"));
        read.unconditional(etag, read.snapshot.revision, render::root_body(read.now))
    }

    /// The dashboard, rendered with the current state so it reads without JavaScript.
    fn ui_page(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let report = render::health_report(&read.snapshot, &read.freshness, &self.state.publisher);
        ui::page(&read, &report, &self.state.publisher)
    }

    fn health(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let ReadContext {
            snapshot,
            freshness,
            now,
            ..
        } = &read;
        let publisher = &self.state.publisher;
        let report = render::health_report(snapshot, freshness, publisher);
        let stats = CacheStats::of(snapshot, self.refresh_interval_sec);
        let nodes = self.state.source_counters.nodes.nodes();
        let body = render::health_body(
            snapshot, freshness, &report, &stats, publisher, &nodes, *now,
        );
        read.probe(StatusCode::OK, body)
    }

    fn live(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let body = render::probe_body("live", None, read.snapshot.revision, read.now);
        read.probe(StatusCode::OK, body)
    }

    fn ready(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let revision = read.snapshot.revision;
        match render::not_ready_reason(&read.snapshot) {
            None => read.probe(
                StatusCode::OK,
                render::probe_body("ready", None, revision, read.now),
            ),
            Some(reason) => read.probe(
                StatusCode::SERVICE_UNAVAILABLE,
                render::probe_body("not ready", Some(&reason), revision, read.now),
            ),
        }
    }

    fn prometheus(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let text = telemetry::render(&telemetry::Exposition {
            http: &self.metrics,
            snapshot: &read.snapshot,
            now: read.now,
            stale: read.freshness.stale,
            source: &self.state.source_counters,
            publisher: &self.state.publisher,
        });
        let mut answer = read.probe(StatusCode::OK, Bytes::from(text));
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        answer
    }

    async fn services(&self, parts: &Parts) -> Result<Answer, QueryError> {
        let read = self.reads.blocking(parts, |s| s.services_revision).await?;
        let revision = read.snapshot.services_revision;
        Ok(read.conditional(&revision.to_string(), revision, || {
            let metadata = ServicesMetadata::of(&read.snapshot, &read.freshness, read.now);
            self.services_body.get_or_render(metadata.clone(), || {
                render::services_body(&read.snapshot, &metadata)
            })
        }))
    }

    async fn service(&self, parts: &Parts, name: &str) -> Result<Answer, QueryError> {
        let read = self
            .reads
            .blocking(parts, |s| {
                s.service(name)
                    .map(|r| r.revision)
                    .unwrap_or(s.services_revision)
            })
            .await?;
        let Some(record) = read.snapshot.service(name) else {
            return Ok(read.not_found("service not found"));
        };
        Ok(
            read.conditional(&record.revision.to_string(), record.revision, || {
                render::service_body(record.json(), record.revision, read.now)
            }),
        )
    }

    async fn service_metrics(&self, parts: &Parts, name: &str) -> Result<Answer, QueryError> {
        let read = self
            .reads
            .blocking(parts, |s| {
                s.metrics_of(name).map(|m| m.revision).unwrap_or(s.revision)
            })
            .await?;
        if read.snapshot.service(name).is_none() {
            return Ok(read.not_found("service not found"));
        }
        // No metrics means no running task: never answer 200 with zeros, which would make the
        // autoscaler scale a stopped service up to its minimum.
        let Some(record) = read.snapshot.metrics_of(name) else {
            return Ok(read.not_found("metrics not available"));
        };
        let mut answer = read.conditional(&record.revision.to_string(), record.revision, || {
            render::metrics_body(
                name,
                Some(&record.metrics),
                Some(record.revision),
                false,
                read.now,
            )
        });
        let age = render::metrics_age_seconds(&record.metrics, read.now);
        answer
            .headers_mut()
            .insert(METRICS_AGE_HEADER, HeaderValue::from(age));
        Ok(answer)
    }

    fn cache_stats(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let snapshot = &read.snapshot;
        // The statistics are a function of these three (every full list and clear moves the
        // cache version, and with it last_refresh), so they make an exact validator.
        let etag = format!(
            "{}.{}.{}",
            snapshot.services_revision,
            snapshot.metrics.len(),
            snapshot.cache_version
        );
        read.conditional(&etag, snapshot.revision, || {
            let stats = CacheStats::of(snapshot, self.refresh_interval_sec);
            render::cache_stats_body(&stats, read.now)
        })
    }

    fn events(&self, parts: &Parts) -> Answer {
        let read = self.reads.current(&parts.headers);
        let publisher = &self.state.publisher;
        let etag = format!(
            "events.{}.{}",
            u8::from(publisher.enabled),
            u8::from(publisher.is_connected())
        );
        read.conditional(&etag, read.snapshot.revision, || {
            render::events_body(publisher, read.now)
        })
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
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the client asked for the event stream on `/events`.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// A JSON answer with no validators (commands, errors).
pub(super) fn json_answer(status: StatusCode, body: Bytes) -> Answer {
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
