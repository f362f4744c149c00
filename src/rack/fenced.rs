//! A rack whose every write first re-checks the lease: a controller that lost it, or was
//! paused past its expiry, finds out right before writing and writes nothing. The write then
//! runs under the fence it got ([`crate::lease::fence`]): each attempt to send it, the SDK's
//! retries included, is checked against the lease's deadline once more, so a process paused
//! between the check and the send sends nothing when it resumes past the deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Rack, RackError, Relabelled, ResourceChange, StackUpdateOutcome, StackUpdateRequest,
    TemplateSummary,
};
use crate::lease::{fence, Lease};
use crate::metrics::Metrics;
use crate::model::{
    ServiceSnapshot, ServiceTasks, StackSnapshot, TaskDefinitionInfo, TaskRead, UpdateEvents,
};
use crate::spec::Declarations;
use crate::templates::TemplateRef;

pub struct FencedRack {
    inner: Arc<dyn Rack>,
    lease: Lease,
    metrics: Metrics,
    pause: PausePoint,
    seen: std::sync::Mutex<Seen>,
}

/// What the last observation saw of what the writes change: the conditions they are made on.
#[derive(Default)]
struct Seen {
    /// The stack's `LastUpdatedTime` (`Some(None)`: never updated).
    stack: Option<Option<String>>,
    /// Each service's primary revision, by service name.
    services: BTreeMap<String, String>,
}

/// A test hook: the point between a write's lease check and its first attempt, where a test
/// can hold the write (as a paused process would be held) while another controller acts.
#[derive(Clone, Default)]
pub struct PausePoint {
    armed: Arc<std::sync::Mutex<Option<&'static str>>>,
    reached: Arc<Notify>,
    resume: Arc<Notify>,
}

impl PausePoint {
    /// Holds the next write of `operation` that passes.
    pub fn arm(&self, operation: &'static str) {
        if let Ok(mut armed) = self.armed.lock() {
            *armed = Some(operation);
        }
    }

    /// Returns once a write is held.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held write go on.
    pub fn resume(&self) {
        self.resume.notify_one();
    }

    async fn pass(&self, operation: &str) {
        let hold = self
            .armed
            .lock()
            .map(|mut armed| armed.take_if(|op| *op == operation).is_some())
            .unwrap_or(false);
        if hold {
            self.reached.notify_one();
            self.resume.notified().await;
        }
    }
}

