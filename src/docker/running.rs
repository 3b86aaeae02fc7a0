//! Running task counts that follow the engine's container events without waiting for the
//! swarm manager.
//!
//! The manager's count (a service's `RunningTasks`, which lists and inspects report) catches
//! up with a task's container tens to hundreds of milliseconds after the engine reports the
//! container started or died (measured on Docker 20.10: 50-100 ms after a start, 200-500 ms
//! after a die). No event follows when it does, so inspecting on the container event shows
//! the old count. Instead the container event itself moves the count: each start or die on
//! the engine we talk to is a step the manager has not counted yet, added to whatever count
//! it reports, until a later report moves the same way (the manager counted it) or the step
//! is older than [`SETTLED_AFTER`] (surely counted by then; the report is trusted as is).
//! Containers on other nodes are not seen here; their tasks are counted by the manager only.
//!
//! Matching steps to reports by count is ambiguous in one case: a step whose event arrives
//! after a report that already counted it (events replayed when the stream reopens, or a
//! container starting while a list is in flight) is counted twice. So no step is left to
//! stand for long: a service whose oldest uncounted step reaches [`SETTLED_AFTER`] is due for
//! a settling inspect ([`RunningCounts::due_to_settle`]), whose report is then trusted as is.
//! A miscount lasts at most that long plus one inspect, not until the next periodic poll.
//!
//! Pure state over caller-supplied instants: tested without a runtime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use pipeline::ServiceSpec;
use tokio::time::Instant;

/// How long the manager may take to count a container's start or death. Six times the
/// longest delay measured; a report after it is trusted over the events.
pub const SETTLED_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Counted {
    /// The running count the engine last reported for the service (the manager's own).
    /// Only the count is kept, not the spec: a step folds as a new count
    /// ([`pipeline::Input::RunningTasks`]), and a spec per service here would double the
    /// source's memory at scale.
    reported: Option<u64>,
    /// Container starts minus deaths the manager had not counted at that report.
    uncounted: i64,
    /// When the oldest of those steps happened.
    since: Option<Instant>,
}

impl Counted {
    /// The running count as the events say it is.
    fn current(&self) -> Option<u64> {
        self.reported.map(|reported| {
            let running = i64::try_from(reported)
                .unwrap_or(i64::MAX)
                .saturating_add(self.uncounted);
            u64::try_from(running).unwrap_or(0)
        })
    }
}

/// The services the engine reported, with their uncounted container steps.
#[derive(Debug, Default)]
pub struct RunningCounts {
    services: HashMap<String, Counted>,
    /// When each service's oldest uncounted step settles, in the order the steps happened
    /// (instants only move forward, so this is sorted). An entry whose service has since been
    /// reconciled, or whose steps restarted later, is skipped when its time comes.
    settling: VecDeque<(Instant, String)>,
}

