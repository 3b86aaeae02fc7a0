//! The Swarm source's settings, read from the environment.

use std::time::Duration;

use crate::config::{Checks, ConfigError, ConfigErrors, Setting, Vars};

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
    /// NODE_SAMPLE_INTERVAL_MS: how often the node sampler (in process, and in every agent)
    /// measures the tasks on its node; a forced sample's figures end at most this long ago.
    pub node_sample_interval: Duration,
    /// CGROUP_ROOT: where the cgroup file system is mounted; `None` (blank) reads Docker's
    /// stats only. Also used when the directory shows no cgroup tree.
    pub cgroup_root: Option<std::path::PathBuf>,
}

pub const DOCKER_BASE_URL: Setting = Setting::new(
    "DOCKER_BASE_URL",
    "unix:///var/run/docker.sock",
    "unix://, tcp://, http://, https:// (certificates from `DOCKER_CERT_PATH`)",
);
pub const DOCKER_TIMEOUT_SEC: Setting = Setting::new(
    "DOCKER_TIMEOUT_SEC",
    "10",
    "bound on every engine request, in seconds",
);
pub const REFRESH_INTERVAL_SEC: Setting = Setting::new(
    "REFRESH_INTERVAL_SEC",
    "30",
    "seconds between authoritative full lists (events keep the registry current in between)",
);
pub const METRICS_REFRESH_INTERVAL_SEC: Setting = Setting::new(
    "METRICS_REFRESH_INTERVAL_SEC",
    "60",
    "seconds between stats samplings of every registered service",
);
pub const EVENT_RECONNECT_MIN_MS: Setting = Setting::new(
    "EVENT_RECONNECT_MIN_MS",
    "100",
    "first pause before reopening the event stream (at least 1)",
);
pub const EVENT_RECONNECT_MAX_MS: Setting = Setting::new(
    "EVENT_RECONNECT_MAX_MS",
    "1000",
    "longest pause before reopening the event stream (at least EVENT_RECONNECT_MIN_MS)",
);
pub const WATCHDOG_GRACE_MS: Setting = Setting::new(
    "WATCHDOG_GRACE_MS",
    "1000",
    "how late an event may explain a difference a poll found before the stream counts as stalled",
);
pub const STATS_CONCURRENCY: Setting = Setting::new(
    "STATS_CONCURRENCY",
    "8",
    "container stats calls in flight at once",
);
pub const STATS_TIMEOUT_MS: Setting = Setting::new(
    "STATS_TIMEOUT_MS",
    "2000",
    "bound on one container stats call",
);
pub const NODE_SAMPLE_INTERVAL_MS: Setting = Setting::new(
    "NODE_SAMPLE_INTERVAL_MS",
    "1000",
    "how often each node's sampler measures its tasks (metrics are at most this old)",
);
pub const CGROUP_ROOT: Setting = Setting::new(
    "CGROUP_ROOT",
    "/sys/fs/cgroup",
    "the cgroup file system (v2 or v1) to read counters from; blank or absent: Docker's stats",
);

/// The Swarm source's settings, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    DOCKER_BASE_URL,
    DOCKER_TIMEOUT_SEC,
    REFRESH_INTERVAL_SEC,
    METRICS_REFRESH_INTERVAL_SEC,
    EVENT_RECONNECT_MIN_MS,
    EVENT_RECONNECT_MAX_MS,
    WATCHDOG_GRACE_MS,
    STATS_CONCURRENCY,
    STATS_TIMEOUT_MS,
    NODE_SAMPLE_INTERVAL_MS,
    CGROUP_ROOT,
];

