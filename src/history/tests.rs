use super::*;
use crate::plan::{Decision, Phase, ServiceProgress, ServiceState};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn me() -> Actor {
    Actor::Controller {
        holder: "a".into(),
        fence: Some(3),
    }
}

fn service(state: ServiceState, running: u32, draining: u32) -> ServiceProgress {
    ServiceProgress {
        service: "ServiceWebApi".into(),
        state,
        value: Some("Yes".into()),
        task_definition: Some("arn:td:2".into()),
        running,
        desired: 2,
        draining,
        since: Some(crate::clock::rfc3339(t(0))),
    }
}

fn decision(phase: Phase, reason: &'static str, services: Vec<ServiceProgress>) -> Decision {
    Decision {
        param: "ECSExec".into(),
        desired: "Yes".into(),
        observed: Some("Yes".into()),
        phase,
        reason,
        message: format!("{reason} message"),
        drift: false,
        action: None,
        pending: Vec::new(),
        services,
    }
}

fn seen_of(d: &Decision, change: Option<Change>) -> Seen {
    Seen {
        desired: Some(d.desired.clone()),
        phase: d.phase,
        reason: d.reason.to_string(),
        drift: d.drift,
        services: d.services.clone(),
        change,
    }
}

fn change(since: u64, cause: Cause) -> Change {
    Change {
        since: crate::clock::rfc3339(t(since)),
        to: "Yes".into(),
        cause,
        by_controller: true,
    }
}

fn ctx(now: SystemTime) -> Context {
    Context {
        now,
        me: me(),
        own_update: false,
    }
}

fn kinds(d: &Derived) -> Vec<Kind> {
    d.events.iter().chain(&d.later).map(|e| e.kind).collect()
}

/// A rollout followed look by look: each decision and the events it means.
fn rollout_steps() -> Vec<(&'static str, Decision, Vec<Kind>)> {
    use Kind::*;
    vec![
        (
            "rolling starts",
            decision(
                Phase::Progressing,
                "RollingOut",
                vec![service(ServiceState::RollingOut, 0, 2)],
            ),
            vec![RolloutStarted],
        ),
        (
            "nothing moved: no event",
            decision(
                Phase::Progressing,
                "RollingOut",
                vec![service(ServiceState::RollingOut, 0, 2)],
            ),
            vec![],
        ),
        (
            "a new task runs",
            decision(
                Phase::Progressing,
                "RollingOut",
                vec![service(ServiceState::RollingOut, 1, 1)],
            ),
            vec![RolloutProgress],
        ),
        (
            "all run, none drains",
            decision(
                Phase::Progressing,
                "RollingOut",
                vec![service(ServiceState::RollingOut, 2, 0)],
            ),
            vec![RolloutProgress],
        ),
        (
            "completed and converged",
            decision(
                Phase::Converged,
                "Converged",
                vec![service(ServiceState::Converged, 2, 0)],
            ),
            vec![RolloutCompleted, Converged],
        ),
        (
            "converged stays quiet",
            decision(
                Phase::Converged,
                "Converged",
                vec![service(ServiceState::Converged, 2, 0)],
            ),
            vec![],
        ),
    ]
}

#[test]
fn a_change_from_intent_to_converged() {
    let steps = rollout_steps();
    let mut prev = Seen {
        desired: Some("No".into()),
        phase: Phase::Converged,
        reason: "Converged".into(),
        drift: false,
        services: Vec::new(),
        change: None,
    };
    // The desired value changes: a change begins.
    let mut now = 10;
    for (name, d, want) in steps {
        let out = derive(Some(&prev), &d, &ctx(t(now)));
        assert_eq!(kinds(&out), want, "{name}");
        if name == "completed and converged" {
            let (c, took) = out.converged.clone().expect("converged");
            assert_eq!((c.cause, took), (Cause::Desired, Duration::from_secs(40)));
            assert_eq!(
                out.later[0].duration_seconds,
                Some(50),
                "since the deployment began"
            );
            assert_eq!(
                out.later[1].duration_seconds,
                Some(40),
                "since the desired change"
            );
        }
        prev = seen_of(&d, out.change);
        now += 10;
    }
}

