//! Desired state: the params file operators edit.
//!
//! ```yaml
//! ECSExec: "Yes"
//! ```
//!
//! Parsing is strict: values are the rack's own spellings, unknown and duplicate keys are
//! errors, and every error names the file, the line, the key, the bad value and what is
//! allowed. A key that is absent is not managed: the controller leaves it as the rack has it.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::model::{managed_param, ManagedParam, RackVersion, MANAGED_PARAMS, VERSION_PARAM};

/// The desired state read from a valid params file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredParams {
    /// Managed parameter name → desired value (always one of its allowed values).
    pub values: BTreeMap<&'static str, String>,
    /// The rack version the rack should run, when the file says.
    pub version: Option<RackVersion>,
}

impl DesiredParams {
    pub fn get(&self, param: &ManagedParam) -> Option<&str> {
        self.values.get(param.name).map(String::as_str)
    }
}

/// Why a params file was rejected. The controller keeps acting on the last valid state.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("{path}: params file not found: create it (e.g. `ECSExec: \"No\"`) or fix `params_file` in the config")]
    Missing { path: String },
    #[error("{path}: cannot read params file: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: params file is empty: expected a mapping such as `ECSExec: \"No\"`")]
    Empty { path: String },
    #[error("{path}:{line}:{column}: not valid YAML ({detail}); the file may be half-written, fix it and save again")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("{path}:{line}: expected a mapping of parameter names to values (e.g. `ECSExec: \"No\"`), found {found}")]
    NotMapping {
        path: String,
        line: usize,
        found: String,
    },
    #[error("{path}:{line}: duplicate key {key}: each parameter may appear once")]
    DuplicateKey {
        path: String,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: unknown key {key}: allowed keys are {allowed}")]
    UnknownKey {
        path: String,
        line: usize,
        key: String,
        allowed: String,
    },
    #[error("{path}:{line}: {key}: invalid value {value}: allowed values are {allowed} (exact spelling, quoted)")]
    InvalidValue {
        path: String,
        line: usize,
        key: String,
        value: String,
        allowed: String,
    },
}

impl ParamsError {
    /// A short, fixed identifier of the error kind (used as a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            ParamsError::Missing { .. } => "missing",
            ParamsError::Unreadable { .. } => "unreadable",
            ParamsError::Empty { .. } => "empty",
            ParamsError::Syntax { .. } => "syntax",
            ParamsError::NotMapping { .. } => "not_mapping",
            ParamsError::DuplicateKey { .. } => "duplicate_key",
            ParamsError::UnknownKey { .. } => "unknown_key",
            ParamsError::InvalidValue { .. } => "invalid_value",
        }
    }

    /// Every kind [`ParamsError::kind`] can return.
    pub const KINDS: &'static [&'static str] = &[
        "missing",
        "unreadable",
        "empty",
        "syntax",
        "not_mapping",
        "duplicate_key",
        "unknown_key",
        "invalid_value",
    ];
}

/// Reads and validates a params file.
pub fn load(path: &Path) -> Result<DesiredParams, ParamsError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&shown, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ParamsError::Missing { path: shown })
        }
        Err(e) => Err(ParamsError::Unreadable {
            path: shown,
            reason: e.to_string(),
        }),
    }
}

