//! The listener, the routes and the streaming answers (events, streamed stats).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::clock::{parse_event_time, unix_nanos_now};
use crate::filters::Filters;
use crate::world::{SimEvent, SERVICE_ID_LABEL, SERVICE_NAME_LABEL};
use crate::{Fault, Faults, Shared, SimError};

type Body = BoxBody<Bytes, Infallible>;

/// The API version the simulated engine speaks (dockerd 20.10's, the test bed's).
pub const API_VERSION: &str = "1.41";
const MIN_API_VERSION: &str = "1.12";
/// What a worker's engine answers to swarm calls.
const NOT_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
/// How often a streamed stats answer writes a reading (dockerd's collection tick).
const STATS_TICK: Duration = Duration::from_secs(1);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Bind `listen`, then accept connections until shutdown. Returns the usable URL.
pub(crate) async fn serve(
    listen: &str,
    shared: Arc<Shared>,
) -> Result<(String, JoinHandle<()>), SimError> {
    let failed = |source| SimError::Listen {
        address: listen.to_owned(),
        source,
    };
    let (listener, url) = if let Some(addr) = listen.strip_prefix("tcp://") {
        let listener = TcpListener::bind(addr).await.map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        (Listener::Tcp(listener), format!("tcp://{local}"))
    } else if let Some(path) = listen.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(SimError::BadAddress(listen.to_owned()));
        }
        let listener = UnixListener::bind(path).map_err(failed)?;
        (
            Listener::Unix(listener, PathBuf::from(path)),
            format!("unix://{path}"),
        )
    } else {
        return Err(SimError::BadAddress(listen.to_owned()));
    };
    let churn = tokio::spawn(run_churn(shared.clone()));
    let task = tokio::spawn(async move {
        accept(listener, shared).await;
        let _ = churn.await;
    });
    Ok((url, task))
}

async fn accept(listener: Listener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = next_connection(&listener) => accepted,
        };
        match accepted {
            Ok(Connection::Tcp(stream)) => spawn_connection(stream, shared.clone()),
            Ok(Connection::Unix(stream)) => spawn_connection(stream, shared.clone()),
            // Out of file descriptors and the like: pause rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn next_connection(listener: &Listener) -> std::io::Result<Connection> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            Connection::Tcp(s)
        }),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Connection::Unix(s)),
    }
}

fn spawn_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(|request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, request).await) }
        });
        let builder = Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = shared.shutdown.cancelled() => {}
            _ = connection => {}
        }
    });
}

/// Steps of churn at the set rate, on a schedule (several steps per wake-up at high rates).
async fn run_churn(shared: Arc<Shared>) {
    let mut rate = shared.churn.subscribe();
    loop {
        let per_sec = *rate.borrow_and_update();
        if per_sec <= 0.0 {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                changed = rate.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let period = Duration::from_secs_f64(1.0 / per_sec);
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                changed = rate.changed() => {
                    if changed.is_err() { return }
                    break;
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let now = tokio::time::Instant::now();
            // A late wake-up catches up, but never by more than a second of steps.
            if now.saturating_duration_since(next) > Duration::from_secs(1) {
                next = now;
            }
            let mut world = shared.world();
            while next <= now {
                world.churn();
                next += period;
            }
        }
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn json_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    full(status, "application/json", body)
}

fn error_reply(status: StatusCode, message: &str) -> Response<Body> {
    json_reply(status, json!({ "message": message }).to_string())
}

/// The query string as pairs, decoded.
fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> bool {
    match query.get(name).map(String::as_str) {
        None => default,
        Some(v) => matches!(v, "1" | "true" | "True" | "TRUE"),
    }
}

/// Split `/v1.41/services` into the version and the route; `None` for no prefix.
fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let (version, route) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let numeric = version
            .split_once('.')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        if numeric {
            return (Some(version), route);
        }
    }
    (None, path)
}