#[test]
fn reasons_that_are_events_of_their_own() {
    let cases = [
        ("RolloutFailed", Phase::Failed, Kind::RolloutFailed),
        ("RolloutTimedOut", Phase::Failed, Kind::RolloutFailed),
        ("StackUpdateFailing", Phase::Failed, Kind::RolloutFailed),
        ("RollingBack", Phase::Failed, Kind::RollbackStarted),
        ("StackRollingBack", Phase::Failed, Kind::RollbackStarted),
        ("RolloutReverted", Phase::Failed, Kind::RolledBack),
        ("StackUpdateRolledBack", Phase::Failed, Kind::RolledBack),
        ("RollbackFailing", Phase::Failed, Kind::RollbackFailing),
        ("RollbackStuck", Phase::Failed, Kind::RollbackFailing),
        ("DowngradeBlocked", Phase::Blocked, Kind::DowngradeRefused),
        ("DowngradeWaiting", Phase::Blocked, Kind::DowngradeRefused),
        ("StackUpdating", Phase::Waiting, Kind::StackChangedOutside),
        (
            "StackUpdateOwnerUnknown",
            Phase::Waiting,
            Kind::PhaseChanged,
        ),
        ("NotDeclared", Phase::Blocked, Kind::PhaseChanged),
        ("CorrectionsCapped", Phase::Blocked, Kind::PhaseChanged),
    ];
    let before = decision(Phase::Progressing, "UpdatingStack", Vec::new());
    let prev = seen_of(&before, Some(change(0, Cause::Desired)));
    for (reason, phase, kind) in cases {
        let d = decision(phase, reason, Vec::new());
        let out = derive(Some(&prev), &d, &ctx(t(60)));
        assert_eq!(kinds(&out), vec![kind], "{reason}");
        let want = match reason {
            "StackUpdating" => Actor::Outside,
            "StackUpdateOwnerUnknown" => Actor::Unknown,
            _ => me(),
        };
        assert_eq!(out.events[0].actor, want, "{reason}");
        assert_eq!(
            out.change, prev.change,
            "{reason}: the change is still under way"
        );
        // The same reason again is no new event.
        let again = derive(out.seen.as_ref(), &d, &ctx(t(70)));
        assert!(again.events.is_empty(), "{reason} again");
    }
    let rolled_back = derive(
        Some(&prev),
        &decision(Phase::Failed, "RolloutReverted", Vec::new()),
        &ctx(t(60)),
    );
    assert_eq!(rolled_back.events[0].duration_seconds, Some(60));
}

#[test]
fn quiet_reasons_and_known_phases_are_no_event() {
    let prev = seen_of(&decision(Phase::Converged, "Converged", Vec::new()), None);
    for (phase, reason) in [
        (Phase::Failed, "ActionFailed"),
        (Phase::Waiting, "Standby"),
        (Phase::Waiting, "ChangedSinceObserved"),
        (Phase::Failed, "BackingOff"),
        (Phase::Progressing, "UpdatingStack"),
    ] {
        let out = derive(
            Some(&prev),
            &decision(phase, reason, Vec::new()),
            &ctx(t(1)),
        );
        assert!(out.events.is_empty(), "{reason}: {:?}", kinds(&out));
    }
}

#[test]
fn a_drift_is_detected_outside_and_corrected_by_the_controller() {
    let converged = decision(Phase::Converged, "Converged", Vec::new());
    let mut drifted = decision(Phase::Progressing, "RollingOut", Vec::new());
    drifted.drift = true;
    drifted.observed = Some("No".into());
    let out = derive(Some(&seen_of(&converged, None)), &drifted, &ctx(t(100)));
    assert_eq!(kinds(&out), vec![Kind::DriftDetected]);
    assert_eq!(out.events[0].actor, Actor::Outside);
    assert_eq!(out.change.as_ref().map(|c| c.cause), Some(Cause::Drift));
    // The controller wrote to correct it (the loop marks the change so).
    let mut corrected = out.change.clone().expect("change");
    corrected.by_controller = true;
    let back = derive(
        Some(&seen_of(&drifted, Some(corrected))),
        &converged,
        &ctx(t(160)),
    );
    assert_eq!(kinds(&back), vec![Kind::DriftCorrected]);
    assert_eq!(back.later[0].actor, me());
    assert_eq!(back.later[0].duration_seconds, Some(60));
    assert_eq!(back.change, None);
}

