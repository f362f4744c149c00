//! Task role checks against IAM: `SimulatePrincipalPolicy` (which evaluates the role's
//! permissions boundary and says so), else, where that is denied, the role's inline and
//! attached policies and its boundary, read and evaluated by [`crate::exec::policy`].

use std::sync::atomic::Ordering;

use tracing::warn;

use super::AwsExec;
use crate::exec::permissions::{Access, Grant};
use crate::exec::{policy, Fact};
use crate::rack::query::{parse, texts, IAM};
use crate::rack::{ApiErrorKind, RackError};

/// The note shown when the roles' policies were read instead of simulated.
pub const POLICIES_READ: &str = "iam:SimulatePrincipalPolicy is denied, so the task roles' own policies and permissions boundaries were read and evaluated: service control policies and session policies are not accounted for";

impl AwsExec {
    /// What the role's policies say to `access`.
    pub(super) async fn grant(
        &self,
        role: &str,
        access: &Access,
    ) -> Result<Fact<Grant>, RackError> {
        if !self.no_simulate.load(Ordering::Relaxed) {
            match self.simulate(role, access).await {
                Err(RackError::Api {
                    kind: ApiErrorKind::AccessDenied,
                    ..
                }) => {
                    warn!(role, "iam:SimulatePrincipalPolicy is denied; reading the task roles' policies instead");
                    self.no_simulate.store(true, Ordering::Relaxed);
                }
                other => return gone_or(role, other),
            }
        }
        gone_or(role, self.evaluate_policies(role, access).await)
    }

    /// `SimulatePrincipalPolicy` on the role for the access's actions and resource.
    async fn simulate(&self, role: &str, access: &Access) -> Result<Fact<Grant>, RackError> {
        let mut params = vec![("PolicySourceArn".to_string(), role.to_string())];
        for (i, a) in access.actions.iter().enumerate() {
            params.push((format!("ActionNames.member.{}", i + 1), a.clone()));
        }
        if access.resource != "*" {
            params.push(("ResourceArns.member.1".into(), access.resource.clone()));
        }
        let xml = self
            .query
            .call(&IAM, "SimulatePrincipalPolicy", role, &params)
            .await?;
        let doc = parse(&xml, "iam", "SimulatePrincipalPolicy")?;
        let results = doc
            .descendants()
            .filter(|n| n.has_tag_name("EvaluationResults"))
            .flat_map(|n| n.children().filter(|c| c.has_tag_name("member")));
        let mut denied = Vec::new();
        let mut by_boundary = false;
        let mut by_scp = false;
        let mut seen = 0;
        let mut missing_context = Vec::new();
        for r in results {
            seen += 1;
            let text = |name: &str| texts(r, name).into_iter().next();
            if let Some(m) = r
                .children()
                .find(|c| c.has_tag_name("MissingContextValues"))
            {
                missing_context.extend(texts(m, "member"));
            }
            if text("EvalDecision").as_deref() == Some("allowed") {
                continue;
            }
            denied.push(text("EvalActionName").unwrap_or_default());
            by_boundary |= text("AllowedByPermissionsBoundary").as_deref() == Some("false");
            by_scp |= text("AllowedByOrganizations").as_deref() == Some("false");
        }
        if !missing_context.is_empty() {
            return Ok(Fact::Unknown(format!(
                "iam:SimulatePrincipalPolicy on {role} needs context values it was not given ({}): a condition decides it",
                missing_context.join(", ")
            )));
        }
        Ok(Fact::Known(match () {
            _ if seen < access.actions.len() => {
                return Ok(Fact::Unknown(format!(
                    "iam:SimulatePrincipalPolicy on {role} answered {seen} of {} actions",
                    access.actions.len()
                )))
            }
            _ if denied.is_empty() => Grant::Allowed,
            _ if by_boundary => Grant::DeniedByBoundary("attached to the role".into()),
            _ if by_scp => Grant::Denied(format!(
                "a service control policy denies {}",
                denied.join(", ")
            )),
            _ => Grant::Denied(format!(
                "{} not allowed on {}",
                denied.join(", "),
                access.resource
            )),
        }))
    }

    /// The role's policies and boundary, evaluated.
    async fn evaluate_policies(
        &self,
        role: &str,
        access: &Access,
    ) -> Result<Fact<Grant>, RackError> {
        let (own, boundary) = match self.role_documents(role).await {
            Ok(docs) => docs,
            Err(RackError::Api {
                kind: ApiErrorKind::AccessDenied,
                operation,
                message,
                ..
            }) => {
                return Ok(Fact::Unknown(format!(
                    "iam:{operation} on {role} is denied ({message})"
                )))
            }
            Err(e) => return Err(e),
        };
        let conditional = || {
            Fact::Unknown(format!(
                "a statement of {role}'s policies or boundary applies only under a Condition"
            ))
        };
        let boundary_allows = match &boundary {
            Some((_, docs)) => policy::allows(docs, &access.actions, &access.resource),
            None => Some(true),
        };
        Ok(
            match (
                policy::allows(&own, &access.actions, &access.resource),
                boundary_allows,
            ) {
                (Some(false), _) => Fact::Known(Grant::Denied(format!(
                    "the role's policies do not allow {} on {}",
                    access.actions.join(", "),
                    access.resource
                ))),
                (_, Some(false)) => Fact::Known(Grant::DeniedByBoundary(
                    boundary.map(|(arn, _)| arn).unwrap_or_default(),
                )),
                (None, _) | (_, None) => conditional(),
                (Some(true), Some(true)) => Fact::Known(Grant::Allowed),
            },
        )
    }

