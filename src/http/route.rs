//! Request routing: a method and a raw path to the operation they name, or the reason they
//! name none. Pure, so every path the contract knows (and every malformed one) is tested
//! without a socket.

use std::borrow::Cow;

use http::Method;
use percent_encoding::percent_decode_str;

/// One operation of the API. Service names are percent-decoded (`a%2Fb` names the service
/// `a/b`), because names are opaque to the registry and clients encode them per segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Root,
    Health,
    Live,
    Ready,
    /// Prometheus text exposition.
    Metrics,
    Services,
    Service(String),
    ServiceMetrics(String),
    /// `POST /services/{name}/metrics`: sample now, then answer.
    SampleMetrics(String),
    CacheStats,
    Refresh,
    Clear,
    /// `GET /events`: JSON about event publishing, or the event stream when the client
    /// accepts `text/event-stream`.
    Events,
    EventStream,
    /// `POST /agents/readings`: a node agent's report (see `agents.rs`).
    AgentReadings,
    /// `GET /ui`: the live dashboard page (also `GET /` for clients that prefer HTML).
    Ui,
    /// `GET /ui/{file}`: one of the dashboard's files (unknown names are 404 there).
    UiAsset(String),
}

/// Why a request names no operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists, the method does not; `allow` lists the methods that do.
    MethodNotAllowed {
        allow: &'static str,
    },
    /// `OPTIONS` on an existing path: answered with its `Allow` list.
    Options {
        allow: &'static str,
    },
    /// A path segment is not valid percent-encoded UTF-8.
    BadPath(String),
}

const READ: &str = "GET, HEAD, OPTIONS";
const COMMAND: &str = "POST, OPTIONS";
const READ_AND_COMMAND: &str = "GET, HEAD, POST, OPTIONS";

/// Every route's label for request metrics, in [`Route::index`] order; the last one counts
/// requests that matched no route.
pub const ROUTE_LABELS: [&str; 18] = [
    "/",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/services",
    "/services/{name}",
    "/services/{name}/metrics",
    "/services/{name}/metrics (POST)",
    "/cache/stats",
    "/cache/refresh",
    "/cache/clear",
    "/events",
    "/events/stream",
    "/agents/readings",
    "/ui",
    "/ui/{file}",
    "unmatched",
];

/// The index of [`ROUTE_LABELS`]' last entry.
pub const UNMATCHED: usize = ROUTE_LABELS.len() - 1;

impl Route {
    /// The route's position in [`ROUTE_LABELS`]: a label without the service's name, so
    /// metrics do not grow a series per service.
    pub fn index(&self) -> usize {
        match self {
            Route::Root => 0,
            Route::Health => 1,
            Route::Live => 2,
            Route::Ready => 3,
            Route::Metrics => 4,
            Route::Services => 5,
            Route::Service(_) => 6,
            Route::ServiceMetrics(_) => 7,
            Route::SampleMetrics(_) => 8,
            Route::CacheStats => 9,
            Route::Refresh => 10,
            Route::Clear => 11,
            Route::Events => 12,
            Route::EventStream => 13,
            Route::AgentReadings => 14,
            Route::Ui => 15,
            Route::UiAsset(_) => 16,
        }
    }

    /// Whether the route changes state (and so needs the API token when one is set).
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            Route::SampleMetrics(_) | Route::Refresh | Route::Clear | Route::AgentReadings
        )
    }
}

/// What a path names, before the method is considered.
enum Resource {
    Read(Route),
    Command(Route),
    ServiceMetrics(String),
}

/// Resolve a request to its route.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    let resource = resource(path)?;
    let allow = match &resource {
        Resource::Read(_) => READ,
        Resource::Command(_) => COMMAND,
        Resource::ServiceMetrics(_) => READ_AND_COMMAND,
    };
    if method == Method::OPTIONS {
        return Err(RouteError::Options { allow });
    }
    let read = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match resource {
        Resource::Read(route) if read => Ok(route),
        Resource::Command(route) if post => Ok(route),
        Resource::ServiceMetrics(name) if read => Ok(Route::ServiceMetrics(name)),
        Resource::ServiceMetrics(name) if post => Ok(Route::SampleMetrics(name)),
        _ => Err(RouteError::MethodNotAllowed { allow }),
    }
}

