//! What the task role must allow for ECS Exec on this cluster, from the cluster's
//! `executeCommandConfiguration`: the four `ssmmessages` actions always; `kms:Decrypt` on the
//! key when sessions are encrypted with one; the log writes when sessions are logged to
//! CloudWatch Logs or S3 (`logging: OVERRIDE`). Pure.

use serde::{Deserialize, Serialize};

/// The four actions the SSM agent in a task needs from its task role.
pub const SSMMESSAGES_ACTIONS: [&str; 4] = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
];

/// The cluster's `executeCommandConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecConfig {
    /// The cluster's ARN (its region and account name the log group and key).
    pub cluster_arn: String,
    pub kms_key: Option<String>,
    /// `OVERRIDE` logging's destinations; `DEFAULT` and `NONE` ask nothing of the task role.
    pub cloudwatch_log_group: Option<String>,
    /// Sessions are only logged to an encrypted log group.
    pub cloudwatch_encrypted: bool,
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub s3_encrypted: bool,
}

/// A group of permissions the verdict names as one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    Ssmmessages,
    KmsDecrypt,
    ExecLogging,
}

/// Actions on one resource (`*` for actions that take none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub actions: Vec<String>,
    pub resource: String,
}

impl Access {
    fn new(actions: &[&str], resource: impl Into<String>) -> Access {
        Access {
            actions: actions.iter().map(|a| a.to_string()).collect(),
            resource: resource.into(),
        }
    }
}

/// What a role's policies say to one need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "grant", content = "detail")]
pub enum Grant {
    Allowed,
    /// Not allowed by the role's own policies (or there is no role): what is missing.
    Denied(String),
    /// Allowed by the role's policies, not by its permissions boundary (named).
    DeniedByBoundary(String),
}

impl Grant {
    /// The stronger refusal of two answers for one need.
    pub fn and(self, other: Grant) -> Grant {
        match (self, other) {
            (Grant::Allowed, g) | (g, Grant::Allowed) => g,
            (d @ Grant::Denied(_), _) | (_, d @ Grant::Denied(_)) => d,
            (b, _) => b,
        }
    }
}

/// Each need with the accesses it takes, or why they cannot be named.
pub fn needs(config: &ExecConfig) -> Vec<(Need, Result<Vec<Access>, String>)> {
    let mut out = vec![(
        Need::Ssmmessages,
        Ok(vec![Access::new(&SSMMESSAGES_ACTIONS, "*")]),
    )];
    let (partition, region, account) = arn_parts(&config.cluster_arn);
    if let Some(key) = &config.kms_key {
        let arn = if key.starts_with("arn:") {
            Ok(key.clone())
        } else if key.starts_with("alias/") {
            Err(format!(
                "the cluster names its exec KMS key by {key}: kms:Decrypt is granted on the key's ARN, which an alias does not give"
            ))
        } else {
            Ok(format!("arn:{partition}:kms:{region}:{account}:key/{key}"))
        };
        out.push((
            Need::KmsDecrypt,
            arn.map(|a| vec![Access::new(&["kms:Decrypt"], a)]),
        ));
    }
    let mut logging = Vec::new();
    if let (Some(group), true) = (&config.cloudwatch_log_group, config.cloudwatch_encrypted) {
        out.push((
            Need::ExecLogging,
            Err(format!(
                "the cluster logs exec sessions only to an encrypted log group, and whether {group} is encrypted is not read here"
            )),
        ));
        return out;
    }
    if let Some(group) = &config.cloudwatch_log_group {
        logging.push(Access::new(&["logs:DescribeLogGroups"], "*"));
        logging.push(Access::new(
            &[
                "logs:CreateLogStream",
                "logs:DescribeLogStreams",
                "logs:PutLogEvents",
            ],
            format!("arn:{partition}:logs:{region}:{account}:log-group:{group}:*"),
        ));
    }
    if let Some(bucket) = &config.s3_bucket {
        let prefix = config.s3_prefix.as_deref().unwrap_or("");
        logging.push(Access::new(
            &["s3:PutObject"],
            format!("arn:{partition}:s3:::{bucket}/{prefix}*"),
        ));
        if config.s3_encrypted {
            logging.push(Access::new(
                &["s3:GetEncryptionConfiguration"],
                format!("arn:{partition}:s3:::{bucket}"),
            ));
        }
    }
    if !logging.is_empty() {
        out.push((Need::ExecLogging, Ok(logging)));
    }
    out
}

