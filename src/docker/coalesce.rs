//! Coalescing bursts of events into few inspects, per service.
//!
//! The first event for a quiet service is acted on at once (the common case of one change
//! reaches the snapshot with no added delay). Events that follow while the service is "cooling"
//! only mark it dirty; one trailing inspect happens after a quiet window, or at the latest a
//! cap after the burst began, so a rolling update of many events costs a handful of inspects
//! and a never-ending burst still gets looked at regularly.
//!
//! Pure state over caller-supplied instants: tested without a runtime.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Cooling {
    /// When the current cooling period began (the last inspect).
    since: Instant,
    /// When the last event arrived during it.
    last_event: Instant,
    /// Whether any event arrived since the last inspect.
    dirty: bool,
}

impl Cooling {
    /// When this cooling period ends: after `quiet` without events, at most `cap` after it began.
    fn due_at(&self, quiet: Duration, cap: Duration) -> Instant {
        (self.last_event + quiet).min(self.since + cap)
    }
}

/// Per-service debounce state.
#[derive(Debug)]
pub struct Coalescer {
    quiet: Duration,
    cap: Duration,
    cooling: HashMap<String, Cooling>,
}

/// What to do about an event just noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Inspect the service now.
    InspectNow,
    /// An inspect is already planned; nothing to do yet.
    Deferred,
}

impl Coalescer {
    pub fn new(quiet: Duration, cap: Duration) -> Self {
        Coalescer {
            quiet,
            cap: cap.max(quiet),
            cooling: HashMap::new(),
        }
    }

    /// An event named `service` at `now`.
    pub fn note(&mut self, service: &str, now: Instant) -> Verdict {
        match self.cooling.get_mut(service) {
            Some(c) => {
                c.dirty = true;
                c.last_event = now;
                Verdict::Deferred
            }
            None => {
                self.cooling.insert(
                    service.to_owned(),
                    Cooling {
                        since: now,
                        last_event: now,
                        dirty: false,
                    },
                );
                Verdict::InspectNow
            }
        }
    }

    /// When [`Coalescer::take_due`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.cooling
            .values()
            .map(|c| c.due_at(self.quiet, self.cap))
            .min()
    }

    /// The services to inspect now. Services whose cooling ended without new events become
    /// quiet again; those inspected start a new cooling period.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        let quiet = self.quiet;
        let cap = self.cap;
        self.cooling.retain(|service, c| {
            if c.due_at(quiet, cap) > now {
                return true;
            }
            if c.dirty {
                due.push(service.clone());
                *c = Cooling {
                    since: now,
                    last_event: now,
                    dirty: false,
                };
                true
            } else {
                false
            }
        });
        due.sort();
        due
    }

    /// Whether an event for `service` is waiting for its inspect.
    pub fn is_pending(&self, service: &str) -> bool {
        self.cooling.get(service).is_some_and(|c| c.dirty)
    }

    /// Forget everything planned: a full list is about to cover it.
    pub fn clear(&mut self) {
        self.cooling.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_single_event_is_inspected_at_once_and_then_forgotten() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000));
        assert_eq!(c.note("a", t0), Verdict::InspectNow);
        assert_eq!(c.next_deadline(), Some(t0 + ms(100)));
        assert!(c.take_due(t0 + ms(99)).is_empty());
        assert!(c.take_due(t0 + ms(100)).is_empty());
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.note("a", t0 + ms(200)), Verdict::InspectNow);
    }

    #[test]
    fn a_burst_costs_one_trailing_inspect_after_quiet() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000));
        assert_eq!(c.note("a", t0), Verdict::InspectNow);
        for i in 1..=5 {
            assert_eq!(c.note("a", t0 + ms(10 * i)), Verdict::Deferred);
        }
        assert!(c.is_pending("a"));
        assert_eq!(c.next_deadline(), Some(t0 + ms(150)));
        assert!(c.take_due(t0 + ms(149)).is_empty());
        assert_eq!(c.take_due(t0 + ms(150)), ["a"]);
        assert!(!c.is_pending("a"));
        // A new cooling period started at the trailing inspect; it ends quietly.
        assert!(c.take_due(t0 + ms(250)).is_empty());
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn an_endless_burst_is_inspected_at_the_cap() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(300));
        c.note("a", t0);
        let mut inspects = 1;
        let mut t = t0;
        for _ in 0..100 {
            t += ms(50);
            c.note("a", t);
            inspects += c.take_due(t).len();
        }
        // 5 s of events every 50 ms: one inspect per 300 ms cap, not one per event.
        assert!((15..=18).contains(&inspects), "{inspects}");
    }

    #[test]
    fn services_are_independent() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000));
        assert_eq!(c.note("a", t0), Verdict::InspectNow);
        assert_eq!(c.note("b", t0), Verdict::InspectNow);
        c.note("b", t0 + ms(5));
        assert_eq!(c.take_due(t0 + ms(105)), ["b"]);
        c.clear();
        assert_eq!(c.next_deadline(), None);
    }
}
