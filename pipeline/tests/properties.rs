//! Properties of the fold, over arbitrary sequences of inputs.

use std::collections::{BTreeMap, BTreeSet};

use pipeline::{
    ChangeKind, Folder, Input, Metrics, ServiceMode, ServiceSpec, Snapshot, SourceStatus, Timestamp,
};
use proptest::prelude::*;

const FLOOR: u64 = 1_000;

fn spec_strategy(slot: u8) -> impl Strategy<Value = ServiceSpec> {
    (
        0u8..2, // generation: same name, new id
        prop_oneof![
            Just(Some("true")),
            Just(Some("TRUE")),
            Just(Some("false")),
            Just(None)
        ],
        prop_oneof![
            Just(None),
            Just(Some("2")),
            Just(Some("abc")),
            Just(Some("9"))
        ],
        prop_oneof![Just(None), Just(Some("5")), Just(Some("0"))],
        0u64..4,                       // replicas
        1u64..4,                       // version
        proptest::option::of(0u64..4), // running tasks
        any::<bool>(),                 // global
    )
        .prop_map(
            move |(generation, enabled, min, max, replicas, version, running, global)| {
                let mut labels = BTreeMap::new();
                if let Some(v) = enabled {
                    labels.insert("autoscaler.enabled".to_owned(), v.to_owned());
                }
                if let Some(v) = min {
                    labels.insert("autoscaler.min".to_owned(), v.to_owned());
                }
                if let Some(v) = max {
                    labels.insert("autoscaler.max".to_owned(), v.to_owned());
                }
                labels.insert("team".to_owned(), "a".to_owned());
                ServiceSpec {
                    id: format!("id{slot}g{generation}"),
                    name: format!("svc{slot}"),
                    labels,
                    mode: if global {
                        ServiceMode::Global
                    } else {
                        ServiceMode::Replicated(replicas)
                    },
                    created_at: "2024-01-15T10:30:00.000000000Z".to_owned(),
                    updated_at: format!("2024-01-15T10:3{version}:00.000000000Z"),
                    version,
                    running_tasks: running,
                    desired_tasks: Some(replicas),
                }
            },
        )
}

fn any_spec() -> impl Strategy<Value = ServiceSpec> {
    (0u8..5).prop_flat_map(spec_strategy)
}

/// A list as an engine would give it: at most one service per name.
fn full_list() -> impl Strategy<Value = Vec<ServiceSpec>> {
    proptest::collection::vec(any_spec(), 0..6).prop_map(|specs| {
        let mut by_name = BTreeMap::new();
        for s in specs {
            by_name.entry(s.name.clone()).or_insert(s);
        }
        by_name.into_values().collect()
    })
}

fn metrics_strategy() -> impl Strategy<Value = Option<Metrics>> {
    proptest::option::of((0u32..3, 0u32..3).prop_map(|(cpu, mem)| Metrics {
        cpu_pct: f64::from(cpu) * 10.0,
        memory_bytes: f64::from(mem) * 1024.0,
        memory_pct: None,
        sampled_at_ms: 5_000,
        source: "docker".to_owned(),
        tasks_running: 1,
        tasks_sampled: 1,
        timestamp: 5,
        unsampled_tasks: Vec::new(),
        window_seconds: 60,
    }))
}

fn input_strategy() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => full_list().prop_map(Input::FullList),
        5 => any_spec().prop_map(Input::Upsert),
        2 => (0u8..5, 0u8..2).prop_map(|(s, g)| Input::Remove { id: format!("id{s}g{g}") }),
        2 => ((0u8..5, 0u8..2), 0u64..4).prop_map(|((s, g), running)| Input::RunningTasks {
            service_id: format!("id{s}g{g}"),
            running,
        }),
        2 => ((0u8..5, 0u8..2), metrics_strategy()).prop_map(|((s, g), metrics)| Input::Metrics {
            service_id: format!("id{s}g{g}"),
            metrics,
        }),
        1 => prop_oneof![
            Just(SourceStatus::Connected),
            Just(SourceStatus::Unreachable { reason: "connection refused".to_owned() }),
        ]
        .prop_map(Input::SourceStatus),
        1 => Just(Input::Clear),
        1 => Just(Input::Tick),
    ]
}

