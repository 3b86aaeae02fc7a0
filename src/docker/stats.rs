//! From container stats readings to a service's metrics, the way `docker stats` computes them.
//!
//! Docker's one-shot stats carry no previous CPU reading, so CPU % is always the delta between
//! two of our own readings of the same container. Pure functions over plain data.

use std::collections::HashMap;

use pipeline::{Metrics, Timestamp, UnsampledTask};

use super::engine::StatsReading;

/// Memory figures as the engine reports them, before page cache is subtracted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryFigures {
    pub usage: Option<u64>,
    pub stats: HashMap<String, u64>,
}

/// Memory in use as `docker stats` shows it: usage minus inactive file pages (cgroup v1's
/// `total_inactive_file`, v2's `inactive_file`), when that is smaller than usage.
pub fn memory_used(figures: &MemoryFigures) -> u64 {
    let usage = figures.usage.unwrap_or(0);
    let inactive = figures
        .stats
        .get("total_inactive_file")
        .or_else(|| figures.stats.get("inactive_file"))
        .copied();
    match inactive {
        Some(v) if v < usage => usage - v,
        _ => usage,
    }
}

/// CPU % between two readings of one container: the container's share of the host's CPU time
/// in the interval, scaled by online CPUs (so one busy core on any host reads 100 %). `None`
/// when the readings cannot be compared (counters went backwards: the container restarted).
pub fn cpu_percent(earlier: &StatsReading, later: &StatsReading) -> Option<f64> {
    let cpu = later.cpu_total.checked_sub(earlier.cpu_total)?;
    let system = later.system_total.checked_sub(earlier.system_total)?;
    if system == 0 {
        return None;
    }
    let cpus = f64::from(later.online_cpus.max(1));
    Some(cpu as f64 / system as f64 * cpus * 100.0)
}

/// What one sampled task contributed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFigures {
    pub cpu_pct: f64,
    pub memory_used: u64,
    /// The task's memory limit, when its spec sets one.
    pub memory_limit: Option<u64>,
    /// The seconds between the two readings behind `cpu_pct`.
    pub window_secs: f64,
}

/// The figures of one task from two readings, or why they cannot be had.
pub fn task_figures(
    earlier: &StatsReading,
    later: &StatsReading,
    memory_limit: Option<u64>,
) -> Result<TaskFigures, String> {
    let cpu_pct = cpu_percent(earlier, later)
        .ok_or_else(|| "its CPU counters went backwards (restarted between readings)".to_owned())?;
    Ok(TaskFigures {
        cpu_pct,
        memory_used: later.memory_used,
        memory_limit,
        window_secs: later
            .taken_at
            .saturating_duration_since(earlier.taken_at)
            .as_secs_f64(),
    })
}

