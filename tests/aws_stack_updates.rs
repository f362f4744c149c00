//! Stack updates through the real AWS adapter, fed canned SDK responses (aws-smithy-mocks)
//! for what moto does not answer as CloudFormation does: a no-op update, an update already
//! under way after a lost response, a rollback with more events than one page holds, and
//! whose update is under way (the token of its start event, past the rollback's own events).

use std::sync::{Arc, Mutex};

use aws_sdk_cloudformation::error::ErrorMetadata;
use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
use aws_sdk_cloudformation::operation::get_template_summary::GetTemplateSummaryOutput;
use aws_sdk_cloudformation::operation::update_stack::{UpdateStackError, UpdateStackOutput};
use aws_sdk_cloudformation::primitives::DateTime;
use aws_sdk_cloudformation::types::{Capability, ParameterDeclaration, ResourceStatus, StackEvent};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::{RackVersion, StackParameter, UpdateToken};
use rack_reconciler::rack::aws::AwsRack;
use rack_reconciler::rack::{Rack, StackUpdateOutcome, StackUpdateRequest};
use rack_reconciler::templates::{TemplateLocation, TemplateRef};

const STACK: &str = "convox";

fn event(logical: &str, status: ResourceStatus, reason: &str, token: &str) -> StackEvent {
    StackEvent::builder()
        .stack_id("arn:aws:cloudformation:us-east-1:123456789012:stack/convox/1")
        .event_id(format!("{logical}-{}", fastrand::u64(..)))
        .stack_name(STACK)
        .logical_resource_id(logical)
        .resource_status(status)
        .resource_status_reason(reason)
        .client_request_token(token)
        .timestamp(DateTime::from_secs(1_800_000_000))
        .build()
}

/// `DescribeStackEvents` answered in two pages (newest first), and a third that is never
/// asked for when the walk stops in time.
fn two_pages(newest: Vec<StackEvent>, older: Vec<StackEvent>) -> (Rule, Rule) {
    let first = mock!(aws_sdk_cloudformation::Client::describe_stack_events)
        .match_requests(|r| r.next_token().is_none())
        .then_output(move || {
            DescribeStackEventsOutput::builder()
                .set_stack_events(Some(newest.clone()))
                .next_token("page-2")
                .build()
        });
    let second = mock!(aws_sdk_cloudformation::Client::describe_stack_events)
        .match_requests(|r| r.next_token() == Some("page-2"))
        .then_output(move || {
            DescribeStackEventsOutput::builder()
                .set_stack_events(Some(older.clone()))
                .next_token("page-3")
                .build()
        });
    (first, second)
}

fn validation(message: &'static str) -> impl Fn() -> UpdateStackError + Send + Sync {
    move || {
        UpdateStackError::generic(
            ErrorMetadata::builder()
                .code("ValidationError")
                .message(message)
                .build(),
        )
    }
}

fn rack(rules: &[&Rule]) -> AwsRack {
    let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, rules);
    let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, &[]);
    AwsRack::new(STACK, cfn, ecs, Metrics::new())
}

fn request(token: &str) -> StackUpdateRequest {
    StackUpdateRequest {
        template: Some(TemplateRef {
            version: RackVersion::parse("20240205000000").expect("version"),
            location: TemplateLocation::Url(
                "https://convox.s3.amazonaws.com/release/20240205000000/rack.json".into(),
            ),
        }),
        role_arn: None,
        parameters: vec![StackParameter {
            key: "Version".into(),
            value: Some("20240205000000".into()),
        }],
        capabilities: vec!["CAPABILITY_IAM".into()],
        token: token.into(),
    }
}

#[tokio::test]
async fn the_request_carries_the_token_and_the_capabilities() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let update =
        mock!(aws_sdk_cloudformation::Client::update_stack).then_compute_output(move |req| {
            *s.lock().expect("seen") = Some((
                req.client_request_token().map(str::to_string),
                req.capabilities().to_vec(),
            ));
            UpdateStackOutput::builder().stack_id("id").build()
        });
    let out = rack(&[&update])
        .update_stack(&request("tok-1"))
        .await
        .expect("update");
    assert_eq!(out, StackUpdateOutcome::Started);
    assert_eq!(
        seen.lock().expect("seen").clone(),
        Some((Some("tok-1".to_string()), vec![Capability::CapabilityIam]))
    );
}

#[tokio::test]
async fn the_capabilities_a_template_asks_for_are_read_from_its_summary() {
    let summary = mock!(aws_sdk_cloudformation::Client::get_template_summary).then_output(|| {
        GetTemplateSummaryOutput::builder()
            .parameters(
                ParameterDeclaration::builder()
                    .parameter_key("Version")
                    .build(),
            )
            .capabilities(Capability::CapabilityNamedIam)
            .build()
    });
    let t = request("x").template.expect("template");
    let s = rack(&[&summary])
        .template_summary(&t)
        .await
        .expect("summary");
    assert_eq!(s.capabilities, vec!["CAPABILITY_NAMED_IAM".to_string()]);
    assert!(s.parameters.contains("Version"));
}