impl Default for SwarmConfig {
    /// Every setting at its catalogue default.
    fn default() -> Self {
        SwarmConfig {
            docker_url: DOCKER_BASE_URL.default_text().to_owned(),
            request_timeout: Duration::from_secs(const { DOCKER_TIMEOUT_SEC.default_number() }),
            refresh_interval: Duration::from_secs(const { REFRESH_INTERVAL_SEC.default_number() }),
            metrics_interval: Duration::from_secs(
                const { METRICS_REFRESH_INTERVAL_SEC.default_number() },
            ),
            reconnect_min: Duration::from_millis(const { EVENT_RECONNECT_MIN_MS.default_number() }),
            reconnect_max: Duration::from_millis(const { EVENT_RECONNECT_MAX_MS.default_number() }),
            watchdog_grace: Duration::from_millis(const { WATCHDOG_GRACE_MS.default_number() }),
            stats_concurrency: const { STATS_CONCURRENCY.default_number() } as usize,
            stats_timeout: Duration::from_millis(const { STATS_TIMEOUT_MS.default_number() }),
            node_sample_interval: Duration::from_millis(
                const { NODE_SAMPLE_INTERVAL_MS.default_number() },
            ),
            cgroup_root: Some(CGROUP_ROOT.default_text().into()),
        }
    }
}

const SCHEMES: [&str; 4] = ["unix://", "tcp://", "http://", "https://"];

impl SwarmConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigErrors> {
        let mut checks = Checks::default();
        let docker_url = vars.string(&DOCKER_BASE_URL);
        if !SCHEMES.iter().any(|s| docker_url.starts_with(s)) {
            checks.push(ConfigError::new(
                DOCKER_BASE_URL.name,
                &docker_url,
                "expected a unix://, tcp://, http:// or https:// address",
            ));
        }
        let (reconnect_min, reconnect_max) = checks
            .ok_all(vars.reconnect_bounds(&EVENT_RECONNECT_MIN_MS, &EVENT_RECONNECT_MAX_MS))
            .unwrap_or_default();
        let config = SwarmConfig {
            docker_url,
            request_timeout: checks.take(vars.seconds(&DOCKER_TIMEOUT_SEC)),
            refresh_interval: checks.take(vars.seconds(&REFRESH_INTERVAL_SEC)),
            metrics_interval: checks.take(vars.seconds(&METRICS_REFRESH_INTERVAL_SEC)),
            reconnect_min,
            reconnect_max,
            watchdog_grace: checks.take(vars.millis(&WATCHDOG_GRACE_MS)),
            stats_concurrency: checks.take(vars.number(&STATS_CONCURRENCY, 1)) as usize,
            stats_timeout: checks.take(vars.millis_at_least(&STATS_TIMEOUT_MS, 1)),
            node_sample_interval: checks.take(vars.millis_at_least(&NODE_SAMPLE_INTERVAL_MS, 1)),
            cgroup_root: Some(vars.string(&CGROUP_ROOT))
                .filter(|root| !root.trim().is_empty())
                .map(Into::into),
        };
        checks.finish(config)
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
            ("STATS_CONCURRENCY", "3"),
        ]))
        .unwrap();
        assert_eq!(c.docker_url, "tcp://10.0.0.1:2376");
        assert_eq!(c.stats_concurrency, 3);

        let e = SwarmConfig::from_vars(&Vars::from_pairs([("DOCKER_BASE_URL", "/var/run/x")]))
            .unwrap_err();
        assert_eq!(e.first().name, "DOCKER_BASE_URL");
        let e =
            SwarmConfig::from_vars(&Vars::from_pairs([("STATS_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.first().name, "STATS_CONCURRENCY");
    }

    #[test]
    fn durations_too_long_to_plan_with_are_refused() {
        let huge = u64::MAX.to_string();
        for name in [
            "DOCKER_TIMEOUT_SEC",
            "REFRESH_INTERVAL_SEC",
            "METRICS_REFRESH_INTERVAL_SEC",
            "EVENT_RECONNECT_MIN_MS",
            "EVENT_RECONNECT_MAX_MS",
            "WATCHDOG_GRACE_MS",
            "STATS_TIMEOUT_MS",
            "NODE_SAMPLE_INTERVAL_MS",
        ] {
            let e =
                SwarmConfig::from_vars(&Vars::from_pairs([(name, huge.as_str())])).expect_err(name);
            let e = e.first();
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
