//! The shipped IAM policy (`deploy/iam-policy.json`, and the same statements in
//! `deploy/controller.yaml`) evaluated against the ARNs of a rack shaped like a real one: roles
//! under the path `/convox/`, CloudFormation-generated cluster and service names. Every call
//! the controller makes is allowed; calls on other resources are not.

use std::collections::BTreeMap;

use rack_reconciler::rack::sim::{SimRack, SimSettings};
use serde_json::Value;

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// An action on a resource with the request's condition keys.
type Call<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

/// IAM's wildcard match: `*` any run of characters, `?` exactly one.
fn matches(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), value.as_bytes())
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// The policy with its placeholders filled in for the fixture rack.
fn policy(cluster: &str) -> Value {
    let text = include_str!("../deploy/iam-policy.json")
        .replace("PARTITION", "aws")
        .replace("REGION", REGION)
        .replace("ACCOUNT_ID", ACCOUNT)
        .replace("CLUSTER", cluster)
        .replace(
            "STACK_ROLE",
            "convox-rack-reconciler-CloudFormationRole-1ABC",
        )
        .replace("SETTINGS_BUCKET", "convox-settings-1abc")
        .replace("SETTINGS_KEY", "1234abcd-12ab-34cd-56ef-1234567890ab")
        .replace("RACK", "convox");
    serde_json::from_str(&text).expect("policy is JSON")
}

/// Whether an Allow statement admits `action` on `resource` with the request `context`.
fn allowed(policy: &Value, action: &str, resource: &str, context: &[(&str, &str)]) -> bool {
    let context: BTreeMap<&str, &str> = context.iter().copied().collect();
    policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .any(|st| {
            let action_ok = strings(&st["Action"]).iter().any(|a| matches(a, action));
            let resource_ok = strings(&st["Resource"])
                .iter()
                .any(|r| matches(r, resource));
            let conditions_ok = st["Condition"].as_object().is_none_or(|ops| {
                ops.iter().all(|(op, keys)| {
                    keys.as_object()
                        .expect("condition keys")
                        .iter()
                        .all(|(key, want)| {
                            let Some(have) = context.get(key.as_str()) else {
                                return false;
                            };
                            strings(want).iter().any(|w| match op.as_str() {
                                "StringEquals" | "ArnEquals" => w == have,
                                "StringLike" | "ArnLike" => matches(w, have),
                                other => panic!("condition operator {other} not modelled"),
                            })
                        })
                })
            });
            st["Effect"] == "Allow" && action_ok && resource_ok && conditions_ok
        })
}

