//! What one look must read of a service's tasks, and when to look again.
//!
//! `DescribeServices` alone says a lot: while a deployment rolls the service has not
//! converged, whatever its tasks are. Tasks are read only where the deployments cannot decide:
//! once a service's single deployment says it is done (a listing proves every running task
//! is on its revision, and that proof holds while the deployment does), and the stopped tasks
//! only while a rollout shows failures or runs long (the rack API has no circuit breaker: the
//! tasks a rollout keeps stopping are how it fails; once it showed one, at every look).

use std::time::{Duration, SystemTime};

use crate::model::{
    Deployment, RolloutState, ServiceSnapshot, ServiceTasks, StackSnapshot, StackState,
    StoppedTask, TaskRead, TaskSnapshot,
};

/// A rollout running this long has its stopped tasks read even without failed tasks.
pub const STOPPED_AFTER: Duration = Duration::from_secs(30);
/// ... and again at most this often.
pub const STOPPED_EVERY: Duration = Duration::from_secs(30);

/// The fastest the loop looks again (never more than one poll a second).
pub const FAST: Duration = Duration::from_secs(1);
/// The longest pause while the end of a rollout may be near: the end is seen within it.
pub const END_WITHIN: Duration = Duration::from_secs(2);

/// The longest a light look goes on from the stack as an earlier look read it.
pub const STACK_EVERY: Duration = Duration::from_secs(30);

/// Whether a service is moving: its primary deployment rolls, or another deployment is
/// still listed (draining, or rolled back from).
pub fn moving(s: &ServiceSnapshot) -> bool {
    s.primary().is_some_and(Deployment::rolling) || s.others().next().is_some()
}

/// Whether the next look may be light, reading the services only: while a service the last
/// look saw moving rolls on, on a stack that look found settled (`*_COMPLETE`) and read
/// less than [`STACK_EVERY`] ago. Its decisions stand only as far as
/// [`crate::plan::light_look_stands`] says.
pub fn light_look(
    stack: &StackSnapshot,
    read_at: SystemTime,
    moved: bool,
    now: SystemTime,
) -> bool {
    let age = now.duration_since(read_at).unwrap_or(Duration::MAX);
    moved
        && stack.state() == StackState::Stable
        && stack.status.ends_with("_COMPLETE")
        && age < STACK_EVERY
}

/// What the observer remembers of a service between looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMemory {
    /// The running tasks of a deployment whose listing showed all of them on its revision.
    pub proof: Option<TaskProof>,
    /// The stopped tasks read last while a rollout ran.
    pub stopped_read: Option<StoppedRead>,
    /// The shortest time a deployment of this service took to run its first task, as a lower
    /// bound (the last look that saw none running): how long the next one will take at least.
    pub first_task: Option<Duration>,
    /// The current rollout's last look with no new task running: (deployment, its age then).
    pub none_running: Option<(String, Duration)>,
}

/// The stopped tasks one look read for a rollout, and what the rollout showed then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedRead {
    pub deployment: String,
    pub at: SystemTime,
    /// The deployment's `failedTasks` then: more since means new failures to read.
    pub failed_tasks: u32,
    pub tasks: Vec<StoppedTask>,
}

/// Running tasks proven on a deployment's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProof {
    pub deployment: String,
    pub task_definition: String,
    pub tasks: Vec<TaskSnapshot>,
}

/// What to read of one service's tasks this look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskNeed {
    /// Nothing: the deployments decide, or what an earlier look read still stands (a proof
    /// of the running tasks, the stopped tasks of the same rollout with no new failures).
    Known(ServiceTasks),
    /// A read: running tasks, stopped tasks, or both.
    Read { running: bool, stopped: bool },
}

/// Whether the service's deployments say it is done: one deployment, not rolling, running
/// its desired count. Only then do its tasks decide convergence.
fn deployments_done(s: &ServiceSnapshot) -> Option<&Deployment> {
    let primary = s.primary()?;
    let done = s.status == "ACTIVE"
        && s.deployments.len() == 1
        && primary.rollout_state != Some(RolloutState::InProgress)
        && primary.running_count >= primary.desired_count;
    done.then_some(primary)
}