#[test]
fn a_first_look_at_a_converged_value_is_no_change() {
    let d = decision(Phase::Converged, "Converged", Vec::new());
    let out = derive(None, &d, &ctx(t(0)));
    assert!(out.events.is_empty());
    assert_eq!(out.change, None);
    // One that is not there yet begins a change.
    let d = decision(Phase::Progressing, "UpdatingStack", Vec::new());
    let out = derive(None, &d, &ctx(t(0)));
    assert_eq!(out.change.map(|c| c.cause), Some(Cause::Desired));
}

#[test]
fn a_change_survives_a_restart_through_what_was_recorded() {
    // What the status document kept says a change began at 0: converging at 90 measures 90.
    let prev = seen_of(
        &decision(Phase::Progressing, "UpdatingStack", Vec::new()),
        Some(change(0, Cause::Desired)),
    );
    let out = derive(
        Some(&prev),
        &decision(Phase::Converged, "Converged", Vec::new()),
        &ctx(t(90)),
    );
    assert_eq!(
        out.converged.map(|(_, took)| took),
        Some(Duration::from_secs(90))
    );
}

fn event(secs: u64, kind: Kind, fence: u64) -> Event {
    Event::new(
        t(secs),
        kind,
        "R",
        "m".repeat(50),
        Actor::Controller {
            holder: "a".into(),
            fence: Some(fence),
        },
    )
    .param("ECSExec")
}

#[test]
fn the_log_is_bounded_by_age_and_size() {
    let keep = Retention {
        max_age: Duration::from_secs(100),
        max_bytes: 10_000,
    };
    let mut log = Log::default();
    for i in 0..10 {
        log.push(event(i * 20, Kind::WriteMade, 1));
    }
    assert_eq!(
        log.prune(keep, t(200)),
        5,
        "older than 100 s at 200 s: 0 to 80"
    );
    assert_eq!(log.len(), 5);
    let one = log.bytes() / log.len();
    let small = Retention {
        max_bytes: one * 2,
        ..keep
    };
    log.prune(small, t(200));
    assert_eq!(log.len(), 2);
    let times: Vec<_> = log.events().map(|e| e.time.clone()).collect();
    assert_eq!(
        times,
        vec![crate::clock::rfc3339(t(160)), crate::clock::rfc3339(t(180))]
    );
}

#[test]
fn the_log_reads_what_it_writes_and_skips_what_is_not_an_event() {
    let mut log = Log::default();
    log.push(event(0, Kind::DesiredChanged, 1));
    log.push(
        event(1, Kind::LeaseTakenOver, 2)
            .detail("fence", 2)
            .took(Duration::from_secs(3)),
    );
    let text = log.to_text();
    let (back, skipped) = Log::parse(&format!("{text}not json\n\n"));
    assert_eq!(skipped, 1);
    assert_eq!(
        back.events().collect::<Vec<_>>(),
        log.events().collect::<Vec<_>>()
    );
    assert_eq!(back.newest_fence(), Some(2));
    assert_eq!(back.bytes(), text.len());
}

#[test]
fn the_documented_json_of_an_event() {
    let e = Event::new(
        t(0),
        Kind::WriteMade,
        "UpdateStack",
        "UpdateStack: ECSExec=Yes (token t)".into(),
        me(),
    )
    .param("ECSExec")
    .detail("token", "t");
    let json: serde_json::Value = serde_json::to_value(&e).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "time": "2027-01-15T08:00:00Z",
            "kind": "write_made",
            "params": ["ECSExec"],
            "reason": "UpdateStack",
            "message": "UpdateStack: ECSExec=Yes (token t)",
            "actor": {"kind": "controller", "holder": "a", "fence": 3},
            "detail": {"token": "t"}
        })
    );
    let outside = serde_json::to_value(Actor::Outside).expect("json");
    assert_eq!(outside, serde_json::json!({"kind": "outside"}));
}

#[test]
fn every_kind_has_its_name() {
    for k in Kind::ALL {
        let json = serde_json::to_value(k).expect("json");
        assert_eq!(json, serde_json::Value::String(k.as_str().into()));
    }
}