#[tokio::test(start_paused = true)]
async fn the_policy_admits_every_call_on_a_real_shaped_rack_and_nothing_beyond() {
    let sim = SimRack::new(SimSettings::default());
    let resources = sim.resources();
    let cluster = resources["Cluster"].clone();
    let web = resources["ServiceWebApi"].clone();
    let monitor = resources["ServiceMonitorApi"].clone();
    let web_td = resources["ApiWebTasks"].clone();
    let role = sim.task_definition_body(&web_td).expect("body")["taskRoleArn"]
        .as_str()
        .expect("role")
        .to_string();
    assert!(role.contains(":role/convox/convox-ApiRole-"), "{role}");
    let stack_arn = format!("arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/convox/4f1c2a30-0000-11f0-0000-0a1b2c3d4e5f");
    let cluster_arn = format!("arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}");
    let task =
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/0123456789abcdef0123456789abcdef");
    let new_td = format!("{}:2", web_td.rsplit_once(':').expect("revision").0);
    let short_web = web.replace(&format!("service/{cluster}/"), "service/");
    assert_ne!(short_web, web);
    let stack_role =
        format!("arn:aws:iam::{ACCOUNT}:role/convox-rack-reconciler-CloudFormationRole-1ABC");
    let p = policy(&cluster);
    let lease_table =
        format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/convox-rack-reconciler-lease");
    let params_object = "arn:aws:s3:::convox-settings-1abc/rack-reconciler/params.yaml";
    let status_object = "arn:aws:s3:::convox-settings-1abc/rack-reconciler/params.status.json";
    let settings_key =
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab");

    let calls: Vec<Call> = vec![
        ("cloudformation:DescribeStacks", &stack_arn, vec![]),
        ("cloudformation:DescribeStackResource", &stack_arn, vec![]),
        ("cloudformation:DescribeStackEvents", &stack_arn, vec![]),
        ("cloudformation:UpdateStack", &stack_arn, vec![]),
        ("cloudformation:GetTemplateSummary", "*", vec![]),
        ("ecs:DescribeServices", &web, vec![]),
        ("ecs:DescribeServices", &monitor, vec![]),
        ("ecs:UpdateService", &web, vec![]),
        ("ecs:UpdateService", &monitor, vec![]),
        // A rack created before ECS's long ARN format keeps short service ARNs.
        ("ecs:UpdateService", &short_web, vec![]),
        ("ecs:DescribeServices", &short_web, vec![]),
        ("ecs:ListTasks", "*", vec![("ecs:cluster", &cluster_arn)]),
        ("ecs:DescribeTasks", &task, vec![]),
        ("ecs:DescribeTaskDefinition", "*", vec![]),
        ("ecs:ListTaskDefinitions", "*", vec![]),
        ("ecs:RegisterTaskDefinition", "*", vec![]),
        (
            "ecs:TagResource",
            &new_td,
            vec![("ecs:CreateAction", "RegisterTaskDefinition")],
        ),
        (
            "iam:PassRole",
            &role,
            vec![("iam:PassedToService", "ecs-tasks.amazonaws.com")],
        ),
        ("dynamodb:GetItem", &lease_table, vec![]),
        ("dynamodb:PutItem", &lease_table, vec![]),
        ("s3:GetObject", params_object, vec![]),
        ("s3:PutObject", status_object, vec![]),
        (
            "kms:Decrypt",
            &settings_key,
            vec![("kms:ViaService", "s3.us-east-1.amazonaws.com")],
        ),
        (
            "kms:GenerateDataKey",
            &settings_key,
            vec![("kms:ViaService", "s3.us-east-1.amazonaws.com")],
        ),
    ];
    for (action, resource, context) in &calls {
        assert!(
            allowed(&p, action, resource, context),
            "{action} on {resource} is denied"
        );
    }

    // Exec readiness reads the rack's apps: every stack of the region (to find them), the
    // services and container instances of the cluster, the apps' task roles, the VPC.
    let app_stack = format!("arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/convox-myapp/1");
    let app_role = format!("arn:aws:iam::{ACCOUNT}:role/convox/convox-myapp-ServiceRole-1ABC");
    let instance = format!("arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/{cluster}/0123abcd");
    let app_service_arn = format!(
        "arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/convox-myapp-ServiceWeb-1ABC2DEF"
    );
    let reads: Vec<Call> = vec![
        ("cloudformation:DescribeStacks", "*", vec![]),
        ("cloudformation:ListStackResources", &app_stack, vec![]),
        ("ecs:DescribeServices", &app_service_arn, vec![]),
        ("ecs:DescribeContainerInstances", &instance, vec![]),
        ("iam:SimulatePrincipalPolicy", &app_role, vec![]),
        ("iam:ListRolePolicies", &app_role, vec![]),
        ("iam:GetRolePolicy", &app_role, vec![]),
        ("iam:ListAttachedRolePolicies", &app_role, vec![]),
        (
            "iam:GetPolicy",
            "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
            vec![],
        ),
        (
            "iam:GetPolicyVersion",
            "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
            vec![],
        ),
        ("ec2:DescribeRouteTables", "*", vec![]),
        ("ec2:DescribeVpcEndpoints", "*", vec![]),
    ];
    for (action, resource, context) in &reads {
        assert!(
            allowed(&p, action, resource, context),
            "{action} on {resource} is denied"
        );
    }

    let app_service = format!(
        "arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/convox-myapp-ServiceWeb-1ABC2DEF"
    );
    let short_app_service =
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service/convox-myapp-ServiceWeb-1ABC2DEF");
    let other_rack_role = format!("arn:aws:iam::{ACCOUNT}:role/convox/convoxstaging-ApiRole-1XYZ");
    let other_stack = format!("arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/convox-myapp/1");
    let other_rack_stack =
        format!("arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/otherrack-myapp/1");
    let other_instance =
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/other-cluster/0123abcd");
    let denied: Vec<Call> = vec![
        ("ecs:UpdateService", &app_service, vec![]),
        ("ecs:UpdateService", &short_app_service, vec![]),
        ("cloudformation:UpdateStack", &other_stack, vec![]),
        (
            "cloudformation:ListStackResources",
            &other_rack_stack,
            vec![],
        ),
        ("iam:SimulatePrincipalPolicy", &other_rack_role, vec![]),
        ("iam:GetRolePolicy", &other_rack_role, vec![]),
        ("ecs:DescribeContainerInstances", &other_instance, vec![]),
        (
            "iam:PassRole",
            &other_rack_role,
            vec![("iam:PassedToService", "ecs-tasks.amazonaws.com")],
        ),
        (
            "iam:PassRole",
            &role,
            vec![("iam:PassedToService", "lambda.amazonaws.com")],
        ),
        (
            "ecs:ListTasks",
            "*",
            vec![(
                "ecs:cluster",
                "arn:aws:ecs:us-east-1:123456789012:cluster/other",
            )],
        ),
        (
            "ecs:TagResource",
            &new_td,
            vec![("ecs:CreateAction", "RunTask")],
        ),
        ("ecs:DeregisterTaskDefinition", "*", vec![]),
        // The Settings bucket's other objects (apps' environments) stay out of reach, and
        // the bucket's key is usable only through S3.
        (
            "s3:GetObject",
            "arn:aws:s3:::convox-settings-1abc/releases/myapp/env",
            vec![],
        ),
        ("kms:Decrypt", &settings_key, vec![]),
        ("dynamodb:DeleteTable", &lease_table, vec![]),
        // The stack role goes to CloudFormation only, and the API role never does.
        (
            "iam:PassRole",
            &stack_role,
            vec![("iam:PassedToService", "ecs-tasks.amazonaws.com")],
        ),
        (
            "iam:PassRole",
            &role,
            vec![("iam:PassedToService", "cloudformation.amazonaws.com")],
        ),
    ];
    for (action, resource, context) in &denied {
        assert!(
            !allowed(&p, action, resource, context),
            "{action} on {resource} is allowed"
        );
    }

    // Without the path, the pattern would miss the rack's roles: what this test guards.
    assert!(!matches(
        &format!("arn:aws:iam::{ACCOUNT}:role/convox-*"),
        &role
    ));
}

