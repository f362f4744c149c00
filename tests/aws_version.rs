//! Version changes through the AWS adapter against moto: the `UpdateStack` request carries
//! exactly the right parameters, and `check-downgrade` (the real binary) exits as documented.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::moto::Moto;
use common::proxy::FaultProxy;
use common::rack_fixture::{self, STACK};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::ServiceTarget;
use rack_reconciler::rack::aws::AwsRack;
use rack_reconciler::reconcile::{Reconciler, Trigger};
use rack_reconciler::status::{Status, StatusHandle};
use rack_reconciler::templates::TemplateSource;

const OLD: &str = "20240205000000";

/// Publishes the 2024 template as a release (in moto's S3, as the Convox release bucket has
/// it) and returns the `templates.url` pattern that finds it. Also writes it into `dir` as
/// `<version>.json`, where it is too large to be used.
async fn publish_old_template(
    moto: &Moto,
    dir: &std::path::Path,
    rack: &rack_fixture::Rack,
) -> String {
    let (old, _) = rack_fixture::template(
        OLD,
        &rack.web_task_definition,
        &rack.monitor_task_definition,
    );
    let body = old.to_string();
    std::fs::write(dir.join(format!("{OLD}.json")), &body).expect("template");
    rack_fixture::upload_template(moto, &format!("release/{OLD}/rack.json"), &body).await;
    format!(
        "https://{}.s3.amazonaws.com/release/{{version}}/rack.json",
        rack_fixture::TEMPLATE_BUCKET
    )
}

/// `Parameters.member.N.*` of a form-encoded CloudFormation request: key → value or
/// `None` for UsePreviousValue.
fn stack_parameters(body: &str) -> BTreeMap<String, Option<String>> {
    let mut fields: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for pair in body.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(rest) = k.strip_prefix("Parameters.member.") else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        fields
            .entry(n.to_string())
            .or_default()
            .insert(field.to_string(), decode(v));
    }
    fields
        .into_values()
        .map(|f| {
            let key = f.get("ParameterKey").cloned().unwrap_or_default();
            let previous = f.get("UsePreviousValue").map(String::as_str) == Some("true");
            let value = if previous {
                None
            } else {
                f.get("ParameterValue").cloned()
            };
            (key, value)
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 2;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_update_stack_request_carries_exactly_the_right_parameters() {
    let moto = Moto::start().await;
    let rack = rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = publish_old_template(&moto, dir.path(), &rack).await;
    let params = format!("ECSExec: \"No\"\nVersion: \"{OLD}\"\n");
    let (mut rec, proxy, metrics) = recorded(&moto, dir.path(), &params, |settings| {
        settings.templates = TemplateSource { url, dir: None };
    })
    .await;
    let r = rec.reconcile(Trigger::Startup).await;
    assert!(r.acted, "{:?}", rec.status().get().parameter("Version"));
    assert_eq!(metrics.api_calls("UpdateStack"), 1);

    let body = proxy
        .bodies()
        .into_iter()
        .find(|b| b.contains("Action=UpdateStack"))
        .expect("an UpdateStack request");
    assert!(
        body.contains("Capabilities.member.1=CAPABILITY_IAM"),
        "{body}"
    );
    assert!(
        body.contains("TemplateURL=") && !body.contains("TemplateBody="),
        "a rack template is too large for a body: it goes by URL"
    );
    assert!(
        body.contains("ClientRequestToken=rack-reconciler-"),
        "{body}"
    );
    let sent = stack_parameters(&body);

    let fx = rack_reconciler::rack::sim::fixture();
    let old = &fx.templates[OLD].parameters;
    let current = &fx.templates["20260418101514"].parameters;
    let mut expected = BTreeMap::new();
    for key in old.keys() {
        if key == "Version" {
            expected.insert(key.clone(), Some(OLD.to_string()));
        } else if key == "AvailabilityZones" {
            // Computed, as convox sends it: the zones from the rack's own label.
            expected.insert(key.clone(), Some("us-east-1a,us-east-1b".to_string()));
        } else if current.contains_key(key) {
            expected.insert(key.clone(), None);
        }
    }
    assert_eq!(sent, expected);
    // The parameters only the newer release declares are dropped...
    assert!(!sent.contains_key("BuildMethod") && !sent.contains_key("NLB"));
    // ...and the one only the older declares is left to its default.
    assert!(!sent.contains_key("InternalSuffix"));
    assert!(sent.len() > 80);
}

fn run_check(config: &std::path::Path, endpoint: &str, to: &str) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .args([
            "--config",
            &config.display().to_string(),
            "check-downgrade",
            "--to",
            to,
        ])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run rack-reconciler");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn check_downgrade_exit_codes() {
    let moto = Moto::start().await;
    let rack = rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = publish_old_template(&moto, dir.path(), &rack).await;
    let config = dir.path().join("rack-reconciler.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: aws\nrack: {STACK}\nparams_file: params.yaml\nlease: none\ntemplates:\n  url: \"{url}\"\n"
        ),
    )
    .expect("config");
    let params = dir.path().join("params.yaml");

    std::fs::write(&params, "ECSExec: \"Yes\"\n").expect("params");
    let (code, out) = run_check(&config, &moto.endpoint, OLD);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("refused") && out.contains("ECSExec: \"No\""),
        "{out}"
    );

    // The rack runs no ECSExec label (the default, No) and nothing rolls on moto.
    std::fs::write(&params, "ECSExec: \"No\"\n").expect("params");
    let (code, out) = run_check(&config, &moto.endpoint, OLD);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed"), "{out}");

    let (code, out) = run_check(&config, &moto.endpoint, "20261101000000");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not older"), "{out}");

    let (code, out) = run_check(&config, &moto.endpoint, "latest");
    assert_eq!(code, 5, "{out}");

    let (code, out) = run_check(&config, &moto.endpoint, "20230101000000");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("20230101000000"), "{out}");

    // The stack's Version parameter no longer reads as a version: with ECSExec wanted Yes
    // and a target that predates it, the gate cannot tell and refuses.
    std::fs::write(&params, "ECSExec: \"Yes\"\n").expect("params");
    let (cfn, _) = moto.clients().await;
    let stack = cfn
        .describe_stacks()
        .stack_name(STACK)
        .send()
        .await
        .expect("describe");
    let keep: Vec<_> = stack.stacks()[0]
        .parameters()
        .iter()
        .filter_map(|p| p.parameter_key())
        .map(|k| {
            let p = aws_sdk_cloudformation::types::Parameter::builder().parameter_key(k);
            if k == "Version" {
                p.parameter_value("latest").build()
            } else {
                p.use_previous_value(true).build()
            }
        })
        .collect();
    cfn.update_stack()
        .stack_name(STACK)
        .use_previous_template(true)
        .set_parameters(Some(keep))
        .send()
        .await
        .expect("update_stack");
    let (code, out) = run_check(&config, &moto.endpoint, OLD);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("current version is unknown"), "{out}");
    std::fs::write(&params, "ECSExec: \"No\"\n").expect("params");

    // A template of a real rack's size cannot be sent as a body: a local copy is refused
    // with what to do instead.
    let local = dir.path().join("local.yaml");
    std::fs::write(
        &local,
        format!("backend: aws\nrack: {STACK}\nparams_file: params.yaml\nlease: none\ntemplates:\n  dir: .\n"),
    )
    .expect("config");
    let (code, out) = run_check(&local, &moto.endpoint, OLD);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("51200") && out.contains("templates.url"),
        "{out}"
    );
}

