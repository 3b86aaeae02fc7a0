//! The commands: `POST /cache/refresh`, `POST /cache/clear` and `POST /services/{name}/metrics`,
//! and the bearer token that guards them.
//!
//! Source commands go to the Swarm source through [`SourceControl`] and are bounded by the
//! command timeout (`504` when it runs out); `clear` goes to the registry itself. Each answers
//! once its result is readable in the registry.

use std::future::Future;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use pipeline::{Input, Registry, Timestamp};

use super::handler::{json_answer, json_error, Answer};
use super::read::METRICS_AGE_HEADER;
use super::render::{self, CacheStats};
use crate::control::{ControlError, SourceControl};

/// What the commands act on, and their settings.
pub struct Commands {
    registry: Registry,
    control: SourceControl,
    /// API_TOKEN: when set, every command needs `Authorization: Bearer <token>`.
    api_token: Option<String>,
    /// How long a source command may take before the client gets `504`.
    timeout: Duration,
    refresh_interval_sec: u64,
}

impl Commands {
    pub fn new(
        registry: Registry,
        control: SourceControl,
        api_token: Option<String>,
        timeout: Duration,
        refresh_interval_sec: u64,
    ) -> Self {
        Commands {
            registry,
            control,
            api_token,
            timeout,
            refresh_interval_sec,
        }
    }

    /// The 401 answer for a command without the configured bearer token, if it lacks it.
    pub fn refuse_unauthorized(&self, headers: &HeaderMap) -> Option<Answer> {
        let expected = self.api_token.as_ref()?;
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

    /// `POST /services/{name}/metrics`: sample the service now and answer with the result.
    pub async fn sample_metrics(&self, name: &str) -> Answer {
        if self.registry.load().service(name).is_none() {
            return json_error(StatusCode::NOT_FOUND, "service not found");
        }
        let sampled = self
            .bounded(self.control.sample_metrics(name), "metrics sample")
            .await;
        if let Err(answer) = sampled {
            return answer;
        }
        let snapshot = self.registry.snapshot();
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

    /// `POST /cache/refresh`: list every service now.
    pub async fn refresh(&self) -> Answer {
        let revision = match self.bounded(self.control.refresh(), "refresh").await {
            Ok(revision) => revision,
            Err(answer) => return answer,
        };
        let snapshot = self.registry.snapshot();
        let stats = CacheStats::of(&snapshot, self.refresh_interval_sec);
        let revision = revision.max(snapshot.revision);
        json_answer(
            StatusCode::OK,
            render::refreshed_body(&stats, revision, Timestamp::now()),
        )
    }

    /// `POST /cache/clear`: empty the registry, then list again in the background.
    pub async fn clear(&self) -> Answer {
        let revision = match self.registry.submit(Input::Clear).await {
            Ok(revision) => revision,
            Err(stopped) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, &stopped.to_string());
            }
        };
        // Repopulate at once rather than at the next poll; the answer does not wait for it.
        let control = self.control.clone();
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
    async fn bounded(
        &self,
        command: impl Future<Output = Result<u64, ControlError>>,
        what: &str,
    ) -> Result<u64, Answer> {
        match tokio::time::timeout(self.timeout, command).await {
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
                    self.timeout.as_secs()
                ),
            )),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