/// `deploy/controller.yaml`'s task role policy with `!Sub` placeholders in the JSON policy's
/// spelling.
fn template_statements() -> Vec<Value> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../deploy/controller.yaml")).expect("template is YAML");
    let statements =
        &doc["Resources"]["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"];
    let json = serde_json::to_value(untag(statements.clone())).expect("json");
    json.as_array().expect("statements").clone()
}

fn untag(v: serde_yaml::Value) -> serde_yaml::Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Tagged(t) => match t.value {
            Y::String(s) => Y::String(
                s.replace("${AWS::Partition}", "PARTITION")
                    .replace("${AWS::Region}", "REGION")
                    .replace("${AWS::AccountId}", "ACCOUNT_ID")
                    .replace("${Rack}", "RACK")
                    .replace("${Cluster}", "CLUSTER")
                    .replace("${CloudFormationRole}", "STACK_ROLE")
                    .replace("${SettingsBucket}", "SETTINGS_BUCKET")
                    .replace("${SettingsKey}", "SETTINGS_KEY"),
            ),
            other => untag(other),
        },
        Y::Sequence(s) => Y::Sequence(s.into_iter().map(untag).collect()),
        Y::Mapping(m) => Y::Mapping(m.into_iter().map(|(k, v)| (k, untag(v))).collect()),
        other => other,
    }
}

#[test]
fn the_in_rack_template_grants_the_same_statements_as_the_policy() {
    let shipped: Value =
        serde_json::from_str(include_str!("../deploy/iam-policy.json")).expect("json");
    let normalize = |st: &Value| {
        let mut actions = strings(&st["Action"]);
        actions.sort();
        let mut resources = strings(&st["Resource"]);
        resources.sort();
        (actions, resources, st["Condition"].to_string())
    };
    let mut a: Vec<_> = shipped["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .map(normalize)
        .collect();
    let mut b: Vec<_> = template_statements().iter().map(normalize).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
