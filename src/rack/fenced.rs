//! A rack whose every write first re-checks the lease: a controller that lost it, or was
//! paused past its expiry, finds out right before writing and writes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Rack, RackError, Relabelled, ResourceChange, StackUpdateOutcome, StackUpdateRequest,
    TemplateSummary,
};
use crate::lease::Lease;
use crate::model::{
    ServiceSnapshot, ServiceTasks, StackSnapshot, TaskDefinitionInfo, TaskRead, UpdateEvents,
};
use crate::spec::Declarations;
use crate::templates::TemplateRef;

pub struct FencedRack {
    inner: Arc<dyn Rack>,
    lease: Lease,
}

impl FencedRack {
    pub fn new(inner: Arc<dyn Rack>, lease: Lease) -> Self {
        FencedRack { inner, lease }
    }

    /// Re-checks the lease, then makes `write` while the lease renewed now is good: a write
    /// (with the SDK's retries) still running when it runs out is abandoned, so no retry of
    /// it reaches AWS after a standby may have taken over.
    async fn fenced<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, RackError>>,
    ) -> Result<T, RackError> {
        let (_, until) = self.lease.fence().await.map_err(|e| RackError::NotLeader {
            message: e.to_string(),
        })?;
        tokio::time::timeout_at(until, write)
            .await
            .unwrap_or_else(|_| {
                Err(RackError::NotLeader {
                    message: "the lease ran out while the write was being made; abandoned (the next reconcile finds out what happened)".into(),
                })
            })
    }
}

#[async_trait]
impl Rack for FencedRack {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        self.inner.describe_stack().await
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        self.inner.describe_services(cluster, services).await
    }

    async fn stack_resources(&self) -> Result<BTreeMap<String, String>, RackError> {
        self.inner.stack_resources().await
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
        self.fenced(self.inner.relabel(base, label, value)).await
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError> {
        self.fenced(self.inner.update_service(cluster, service, task_definition))
            .await
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
        self.fenced(self.inner.update_stack(request)).await
    }

    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError> {
        // A change set is created and deleted, never executed: it changes nothing.
        self.inner.preview_stack_update(request).await
    }

    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        self.fenced(self.inner.cancel_update_stack()).await
    }

    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        self.inner.stack_failure_reason().await
    }

    async fn latest_update(&self) -> Result<UpdateEvents, RackError> {
        self.inner.latest_update().await
    }
}
