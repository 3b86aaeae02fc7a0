//! The command line: subcommands, and one flag per catalogue setting.
//!
//! Every setting of [`crate::config::CATALOGUE`] is a flag named after its variable
//! (`DOCKER_BASE_URL` is `--docker-base-url`) that also reads the variable, with the
//! catalogue's default and help text. clap only gathers the values as text; [`Vars`] and the
//! settings structs judge them, so a bad value gets the same message from a flag as from the
//! environment, and a blank value counts as unset either way. The flags are global: they may
//! come before or after the subcommand.

use std::time::Duration;

use bytes::Bytes;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command as ClapCommand, FromArgMatches};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::config::{Fallback, Vars, CATALOGUE};
use crate::http::config::{HOST, PORT};

/// `swarm-registry [SUBCOMMAND] [SETTINGS]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "swarm-registry",
    version,
    about = "Live registry of autoscaled Docker Swarm services: REST, SSE and RabbitMQ Streams",
    after_help = "Every setting is also read from the environment variable of its name; a flag wins over the variable, and a blank value counts as unset."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What the binary does. Without a subcommand it serves.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Run the registry (the default).
    Serve,
    /// Print the effective configuration (secrets masked) and exit 0, or every error and exit 1.
    CheckConfig,
    /// Ask a running registry whether it is ready (or live): exit 0 if so, 1 if not.
    Healthcheck(HealthcheckArgs),
    /// Sample the tasks on this node's engine and report them to the registry (REGISTRY_URL).
    Agent,
}

/// `healthcheck [--url URL] [--live] [--timeout-sec N]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HealthcheckArgs {
    /// The registry's base URL (http only) [default: from HOST and PORT, http://127.0.0.1:5001]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Ask /health/live (the process answers) instead of /health/ready (first full list in).
    #[arg(long)]
    pub live: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout_sec: u64,
}

impl HealthcheckArgs {
    /// The URL to ask: `--url`, else the local address the settings make the registry listen
    /// on (an unspecified HOST such as 0.0.0.0 is reached through loopback).
    pub fn target(&self, settings: &Vars) -> Result<String, HealthcheckError> {
        let base = match &self.url {
            Some(url) => url.trim().trim_end_matches('/').to_owned(),
            None => {
                let host: std::net::IpAddr = settings
                    .parse(&HOST)
                    .map_err(|e| HealthcheckError::Url(e.to_string()))?;
                let port: u16 = settings
                    .parse(&PORT)
                    .map_err(|e| HealthcheckError::Url(e.to_string()))?;
                let host = match host {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    }
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    }
                    other => other,
                };
                format!("http://{}", std::net::SocketAddr::new(host, port))
            }
        };
        let path = if self.live {
            "/health/live"
        } else {
            "/health/ready"
        };
        Ok(format!("{base}{path}"))
    }
}

/// Why a health check could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP exchange with {0} failed: {1}")]
    Http(String, hyper::Error),
    #[error("no answer from {0} within {1}s")]
    Timeout(String, u64),
}

/// `GET url` over HTTP/1.1, bounded by `timeout`: the response's status.
pub async fn probe(url: &str, timeout: Duration) -> Result<http::StatusCode, HealthcheckError> {
    match tokio::time::timeout(timeout, get_status(url)).await {
        Ok(result) => result,
        Err(_) => Err(HealthcheckError::Timeout(url.to_owned(), timeout.as_secs())),
    }
}

async fn get_status(raw: &str) -> Result<http::StatusCode, HealthcheckError> {
    let url = url::Url::parse(raw).map_err(|e| HealthcheckError::Url(format!("{raw}: {e}")))?;
    if url.scheme() != "http" {
        return Err(HealthcheckError::Url(format!(
            "{raw}: only http:// is supported"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| HealthcheckError::Url(format!("{raw}: no host")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| HealthcheckError::Connect(authority.clone(), e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HealthcheckError::Http(authority.clone(), e))?;
    // The connection task ends when the exchange does (or with the runtime).
    tokio::spawn(connection);
    let request = http::Request::get(url.path())
        .header(http::header::HOST, &authority)
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HealthcheckError::Url(format!("{raw}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HealthcheckError::Http(authority, e))?;
    Ok(response.status())
}

/// The catalogue's settings as flags; the values given (flag or variable) as [`Vars`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsArgs {
    /// Only the settings given on the command line or in the environment; defaults stay with
    /// the catalogue.
    pub vars: Vars,
}

impl FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = SettingsArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for section in CATALOGUE {
            for setting in section.settings {
                let given = matches!(
                    matches.value_source(setting.name),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
                if !given {
                    continue;
                }
                if let Some(value) = matches.get_one::<String>(setting.name) {
                    self.vars.insert(setting.name, value);
                }
            }
        }
        Ok(())
    }
}

impl Args for SettingsArgs {
    fn augment_args(mut cmd: ClapCommand) -> ClapCommand {
        for section in CATALOGUE {
            for setting in section.settings {
                let mut arg = Arg::new(setting.name)
                    .long(setting.flag())
                    .env(setting.name)
                    .value_name("VALUE")
                    .action(ArgAction::Set)
                    .global(true)
                    .help_heading(format!("Settings: {}", section.title));
                arg = match setting.fallback {
                    // Shown in the help; the value itself comes from the catalogue (see
                    // `update_from_arg_matches`).
                    Fallback::Value(default) => arg.help(setting.help).default_value(default),
                    Fallback::Unset(meaning) => {
                        arg.help(format!("{} [unset: {meaning}]", setting.help))
                    }
                };
                if setting.secrecy != crate::config::Secrecy::Public {
                    arg = arg.hide_env_values(true);
                }
                cmd = cmd.arg(arg);
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: ClapCommand) -> ClapCommand {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("swarm-registry").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_before_or_after_the_subcommand_are_read() {
        let cli = parse(&["--port", "7000", "check-config", "--log-level", "debug"]).unwrap();
        assert_eq!(cli.command, Some(Command::CheckConfig));
        assert_eq!(cli.settings.vars.get("PORT"), Some("7000"));
        assert_eq!(cli.settings.vars.get("LOG_LEVEL"), Some("debug"));
        assert_eq!(cli.settings.vars.get("HOST"), None, "defaults stay out");
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.command, None);
    }

    #[test]
    fn unknown_arguments_are_usage_errors() {
        let err = parse(&["--no-such-flag"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_healthcheck_target_defaults_to_the_local_listener() {
        let args = HealthcheckArgs {
            url: None,
            live: false,
            timeout_sec: 5,
        };
        assert_eq!(
            args.target(&Vars::default()).unwrap(),
            "http://127.0.0.1:5001/health/ready"
        );
        let vars = Vars::from_pairs([("HOST", "::"), ("PORT", "6000")]);
        assert_eq!(
            args.target(&vars).unwrap(),
            "http://[::1]:6000/health/ready"
        );
        let live = HealthcheckArgs {
            url: Some("http://registry:5001/".to_owned()),
            live: true,
            timeout_sec: 5,
        };
        assert_eq!(
            live.target(&vars).unwrap(),
            "http://registry:5001/health/live"
        );
    }
}
