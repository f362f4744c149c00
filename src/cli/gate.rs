//! `check-downgrade`: the downgrade gate once; where a template's declarations come from.

use super::*;

pub(crate) async fn check_downgrade(cfg: Config, to: &str) -> Result<u8> {
    let Some(version) = RackVersion::parse(to) else {
        println!("--to {to:?}: not a Convox rack version (14 digits, e.g. 20260418101514)");
        return Ok(exit::INVALID_PARAMS);
    };
    let mut rec = reconciler(&cfg, &Wiring::new(&cfg, false).await).await?;
    let check = rec
        .check_version(version)
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(e) = rec.params_error() {
        eprintln!("warning: the params file is invalid ({e}); judging from what the rack runs");
    }
    let current = check
        .current
        .map(|c| c.to_string())
        .unwrap_or_else(|| "an unknown version".into());
    let (verdict, code) = match &check.gate {
        Gate::NotNeeded if check.current.is_some_and(|c| version >= c) => (
            format!("allowed: {version} is not older than {current}"),
            exit::CONVERGED,
        ),
        Gate::NotNeeded => (
            format!(
                "allowed: {} declares ECSExec, so the downgrade from {current} needs no gate",
                check.template.as_deref().unwrap_or("the target template")
            ),
            exit::CONVERGED,
        ),
        Gate::Allowed => (
            format!("allowed: ECSExec=No has converged on every rack API service; {current} → {version} is safe"),
            exit::CONVERGED,
        ),
        Gate::Refused(why) => (format!("refused: {why}"), exit::BLOCKED),
        Gate::Holding(why) => (format!("refused for now: {why}"), exit::BLOCKED),
    };
    println!("{verdict}");
    Ok(code)
}

/// What a template file declares.
pub(crate) fn template_declarations(path: &Path) -> Result<Declarations> {
    let body = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the template {}", path.display()))?;
    Declarations::from_template(&body)
        .map_err(|e| anyhow::anyhow!("{} is not a rack template: {e}", path.display()))
}

/// What the parameters may be: a template file's declarations, or the running template's.
pub(crate) async fn declarations(cfg: &Config, template: Option<&Path>) -> Result<Declarations> {
    if let Some(t) = template {
        return template_declarations(t);
    }
    let rack = build_backend(cfg, &Metrics::new()).await?.rack;
    rack.stack_declarations()
        .await
        .with_context(|| format!("cannot read the template of stack {}", cfg.rack))
}
