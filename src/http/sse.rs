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
//! A snapshot or reset event is itself pulled in pieces ([`SnapshotEvent`]), so what a slow
//! client holds is bounded by a piece, not by the number of services.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use pipeline::{Change, Key, Snapshot, Subscription, Timestamp, Update};
use serde::Serialize;
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

/// A rendered piece of a snapshot event ends once it holds at least this many bytes: one
/// HTTP/2 DATA frame at the default frame size.
pub const SNAPSHOT_PIECE_BYTES: usize = 16 * 1024;

/// `event: snapshot` (on connect) or `event: reset` (when history is gone): every service the
/// filter admits, their metrics, and the revision to resume from.
///
/// A `reset`, or a filtered `snapshot`, is given piece by piece as the connection asks for
/// it. hyper takes a body's next chunk before the peer has window for it, so a subscriber that
/// reads slowly holds the chunk it was last given, and a subscriber is reset precisely because
/// it reads slowly. Whole, that chunk was a copy of every service per reset subscriber, each
/// at its own revision and so never shared (about 60 KB each at 100 services, 5 MB at
/// 10,000). A piece is about [`SNAPSHOT_PIECE_BYTES`]; between pieces the event holds the
/// snapshot (shared) and the name it stopped after. The unfiltered opening snapshot is
/// rendered whole once and shared instead ([`StreamContext`]).
pub struct SnapshotEvent {
    snapshot: Arc<Snapshot>,
    event: &'static str,
    reason: Option<String>,
    timestamp: i64,
    next: Part,
    /// Metrics entries written so far (each after the first is preceded by a comma).
    metrics_count: usize,
    /// Services written so far (the body's `services_count` comes after them).
    services_count: usize,
}

impl SnapshotEvent {
    /// The whole event in one chunk, for a rendering that is shared.
    fn whole(mut self, filter: &EventFilter) -> Bytes {
        let mut out = Vec::new();
        while let Some(piece) = self.next_piece(filter) {
            out.extend_from_slice(&piece);
        }
        Bytes::from(out)
    }
}

/// Where rendering a [`SnapshotEvent`] resumes.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// The SSE head and the body up to the metrics' first entry.
    Head,
    /// Metrics entries after this service name (`None`: from the first).
    Metrics(Option<Key>),
    /// Service entries after this name.
    Services(Option<Key>),
    /// `services_count`, `timestamp` and the event's end.
    Tail,
    Done,
}

impl SnapshotEvent {
    pub fn new(
        event: &'static str,
        snapshot: Arc<Snapshot>,
        reason: Option<String>,
        now: Timestamp,
    ) -> Self {
        SnapshotEvent {
            snapshot,
            event,
            reason,
            timestamp: now.epoch_seconds(),
            next: Part::Head,
            metrics_count: 0,
            services_count: 0,
        }
    }