/// A service's metrics: averages over its sampled tasks. `None` when it has no running task
/// (clients must see "no metrics", never zeros: zeros would scale a stopped service).
/// Running tasks none of which could be sampled also give `None`; `unsampled` says why.
pub fn summarize(
    sampled: &[TaskFigures],
    unsampled: Vec<UnsampledTask>,
    tasks_running: u64,
    at: Timestamp,
) -> Option<Metrics> {
    if tasks_running == 0 || sampled.is_empty() {
        return None;
    }
    let n = sampled.len() as f64;
    let cpu_pct = sampled.iter().map(|t| t.cpu_pct).sum::<f64>() / n;
    let memory_bytes = sampled.iter().map(|t| t.memory_used as f64).sum::<f64>() / n;
    let memory_pct = sampled
        .iter()
        .map(|t| {
            t.memory_limit
                .filter(|l| *l > 0)
                .map(|l| t.memory_used as f64 / l as f64 * 100.0)
        })
        .collect::<Option<Vec<f64>>>()
        .map(|pcts| pcts.iter().sum::<f64>() / n);
    let window = sampled.iter().map(|t| t.window_secs).sum::<f64>() / n;
    Some(Metrics {
        cpu_pct: round2(cpu_pct),
        memory_bytes: memory_bytes.round(),
        memory_pct: memory_pct.map(round2),
        sampled_at_ms: at.0,
        source: "docker".to_owned(),
        tasks_running,
        tasks_sampled: sampled.len() as u64,
        timestamp: at.epoch_seconds(),
        unsampled_tasks: unsampled,
        // Whole seconds, as the contract types it; a sub-second window still counts as one.
        window_seconds: (window.round() as u64).max(1),
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn reading(at: Instant, cpu: u64, system: u64, mem: u64) -> StatsReading {
        StatsReading {
            taken_at: at,
            cpu_total: cpu,
            system_total: system,
            online_cpus: 2,
            memory_used: mem,
        }
    }

    #[test]
    fn memory_subtracts_inactive_file_like_docker_stats() {
        let mut f = MemoryFigures {
            usage: Some(1000),
            stats: HashMap::from([("inactive_file".to_owned(), 300)]),
        };
        assert_eq!(memory_used(&f), 700);
        f.stats.insert("total_inactive_file".to_owned(), 100);
        assert_eq!(memory_used(&f), 900, "cgroup v1's figure wins");
        f.stats.insert("total_inactive_file".to_owned(), 5000);
        assert_eq!(memory_used(&f), 1000, "never below zero");
        assert_eq!(memory_used(&MemoryFigures::default()), 0);
    }

    #[test]
    fn cpu_is_the_share_of_host_time_scaled_by_cpus() {
        let t = Instant::now();
        let a = reading(t, 1_000, 10_000, 0);
        // One of two CPUs fully busy: the container used half of the host's CPU time.
        let b = reading(t + Duration::from_secs(1), 6_000, 20_000, 0);
        assert_eq!(cpu_percent(&a, &b), Some(100.0));
        assert_eq!(cpu_percent(&b, &a), None);
        assert_eq!(cpu_percent(&a, &a), None, "no host time passed");
    }

    #[test]
    fn summary_averages_and_reports_its_basis() {
        let t = Instant::now();
        let busy = task_figures(
            &reading(t, 0, 0, 0),
            &reading(t + Duration::from_millis(600), 900, 1_000, 300),
            Some(1000),
        )
        .unwrap();
        let idle = task_figures(
            &reading(t, 0, 0, 0),
            &reading(t + Duration::from_millis(400), 100, 1_000, 100),
            Some(1000),
        )
        .unwrap();
        let skipped = vec![UnsampledTask {
            task_id: "t3".into(),
            reason: "runs on node n2".into(),
        }];
        let m = summarize(
            &[busy.clone(), idle],
            skipped.clone(),
            3,
            Timestamp(1_700_000_000_500),
        )
        .unwrap();
        assert_eq!(m.cpu_pct, 100.0);
        assert_eq!(m.memory_bytes, 200.0);
        assert_eq!(m.memory_pct, Some(20.0));
        assert_eq!((m.tasks_running, m.tasks_sampled), (3, 2));
        assert_eq!(m.window_seconds, 1);
        assert_eq!(m.timestamp, 1_700_000_000);
        assert_eq!(m.source, "docker");
        assert_eq!(m.unsampled_tasks, skipped);

        let mut unlimited = busy.clone();
        unlimited.memory_limit = None;
        let m = summarize(&[busy, unlimited], vec![], 2, Timestamp(0)).unwrap();
        assert_eq!(m.memory_pct, None, "a percentage needs every task's limit");
    }

    #[test]
    fn no_running_task_means_no_metrics_never_zeros() {
        assert_eq!(summarize(&[], vec![], 0, Timestamp(0)), None);
        let reason = vec![UnsampledTask {
            task_id: "t".into(),
            reason: "x".into(),
        }];
        assert_eq!(summarize(&[], reason, 1, Timestamp(0)), None);
    }

    #[test]
    fn restarted_container_is_reported_not_averaged() {
        let t = Instant::now();
        let err =
            task_figures(&reading(t, 500, 500, 0), &reading(t, 10, 900, 0), None).unwrap_err();
        assert!(err.contains("restarted"), "{err}");
    }
}