fn resource(path: &str) -> Result<Resource, RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RouteError::NotFound);
    };
    if rest.is_empty() {
        return Ok(Resource::Read(Route::Root));
    }
    let segments = rest
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<Cow<'_, str>>, RouteError>>()?;
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    let found = match segments.as_slice() {
        ["health"] => Resource::Read(Route::Health),
        ["health", "live"] => Resource::Read(Route::Live),
        ["health", "ready"] => Resource::Read(Route::Ready),
        ["metrics"] => Resource::Read(Route::Metrics),
        ["services"] => Resource::Read(Route::Services),
        ["services", name] if !name.is_empty() => Resource::Read(Route::Service((*name).into())),
        ["services", name, "metrics"] if !name.is_empty() => {
            Resource::ServiceMetrics((*name).into())
        }
        ["cache", "stats"] => Resource::Read(Route::CacheStats),
        ["cache", "refresh"] => Resource::Command(Route::Refresh),
        ["cache", "clear"] => Resource::Command(Route::Clear),
        ["events"] => Resource::Read(Route::Events),
        ["events", "stream"] => Resource::Read(Route::EventStream),
        ["agents", "readings"] => Resource::Command(Route::AgentReadings),
        ["ui"] | ["ui", ""] => Resource::Read(Route::Ui),
        ["ui", file] => Resource::Read(Route::UiAsset((*file).into())),
        _ => return Err(RouteError::NotFound),
    };
    Ok(found)
}

/// Borrowed unless the segment holds escapes, so ordinary paths allocate nothing here.
fn decode_segment(segment: &str) -> Result<Cow<'_, str>, RouteError> {
    percent_decode_str(segment).decode_utf8().map_err(|_| {
        RouteError::BadPath(format!(
            "path segment {segment:?} is not valid percent-encoded UTF-8"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<Route, RouteError> {
        route(&Method::GET, path)
    }

    #[test]
    fn every_contract_path_is_routed() {
        assert_eq!(get("/"), Ok(Route::Root));
        assert_eq!(get("/health"), Ok(Route::Health));
        assert_eq!(get("/health/live"), Ok(Route::Live));
        assert_eq!(get("/health/ready"), Ok(Route::Ready));
        assert_eq!(get("/metrics"), Ok(Route::Metrics));
        assert_eq!(get("/services"), Ok(Route::Services));
        assert_eq!(get("/services/web"), Ok(Route::Service("web".into())));
        assert_eq!(
            get("/services/web/metrics"),
            Ok(Route::ServiceMetrics("web".into()))
        );
        assert_eq!(
            route(&Method::POST, "/services/web/metrics"),
            Ok(Route::SampleMetrics("web".into()))
        );
        assert_eq!(get("/cache/stats"), Ok(Route::CacheStats));
        assert_eq!(route(&Method::POST, "/cache/refresh"), Ok(Route::Refresh));
        assert_eq!(route(&Method::POST, "/cache/clear"), Ok(Route::Clear));
        assert_eq!(get("/events"), Ok(Route::Events));
        assert_eq!(get("/events/stream"), Ok(Route::EventStream));
        assert_eq!(
            route(&Method::POST, "/agents/readings"),
            Ok(Route::AgentReadings)
        );
        assert_eq!(route(&Method::HEAD, "/services"), Ok(Route::Services));
        assert_eq!(get("/ui"), Ok(Route::Ui));
        assert_eq!(get("/ui/"), Ok(Route::Ui));
        assert_eq!(get("/ui/app.js"), Ok(Route::UiAsset("app.js".into())));
        assert_eq!(ROUTE_LABELS[Route::Ui.index()], "/ui");
    }

    #[test]
    fn names_are_percent_decoded_per_segment() {
        assert_eq!(get("/services/a%2Fb"), Ok(Route::Service("a/b".into())));
        assert_eq!(
            get("/services/caf%C3%A9/metrics"),
            Ok(Route::ServiceMetrics("café".into()))
        );
        assert_eq!(get("/services/a+b"), Ok(Route::Service("a+b".into())));
        assert!(matches!(get("/services/%FF"), Err(RouteError::BadPath(_))));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "",
            "*",
            "/nope",
            "/services/",
            "/services//metrics",
            "/services/a/b",
            "/health/",
            "/cache",
            "/events/stream/x",
            "/ui/a/b",
        ] {
            assert_eq!(get(path), Err(RouteError::NotFound), "{path}");
        }
    }

    #[test]
    fn wrong_methods_list_the_allowed_ones() {
        assert_eq!(
            route(&Method::POST, "/services"),
            Err(RouteError::MethodNotAllowed { allow: READ })
        );
        assert_eq!(
            get("/cache/refresh"),
            Err(RouteError::MethodNotAllowed { allow: COMMAND })
        );
        let brew = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(
            route(&brew, "/services/x/metrics"),
            Err(RouteError::MethodNotAllowed {
                allow: READ_AND_COMMAND
            })
        );
        assert_eq!(
            route(&Method::OPTIONS, "/cache/clear"),
            Err(RouteError::Options { allow: COMMAND })
        );
    }

    #[test]
    fn labels_do_not_carry_names() {
        let route = get("/services/secret-name").unwrap();
        assert_eq!(ROUTE_LABELS[route.index()], "/services/{name}");
        assert!(Route::Clear.is_command());
        assert!(!Route::Services.is_command());
    }
}
