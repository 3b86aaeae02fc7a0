//! Turning a service's labels into its scaling configuration.
//!
//! The old registry dropped a service whose labels it could not parse, so one typo made a
//! service silently unscaled. Here a bad value never removes a service: the field takes its
//! default and the entry's `config_errors` names the label, the value and the reason.

use crate::model::{LabelError, ScalingMetric, ServiceEntry, ServiceMode, ServiceSpec, Thresholds};

/// The default scale-up threshold, in percent, for both metrics.
pub const DEFAULT_THRESHOLD: f64 = 70.0;
/// The default minimum replica count.
pub const DEFAULT_MIN_REPLICAS: u64 = 1;

/// How labels are read: only the prefix varies between deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRules {
    // The full label names, built once: the fold reads them for every service it sees.
    enabled: String,
    metric: String,
    cpu_threshold: String,
    memory_threshold: String,
    min: String,
    max: String,
}

impl Default for LabelRules {
    fn default() -> Self {
        LabelRules::new("autoscaler")
    }
}

impl LabelRules {
    /// Rules for labels named `<prefix>.enabled`, `<prefix>.min` and so on.
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}.{suffix}");
        LabelRules {
            enabled: name("enabled"),
            metric: name("metric"),
            cpu_threshold: name("cpu.threshold"),
            memory_threshold: name("memory.threshold"),
            min: name("min"),
            max: name("max"),
        }
    }

    /// Whether a service is under autoscaling: `<prefix>.enabled` is "true", in any case.
    pub fn is_enabled(&self, spec: &ServiceSpec) -> bool {
        spec.labels
            .get(&self.enabled)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// The entry clients see for an enabled service. Never fails: bad labels become defaults
    /// plus `config_errors`, and the result always satisfies `min_replicas <= max_replicas`.
    pub fn entry(&self, spec: &ServiceSpec) -> ServiceEntry {
        let mut errors = Vec::new();
        let current_replicas = match spec.mode {
            ServiceMode::Replicated(n) => n,
            ServiceMode::Global => spec.desired_tasks.unwrap_or(1),
        };
        let metric = self.metric(spec, &mut errors);
        let thresholds = Thresholds {
            cpu: self.threshold(spec, &self.cpu_threshold, &mut errors),
            memory: self.threshold(spec, &self.memory_threshold, &mut errors),
        };
        let default_max = current_replicas.max(2);
        let mut min = self
            .integer(spec, &self.min, "min", 0, &mut errors)
            .unwrap_or(DEFAULT_MIN_REPLICAS);
        let mut max = match self.integer(spec, &self.max, "max", 1, &mut errors) {
            Some(max) if max < min => {
                errors.push(LabelError {
                    label: self.max.clone(),
                    value: spec.labels.get(&self.max).cloned().unwrap_or_default(),
                    reason: format!(
                        "max_replicas {max} is below min_replicas {min}; using the default {default_max}"
                    ),
                });
                default_max
            }
            Some(max) => max,
            None => default_max,
        };
        if max < min {
            // Only reachable when the maximum is a default: the minimum is the value at fault.
            errors.push(LabelError {
                label: self.min.clone(),
                value: spec.labels.get(&self.min).cloned().unwrap_or_default(),
                reason: format!(
                    "min_replicas {min} exceeds max_replicas {max}; using the default {DEFAULT_MIN_REPLICAS}"
                ),
            });
            min = DEFAULT_MIN_REPLICAS;
            max = max.max(min);
        }
        ServiceEntry {
            config_errors: errors,
            created_at: spec.created_at.clone(),
            current_replicas,
            desired_tasks: spec.desired_tasks,
            id: spec.id.clone(),
            labels: spec.labels.clone(),
            max_replicas: max,
            metric,
            min_replicas: min,
            mode: match spec.mode {
                ServiceMode::Replicated(_) => "replicated".to_owned(),
                ServiceMode::Global => "global".to_owned(),
            },
            name: spec.name.clone(),
            running_tasks: spec.running_tasks,
            thresholds,
            updated_at: spec.updated_at.clone(),
            version: spec.version,
        }
    }

    fn metric(&self, spec: &ServiceSpec, errors: &mut Vec<LabelError>) -> ScalingMetric {
        let Some(value) = spec.labels.get(&self.metric) else {
            return ScalingMetric::Cpu;
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "cpu" => ScalingMetric::Cpu,
            "memory" => ScalingMetric::Memory,
            _ => {
                errors.push(LabelError {
                    label: self.metric.clone(),
                    value: value.clone(),
                    reason: "metric must be cpu or memory; using the default cpu".to_owned(),
                });
                ScalingMetric::Cpu
            }
        }
    }

    fn threshold(&self, spec: &ServiceSpec, label: &str, errors: &mut Vec<LabelError>) -> f64 {
        let Some(value) = spec.labels.get(label) else {
            return DEFAULT_THRESHOLD;
        };
        let reason = match value.trim().parse::<f64>() {
            Ok(t) if t.is_finite() && t > 0.0 && t <= 100.0 => return t,
            Ok(_) => "threshold must be a percentage in (0, 100]",
            Err(_) => "threshold is not a number",
        };
        errors.push(LabelError {
            label: label.to_owned(),
            value: value.clone(),
            reason: format!("{reason}; using the default {DEFAULT_THRESHOLD}"),
        });
        DEFAULT_THRESHOLD
    }

    /// An integer label at least `floor`, or `None` (with an error recorded when it was set).
    /// `what` names the setting in the reason.
    fn integer(
        &self,
        spec: &ServiceSpec,
        label: &str,
        what: &str,
        floor: i64,
        errors: &mut Vec<LabelError>,
    ) -> Option<u64> {
        let value = spec.labels.get(label)?;
        let reason = match value.trim().parse::<i64>() {
            Ok(n) if n >= floor => return u64::try_from(n).ok(),
            Ok(_) => format!("{what} must be at least {floor}"),
            Err(_) => format!("{what} is not a whole number"),
        };
        errors.push(LabelError {
            label: label.to_owned(),
            value: value.clone(),
            reason: format!("{reason}; using the default"),
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(labels: &[(&str, &str)], replicas: u64) -> ServiceSpec {
        ServiceSpec {
            id: "id1".into(),
            name: "web".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            mode: ServiceMode::Replicated(replicas),
            created_at: "2024-01-01T00:00:00Z".into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            version: 1,
            running_tasks: None,
            desired_tasks: None,
        }
    }

    fn error_labels(e: &ServiceEntry) -> Vec<&str> {
        e.config_errors.iter().map(|e| e.label.as_str()).collect()
    }

    #[test]
    fn enabled_is_case_insensitive_and_strict() {
        let rules = LabelRules::default();
        assert!(rules.is_enabled(&spec(&[("autoscaler.enabled", "TRUE")], 1)));
        assert!(rules.is_enabled(&spec(&[("autoscaler.enabled", "True")], 1)));
        assert!(!rules.is_enabled(&spec(&[("autoscaler.enabled", "yes")], 1)));
        assert!(!rules.is_enabled(&spec(&[("autoscaler.enabled", "false")], 1)));
        assert!(!rules.is_enabled(&spec(&[], 1)));
    }

    #[test]
    fn defaults_follow_the_contract() {
        let e = LabelRules::default().entry(&spec(&[("autoscaler.enabled", "true")], 5));
        assert_eq!(e.metric, ScalingMetric::Cpu);
        assert_eq!(
            e.thresholds,
            Thresholds {
                cpu: 70.0,
                memory: 70.0
            }
        );
        assert_eq!(e.min_replicas, 1);
        assert_eq!(e.max_replicas, 5);
        let e = LabelRules::default().entry(&spec(&[], 1));
        assert_eq!(e.max_replicas, 2);
        assert!(e.config_errors.is_empty());
    }

    #[test]
    fn explicit_values_are_used() {
        let e = LabelRules::default().entry(&spec(
            &[
                ("autoscaler.metric", "Memory"),
                ("autoscaler.cpu.threshold", "50"),
                ("autoscaler.memory.threshold", "80.5"),
                ("autoscaler.min", "2"),
                ("autoscaler.max", "5"),
            ],
            3,
        ));
        assert_eq!(e.metric, ScalingMetric::Memory);
        assert_eq!(
            e.thresholds,
            Thresholds {
                cpu: 50.0,
                memory: 80.5
            }
        );
        assert_eq!((e.min_replicas, e.max_replicas), (2, 5));
        assert!(e.config_errors.is_empty());
    }

    #[test]
    fn malformed_values_take_defaults_and_are_reported() {
        let e = LabelRules::default().entry(&spec(
            &[
                ("autoscaler.min", "abc"),
                ("autoscaler.max", "0"),
                ("autoscaler.cpu.threshold", "150"),
                ("autoscaler.memory.threshold", "NaN"),
                ("autoscaler.metric", "gpu"),
            ],
            1,
        ));
        assert_eq!(e.min_replicas, 1);
        assert_eq!(e.max_replicas, 2);
        assert_eq!(
            e.thresholds,
            Thresholds {
                cpu: 70.0,
                memory: 70.0
            }
        );
        assert_eq!(e.metric, ScalingMetric::Cpu);
        let mut labels = error_labels(&e);
        labels.sort();
        assert_eq!(
            labels,
            [
                "autoscaler.cpu.threshold",
                "autoscaler.max",
                "autoscaler.memory.threshold",
                "autoscaler.metric",
                "autoscaler.min"
            ]
        );
        let min_err = &e.config_errors[e
            .config_errors
            .iter()
            .position(|c| c.label == "autoscaler.min")
            .unwrap_or(0)];
        assert_eq!(min_err.value, "abc");
        assert!(
            min_err.reason.contains("not a whole number"),
            "{}",
            min_err.reason
        );
    }

    #[test]
    fn negative_min_and_zero_threshold_are_rejected() {
        let e = LabelRules::default().entry(&spec(
            &[("autoscaler.min", "-1"), ("autoscaler.cpu.threshold", "0")],
            1,
        ));
        assert_eq!(e.min_replicas, 1);
        assert_eq!(e.thresholds.cpu, 70.0);
        assert_eq!(e.config_errors.len(), 2);
    }

    #[test]
    fn max_below_min_is_the_max_at_fault() {
        let e = LabelRules::default().entry(&spec(
            &[("autoscaler.min", "3"), ("autoscaler.max", "2")],
            4,
        ));
        assert_eq!((e.min_replicas, e.max_replicas), (3, 4));
        assert_eq!(error_labels(&e), ["autoscaler.max"]);
    }

    #[test]
    fn min_above_default_max_is_the_min_at_fault() {
        let e = LabelRules::default().entry(&spec(&[("autoscaler.min", "9")], 1));
        assert_eq!((e.min_replicas, e.max_replicas), (1, 2));
        assert_eq!(error_labels(&e), ["autoscaler.min"]);
        // Both wrong: max falls back first, and if still too low the min does too.
        let e = LabelRules::default().entry(&spec(
            &[("autoscaler.min", "9"), ("autoscaler.max", "4")],
            1,
        ));
        assert_eq!((e.min_replicas, e.max_replicas), (1, 2));
        assert_eq!(error_labels(&e), ["autoscaler.max", "autoscaler.min"]);
    }

    #[test]
    fn prefix_is_configurable() {
        let rules = LabelRules::new("scale");
        let s = spec(
            &[
                ("scale.enabled", "true"),
                ("scale.min", "2"),
                ("scale.max", "3"),
            ],
            1,
        );
        assert!(rules.is_enabled(&s));
        let e = rules.entry(&s);
        assert_eq!((e.min_replicas, e.max_replicas), (2, 3));
    }

    #[test]
    fn global_services_use_their_desired_task_count() {
        let mut s = spec(&[], 0);
        s.mode = ServiceMode::Global;
        assert_eq!(LabelRules::default().entry(&s).current_replicas, 1);
        s.desired_tasks = Some(3);
        let e = LabelRules::default().entry(&s);
        assert_eq!(
            (e.current_replicas, e.max_replicas, e.mode.as_str()),
            (3, 3, "global")
        );
    }
}
