//! Settings: one catalogue of every setting the service reads, and their reading.
//!
//! Each setting is declared once, as a [`Setting`] (name, default, help text, secrecy) next to
//! the struct that uses it. The settings structs read their values through [`Vars`] from that
//! declaration, the command line builds one flag per catalogue entry (see `cli.rs`), and a test
//! holds the README's table to the same catalogue. A bad value is reported as
//! `invalid NAME="value": what is wrong` at start-up, never as a panic or a silently used
//! default, and every bad value is reported, not only the first.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::broker::BrokerConfig;
use crate::docker::SwarmConfig;
use crate::http::HttpConfig;
use crate::logging::LogFormat;

/// The longest duration any setting may have (one year). Deadlines are computed as `now + d`,
/// which panics on overflow deep inside the runtime or hyper, so absurd values are refused at
/// start-up instead.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

/// What a setting is when nobody sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, as it would be written in the environment.
    Value(&'static str),
    /// No value; the text says what that means (shown in `--help` and the README).
    Unset(&'static str),
}

/// How a setting's value may be shown (by `check-config`, in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Public,
    /// Never shown: `***`.
    Secret,
    /// A URL whose password is hidden.
    UrlPassword,
}

/// One setting: an environment variable and the command-line flag of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub fallback: Fallback,
    pub help: &'static str,
    pub secrecy: Secrecy,
}

impl Setting {
    /// A setting with a default value.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Self {
        Setting {
            name,
            fallback: Fallback::Value(default),
            help,
            secrecy: Secrecy::Public,
        }
    }

    /// A setting without a default; `meaning` says what leaving it unset does.
    pub const fn unset(name: &'static str, meaning: &'static str, help: &'static str) -> Self {
        Setting {
            name,
            fallback: Fallback::Unset(meaning),
            help,
            secrecy: Secrecy::Public,
        }
    }

    pub const fn secret(self, secrecy: Secrecy) -> Self {
        Setting { secrecy, ..self }
    }

    /// The default value, if the setting has one.
    pub const fn default_value(&self) -> Option<&'static str> {
        match self.fallback {
            Fallback::Value(v) => Some(v),
            Fallback::Unset(_) => None,
        }
    }

    /// The default as a whole number, for the `Default` impls of the settings structs. Meant
    /// for const contexts (`const { S.default_number() }`), where a default that is not a
    /// whole number stops the build instead of the service.
    pub const fn default_number(&self) -> u64 {
        match self.fallback {
            Fallback::Value(text) => const_parse_u64(text),
            Fallback::Unset(_) => panic!("the setting has no default value"),
        }
    }

    /// The default as text, for const contexts (see [`Setting::default_number`]).
    pub const fn default_text(&self) -> &'static str {
        match self.fallback {
            Fallback::Value(text) => text,
            Fallback::Unset(_) => panic!("the setting has no default value"),
        }
    }

    /// The command-line flag (without its dashes): the name in lowercase kebab case, so
    /// `DOCKER_BASE_URL` is `--docker-base-url`.
    pub fn flag(&self) -> String {
        self.name.to_ascii_lowercase().replace('_', "-")
    }

    /// `value` as it may be shown to an operator.
    pub fn shown(&self, value: &str) -> String {
        match self.secrecy {
            Secrecy::Public => value.to_owned(),
            Secrecy::Secret => "***".to_owned(),
            Secrecy::UrlPassword => crate::broker::config::redact_url(value),
        }
    }
}

/// Decimal digits to a number at compile time.
const fn const_parse_u64(text: &str) -> u64 {
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty(), "an empty default is not a number");
    let mut n: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i];
        assert!(digit.is_ascii_digit(), "a default is not a whole number");
        n = n * 10 + (digit - b'0') as u64;
        i += 1;
    }
    n
}

/// A titled group of settings, as the README and `--help` show them.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    pub title: &'static str,
    pub settings: &'static [Setting],
}

/// Every setting the service reads, by part of the service.
pub const CATALOGUE: &[Section] = &[
    Section {
        title: "core",
        settings: CORE_SETTINGS,
    },
    Section {
        title: "Docker",
        settings: crate::docker::config::SETTINGS,
    },
    Section {
        title: "HTTP",
        settings: crate::http::config::SETTINGS,
    },
    Section {
        title: "RabbitMQ Streams",
        settings: crate::broker::config::SETTINGS,
    },
    Section {
        title: "Agent",
        settings: crate::agent::SETTINGS,
    },
];