fn version_number(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The route's name, for request counts.
fn route_name(method: &Method, segments: &[&str]) -> &'static str {
    match (method, segments) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => "ping",
        (&Method::GET, ["version"]) => "version",
        (&Method::GET, ["info"]) => "info",
        (&Method::GET, ["services"]) => "services",
        (&Method::GET, ["services", _]) => "service_inspect",
        (&Method::GET, ["tasks"]) => "tasks",
        (&Method::GET, ["nodes"]) => "nodes",
        (&Method::GET, ["containers", "json"]) => "containers",
        (&Method::GET, ["containers", _, "json"]) => "container_inspect",
        (&Method::GET, ["containers", _, "stats"]) => "container_stats",
        (&Method::GET, ["events"]) => "events",
        (&Method::GET, ["_sim", "stats"]) => "sim_stats",
        (&Method::POST, ["_sim", "churn"]) => "sim_churn",
        (&Method::POST, ["_sim", "fault"]) => "sim_fault",
        (&Method::POST, ["_sim", "faults", "clear"]) => "sim_faults_clear",
        _ => "unknown",
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let (version, route) = split_version(&path);
    let segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let name = route_name(request.method(), &segments);
    shared.count(name);
    if name.starts_with("sim_") {
        return control(&shared, name, request).await;
    }
    let faults = shared.faults();
    if let Some(delay) = faults.delay_ms() {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let max_version = faults.reported_version().unwrap_or(API_VERSION);
    if let (Some(asked), Some(max)) = (
        version.and_then(version_number),
        version_number(max_version),
    ) {
        if asked > max {
            let message = format!(
                "client version {} is too new. Maximum supported API version is {max_version}",
                version.unwrap_or_default()
            );
            return error_reply(StatusCode::BAD_REQUEST, &message);
        }
    }
    let swarm_call = matches!(name, "services" | "service_inspect" | "tasks" | "nodes");
    if swarm_call && faults.is_on("not_manager") {
        return error_reply(StatusCode::SERVICE_UNAVAILABLE, NOT_MANAGER);
    }
    let list = matches!(name, "services" | "tasks" | "nodes" | "containers");
    if list && faults.malformed_lists() {
        return json_reply(StatusCode::OK, "[{\"ID\":\"broken\",\"Spec\":{\"Name\":");
    }
    let query = query(&request);
    let filters = match Filters::parse(query.get("filters").map_or("", String::as_str)) {
        Ok(f) => f,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let listed = |result: Result<String, crate::FilterError>| match result {
        Ok(body) => json_reply(StatusCode::OK, body),
        Err(e) => error_reply(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match (name, segments.as_slice()) {
        ("ping", _) => {
            let mut response = full(StatusCode::OK, "text/plain; charset=utf-8", "OK");
            if let Ok(v) = header::HeaderValue::from_str(max_version) {
                response.headers_mut().insert("api-version", v);
            }
            response.headers_mut().insert(
                "server",
                header::HeaderValue::from_static("Docker/20.10.24-sim (linux)"),
            );
            response
        }
        ("version", _) => json_reply(StatusCode::OK, version_doc(max_version).to_string()),
        ("info", _) => json_reply(StatusCode::OK, info_doc(&shared, &faults).to_string()),
        ("services", _) => listed(
            shared
                .world()
                .services_json(&filters, flag(&query, "status", false)),
        ),
        ("service_inspect", [_, id]) => match shared.world().service_json(id) {
            Some(doc) => json_reply(StatusCode::OK, doc),
            None => error_reply(StatusCode::NOT_FOUND, &format!("service {id} not found")),
        },
        ("tasks", _) => listed(shared.world().tasks_json(&filters)),
        ("nodes", _) => json_reply(StatusCode::OK, nodes_doc(&shared).to_string()),
        ("containers", _) => listed(shared.world().containers_json(&filters)),
        ("container_inspect", [_, id, _]) => match shared.world().container_inspect_json(id) {
            Some(doc) => json_reply(StatusCode::OK, doc),
            None => no_such_container(id),
        },
        ("container_stats", [_, id, _]) => stats(&shared, id, &query),
        ("events", _) => events(&shared, &query, filters),
        _ => error_reply(StatusCode::NOT_FOUND, "page not found"),
    }
}

fn no_such_container(id: &str) -> Response<Body> {
    error_reply(StatusCode::NOT_FOUND, &format!("No such container: {id}"))
}

async fn control(shared: &Shared, name: &str, request: Request<Incoming>) -> Response<Body> {
    if name == "sim_stats" {
        return match serde_json::to_string(&shared.stats()) {
            Ok(body) => json_reply(StatusCode::OK, body),
            Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, &format!("unreadable body: {e}")),
    };
    match name {
        "sim_churn" => {
            #[derive(serde::Deserialize)]
            struct Churn {
                per_second: f64,
            }
            match serde_json::from_slice::<Churn>(&body) {
                Ok(c) if c.per_second.is_finite() && c.per_second >= 0.0 => {
                    shared.set_churn(c.per_second);
                    json_reply(StatusCode::OK, json!({"per_second": c.per_second}).to_string())
                }
                Ok(_) => error_reply(
                    StatusCode::BAD_REQUEST,
                    "per_second must be a number, 0 or more",
                ),
                Err(e) => error_reply(
                    StatusCode::BAD_REQUEST,
                    &format!("expected {{\"per_second\": R}}: {e}"),
                ),
            }
        }
        "sim_fault" => match serde_json::from_slice::<Fault>(&body) {
            Ok(fault) => {
                shared.set_fault(fault);
                json_reply(
                    StatusCode::OK,
                    serde_json::to_string(&shared.faults().active()).unwrap_or_default(),
                )
            }
            Err(e) => error_reply(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"kind\": \"not_manager\" | \"events_hang\" | \"events_cut_mid_line\" | \"malformed_json\" | \"slow\" | \"unknown_version\", ...}}: {e}"),
            ),
        },
        _ => {
            shared.clear_faults();
            json_reply(StatusCode::OK, "[]")
        }
    }
}

fn version_doc(api_version: &str) -> Value {
    json!({
        "Platform": {"Name": "swarm-engine-sim"},
        "Components": [{
            "Name": "Engine",
            "Version": "20.10.24-sim",
            "Details": {"ApiVersion": api_version, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": "amd64"},
        }],
        "Version": "20.10.24-sim",
        "ApiVersion": api_version,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "sim",
        "GoVersion": "go1.19.8",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": "6.0.0-sim",
        "BuildTime": "2026-01-01T00:00:00.000000000+00:00",
    })
}

fn info_doc(shared: &Shared, faults: &Faults) -> Value {
    let world = shared.world();
    let manager = !faults.is_on("not_manager");
    let local = world.local_node();
    let mut swarm = json!({
        "NodeID": local.id,
        "NodeAddr": "127.0.0.1",
        "LocalNodeState": "active",
        "ControlAvailable": manager,
        "Error": "",
        "RemoteManagers": [{"NodeID": local.id, "Addr": "127.0.0.1:2377"}],
    });
    if manager {
        swarm["Nodes"] = json!(world.nodes.len());
        swarm["Managers"] = json!(1);
        swarm["Cluster"] = json!({
            "ID": "simcluster0000000000000000",
            "Version": {"Index": 10},
            "CreatedAt": "2026-01-01T00:00:00.000000000Z",
            "UpdatedAt": "2026-01-01T00:00:00.000000000Z",
            "Spec": {"Name": "default", "Labels": {}},
        });
    }
    let running: usize = world
        .services
        .values()
        .flat_map(|s| s.tasks.iter())
        .filter(|t| t.node_id == local.id)
        .count();
    json!({
        "ID": "SIMD:ENGI:NESI:M000:0000:0000:0000:0000:0000:0000:0000:0000",
        "Containers": running,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 1,
        "Driver": "overlay2",
        "NCPU": crate::ONLINE_CPUS,
        "MemTotal": 8_u64 << 30,
        "Name": local.hostname,
        "ServerVersion": "20.10.24-sim",
        "OperatingSystem": "swarm-engine-sim",
        "OSType": "linux",
        "Architecture": "x86_64",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "1",
        "Swarm": swarm,
    })
}

fn nodes_doc(shared: &Shared) -> Value {
    let world = shared.world();
    Value::Array(
        world
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "ID": n.id,
                    "Version": {"Index": 10},
                    "CreatedAt": "2026-01-01T00:00:00.000000000Z",
                    "UpdatedAt": "2026-01-01T00:00:00.000000000Z",
                    "Spec": {"Role": if i == 0 { "manager" } else { "worker" }, "Availability": "active"},
                    "Description": {"Hostname": n.hostname},
                    "Status": {"State": "ready", "Addr": "127.0.0.1"},
                })
            })
            .collect(),
    )
}

