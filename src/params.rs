//! Desired state: the params file operators edit.
//!
//! ```yaml
//! ECSExec: "Yes"
//! ```
//!
//! Any parameter the rack's template declares may appear. Parsing is strict: duplicate keys
//! are errors, values are strings (or numbers), `ECSExec` is exactly `Yes` or `No` and
//! `Version` a rack version; then [`DesiredParams::check`] holds the rest against the
//! running template's declarations (unknown keys, allowed values, patterns, bounds, secrets).
//! Every error names the file, the line, the key, the bad value and what is allowed. A key
//! that is absent is not managed: the controller leaves it as the rack has it.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::model::{managed_param, ManagedParam, RackVersion, MANAGED_PARAMS, VERSION_PARAM};
use crate::spec::{quoted_list, Declarations, Misfit};

/// The desired state read from a valid params file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredParams {
    /// Parameter name → desired value (`Version` apart).
    pub values: BTreeMap<String, String>,
    /// The rack version the rack should run, when the file says.
    pub version: Option<RackVersion>,
    /// The line each key is on, for errors found later against the template.
    pub lines: BTreeMap<String, usize>,
    /// The file, for those errors.
    pub path: String,
}

impl DesiredParams {
    pub fn get(&self, param: &ManagedParam) -> Option<&str> {
        self.value(param.name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Holds every key and value against what the running template declares: unknown keys,
    /// values outside the declaration and secrets (`NoEcho`) are refused. `ECSExec` was
    /// checked when parsed and is allowed whether or not the template declares it.
    pub fn check(&self, declared: &Declarations) -> Result<(), ParamsError> {
        for (key, value) in &self.values {
            let line = self.lines.get(key).copied().unwrap_or(1);
            let path = self.path.clone();
            let Some(decl) = declared.get(key) else {
                if managed_param(key).is_some() {
                    continue;
                }
                return Err(ParamsError::UnknownKey {
                    path,
                    line,
                    key: key.clone(),
                    allowed: format!(
                        "the parameters the rack's template declares (and Version): {}",
                        declared.allowed_keys(&always_allowed()).join(", ")
                    ),
                });
            };
            match decl.check(value) {
                Ok(()) => {}
                Err(Misfit::Secret) => {
                    return Err(ParamsError::Secret {
                        path,
                        line,
                        key: key.clone(),
                    })
                }
                Err(Misfit::Constraint(allowed)) => {
                    return Err(ParamsError::InvalidValue {
                        path,
                        line,
                        key: key.clone(),
                        value: format!("\"{value}\""),
                        allowed,
                    })
                }
            }
        }
        Ok(())
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
    #[error("{path}:{line}: {key} is a secret (NoEcho) parameter: secrets do not belong in the params file; set it with `convox rack params set` and remove it here")]
    Secret {
        path: String,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: {key}: invalid value {value}: allowed: {allowed}")]
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
            ParamsError::Secret { .. } => "secret",
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
        "secret",
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

    let mut desired = DesiredParams {
        path: path.clone(),
        ..DesiredParams::default()
    };
    for (key, value) in &mapping {
        let key_text = match key {
            serde_yaml::Value::String(s) => s.clone(),
            other => scalar_text(other),
        };
        let line = key_line(text, &key_text);
        let invalid = |allowed: String| ParamsError::InvalidValue {
            path: path.clone(),
            line,
            key: key_text.clone(),
            value: scalar_text(value),
            allowed,
        };
        if key_text == VERSION_PARAM {
            let parsed = match value {
                serde_yaml::Value::String(s) => RackVersion::parse(s),
                serde_yaml::Value::Number(n) => RackVersion::parse(&n.to_string()),
                _ => None,
            };
            let v = parsed.ok_or_else(|| {
                invalid("a Convox rack version: 14 digits, e.g. \"20260418101514\"".into())
            })?;
            desired.version = Some(v);
            desired.lines.insert(key_text, line);
            continue;
        }
        let text_value = match (managed_param(&key_text), value) {
            // Strict: exactly the rack's spellings, as strings.
            (Some(param), serde_yaml::Value::String(s)) if param.allowed.contains(&s.as_str()) => {
                s.clone()
            }
            (Some(param), _) => {
                return Err(invalid(format!(
                    "{} (exact spelling, quoted)",
                    allowed_list(param)
                )))
            }
            (None, serde_yaml::Value::String(s)) => s.clone(),
            (None, serde_yaml::Value::Number(n)) => n.to_string(),
            (None, _) => return Err(invalid("a string (quoted) or a number".into())),
        };
        desired.values.insert(key_text.clone(), text_value);
        desired.lines.insert(key_text, line);
    }
    Ok(desired)
}

/// Reads a params file and holds it against the declarations of a template.
pub fn load_checked(path: &Path, declared: &Declarations) -> Result<DesiredParams, ParamsError> {
    let desired = load(path)?;
    desired.check(declared)?;
    Ok(desired)
}

fn allowed_list(param: &ManagedParam) -> String {
    let allowed: Vec<String> = param.allowed.iter().map(|a| a.to_string()).collect();
    quoted_list(&allowed)
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

/// The keys a params file may hold whatever the template declares: `Version` and the
/// parameters the controller manages.
fn always_allowed() -> Vec<&'static str> {
    std::iter::once(VERSION_PARAM)
        .chain(MANAGED_PARAMS.iter().map(|p| p.name))
        .collect()
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
        let d = ok("{}\n");
        assert!(d.values.is_empty() && d.version.is_none());
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
                    allowed: "\"Yes\" or \"No\" (exact spelling, quoted)".into(),
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
        let table: [(&str, &str, usize); 7] = [
            ("", "empty", 0),
            ("# only a comment\n\n", "empty", 0),
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

    const TEMPLATE: &str = r#"{"Parameters": {
        "ApiCount": {"Type": "String", "Default": "2"},
        "InstanceCount": {"Type": "Number", "Default": "3", "MinValue": "3"},
        "Private": {"Type": "String", "Default": "No", "AllowedValues": ["Yes", "No"]},
        "InstanceType": {"Type": "String", "AllowedPattern": "[a-z0-9]+\\.[a-z0-9]+"},
        "Password": {"Type": "String", "NoEcho": "true"},
        "Version": {"Type": "String", "MinLength": 1}
    }}"#;

    fn check(text: &str) -> Result<DesiredParams, ParamsError> {
        let declared = Declarations::from_template(TEMPLATE).expect("template");
        let d = parse("params.yaml", text)?;
        d.check(&declared)?;
        Ok(d)
    }

    #[test]
    fn any_declared_parameter_is_held_against_its_declaration() {
        let d = check(
            "ECSExec: \"Yes\"\nApiCount: \"3\"\nInstanceCount: 4\nVersion: \"20260418101514\"\n",
        )
        .expect("valid");
        assert_eq!(d.value("ApiCount"), Some("3"));
        assert_eq!(
            d.value("InstanceCount"),
            Some("4"),
            "a YAML number is taken as written"
        );
        let cases = [
            ("Bogus: \"1\"\n", "unknown_key", "Bogus"),
            ("EcsExec: \"Yes\"\n", "unknown_key", "EcsExec"),
            (
                "InstanceCount: \"2\"\n",
                "invalid_value",
                "a number of at least 3",
            ),
            ("Private: \"yes\"\n", "invalid_value", "\"Yes\" or \"No\""),
            ("InstanceType: \"huge\"\n", "invalid_value", "pattern"),
            (
                "ApiCount: [3]\n",
                "invalid_value",
                "a string (quoted) or a number",
            ),
            (
                "Password: \"hunter2\"\n",
                "secret",
                "convox rack params set",
            ),
        ];
        for (text, kind, says) in cases {
            let e = check(&format!("# comment\n{text}")).expect_err(text);
            assert_eq!(e.kind(), kind, "{text:?}: {e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("params.yaml:2:") && msg.contains(says),
                "{msg}"
            );
            assert!(
                !msg.contains("hunter2"),
                "a secret is never repeated: {msg}"
            );
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

/// A params file's text with `key` set to `value`, as a person would edit it: the key's
/// top-level line keeps its place and its comment, only the value changes; a key not in the
/// file is appended. Values are written double-quoted (the rack's spellings are strings).
pub fn set_in_text(text: &str, key: &str, value: &str) -> String {
    let quoted = format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| match value_span(line, key) {
            Some((start, end)) if !found => {
                found = true;
                format!("{}{quoted}{}", &line[..start], &line[end..])
            }
            _ => line.to_string(),
        })
        .collect();
    if !found {
        lines.push(format!("{key}: {quoted}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Where the value of a top-level `key:` line is (byte range), comment excluded.
fn value_span(line: &str, key: &str) -> Option<(usize, usize)> {
    let rest = [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .find_map(|k| line.strip_prefix(k.as_str()))?;
    let after_colon = rest.trim_start().strip_prefix(':')?;
    let start =
        line.len() - after_colon.len() + (after_colon.len() - after_colon.trim_start().len());
    let value = &line[start..];
    let len = match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let mut escaped = false;
            let close = value[1..].char_indices().find(|(_, c)| {
                let hit = *c == q && !escaped;
                escaped = *c == '\\' && !escaped && q == '"';
                hit
            });
            close.map(|(i, _)| i + 2).unwrap_or(value.len())
        }
        _ => value.find(" #").unwrap_or(value.len()),
    };
    let end = start + value[..len].trim_end().len();
    Some((start, end))
}

#[cfg(test)]
mod edit_tests {
    use super::set_in_text;

    #[test]
    fn set_keeps_comments_order_and_other_keys() {
        let text = "# Desired rack parameters.\nECSExec: \"No\"   # off for now\nApiCount: 2\n\n# the version\nVersion: \"20260418101514\"\n";
        let out = set_in_text(text, "ECSExec", "Yes");
        assert_eq!(
            out,
            "# Desired rack parameters.\nECSExec: \"Yes\"   # off for now\nApiCount: 2\n\n# the version\nVersion: \"20260418101514\"\n"
        );
        let out = set_in_text(&out, "ApiCount", "3");
        assert!(out.contains("\nApiCount: \"3\"\n"), "{out}");
        let out = set_in_text(&out, "Private", "Yes");
        assert!(
            out.ends_with("Version: \"20260418101514\"\nPrivate: \"Yes\"\n"),
            "{out}"
        );
        // A key that only starts the same is another key.
        let out = set_in_text("ECSExecX: \"a\"\n", "ECSExec", "No");
        assert_eq!(out, "ECSExecX: \"a\"\nECSExec: \"No\"\n");
        // A quoted value with a '#' is not cut at it.
        let out = set_in_text(
            "WhiteList: \"10.0.0.0/8 # x\" # note\n",
            "WhiteList",
            "0.0.0.0/0",
        );
        assert_eq!(out, "WhiteList: \"0.0.0.0/0\" # note\n");
    }
}
