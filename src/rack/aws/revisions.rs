//! The rack API's task definition revisions: read in full once, kept, found again for reuse,
//! registered as exact copies with one label changed (checked field by field).

use super::*;

/// The first of the fields that differ between `a` and `b`, named with `prefix`.
macro_rules! first_difference {
    ($a:expr, $b:expr, $prefix:expr; $($field:ident => $name:literal),* $(,)?) => {{
        let (a, b) = ($a, $b);
        None$(.or_else(|| (a.$field != b.$field).then(|| format!("{}{}", $prefix, $name))))*
    }};
}

impl AwsRack {
    /// Whether `arn` is kept, without touching the order.
    pub(super) fn keeps(&self, arn: &str) -> bool {
        let kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().any(|(a, _)| a == arn)
    }

    pub(super) fn kept(&self, arn: &str) -> Option<Revision> {
        let mut kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(|(a, _)| a == arn)?;
        let entry = kept.remove(i)?;
        let revision = entry.1.clone();
        kept.push_back(entry);
        Some(revision)
    }

    pub(super) fn keep(&self, arn: &str, revision: Revision) {
        let mut kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(a, _)| a != arn);
        kept.push_back((arn.to_string(), revision));
        while kept.len() > KEPT_REVISIONS {
            kept.pop_front();
        }
    }

    /// A revision, read once (`DescribeTaskDefinition` with its tags) and kept.
    pub(super) async fn describe_full(&self, arn: &str) -> Result<Revision, RackError> {
        if let Some(kept) = self.kept(arn) {
            return Ok(kept);
        }
        let out = self
            .call(
                "ecs",
                "DescribeTaskDefinition",
                arn,
                self.ecs
                    .describe_task_definition()
                    .task_definition(arn)
                    .include(TaskDefinitionField::Tags)
                    .send(),
            )
            .await?;
        let tags = out.tags.clone().unwrap_or_default();
        let td = out.task_definition.ok_or_else(|| RackError::Api {
            service: "ecs",
            operation: "DescribeTaskDefinition",
            resource: arn.to_string(),
            kind: ApiErrorKind::NotFound,
            message: "the response carried no task definition".into(),
        })?;
        self.keep(arn, (td.clone(), tags.clone()));
        Ok((td, tags))
    }

    /// Among the family's latest revisions, one equal to `want` (with `tags`); the revisions
    /// the adapter keeps (those the rack API ran or it registered) are compared without a
    /// call, the others described.
    pub(super) async fn find_revision(
        &self,
        base: &str,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<Option<String>, RackError> {
        let family = want.family.clone().unwrap_or_default();
        for arn in self.latest_revisions(&family, base).await? {
            let (td, tags_of_candidate) = self.describe_full(&arn).await?;
            if difference(want, tags, &td, &tags_of_candidate).is_none() {
                return Ok(Some(arn));
            }
        }
        Ok(None)
    }

    /// The ARNs of up to [`REUSE_CANDIDATES`] latest ACTIVE revisions of `family` that can
    /// be a copy of `base`, newest first, page by page. ARNs rule out the others without a
    /// describe: other families (a family prefix also matches `convox-webhooks`), and
    /// revisions older than `base` that the adapter does not keep. A copy left by a run that
    /// stopped before `UpdateService` is newer than `base`; an older copy that the rack API
    /// ran (a label the stack put back) is kept. One missed costs a duplicate revision, not
    /// a wrong one.
    pub(super) async fn latest_revisions(
        &self,
        family: &str,
        base: &str,
    ) -> Result<Vec<String>, RackError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    "ecs",
                    "ListTaskDefinitions",
                    family,
                    self.ecs
                        .list_task_definitions()
                        .family_prefix(family)
                        .status(TaskDefinitionStatus::Active)
                        .sort(SortOrder::Desc)
                        .max_results(REUSE_CANDIDATES as i32 + 1)
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            let arns = page.task_definition_arns.unwrap_or_default();
            let (candidates, reached) = reuse_candidates(arns, family, base, |a| self.keeps(a));
            found.extend(candidates);
            token = page.next_token;
            if reached || found.len() >= REUSE_CANDIDATES || token.is_none() {
                found.truncate(REUSE_CANDIDATES);
                return Ok(found);
            }
        }
    }

    /// Registers `want` with `tags`, then proves ECS stored exactly that.
    pub(super) async fn register(
        &self,
        base: &str,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<String, RackError> {
        // Not idempotent: only a throttled call (refused before it was processed) is sent
        // again. After any other failure the next reconcile finds and reuses the revision
        // if ECS did register it.
        let (new, stored, stored_tags) = (|| self.register_once(want, tags))
            .retry(write_retry())
            .sleep(tokio::time::sleep)
            .when(RackError::throttled)
            .await?;
        // Prove that what ECS stored is the running revision with only the label changed:
        // the response carries the stored revision and its tags. A response without tags
        // (some emulators leave them out) is checked against a describe instead. Describing a
        // revision just registered may not find it yet (eventual consistency).
        let (stored, stored_tags) = match stored_tags {
            Some(stored_tags) => {
                self.keep(&new, (stored.clone(), stored_tags.clone()));
                (stored, stored_tags)
            }
            None => {
                (|| self.describe_full(&new))
                    .retry(read_after_write_retry())
                    .sleep(tokio::time::sleep)
                    .when(|e| {
                        matches!(
                            e,
                            RackError::Api {
                                kind: ApiErrorKind::NotFound,
                                ..
                            }
                        )
                    })
                    .await?
            }
        };
        if let Some(field) = difference(want, tags, &stored, &stored_tags) {
            return Err(RackError::RevisionMismatch {
                base: base.to_string(),
                new,
                field,
            });
        }
        Ok(new)
    }

    /// One `RegisterTaskDefinition`, without the SDK's retries: the new revision's ARN, the
    /// revision as stored, and its tags when the response carries them.
    pub(super) async fn register_once(
        &self,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<(String, TaskDefinition, Option<Vec<Tag>>), RackError> {
        let family = want.family.clone().unwrap_or_default();
        let out = self
            .call(
                "ecs",
                "RegisterTaskDefinition",
                &family,
                self.ecs
                    .register_task_definition()
                    .family(&family)
                    .set_task_role_arn(want.task_role_arn.clone())
                    .set_execution_role_arn(want.execution_role_arn.clone())
                    .set_network_mode(want.network_mode.clone())
                    .set_container_definitions(want.container_definitions.clone())
                    .set_volumes(want.volumes.clone())
                    .set_placement_constraints(want.placement_constraints.clone())
                    .set_requires_compatibilities(want.requires_compatibilities.clone())
                    .set_cpu(want.cpu.clone())
                    .set_memory(want.memory.clone())
                    .set_tags((!tags.is_empty()).then(|| tags.to_vec()))
                    .set_pid_mode(want.pid_mode.clone())
                    .set_ipc_mode(want.ipc_mode.clone())
                    .set_proxy_configuration(want.proxy_configuration.clone())
                    .set_ephemeral_storage(want.ephemeral_storage.clone())
                    .set_runtime_platform(want.runtime_platform.clone())
                    .set_enable_fault_injection(want.enable_fault_injection)
                    // A retry after a lost response would register a duplicate.
                    .customize()
                    .config_override(
                        aws_sdk_ecs::config::Config::builder()
                            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled()),
                    )
                    .send(),
            )
            .await?;
        let td = out
            .task_definition
            .filter(|t| t.task_definition_arn.is_some())
            .ok_or_else(|| RackError::Api {
                service: "ecs",
                operation: "RegisterTaskDefinition",
                resource: family,
                kind: ApiErrorKind::Rejected,
                message: "the response carried no task definition ARN".into(),
            })?;
        let arn = td.task_definition_arn.clone().unwrap_or_default();
        Ok((arn, td, out.tags))
    }
}

