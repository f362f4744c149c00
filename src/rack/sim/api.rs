//! The simulated rack as the controller calls it: the [`Rack`] trait, each method counted under
//! the AWS operation it stands for, and the helpers of its task definitions.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;

#[async_trait]
impl Rack for SimRack {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "DescribeStacks", &name)?;
        Ok(StackSnapshot {
            name,
            status: s.stack_status.clone(),
            status_reason: s.stack_status_reason.clone(),
            parameters: s.parameters.clone(),
            outputs: s.outputs(),
            last_updated: Some(s.stack_updates.len().to_string()),
        })
    }

    async fn stack_resource(&self, logical: &str) -> Result<String, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "DescribeStackResource", &name)?;
        s.resources()
            .get(logical)
            .cloned()
            .ok_or_else(|| RackError::MissingResource {
                stack: name,
                logical: logical.to_string(),
            })
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let mut s = self.lock();
        for _ in services.chunks(10) {
            self.call(&mut s, "ecs", "DescribeServices", cluster)?;
        }
        let mut out = Vec::with_capacity(services.len());
        for wanted in services {
            let found = s
                .services
                .iter()
                .find(|x| (&x.name == wanted || &x.arn == wanted) && s.cluster == cluster);
            match found {
                Some(svc) => out.push(svc.snapshot(&self.clock)),
                None => {
                    return Err(RackError::ServiceNotFound {
                        cluster: cluster.to_string(),
                        service: wanted.clone(),
                    })
                }
            }
        }
        Ok(out)
    }

    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError> {
        let mut s = self.lock();
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            // As on AWS: one ListTasks per service and status asked for.
            for _ in [read.running, read.stopped].iter().filter(|asked| **asked) {
                self.call(&mut s, "ecs", "ListTasks", &read.service)?;
            }
            let svc = s
                .services
                .iter()
                .find(|x| (x.name == read.service || x.arn == read.service) && s.cluster == cluster)
                .ok_or_else(|| RackError::ServiceNotFound {
                    cluster: cluster.to_string(),
                    service: read.service.clone(),
                })?;
            out.push(svc.tasks(read, &self.clock));
        }
        // ... and one DescribeTasks per 100 of the tasks found.
        let found: usize = out.iter().map(|t| t.running.len() + t.stopped.len()).sum();
        for _ in 0..found.div_ceil(100) {
            self.call(&mut s, "ecs", "DescribeTasks", cluster)?;
        }
        Ok(out)
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeTaskDefinition", arn)?;
        s.kept.insert(arn.to_string());
        let body = s
            .task_definitions
            .get(arn)
            .ok_or_else(|| not_found("DescribeTaskDefinition", arn))?;
        Ok(info(arn, body))
    }

    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError> {
        fenced("RegisterTaskDefinition")?;
        let mut s = self.lock();
        // The AWS adapter reads the running revision in full (kept since the loop read it).
        if s.kept.insert(base.to_string()) {
            self.call(&mut s, "ecs", "DescribeTaskDefinition", base)?;
        }
        let (arn, reused) = match self.find_in(&mut s, base, label, value)? {
            Some(arn) => (arn, true),
            None => (self.register_in(&mut s, base, label, value)?, false),
        };
        // ... and keeps what it registered (the response proves it).
        s.kept.insert(arn.clone());
        let body = s
            .task_definitions
            .get(&arn)
            .ok_or_else(|| not_found("DescribeTaskDefinition", &arn))?;
        Ok(Relabelled {
            info: info(&arn, body),
            arn,
            reused,
        })
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError> {
        fenced("UpdateService")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        self.call(&mut s, "ecs", "UpdateService", service)?;
        if !s.task_definitions.contains_key(task_definition) {
            return Err(not_found("UpdateService", task_definition));
        }
        let idx = s
            .services
            .iter()
            .position(|x| (x.name == service || x.arn == service) && s.cluster == cluster)
            .ok_or_else(|| RackError::ServiceNotFound {
                cluster: cluster.to_string(),
                service: service.to_string(),
            })?;
        let others_settled = s
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .all(|(_, x)| x.settled());
        let record = UpdateRecord {
            service: s.services[idx].logical.clone(),
            task_definition: task_definition.to_string(),
            at: now,
            others_settled,
        };
        s.updates.push(record);
        s.deploy(idx, task_definition.to_string(), now);
        Ok(())
    }

    async fn stack_declarations(&self) -> Result<Declarations, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "GetTemplate", &name)?;
        let version = s.parameters.get("Version").cloned().unwrap_or_default();
        s.templates.get(&version).cloned().ok_or_else(|| {
            cfn_validation("GetTemplate", &name, "the stack's template is not known")
        })
    }

    async fn template_summary(&self, template: &TemplateRef) -> Result<TemplateSummary, RackError> {
        let mut s = self.lock();
        let shown = template.to_string();
        self.call(&mut s, "cloudformation", "GetTemplateSummary", &shown)?;
        let parameters = match &template.location {
            TemplateLocation::Body { body, .. } => declared_parameters(body)
                .map_err(|e| cfn_validation("GetTemplateSummary", &shown, &e))?,
            TemplateLocation::Url(_) => s
                .templates
                .get(&template.version.to_string())
                .map(|t| t.params.keys().cloned().collect())
                .ok_or_else(|| RackError::Api {
                    service: "cloudformation",
                    operation: "GetTemplateSummary",
                    resource: shown,
                    kind: ApiErrorKind::Rejected,
                    message: "ValidationError: S3 error: Access Denied (no such release)".into(),
                })?,
        };
        Ok(TemplateSummary {
            parameters,
            // The rack template creates IAM roles.
            capabilities: vec![RACK_CAPABILITY.to_string()],
        })
    }

    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError> {
        fenced("UpdateStack")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "UpdateStack", &name)?;
        if s.stack_status.ends_with("_IN_PROGRESS") {
            if s.stack_token.as_deref() == Some(request.token.as_str()) {
                // A retry of the update this token started.
                return Ok(StackUpdateOutcome::Started);
            }
            let message = format!(
                "Stack:{name} is in {} state and can not be updated.",
                s.stack_status
            );
            return Err(cfn_validation("UpdateStack", &name, &message));
        }
        if !request.capabilities.iter().any(|c| c == RACK_CAPABILITY) {
            return Err(RackError::Api {
                service: "cloudformation",
                operation: "UpdateStack",
                resource: name,
                kind: ApiErrorKind::Rejected,
                message: format!("InsufficientCapabilitiesException: Requires capabilities : [{RACK_CAPABILITY}]"),
            });
        }
        let declared = match &request.template {
            Some(t) => s.declared(t, &name)?,
            None => s.current_declared(),
        };
        let next = s.next_parameters(&declared, &request.parameters, &name)?;
        if next == s.parameters {
            return Ok(StackUpdateOutcome::NoChange);
        }
        s.start_stack_update(now, request, next, declared);
        Ok(StackUpdateOutcome::Started)
    }

    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        for op in ["CreateChangeSet", "DescribeChangeSet", "DeleteChangeSet"] {
            self.call(&mut s, "cloudformation", op, &name)?;
        }
        // The rack template writes Version and ECSExec into the API task definitions' labels:
        // changing them replaces those and updates the services. The sim models no other
        // resource.
        let relabels = request.parameters.iter().any(|p| {
            matches!(p.key.as_str(), "Version" | "ECSExec")
                && p.value.is_some()
                && p.value.as_ref() != s.parameters.get(&p.key)
        });
        if !relabels {
            return Ok(Vec::new());
        }
        let change = |logical: &str, kind: &str, replacement: &str| ResourceChange {
            action: "Modify".into(),
            logical_id: logical.into(),
            resource_type: kind.into(),
            replacement: Some(replacement.into()),
        };
        Ok(vec![
            change("ApiWebTasks", "AWS::ECS::TaskDefinition", "True"),
            change("ApiMonitorTasks", "AWS::ECS::TaskDefinition", "True"),
            change("ServiceWebApi", "AWS::ECS::Service", "False"),
            change("ServiceMonitorApi", "AWS::ECS::Service", "False"),
        ])
    }

    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        fenced("CancelUpdateStack")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "CancelUpdateStack", &name)?;
        if s.stack_status != "UPDATE_IN_PROGRESS" || s.stack_update.is_none() {
            let message = format!(
                "CancelUpdateStack cannot be called from current stack status {}",
                s.stack_status
            );
            return Err(cfn_validation("CancelUpdateStack", &name, &message));
        }
        s.roll_back_stack(now, "ServiceWebApi", "Resource update cancelled");
        Ok(())
    }

    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        Ok(self.walk_events()?.cause)
    }

    async fn latest_update(&self) -> Result<UpdateEvents, RackError> {
        let name = self.lock().settings.rack.clone();
        Ok(self.walk_events()?.update(&name))
    }
}

