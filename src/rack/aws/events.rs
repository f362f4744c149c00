//! CloudFormation's side of the stack: its events (who updates it, what failed), change
//! sets for `plan`, and the answers of a refused `UpdateStack`.

use super::*;

impl AwsRack {
    /// The resource changes of a change set, once CloudFormation has computed them (polled
    /// for up to 30 seconds). A change set without changes is an empty list.
    pub(super) async fn change_set_changes(
        &self,
        id: &str,
    ) -> Result<Vec<ResourceChange>, RackError> {
        for _ in 0..30 {
            let out = self
                .call(
                    "cloudformation",
                    "DescribeChangeSet",
                    id,
                    self.cfn
                        .describe_change_set()
                        .change_set_name(id)
                        .stack_name(&self.stack)
                        .send(),
                )
                .await?;
            let status = out
                .status
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if status.ends_with("_PENDING") || status.ends_with("_IN_PROGRESS") {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let reason = out.status_reason.clone().unwrap_or_default();
            if status == "FAILED" && !reason.contains("didn't contain changes") {
                return Err(RackError::Api {
                    service: "cloudformation",
                    operation: "DescribeChangeSet",
                    resource: id.to_string(),
                    kind: ApiErrorKind::Rejected,
                    message: format!("the change set failed: {reason}"),
                });
            }
            return Ok(out
                .changes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.resource_change)
                .map(|r| ResourceChange {
                    action: r.action.map(|a| a.as_str().to_string()).unwrap_or_default(),
                    logical_id: r.logical_resource_id.unwrap_or_default(),
                    resource_type: r.resource_type.unwrap_or_default(),
                    replacement: r.replacement.map(|x| x.as_str().to_string()),
                })
                .collect());
        }
        Err(RackError::Api {
            service: "cloudformation",
            operation: "DescribeChangeSet",
            resource: id.to_string(),
            kind: ApiErrorKind::Transient,
            message: "the change set was not ready after 30 seconds".into(),
        })
    }

    /// One page of the stack's events, newest first, and the token of the next (older) page.
    pub(super) async fn stack_events(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<StackEvent>, Option<String>), RackError> {
        let out = self
            .call(
                "cloudformation",
                "DescribeStackEvents",
                &self.stack,
                self.cfn
                    .describe_stack_events()
                    .stack_name(&self.stack)
                    .set_next_token(token)
                    .send(),
            )
            .await?;
        let events = out
            .stack_events
            .unwrap_or_default()
            .into_iter()
            .map(|e| StackEvent {
                logical_id: e.logical_resource_id.unwrap_or_default(),
                status: e
                    .resource_status
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: e.resource_status_reason,
                token: e.client_request_token,
                at: e.timestamp.and_then(|t| SystemTime::try_from(t).ok()),
            })
            .collect();
        Ok((events, out.next_token))
    }

    /// The stack's events, page by page, newest first, back to the latest update's start (at
    /// most [`MAX_EVENT_PAGES`]).
    pub(super) async fn walk_events(&self) -> Result<FailureWalk, RackError> {
        let mut walk = FailureWalk::default();
        let mut token: Option<String> = None;
        for _ in 0..MAX_EVENT_PAGES {
            let (events, next) = self.stack_events(token.take()).await?;
            walk.feed(&self.stack, &events);
            token = next;
            if walk.done || token.is_none() {
                break;
            }
        }
        Ok(walk)
    }

    /// An `UpdateStack` error that may still mean success: nothing to update, or the update
    /// this token started already under way (the SDK retried after a lost response).
    pub(super) async fn update_stack_refused(
        &self,
        e: RackError,
        token: &str,
    ) -> Result<StackUpdateOutcome, RackError> {
        let RackError::Api { message, .. } = &e else {
            return Err(e);
        };
        if message.contains("No updates are to be performed") {
            return Ok(StackUpdateOutcome::NoChange);
        }
        // The update may have started although no answer came back (a timeout, a dropped
        // connection), or the SDK's retry of it found it under way.
        let transient = matches!(
            e,
            RackError::Api {
                kind: ApiErrorKind::Transient,
                ..
            }
        );
        let ours_maybe = transient
            || message.contains("TokenAlreadyExists")
            || message.contains("_IN_PROGRESS state and can not be updated");
        if ours_maybe {
            match self.stack_events(None).await {
                Ok((events, _)) if events.iter().any(|ev| ev.token.as_deref() == Some(token)) => {
                    return Ok(StackUpdateOutcome::Started)
                }
                Ok(_) => {}
                // Whether the update started is not known: the token stays written down
                // (a transient answer) until the stack's events tell.
                Err(read) => {
                    return Err(RackError::Api {
                        service: "cloudformation",
                        operation: "UpdateStack",
                        resource: self.stack.clone(),
                        kind: ApiErrorKind::Transient,
                        message: format!(
                            "{message}; whether the update started could not be read: {read}"
                        ),
                    })
                }
            }
        }
        Err(e)
    }
}

/// `UpdateStack`/`CreateChangeSet` parameters: a value, or `UsePreviousValue`.
pub(super) fn cfn_parameters(parameters: &[StackParameter]) -> Vec<Parameter> {
    parameters
        .iter()
        .map(|p| {
            Parameter::builder()
                .parameter_key(&p.key)
                .set_parameter_value(p.value.clone())
                .set_use_previous_value(p.value.is_none().then_some(true))
                .build()
        })
        .collect()
}
