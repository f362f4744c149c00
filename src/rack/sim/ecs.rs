//! The simulated rack's ECS services: deployments replacing tasks over time within their
//! limits, tasks that fail to start, circuit breakers and rollbacks.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

impl SimDeployment {
    pub(super) fn new(
        id: String,
        task_definition: String,
        now: Instant,
        fault: Option<RolloutFault>,
    ) -> Self {
        SimDeployment {
            id,
            primary: true,
            task_definition,
            rollout: RolloutState::InProgress,
            reason: Some("ECS deployment in progress.".into()),
            created: now,
            running: 0,
            starting: Vec::new(),
            failed_tasks: 0,
            fault,
        }
    }
}

impl SimService {
    pub(super) fn primary(&self) -> Option<&SimDeployment> {
        self.deployments.iter().find(|d| d.primary)
    }

    /// Running tasks of the deployments other than the primary.
    pub(super) fn old_running(&self) -> u32 {
        self.deployments
            .iter()
            .filter(|d| !d.primary)
            .map(|d| d.running)
            .sum()
    }

    /// One deployment, completed: nothing rolling.
    pub(super) fn settled(&self) -> bool {
        self.deployments.len() == 1 && self.deployments[0].rollout == RolloutState::Completed
    }

    pub(super) fn next_event(&self) -> Option<Instant> {
        self.deployments
            .iter()
            .flat_map(|d| d.starting.iter().copied())
            .min()
    }

    /// One scheduling step at time `t`: resolve launches due, trip the circuit breaker (if
    /// any), stop old tasks and launch new ones within the deployment configuration, complete.
    pub(super) fn step(&mut self, t: Instant, sched: Scheduling, next_id: &mut u64) {
        // Launches only ever belong to the primary (ECS stops launching tasks for a deployment
        // that is no longer primary); drop any others so time always advances.
        for d in self.deployments.iter_mut().filter(|d| !d.primary) {
            d.starting.clear();
        }
        let Some(p) = self.deployments.iter().position(|d| d.primary) else {
            return;
        };
        if self.resolve_launches(p, t, sched) {
            self.roll_back(p, t, next_id);
            return self.step(t, sched, next_id);
        }
        self.replace_tasks(p, t, sched.task_start);
    }

    /// Launches of the primary due by `t` become running tasks, or fail and are stopped with
    /// a reason. Returns whether a circuit breaker trips.
    pub(super) fn resolve_launches(&mut self, p: usize, t: Instant, sched: Scheduling) -> bool {
        let (code, reason) = self.stopped_reason();
        let d = &mut self.deployments[p];
        let due: Vec<Instant> = d.starting.iter().copied().filter(|s| *s <= t).collect();
        d.starting.retain(|s| *s > t);
        if d.fault != Some(RolloutFault::FailToStart) && !sched.launches_fail {
            d.running += due.len() as u32;
            if !due.is_empty() {
                self.ran.insert(d.task_definition.clone());
            }
            return false;
        }
        for ready in &due {
            self.stopped.push_back(SimStopped {
                task_definition: d.task_definition.clone(),
                deployment: d.id.clone(),
                code,
                reason: reason.clone(),
                created: *ready - sched.task_start,
                stopped: *ready,
            });
        }
        // The deployment's failed task count, as the ECS API reference describes it: failures
        // in a row, no longer counted once a task of the deployment ran. Only a circuit
        // breaker acts on it (whether ECS counts at all without one is not documented; the
        // controller does not rely on it).
        if d.running == 0 {
            d.failed_tasks += due.len() as u32;
        }
        match sched.circuit_breaker {
            Some(threshold) => d.failed_tasks >= threshold && d.rollout == RolloutState::InProgress,
            None => false,
        }
    }

    /// How ECS stops a task of this service that fails to start: its stop code and reason.
    pub(super) fn stopped_reason(&self) -> (&'static str, String) {
        match self.target_groups.first() {
            Some(tg) => (
                "ServiceSchedulerInitiated",
                format!("Task failed ELB health checks in (target-group {tg})"),
            ),
            None => (
                "EssentialContainerExited",
                "Essential container in task exited".to_string(),
            ),
        }
    }

    /// Stops old tasks down to the minimum healthy, launches new ones up to the desired count
    /// within the maximum percent, and completes the rollout once only new tasks run.
    pub(super) fn replace_tasks(&mut self, p: usize, t: Instant, task_start: Duration) {
        let desired = self.desired;
        let min_healthy = (desired * self.min_percent).div_ceil(100);
        let max_total = (desired * self.max_percent / 100).max(desired);
        let old_running = self.old_running();
        let new_running = self.deployments[p].running;
        let launching = self.deployments[p].starting.len() as u32;
        let healthy = new_running + old_running;

        let mut stop = old_running.min(healthy.saturating_sub(min_healthy));
        for d in self.deployments.iter_mut().filter(|d| !d.primary) {
            let n = d.running.min(stop);
            d.running -= n;
            stop -= n;
        }
        let old_running = self.old_running();

        let room = max_total.saturating_sub(new_running + old_running + launching);
        let start = desired.saturating_sub(new_running + launching).min(room);
        let ready_at = match self.deployments[p].fault {
            Some(RolloutFault::NeverHealthy) => t + Duration::from_secs(100 * 365 * 86_400),
            _ => t + task_start,
        };
        self.deployments[p]
            .starting
            .extend(std::iter::repeat_n(ready_at, start as usize));

        let d = &self.deployments[p];
        if d.rollout == RolloutState::InProgress
            && d.running >= desired
            && d.starting.is_empty()
            && old_running == 0
        {
            self.deployments[p].rollout = RolloutState::Completed;
            self.deployments[p].reason = Some("ECS deployment completed.".into());
            self.deployments.retain(|d| d.primary);
        }
    }