#[test]
fn select_by_time_and_parameter() {
    let mut log = Log::default();
    log.push(event(0, Kind::WriteMade, 1));
    log.push(event(10, Kind::LeaseAcquired, 1));
    let mut other = event(20, Kind::Converged, 1);
    other.params = vec!["ApiCount".into()];
    log.push(other);
    assert_eq!(select(log.events(), Some(t(5)), None).len(), 2);
    assert_eq!(select(log.events(), None, Some("ECSExec")).len(), 2);
    assert_eq!(select(log.events(), Some(t(5)), Some("ECSExec")).len(), 1);
}

#[test]
fn the_same_event_of_several_parameters_is_one() {
    let outside = |param: &str| {
        Event::new(
            t(0),
            Kind::StackChangedOutside,
            "StackUpdating",
            "stack updating".into(),
            Actor::Outside,
        )
        .param(param)
    };
    let events = vec![
        outside("ECSExec"),
        event(0, Kind::WriteMade, 1),
        outside("ApiCount"),
    ];
    let out = coalesce(events);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].params,
        vec!["ECSExec".to_string(), "ApiCount".to_string()]
    );
}

#[test]
fn during_the_controllers_own_update_nothing_is_outside_or_a_drift() {
    let converged = decision(Phase::Converged, "Converged", Vec::new());
    let mut waiting = decision(
        Phase::Waiting,
        "StackUpdating",
        vec![service(ServiceState::RollingOut, 0, 1)],
    );
    waiting.drift = true;
    let own = Context {
        own_update: true,
        ..ctx(t(10))
    };
    let out = derive(Some(&seen_of(&converged, None)), &waiting, &own);
    assert_eq!(kinds(&out), vec![Kind::PhaseChanged, Kind::RolloutStarted]);
    assert!(out.events.iter().chain(&out.later).all(|e| e.actor == me()));
    assert_eq!(out.change, None, "no drift");
    // Someone else's: outside, and a drift.
    let theirs = derive(Some(&seen_of(&converged, None)), &waiting, &ctx(t(10)));
    assert_eq!(
        kinds(&theirs),
        vec![
            Kind::DriftDetected,
            Kind::StackChangedOutside,
            Kind::RolloutStarted
        ]
    );
    assert!(theirs
        .events
        .iter()
        .chain(&theirs.later)
        .all(|e| e.actor == Actor::Outside));
}

#[test]
fn a_write_not_made_now_does_not_make_what_was_found_new_again() {
    let failed = decision(Phase::Failed, "RolloutFailed", Vec::new());
    let prev = seen_of(&failed, Some(change(0, Cause::Desired)));
    let standby = decision(Phase::Waiting, "Standby", Vec::new());
    let out = derive(Some(&prev), &standby, &ctx(t(10)));
    assert!(out.events.is_empty(), "{:?}", kinds(&out));
    let kept = out.seen.expect("seen");
    assert_eq!(
        (kept.phase, kept.reason.as_str()),
        (Phase::Failed, "RolloutFailed")
    );
    let again = derive(Some(&kept), &failed, &ctx(t(20)));
    assert!(
        again.events.is_empty(),
        "reported once: {:?}",
        kinds(&again)
    );
}

#[test]
fn a_value_the_rack_came_to_without_a_write_is_not_the_controllers() {
    let mut by_hand = change(0, Cause::Desired);
    by_hand.by_controller = false;
    let prev = seen_of(
        &decision(Phase::Failed, "BackingOff", Vec::new()),
        Some(by_hand),
    );
    let out = derive(
        Some(&prev),
        &decision(Phase::Converged, "Converged", Vec::new()),
        &ctx(t(30)),
    );
    assert_eq!(kinds(&out), vec![Kind::Converged]);
    assert_eq!(out.later[0].actor, Actor::Outside);
}

#[test]
fn an_event_written_already_is_not_appended_again() {
    let mut log = Log::default();
    let e = event(0, Kind::WriteMade, 1);
    log.push(e.clone());
    assert!(log.has_recent(&e, 4));
    assert!(!log.has_recent(&event(1, Kind::WriteMade, 1), 4));
}