pub(super) fn cfn_validation(operation: &'static str, resource: &str, message: &str) -> RackError {
    RackError::Api {
        service: "cloudformation",
        operation,
        resource: resource.to_string(),
        kind: ApiErrorKind::Rejected,
        message: format!("ValidationError: {message}"),
    }
}

pub(super) fn not_found(operation: &'static str, resource: &str) -> RackError {
    RackError::Api {
        service: "ecs",
        operation,
        resource: resource.to_string(),
        kind: ApiErrorKind::NotFound,
        message: "ClientException: Unable to describe task definition.".into(),
    }
}

pub(super) fn info(arn: &str, body: &Value) -> TaskDefinitionInfo {
    let labels = &body["containerDefinitions"][0]["dockerLabels"];
    TaskDefinitionInfo {
        arn: arn.to_string(),
        family: body["family"].as_str().unwrap_or_default().to_string(),
        revision: body["revision"].as_u64().unwrap_or(0) as u32,
        labels: crate::model::read_labels()
            .filter_map(|label| {
                labels[label]
                    .as_str()
                    .map(|v| (label.to_string(), v.to_string()))
            })
            .collect(),
    }
}

pub(super) fn set_label(body: &mut Value, label: &str, value: Option<&str>) {
    let labels = &mut body["containerDefinitions"][0]["dockerLabels"];
    if let Some(map) = labels.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(label.to_string(), json!(v));
            }
            None => {
                map.remove(label);
            }
        }
    }
}