    /// ECS shows stopped tasks for about an hour (and `ListTasks` pages them; the sim keeps
    /// the latest 100).
    pub(super) fn forget_stopped(&mut self, now: Instant) {
        const KEPT: Duration = Duration::from_secs(3600);
        while self
            .stopped
            .front()
            .is_some_and(|t| t.stopped + KEPT <= now || self.stopped.len() > 100)
        {
            self.stopped.pop_front();
        }
    }

    /// The circuit breaker: fail the primary and roll back to the last deployment that was
    /// running, adopting its tasks.
    pub(super) fn roll_back(&mut self, p: usize, t: Instant, next_id: &mut u64) {
        let failed = &mut self.deployments[p];
        failed.rollout = RolloutState::Failed;
        failed.reason = Some(CIRCUIT_BREAKER_REASON.into());
        failed.primary = false;
        failed.starting.clear();
        let Some(prev) = self
            .deployments
            .iter()
            .position(|d| !d.primary && d.rollout != RolloutState::Failed)
        else {
            // Nothing to roll back to: the failed deployment stays primary, failed.
            self.deployments[p].primary = true;
            return;
        };
        *next_id += 1;
        let mut back = SimDeployment::new(
            format!("ecs-svc/{:019}", 4_000_000_000_000_000_000u64 + *next_id),
            self.deployments[prev].task_definition.clone(),
            t,
            None,
        );
        back.reason = Some(format!(
            "ECS deployment circuit breaker: rolling back to deploymentId {}.",
            self.deployments[prev].id
        ));
        // The rollback deployment takes over the tasks of the same revision.
        let adopted: u32 = self
            .deployments
            .iter()
            .filter(|d| d.task_definition == back.task_definition)
            .map(|d| d.running)
            .sum();
        back.running = adopted;
        let td = back.task_definition.clone();
        self.deployments
            .retain(|d| d.task_definition != td || d.rollout == RolloutState::Failed);
        self.deployments.insert(0, back);
    }

    pub(super) fn snapshot(&self, clock: &Clock) -> ServiceSnapshot {
        let deployments = self
            .deployments
            .iter()
            .map(|d| Deployment {
                id: d.id.clone(),
                status: if d.primary {
                    DeploymentStatus::Primary
                } else {
                    DeploymentStatus::Active
                },
                task_definition: d.task_definition.clone(),
                desired_count: if d.primary { self.desired } else { d.running },
                running_count: d.running,
                pending_count: d.starting.len() as u32,
                failed_tasks: d.failed_tasks,
                rollout_state: Some(d.rollout),
                rollout_state_reason: d.reason.clone(),
                created_at: clock.wall_at(d.created),
            })
            .collect::<Vec<_>>();
        ServiceSnapshot {
            name: self.name.clone(),
            arn: self.arn.clone(),
            status: "ACTIVE".into(),
            desired_count: self.desired,
            running_count: self.deployments.iter().map(|d| d.running).sum(),
            minimum_healthy_percent: self.min_percent,
            maximum_percent: self.max_percent,
            deployments,
            tasks: Vec::new(),
            stopped: Vec::new(),
            target_groups: self.target_groups.clone(),
        }
    }

    /// The tasks `read` asks for, as `ListTasks` and `DescribeTasks` show them.
    pub(super) fn tasks(&self, read: &TaskRead, clock: &Clock) -> ServiceTasks {
        let running = self
            .deployments
            .iter()
            .filter(|_| read.running)
            .flat_map(|d| {
                let running = std::iter::repeat_n("RUNNING", d.running as usize);
                let pending = std::iter::repeat_n("PENDING", d.starting.len());
                running.chain(pending).map(move |st| TaskSnapshot {
                    task_definition: d.task_definition.clone(),
                    last_status: st.to_string(),
                })
            })
            .collect();
        let stopped = self
            .stopped
            .iter()
            .filter(|_| read.stopped)
            .map(|t| StoppedTask {
                task_definition: t.task_definition.clone(),
                started_by: Some(t.deployment.clone()),
                stopped_reason: Some(t.reason.clone()),
                stop_code: Some(t.code.to_string()),
                created_at: clock.wall_at(t.created),
            })
            .collect();
        ServiceTasks { running, stopped }
    }
}
