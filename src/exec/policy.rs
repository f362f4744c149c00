//! Whether IAM policy documents allow some actions on a resource: the fallback when
//! `iam:SimulatePrincipalPolicy` is not allowed. It reads `Effect`, `Action`/`NotAction` and
//! `Resource`/`NotResource` with IAM's wildcards; a statement with a `Condition` cannot be
//! decided without the request, so an action allowed only under a condition is not known
//! (`None`). Explicit denies win. The caller evaluates a role's policies and its permissions
//! boundary separately (both must allow); SCPs and session policies are not seen here.

use serde_json::Value;

/// Whether `documents` allow every one of `actions` on `resource` (`*`: actions that take no
/// resource).
pub fn allows(documents: &[Value], actions: &[String], resource: &str) -> Option<bool> {
    let statements: Vec<&Value> = documents.iter().flat_map(statements).collect();
    let mut known = true;
    for action in actions {
        let matching: Vec<&&Value> = statements
            .iter()
            .filter(|s| covers_action(s, action) && covers_resource(s, resource))
            .collect();
        let effect = |s: &Value| s.get("Effect").and_then(Value::as_str) == Some("Allow");
        let conditional = |s: &Value| s.get("Condition").is_some();
        if matching.iter().any(|s| !effect(s) && !conditional(s)) {
            return Some(false);
        }
        if matching.iter().any(|s| effect(s) && !conditional(s)) {
            if matching.iter().any(|s| !effect(s)) {
                known = false;
            }
            continue;
        }
        if matching.iter().any(|s| effect(s)) {
            known = false;
            continue;
        }
        return Some(false);
    }
    known.then_some(true)
}

fn statements(doc: &Value) -> Vec<&Value> {
    match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(s @ Value::Object(_)) => vec![s],
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn covers_action(s: &Value, action: &str) -> bool {
    let matches = |patterns: Vec<&str>| patterns.iter().any(|p| glob(p, action));
    if s.get("NotAction").is_some() {
        !matches(strings(s.get("NotAction")))
    } else {
        matches(strings(s.get("Action")))
    }
}

/// Whether the statement's `Resource` (or `NotResource`) covers `resource`. Actions that take
/// no resource (the ssmmessages ones) are asked about `*`, which only `*` covers.
fn covers_resource(s: &Value, resource: &str) -> bool {
    let matches = |patterns: Vec<&str>| patterns.iter().any(|p| glob(p, resource));
    if s.get("NotResource").is_some() {
        !matches(strings(s.get("NotResource")))
    } else {
        matches(strings(s.get("Resource")))
    }
}

/// IAM's wildcard match, case-insensitive: `*` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actions() -> Vec<String> {
        crate::exec::SSMMESSAGES_ACTIONS
            .iter()
            .map(|a| a.to_string())
            .collect()
    }
    const ACTIONS: [&str; 4] = crate::exec::SSMMESSAGES_ACTIONS;

    fn doc(statements: Value) -> Vec<Value> {
        vec![json!({"Version": "2012-10-17", "Statement": statements})]
    }

    #[test]
    fn policies_decide_the_four_actions() {
        let cases = [
            (
                "wildcard service",
                json!([{"Effect": "Allow", "Action": "ssmmessages:*", "Resource": "*"}]),
                Some(true),
            ),
            (
                "each action",
                json!([{"Effect": "Allow", "Action": ACTIONS, "Resource": ["*"]}]),
                Some(true),
            ),
            (
                "admin",
                json!({"Effect": "Allow", "Action": "*", "Resource": "*"}),
                Some(true),
            ),
            (
                "pattern",
                json!([{"Effect": "Allow", "Action": ["ssmmessages:Create*", "ssmmessages:Open*"], "Resource": "*"}]),
                Some(true),
            ),
            (
                "one missing",
                json!([{"Effect": "Allow", "Action": ["ssmmessages:Create*", "ssmmessages:OpenControlChannel"], "Resource": "*"}]),
                Some(false),
            ),
            (
                "other service",
                json!([{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]),
                Some(false),
            ),
            (
                "scoped resource",
                json!([{"Effect": "Allow", "Action": "ssmmessages:*", "Resource": "arn:aws:s3:::b/*"}]),
                Some(false),
            ),
            (
                "explicit deny",
                json!([{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Deny", "Action": "ssmmessages:OpenDataChannel", "Resource": "*"}]),
                Some(false),
            ),
            (
                "conditional allow",
                json!([{"Effect": "Allow", "Action": "ssmmessages:*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]),
                None,
            ),
            (
                "NotAction",
                json!([{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]),
                Some(true),
            ),
            (
                "case",
                json!([{"Effect": "Allow", "Action": "SSMMessages:createcontrolchannel", "Resource": "*"}, {"Effect": "Allow", "Action": ["ssmmessages:Create?ataChannel", "ssmmessages:OpenDataChannel"], "Resource": "*"}, {"Effect": "Allow", "Action": "ssmmessages:OpenControl*", "Resource": "*"}]),
                Some(true),
            ),
            ("no statements", json!([]), Some(false)),
        ];
        for (name, statements, want) in cases {
            assert_eq!(allows(&doc(statements), &actions(), "*"), want, "{name}");
        }
    }

    #[test]
    fn statements_add_up_across_documents() {
        let docs = vec![
            json!({"Statement": [{"Effect": "Allow", "Action": "ssmmessages:Create*", "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Action": "ssmmessages:Open*", "Resource": "*"}]}),
        ];
        assert_eq!(allows(&docs, &actions(), "*"), Some(true));
        assert_eq!(allows(&docs[..1], &actions(), "*"), Some(false));
    }

    #[test]
    fn resources_match_with_wildcards() {
        let key = "arn:aws:kms:us-east-1:1:key/abc";
        let decrypt = vec!["kms:Decrypt".to_string()];
        let on = |resource: Value| {
            doc(json!([{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": resource}]))
        };
        assert_eq!(allows(&on(json!(key)), &decrypt, key), Some(true));
        assert_eq!(
            allows(&on(json!("arn:aws:kms:us-east-1:1:key/*")), &decrypt, key),
            Some(true)
        );
        assert_eq!(allows(&on(json!("*")), &decrypt, key), Some(true));
        assert_eq!(
            allows(
                &on(json!("arn:aws:kms:us-east-1:1:key/other")),
                &decrypt,
                key
            ),
            Some(false)
        );
        let not = doc(json!([{"Effect": "Allow", "Action": "kms:*", "NotResource": key}]));
        assert_eq!(allows(&not, &decrypt, key), Some(false));
    }

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("*", "x:y", true),
            ("ssm*", "ssmmessages:Open", true),
            ("ssm:*", "ssmmessages:Open", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*Channel", "ssmmessages:OpenDataChannel", true),
            ("", "a", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }
}
