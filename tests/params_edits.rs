//! Invalid edits of the params file are reported and never acted on; the controller keeps the
//! last valid desired state. The watcher notices edits however an editor saves.

use crate::common;

use std::time::Duration;

use common::{drive, ecs_exec, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::reconcile::Trigger;
use tokio::sync::mpsc;

const INVALID: &[(&str, &str, &str)] = &[
    ("ECSExec: yes\n", "invalid_value", "\"yes\""),
    ("ECSExec: true\n", "invalid_value", "true (a YAML boolean)"),
    ("ECSExec:\n", "invalid_value", "(empty)"),
    ("ECSExec: \"No\"\nBogus: 1\n", "unknown_key", "Bogus"),
    (
        "ECSExec: \"No\"\nECSExec: \"No\"\n",
        "duplicate_key",
        "ECSExec",
    ),
    ("- ECSExec: \"No\"\n", "not_mapping", "a list"),
    ("", "empty", "empty"),
    ("ECSExec: \"N", "syntax", "not valid YAML"),
];

#[tokio::test(start_paused = true)]
async fn invalid_edits_are_reported_and_the_last_valid_state_is_kept() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    let writes = h.sim.writes();

    for (text, kind, shown) in INVALID {
        h.write_params(text);
        let r = rec.reconcile(Trigger::ParamsChanged).await;
        let e = r
            .params_error
            .clone()
            .unwrap_or_else(|| panic!("{text:?} accepted"));
        assert_eq!(e.kind(), *kind, "{text:?}");
        let msg = e.to_string();
        assert!(msg.contains("params.yaml") && msg.contains(shown), "{msg}");
        // Still acting on (and converged to) the last valid state: Yes.
        assert_eq!(ecs_exec(&r), Some(Phase::Converged), "{text:?}");
        let status = rec.status().get();
        assert!(!status.params_file.valid);
        assert_eq!(
            status
                .parameter("ECSExec")
                .and_then(|p| p.desired.clone())
                .as_deref(),
            Some("Yes")
        );
    }
    std::fs::remove_file(&h.params).expect("delete");
    let r = rec.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(r.params_error.as_ref().map(|e| e.kind()), Some("missing"));
    assert_eq!(ecs_exec(&r), Some(Phase::Converged));
    assert_eq!(h.sim.writes(), writes, "an invalid file caused a write");

    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_params_file_valid 0"),
        "{text}"
    );
    assert!(
        text.contains("rack_reconciler_params_file_errors_total{kind=\"invalid_value\"} 3"),
        "{text}"
    );

    // Re-creating the file with a valid value picks up again.
    h.write_params("ECSExec: \"No\"\n");
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert!(reports[0].params_error.is_none());
    assert!(h.sim.writes() > writes);
    assert!(rec
        .metrics()
        .render()
        .contains("rack_reconciler_params_file_valid 1"));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_file_from_the_start_changes_nothing() {
    for (text, kind, _) in INVALID {
        let h = Harness::new(text);
        let mut rec = h.reconciler();
        let reports = common::run_for(&mut rec, Duration::from_secs(600)).await;
        assert!(
            reports
                .iter()
                .all(|r| r.result == "no_params" && !r.has_desired),
            "{text:?}"
        );
        assert_eq!(
            reports[0].params_error.as_ref().map(|e| e.kind()),
            Some(*kind)
        );
        assert_eq!(h.sim.writes(), 0, "{text:?}");
        let status = rec.status().get();
        assert!(!status.ready);
        assert_eq!(
            status.parameter("ECSExec").map(|p| p.phase),
            Some(Phase::Unknown)
        );
    }
}

/// Real file-system events: this test runs on the real clock and waits on the channel with a
/// timeout, never sleeping.
async fn next(rx: &mut mpsc::Receiver<Trigger>) -> Option<Trigger> {
    let t = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten();
    // Let the burst of events that one save makes settle into this one trigger.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}
    t
}

#[tokio::test]
async fn the_watcher_sees_writes_renames_and_re_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("params.yaml");
    std::fs::write(&file, "ECSExec: \"No\"\n").expect("write");
    let (tx, mut rx) = mpsc::channel(1);
    let _w =
        rack_reconciler::watch::watch_params(&file, Duration::from_millis(50), tx).expect("watch");

    // In-place write.
    std::fs::write(&file, "ECSExec: \"Yes\"\n").expect("write");
    assert_eq!(next(&mut rx).await, Some(Trigger::ParamsChanged));

    // An editor's save: write elsewhere, rename over the file.
    let tmp = dir.path().join(".params.yaml.swp");
    std::fs::write(&tmp, "ECSExec: \"No\"\n").expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    assert_eq!(next(&mut rx).await, Some(Trigger::ParamsChanged));

    // Deleted, then created again.
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(next(&mut rx).await, Some(Trigger::ParamsChanged));
    std::fs::write(&file, "ECSExec: \"Yes\"\n").expect("write");
    assert_eq!(next(&mut rx).await, Some(Trigger::ParamsChanged));

    // Reading the file, or writing a sibling, is not a change.
    while rx.try_recv().is_ok() {}
    let _ = std::fs::read_to_string(&file).expect("read");
    std::fs::write(dir.path().join("params.status.json"), "{}").expect("write");
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(quiet.is_err(), "unexpected trigger");
}