/// A reconciler on moto through a recording proxy, with `params` and `stack_role`.
async fn recorded(
    moto: &Moto,
    dir: &std::path::Path,
    params: &str,
    configure: impl FnOnce(&mut rack_reconciler::reconcile::Settings),
) -> (Reconciler, FaultProxy, Metrics) {
    std::fs::write(dir.join("params.yaml"), params).expect("params");
    let proxy = FaultProxy::start_matching(&moto.endpoint, "never-matches", Vec::new()).await;
    let config = moto.sdk_config(&proxy.endpoint).await;
    let metrics = Metrics::new();
    let aws = AwsRack::new(
        STACK,
        aws_sdk_cloudformation::Client::new(&config),
        aws_sdk_ecs::Client::new(&config),
        metrics.clone(),
    );
    let mut settings = common::aws_settings(dir, ServiceTarget::rack_api());
    configure(&mut settings);
    let rec = Reconciler::new(
        Arc::new(aws),
        settings,
        metrics.clone(),
        StatusHandle::new(Status::default()),
    );
    (rec, proxy, metrics)
}

#[tokio::test]
async fn a_declared_parameter_changes_by_update_stack_with_the_rest_kept_and_no_secret_sent() {
    let moto = Moto::start().await;
    rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut rec, proxy, metrics) = recorded(&moto, dir.path(), "ApiCount: \"3\"\n", |_| {}).await;
    let r = rec.reconcile(Trigger::Startup).await;
    assert!(r.acted, "{:?}", rec.status().get().parameter("ApiCount"));
    assert_eq!(metrics.api_calls("UpdateStack"), 1);
    let body = proxy
        .bodies()
        .into_iter()
        .find(|b| b.contains("Action=UpdateStack"))
        .expect("an UpdateStack request");
    assert!(
        body.contains("UsePreviousTemplate=true"),
        "the template is kept"
    );
    assert!(body.contains("ClientRequestToken=rack-reconciler-"));
    // The token sent is the one written down (before the call) in the status document.
    let token = body
        .split('&')
        .find_map(|p| p.strip_prefix("ClientRequestToken="))
        .map(decode)
        .expect("token");
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("params.status.json")).expect("status file"),
    )
    .expect("status json");
    assert_eq!(
        written["controller"]["stackUpdate"]["token"].as_str(),
        Some(token.as_str()),
        "{written}"
    );
    let sent = stack_parameters(&body);
    let given: Vec<_> = sent.iter().filter(|(_, v)| v.is_some()).collect();
    // AvailabilityZones as convox sends it: the zones the rack runs in, from its label.
    assert_eq!(
        given,
        vec![
            (&"ApiCount".to_string(), &Some("3".to_string())),
            (
                &"AvailabilityZones".to_string(),
                &Some("us-east-1a,us-east-1b".to_string())
            )
        ]
    );
    assert_eq!(
        sent.get("Password"),
        Some(&None),
        "the NoEcho parameter is never sent"
    );
    let fx = rack_reconciler::rack::sim::fixture();
    assert_eq!(
        sent.len(),
        fx.templates["20260418101514"].parameters.len(),
        "every parameter"
    );
    assert!(!body.contains(rack_fixture::SECRET));

    // moto applies it at once; another run sees it and writes nothing.
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(
        r.phases.get("ApiCount"),
        Some(&rack_reconciler::plan::Phase::Converged)
    );
    assert!(!r.acted);
    assert_eq!(metrics.api_calls("UpdateStack"), 1);
    assert_eq!(metrics.api_calls("RegisterTaskDefinition"), 0);
    assert_eq!(metrics.api_calls("UpdateService"), 0);
}