/// Every setting, in catalogue order.
pub fn all_settings() -> impl Iterator<Item = &'static Setting> {
    CATALOGUE.iter().flat_map(|section| section.settings.iter())
}

/// Secrets that may be given as a file instead (Docker secrets): the setting and its `_FILE`
/// form.
pub const SECRET_FILES: &[(Setting, Setting)] = &[
    (
        crate::http::config::API_TOKEN,
        crate::http::config::API_TOKEN_FILE,
    ),
    (
        crate::broker::config::RABBITMQ_URL,
        crate::broker::config::RABBITMQ_URL_FILE,
    ),
];

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

/// Every setting that could not be used (at least one), in the order they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// The first error (there always is one).
    pub fn first(&self) -> &ConfigError {
        // A `ConfigErrors` is only built from a non-empty list (see `Checks::finish`).
        &self.0[0]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects every error while a settings struct is read, so one run reports them all.
#[derive(Debug, Default)]
pub struct Checks {
    errors: Vec<ConfigError>,
}

impl Checks {
    /// The value, or `None` with the error recorded.
    pub fn ok<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }

    /// The value, or a placeholder with the error recorded. The placeholder is never used:
    /// [`Checks::finish`] fails when anything was recorded.
    pub fn take<T: Default>(&mut self, result: Result<T, ConfigError>) -> T {
        self.ok(result).unwrap_or_default()
    }

    /// Like [`Checks::ok`] for a reader that reports several errors.
    pub fn ok_all<T>(&mut self, result: Result<T, ConfigErrors>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(errors) => {
                self.errors.extend(errors.0);
                None
            }
        }
    }

    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// `value` when nothing failed and it could be built, else every error recorded.
    pub fn finish_some<T>(mut self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) => self.finish(value),
            None => {
                if self.errors.is_empty() {
                    // Values are missing only after a recorded error; say so rather than
                    // build a list without one.
                    self.errors.push(ConfigError::new(
                        "settings",
                        "",
                        "a value could not be read",
                    ));
                }
                Err(ConfigErrors(self.errors))
            }
        }
    }

    /// `value` when nothing failed, else every error recorded.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// A frozen view of the settings' values (from the environment and the command line). Tests