impl FencedRack {
    pub fn new(inner: Arc<dyn Rack>, lease: Lease, metrics: Metrics) -> Self {
        FencedRack {
            inner,
            lease,
            metrics,
            pause: PausePoint::default(),
            seen: std::sync::Mutex::new(Seen::default()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// CloudFormation takes no condition on `UpdateStack`: the stack is read again right
    /// before, and must still be as the reconcile observed it (its `LastUpdatedTime`).
    async fn stack_unchanged(&self) -> Result<(), RackError> {
        let Some(observed) = self.seen().stack.clone() else {
            return Ok(());
        };
        let now = self.inner.describe_stack().await?;
        if now.last_updated == observed && !now.status.ends_with("_IN_PROGRESS") {
            return Ok(());
        }
        Err(RackError::ChangedSinceObserved {
            resource: format!("stack {}", now.name),
            what: format!(
                "{}, last updated {} where {} was observed",
                now.status,
                now.last_updated.as_deref().unwrap_or("never"),
                observed.as_deref().unwrap_or("never")
            ),
        })
    }

    /// ECS takes no condition on `UpdateService`: the service is read again right before,
    /// and its primary revision must still be the one the reconcile observed.
    async fn service_unchanged(&self, cluster: &str, service: &str) -> Result<(), RackError> {
        let Some(observed) = self.seen().services.get(service).cloned() else {
            return Ok(());
        };
        let now = self
            .inner
            .describe_services(cluster, &[service.to_string()])
            .await?;
        let primary = now
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.primary())
            .map(|d| d.task_definition.clone());
        if primary.as_deref() == Some(observed.as_str()) {
            return Ok(());
        }
        Err(RackError::ChangedSinceObserved {
            resource: format!("service {service}"),
            what: format!(
                "its primary deployment runs {} where {observed} was observed",
                primary.as_deref().unwrap_or("nothing")
            ),
        })
    }

    /// The pause point of this rack's writes (for tests).
    pub fn pause_point(&self) -> PausePoint {
        self.pause.clone()
    }

    /// Re-checks the lease, then makes `write` under the fence it gives: every attempt is
    /// checked against the lease's deadline right before it is sent, and a write still
    /// running when the deadline passes is abandoned.
    async fn fenced<T>(
        &self,
        operation: &str,
        write: impl std::future::Future<Output = Result<T, RackError>>,
    ) -> Result<T, RackError> {
        let not_leader = |message: String| RackError::NotLeader { message };
        let fence = self
            .lease
            .fence()
            .await
            .map_err(|e| not_leader(e.to_string()))?;
        self.pause.pass(operation).await;
        let deadline = fence.deadline;
        let attempt = fence::scoped(fence, self.metrics.clone(), async {
            fence::check(operation).map_err(|r| not_leader(r.to_string()))?;
            match write.await {
                // An attempt the fence refused, or one that failed once the lease ran out:
                // the lease's doing, not AWS's.
                Err(e) if fence::lapsed().is_some() => Err(not_leader(format!(
                    "{operation}: the lease (fence {}) ran out while the write was being made ({e}); the next reconcile finds out what happened",
                    fence.fence
                ))),
                r => r,
            }
        });
        tokio::time::timeout_at(deadline.mono, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(not_leader(format!("{operation}: the lease ran out while the write was being made; abandoned (the next reconcile finds out what happened)")))
            })
    }
}

#[async_trait]
impl Rack for FencedRack {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        let snapshot = self.inner.describe_stack().await?;
        self.seen().stack = Some(snapshot.last_updated.clone());
        Ok(snapshot)
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let snapshots = self.inner.describe_services(cluster, services).await?;
        let mut seen = self.seen();
        for s in &snapshots {
            if let Some(d) = s.primary() {
                seen.services
                    .insert(s.name.clone(), d.task_definition.clone());
            }
        }
        drop(seen);
        Ok(snapshots)
    }

    async fn stack_resource(&self, logical: &str) -> Result<String, RackError> {
        self.inner.stack_resource(logical).await
    }

    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError> {
        self.inner.service_tasks(cluster, reads).await
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        self.inner.describe_task_definition(arn).await
    }

    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError> {
        self.fenced(
            "RegisterTaskDefinition",
            self.inner.relabel(base, label, value),
        )
        .await
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError> {
        let write = async {
            self.service_unchanged(cluster, service).await?;
            self.inner
                .update_service(cluster, service, task_definition)
                .await
        };
        let result = self.fenced("UpdateService", write).await;
        if result.is_ok() {
            // Its own write moved the service: the next condition is on what it wrote.
            self.seen()
                .services
                .insert(service.to_string(), task_definition.to_string());
        }
        result
    }

    async fn stack_declarations(&self) -> Result<Declarations, RackError> {
        self.inner.stack_declarations().await
    }

    async fn template_summary(&self, template: &TemplateRef) -> Result<TemplateSummary, RackError> {
        self.inner.template_summary(template).await
    }

    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError> {
        let write = async {
            self.stack_unchanged().await?;
            self.inner.update_stack(request).await
        };
        let result = self.fenced("UpdateStack", write).await;
        // Its own update moves the stack: the next condition is the next observation.
        self.seen().stack = None;
        result
    }

    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError> {
        // A change set is created and deleted, never executed: it changes nothing.
        self.inner.preview_stack_update(request).await
    }

    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        self.fenced("CancelUpdateStack", self.inner.cancel_update_stack())
            .await
    }

    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        self.inner.stack_failure_reason().await
    }

    async fn latest_update(&self) -> Result<UpdateEvents, RackError> {
        self.inner.latest_update().await
    }
}