    /// The role's inline and attached policy documents, and its boundary's (ARN, documents).
    async fn role_documents(
        &self,
        role: &str,
    ) -> Result<
        (
            Vec<serde_json::Value>,
            Option<(String, Vec<serde_json::Value>)>,
        ),
        RackError,
    > {
        let name = role.rsplit('/').next().unwrap_or(role);
        let by_role = [("RoleName".to_string(), name.to_string())];
        let mut docs = Vec::new();
        for p in self
            .iam_list("ListRolePolicies", role, &by_role, "member")
            .await?
        {
            let doc = self
                .iam_get(
                    "GetRolePolicy",
                    role,
                    &[("RoleName", name), ("PolicyName", &p)],
                    "PolicyDocument",
                )
                .await?;
            docs.extend(doc.as_deref().and_then(policy_json));
        }
        for arn in self
            .iam_list("ListAttachedRolePolicies", role, &by_role, "PolicyArn")
            .await?
        {
            docs.extend(self.managed_policy(&arn).await?);
        }
        let boundary = self
            .iam_get(
                "GetRole",
                role,
                &[("RoleName", name)],
                "PermissionsBoundaryArn",
            )
            .await?;
        let boundary = match boundary {
            Some(arn) => {
                let docs = self.managed_policy(&arn).await?.into_iter().collect();
                Some((arn, docs))
            }
            None => None,
        };
        Ok((docs, boundary))
    }

    /// A managed policy's default version document.
    async fn managed_policy(&self, arn: &str) -> Result<Option<serde_json::Value>, RackError> {
        let Some(version) = self
            .iam_get("GetPolicy", arn, &[("PolicyArn", arn)], "DefaultVersionId")
            .await?
        else {
            return Ok(None);
        };
        let doc = self
            .iam_get(
                "GetPolicyVersion",
                arn,
                &[("PolicyArn", arn), ("VersionId", &version)],
                "Document",
            )
            .await?;
        Ok(doc.as_deref().and_then(policy_json))
    }

    /// Every page of an IAM list call: the texts of `item` elements.
    async fn iam_list(
        &self,
        action: &'static str,
        resource: &str,
        params: &[(String, String)],
        item: &str,
    ) -> Result<Vec<String>, RackError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut p = params.to_vec();
            if let Some(m) = &marker {
                p.push(("Marker".into(), m.clone()));
            }
            let xml = self.query.call(&IAM, action, resource, &p).await?;
            let doc = parse(&xml, "iam", action)?;
            out.extend(texts(doc.root_element(), item));
            let truncated = texts(doc.root_element(), "IsTruncated")
                .first()
                .map(String::as_str)
                == Some("true");
            marker = texts(doc.root_element(), "Marker").into_iter().next();
            if !truncated || marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn iam_get(
        &self,
        action: &'static str,
        resource: &str,
        params: &[(&str, &str)],
        item: &str,
    ) -> Result<Option<String>, RackError> {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let xml = self.query.call(&IAM, action, resource, &p).await?;
        let doc = parse(&xml, "iam", action)?;
        Ok(texts(doc.root_element(), item).into_iter().next())
    }
}

/// A role that no longer exists grants nothing (its tasks' credentials cannot be renewed).
fn gone_or(role: &str, r: Result<Fact<Grant>, RackError>) -> Result<Fact<Grant>, RackError> {
    match r {
        Err(RackError::Api {
            kind: ApiErrorKind::NotFound,
            ..
        }) => Ok(Fact::Known(Grant::Denied(format!(
            "the task role {role} no longer exists"
        )))),
        other => other,
    }
}

/// A policy document as IAM returns it: URL-encoded JSON.
fn policy_json(encoded: &str) -> Option<serde_json::Value> {
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    serde_json::from_str(&decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_documents_are_url_decoded() {
        let doc = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22ssmmessages%3A%2A%22%2C%22Resource%22%3A%22%2A%22%7D%5D%7D";
        let v = policy_json(doc).expect("decoded");
        assert_eq!(v["Statement"][0]["Action"], "ssmmessages:*");
        let plain = r#"{"Statement": []}"#;
        assert!(policy_json(plain).is_some());
    }
}