/// build one from pairs instead of mutating the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    /// Set `name` (a later value replaces an earlier one).
    pub fn insert(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    /// The value, if set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value in effect: the one given, else the default (`None` when neither).
    pub fn value(&self, setting: &Setting) -> Option<&str> {
        self.get(setting.name).or(setting.default_value())
    }

    /// The value in effect as text (empty when unset without a default).
    pub fn string(&self, setting: &Setting) -> String {
        self.value(setting).unwrap_or_default().to_owned()
    }

    /// The value in effect parsed as `T`. A setting without a default must be set.
    pub fn parse<T>(&self, setting: &Setting) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let Some(text) = self.value(setting) else {
            return Err(ConfigError::new(setting.name, "", "must be set"));
        };
        text.parse()
            .map_err(|e: T::Err| ConfigError::new(setting.name, text, e.to_string()))
    }

    /// A whole number at least `min`.
    pub fn number(&self, setting: &Setting, min: u64) -> Result<u64, ConfigError> {
        let n: u64 = self.parse(setting)?;
        if n < min {
            return Err(ConfigError::new(
                setting.name,
                &n.to_string(),
                format!("must be at least {min}"),
            ));
        }
        Ok(n)
    }

    /// A whole number from `min` to `max`, for values that size something at start-up: a
    /// value past `max` is refused with a message instead of failing an allocation later.
    pub fn number_within(&self, setting: &Setting, min: u64, max: u64) -> Result<u64, ConfigError> {
        let n = self.number(setting, min)?;
        if n > max {
            return Err(ConfigError::new(
                setting.name,
                &n.to_string(),
                format!("must be at most {max}"),
            ));
        }
        Ok(n)
    }

    /// A duration given in whole seconds (at least one, at most [`MAX_DURATION_SECS`]).
    pub fn seconds(&self, setting: &Setting) -> Result<Duration, ConfigError> {
        let secs = self.number(setting, 1)?;
        at_most_a_year(setting.name, secs, secs)?;
        Ok(Duration::from_secs(secs))
    }

    /// A duration given in whole milliseconds (at most a year).
    pub fn millis(&self, setting: &Setting) -> Result<Duration, ConfigError> {
        self.millis_at_least(setting, 0)
    }

    /// A duration given in whole milliseconds, at least `min` and at most a year.
    pub fn millis_at_least(&self, setting: &Setting, min: u64) -> Result<Duration, ConfigError> {
        let millis = self.number(setting, min)?;
        at_most_a_year(setting.name, millis, millis / 1000)?;
        Ok(Duration::from_millis(millis))
    }

    /// The bounds of a reconnect backoff (the engine's, the broker's): the first pause and the
    /// longest, in milliseconds, each at least 1 ms (a zero pause would retry in a busy loop),
    /// the longest at least the first.
    pub fn reconnect_bounds(
        &self,
        min: &Setting,
        max: &Setting,
    ) -> Result<(Duration, Duration), ConfigErrors> {
        let mut checks = Checks::default();
        let first = checks.ok(self.millis_at_least(min, 1));
        let longest = checks.ok(self.millis_at_least(max, 1));
        if let (Some(first), Some(longest)) = (first, longest) {
            if longest < first {
                checks.push(ConfigError::new(
                    max.name,
                    &longest.as_millis().to_string(),
                    format!("must be at least {}", min.name),
                ));
            }
            return checks.finish((first, longest));
        }
        checks.finish((Duration::ZERO, Duration::ZERO))
    }

    /// These values with each secret given as a file (`API_TOKEN_FILE`, ...) read into the
    /// secret's own name, plus every problem with those files. The file's trailing line break
    /// is dropped; giving both forms is an error naming both.
    pub fn with_secret_files(&self) -> (Vars, Vec<ConfigError>) {
        let mut resolved = self.clone();
        let mut errors = Vec::new();
        for (secret, file) in SECRET_FILES {
            let Some(path) = self.get(file.name) else {
                continue;
            };
            if self.get(secret.name).is_some() {
                errors.push(ConfigError::new(
                    file.name,
                    path,
                    format!(
                        "{} is set too: give either {} or {}",
                        secret.name, secret.name, file.name
                    ),
                ));
                continue;
            }
            match std::fs::read_to_string(path) {
                Ok(content) => {
                    let content = content
                        .strip_suffix('\n')
                        .map(|c| c.strip_suffix('\r').unwrap_or(c))
                        .unwrap_or(&content);
                    if content.trim().is_empty() {
                        errors.push(ConfigError::new(file.name, path, "the file is empty"));
                    } else {
                        resolved.insert(secret.name, content);
                    }
                }
                Err(e) => errors.push(ConfigError::new(
                    file.name,
                    path,
                    format!("cannot read the file: {e}"),
                )),
            }
        }
        (resolved, errors)
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

pub const LABEL_PREFIX: Setting = Setting::new(
    "LABEL_PREFIX",
    "autoscaler",
    "prefix of the labels read (`<prefix>.enabled`, `.metric`, `.min`, ...)",
);
pub const CHANGE_LOG_CAPACITY: Setting = Setting::new(
    "CHANGE_LOG_CAPACITY",
    "4096",
    "changes kept for clients resuming an event stream (1 to 1000000)",
);
/// The largest change log accepted. The log's slots are allocated at start-up and every kept
/// change holds its rendered body (a `services.updated` carries the whole list), so a log
/// this long already costs memory in proportion to the busiest hour of most clusters; an
/// absurd value would make the allocation fail and abort the process instead of reporting it.
pub const MAX_CHANGE_LOG_CAPACITY: u64 = 1_000_000;
pub const HEALTH_CHECK_INTERVAL_SEC: Setting = Setting::new(
    "HEALTH_CHECK_INTERVAL_SEC",
    "30",
    "seconds between two `health.check` events to every sink",
);
pub const LOG_LEVEL: Setting = Setting::new(
    "LOG_LEVEL",
    "info",
    "error, warn, info, debug, trace (Python names accepted); `RUST_LOG` overrides",
);
pub const LOG_FORMAT: Setting = Setting::new(
    "LOG_FORMAT",
    "text",
    "`text` (the suite's line) or `json` (one object per line, same fields)",
);

/// The core's settings, in the order the README lists them.
pub const CORE_SETTINGS: &[Setting] = &[
    LABEL_PREFIX,
    CHANGE_LOG_CAPACITY,
    HEALTH_CHECK_INTERVAL_SEC,
    LOG_LEVEL,
    LOG_FORMAT,
];

/// Settings of the core: label rules, history size, beacons, logging.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// LABEL_PREFIX: the prefix of the registry's labels.
    pub label_prefix: String,
    /// CHANGE_LOG_CAPACITY: how many recent changes resuming clients can replay.
    pub change_log_capacity: usize,
    /// HEALTH_CHECK_INTERVAL_SEC: how often `health.check` goes to every sink.
    pub health_check_interval: Duration,
    /// LOG_LEVEL: error, warn, info, debug or trace.
    pub log_level: String,
    /// LOG_FORMAT: the suite's text line or one JSON object per line.
    pub log_format: LogFormat,
}

