//! Concrete transitions and the wire bodies of their changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use pipeline::{
    ChangeKind, Folder, Input, Metrics, ServiceMode, ServiceSpec, Snapshot, SourceStatus, Timestamp,
};
use serde_json::{json, Value};

fn spec(id: &str, name: &str, labels: &[(&str, &str)], version: u64) -> ServiceSpec {
    ServiceSpec {
        id: id.to_owned(),
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        mode: ServiceMode::Replicated(2),
        created_at: "2024-01-15T10:30:00.123456789Z".to_owned(),
        updated_at: "2024-01-15T10:31:00.123456789Z".to_owned(),
        version,
        running_tasks: Some(2),
        desired_tasks: Some(2),
    }
}

const ON: (&str, &str) = ("autoscaler.enabled", "true");

fn bodies(changes: &[std::sync::Arc<pipeline::Change>]) -> Vec<(String, Value)> {
    changes
        .iter()
        .map(|c| (c.routing_key(), serde_json::from_str(&c.json()).unwrap()))
        .collect()
}

fn fold(s: &Snapshot, input: Input, at_ms: i64) -> (Snapshot, Vec<(String, Value)>) {
    let t = Folder::default().fold(s, &input, Timestamp(at_ms));
    let b = bodies(&t.changes);
    (t.snapshot, b)
}

#[test]
fn added_updated_removed_carry_the_contract_bodies() {
    let s0 = Snapshot::empty(100, 16, Timestamp(0));
    let (s1, out) = fold(
        &s0,
        Input::Upsert(spec("a1", "web", &[ON], 1)),
        1_700_000_000_500,
    );
    let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["service.added", "health.check", "services.updated"]);
    let added = &out[0].1;
    assert_eq!(added["event"], "service.added");
    assert_eq!(added["seq"], 101);
    assert_eq!(added["revision"], 103);
    assert_eq!(added["timestamp"], 1_700_000_000);
    let entry = &added["service"];
    assert_eq!(entry["id"], "a1");
    assert_eq!(entry["name"], "web");
    assert_eq!(entry["current_replicas"], 2);
    assert_eq!(entry["metric"], "cpu");
    assert_eq!(entry["thresholds"], json!({"cpu": 70.0, "memory": 70.0}));
    assert_eq!(entry["min_replicas"], 1);
    assert_eq!(entry["max_replicas"], 2);
    assert_eq!(entry["labels"], json!({"autoscaler.enabled": "true"}));
    assert_eq!(entry["created_at"], "2024-01-15T10:30:00.123456789Z");
    assert_eq!(entry["config_errors"], json!([]));
    let all = &out[2].1;
    assert_eq!(all["services_count"], 1);
    assert_eq!(all["services"][0]["name"], "web");
    assert_eq!(s1.revision, 103);
    assert_eq!(s1.service("web").unwrap().revision, 101);

    let (s2, out) = fold(
        &s1,
        Input::Upsert(spec("a1", "web", &[ON, ("autoscaler.max", "6")], 2)),
        1_700_000_001_000,
    );
    assert_eq!(out[0].0, "service.updated");
    assert_eq!(
        out[0].1["changed_fields"],
        json!(["labels", "max_replicas", "version"])
    );
    assert_eq!(out[0].1["service"]["max_replicas"], 6);

    // An inspect answered late, about the older version, is ignored.
    let (s3, out) = fold(
        &s2,
        Input::Upsert(spec("a1", "web", &[ON], 1)),
        1_700_000_002_000,
    );
    assert!(out.is_empty());
    assert_eq!(s3.revision, s2.revision);

    // Losing the label removes the service.
    let (s4, out) = fold(
        &s3,
        Input::Upsert(spec("a1", "web", &[], 3)),
        1_700_000_003_000,
    );
    assert_eq!(out[0].0, "service.removed");
    assert_eq!(out[0].1["service_id"], "a1");
    assert_eq!(out[0].1["service_name"], "web");
    assert_eq!(out[1].1["services_count"], 0);
    assert!(s4.services.is_empty());
}

#[test]
fn a_running_count_moves_only_that_field_of_a_registered_service() {
    let s0 = Snapshot::empty(100, 16, Timestamp(0));
    let (s1, _) = fold(
        &s0,
        Input::Upsert(spec("a1", "web", &[ON], 4)),
        1_700_000_000_000,
    );
    let running = |service_id: &str, running| Input::RunningTasks {
        service_id: service_id.to_owned(),
        running,
    };
    let (s2, out) = fold(&s1, running("a1", 3), 1_700_000_001_000);
    let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["service.updated", "services.updated"]);
    assert_eq!(out[0].1["changed_fields"], json!(["running_tasks"]));
    assert_eq!(out[0].1["service"]["running_tasks"], 3);
    assert_eq!(out[0].1["service"]["version"], 4);
    let web = s2.service("web").unwrap();
    assert_eq!(web.entry.running_tasks, Some(3));
    assert_eq!(web.revision, s1.revision + 1);
    assert_eq!(s2.revision, s1.revision + 2);

    // The same count again, or a service not registered: nothing.
    let (s3, out) = fold(&s2, running("a1", 3), 1_700_000_002_000);
    assert!(out.is_empty(), "{out:?}");
    let (s4, out) = fold(&s3, running("unknown", 1), 1_700_000_003_000);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s4.revision, s2.revision);

    // A later spec from the engine carries its own count.
    let (s5, out) = fold(
        &s4,
        Input::Upsert(spec("a1", "web", &[ON], 4)),
        1_700_000_004_000,
    );
    assert_eq!(out[0].1["changed_fields"], json!(["running_tasks"]));
    assert_eq!(s5.service("web").unwrap().entry.running_tasks, Some(2));
}

