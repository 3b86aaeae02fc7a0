//! The Swarm source's settings, read from the environment.

use std::time::Duration;

use crate::config::{ConfigError, Vars};

/// How the Swarm source talks to the engine and how often it looks.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmConfig {
    /// DOCKER_BASE_URL: unix://, tcp://, http:// or https:// (certificates from
    /// DOCKER_CERT_PATH, as the docker CLI does).
    pub docker_url: String,
    /// DOCKER_TIMEOUT_SEC: the bound on every request to the engine.
    pub request_timeout: Duration,
    /// REFRESH_INTERVAL_SEC: the authoritative full list, whatever the events said.
    pub refresh_interval: Duration,
    /// METRICS_REFRESH_INTERVAL_SEC: the period of the metrics sampling round.
    pub metrics_interval: Duration,
    /// EVENT_DEBOUNCE_MS: after an inspect, further events for the same service wait for this
    /// much quiet before the next inspect.
    pub debounce_quiet: Duration,
    /// EVENT_DEBOUNCE_MAX_MS: the longest an event may wait in a burst before its inspect.
    pub debounce_max: Duration,
    /// EVENT_RECONNECT_MIN_MS / EVENT_RECONNECT_MAX_MS: the first and the longest pause
    /// between attempts to reopen the event stream (doubling, with jitter).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// WATCHDOG_GRACE_MS: how long after a poll an event may still arrive for a difference the
    /// poll found, before the stream is presumed stalled.
    pub watchdog_grace: Duration,
    /// STATS_CONCURRENCY: container stats requests in flight at once.
    pub stats_concurrency: usize,
    /// STATS_TIMEOUT_MS: the bound on one container stats call (one-shot stats answer in
    /// milliseconds; a container that does not answer must not hold up a forced sample).
    pub stats_timeout: Duration,
    /// STATS_WINDOW_MS: the pause between two stats readings when no earlier reading of the
    /// container exists (start-up, new tasks, forced samples).
    pub stats_window: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            docker_url: "unix:///var/run/docker.sock".to_owned(),
            request_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(60),
            debounce_quiet: Duration::from_millis(100),
            debounce_max: Duration::from_millis(1000),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(1000),
            watchdog_grace: Duration::from_millis(1000),
            stats_concurrency: 8,
            stats_timeout: Duration::from_millis(2000),
            stats_window: Duration::from_millis(500),
        }
    }
}

const SCHEMES: [&str; 4] = ["unix://", "tcp://", "http://", "https://"];

impl SwarmConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let d = SwarmConfig::default();
        let docker_url = vars.string("DOCKER_BASE_URL", &d.docker_url);
        if !SCHEMES.iter().any(|s| docker_url.starts_with(s)) {
            return Err(ConfigError::new(
                "DOCKER_BASE_URL",
                &docker_url,
                "expected a unix://, tcp://, http:// or https:// address",
            ));
        }
        let config = SwarmConfig {
            docker_url,
            request_timeout: vars.seconds("DOCKER_TIMEOUT_SEC", 10)?,
            refresh_interval: vars.seconds("REFRESH_INTERVAL_SEC", 30)?,
            metrics_interval: vars.seconds("METRICS_REFRESH_INTERVAL_SEC", 60)?,
            debounce_quiet: vars.millis("EVENT_DEBOUNCE_MS", 100)?,
            debounce_max: vars.millis("EVENT_DEBOUNCE_MAX_MS", 1000)?,
            reconnect_min: vars.millis_at_least("EVENT_RECONNECT_MIN_MS", 100, 1)?,
            reconnect_max: vars.millis_at_least("EVENT_RECONNECT_MAX_MS", 1000, 1)?,
            watchdog_grace: vars.millis("WATCHDOG_GRACE_MS", 1000)?,
            stats_concurrency: vars.number("STATS_CONCURRENCY", 8, 1)? as usize,
            stats_timeout: vars.millis_at_least("STATS_TIMEOUT_MS", 2000, 1)?,
            stats_window: vars.millis_at_least("STATS_WINDOW_MS", 500, 1)?,
        };
        if config.debounce_max < config.debounce_quiet {
            return Err(ConfigError::new(
                "EVENT_DEBOUNCE_MAX_MS",
                &config.debounce_max.as_millis().to_string(),
                "must be at least EVENT_DEBOUNCE_MS",
            ));
        }
        if config.reconnect_max < config.reconnect_min {
            return Err(ConfigError::new(
                "EVENT_RECONNECT_MAX_MS",
                &config.reconnect_max.as_millis().to_string(),
                "must be at least EVENT_RECONNECT_MIN_MS",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = SwarmConfig::from_vars(&Vars::default()).unwrap();
        assert_eq!(c, SwarmConfig::default());
        assert_eq!(c.refresh_interval, Duration::from_secs(30));
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
    }

    #[test]
    fn values_are_read_and_checked() {
        let c = SwarmConfig::from_vars(&Vars::from_pairs([
            ("DOCKER_BASE_URL", "tcp://10.0.0.1:2376"),
            ("EVENT_DEBOUNCE_MS", "0"),
            ("STATS_CONCURRENCY", "3"),
        ]))
        .unwrap();
        assert_eq!(c.docker_url, "tcp://10.0.0.1:2376");
        assert_eq!(c.debounce_quiet, Duration::ZERO);
        assert_eq!(c.stats_concurrency, 3);

        let e = SwarmConfig::from_vars(&Vars::from_pairs([("DOCKER_BASE_URL", "/var/run/x")]))
            .unwrap_err();
        assert_eq!(e.name, "DOCKER_BASE_URL");
        let e = SwarmConfig::from_vars(&Vars::from_pairs([
            ("EVENT_DEBOUNCE_MS", "500"),
            ("EVENT_DEBOUNCE_MAX_MS", "100"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, "EVENT_DEBOUNCE_MAX_MS");
        let e =
            SwarmConfig::from_vars(&Vars::from_pairs([("STATS_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.name, "STATS_CONCURRENCY");
    }

    #[test]
    fn durations_too_long_to_plan_with_are_refused() {
        let huge = u64::MAX.to_string();
        for name in [
            "DOCKER_TIMEOUT_SEC",
            "REFRESH_INTERVAL_SEC",
            "METRICS_REFRESH_INTERVAL_SEC",
            "EVENT_DEBOUNCE_MS",
            "EVENT_DEBOUNCE_MAX_MS",
            "EVENT_RECONNECT_MIN_MS",
            "EVENT_RECONNECT_MAX_MS",
            "WATCHDOG_GRACE_MS",
            "STATS_TIMEOUT_MS",
            "STATS_WINDOW_MS",
        ] {
            let e =
                SwarmConfig::from_vars(&Vars::from_pairs([(name, huge.as_str())])).expect_err(name);
            assert_eq!((e.name.as_str(), e.value.as_str()), (name, huge.as_str()));
            assert_eq!(e.reason, "must be at most a year");
        }
        let year =
            SwarmConfig::from_vars(&Vars::from_pairs([("REFRESH_INTERVAL_SEC", "31536000")]))
                .unwrap();
        assert_eq!(
            year.refresh_interval,
            Duration::from_secs(crate::config::MAX_DURATION_SECS)
        );
    }
}
