//! The one path every read endpoint takes: settle on a snapshot (at once, or after a blocking
//! wait `?index=N&wait=`), fix the moment and the freshness once, then answer `304` when the
//! client's `If-None-Match` names the resource's entity tag, or the body otherwise; every
//! answer carries the `x-registry-*` revision and staleness headers.
//!
//! An endpoint names only what is its own: which number a blocking read waits on, the entity
//! tag and index of its resource, and how to render the body (called only when it is sent).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use pipeline::{Registry, Snapshot, Timestamp};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::ApiBody;
use super::handler::{json_answer, json_error, Answer};
use super::query::{self, Blocking, QueryError};
use super::render::Freshness;

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

/// Where reads get their snapshot from, and what a blocking read waits on.
pub struct Reads {
    registry: Registry,
    /// The registry's latest revision: blocking reads wait on this one cheap signal instead of
    /// each holding a registry subscription.
    revisions: watch::Receiver<u64>,
    shutdown: CancellationToken,
    stale_after_ms: i64,
}

impl Reads {
    pub fn new(
        registry: Registry,
        revisions: watch::Receiver<u64>,
        shutdown: CancellationToken,
        stale_after_ms: i64,
    ) -> Self {
        Reads {
            registry,
            revisions,
            shutdown,
            stale_after_ms,
        }
    }

    /// A read of the current snapshot.
    pub fn current<'r>(&self, request: &'r HeaderMap) -> ReadContext<'r> {
        ReadContext::new(self.registry.snapshot(), request, self.stale_after_ms)
    }

    /// A read that honours `?index=N&wait=`: it waits until `resource(snapshot)` passes `N`.
    pub async fn blocking<'r>(
        &self,
        request: &'r Parts,
        resource: impl Fn(&Snapshot) -> u64,
    ) -> Result<ReadContext<'r>, QueryError> {
        let blocking = query::parse_blocking(request.uri.query())?;
        let snapshot = self.settle(blocking, resource).await;
        Ok(ReadContext::new(
            snapshot,
            &request.headers,
            self.stale_after_ms,
        ))
    }

    /// Wait, for a blocking read, until `resource(snapshot)` passes the client's index, the
    /// wait is over, or the server shuts down; then return the snapshot to answer from.
    async fn settle(
        &self,
        blocking: Option<Blocking>,
        resource: impl Fn(&Snapshot) -> u64,
    ) -> Arc<Snapshot> {
        let registry = &self.registry;
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
}

/// One read request's view: the snapshot it answers from, loaded once, the moment it is
/// answered at, and how fresh the data was then. Every header and body of the answer is
/// derived from these, so they agree with each other.
pub struct ReadContext<'r> {
    pub snapshot: Arc<Snapshot>,
    pub now: Timestamp,
    pub freshness: Freshness,
    /// The request's headers, for `If-None-Match`.
    request: &'r HeaderMap,
}

impl<'r> ReadContext<'r> {
    fn new(snapshot: Arc<Snapshot>, request: &'r HeaderMap, stale_after_ms: i64) -> Self {
        let now = Timestamp::now();
        let freshness = Freshness::of(&snapshot, now, stale_after_ms);
        ReadContext {
            snapshot,
            now,
            freshness,
            request,
        }
    }

    /// `304 Not Modified` when the client already holds entity tag `etag`; otherwise `200`
    /// with the body `render` makes. `index` is the resource's own revision.
    pub fn conditional(&self, etag: &str, index: u64, render: impl FnOnce() -> Bytes) -> Answer {
        if not_modified(self.request, etag) {
            let mut answer = Response::new(ApiBody::empty());
            *answer.status_mut() = StatusCode::NOT_MODIFIED;
            self.validators(answer.headers_mut(), etag, index);
            return answer;
        }
        self.unconditional(etag, index, render())
    }

    /// `200` with validators, whatever the client holds.
    pub fn unconditional(&self, etag: &str, index: u64, body: Bytes) -> Answer {
        let mut answer = json_answer(StatusCode::OK, body);
        self.validators(answer.headers_mut(), etag, index);
        answer
    }

    /// Probes and /metrics describe the present moment, so caches must not keep them.
    pub fn probe(&self, status: StatusCode, body: Bytes) -> Answer {
        let mut answer = json_answer(status, body);
        let headers = answer.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.freshness_headers(headers);
        answer
    }

    /// `404` for a resource the snapshot does not hold, still saying how fresh that is.
    pub fn not_found(&self, message: &str) -> Answer {
        let mut answer = json_error(StatusCode::NOT_FOUND, message);
        self.freshness_headers(answer.headers_mut());
        answer
    }

    fn validators(&self, headers: &mut HeaderMap, etag: &str, index: u64) {
        if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{etag}\"")) {
            headers.insert(header::ETAG, etag);
        }
        headers.insert(
            HeaderName::from_static(INDEX_HEADER),
            HeaderValue::from(index),
        );
        self.freshness_headers(headers);
    }

    /// Revision and staleness headers, carried by every read.
    fn freshness_headers(&self, headers: &mut HeaderMap) {
        let freshness = &self.freshness;
        headers.insert(
            HeaderName::from_static(REVISION_HEADER),
            HeaderValue::from(self.snapshot.revision),
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
}
