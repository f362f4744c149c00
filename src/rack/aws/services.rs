//! ECS's side of the rack API: its services and tasks, read in batches, as snapshots.

use super::*;

impl AwsRack {
    /// Up to 10 services in one `DescribeServices`, in the order asked for.
    pub(super) async fn describe_service_batch(
        &self,
        cluster: &str,
        chunk: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let out = self
            .call(
                "ecs",
                "DescribeServices",
                cluster,
                self.ecs
                    .describe_services()
                    .cluster(cluster)
                    .set_services(Some(chunk.to_vec()))
                    .send(),
            )
            .await?;
        if let Some(f) = out.failures.unwrap_or_default().into_iter().next() {
            return Err(RackError::ServiceNotFound {
                cluster: cluster.to_string(),
                service: f.arn.unwrap_or_default(),
            });
        }
        let found = out.services.unwrap_or_default();
        chunk
            .iter()
            .map(|wanted| {
                found
                    .iter()
                    .find(|s| {
                        s.service_arn.as_deref() == Some(wanted.as_str())
                            || s.service_name.as_deref() == Some(wanted.as_str())
                    })
                    .map(service_snapshot)
                    .ok_or_else(|| RackError::ServiceNotFound {
                        cluster: cluster.to_string(),
                        service: wanted.clone(),
                    })
            })
            .collect()
    }

    /// Every task ARN of a service with the given desired status, page by page.
    pub(super) async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        status: DesiredStatus,
    ) -> Result<Vec<String>, RackError> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    "ecs",
                    "ListTasks",
                    service,
                    self.ecs
                        .list_tasks()
                        .cluster(cluster)
                        .service_name(service)
                        .desired_status(status.clone())
                        .set_next_token(token.clone())
                        .send(),
                )
                .await?;
            arns.extend(page.task_arns.unwrap_or_default());
            token = page.next_token;
            if token.is_none() {
                return Ok(arns);
            }
        }
    }

    /// Up to 100 tasks in one `DescribeTasks`, each with the index of its service.
    pub(super) async fn describe_task_batch(
        &self,
        cluster: &str,
        chunk: &[(usize, String)],
    ) -> Result<Vec<(usize, Observed)>, RackError> {
        let arns: Vec<String> = chunk.iter().map(|(_, a)| a.clone()).collect();
        let out = self
            .call(
                "ecs",
                "DescribeTasks",
                cluster,
                self.ecs
                    .describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(arns))
                    .send(),
            )
            .await?;
        Ok(out
            .tasks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|task| {
                let owner = chunk
                    .iter()
                    .find(|(_, a)| task.task_arn.as_deref() == Some(a.as_str()))?
                    .0;
                Some((owner, observed_task(task)?))
            })
            .collect())
    }
}

pub(super) fn service_snapshot(s: &aws_sdk_ecs::types::Service) -> ServiceSnapshot {
    let dc = s.deployment_configuration.as_ref();
    ServiceSnapshot {
        name: s.service_name.clone().unwrap_or_default(),
        arn: s.service_arn.clone().unwrap_or_default(),
        status: s.status.clone().unwrap_or_default(),
        desired_count: count(s.desired_count),
        running_count: count(s.running_count),
        minimum_healthy_percent: dc
            .and_then(|d| d.minimum_healthy_percent)
            .map(count)
            .unwrap_or(100),
        maximum_percent: dc.and_then(|d| d.maximum_percent).map(count).unwrap_or(200),
        deployments: s
            .deployments
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|d| Deployment {
                id: d.id.clone().unwrap_or_default(),
                status: match d.status.as_deref() {
                    Some("PRIMARY") => DeploymentStatus::Primary,
                    Some("ACTIVE") => DeploymentStatus::Active,
                    _ => DeploymentStatus::Inactive,
                },
                task_definition: d.task_definition.clone().unwrap_or_default(),
                desired_count: count(d.desired_count),
                running_count: count(d.running_count),
                pending_count: count(d.pending_count),
                failed_tasks: count(d.failed_tasks),
                rollout_state: d.rollout_state.as_ref().and_then(|r| match r.as_str() {
                    "IN_PROGRESS" => Some(RolloutState::InProgress),
                    "COMPLETED" => Some(RolloutState::Completed),
                    "FAILED" => Some(RolloutState::Failed),
                    _ => None,
                }),
                rollout_state_reason: d.rollout_state_reason.clone(),
                created_at: d
                    .created_at
                    .map(system_time)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect(),
        tasks: Vec::new(),
        stopped: Vec::new(),
        target_groups: s
            .load_balancers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|lb| lb.target_group_arn.clone())
            .collect(),
    }
}

pub(super) fn observed_task(task: aws_sdk_ecs::types::Task) -> Option<Observed> {
    let task_definition = task.task_definition_arn?;
    if task.desired_status.as_deref() == Some("STOPPED") {
        return Some(Observed::Stopped(StoppedTask {
            task_definition,
            started_by: task.started_by,
            stopped_reason: task.stopped_reason,
            stop_code: task.stop_code.map(|c| c.as_str().to_string()),
            created_at: task
                .created_at
                .map(system_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }));
    }
    Some(Observed::Wanted(TaskSnapshot {
        task_definition,
        last_status: task.last_status.unwrap_or_default(),
    }))
}

pub(super) fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

pub(super) fn system_time(t: aws_sdk_ecs::primitives::DateTime) -> SystemTime {
    let secs = u64::try_from(t.secs()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, t.subsec_nanos())
}