/// Of one page of a family's revisions (newest first), those that can be a copy of `base`:
/// of the family (a prefix also matches `convox-webhooks`), and newer than `base` or `kept`;
/// and whether the page reached `base`'s revision (older pages hold nothing newer).
pub(super) fn reuse_candidates(
    arns: Vec<String>,
    family: &str,
    base: &str,
    kept: impl Fn(&str) -> bool,
) -> (Vec<String>, bool) {
    let base_revision = arn_revision(base);
    let ours = |a: &String| arn_family(a) == Some(family) && a != base;
    let reached = arns
        .iter()
        .any(|a| arn_family(a) == Some(family) && arn_revision(a) <= base_revision);
    let candidates = arns
        .into_iter()
        .filter(|a| ours(a) && (arn_revision(a) > base_revision || kept(a)))
        .collect();
    (candidates, reached)
}

/// The revision number in a task definition ARN; 0 when it has none.
pub(super) fn arn_revision(arn: &str) -> u32 {
    arn.rsplit_once(':')
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0)
}

/// The family in a task definition ARN (`...:task-definition/<family>:<revision>`).
pub(super) fn arn_family(arn: &str) -> Option<&str> {
    arn.rsplit_once("task-definition/")?
        .1
        .rsplit_once(':')
        .map(|(f, _)| f)
}

pub(super) fn info(arn: &str, td: &TaskDefinition) -> TaskDefinitionInfo {
    let labels = td
        .container_definitions
        .as_deref()
        .and_then(|c| c.first())
        .and_then(|c| c.docker_labels.as_ref());
    TaskDefinitionInfo {
        arn: arn.to_string(),
        family: td.family.clone().unwrap_or_default(),
        revision: count(td.revision),
        labels: crate::model::read_labels()
            .filter_map(|label| Some((label.to_string(), labels?.get(label)?.clone())))
            .collect(),
    }
}