/// Validates the text of a params file; `path` is only used in messages.
pub fn parse(path: &str, text: &str) -> Result<DesiredParams, ParamsError> {
    let path = path.to_string();
    let has_content = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && l != "---" && l != "..."
    });
    if !has_content {
        return Err(ParamsError::Empty { path });
    }

    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(structure_error(path, text, &e)),
    };
    let mapping = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Err(ParamsError::Empty { path }),
        other => {
            return Err(ParamsError::NotMapping {
                path,
                line: first_content_line(text),
                found: describe(&other),
            })
        }
    };

    let mut values = BTreeMap::new();
    let mut version = None;
    for (key, value) in &mapping {
        let key_text = match key {
            serde_yaml::Value::String(s) => s.clone(),
            other => scalar_text(other),
        };
        let line = key_line(text, &key_text);
        if key_text == VERSION_PARAM {
            let parsed = match value {
                serde_yaml::Value::String(s) => RackVersion::parse(s),
                serde_yaml::Value::Number(n) => RackVersion::parse(&n.to_string()),
                _ => None,
            };
            match parsed {
                Some(v) => version = Some(v),
                None => {
                    return Err(ParamsError::InvalidValue {
                        path,
                        line,
                        key: key_text,
                        value: scalar_text(value),
                        allowed: "a Convox rack version: 14 digits, e.g. \"20260418101514\"".into(),
                    })
                }
            }
            continue;
        }
        let Some(param) = managed_param(&key_text) else {
            return Err(ParamsError::UnknownKey {
                path,
                line,
                key: key_text,
                allowed: MANAGED_PARAMS
                    .iter()
                    .map(|p| p.name)
                    .chain([VERSION_PARAM])
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        match value {
            serde_yaml::Value::String(s) if param.allowed.contains(&s.as_str()) => {
                values.insert(param.name, s.clone());
            }
            other => {
                return Err(ParamsError::InvalidValue {
                    path,
                    line,
                    key: key_text,
                    value: scalar_text(other),
                    allowed: allowed_list(param),
                })
            }
        }
    }
    Ok(DesiredParams { values, version })
}

fn allowed_list(param: &ManagedParam) -> String {
    param
        .allowed
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Maps a YAML parse error to a params error: duplicate keys are reported as such, the rest
/// as syntax errors with their position.
fn structure_error(path: String, text: &str, e: &serde_yaml::Error) -> ParamsError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let detail = strip_location(&e.to_string());
    if let Some(key) = duplicate_key(&detail) {
        // serde_yaml reports the position of the mapping; find the second occurrence.
        let line = nth_key_line(text, &key, 2).unwrap_or(line);
        return ParamsError::DuplicateKey { path, line, key };
    }
    ParamsError::Syntax {
        path,
        line,
        column,
        detail,
    }
}

fn duplicate_key(detail: &str) -> Option<String> {
    let rest = detail.split("duplicate entry with key ").nth(1)?;
    Some(rest.trim().trim_matches('"').to_string())
}

fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// A scalar as the person typed it, quoted so empty values stay visible.
fn scalar_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => "(empty)".to_string(),
        serde_yaml::Value::Bool(b) => format!("{b} (a YAML boolean)"),
        serde_yaml::Value::Number(n) => format!("{n} (a number)"),
        serde_yaml::Value::String(s) => format!("\"{s}\""),
        other => describe(other),
    }
}

fn describe(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => "nothing".to_string(),
        serde_yaml::Value::Bool(_) => "a boolean".to_string(),
        serde_yaml::Value::Number(_) => "a number".to_string(),
        serde_yaml::Value::String(_) => "a string".to_string(),
        serde_yaml::Value::Sequence(_) => "a list".to_string(),
        serde_yaml::Value::Mapping(_) => "a mapping".to_string(),
        serde_yaml::Value::Tagged(_) => "a tagged value".to_string(),
    }
}

fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && l != "---"
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// The 1-based line of the `n`th occurrence of `key:` at the top of a line.
fn nth_key_line(text: &str, key: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
                .iter()
                .any(|k| {
                    l.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
        })
        .nth(n - 1)
        .map(|(i, _)| i + 1)
}