#[test]
fn metrics_are_keyed_by_service_and_dropped_with_it() {
    let s0 = Snapshot::empty(0, 16, Timestamp(0));
    let (s1, _) = fold(&s0, Input::Upsert(spec("a1", "web", &[ON], 1)), 1_000);
    let m = Metrics {
        cpu_pct: 42.5,
        memory_bytes: 1024.0,
        memory_pct: Some(1.0),
        sampled_at_ms: 2_000,
        source: "docker".to_owned(),
        tasks_running: 2,
        tasks_sampled: 2,
        timestamp: 2,
        unsampled_tasks: Vec::new(),
        window_seconds: 60,
    };
    let (s2, out) = fold(
        &s1,
        Input::Metrics {
            service_id: "a1".to_owned(),
            metrics: Some(m.clone()),
        },
        2_000,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "metrics.web");
    assert_eq!(out[0].1["event"], "metrics.updated");
    assert_eq!(out[0].1["service_name"], "web");
    assert_eq!(out[0].1["metrics"]["cpu_pct"], 42.5);
    // Metrics moving do not change the services revision (the /services ETag).
    assert_eq!(s2.services_revision, s1.services_revision);
    assert!(s2.revision > s1.revision);

    // Metrics for an unknown service are ignored.
    let (s3, out) = fold(
        &s2,
        Input::Metrics {
            service_id: "zz".to_owned(),
            metrics: Some(m),
        },
        3_000,
    );
    assert!(out.is_empty());
    let (s4, _) = fold(
        &s3,
        Input::Remove {
            id: "a1".to_owned(),
        },
        4_000,
    );
    assert!(s4.metrics.is_empty());
}

#[test]
fn engine_errors_keep_the_last_good_services_and_are_reported_once() {
    let s0 = Snapshot::empty(0, 16, Timestamp(0));
    let (s1, _) = fold(
        &s0,
        Input::FullList(vec![spec("a1", "web", &[ON], 1)]),
        1_000,
    );
    assert_eq!(s1.last_full_sync, Some(Timestamp(1_000)));
    let down = Input::SourceStatus(SourceStatus::Unreachable {
        reason: "cannot reach docker at unix:///var/run/docker.sock: connection refused".to_owned(),
    });
    let (s2, out) = fold(&s1, down.clone(), 2_000);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "health.check");
    assert_eq!(out[0].1["source"]["state"], "unreachable");
    assert_eq!(s2.services.len(), 1, "services survive an engine outage");
    assert!(s2.source.is_stale(Timestamp(2_000), 60_000));
    let (s3, out) = fold(&s2, down, 3_000);
    assert!(out.is_empty(), "the same error again is not news");
    assert_eq!(s3.source.since, Timestamp(2_000));
    let (s4, out) = fold(
        &s3,
        Input::FullList(vec![spec("a1", "web", &[ON], 1)]),
        4_000,
    );
    assert_eq!(out.len(), 1, "recovery reports health only: {out:?}");
    assert!(!s4.source.is_stale(Timestamp(4_000), 60_000));
    assert!(s4.source.is_stale(Timestamp(70_000), 60_000));
}

#[test]
fn a_name_reused_by_a_new_service_replaces_the_old_one() {
    let s0 = Snapshot::empty(0, 16, Timestamp(0));
    let (s1, _) = fold(&s0, Input::Upsert(spec("old", "web", &[ON], 5)), 1_000);
    let (s2, out) = fold(&s1, Input::Upsert(spec("new", "web", &[ON], 1)), 2_000);
    let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["service.removed", "service.added", "services.updated"]
    );
    assert_eq!(s2.service("web").unwrap().entry.id, "new");
    assert!(!s2.ids.contains_key("old"));
}

#[test]
fn clear_removes_everything_and_counts_as_a_refresh() {
    let s0 = Snapshot::empty(0, 16, Timestamp(0));
    let (s1, _) = fold(
        &s0,
        Input::FullList(vec![spec("a", "a", &[ON], 1), spec("b", "b", &[ON], 1)]),
        1_000,
    );
    let (s2, out) = fold(&s1, Input::Clear, 2_000);
    assert_eq!(out.len(), 3);
    assert!(s2.services.is_empty());
    assert_eq!(s2.cache_version, s1.cache_version + 1);
    let t = Folder::default().fold(&s2, &Input::Tick, Timestamp(3_000));
    assert!(matches!(t.changes[0].kind, ChangeKind::HealthCheck { .. }));
}