#[tokio::test]
async fn no_updates_to_perform_is_success() {
    let update = mock!(aws_sdk_cloudformation::Client::update_stack)
        .then_error(validation("No updates are to be performed."));
    let out = rack(&[&update])
        .update_stack(&request("tok-1"))
        .await
        .expect("no-op");
    assert_eq!(out, StackUpdateOutcome::NoChange);
}

#[tokio::test]
async fn an_update_in_progress_with_our_token_is_ours_and_any_other_is_an_error() {
    let refused = || {
        mock!(aws_sdk_cloudformation::Client::update_stack).then_error(validation(
            "Stack:arn:aws:cloudformation:us-east-1:123456789012:stack/convox/1 is in UPDATE_IN_PROGRESS state and can not be updated.",
        ))
    };
    let events = mock!(aws_sdk_cloudformation::Client::describe_stack_events).then_output(|| {
        DescribeStackEventsOutput::builder()
            .stack_events(event(
                "convox",
                ResourceStatus::UpdateInProgress,
                "User Initiated",
                "tok-1",
            ))
            .build()
    });
    // The first attempt's response was lost; the SDK's retry finds the update under way.
    let (update, update2) = (refused(), refused());
    let out = rack(&[&update, &events])
        .update_stack(&request("tok-1"))
        .await
        .expect("ours");
    assert_eq!(out, StackUpdateOutcome::Started);
    let e = rack(&[&update2, &events])
        .update_stack(&request("tok-2"))
        .await
        .expect_err("someone else's update");
    assert!(e.to_string().contains("UPDATE_IN_PROGRESS"), "{e}");
}

#[tokio::test]
async fn the_cause_of_a_rollback_is_found_past_the_first_page_of_events() {
    // Newest first: the rollback's own events fill the first page; the failure that caused
    // it, and the update's start, are on the second.
    let mut newest: Vec<StackEvent> = (0..100)
        .map(|i| {
            let status = if i % 2 == 0 {
                ResourceStatus::UpdateComplete
            } else {
                ResourceStatus::UpdateInProgress
            };
            event(&format!("RackResource{i:03}"), status, "", "tok-1")
        })
        .collect();
    newest[10] = event(
        "ServiceMonitorApi",
        ResourceStatus::UpdateFailed,
        "Resource update cancelled",
        "tok-1",
    );
    let older = vec![
        event(
            "ServiceWebApi",
            ResourceStatus::UpdateFailed,
            "Service did not stabilize",
            "tok-1",
        ),
        event("ApiWebTasks", ResourceStatus::UpdateComplete, "", "tok-1"),
        event(
            "convox",
            ResourceStatus::UpdateInProgress,
            "User Initiated",
            "tok-1",
        ),
        event(
            "Cluster",
            ResourceStatus::UpdateFailed,
            "an older update",
            "tok-0",
        ),
    ];
    let (first, second) = two_pages(newest, older);
    let cause = rack(&[&first, &second])
        .stack_failure_reason()
        .await
        .expect("events");
    assert_eq!(
        cause.as_deref(),
        Some("ServiceWebApi: Service did not stabilize")
    );
    assert_eq!(
        (first.num_calls(), second.num_calls()),
        (1, 1),
        "stops at the update's start"
    );
}

#[tokio::test]
async fn whose_update_it_is_is_read_from_its_start_event_past_the_rollbacks_own_events() {
    // Newest first: the rollback's events (which may carry another token, such as that of a
    // CancelUpdateStack) fill the first page; the update's start event is on the second.
    let mine = "rack-reconciler-20240205000000-00000000000000aa";
    let mut newest: Vec<StackEvent> = (0..100)
        .map(|i| {
            event(
                &format!("RackResource{i:03}"),
                ResourceStatus::UpdateComplete,
                "",
                "cancel-token-1",
            )
        })
        .collect();
    newest[99] = event(
        "convox",
        ResourceStatus::UpdateRollbackInProgress,
        "Resource update cancelled",
        "cancel-token-1",
    );
    let older = vec![
        event("ApiWebTasks", ResourceStatus::UpdateComplete, "", mine),
        event(
            "convox",
            ResourceStatus::UpdateInProgress,
            "User Initiated",
            mine,
        ),
        event(
            "convox",
            ResourceStatus::UpdateInProgress,
            "User Initiated",
            "Console-x",
        ),
    ];
    let (first, second) = two_pages(newest, older);
    let update = rack(&[&first, &second])
        .latest_update()
        .await
        .expect("events");
    assert_eq!(update.token, UpdateToken::Read(Some(mine.to_string())));
    assert_eq!(
        update.rollback_since,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000)),
        "when the stack began rolling back"
    );
    assert_eq!((first.num_calls(), second.num_calls()), (1, 1));

    // Events that end before the update's start: whose it is stays unknown.
    let only = mock!(aws_sdk_cloudformation::Client::describe_stack_events).then_output(|| {
        DescribeStackEventsOutput::builder()
            .set_stack_events(Some(vec![event(
                "ServiceWebApi",
                ResourceStatus::UpdateInProgress,
                "",
                "tok",
            )]))
            .build()
    });
    let update = rack(&[&only]).latest_update().await.expect("events");
    assert!(
        matches!(update.token, UpdateToken::Unknown(_)),
        "{:?}",
        update.token
    );
}