    /// The next piece of the event (whole entries, about [`SNAPSHOT_PIECE_BYTES`]), or `None`
    /// once all of it was given. The body is the compact JSON object
    /// `{"event","metrics","reason"?,"revision","services","services_count","timestamp"}`.
    pub fn next_piece(&mut self, filter: &EventFilter) -> Option<Bytes> {
        let mut out: Vec<u8> = Vec::with_capacity(SNAPSHOT_PIECE_BYTES + 1024);
        while out.len() < SNAPSHOT_PIECE_BYTES {
            match std::mem::replace(&mut self.next, Part::Done) {
                Part::Head => {
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(self.snapshot.revision.to_string().as_bytes());
                    out.extend_from_slice(b"\nevent: ");
                    out.extend_from_slice(self.event.as_bytes());
                    out.extend_from_slice(b"\ndata: {\"event\":");
                    write_json(&mut out, self.event);
                    out.extend_from_slice(b",\"metrics\":{");
                    self.next = Part::Metrics(None);
                }
                Part::Metrics(after) => {
                    let snapshot = self.snapshot.clone();
                    let more = write_entries(
                        &mut out,
                        &snapshot.metrics,
                        after,
                        filter,
                        &mut self.metrics_count,
                        |out, name, record| {
                            write_json(out, &**name);
                            out.push(b':');
                            write_json(out, record.metrics.as_ref());
                        },
                    );
                    self.next = match more {
                        Some(last) => Part::Metrics(Some(last)),
                        None => {
                            out.extend_from_slice(b"},");
                            if let Some(reason) = &self.reason {
                                out.extend_from_slice(b"\"reason\":");
                                write_json(&mut out, reason);
                                out.push(b',');
                            }
                            out.extend_from_slice(b"\"revision\":");
                            out.extend_from_slice(snapshot.revision.to_string().as_bytes());
                            out.extend_from_slice(b",\"services\":[");
                            Part::Services(None)
                        }
                    };
                }
                Part::Services(after) => {
                    let snapshot = self.snapshot.clone();
                    let more = write_entries(
                        &mut out,
                        &snapshot.services,
                        after,
                        filter,
                        &mut self.services_count,
                        |out, _, record| out.extend_from_slice(record.json().get().as_bytes()),
                    );
                    self.next = match more {
                        Some(last) => Part::Services(Some(last)),
                        None => Part::Tail,
                    };
                }
                Part::Tail => {
                    out.extend_from_slice(b"],\"services_count\":");
                    out.extend_from_slice(self.services_count.to_string().as_bytes());
                    out.extend_from_slice(b",\"timestamp\":");
                    out.extend_from_slice(self.timestamp.to_string().as_bytes());
                    out.extend_from_slice(b"}\n\n");
                    self.next = Part::Done;
                }
                Part::Done => break,
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// Write the entries of `map` after `after` that `filter` admits, comma-separated (`written`
/// counts them across pieces), until `out` holds a piece. Returns the name to resume after
/// when entries are left, `None` once the map is done.
fn write_entries<V: Clone>(
    out: &mut Vec<u8>,
    map: &imbl::OrdMap<Key, V>,
    after: Option<Key>,
    filter: &EventFilter,
    written: &mut usize,
    write: impl Fn(&mut Vec<u8>, &Key, &V),
) -> Option<Key> {
    let mut entries = entries_after(map, after.as_ref()).peekable();
    while let Some((name, value)) = entries.next() {
        if filter.admits_service(name) {
            if *written > 0 {
                out.push(b',');
            }
            write(out, name, value);
            *written += 1;
        }
        if out.len() >= SNAPSHOT_PIECE_BYTES && entries.peek().is_some() {
            return Some(name.clone());
        }
    }
    None
}

/// The entries of a map keyed by service name after `after` (all of them for `None`).
fn entries_after<'a, V: Clone>(
    map: &'a imbl::OrdMap<Key, V>,
    after: Option<&Key>,
) -> impl Iterator<Item = (&'a Key, &'a V)> {
    let lower = match after {
        Some(name) => Bound::Excluded(&**name),
        None => Bound::Unbounded,
    };
    map.range::<_, str>((lower, Bound::Unbounded))
}

/// Append `value` as compact JSON. Writing plain data (strings, numbers, maps keyed by
/// strings) into a vector cannot fail; should that ever change, `null` keeps the JSON whole.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let at = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(at);
        out.extend_from_slice(b"null");
    }
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

/// What identifies a shared rendering of the opening snapshot: the revision, and the second of
/// its `timestamp` field.
#[derive(Debug, Clone, PartialEq)]
pub struct OpeningKey {
    revision: u64,
    second: i64,
}

/// What every stream shares: settings, the opening snapshot's rendering, measurements and the
/// shutdown signal. One pointer per subscriber instead of a copy of each.
pub struct StreamContext {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub metrics: Arc<HttpMetrics>,
    pub shutdown: CancellationToken,
    /// The unfiltered opening snapshot: subscribers connecting at the same revision (clients
    /// tend to connect together) share one rendering instead of each holding its own.
    opening: BodyCache<OpeningKey>,
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
            opening: BodyCache::default(),
        }
    }