/// What this look reads of `s`'s tasks.
pub fn task_need(s: &ServiceSnapshot, memory: &TaskMemory, now: SystemTime) -> TaskNeed {
    if let Some(primary) = deployments_done(s) {
        return match &memory.proof {
            Some(p)
                if p.deployment == primary.id && p.task_definition == primary.task_definition =>
            {
                TaskNeed::Known(ServiceTasks {
                    running: p.tasks.clone(),
                    stopped: Vec::new(),
                })
            }
            _ => TaskNeed::Read {
                running: true,
                stopped: false,
            },
        };
    }
    let Some(primary) = s.primary().filter(|p| p.rolling()) else {
        return TaskNeed::Known(ServiceTasks::default());
    };
    let age = now.duration_since(primary.created_at).unwrap_or_default();
    let last = memory
        .stopped_read
        .as_ref()
        .filter(|r| r.deployment == primary.id);
    // ECS's failed task count may stay 0 (it resets once a task of the deployment ran), so a
    // rollout that showed a failed task of its own is read at every look until it ends.
    let read = match last {
        Some(r) => {
            primary.failed_tasks != r.failed_tasks
                || r.tasks.iter().any(|t| t.launched_by(primary) && t.failed())
                || now.duration_since(r.at).unwrap_or_default() >= STOPPED_EVERY
        }
        None => primary.failed_tasks > 0 || age >= STOPPED_AFTER,
    };
    match (read, last) {
        (true, _) => TaskNeed::Read {
            running: false,
            stopped: true,
        },
        (false, Some(r)) => TaskNeed::Known(ServiceTasks {
            running: Vec::new(),
            stopped: r.tasks.clone(),
        }),
        (false, None) => TaskNeed::Known(ServiceTasks::default()),
    }
}

/// The read for `need`, if it reads anything.
pub fn task_read(service: &str, need: &TaskNeed) -> Option<TaskRead> {
    match need {
        TaskNeed::Known(_) => None,
        TaskNeed::Read { running, stopped } => Some(TaskRead {
            service: service.to_string(),
            running: *running,
            stopped: *stopped,
        }),
    }
}

/// Updates `memory` with what this look saw of `s` (its tasks filled in).
pub fn remember(memory: &mut TaskMemory, s: &ServiceSnapshot, need: &TaskNeed, now: SystemTime) {
    let Some(primary) = s.primary() else {
        *memory = TaskMemory::default();
        return;
    };
    if let TaskNeed::Read { running, stopped } = need {
        if *running {
            let all_on_primary = s
                .tasks
                .iter()
                .all(|t| t.task_definition == primary.task_definition);
            memory.proof = (deployments_done(s).is_some() && all_on_primary).then(|| TaskProof {
                deployment: primary.id.clone(),
                task_definition: primary.task_definition.clone(),
                tasks: s.tasks.clone(),
            });
        }
        if *stopped {
            memory.stopped_read = Some(StoppedRead {
                deployment: primary.id.clone(),
                at: now,
                failed_tasks: primary.failed_tasks,
                tasks: s.stopped.clone(),
            });
        }
    }
    learn_first_task(memory, primary, now);
}

/// Keeps, per rollout, the last age at which none of its tasks ran; once one runs, that age
/// is a lower bound of how long the rollout's first task took.
fn learn_first_task(memory: &mut TaskMemory, primary: &Deployment, now: SystemTime) {
    if primary.running_count == 0 && primary.rolling() {
        let age = now.duration_since(primary.created_at).unwrap_or_default();
        memory.none_running = Some((primary.id.clone(), age));
        return;
    }
    // A task runs now (the rollout may even be done): the last look without one bounds it.
    if let Some((id, seen)) = memory.none_running.take() {
        if id == primary.id && primary.running_count > 0 {
            memory.first_task = Some(memory.first_task.map_or(seen, |f| f.min(seen)));
        }
    }
}

