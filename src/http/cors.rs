//! Cross-origin reads for browser pages served from another origin (CORS_ALLOWED_ORIGINS).
//!
//! Off by default: without the setting no response carries a CORS header, so only pages on
//! the registry's own origin (its dashboard, or a page behind the same proxy) can read it. When
//! origins are listed, the read endpoints and the event stream answer those origins, and
//! preflight `OPTIONS` for them is granted. Commands never are: a page on another origin must
//! not be able to refresh or clear the registry with its visitors' network position.

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

use super::route::{Route, RouteError};
use crate::config::ConfigError;

/// Request headers a cross-origin page may send: resume (`Last-Event-ID`, which a browser's
/// `EventSource` sets itself on reconnect), conditional reads, and `Cache-Control`, which
/// some EventSource polyfills add.
const ALLOWED_HEADERS: &str = "last-event-id, if-none-match, cache-control";
/// Response headers a cross-origin page may read: the validators and the registry's revision
/// and freshness headers.
const EXPOSED_HEADERS: &str = "etag, x-registry-revision, x-registry-index, x-registry-stale, \
     x-registry-source, x-registry-last-contact, x-registry-metrics-age";
/// How long a browser may reuse a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Which origins may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: any page.
    Any,
    /// These origins exactly, in their serialised form (`https://host[:port]`, lower case).
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parse the setting's value: `*`, or origins separated by commas. Each must be an origin
    /// as browsers send it (scheme, host, optional port; no path, query or trailing slash),
    /// so a typo cannot silently allow nothing.
    pub fn parse(name: &'static str, value: &str) -> Result<AllowedOrigins, ConfigError> {
        let entries: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries == ["*"] {
            return Ok(AllowedOrigins::Any);
        }
        if entries.is_empty() {
            return Err(ConfigError::new(
                name,
                value,
                "expected origins such as https://ops.example.com, comma-separated, or *",
            ));
        }
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            origins.push(parse_origin(entry).ok_or_else(|| {
                ConfigError::new(
                    name,
                    value,
                    format!(
                        "{entry:?} is not an origin (scheme://host[:port], no path; * alone allows any)"
                    ),
                )
            })?);
        }
        Ok(AllowedOrigins::List(origins))
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// `entry` as a browser would serialise its origin, when it is one.
fn parse_origin(entry: &str) -> Option<String> {
    let url = url::Url::parse(entry).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    origin.eq_ignore_ascii_case(entry).then_some(origin)
}

/// The CORS policy in effect; `None` origins means CORS is off.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Option<AllowedOrigins>,
}

/// What one request is granted: the headers its answer gets.
pub struct Grant {
    origin: HeaderValue,
    any: bool,
    preflight: bool,
}

impl Cors {
    pub fn new(origins: Option<AllowedOrigins>) -> Self {
        Cors { origins }
    }

    /// Whether the request, routed as `routed`, gets CORS headers: a read (or the event
    /// stream) from an allowed origin, or a preflight for one.
    pub fn grant(&self, headers: &HeaderMap, routed: &Result<Route, RouteError>) -> Option<Grant> {
        let origins = self.origins.as_ref()?;
        let origin = headers.get(header::ORIGIN)?;
        if !origins.allows(origin.to_str().ok()?) {
            return None;
        }
        let preflight = match routed {
            Ok(route) if !route.is_command() => false,
            Err(RouteError::Options { allow }) if allow.contains("GET") => {
                let wanted = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
                let wanted = Method::from_bytes(wanted.as_bytes()).ok()?;
                if wanted != Method::GET && wanted != Method::HEAD {
                    return None;
                }
                true
            }
            _ => return None,
        };
        Some(Grant {
            origin: origin.clone(),
            any: *origins == AllowedOrigins::Any,
            preflight,
        })
    }
}

impl Grant {
    /// Add the granted headers to the answer.
    pub fn apply(self, headers: &mut HeaderMap) {
        if self.any {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            // The answer depends on the Origin header: caches must keep one per origin.
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin);
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
        } else {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::route;

    const NAME: &str = "CORS_ALLOWED_ORIGINS";

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn granted(cors: &Cors, method: Method, path: &str, headers: &HeaderMap) -> HeaderMap {
        let mut answer = HeaderMap::new();
        if let Some(grant) = cors.grant(headers, &route(&method, path)) {
            grant.apply(&mut answer);
        }
        answer
    }

    #[test]
    fn origins_are_parsed_strictly() {
        assert_eq!(AllowedOrigins::parse(NAME, " * "), Ok(AllowedOrigins::Any));
        assert_eq!(
            AllowedOrigins::parse(NAME, "https://Ops.Example.com, http://localhost:8080"),
            Ok(AllowedOrigins::List(vec![
                "https://ops.example.com".into(),
                "http://localhost:8080".into()
            ]))
        );
        for bad in [
            ",",
            "ops.example.com",
            "https://ops.example.com/",
            "https://ops.example.com/ui",
            "ftp://x",
            "*, https://a.example",
        ] {
            let error = AllowedOrigins::parse(NAME, bad).unwrap_err();
            assert_eq!(error.name, NAME, "{bad}");
        }
    }

    #[test]
    fn off_by_default() {
        let cors = Cors::default();
        let headers = request(&[("origin", "https://a.example")]);
        assert!(granted(&cors, Method::GET, "/services", &headers).is_empty());
    }

    #[test]
    fn reads_and_the_stream_are_granted_to_listed_origins_only() {
        let cors = Cors::new(Some(AllowedOrigins::List(vec!["https://a.example".into()])));
        let from_a = request(&[("origin", "https://a.example")]);
        for path in [
            "/services",
            "/events/stream",
            "/health",
            "/services/x/metrics",
        ] {
            let answer = granted(&cors, Method::GET, path, &from_a);
            assert_eq!(answer["access-control-allow-origin"], "https://a.example");
            assert_eq!(answer["vary"], "origin");
            assert!(answer["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("x-registry-revision"));
        }
        let from_b = request(&[("origin", "https://b.example")]);
        assert!(granted(&cors, Method::GET, "/services", &from_b).is_empty());
        assert!(granted(&cors, Method::GET, "/services", &request(&[])).is_empty());
        // Commands are never granted.
        assert!(granted(&cors, Method::POST, "/cache/clear", &from_a).is_empty());
        assert!(granted(&cors, Method::POST, "/services/x/metrics", &from_a).is_empty());
    }

    #[test]
    fn preflights_are_granted_for_reads_only() {
        let cors = Cors::new(Some(AllowedOrigins::Any));
        let preflight = request(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ]);
        let answer = granted(&cors, Method::OPTIONS, "/events/stream", &preflight);
        assert_eq!(answer["access-control-allow-origin"], "*");
        assert_eq!(answer["access-control-allow-methods"], "GET, HEAD");
        assert!(answer["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("last-event-id"));
        assert!(granted(&cors, Method::OPTIONS, "/cache/clear", &preflight).is_empty());
        let post = request(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(granted(&cors, Method::OPTIONS, "/services/x/metrics", &post).is_empty());
    }
}