    /// The unfiltered `snapshot` event a stream opens with, whole and shared.
    fn opening_snapshot(&self, snapshot: Arc<Snapshot>) -> Bytes {
        let now = Timestamp::now();
        let key = OpeningKey {
            revision: snapshot.revision,
            second: now.epoch_seconds(),
        };
        self.opening.get_or_render(key, || {
            SnapshotEvent::new("snapshot", snapshot, None, now).whole(&EventFilter::default())
        })
    }
}

/// One subscriber's stream state.
pub struct EventStream {
    queue: VecDeque<Bytes>,
    /// A snapshot or reset event being given piece by piece; it follows what is queued.
    rendering: Option<SnapshotEvent>,
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
            rendering: None,
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
            let context = stream.context.clone();
            context.metrics.sse_events.fetch_add(1, Ordering::Relaxed);
            if stream.filter.services.is_none() {
                stream.push_event([context.opening_snapshot(snapshot)]);
            } else {
                // A subset of services: nobody to share the rendering with.
                stream.push_snapshot(SnapshotEvent::new(
                    "snapshot",
                    snapshot,
                    None,
                    Timestamp::now(),
                ));
            }
        }
        stream
    }

    /// Give a snapshot or reset event next, after what is queued (only ever the `retry:`
    /// field: nothing is produced while a queue or a rendering is pending).
    fn push_snapshot(&mut self, event: SnapshotEvent) {
        self.push_event([]);
        self.rendering = Some(event);
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
            if let Some(event) = &mut self.rendering {
                match event.next_piece(&self.filter) {
                    Some(piece) => return Some(piece),
                    None => self.rendering = None,
                }
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
                    self.push_snapshot(SnapshotEvent::new(
                        "reset",
                        snapshot,
                        Some(reason.to_string()),
                        Timestamp::now(),
                    ));
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

    /// The event as one serde rendering of the whole body: what the pieces must add up to.
    fn whole_event(
        event: &'static str,
        snapshot: &Snapshot,
        filter: &EventFilter,
        reason: Option<&str>,
        now: Timestamp,
    ) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            event: &'static str,
            metrics: std::collections::BTreeMap<&'a str, &'a pipeline::Metrics>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            revision: u64,
            services: Vec<&'a serde_json::value::RawValue>,
            services_count: usize,
            timestamp: i64,
        }
        let services: Vec<_> = snapshot
            .services
            .iter()
            .filter(|(name, _)| filter.admits_service(name))
            .map(|(_, record)| record.json())
            .collect();
        let body = Body {
            event,
            metrics: snapshot
                .metrics
                .iter()
                .filter(|(name, _)| filter.admits_service(name))
                .map(|(name, record)| (&**name, record.metrics.as_ref()))
                .collect(),
            reason,
            revision: snapshot.revision,
            services_count: services.len(),
            services,
            timestamp: now.epoch_seconds(),
        };
        let data = serde_json::to_string(&body).unwrap();
        String::from_utf8(frame(Some(snapshot.revision), event, &data).to_vec()).unwrap()
    }

    /// A snapshot of `n` labelled services, every one with metrics; names with characters
    /// JSON escapes.
    fn snapshot_of(n: usize) -> Arc<Snapshot> {
        let folder = pipeline::Folder::default();
        let mut snapshot = Snapshot::empty(40, 64, Timestamp(0));
        for i in 0..n {
            let spec = pipeline::ServiceSpec {
                id: format!("id{i}"),
                name: format!("svc-{i:05}\"q\\"),
                labels: [
                    ("autoscaler.enabled".to_owned(), "true".to_owned()),
                    ("autoscaler.note".to_owned(), "x".repeat(i % 300)),
                ]
                .into(),
                mode: pipeline::ServiceMode::Replicated(2),
                created_at: "2024-01-15T10:30:00Z".into(),
                updated_at: "2024-01-15T10:30:00Z".into(),
                version: 1,
                running_tasks: Some(2),
                desired_tasks: Some(2),
            };
            let name = spec.name.clone();
            let id = spec.id.clone();
            snapshot = folder
                .fold(&snapshot, &pipeline::Input::Upsert(spec), Timestamp(1))
                .snapshot;
            let metrics = pipeline::Metrics {
                cpu_pct: i as f64 / 7.0,
                memory_bytes: 1e6 + i as f64,
                memory_pct: (i % 2 == 0).then_some(12.5),
                sampled_at_ms: 1_000,
                source: "cgroup".into(),
                tasks_running: 2,
                tasks_sampled: 2,
                timestamp: 1,
                unsampled_tasks: Vec::new(),
                window_seconds: 1,
            };
            snapshot = folder
                .fold(
                    &snapshot,
                    &pipeline::Input::Metrics {
                        service_id: id,
                        metrics: Some(metrics),
                    },
                    Timestamp(1),
                )
                .snapshot;
            assert!(snapshot.services.contains_key(name.as_str()));
        }
        Arc::new(snapshot)
    }

    #[test]
    fn snapshot_events_in_pieces_add_up_to_the_whole_event() {
        let now = Timestamp(9_000);
        let web = EventFilter {
            services: Some(["svc-00007\"q\\".to_owned(), "absent".to_owned()].into()),
            events: None,
        };
        for n in [0, 1, 30, 400] {
            let snapshot = snapshot_of(n);
            assert_eq!(snapshot.metrics.len(), n);
            for (filter, reason) in [
                (EventFilter::default(), None),
                (EventFilter::default(), Some("history \"gone\"")),
                (web.clone(), Some("lagged")),
            ] {
                let event = if reason.is_some() {
                    "reset"
                } else {
                    "snapshot"
                };
                let mut rendering =
                    SnapshotEvent::new(event, snapshot.clone(), reason.map(str::to_owned), now);
                let mut pieces = Vec::new();
                while let Some(piece) = rendering.next_piece(&filter) {
                    pieces.push(piece);
                }
                assert_eq!(rendering.next_piece(&filter), None);
                let joined: Vec<u8> = pieces.concat();
                let expected = whole_event(event, &snapshot, &filter, reason, now);
                assert_eq!(String::from_utf8(joined).unwrap(), expected, "{n} services");
                // No piece much beyond its size: at most one entry over.
                for piece in &pieces {
                    assert!(piece.len() < SNAPSHOT_PIECE_BYTES + 2048, "{}", piece.len());
                }
                if n == 400 && filter.services.is_none() {
                    assert!(pieces.len() >= 10, "{} pieces", pieces.len());
                }
            }
        }
    }

    #[test]
    fn unfiltered_opening_snapshots_share_one_rendering_per_revision() {
        let context = StreamContext::new(
            Duration::from_secs(15),
            Duration::from_secs(2),
            Arc::new(HttpMetrics::default()),
            CancellationToken::new(),
        );
        let snapshot = snapshot_of(30);
        let a = context.opening_snapshot(snapshot.clone());
        let b = context.opening_snapshot(snapshot.clone());
        // Shared unless the second crossed into the next second of the timestamp field.
        assert!(a.as_ptr() == b.as_ptr() || a != b);
        let text = std::str::from_utf8(&a).unwrap();
        let second: i64 = text
            .rsplit("\"timestamp\":")
            .next()
            .unwrap()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap();
        let expected = whole_event(
            "snapshot",
            &snapshot,
            &EventFilter::default(),
            None,
            Timestamp(second * 1000),
        );
        assert_eq!(text, expected);
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
