//! Where a rack version's CloudFormation template comes from: the Convox release bucket by
//! default (`release/{version}/rack.json`), any URL pattern, or a local directory of
//! templates for air-gapped use and tests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

use crate::model::RackVersion;

/// The default template URL pattern: the Convox release bucket.
pub const DEFAULT_URL: &str = "https://convox.s3.amazonaws.com/release/{version}/rack.json";

/// The largest `TemplateBody` CloudFormation accepts; larger templates must be given by URL.
pub const TEMPLATE_BODY_LIMIT: usize = 51_200;

/// A rack version's template, by URL or by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub version: RackVersion,
    pub location: TemplateLocation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateLocation {
    /// `TemplateURL` for CloudFormation.
    Url(String),
    /// `TemplateBody` (CloudFormation accepts up to 51,200 bytes), read from `path`.
    Body { path: String, body: String },
}

impl std::fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            TemplateLocation::Url(u) => write!(f, "the template of {} at {u}", self.version),
            TemplateLocation::Body { path, .. } => {
                write!(f, "the template of {} in {path}", self.version)
            }
        }
    }
}

/// The `templates` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSource {
    /// URL pattern; `{version}` is replaced by the rack version.
    pub url: String,
    /// A directory holding `<version>.json` (or `<version>/rack.json`) templates; when set,
    /// it is used instead of the URL.
    pub dir: Option<PathBuf>,
}

impl Default for TemplateSource {
    fn default() -> Self {
        TemplateSource {
            url: DEFAULT_URL.into(),
            dir: None,
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("no template for version {version} in {dir}: expected {version}.json or {version}/rack.json there (templates.dir in the config)")]
    NotInDir { version: RackVersion, dir: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is not a CloudFormation template with a Parameters section: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} is {size} bytes; CloudFormation takes at most {TEMPLATE_BODY_LIMIT} bytes as a template body (a rack template is about 220 KB): upload it to S3 (the rack's Settings bucket, say) and point templates.url at it instead of templates.dir")]
    TooLarge { path: String, size: usize },
}

impl TemplateSource {
    /// Where the template of `version` is.
    pub fn locate(&self, version: RackVersion) -> Result<TemplateRef, TemplateError> {
        let Some(dir) = &self.dir else {
            return Ok(TemplateRef {
                version,
                location: TemplateLocation::Url(
                    self.url.replace("{version}", &version.to_string()),
                ),
            });
        };
        let candidates = [
            dir.join(format!("{version}.json")),
            dir.join(version.to_string()).join("rack.json"),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(TemplateError::NotInDir {
                version,
                dir: dir.display().to_string(),
            });
        };
        let shown = path.display().to_string();
        let body = std::fs::read_to_string(path).map_err(|e| TemplateError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if body.len() > TEMPLATE_BODY_LIMIT {
            return Err(TemplateError::TooLarge {
                path: shown,
                size: body.len(),
            });
        }
        declared_parameters(&body).map_err(|reason| TemplateError::Invalid {
            path: shown.clone(),
            reason,
        })?;
        Ok(TemplateRef {
            version,
            location: TemplateLocation::Body { path: shown, body },
        })
    }
}

/// The parameter names a template (JSON or YAML) declares.
pub fn declared_parameters(body: &str) -> Result<BTreeSet<String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(body).map_err(|e| e.to_string())?;
    let params = doc
        .get("Parameters")
        .and_then(|p| p.as_mapping())
        .ok_or_else(|| "no Parameters mapping".to_string())?;
    Ok(params
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> RackVersion {
        RackVersion::parse(s).expect("version")
    }

    #[test]
    fn url_pattern_takes_the_version() {
        let t = TemplateSource::default()
            .locate(v("20240205000000"))
            .expect("url");
        assert_eq!(
            t.location,
            TemplateLocation::Url(
                "https://convox.s3.amazonaws.com/release/20240205000000/rack.json".into()
            )
        );
    }

    #[test]
    fn a_directory_of_templates_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("20240205000000.json"),
            r#"{"Parameters": {"Version": {"Type": "String"}, "Password": {"Type": "String"}}}"#,
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("20260418101514")).expect("mkdir");
        std::fs::write(
            dir.path().join("20260418101514/rack.json"),
            "Resources: {}\n",
        )
        .expect("write");
        let src = TemplateSource {
            dir: Some(dir.path().to_path_buf()),
            ..TemplateSource::default()
        };
        let t = src.locate(v("20240205000000")).expect("found");
        let TemplateLocation::Body { body, .. } = &t.location else {
            panic!("expected a body");
        };
        assert_eq!(
            declared_parameters(body).expect("params"),
            BTreeSet::from(["Password".to_string(), "Version".to_string()])
        );
        let e = src.locate(v("20260418101514")).expect_err("no Parameters");
        assert!(e.to_string().contains("Parameters"), "{e}");
        let e = src.locate(v("20200101000000")).expect_err("missing");
        assert!(e.to_string().contains("20200101000000.json"), "{e}");
    }

    #[test]
    fn a_template_too_large_for_a_body_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let padding = " ".repeat(TEMPLATE_BODY_LIMIT);
        std::fs::write(
            dir.path().join("20240205000000.json"),
            format!(r#"{{"Parameters": {{"Version": {{"Type": "String"}}}}{padding}}}"#),
        )
        .expect("write");
        let src = TemplateSource {
            dir: Some(dir.path().to_path_buf()),
            ..TemplateSource::default()
        };
        let e = src.locate(v("20240205000000")).expect_err("too large");
        assert!(matches!(e, TemplateError::TooLarge { size, .. } if size > TEMPLATE_BODY_LIMIT));
        assert!(e.to_string().contains("templates.url"), "{e}");
    }
}