/// The line a key is written on (the first content line for flow mappings and the like).
fn key_line(text: &str, key: &str) -> usize {
    nth_key_line(text, key, 1).unwrap_or_else(|| first_content_line(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> DesiredParams {
        parse("params.yaml", text).expect("valid params")
    }

    fn err(text: &str) -> ParamsError {
        parse("params.yaml", text).expect_err("invalid params")
    }

    #[test]
    fn accepts_the_rack_spellings() {
        for (text, want) in [
            ("ECSExec: \"Yes\"\n", "Yes"),
            ("ECSExec: 'No'\n", "No"),
            ("ECSExec: Yes\n", "Yes"),
            ("# managed by ops\n---\nECSExec: No # off\n", "No"),
            ("{ECSExec: \"Yes\"}", "Yes"),
        ] {
            assert_eq!(
                ok(text).get(&crate::model::ECS_EXEC),
                Some(want),
                "{text:?}"
            );
        }
    }

    #[test]
    fn version_is_fourteen_digits() {
        for text in ["Version: \"20260418101514\"\n", "Version: 20260418101514\n"] {
            assert_eq!(
                ok(text).version.map(|v| v.to_string()).as_deref(),
                Some("20260418101514"),
                "{text:?}"
            );
        }
        let both = ok("ECSExec: \"No\"\nVersion: \"20240205000000\"\n");
        assert_eq!(both.get(&crate::model::ECS_EXEC), Some("No"));
        for (text, shown) in [
            ("Version: latest\n", "\"latest\""),
            ("Version: \"2026041810151\"\n", "\"2026041810151\""),
            ("Version: \"2026-04-18\"\n", "\"2026-04-18\""),
            ("Version: 20260418101514.5\n", "20260418101514.5 (a number)"),
            ("Version:\n", "(empty)"),
        ] {
            let e = err(text);
            assert_eq!(e.kind(), "invalid_value", "{text:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("Version") && msg.contains(shown) && msg.contains("14 digits"),
                "{msg}"
            );
        }
    }

    #[test]
    fn an_empty_mapping_manages_nothing() {
        assert_eq!(ok("{}\n"), DesiredParams::default());
    }

    #[test]
    fn rejects_bad_values_naming_file_line_key_value_and_allowed() {
        let cases = [
            ("ECSExec: yes\n", "\"yes\""),
            ("ECSExec: true\n", "true (a YAML boolean)"),
            ("ECSExec: 1\n", "1 (a number)"),
            ("ECSExec:\n", "(empty)"),
            ("ECSExec: \"\"\n", "\"\""),
            ("ECSExec: [Yes]\n", "a list"),
        ];
        for (text, value) in cases {
            let e = err(&format!("# comment\n{text}"));
            assert_eq!(
                e,
                ParamsError::InvalidValue {
                    path: "params.yaml".into(),
                    line: 2,
                    key: "ECSExec".into(),
                    value: value.into(),
                    allowed: "\"Yes\" or \"No\"".into(),
                },
                "{text:?}"
            );
            let msg = e.to_string();
            for part in ["params.yaml:2", "ECSExec", value, "\"Yes\" or \"No\""] {
                assert!(msg.contains(part), "{msg:?} lacks {part:?}");
            }
        }
    }

    #[test]
    fn rejects_structural_problems() {
        let table: [(&str, &str, usize); 8] = [
            ("", "empty", 0),
            ("# only a comment\n\n", "empty", 0),
            ("ECSExec: \"No\"\nEcsExec: \"Yes\"\n", "unknown_key", 2),
            ("ECSExec: \"No\"\nECSExec: \"Yes\"\n", "duplicate_key", 2),
            ("- ECSExec\n", "not_mapping", 1),
            ("\"Yes\"\n", "not_mapping", 1),
            ("ECSExec: \"Ye\n", "syntax", 2),
            ("ECSExec: Yes\n  x: [\n", "syntax", 2),
        ];
        for (text, kind, line) in table {
            let e = err(text);
            assert_eq!(e.kind(), kind, "{text:?}: {e}");
            if line > 0 {
                assert!(
                    e.to_string().starts_with(&format!("params.yaml:{line}")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn missing_file_is_its_own_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load(&dir.path().join("nope.yaml")).expect_err("missing");
        assert_eq!(e.kind(), "missing");
        assert!(e.to_string().contains("nope.yaml"));
    }
}
