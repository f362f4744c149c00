//! What a rack template declares about its parameters, and whether a value fits.
//!
//! Parameters are data: the keys a params file may hold and the values they may take come
//! from the running template's `Parameters` section (type, allowed values, allowed pattern,
//! length and number bounds, `NoEcho`), not from code. `ECSExec` keeps its strict `Yes`/`No`
//! even on templates that do not declare it (it is then changed by relabelling).

use std::collections::BTreeMap;

use serde_yaml::Value;

/// One parameter as a template declares it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParamDecl {
    pub name: String,
    /// `String`, `Number`, `CommaDelimitedList`, `List<Number>`, an AWS-specific type...
    pub kind: String,
    pub default: Option<String>,
    pub allowed_values: Vec<String>,
    pub allowed_pattern: Option<String>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
    pub no_echo: bool,
    pub constraint_description: Option<String>,
    /// Only the name is known (the template was not read): every value is refused.
    pub unread: bool,
}

/// Why a value does not fit a declaration: what is allowed, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// The value breaks a constraint; the text says which and what is allowed.
    Constraint(String),
    /// A `NoEcho` parameter: a secret, which does not belong in a params file.
    Secret,
}

impl ParamDecl {
    /// Whether `value` fits the declaration, as CloudFormation would judge it.
    pub fn check(&self, value: &str) -> Result<(), Misfit> {
        if self.no_echo {
            return Err(Misfit::Secret);
        }
        if self.unread {
            return Err(Misfit::Constraint(
                "a value the rack's template allows (its declaration was not read)".into(),
            ));
        }
        if self.kind == "Number" {
            return self.check_number(value).map_err(Misfit::Constraint);
        }
        if self.kind == "List<Number>" {
            for item in value.split(',') {
                self.check_number(item.trim()).map_err(Misfit::Constraint)?;
            }
            return Ok(());
        }
        if self.kind == "CommaDelimitedList" || self.kind.starts_with("List<") {
            // AllowedValues and AllowedPattern apply to each item; lengths to strings only.
            for item in value.split(',') {
                self.check_item(item.trim()).map_err(Misfit::Constraint)?;
            }
            return Ok(());
        }
        self.check_string(value).map_err(Misfit::Constraint)
    }

    fn check_number(&self, value: &str) -> Result<(), String> {
        // Plain decimal digits: no spaces, signs other than a leading minus, exponents,
        // infinities or NaN.
        let plain = regex_lite::Regex::new(r"^-?[0-9]+(\.[0-9]+)?$").map_err(|e| e.to_string())?;
        let n: f64 = plain
            .is_match(value)
            .then(|| value.parse().ok())
            .flatten()
            .ok_or_else(|| format!("a number{}", self.bounds()))?;
        let below = self.min_value.is_some_and(|m| n < m);
        let above = self.max_value.is_some_and(|m| n > m);
        if below || above {
            return Err(format!("a number{}", self.bounds()));
        }
        self.check_allowed(value)
    }

    fn check_string(&self, value: &str) -> Result<(), String> {
        let len = value.chars().count() as u64;
        if self.min_length.is_some_and(|m| len < m) || self.max_length.is_some_and(|m| len > m) {
            return Err(format!(
                "between {} and {} characters",
                self.min_length.unwrap_or(0),
                self.max_length
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "any number of".into())
            ));
        }
        self.check_item(value)
    }

    /// The pattern and the allowed values, which apply to each item of a list too.
    fn check_item(&self, value: &str) -> Result<(), String> {
        if let Some(pattern) = &self.allowed_pattern {
            let full = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                format!("a value matching {pattern} (the pattern does not compile: {e})")
            })?;
            if !full.is_match(value) {
                let why = self
                    .constraint_description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                return Err(format!("a value matching the pattern {pattern}{why}"));
            }
        }
        self.check_allowed(value)
    }

    fn check_allowed(&self, value: &str) -> Result<(), String> {
        if self.allowed_values.is_empty() || self.allowed_values.iter().any(|a| a == value) {
            return Ok(());
        }
        Err(quoted_list(&self.allowed_values))
    }

    fn bounds(&self) -> String {
        match (self.min_value, self.max_value) {
            (Some(a), Some(b)) => format!(" from {a} to {b}"),
            (Some(a), None) => format!(" of at least {a}"),
            (None, Some(b)) => format!(" of at most {b}"),
            (None, None) => String::new(),
        }
    }
}

/// `"A" or "B"`, `"A", "B" or "C"`.
pub fn quoted_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// Every parameter a template declares, by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Declarations {
    pub params: BTreeMap<String, ParamDecl>,
}

impl Declarations {
    /// The declarations of a template body (JSON or YAML).
    pub fn from_template(body: &str) -> Result<Declarations, String> {
        let doc: Value = serde_yaml::from_str(body).map_err(|e| e.to_string())?;
        let params = doc
            .get("Parameters")
            .and_then(Value::as_mapping)
            .ok_or_else(|| "no Parameters mapping".to_string())?;
        let mut out = Declarations::default();
        for (k, v) in params {
            let Some(name) = k.as_str() else { continue };
            out.params.insert(name.to_string(), declaration(name, v));
        }
        Ok(out)
    }