impl CoreConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigErrors> {
        let mut checks = Checks::default();
        let log_level = vars.string(&LOG_LEVEL).to_ascii_lowercase();
        let log_level = match log_level.as_str() {
            "warning" => "warn".to_owned(),
            "critical" => "error".to_owned(),
            "error" | "warn" | "info" | "debug" | "trace" => log_level,
            _ => {
                checks.push(ConfigError::new(
                    LOG_LEVEL.name,
                    &log_level,
                    "expected one of error, warn, info, debug, trace",
                ));
                log_level
            }
        };
        let log_format = checks.take(vars.parse(&LOG_FORMAT));
        let label_prefix = vars.string(&LABEL_PREFIX);
        if label_prefix.contains(char::is_whitespace) {
            checks.push(ConfigError::new(
                LABEL_PREFIX.name,
                &label_prefix,
                "must not contain whitespace",
            ));
        }
        let config = CoreConfig {
            label_prefix,
            change_log_capacity: checks.take(vars.number_within(
                &CHANGE_LOG_CAPACITY,
                1,
                MAX_CHANGE_LOG_CAPACITY,
            )) as usize,
            health_check_interval: checks.take(vars.seconds(&HEALTH_CHECK_INTERVAL_SEC)),
            log_level,
            log_format,
        };
        checks.finish(config)
    }
}

/// Every part's settings, read and checked before anything starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub core: CoreConfig,
    pub swarm: SwarmConfig,
    pub http: HttpConfig,
    /// `None` when RABBITMQ_URL is unset: publishing is off.
    pub broker: Option<BrokerConfig>,
}

