//! Reading configuration from the environment.
//!
//! Each part of the service defines its own settings struct and reads it through [`Vars`], so
//! a bad value is reported as `NAME=value: what is wrong` at start-up, never as a panic or a
//! silently used default.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration any setting may have (one year). Deadlines are computed as `now + d`,
/// which panics on overflow deep inside the runtime or hyper, so absurd values are refused at
/// start-up instead.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A frozen view of environment variables. Tests build one from pairs instead of mutating the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// The process environment. Variables that are not valid UTF-8 are skipped.
    pub fn from_env() -> Self {
        Vars {
            values: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Vars {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The value, if set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A value parsed as `T`, or `default` when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e: T::Err| ConfigError::new(name, v, e.to_string())),
        }
    }

    /// A whole number at least `min`, or `default` when unset.
    pub fn number(&self, name: &str, default: u64, min: u64) -> Result<u64, ConfigError> {
        let n = self.parse(name, default)?;
        if n < min {
            return Err(ConfigError::new(
                name,
                &n.to_string(),
                format!("must be at least {min}"),
            ));
        }
        Ok(n)
    }

    /// A duration given in whole seconds (at least one, at most [`MAX_DURATION_SECS`]), or
    /// `default` when unset.
    pub fn seconds(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        let secs = self.number(name, default, 1)?;
        at_most_a_year(name, secs, secs)?;
        Ok(Duration::from_secs(secs))
    }

    /// A duration given in whole milliseconds (at most a year), or `default` when unset.
    pub fn millis(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        self.millis_at_least(name, default, 0)
    }

    /// A duration given in whole milliseconds, at least `min` and at most a year.
    pub fn millis_at_least(
        &self,
        name: &str,
        default: u64,
        min: u64,
    ) -> Result<Duration, ConfigError> {
        let millis = self.number(name, default, min)?;
        at_most_a_year(name, millis, millis / 1000)?;
        Ok(Duration::from_millis(millis))
    }
}

fn at_most_a_year(name: &str, given: u64, secs: u64) -> Result<(), ConfigError> {
    if secs > MAX_DURATION_SECS {
        return Err(ConfigError::new(
            name,
            &given.to_string(),
            "must be at most a year",
        ));
    }
    Ok(())
}

/// Settings of the core: label rules, history size, beacons, logging.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// LABEL_PREFIX: the prefix of the registry's labels (default `autoscaler`).
    pub label_prefix: String,
    /// CHANGE_LOG_CAPACITY: how many recent changes resuming clients can replay (default 4096).
    pub change_log_capacity: usize,
    /// HEALTH_CHECK_INTERVAL_SEC: how often `health.check` goes to every sink (default 30).
    pub health_check_interval: Duration,
    /// LOG_LEVEL: error, warn, info, debug or trace (default info).
    pub log_level: String,
}

impl CoreConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let log_level = vars.string("LOG_LEVEL", "info").to_ascii_lowercase();
        let log_level = match log_level.as_str() {
            "warning" => "warn".to_owned(),
            "critical" => "error".to_owned(),
            "error" | "warn" | "info" | "debug" | "trace" => log_level,
            _ => {
                return Err(ConfigError::new(
                    "LOG_LEVEL",
                    &log_level,
                    "expected one of error, warn, info, debug, trace",
                ))
            }
        };
        let label_prefix = vars.string("LABEL_PREFIX", "autoscaler");
        if label_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "LABEL_PREFIX",
                &label_prefix,
                "must not contain whitespace",
            ));
        }
        Ok(CoreConfig {
            label_prefix,
            change_log_capacity: vars.number("CHANGE_LOG_CAPACITY", 4096, 1)? as usize,
            health_check_interval: vars.seconds("HEALTH_CHECK_INTERVAL_SEC", 30)?,
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let core = CoreConfig::from_vars(&Vars::from_pairs([("LOG_LEVEL", " ")])).unwrap();
        assert_eq!(core.label_prefix, "autoscaler");
        assert_eq!(core.change_log_capacity, 4096);
        assert_eq!(core.health_check_interval, Duration::from_secs(30));
        assert_eq!(core.log_level, "info");
    }

    #[test]
    fn python_level_names_are_accepted() {
        let core = CoreConfig::from_vars(&Vars::from_pairs([("LOG_LEVEL", "WARNING")])).unwrap();
        assert_eq!(core.log_level, "warn");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = CoreConfig::from_vars(&Vars::from_pairs([("HEALTH_CHECK_INTERVAL_SEC", "soon")]))
            .unwrap_err();
        assert_eq!(err.name, "HEALTH_CHECK_INTERVAL_SEC");
        assert!(
            err.to_string()
                .contains("HEALTH_CHECK_INTERVAL_SEC=\"soon\""),
            "{err}"
        );
        let err = CoreConfig::from_vars(&Vars::from_pairs([("HEALTH_CHECK_INTERVAL_SEC", "0")]))
            .unwrap_err();
        assert!(err.reason.contains("at least 1"), "{err}");
        let err = CoreConfig::from_vars(&Vars::from_pairs([(
            "HEALTH_CHECK_INTERVAL_SEC",
            "99999999999999",
        )]))
        .unwrap_err();
        assert!(err.reason.contains("at most a year"), "{err}");
        let vars = Vars::from_pairs([("SOME_MS", "99999999999999999")]);
        assert!(vars.millis("SOME_MS", 1).is_err());
        let err = CoreConfig::from_vars(&Vars::from_pairs([("LOG_LEVEL", "loud")])).unwrap_err();
        assert_eq!(err.name, "LOG_LEVEL");
    }
}