#[tokio::test]
async fn with_a_service_role_the_update_carries_its_arn() {
    let moto = Moto::start().await;
    rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let role = "arn:aws:iam::123456789012:role/convox-rack-reconciler-CloudFormationRole-1ABC";
    let (mut rec, proxy, _) = recorded(&moto, dir.path(), "ApiCount: \"4\"\n", |settings| {
        settings.stack_role = Some(role.to_string());
    })
    .await;
    assert!(rec.reconcile(Trigger::Startup).await.acted);
    let body = proxy
        .bodies()
        .into_iter()
        .find(|b| b.contains("Action=UpdateStack"))
        .expect("an UpdateStack request");
    assert!(decode(&body).contains(&format!("RoleARN={role}")), "{body}");
}

#[tokio::test]
async fn plan_previews_a_stack_update_as_a_change_set_and_leaves_nothing_behind() {
    let moto = Moto::start().await;
    rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut rec, _proxy, metrics) = recorded(&moto, dir.path(), "ApiCount: \"3\"\n", |_| {}).await;
    let (observed, _) = rec.preview().await.expect("preview");
    let preview = rec
        .preview_stack_update(&observed)
        .await
        .expect("a stack change to preview");
    preview.expect("the change set is described");
    assert_eq!(
        (
            metrics.api_calls("CreateChangeSet"),
            metrics.api_calls("DeleteChangeSet"),
            metrics.api_calls("UpdateStack")
        ),
        (1, 1, 0),
        "previewed, cleaned up, nothing executed"
    );
    let (cfn, _) = moto.clients().await;
    let left = cfn
        .list_change_sets()
        .stack_name(STACK)
        .send()
        .await
        .expect("list change sets");
    assert!(left.summaries().is_empty(), "no change set left behind");
    let stack = cfn
        .describe_stacks()
        .stack_name(STACK)
        .send()
        .await
        .expect("describe");
    let api_count = stack.stacks()[0]
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("ApiCount"))
        .and_then(|p| p.parameter_value())
        .map(str::to_string);
    assert_eq!(api_count.as_deref(), Some("2"), "the stack is unchanged");

    // Nothing to change through the stack: no change set at all.
    std::fs::write(dir.path().join("params.yaml"), "ApiCount: \"2\"\n").expect("params");
    let (observed, _) = rec.preview().await.expect("preview");
    assert!(rec.preview_stack_update(&observed).await.is_none());
    assert_eq!(metrics.api_calls("CreateChangeSet"), 1);
}