    /// What the stack's parameter names tell without the template body: each name is
    /// declared; `known` (name, allowed values) are checked against those values, every other
    /// parameter's values are refused (read the template to check them).
    pub fn of_names<'a>(
        names: impl IntoIterator<Item = &'a String>,
        known: &[(&str, &[&str])],
    ) -> Declarations {
        let params = names
            .into_iter()
            .map(|name| {
                let allowed = known.iter().find(|(k, _)| k == name).map(|(_, a)| *a);
                let decl = ParamDecl {
                    name: name.clone(),
                    kind: "String".into(),
                    allowed_values: allowed
                        .map(|a| a.iter().map(|v| v.to_string()).collect())
                        .unwrap_or_default(),
                    unread: allowed.is_none(),
                    ..ParamDecl::default()
                };
                (name.clone(), decl)
            })
            .collect();
        Declarations { params }
    }

    pub fn get(&self, name: &str) -> Option<&ParamDecl> {
        self.params.get(name)
    }

    pub fn declares(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    /// The keys a params file may hold with these declarations: every declared parameter
    /// that is not a secret, and the keys the controller always accepts (`Version`, the
    /// parameters it manages).
    pub fn allowed_keys(&self, always: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = self
            .params
            .values()
            .filter(|p| !p.no_echo)
            .map(|p| p.name.clone())
            .chain(always.iter().map(|k| k.to_string()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

fn declaration(name: &str, v: &Value) -> ParamDecl {
    let text = |key: &str| v.get(key).and_then(scalar);
    let number = |key: &str| text(key).and_then(|s| s.parse::<f64>().ok());
    let count = |key: &str| text(key).and_then(|s| s.parse::<u64>().ok());
    ParamDecl {
        name: name.to_string(),
        kind: text("Type").unwrap_or_else(|| "String".into()),
        default: text("Default"),
        allowed_values: v
            .get("AllowedValues")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(scalar).collect())
            .unwrap_or_default(),
        allowed_pattern: text("AllowedPattern"),
        min_length: count("MinLength"),
        max_length: count("MaxLength"),
        min_value: number("MinValue"),
        max_value: number("MaxValue"),
        no_echo: text("NoEcho").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        constraint_description: text("ConstraintDescription"),
        unread: false,
    }
}

/// A scalar as CloudFormation reads it (numbers and booleans as their text).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{
      "Parameters": {
        "ApiCount": {"Type": "String", "Default": "2"},
        "InstanceCount": {"Type": "Number", "Default": "3", "MinValue": "3"},
        "LoadBalancerIdleTimeout": {"Type": "Number", "Default": "3600", "MinValue": 1, "MaxValue": 4000},
        "Private": {"Type": "String", "Default": "No", "AllowedValues": ["Yes", "No"]},
        "InstanceType": {"Type": "String", "Default": "t3.small", "AllowedPattern": "[a-z0-9]+\\.[a-z0-9]+",
                         "ConstraintDescription": "an EC2 instance type"},
        "Password": {"Type": "String", "NoEcho": true, "MinLength": 1, "MaxLength": 50},
        "SpotFleetAllowedInstanceTypes": {"Type": "CommaDelimitedList", "Default": ""},
        "Tenancy": {"Type": "String", "Default": "default", "AllowedValues": ["default", "dedicated"]}
      }
    }"#;

    fn check(name: &str, value: &str) -> Result<(), Misfit> {
        let d = Declarations::from_template(TEMPLATE).expect("template");
        d.get(name).expect("declared").check(value)
    }

    fn misfit(name: &str, value: &str) -> String {
        match check(name, value) {
            Err(Misfit::Constraint(c)) => c,
            other => panic!("{name}={value}: {other:?}"),
        }
    }

    #[test]
    fn values_are_checked_against_every_kind_of_constraint() {
        assert_eq!(check("ApiCount", "3"), Ok(()));
        assert_eq!(check("InstanceCount", "5"), Ok(()));
        assert_eq!(misfit("InstanceCount", "2"), "a number of at least 3");
        assert_eq!(misfit("InstanceCount", "many"), "a number of at least 3");
        for loose in [" 5", "+5", "5e3", "inf", "NaN", "0x10", ""] {
            assert_eq!(
                misfit("InstanceCount", loose),
                "a number of at least 3",
                "{loose:?}"
            );
        }
        assert_eq!(check("LoadBalancerIdleTimeout", "1.5"), Ok(()));
        assert_eq!(
            misfit("LoadBalancerIdleTimeout", "4001"),
            "a number from 1 to 4000"
        );
        assert_eq!(check("LoadBalancerIdleTimeout", "60"), Ok(()));
        assert_eq!(misfit("Private", "yes"), "\"Yes\" or \"No\"");
        assert_eq!(check("InstanceType", "m5.large"), Ok(()));
        assert_eq!(
            misfit("InstanceType", "huge"),
            "a value matching the pattern [a-z0-9]+\\.[a-z0-9]+ (an EC2 instance type)"
        );
        assert_eq!(
            check("SpotFleetAllowedInstanceTypes", "t3.small,t3.medium"),
            Ok(())
        );
        assert_eq!(misfit("Tenancy", "shared"), "\"default\" or \"dedicated\"");
    }

    #[test]
    fn a_no_echo_parameter_is_a_secret_whatever_its_value() {
        assert_eq!(check("Password", "hunter2"), Err(Misfit::Secret));
        let d = Declarations::from_template(TEMPLATE).expect("template");
        let keys = d.allowed_keys(&["Version", "ECSExec"]);
        assert!(!keys.contains(&"Password".to_string()));
        assert!(keys.contains(&"ECSExec".to_string()) && keys.contains(&"Version".to_string()));
    }
}
