//! `plan`: what `apply` would do, changing nothing.

use super::*;

/// What the rack is and what the controller would decide, without acting; `Err` with the exit
/// code when the params file is invalid.
pub(crate) async fn preview(
    cfg: &Config,
) -> Result<std::result::Result<(ObservedRack, Vec<Decision>), u8>> {
    let mut rec = reconciler(cfg, &Wiring::new(cfg, false).await).await?;
    let previewed = rec.preview().await?;
    if let Some(e) = rec.params_error() {
        println!("{e}");
        return Ok(Err(exit::INVALID_PARAMS));
    }
    Ok(Ok(previewed))
}

pub(crate) async fn plan(cfg: Config, detailed: bool) -> Result<u8> {
    let mut rec = reconciler(&cfg, &Wiring::new(&cfg, false).await).await?;
    let (observed, decisions) = rec.preview().await?;
    if let Some(e) = rec.params_error() {
        println!("{e}");
        return Ok(exit::INVALID_PARAMS);
    }
    println!(
        "rack {} (stack {}), params {}",
        cfg.rack, observed.stack.status, cfg.params_file
    );
    let mut changes = 0;
    for d in &decisions {
        // Anything that differs counts, a change held or blocked included.
        changes += print_plan(d, method(d, &observed)).max(usize::from(d.drift));
    }
    if decisions.is_empty() {
        println!("the params file manages no parameter: nothing to do");
    }
    match rec.preview_stack_update(&observed).await {
        None => {}
        Some(Ok(resources)) => {
            println!(
                "\nCloudFormation change set: {} resource change(s)",
                resources.len()
            );
            for r in &resources {
                println!(
                    "  {} {} ({}{})",
                    r.action,
                    r.logical_id,
                    r.resource_type,
                    r.replacement
                        .as_deref()
                        .map(|x| format!(", replacement {x}"))
                        .unwrap_or_default()
                );
            }
        }
        Some(Err(e)) => println!("\nno change set preview: {e}"),
    }
    println!(
        "\nPlan: {changes} change(s). {}",
        if changes == 0 {
            "The rack matches the params file."
        } else {
            "Run `rack-reconciler apply` to make them."
        }
    );
    Ok(if detailed && changes > 0 {
        exit::CHANGES
    } else {
        exit::CONVERGED
    })
}

/// How a parameter changes, for `plan`.
pub(crate) fn method(d: &Decision, observed: &ObservedRack) -> &'static str {
    if d.param == "Version" {
        "version: UpdateStack to the target template"
    } else if !d.pending.is_empty() || !observed.declared.declares(&d.param) {
        "relabel: RegisterTaskDefinition + UpdateService, service by service"
    } else {
        "stack: UpdateStack, template and other parameters kept"
    }
}

pub(crate) fn print_plan(d: &Decision, method: &str) -> usize {
    let observed = d.observed.as_deref().unwrap_or("mixed");
    println!(
        "\n{}: desired {}, observed {} ({}) [{method}]",
        d.param, d.desired, observed, d.phase
    );
    if !matches!(d.phase, Phase::Converged | Phase::Progressing) || d.pending.is_empty() {
        println!("  {}", d.message);
    }
    for (i, c) in d.pending.iter().enumerate() {
        println!(
            "  {}. {}: {} → {}: register a copy of {} with only {}={} changed (or reuse an identical one), \
             UpdateService, follow the rollout",
            i + 1,
            c.service,
            c.from_value.as_deref().unwrap_or("?"),
            c.to_value,
            short_arn(&c.from_task_definition),
            param_label(&d.param),
            c.to_value
        );
    }
    if let Some(Action::UpdateStack(u)) = &d.action {
        let given: Vec<String> = u
            .parameters
            .iter()
            .filter_map(|p| p.value.as_ref().map(|v| format!("{}={v}", p.key)))
            .collect();
        let kept = u.parameters.iter().filter(|p| p.value.is_none()).count();
        println!(
            "  1. UpdateStack {} → {} ({}): {}; {kept} parameter(s) UsePreviousValue; then follow the stack to UPDATE_COMPLETE",
            u.from.as_deref().unwrap_or("?"),
            u.to,
            if u.downgrade { "downgrade" } else { "upgrade" },
            given.join(", ")
        );
        return 1;
    }
    d.pending.len()
}

pub(crate) fn param_label(name: &str) -> &'static str {
    rack_reconciler::model::managed_param(name)
        .map(|p| p.label)
        .unwrap_or("label")
}

pub(crate) fn short_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}