fn run(folder: &Folder, inputs: &[Input]) -> Snapshot {
    let mut snapshot = Snapshot::empty(FLOOR, 64, Timestamp(0));
    for (i, input) in inputs.iter().enumerate() {
        snapshot = folder.fold(&snapshot, input, Timestamp(i as i64)).snapshot;
    }
    snapshot
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_full_list_equal_to_the_state_changes_nothing(
        history in proptest::collection::vec(input_strategy(), 0..12),
        list in full_list(),
    ) {
        let folder = Folder::default();
        let before = run(&folder, &history);
        let synced = folder.fold(&before, &Input::FullList(list.clone()), Timestamp(100)).snapshot;
        let again = folder.fold(&synced, &Input::FullList(list), Timestamp(101));
        prop_assert!(again.changes.is_empty(), "{:?}", again.changes);
        prop_assert_eq!(again.snapshot.revision, synced.revision);
        prop_assert_eq!(&again.snapshot, &synced);
    }

    #[test]
    fn applying_an_input_twice_equals_applying_it_once(
        history in proptest::collection::vec(input_strategy(), 0..12),
        input in input_strategy(),
    ) {
        // Tick is a beacon: by design every tick emits one.
        prop_assume!(input != Input::Tick);
        let folder = Folder::default();
        let before = run(&folder, &history);
        let once = folder.fold(&before, &input, Timestamp(100)).snapshot;
        let twice = folder.fold(&once, &input, Timestamp(101));
        prop_assert!(twice.changes.is_empty(), "{:?}", twice.changes);
        prop_assert_eq!(&twice.snapshot, &once);
        prop_assert_eq!(&twice.snapshot.ids, &once.ids);
    }

    #[test]
    fn a_transitions_changes_turn_the_old_snapshot_into_the_new_one(
        history in proptest::collection::vec(input_strategy(), 0..12),
        input in input_strategy(),
    ) {
        let folder = Folder::default();
        let before = run(&folder, &history);
        let transition = folder.fold(&before, &input, Timestamp(100));
        let mut replayed = before.clone();
        for change in &transition.changes {
            replayed.apply_change(change);
        }
        prop_assert_eq!(&replayed, &transition.snapshot);
        prop_assert_eq!(&replayed.ids, &transition.snapshot.ids);
        prop_assert_eq!(replayed.services_revision, transition.snapshot.services_revision);
    }

    #[test]
    fn the_revision_rises_exactly_when_something_changed(
        history in proptest::collection::vec(input_strategy(), 0..12),
        input in input_strategy(),
    ) {
        let folder = Folder::default();
        let before = run(&folder, &history);
        let t = folder.fold(&before, &input, Timestamp(100));
        let after = &t.snapshot;
        prop_assert_eq!(after.revision, before.revision + t.changes.len() as u64);
        for (i, change) in t.changes.iter().enumerate() {
            prop_assert_eq!(change.seq, before.revision + 1 + i as u64);
            prop_assert_eq!(change.revision, after.revision);
        }
        let facts_moved = after.services != before.services
            || after.metrics != before.metrics
            || after.source.status != before.source.status;
        if t.changes.is_empty() {
            prop_assert!(!facts_moved);
        } else {
            prop_assert!(facts_moved || input == Input::Tick);
        }
        // services.updated comes exactly once with every transition that touched a service.
        let count = |f: fn(&ChangeKind) -> bool| t.changes.iter().filter(|c| f(&c.kind)).count();
        let services_updated = count(|k| matches!(k, ChangeKind::ServicesUpdated { .. }));
        let touched = count(|k| {
            matches!(
                k,
                ChangeKind::ServiceAdded { .. }
                    | ChangeKind::ServiceUpdated { .. }
                    | ChangeKind::ServiceRemoved { .. }
            )
        });
        prop_assert_eq!(services_updated, usize::from(touched > 0));
    }

    #[test]
    fn a_full_list_makes_the_snapshot_equal_to_it(
        history in proptest::collection::vec(input_strategy(), 0..12),
        list in full_list(),
    ) {
        let folder = Folder::default();
        let before = run(&folder, &history);
        let t = folder.fold(&before, &Input::FullList(list.clone()), Timestamp(100));
        let enabled: Vec<&ServiceSpec> = list.iter().filter(|s| folder.rules.is_enabled(s)).collect();
        let expected: BTreeMap<String, _> = enabled
            .iter()
            .map(|s| (s.name.clone(), folder.rules.entry(s)))
            .collect();
        let actual: BTreeMap<String, _> = t
            .snapshot
            .services
            .iter()
            .map(|(name, record)| (name.to_string(), record.entry.clone()))
            .collect();
        prop_assert_eq!(actual, expected);
        let listed: BTreeSet<&str> = enabled.iter().map(|s| s.id.as_str()).collect();
        let removed: BTreeSet<&str> = t
            .changes
            .iter()
            .filter_map(|c| match &c.kind {
                ChangeKind::ServiceRemoved { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        for (id, _) in before.ids.iter() {
            prop_assert_eq!(listed.contains(id.as_ref()), !removed.contains(id.as_ref()), "id {}", id);
        }
        // Metrics survive only for services still registered.
        for name in t.snapshot.metrics.keys() {
            prop_assert!(t.snapshot.services.contains_key(name));
        }
    }

    #[test]
    fn the_log_replays_exactly_the_changes_after_any_kept_seq(
        history in proptest::collection::vec(input_strategy(), 0..40),
    ) {
        let folder = Folder::default();
        let mut snapshot = Snapshot::empty(FLOOR, 64, Timestamp(0));
        let mut all = Vec::new();
        for (i, input) in history.iter().enumerate() {
            let t = folder.fold(&snapshot, input, Timestamp(i as i64));
            for change in &t.changes {
                t.snapshot.log.record(change); // as the driver does before storing
            }
            all.extend(t.changes);
            snapshot = t.snapshot;
        }
        for (i, change) in all.iter().enumerate() {
            let asked = change.seq - 1;
            match snapshot.changes_since(asked) {
                Ok(replay) => {
                    let seqs: Vec<u64> = replay.iter().map(|c| c.seq).collect();
                    let expected: Vec<u64> = all[i..].iter().map(|c| c.seq).collect();
                    prop_assert_eq!(seqs, expected);
                }
                Err(_) => prop_assert!(all.len() - i > 64, "seq {} should still be kept", asked),
            }
        }
        prop_assert!(snapshot.changes_since(snapshot.revision).map(|v| v.is_empty()).unwrap_or(false));
        prop_assert!(snapshot.changes_since(snapshot.revision + 1).is_err());
        prop_assert!(snapshot.changes_since(FLOOR - 1).is_err());
    }
}