impl RunningCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// An inspect or a list reported `spec` at `now`: the spec to fold, its running count
    /// including the container steps the manager has still not counted.
    pub fn reported(&mut self, mut spec: ServiceSpec, now: Instant) -> ServiceSpec {
        let (mut uncounted, mut since) = (0, None);
        if let Some(prev) = self.services.get(&spec.id) {
            if prev
                .since
                .is_some_and(|t| now.saturating_duration_since(t) < SETTLED_AFTER)
            {
                uncounted = prev.uncounted;
                since = prev.since;
                let moved = match (prev.reported, spec.running_tasks) {
                    (Some(old), Some(new)) => {
                        i64::try_from(new).unwrap_or(i64::MAX)
                            - i64::try_from(old).unwrap_or(i64::MAX)
                    }
                    _ => 0,
                };
                // Steps the manager has counted since its last report, in the direction of
                // the uncounted ones.
                if moved.signum() == uncounted.signum() {
                    let counted = moved.abs().min(uncounted.abs());
                    uncounted -= counted * uncounted.signum();
                }
                if uncounted == 0 {
                    since = None;
                }
            }
        }
        let counted = Counted {
            reported: spec.running_tasks,
            uncounted,
            since,
        };
        spec.running_tasks = counted.current();
        match self.services.get_mut(spec.id.as_str()) {
            Some(known) => *known = counted,
            None => {
                self.services.insert(spec.id.clone(), counted);
            }
        }
        spec
    }

    /// A container of a task of `service_id` started (`step` 1) or died (`step` -1) on the
    /// engine at `now`. The running count to fold, or `None` for a service never reported
    /// (or removed), or reported without a count.
    pub fn container_step(&mut self, service_id: &str, step: i64, now: Instant) -> Option<u64> {
        let counted = self.services.get_mut(service_id)?;
        if counted
            .since
            .is_some_and(|t| now.saturating_duration_since(t) >= SETTLED_AFTER)
        {
            // Whatever was uncounted is counted by now (the manager's next report says so).
            counted.uncounted = 0;
        }
        if counted.uncounted == 0 {
            counted.since = Some(now);
            self.settling
                .push_back((now + SETTLED_AFTER, service_id.to_owned()));
        }
        counted.uncounted += step;
        // A death the manager's count no longer includes was counted already.
        let reported = counted
            .reported
            .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        counted.uncounted = counted.uncounted.max(-reported);
        if counted.uncounted == 0 {
            counted.since = None;
        }
        counted.current()
    }

    /// When the next service is due for a settling inspect, if any may be.
    pub fn next_settle(&self) -> Option<Instant> {
        self.settling.front().map(|(at, _)| *at)
    }

    /// The services whose oldest uncounted step is [`SETTLED_AFTER`] old at `now`: the
    /// manager has surely counted it, so an inspect now says the true count.
    pub fn due_to_settle(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.settling.front() {
            if *at > now {
                break;
            }
            let Some((at, id)) = self.settling.pop_front() else {
                break;
            };
            let still = self
                .services
                .get(&id)
                .is_some_and(|c| c.since.is_some_and(|since| since + SETTLED_AFTER == at));
            if still && !due.contains(&id) {
                due.push(id);
            }
        }
        due
    }

    /// The service is gone.
    pub fn forget(&mut self, service_id: &str) {
        self.services.remove(service_id);
    }

    /// After a full list: forget the services it no longer has.
    pub fn keep_only(&mut self, ids: &HashSet<&str>) {
        self.services.retain(|id, _| ids.contains(id.as_str()));
    }

    /// Services known.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::ServiceMode;

    fn spec(id: &str, running: u64) -> ServiceSpec {
        ServiceSpec {
            id: id.into(),
            name: id.into(),
            labels: Default::default(),
            mode: ServiceMode::Replicated(3),
            created_at: String::new(),
            updated_at: String::new(),
            version: 1,
            running_tasks: Some(running),
            desired_tasks: Some(3),
        }
    }

    #[test]
    fn container_events_move_the_count_before_the_manager_does() {
        let t0 = Instant::now();
        let mut c = RunningCounts::new();
        assert_eq!(c.reported(spec("a", 0), t0).running_tasks, Some(0));
        assert_eq!(c.container_step("a", 1, t0), Some(1));
        assert_eq!(c.container_step("a", 1, t0), Some(2));
        // The manager has not counted them yet.
        assert_eq!(c.reported(spec("a", 0), t0).running_tasks, Some(2));
        // It counted one, then both: never counted twice.
        assert_eq!(c.reported(spec("a", 1), t0).running_tasks, Some(2));
        assert_eq!(c.reported(spec("a", 2), t0).running_tasks, Some(2));
        // From now on its reports are the count.
        assert_eq!(c.reported(spec("a", 3), t0).running_tasks, Some(3));
        assert_eq!(c.container_step("a", -1, t0), Some(2));
        assert_eq!(c.reported(spec("a", 3), t0).running_tasks, Some(2));
        assert_eq!(c.reported(spec("a", 2), t0).running_tasks, Some(2));
        assert_eq!(c.reported(spec("a", 1), t0).running_tasks, Some(1));
    }

    #[test]
    fn a_report_moving_the_other_way_counts_nothing_of_ours() {
        let t0 = Instant::now();
        let mut c = RunningCounts::new();
        c.reported(spec("a", 2), t0);
        assert_eq!(c.container_step("a", 1, t0), Some(3));
        // A task on another node died; our start is still uncounted.
        assert_eq!(c.reported(spec("a", 1), t0).running_tasks, Some(2));
        // A restart here: died and started again, nothing uncounted on balance.
        assert_eq!(c.container_step("a", -1, t0), Some(1));
        assert_eq!(c.container_step("a", 1, t0), Some(2));
    }

    #[test]
    fn after_the_settling_time_the_manager_is_trusted() {
        let t0 = Instant::now();
        let mut c = RunningCounts::new();
        c.reported(spec("a", 1), t0);
        c.container_step("a", 1, t0);
        let late = t0 + SETTLED_AFTER;
        assert_eq!(c.reported(spec("a", 1), late).running_tasks, Some(1));
        assert_eq!(c.container_step("a", -1, late), Some(0));
    }

    #[test]
    fn a_step_left_unmatched_is_due_for_settling_once() {
        let t0 = Instant::now();
        let mut c = RunningCounts::new();
        c.reported(spec("a", 1), t0);
        c.reported(spec("b", 1), t0);
        assert_eq!(c.next_settle(), None);
        // A replayed start the manager had counted already: counted twice for now.
        assert_eq!(c.container_step("a", 1, t0), Some(2));
        let t1 = t0 + Duration::from_secs(1);
        c.container_step("b", 1, t1);
        // A report that counted b's step: nothing left to settle for b.
        assert_eq!(c.reported(spec("b", 2), t1).running_tasks, Some(2));
        assert_eq!(c.next_settle(), Some(t0 + SETTLED_AFTER));
        assert!(c.due_to_settle(t0 + SETTLED_AFTER / 2).is_empty());
        assert_eq!(c.due_to_settle(t0 + SETTLED_AFTER), vec!["a".to_owned()]);
        assert!(
            c.due_to_settle(t1 + SETTLED_AFTER).is_empty(),
            "b was reconciled"
        );
        assert_eq!(c.next_settle(), None);
        // The settling inspect's report is trusted as is.
        let settled = t0 + SETTLED_AFTER;
        assert_eq!(c.reported(spec("a", 1), settled).running_tasks, Some(1));
        // Steps that restart later are due later, once.
        c.container_step("a", 1, settled);
        c.container_step("a", -1, settled);
        c.container_step("a", 1, settled);
        assert_eq!(
            c.due_to_settle(settled + SETTLED_AFTER),
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn unknown_and_removed_services_are_left_alone() {
        let t0 = Instant::now();
        let mut c = RunningCounts::new();
        assert_eq!(c.container_step("nope", 1, t0), None);
        c.reported(spec("a", 1), t0);
        c.reported(spec("b", 1), t0);
        c.forget("a");
        assert_eq!(c.container_step("a", -1, t0), None);
        c.keep_only(&HashSet::from(["c"]));
        assert!(c.is_empty());
        // Never below zero, and a service without counts keeps none.
        c.reported(spec("d", 0), t0);
        assert_eq!(c.container_step("d", -1, t0), Some(0));
        assert_eq!(c.container_step("d", 1, t0), Some(1));
        let mut bare = spec("e", 0);
        bare.running_tasks = None;
        c.reported(bare, t0);
        assert_eq!(c.container_step("e", 1, t0), None);
    }
}