fn stream_body(receiver: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> Body {
    BodyExt::boxed(StreamBody::new(ReceiverStream::new(receiver)))
}

fn streaming_reply(receiver: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> Response<Body> {
    let mut response = Response::new(stream_body(receiver));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /containers/{id}/stats`: one reading (`stream=false`), or one every second.
fn stats(shared: &Arc<Shared>, id: &str, query: &HashMap<String, String>) -> Response<Body> {
    let Some((first, mut previous)) = shared.world().container_stats(id, None) else {
        return no_such_container(id);
    };
    if !flag(query, "stream", true) {
        return json_reply(StatusCode::OK, first);
    }
    let (tx, rx) = mpsc::channel(4);
    let shared = shared.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut line = first;
        loop {
            line.push('\n');
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(STATS_TICK) => {}
            }
            match shared.world().container_stats(&id, Some(&previous)) {
                Some((next, cpu)) => {
                    line = next;
                    previous = cpu;
                }
                None => return,
            }
        }
    });
    streaming_reply(rx)
}

/// Whether an event passes `/events` filters: type, event (action, across types), label
/// (actor attributes), service, container, scope.
fn admits(filters: &Filters, event: &SimEvent) -> bool {
    let attribute = |key: &str| event.attributes.get(key).map(String::as_str);
    let scope = if event.typ == "container" {
        "local"
    } else {
        "swarm"
    };
    filters.admits("type", |v| v == event.typ)
        && filters.admits("event", |v| v == event.action)
        && filters.admits("scope", |v| v == scope)
        && filters.admits_labels(attribute)
        && filters.admits("service", |v| match event.typ {
            "service" => v == event.actor_id || Some(v) == attribute("name"),
            _ => Some(v) == attribute(SERVICE_ID_LABEL) || Some(v) == attribute(SERVICE_NAME_LABEL),
        })
        && filters.admits("container", |v| {
            event.typ == "container" && (v == event.actor_id || Some(v) == attribute("name"))
        })
}

const EVENT_FILTER_KEYS: &[&str] = &[
    "config",
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
];

/// `GET /events`: the history from `since`, then live events until `until` (or forever).
fn events(
    shared: &Arc<Shared>,
    query: &HashMap<String, String>,
    filters: Filters,
) -> Response<Body> {
    if let Some(key) = filters.keys().find(|k| !EVENT_FILTER_KEYS.contains(k)) {
        return error_reply(StatusCode::BAD_REQUEST, &format!("invalid filter '{key}'"));
    }
    let bound = |name: &str| -> Result<Option<i64>, String> {
        match query.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(text) => parse_event_time(text).map(Some).ok_or_else(|| {
                format!("invalid value for {name}: '{text}' is not a Unix time in seconds")
            }),
        }
    };
    let (since, until) = match (bound("since"), bound("until")) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(message), _) | (_, Err(message)) => {
            return error_reply(StatusCode::BAD_REQUEST, &message)
        }
    };
    let (past, live) = shared.world().subscribe(since, until);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(
        EventStream {
            shared: shared.clone(),
            filters,
            until,
            tx,
        }
        .run(past, live),
    );
    streaming_reply(rx)
}

/// One client's event stream.
struct EventStream {
    shared: Arc<Shared>,
    filters: Filters,
    until: Option<i64>,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
}

/// What a stream does next.
enum Next {
    Go,
    Stop,
}

impl EventStream {
    async fn run(self, past: Vec<Arc<SimEvent>>, mut live: broadcast::Receiver<Arc<SimEvent>>) {
        let mut faults = self.shared.faults.subscribe();
        let current = faults.borrow_and_update().clone();
        if let Next::Stop = self.misbehave(&current).await {
            return;
        }
        for event in past {
            if let Next::Stop = self.deliver(&event).await {
                return;
            }
        }
        loop {
            let remaining = self
                .until
                .map(|u| Duration::from_nanos(u64::try_from(u - unix_nanos_now()).unwrap_or(0)));
            if remaining == Some(Duration::ZERO) {
                return;
            }
            let until_passes = async {
                match remaining {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = until_passes => return,
                changed = faults.changed() => {
                    if changed.is_err() { return }
                    let current = faults.borrow_and_update().clone();
                    if let Next::Stop = self.misbehave(&current).await { return }
                }
                received = live.recv() => match received {
                    Ok(event) => {
                        if self.until.is_some_and(|u| event.time_nano > u) { return }
                        if let Next::Stop = self.deliver(&event).await { return }
                    }
                    // Too far behind, or the world is gone: cut the stream (the client resumes
                    // with `since`, as after dockerd drops a slow subscriber).
                    Err(_) => return,
                },
            }
        }
    }

    async fn send(&self, bytes: Bytes) -> Next {
        match self.tx.send(Ok(Frame::data(bytes))).await {
            Ok(()) => Next::Go,
            Err(_) => Next::Stop,
        }
    }

    /// Act on the event faults in force: hang, cut a line, write a broken one.
    async fn misbehave(&self, faults: &Faults) -> Next {
        if faults.is_on("events_hang") {
            return self.hang().await;
        }
        if faults.is_on("events_cut_mid_line") {
            let line = self.shared.world().last_event().map(|e| e.line.clone());
            let line = line.unwrap_or_else(|| Bytes::from_static(SAMPLE_LINE));
            let _ = self.send(line.slice(..line.len() / 2)).await;
            return Next::Stop;
        }
        if faults.malformed_events() {
            return self.send(Bytes::from_static(BROKEN_LINE)).await;
        }
        Next::Go
    }

    /// Send nothing and never close, until the client goes or the simulation stops.
    async fn hang(&self) -> Next {
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => {}
            _ = self.tx.closed() => {}
        }
        Next::Stop
    }

    async fn deliver(&self, event: &SimEvent) -> Next {
        if !admits(&self.filters, event) {
            return Next::Go;
        }
        let faults = self.shared.faults();
        if faults.is_on("events_hang") || faults.is_on("events_cut_mid_line") {
            if let Next::Stop = self.misbehave(&faults).await {
                return Next::Stop;
            }
        }
        if faults.malformed_events() {
            return self.send(Bytes::from_static(BROKEN_LINE)).await;
        }
        self.send(event.line.clone()).await
    }
}

/// A plausible event line, cut in half when no event happened yet.
const SAMPLE_LINE: &[u8] = b"{\"Type\":\"service\",\"Action\":\"update\",\"Actor\":{\"ID\":\"0000000000000000000000000\",\"Attributes\":{\"name\":\"sim-00000\"}},\"scope\":\"swarm\",\"time\":1767225600,\"timeNano\":1767225600000000000}\n";
/// A line that is not JSON (the malformed_json fault's event).
const BROKEN_LINE: &[u8] = b"{\"Type\":\"service\",\"Action\":\"update\",\"Actor\":{\"ID\":,}}\n";
