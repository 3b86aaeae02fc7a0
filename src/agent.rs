//! `swarm-registry agent`: the node sampler of one node, reporting to the registry.
//!
//! A registry reads stats only from the engine it talks to, so every other node of the swarm
//! runs an agent (a global service). The agent samples the tasks on its node against its own
//! engine (DOCKER_BASE_URL) every NODE_SAMPLE_INTERVAL_MS and posts each report to
//! REGISTRY_URL `/agents/readings` (API_TOKEN as a bearer token when set), naming its node
//! by the engine's node id. The registry answers with the services it wants measured, so the
//! agent needs no configuration of its own about services. Sampling never waits for the
//! registry: only the latest report is kept, and it is posted as soon as the registry
//! answers again (reconnecting with capped, jittered backoff).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Checks, ConfigError, ConfigErrors, Setting, Vars};
use crate::docker::node_sampler::NodeSampler;
use crate::docker::readings::{NodeReport, ReportAnswer};
use crate::docker::{node_sampler_config, BollardEngine, SwarmConfig};
use crate::telemetry::SourceCounters;

pub const REGISTRY_URL: Setting = Setting::new(
    "REGISTRY_URL",
    "http://127.0.0.1:5001",
    "`agent` only: the registry agents report to (http://host:port)",
);

/// The agent's own settings, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[REGISTRY_URL];

/// What the agent needs: its engine and sampling settings, the registry, the token.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub swarm: SwarmConfig,
    pub registry: RegistryAddress,
    pub api_token: Option<String>,
}

/// Where reports go: an http:// registry's host, port and the endpoint's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAddress {
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the Host header carries it.
    pub authority: String,
    pub path: String,
}

impl RegistryAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw.trim()).map_err(|e| e.to_string())?;
        if url.scheme() != "http" {
            return Err("expected an http:// address".to_owned());
        }
        let host = url.host_str().ok_or("no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let base = url.path().trim_end_matches('/');
        Ok(RegistryAddress {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authority,
            path: format!("{base}/agents/readings"),
        })
    }
}

impl AgentConfig {
    /// The agent's settings from `vars` (API_TOKEN may come from API_TOKEN_FILE).
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigErrors> {
        let (vars, file_errors) = vars.with_secret_files();
        let mut checks = Checks::default();
        for error in file_errors {
            checks.push(error);
        }
        let swarm = checks.ok_all(SwarmConfig::from_vars(&vars));
        let raw = vars.string(&REGISTRY_URL);
        let registry = match RegistryAddress::parse(&raw) {
            Ok(address) => Some(address),
            Err(reason) => {
                checks.push(ConfigError::new(REGISTRY_URL.name, &raw, &reason));
                None
            }
        };
        let api_token = vars
            .get(crate::http::config::API_TOKEN.name)
            .map(str::to_owned);
        let config = match (swarm, registry) {
            (Some(swarm), Some(registry)) => Some(AgentConfig {
                swarm,
                registry,
                api_token,
            }),
            _ => None,
        };
        checks.finish_some(config)
    }
}

/// Why a report did not get through.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect to the registry at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP exchange with the registry failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("the registry refused the report: {0} {1}")]
    Refused(http::StatusCode, String),
    #[error("no answer from the registry within {0:?}")]
    Timeout(Duration),
}

/// Run the agent until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) {
    let engine = {
        let mut backoff = Backoff::new(config.swarm.reconnect_min, config.swarm.reconnect_max);
        loop {
            match BollardEngine::connect(&config.swarm.docker_url, config.swarm.request_timeout) {
                Ok(engine) => break Arc::new(engine),
                Err(e) => {
                    tracing::warn!("{e}; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next(rand::random::<f64>())) => {}
                    }
                }
            }
        }
    };
    let counters = Arc::new(SourceCounters::default());
    let sampler = NodeSampler::new(engine, node_sampler_config(&config.swarm), counters);
    // The services the registry asked for in its last answer; none before the first.
    let wanted: Arc<Mutex<Option<HashSet<String>>>> = Arc::default();
    let (reports, latest) = watch::channel(None::<NodeReport>);
    let pusher = tokio::spawn(push_reports(
        config.clone(),
        latest,
        wanted.clone(),
        shutdown.clone(),
    ));
    let asked = {
        let wanted = wanted.clone();
        move || wanted.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    sampler
        .run(
            asked,
            move |report| {
                reports.send_replace(Some(report));
            },
            shutdown,
        )
        .await;
    let _ = pusher.await;
}