/// The revision to register: `base` with `label` set on its first container, and without the
/// fields ECS assigns at registration.
pub(super) fn relabelled(
    base: &TaskDefinition,
    label: &str,
    value: &str,
) -> Result<TaskDefinition, RackError> {
    let mut td = registered_fields(base);
    let first = td
        .container_definitions
        .as_mut()
        .and_then(|c| c.first_mut())
        .ok_or_else(|| RackError::RevisionMismatch {
            base: base.task_definition_arn.clone().unwrap_or_default(),
            new: String::new(),
            field: "containerDefinitions (the revision has no container)".into(),
        })?;
    first
        .docker_labels
        .get_or_insert_with(Default::default)
        .insert(label.to_string(), value.to_string());
    Ok(td)
}

/// A task definition without the fields ECS sets at registration.
pub(super) fn registered_fields(td: &TaskDefinition) -> TaskDefinition {
    let mut t = td.clone();
    t.task_definition_arn = None;
    t.revision = 0;
    t.status = None;
    t.requires_attributes = None;
    t.compatibilities = None;
    t.registered_at = None;
    t.deregistered_at = None;
    t.delete_requested_at = None;
    t.registered_by = None;
    t
}

/// The first field (by its ECS name) in which `stored` differs from `want`, if any. Values
/// are never included: they may be secrets.
pub(super) fn difference(
    want: &TaskDefinition,
    want_tags: &[Tag],
    stored: &TaskDefinition,
    stored_tags: &[Tag],
) -> Option<String> {
    let stored = registered_fields(stored);
    let task = first_difference!(want, &stored, "";
        family => "family",
        task_role_arn => "taskRoleArn",
        execution_role_arn => "executionRoleArn",
        network_mode => "networkMode",
        volumes => "volumes",
        placement_constraints => "placementConstraints",
        requires_compatibilities => "requiresCompatibilities",
        runtime_platform => "runtimePlatform",
        cpu => "cpu",
        memory => "memory",
        pid_mode => "pidMode",
        ipc_mode => "ipcMode",
        proxy_configuration => "proxyConfiguration",
        ephemeral_storage => "ephemeralStorage",
        enable_fault_injection => "enableFaultInjection",
    );
    if task.is_some() {
        return task;
    }
    let (a, b) = (
        want.container_definitions.as_deref().unwrap_or_default(),
        stored.container_definitions.as_deref().unwrap_or_default(),
    );
    if a.len() != b.len() {
        return Some("containerDefinitions (number of containers)".into());
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if let Some(field) = container_difference(i, x, y) {
            return Some(field);
        }
    }
    let tags = |t: &[Tag]| -> HashSet<(Option<String>, Option<String>)> {
        t.iter().map(|t| (t.key.clone(), t.value.clone())).collect()
    };
    if tags(want_tags) != tags(stored_tags) {
        return Some("tags".into());
    }
    (want != &stored).then(|| "a field of the task definition".into())
}

pub(super) fn container_difference(
    i: usize,
    a: &ContainerDefinition,
    b: &ContainerDefinition,
) -> Option<String> {
    let prefix = format!("containerDefinitions[{i}].");
    let found: Option<String> = first_difference!(a, b, prefix;
        name => "name", image => "image", repository_credentials => "repositoryCredentials",
        cpu => "cpu", memory => "memory", memory_reservation => "memoryReservation", links => "links",
        port_mappings => "portMappings", essential => "essential", restart_policy => "restartPolicy",
        entry_point => "entryPoint", command => "command", environment => "environment",
        environment_files => "environmentFiles", mount_points => "mountPoints", volumes_from => "volumesFrom",
        linux_parameters => "linuxParameters", secrets => "secrets", depends_on => "dependsOn",
        start_timeout => "startTimeout", stop_timeout => "stopTimeout", version_consistency => "versionConsistency",
        hostname => "hostname", user => "user", working_directory => "workingDirectory",
        disable_networking => "disableNetworking", privileged => "privileged",
        readonly_root_filesystem => "readonlyRootFilesystem", dns_servers => "dnsServers",
        dns_search_domains => "dnsSearchDomains", extra_hosts => "extraHosts",
        docker_security_options => "dockerSecurityOptions", interactive => "interactive",
        pseudo_terminal => "pseudoTerminal", docker_labels => "dockerLabels", ulimits => "ulimits",
        log_configuration => "logConfiguration", health_check => "healthCheck", system_controls => "systemControls",
        resource_requirements => "resourceRequirements", firelens_configuration => "firelensConfiguration",
        credential_specs => "credentialSpecs",
    );
    found.or_else(|| (a != b).then(|| format!("containerDefinitions[{i}]")))
}