/// When to look again at a service that rolls: while its new deployment runs no task yet
/// and earlier rollouts showed how long a first task takes at least (`first_task`), when that
/// time is up; otherwise within [`END_WITHIN`], so the end is seen within it. Never sooner
/// than [`FAST`] nor later than `max`. `None` when it does not roll.
pub fn poll_delay(
    s: &ServiceSnapshot,
    first_task: Option<Duration>,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let primary = s.primary()?;
    if !moving(s) {
        return None;
    }
    let ceiling = max.max(FAST);
    let age = now.duration_since(primary.created_at).unwrap_or_default();
    let delay = match first_task {
        Some(first) if primary.running_count == 0 && primary.rolling() && first > age => {
            first - age
        }
        _ => END_WITHIN,
    };
    Some(delay.clamp(FAST, ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeploymentStatus;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn dep(id: &str, td: &str, state: RolloutState, running: u32, failed: u32) -> Deployment {
        Deployment {
            id: id.into(),
            status: DeploymentStatus::Primary,
            task_definition: td.into(),
            desired_count: 2,
            running_count: running,
            pending_count: 2 - running.min(2),
            failed_tasks: failed,
            rollout_state: Some(state),
            rollout_state_reason: None,
            created_at: at(0),
        }
    }

    fn svc(deployments: Vec<Deployment>, tasks: &[&str]) -> ServiceSnapshot {
        ServiceSnapshot {
            name: "web".into(),
            arn: "arn:web".into(),
            status: "ACTIVE".into(),
            desired_count: 2,
            running_count: 2,
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            deployments,
            tasks: tasks
                .iter()
                .map(|td| TaskSnapshot {
                    task_definition: td.to_string(),
                    last_status: "RUNNING".into(),
                })
                .collect(),
            stopped: Vec::new(),
            target_groups: Vec::new(),
        }
    }

    fn proof(deployment: &str, td: &str) -> TaskMemory {
        TaskMemory {
            proof: Some(TaskProof {
                deployment: deployment.into(),
                task_definition: td.into(),
                tasks: vec![TaskSnapshot {
                    task_definition: td.into(),
                    last_status: "RUNNING".into(),
                }],
            }),
            ..TaskMemory::default()
        }
    }

    const READ_RUNNING: TaskNeed = TaskNeed::Read {
        running: true,
        stopped: false,
    };
    const READ_STOPPED: TaskNeed = TaskNeed::Read {
        running: false,
        stopped: true,
    };

    #[test]
    #[rustfmt::skip]
    fn task_needs() {
        use RolloutState::*;
        let done = svc(vec![dep("d1", "td:2", Completed, 2, 0)], &[]);
        let rolling =
            |running, failed| svc(vec![dep("d1", "td:2", InProgress, running, failed)], &[]);
        let mut draining = svc(vec![dep("d1", "td:2", Completed, 2, 0)], &[]);
        let mut old = dep("d0", "td:1", Completed, 1, 0);
        old.status = DeploymentStatus::Active;
        draining.deployments.push(old);
        let mut inactive = done.clone();
        inactive.status = "DRAINING".into();
        let stopped = |code: &str, reason: &str| StoppedTask {
            task_definition: "td:2".into(),
            started_by: Some("d1".into()),
            stopped_reason: Some(reason.into()),
            stop_code: Some(code.into()),
            created_at: at(20),
        };
        let read_at_40 = |failed_tasks, task: StoppedTask| TaskMemory {
            stopped_read: Some(StoppedRead {
                deployment: "d1".into(),
                at: at(40),
                failed_tasks,
                tasks: vec![task],
            }),
            ..TaskMemory::default()
        };
        let scaled_in = stopped("ServiceSchedulerInitiated", "Scaling activity initiated");
        let quiet = read_at_40(0, scaled_in.clone());
        let reset = read_at_40(2, scaled_in.clone());
        let failing = read_at_40(0, stopped("EssentialContainerExited", "exited"));
        let none = TaskMemory::default();
        let proven = TaskNeed::Known(ServiceTasks {
            running: proof("d1", "td:2").proof.map(|p| p.tasks).unwrap_or_default(),
            stopped: vec![],
        });
        let nothing = TaskNeed::Known(ServiceTasks::default());
        let read_before = TaskNeed::Known(ServiceTasks {
            running: vec![],
            stopped: vec![scaled_in],
        });
        let cases: Vec<(&str, ServiceSnapshot, TaskMemory, u64, TaskNeed)> = vec![
            ("done, never listed: read once", done.clone(), none.clone(), 100, READ_RUNNING),
            ("done, proven for this deployment", done.clone(), proof("d1", "td:2"), 100, proven),
            ("done, proof of an older deployment", done.clone(), proof("d0", "td:2"), 100, READ_RUNNING),
            ("done, proof of another revision", done.clone(), proof("d1", "td:1"), 100, READ_RUNNING),
            ("draining: deployments decide", draining, proof("d1", "td:2"), 100, nothing.clone()),
            ("not active: deployments decide", inactive, none.clone(), 100, nothing.clone()),
            ("rolling, young, no failures", rolling(0, 0), none.clone(), 10, nothing.clone()),
            ("rolling with failed tasks", rolling(0, 1), none.clone(), 10, READ_STOPPED),
            ("rolling long: stopped read", rolling(1, 0), none.clone(), 31, READ_STOPPED),
            ("read 20 s ago, nothing failed: kept", rolling(1, 0), quiet.clone(), 60, read_before),
            ("read 20 s ago, the failed count grew", rolling(1, 1), quiet.clone(), 60, READ_STOPPED),
            ("read 20 s ago, the failed count reset", rolling(1, 0), reset, 60, READ_STOPPED),
            ("a failed task seen: every look", rolling(1, 0), failing, 45, READ_STOPPED),
            ("read 30 s ago", rolling(1, 0), quiet, 70, READ_STOPPED),
        ];
        for (name, s, memory, now, want) in cases {
            assert_eq!(task_need(&s, &memory, at(now)), want, "{name}");
        }
    }

    #[test]
    fn a_listing_proves_a_done_deployment_only_when_every_task_runs_its_revision() {
        let done = |tasks: &[&str]| {
            svc(
                vec![dep("d1", "td:2", RolloutState::Completed, 2, 0)],
                tasks,
            )
        };
        let mut memory = TaskMemory::default();
        remember(
            &mut memory,
            &done(&["td:2", "td:1"]),
            &READ_RUNNING,
            at(100),
        );
        assert_eq!(memory.proof, None, "a stale task proves nothing");
        remember(
            &mut memory,
            &done(&["td:2", "td:2"]),
            &READ_RUNNING,
            at(105),
        );
        assert_eq!(
            memory.proof.as_ref().map(|p| p.deployment.as_str()),
            Some("d1")
        );
        assert!(matches!(
            task_need(&done(&[]), &memory, at(400)),
            TaskNeed::Known(t) if t.running.len() == 2
        ));
    }

    #[test]
    fn the_first_task_time_is_learned_as_a_lower_bound() {
        let rolling = |running| {
            svc(
                vec![dep("d1", "td:2", RolloutState::InProgress, running, 0)],
                &[],
            )
        };
        let none = TaskNeed::Known(ServiceTasks::default());
        let mut memory = TaskMemory::default();
        remember(&mut memory, &rolling(0), &none, at(5));
        remember(&mut memory, &rolling(0), &none, at(17));
        assert_eq!(memory.first_task, None);
        remember(&mut memory, &rolling(2), &none, at(19));
        assert_eq!(memory.first_task, Some(Duration::from_secs(17)));
        // A rollout already done at the next look teaches the same.
        let second = |state, running| {
            let mut d = dep("d2", "td:3", state, running, 0);
            d.created_at = at(100);
            svc(vec![d], &[])
        };
        remember(
            &mut memory,
            &second(RolloutState::InProgress, 0),
            &none,
            at(112),
        );
        remember(
            &mut memory,
            &second(RolloutState::Completed, 2),
            &none,
            at(116),
        );
        assert_eq!(memory.first_task, Some(Duration::from_secs(12)));
    }

    #[test]
    #[rustfmt::skip]
    fn polling_paces() {
        let rolling = |running| {
            svc(vec![dep("d1", "td:2", RolloutState::InProgress, running, 0)], &[])
        };
        let done = svc(vec![dep("d1", "td:2", RolloutState::Completed, 2, 0)], &[]);
        let (learned, none) = (Some(Duration::from_secs(18)), None);
        let max = Duration::from_secs(5);
        let secs = Duration::from_secs;
        // Name, service, first-task time learned, now (s), the delay.
        type Case = (&'static str, ServiceSnapshot, Option<Duration>, u64, Option<Duration>);
        let cases: Vec<Case> = vec![
            ("converged: no poll", done, none, 100, None),
            ("nothing learned: end within 2 s", rolling(0), none, 3, Some(END_WITHIN)),
            ("first task not due for 15 s: capped by max", rolling(0), learned, 3, Some(max)),
            ("first task due in 3 s", rolling(0), learned, 15, Some(secs(3))),
            ("first task due in 1 s", rolling(0), learned, 17, Some(FAST)),
            ("first task overdue", rolling(0), learned, 30, Some(END_WITHIN)),
            ("tasks running: the end may be near", rolling(1), learned, 5, Some(END_WITHIN)),
        ];
        for (name, s, first_task, now, want) in cases {
            assert_eq!(poll_delay(&s, first_task, at(now), max), want, "{name}");
        }
        let short = poll_delay(&rolling(0), none, at(3), Duration::from_millis(10));
        assert_eq!(short, Some(FAST), "never more than one poll a second");
    }

    #[test]
    #[rustfmt::skip]
    fn a_look_is_light_only_while_something_rolls_on_a_settled_stack_read_lately() {
        let stack = |status: &str| StackSnapshot {
            name: "convox".into(),
            status: status.into(),
            status_reason: None,
            parameters: Default::default(),
            outputs: Default::default(),
            last_updated: Some("1".into()),
        };
        let cases = [
            ("rolling, settled, read 10 s ago", "UPDATE_COMPLETE", true, 10, 20, true),
            ("after a rollback the stack settled", "UPDATE_ROLLBACK_COMPLETE", true, 10, 20, true),
            ("nothing moved at the last look", "UPDATE_COMPLETE", false, 10, 20, false),
            ("the stack updating", "UPDATE_IN_PROGRESS", true, 10, 20, false),
            ("the stack broken", "UPDATE_ROLLBACK_FAILED", true, 10, 20, false),
            ("read 30 s ago", "UPDATE_COMPLETE", true, 10, 40, false),
            ("read after now (the clock stepped back)", "UPDATE_COMPLETE", true, 30, 20, false),
        ];
        for (name, status, moved, read, now, light) in cases {
            assert_eq!(light_look(&stack(status), at(read), moved, at(now)), light, "{name}");
        }
    }
}
