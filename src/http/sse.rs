//! The live event stream (server-sent events): a snapshot, then every change, on one
//! connection; resumable from the change log by `Last-Event-ID` (or `?since=`).
//!
//! Which changes a stream carries is its [`EventFilter`]'s decision; its doc says why
//! `services.updated` is left out unless asked for. Event ids are change seqs, so a stream
//! skips the seqs its filter leaves out; a resuming client gets exactly the missed changes its
//! filter admits, in order.
//!
//! The stream is pulled by the connection: a frame is produced only when hyper asks for the
//! next one, which it does only while the client reads (HTTP/2 flow control, HTTP/1.1 write
//! buffer). A client that stops reading therefore holds no queue of its own: its
//! [`Subscription`] falls behind the registry's bounded broadcast, is caught up from the
//! bounded change log, or receives `event: reset` with a full snapshot. Nobody else waits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use pipeline::{Change, Metrics, Snapshot, Subscription, Timestamp, Update};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::cache::BodyCache;
use super::query::EventFilter;
use crate::telemetry::HttpMetrics;

/// One SSE event: `id:`, `event:` and one `data:` line per line of `data`.
pub fn frame(id: Option<u64>, event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    push_event_line(&mut out, event);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Field values end at a line break, so one in an event name (a service name is part of a
/// metrics routing key) would let it forge fields; such characters become spaces.
fn push_event_line(out: &mut String, event: &str) {
    out.push_str("event: ");
    out.extend(
        event
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    out.push('\n');
}

/// The `retry:` field line: tells the client how long to wait before reconnecting. It is sent
/// inside the stream's first event, never as a block of its own: some clients (httpx-sse, for
/// one) dispatch a block holding only `retry:` as an empty message.
pub fn retry_field(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n", retry.as_millis()))
}

/// A comment line, which clients ignore and proxies see as traffic.
pub fn heartbeat_frame() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

/// A change's SSE `event:` name: the body's own `event` field, never the routing key.
///
/// The two differ only for metrics: the routing key `metrics.<service>` names the service, so
/// a browser's `EventSource` (which dispatches by exact name) would need one listener per
/// service. The body's event, `metrics.updated`, is one of a fixed set, and the body still
/// names the service (`service_name`). Filters (`?events=`) keep matching routing keys.
pub fn event_name(change: &Change) -> &'static str {
    change.kind.event()
}

/// Bodies up to this size are copied into one chunk with their head; larger ones (a
/// `services.updated` carries every service) are sent as the shared rendering itself.
///
/// Every chunk is a frame of its own on the connection: an HTTP/2 DATA frame, whose sending
/// takes the connection's stream lock (reserve capacity, send, check for a reset), or an
/// HTTP/1.1 chunk with its own size line. With thousands of subscribers that per-frame cost,
/// paid three times per event, bounded delivery more than copying a few hundred bytes does.
pub const SHARED_BODY_MIN: usize = 16 * 1024;

/// A change as SSE. The head (`id:`, `event:`, `data: `) is built per subscriber; a body up
/// to [`SHARED_BODY_MIN`] is copied behind it into one chunk, a larger one stays the change's
/// own shared rendering (fanning it out copies no body bytes) between the head and the
/// closing blank line. Unused places are empty chunks, which the stream skips.
pub fn change_chunks(change: &Change) -> [Bytes; 3] {
    let json = change.json();
    if json.contains('\n') {
        // Never produced by serde_json's compact writer; handled rather than assumed.
        return [
            frame(Some(change.seq), event_name(change), &json),
            Bytes::new(),
            Bytes::new(),
        ];
    }
    let mut head = String::with_capacity(64);
    head.push_str("id: ");
    head.push_str(&change.seq.to_string());
    head.push('\n');
    push_event_line(&mut head, event_name(change));
    head.push_str("data: ");
    if json.len() < SHARED_BODY_MIN {
        let mut block = Vec::with_capacity(head.len() + json.len() + 2);
        block.extend_from_slice(head.as_bytes());
        block.extend_from_slice(json.as_bytes());
        block.extend_from_slice(b"\n\n");
        return [Bytes::from(block), Bytes::new(), Bytes::new()];
    }
    [
        Bytes::from(head),
        Bytes::from_owner(SharedJson(json)),
        Bytes::from_static(b"\n\n"),
    ]
}

/// A change's shared JSON, viewed as bytes without copying.
struct SharedJson(Arc<str>);

impl AsRef<[u8]> for SharedJson {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// `event: snapshot` (on connect) or `event: reset` (when history is gone): every service the
/// filter admits, their metrics, and the revision to resume from.
pub fn snapshot_frame(
    event: &'static str,
    snapshot: &Snapshot,
    filter: &EventFilter,
    reason: Option<&str>,
    now: Timestamp,
) -> Bytes {
    #[derive(Serialize)]
    struct SnapshotBody<'a> {
        event: &'static str,
        metrics: BTreeMap<&'a str, &'a Metrics>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        revision: u64,
        services: Vec<&'a RawValue>,
        services_count: usize,
        timestamp: i64,
    }
    let services: Vec<&RawValue> = snapshot
        .services
        .iter()
        .filter(|(name, _)| filter.admits_service(name))
        .map(|(_, record)| record.json())
        .collect();
    let metrics = snapshot
        .metrics
        .iter()
        .filter(|(name, _)| filter.admits_service(name))
        .map(|(name, record)| (&**name, record.metrics.as_ref()))
        .collect();
    let body = SnapshotBody {
        event,
        metrics,
        reason,
        revision: snapshot.revision,
        services_count: services.len(),
        services,
        timestamp: now.epoch_seconds(),
    };
    let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
    frame(Some(snapshot.revision), event, &data)
}

/// The last event of a stream the server ends: clients learn it was deliberate, and the id
/// tells them where to resume.
pub fn shutdown_frame(revision: u64, now: Timestamp) -> Bytes {
    let data = format!(
        "{{\"event\":\"shutdown\",\"reason\":\"server shutting down\",\"revision\":{revision},\"timestamp\":{}}}",
        now.epoch_seconds()
    );
    frame(Some(revision), "shutdown", &data)
}

/// Where a new stream starts.
pub enum Start {
    /// A fresh client: the snapshot, then changes after it.
    Snapshot(Arc<Snapshot>),
    /// A resuming client that last saw this seq: whatever the subscription replays (the
    /// missed changes, or a reset).
    Resume(u64),
}

/// What identifies a rendered snapshot or reset frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameKey {
    event: &'static str,
    revision: u64,
    reason: Option<String>,
    second: i64,
}

/// What every stream shares: settings, the cache of rendered snapshot frames, measurements
/// and the shutdown signal. One pointer per subscriber instead of a copy of each.
pub struct StreamContext {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub metrics: Arc<HttpMetrics>,
    pub shutdown: CancellationToken,
    /// Unfiltered snapshot and reset frames: every subscriber that connects (or is reset) at
    /// the same revision shares one rendering instead of each holding its own copy.
    frames: BodyCache<FrameKey>,
}

impl StreamContext {
    pub fn new(
        heartbeat: Duration,
        retry: Duration,
        metrics: Arc<HttpMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        StreamContext {
            heartbeat,
            retry,
            metrics,
            shutdown,
            frames: BodyCache::default(),
        }
    }

    fn snapshot_frame(
        &self,
        event: &'static str,
        snapshot: &Snapshot,
        filter: &EventFilter,
        reason: Option<&str>,
    ) -> Bytes {
        let now = Timestamp::now();
        if filter.services.is_some() {
            return snapshot_frame(event, snapshot, filter, reason, now);
        }
        let key = FrameKey {
            event,
            revision: snapshot.revision,
            reason: reason.map(str::to_owned),
            second: now.epoch_seconds(),
        };
        self.frames
            .get_or_render(key, || snapshot_frame(event, snapshot, filter, reason, now))
    }
}

/// One subscriber's stream state.
pub struct EventStream {
    queue: VecDeque<Bytes>,
    subscription: Subscription,
    filter: EventFilter,
    heartbeat: Interval,
    context: Arc<StreamContext>,
    /// The seq of the last change delivered or skipped by the filter (or the revision of the
    /// last snapshot): where this client would resume.
    position: u64,
    /// Whether a reset now means the subscriber fell behind (rather than resumed from an id
    /// the log no longer has, which is reported by the first update).
    live: bool,
    /// Whether the `retry:` field still has to go out, in front of the first event.
    retry_pending: bool,
    finished: bool,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.context
            .metrics
            .sse_subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventStream {
    pub fn new(
        start: Start,
        subscription: Subscription,
        filter: EventFilter,
        context: Arc<StreamContext>,
    ) -> Self {
        let metrics = &context.metrics;
        metrics.sse_subscribers.fetch_add(1, Ordering::Relaxed);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + context.heartbeat, context.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (live, position) = match &start {
            Start::Snapshot(snapshot) => (true, snapshot.revision),
            Start::Resume(seq) => (false, *seq),
        };
        let mut stream = EventStream {
            queue: VecDeque::with_capacity(4),
            subscription,
            filter,
            heartbeat,
            context,
            position,
            live,
            retry_pending: true,
            finished: false,
        };
        if let Start::Snapshot(snapshot) = start {
            let context = &stream.context;
            context.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
            let frame = context.snapshot_frame("snapshot", &snapshot, &stream.filter, None);
            stream.push_event([frame]);
        }
        stream
    }

    /// Queue one event (its chunks form one block); the stream's first event also carries the
    /// `retry:` field, so no block before it lacks an event.
    fn push_event(&mut self, chunks: impl IntoIterator<Item = Bytes>) {
        if self.retry_pending {
            self.retry_pending = false;
            self.queue.push_back(retry_field(self.context.retry));
        }
        self.queue.extend(chunks);
    }

    /// The stream as the body of a response.
    pub fn into_stream(self) -> impl Stream<Item = Bytes> + Send + 'static {
        futures::stream::unfold(self, |mut stream| async move {
            let chunk = stream.next_chunk().await?;
            Some((chunk, stream))
        })
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                if chunk.is_empty() {
                    continue;
                }
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            self.produce().await;
        }
    }

    /// Wait for the next thing to send and queue it.
    async fn produce(&mut self) {
        let context = self.context.clone();
        tokio::select! {
            biased;
            _ = context.shutdown.cancelled() => {
                self.finished = true;
                self.push_event([shutdown_frame(self.position, Timestamp::now())]);
            }
            update = self.subscription.next() => match update {
                None => {
                    // The registry stopped: the process is going down.
                    self.finished = true;
                    self.push_event([shutdown_frame(self.position, Timestamp::now())]);
                }
                Some(Update::Change(change)) => {
                    self.live = true;
                    self.position = change.seq;
                    if self.filter.admits(&change.routing_key(), change.kind.service_name()) {
                        self.push_event(change_chunks(&change));
                        let metrics = &context.metrics;
                        metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                        let age_ms = Timestamp::now().0.saturating_sub(change.at.0).max(0);
                        metrics
                            .delivery
                            .observe(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)));
                    }
                }
                Some(Update::Reset { snapshot, reason }) => {
                    let metrics = &context.metrics;
                    if self.live {
                        metrics.sse_lagged.fetch_add(1, Ordering::Relaxed);
                    }
                    metrics.sse_events.fetch_add(1, Ordering::Relaxed);
                    self.live = true;
                    self.position = snapshot.revision;
                    let reason = reason.to_string();
                    let frame =
                        context.snapshot_frame("reset", &snapshot, &self.filter, Some(&reason));
                    self.push_event([frame]);
                }
            },
            _ = self.heartbeat.tick() => {
                self.queue.push_back(heartbeat_frame());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_sse_grammar() {
        let f = frame(Some(7), "service.added", "{\"a\":1}");
        assert_eq!(&f[..], b"id: 7\nevent: service.added\ndata: {\"a\":1}\n\n");
        let multi = frame(None, "x", "one\r\ntwo");
        assert_eq!(&multi[..], b"event: x\ndata: one\ndata: two\n\n");
        let forged = frame(None, "metrics.a\nid: 1", "{}");
        assert_eq!(&forged[..], b"event: metrics.a id: 1\ndata: {}\n\n");
        assert_eq!(&retry_field(Duration::from_secs(2))[..], b"retry: 2000\n");
        assert!(heartbeat_frame().starts_with(b":"));
    }

    #[test]
    fn snapshot_frames_respect_the_service_filter() {
        let snapshot = Snapshot::empty(40, 8, Timestamp(0));
        let f = snapshot_frame(
            "reset",
            &snapshot,
            &EventFilter::default(),
            Some("gone"),
            Timestamp(9_000),
        );
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.starts_with("id: 40\nevent: reset\ndata: {"), "{text}");
        let data: serde_json::Value =
            serde_json::from_str(text.lines().nth(2).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["reason"], "gone");
        assert_eq!(data["revision"], 40);
        assert_eq!(data["services_count"], 0);
        assert_eq!(data["timestamp"], 9);
    }

    #[test]
    fn unfiltered_snapshot_frames_are_rendered_once_per_revision() {
        let context = StreamContext::new(
            Duration::from_secs(15),
            Duration::from_secs(2),
            Arc::new(HttpMetrics::default()),
            CancellationToken::new(),
        );
        let snapshot = Snapshot::empty(40, 8, Timestamp(0));
        let all = EventFilter::default();
        let a = context.snapshot_frame("snapshot", &snapshot, &all, None);
        let b = context.snapshot_frame("snapshot", &snapshot, &all, None);
        // Shared unless the second crossed into the next second of the timestamp field.
        assert!(a.as_ptr() == b.as_ptr() || a != b);
        let reset = context.snapshot_frame("reset", &snapshot, &all, Some("gone"));
        assert!(reset.starts_with(b"id: 40\nevent: reset\n"));
        let some = EventFilter {
            services: Some(["web".to_owned()].into()),
            events: None,
        };
        let filtered = context.snapshot_frame("snapshot", &snapshot, &some, None);
        assert_ne!(filtered.as_ptr(), a.as_ptr());
    }

    #[test]
    fn a_metrics_change_is_named_by_its_body_event_not_its_routing_key() {
        let change = Change::new(
            5,
            5,
            Timestamp(0),
            pipeline::ChangeKind::MetricsUpdated {
                service_name: "web".to_owned(),
                metrics: None,
            },
        );
        assert_eq!(change.routing_key(), "metrics.web");
        let bytes: Vec<u8> = change_chunks(&change).concat();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("id: 5\nevent: metrics.updated\ndata: {"),
            "{text}"
        );
        assert!(text.contains("\"service_name\":\"web\""), "{text}");
    }

    #[test]
    fn a_small_change_is_one_chunk_and_a_large_one_shares_its_body() {
        let small = Change::new(
            6,
            6,
            Timestamp(0),
            pipeline::ChangeKind::MetricsUpdated {
                service_name: "web".to_owned(),
                metrics: None,
            },
        );
        let chunks = change_chunks(&small);
        let expected = format!("id: 6\nevent: metrics.updated\ndata: {}\n\n", small.json());
        assert_eq!(&chunks[0][..], expected.as_bytes());
        assert!(chunks[1].is_empty() && chunks[2].is_empty());

        // A name long enough to push the body past the copy limit.
        let large = Change::new(
            7,
            7,
            Timestamp(0),
            pipeline::ChangeKind::MetricsUpdated {
                service_name: "w".repeat(SHARED_BODY_MIN),
                metrics: None,
            },
        );
        let chunks = change_chunks(&large);
        assert!(chunks[0].starts_with(b"id: 7\nevent: metrics.updated\ndata: "));
        assert_eq!(
            chunks[1].as_ptr(),
            large.json().as_ptr(),
            "the body is the change's own rendering, not a copy"
        );
        assert_eq!(&chunks[2][..], b"\n\n");
    }

    #[test]
    fn shutdown_frame_names_the_resume_point() {
        let f = shutdown_frame(12, Timestamp(0));
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.starts_with("id: 12\nevent: shutdown\n"), "{text}");
        let data = text.lines().nth(2).unwrap().strip_prefix("data: ").unwrap();
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["revision"], 12);
    }
}