/// The registered body without the fields ECS assigns at registration.
pub(super) fn comparable(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        for k in ["revision", "taskDefinitionArn", "status", "registeredAt"] {
            o.remove(k);
        }
    }
    b
}

/// The revision number of a task definition ARN.
pub(super) fn revision_of(arn: &str) -> u32 {
    arn.rsplit_once(':')
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn short_id(seed: &str) -> String {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:012X}").chars().take(12).collect()
}

/// A task definition as the rack template registers it, with every kind of field a real one
/// carries: environment values (the monitor's plaintext `PASSWORD` among them), secret-bearing
/// labels, and the `ApiRole` under the path `/convox/`. None of it may ever be logged.
pub(super) fn initial_task_definition(
    rack: &str,
    settings: &SimSettings,
    family: &str,
    container: &str,
    labels: &BTreeMap<String, String>,
) -> Value {
    let region = &settings.region;
    let api_role = format!(
        "arn:aws:iam::{ACCOUNT}:role/convox/{rack}-ApiRole-{}",
        short_id("ApiRole")
    );
    let mut environment = vec![
        json!({"name": "AWS_REGION", "value": region}),
        json!({"name": "CLIENT_ID", "value": "dev@convox.com"}),
        json!({"name": "NO_PROXY", "value": "169.254.169.254,169.254.170.2"}),
        json!({"name": "HTTP_PROXY", "value": ""}),
        json!({"name": "HTTPS_PROXY", "value": ""}),
        json!({"name": "PROVIDER", "value": "aws"}),
        json!({"name": "RACK", "value": rack}),
        json!({"name": "STACK_ID", "value": format!("arn:aws:cloudformation:{region}:{ACCOUNT}:stack/{rack}/{}", short_id(rack))}),
    ];
    if container == "monitor" {
        environment.push(json!({"name": "PASSWORD", "value": sim_password(rack)}));
    }
    let mut c = json!({
        "name": container,
        "image": format!("convox/rack:{}", settings.version),
        "command": ["api"],
        "cpu": 128,
        "essential": true,
        "dockerLabels": labels,
        "environment": environment,
        "linuxParameters": {"initProcessEnabled": true},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-region": region,
                "awslogs-group": format!("{rack}-LogGroup-{}", short_id("logs")),
                "awslogs-stream-prefix": "convox",
            }
        },
        "mountPoints": [
            {"sourceVolume": "docker", "containerPath": "/var/run/docker.sock", "readOnly": false}
        ],
        "readonlyRootFilesystem": false,
    });
    if container == "web" {
        c["memoryReservation"] = json!(256);
        c["portMappings"] = json!([{"containerPort": 5443, "hostPort": 4000, "protocol": "tcp"}]);
        c["secrets"] = json!([{
            "name": "RACK_KEY",
            "valueFrom": format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter/{rack}/rack-key")
        }]);
    } else {
        c["memory"] = json!(128);
    }
    let mut body = json!({
        "family": family,
        "containerDefinitions": [c],
        "taskRoleArn": api_role,
        "volumes": [{"name": "docker", "host": {"sourcePath": "/var/run/docker.sock"}}],
        "requiresCompatibilities": ["EC2"],
        "networkMode": "bridge",
        "placementConstraints": [],
        "tags": [{"key": "Rack", "value": rack}, {"key": "System", "value": "convox"}],
    });
    if container == "web" {
        body["executionRoleArn"] = json!(api_role);
    }
    body
}

/// The simulated rack API password: the monitor task's plaintext `PASSWORD`.
pub fn sim_password(rack: &str) -> String {
    format!("sim-password-{}", short_id(rack))
}

/// The simulated rack's writes are attempts too: each is checked against the fence in scope
/// as the AWS clients' interceptor checks theirs.
pub(super) fn fenced(operation: &str) -> Result<(), RackError> {
    crate::lease::fence::check(operation).map_err(|r| RackError::NotLeader {
        message: r.to_string(),
    })
}