impl Settings {
    /// Read every part's settings from `vars` (secrets given as files included), reporting
    /// every bad value.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigErrors> {
        let (vars, file_errors) = vars.with_secret_files();
        let mut checks = Checks::default();
        for error in file_errors {
            checks.push(error);
        }
        let core = checks.ok_all(CoreConfig::from_vars(&vars));
        let swarm = checks.ok_all(SwarmConfig::from_vars(&vars));
        let http = checks.ok_all(HttpConfig::from_vars(&vars));
        let broker = checks.ok_all(BrokerConfig::from_vars(&vars));
        let settings = match (core, swarm, http, broker) {
            (Some(core), Some(swarm), Some(http), Some(broker)) => Some(Settings {
                core,
                swarm,
                http,
                broker,
            }),
            _ => None,
        };
        checks.finish_some(settings)
    }

    /// The effective value of every setting, one `NAME=value` line each, secrets masked;
    /// defaults and unset settings say so.
    pub fn describe(vars: &Vars) -> String {
        let (resolved, _) = vars.with_secret_files();
        let mut out = String::new();
        for section in CATALOGUE {
            out.push_str(&format!("# {}\n", section.title));
            for setting in section.settings {
                let line = match (resolved.get(setting.name), setting.fallback) {
                    (Some(value), _) => format!("{}={}", setting.name, setting.shown(value)),
                    (None, Fallback::Value(default)) => {
                        format!("{}={}  (default)", setting.name, setting.shown(default))
                    }
                    (None, Fallback::Unset(meaning)) => {
                        format!("{}=  (unset: {meaning})", setting.name)
                    }
                };
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOME_MS: Setting = Setting::new("SOME_MS", "1", "a test setting");
    const MIN_MS: Setting = Setting::new("MIN_MS", "100", "a test setting");
    const MAX_MS: Setting = Setting::new("MAX_MS", "1000", "a test setting");

    fn core(pairs: &[(&str, &str)]) -> Result<CoreConfig, ConfigErrors> {
        CoreConfig::from_vars(&Vars::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let core = core(&[("LOG_LEVEL", " ")]).unwrap();
        assert_eq!(core.label_prefix, "autoscaler");
        assert_eq!(core.change_log_capacity, 4096);
        assert_eq!(core.health_check_interval, Duration::from_secs(30));
        assert_eq!(core.log_level, "info");
        assert_eq!(core.log_format, LogFormat::Text);
    }

    #[test]
    fn python_level_names_are_accepted() {
        let core = core(&[("LOG_LEVEL", "WARNING")]).unwrap();
        assert_eq!(core.log_level, "warn");
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        assert_eq!(
            core(&[("LOG_FORMAT", "json")]).unwrap().log_format,
            LogFormat::Json
        );
        let err = core(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(err.first().name, "LOG_FORMAT");
        assert!(err.first().reason.contains("text or json"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = core(&[("HEALTH_CHECK_INTERVAL_SEC", "soon")]).unwrap_err();
        assert_eq!(err.first().name, "HEALTH_CHECK_INTERVAL_SEC");
        assert!(
            err.to_string()
                .contains("HEALTH_CHECK_INTERVAL_SEC=\"soon\""),
            "{err}"
        );
        let err = core(&[("HEALTH_CHECK_INTERVAL_SEC", "0")]).unwrap_err();
        assert!(err.first().reason.contains("at least 1"), "{err}");
        let err = core(&[("HEALTH_CHECK_INTERVAL_SEC", "99999999999999")]).unwrap_err();
        assert!(err.first().reason.contains("at most a year"), "{err}");
        let vars = Vars::from_pairs([("SOME_MS", "99999999999999999")]);
        assert!(vars.millis(&SOME_MS).is_err());
        let err = core(&[("LOG_LEVEL", "loud")]).unwrap_err();
        assert_eq!(err.first().name, "LOG_LEVEL");
    }

    #[test]
    fn the_change_log_capacity_is_bounded_at_start_up() {
        let largest = MAX_CHANGE_LOG_CAPACITY.to_string();
        let core_ok = core(&[("CHANGE_LOG_CAPACITY", &largest)]).unwrap();
        assert_eq!(core_ok.change_log_capacity as u64, MAX_CHANGE_LOG_CAPACITY);
        for huge in [
            (MAX_CHANGE_LOG_CAPACITY + 1).to_string(),
            u64::MAX.to_string(),
        ] {
            let err = core(&[("CHANGE_LOG_CAPACITY", &huge)]).unwrap_err();
            assert_eq!(err.first().name, "CHANGE_LOG_CAPACITY");
            assert_eq!(
                err.first().reason,
                format!("must be at most {MAX_CHANGE_LOG_CAPACITY}"),
                "{err}"
            );
        }
        let err = core(&[("CHANGE_LOG_CAPACITY", "0")]).unwrap_err();
        assert!(err.first().reason.contains("at least 1"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = core(&[("LOG_LEVEL", "loud"), ("CHANGE_LOG_CAPACITY", "0")]).unwrap_err();
        let names: Vec<_> = err.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["LOG_LEVEL", "CHANGE_LOG_CAPACITY"]);
        assert_eq!(err.to_string().lines().count(), 2, "{err}");

        let err = Settings::from_vars(&Vars::from_pairs([
            ("PORT", "abc"),
            ("REFRESH_INTERVAL_SEC", "0"),
            ("HOST", "nowhere"),
            ("RABBITMQ_URL", "ftp://x"),
        ]))
        .unwrap_err();
        let mut names: Vec<_> = err.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["HOST", "PORT", "RABBITMQ_URL", "REFRESH_INTERVAL_SEC"]
        );
    }

    #[test]
    fn reconnect_bounds_are_read_alike() {
        let bounds = |pairs: &[(&str, &str)]| {
            Vars::from_pairs(pairs.iter().copied()).reconnect_bounds(&MIN_MS, &MAX_MS)
        };
        assert_eq!(
            bounds(&[]).unwrap(),
            (Duration::from_millis(100), Duration::from_millis(1000))
        );
        assert_eq!(
            bounds(&[("MIN_MS", "5"), ("MAX_MS", "5")]).unwrap(),
            (Duration::from_millis(5), Duration::from_millis(5))
        );
        let err = bounds(&[("MAX_MS", "50")]).unwrap_err();
        assert_eq!(err.first().name, "MAX_MS");
        assert_eq!(err.first().reason, "must be at least MIN_MS");
        let err = bounds(&[("MIN_MS", "0"), ("MAX_MS", "x")]).unwrap_err();
        let names: Vec<_> = err.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["MIN_MS", "MAX_MS"]);
    }

    #[test]
    fn every_default_in_the_catalogue_is_accepted() {
        let settings = Settings::from_vars(&Vars::default()).unwrap();
        assert_eq!(settings.swarm, SwarmConfig::default());
        assert_eq!(settings.http, HttpConfig::default());
        assert_eq!(settings.broker, None);
        let mut names: Vec<_> = all_settings().map(|s| s.name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a setting is declared twice");
    }

    #[test]
    fn secrets_can_be_files() {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let path = token.to_str().unwrap();

        let settings = Settings::from_vars(&Vars::from_pairs([("API_TOKEN_FILE", path)])).unwrap();
        assert_eq!(settings.http.api_token.as_deref(), Some("s3cret"));

        let err = Settings::from_vars(&Vars::from_pairs([
            ("API_TOKEN_FILE", path),
            ("API_TOKEN", "other"),
        ]))
        .unwrap_err();
        assert_eq!(err.first().name, "API_TOKEN_FILE");
        assert!(err.first().reason.contains("API_TOKEN is set too"), "{err}");

        let missing = dir.join("absent");
        let missing = missing.to_str().unwrap();
        let err =
            Settings::from_vars(&Vars::from_pairs([("RABBITMQ_URL_FILE", missing)])).unwrap_err();
        assert_eq!(err.first().name, "RABBITMQ_URL_FILE");
        assert!(err.to_string().contains(missing), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_description_masks_secrets() {
        let text = Settings::describe(&Vars::from_pairs([
            ("API_TOKEN", "hunter2"),
            ("RABBITMQ_URL", "amqp://guest:hunter3@rabbit:5672/"),
            ("PORT", "8080"),
        ]));
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3"),
            "{text}"
        );
        assert!(text.contains("API_TOKEN=***\n"), "{text}");
        assert!(
            text.contains("RABBITMQ_URL=amqp://guest:***@rabbit:5672/\n"),
            "{text}"
        );
        assert!(text.contains("PORT=8080\n"), "{text}");
        assert!(text.contains("HOST=0.0.0.0  (default)\n"), "{text}");
        assert!(text.contains("STALE_AFTER_SEC=  (unset: "), "{text}");
    }

    /// The README's configuration table lists every setting, each once, with the catalogue's
    /// default (or as unset with the catalogue's meaning), and nothing else.
    #[test]
    fn the_readme_table_is_the_catalogue() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let section = &section[..section.find("\n## ").unwrap()];
        let rows: Vec<(&str, &str)> = section
            .lines()
            .filter_map(|line| {
                let mut cells = line.split(" | ");
                let name = cells.next()?.strip_prefix("| `")?.strip_suffix('`')?;
                Some((name, cells.next()?))
            })
            .collect();
        let names: Vec<&str> = rows.iter().map(|(name, _)| *name).collect();
        let catalogue: Vec<&str> = all_settings().map(|s| s.name).collect();
        assert_eq!(names, catalogue);
        for (setting, (_, default)) in all_settings().zip(&rows) {
            let expected = match setting.fallback {
                Fallback::Value(value) => format!("`{value}`"),
                Fallback::Unset(meaning) => format!("unset ({meaning})"),
            };
            assert_eq!(*default, expected, "{}", setting.name);
        }
    }

    #[test]
    fn flags_are_the_names_in_kebab_case() {
        assert_eq!(
            crate::docker::config::DOCKER_BASE_URL.flag(),
            "docker-base-url"
        );
        assert_eq!(crate::http::config::PORT.flag(), "port");
    }
}