/// Post every new report; on failure keep retrying (with backoff) with the latest one.
async fn push_reports(
    config: AgentConfig,
    mut latest: watch::Receiver<Option<NodeReport>>,
    wanted: Arc<Mutex<Option<HashSet<String>>>>,
    shutdown: CancellationToken,
) {
    let mut client = Client::new(&config);
    let mut backoff = Backoff::new(config.swarm.reconnect_min, config.swarm.reconnect_max);
    let mut failure: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = latest.changed() => if changed.is_err() { return },
        }
        loop {
            let Some(report) = latest.borrow_and_update().clone() else {
                break;
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = client.post(&report) => outcome,
            };
            match outcome {
                Ok(answer) => {
                    if failure.take().is_some() {
                        tracing::info!(node = %report.node_id, "reporting to the registry again");
                    }
                    backoff.reset();
                    *wanted.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(answer.services.into_iter().collect());
                    break;
                }
                Err(e) => {
                    let reason = e.to_string();
                    if failure.as_deref() != Some(reason.as_str()) {
                        tracing::warn!("report not delivered: {reason}; retrying");
                        failure = Some(reason);
                    }
                    if let PushError::Refused(_, body) = &e {
                        // A 422 names the services the registry tracks: measure those.
                        if let Ok(answer) = serde_json::from_str::<ReportAnswer>(body) {
                            *wanted.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(answer.services.into_iter().collect());
                        }
                    }
                    client.disconnect();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next(rand::random::<f64>())) => {}
                    }
                }
            }
        }
    }
}

/// One kept-alive HTTP/1.1 connection to the registry, reopened when it breaks.
struct Client {
    address: RegistryAddress,
    authorization: Option<String>,
    timeout: Duration,
    connection: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(config: &AgentConfig) -> Self {
        Client {
            address: config.registry.clone(),
            authorization: config.api_token.as_ref().map(|t| format!("Bearer {t}")),
            timeout: config.swarm.request_timeout,
            connection: None,
        }
    }

    fn disconnect(&mut self) {
        self.connection = None;
    }

    async fn post(&mut self, report: &NodeReport) -> Result<ReportAnswer, PushError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(report)).await {
            Ok(result) => result,
            Err(_) => Err(PushError::Timeout(timeout)),
        }
    }

    async fn exchange(&mut self, report: &NodeReport) -> Result<ReportAnswer, PushError> {
        let body = serde_json::to_vec(report).unwrap_or_default();
        let mut sender = match self.connection.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream =
                    tokio::net::TcpStream::connect((self.address.host.as_str(), self.address.port))
                        .await
                        .map_err(|e| PushError::Connect(self.address.authority.clone(), e))?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                sender
            }
        };
        sender.ready().await?;
        let mut request = http::Request::post(&self.address.path)
            .header(http::header::HOST, &self.address.authority)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        self.connection = Some(sender);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(PushError::Refused(status, text));
        }
        serde_json::from_str(&text)
            .map_err(|e| PushError::Refused(status, format!("unreadable answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn registry_addresses_are_http_only() {
        let a = RegistryAddress::parse("http://registry:5001").unwrap();
        assert_eq!(
            (
                a.host.as_str(),
                a.port,
                a.authority.as_str(),
                a.path.as_str()
            ),
            ("registry", 5001, "registry:5001", "/agents/readings")
        );
        let a = RegistryAddress::parse("http://[::1]/base/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 80));
        assert_eq!(a.path, "/base/agents/readings");
        assert!(RegistryAddress::parse("https://registry").is_err());
        assert!(RegistryAddress::parse("registry:5001").is_err());
    }

    #[test]
    fn settings_are_read_and_checked() {
        let c = AgentConfig::from_vars(&Vars::from_pairs([
            ("REGISTRY_URL", "http://10.0.0.2:6000"),
            ("API_TOKEN", "t"),
        ]))
        .unwrap();
        assert_eq!(c.registry.port, 6000);
        assert_eq!(c.api_token.as_deref(), Some("t"));
        let e =
            AgentConfig::from_vars(&Vars::from_pairs([("REGISTRY_URL", "ftp://x")])).unwrap_err();
        assert_eq!(e.first().name, "REGISTRY_URL");
    }
}