/// The services a task must reach for ECS Exec on this cluster: SSM's two, and KMS, CloudWatch
/// Logs or S3 when sessions are encrypted or logged there.
pub fn services(config: &ExecConfig) -> Vec<&'static str> {
    let mut out = super::network::SSM_SERVICES.to_vec();
    if config.kms_key.is_some() {
        out.push("kms");
    }
    if config.cloudwatch_log_group.is_some() {
        out.push("logs");
    }
    if config.s3_bucket.is_some() {
        out.push("s3");
    }
    out
}

/// The partition, region and account of an ARN (`arn:PARTITION:ecs:REGION:ACCOUNT:...`).
fn arn_parts(arn: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = arn.split(':').collect();
    let at = |i: usize| parts.get(i).copied().unwrap_or_default();
    let partition = Some(at(1)).filter(|p| !p.is_empty()).unwrap_or("aws");
    (partition, at(3), at(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "arn:aws:ecs:eu-west-1:123456789012:cluster/convox";

    #[test]
    fn needs_follow_the_cluster_configuration() {
        let plain = ExecConfig {
            cluster_arn: CLUSTER.into(),
            ..ExecConfig::default()
        };
        let got = needs(&plain);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Need::Ssmmessages);

        let full = ExecConfig {
            kms_key: Some("1234abcd-12ab-34cd-56ef-1234567890ab".into()),
            cloudwatch_log_group: Some("/convox/exec".into()),
            s3_bucket: Some("audit".into()),
            s3_prefix: Some("exec/".into()),
            s3_encrypted: true,
            ..plain
        };
        let got = needs(&full);
        let kinds: Vec<Need> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            kinds,
            [Need::Ssmmessages, Need::KmsDecrypt, Need::ExecLogging]
        );
        let kms = got[1].1.as_ref().expect("kms");
        assert_eq!(
            kms[0].resource,
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        let resources: Vec<&str> = got[2]
            .1
            .as_ref()
            .expect("logging")
            .iter()
            .map(|a| a.resource.as_str())
            .collect();
        assert_eq!(
            resources,
            [
                "*",
                "arn:aws:logs:eu-west-1:123456789012:log-group:/convox/exec:*",
                "arn:aws:s3:::audit/exec/*",
                "arn:aws:s3:::audit"
            ]
        );
    }

    #[test]
    fn arns_are_in_the_clusters_partition_and_an_encrypted_log_group_is_not_assumed() {
        let china = ExecConfig {
            cluster_arn: "arn:aws-cn:ecs:cn-north-1:123456789012:cluster/convox".into(),
            s3_bucket: Some("audit".into()),
            ..ExecConfig::default()
        };
        let got = needs(&china);
        let s3 = got[1].1.as_ref().expect("s3");
        assert_eq!(s3[0].resource, "arn:aws-cn:s3:::audit/*");
        let encrypted = ExecConfig {
            cluster_arn: CLUSTER.into(),
            cloudwatch_log_group: Some("/convox/exec".into()),
            cloudwatch_encrypted: true,
            ..ExecConfig::default()
        };
        assert!(needs(&encrypted)[1].1.is_err());
    }

    #[test]
    fn an_alias_cannot_be_checked() {
        let c = ExecConfig {
            cluster_arn: CLUSTER.into(),
            kms_key: Some("alias/exec".into()),
            ..ExecConfig::default()
        };
        assert!(needs(&c)[1].1.is_err());
    }

    #[test]
    fn the_stronger_refusal_wins() {
        let d = || Grant::Denied("x".into());
        let b = || Grant::DeniedByBoundary("b".into());
        assert_eq!(Grant::Allowed.and(Grant::Allowed), Grant::Allowed);
        assert_eq!(Grant::Allowed.and(b()), b());
        assert_eq!(b().and(d()), d());
        assert_eq!(d().and(b()), d());
    }
}
