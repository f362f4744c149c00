//! `exec-check`: exec readiness once, and the Session Manager plugin on this machine.

use super::*;

/// `exec-check`: exec readiness once, and the Session Manager plugin on this machine.
pub(crate) async fn exec_check(cfg: Config, app: Option<&str>, json: bool) -> Result<u8> {
    let backend = build_backend(&cfg, &Metrics::new()).await?;
    let readiness = Discovery::default()
        .run(
            backend.exec.as_ref(),
            &cfg.rack,
            app,
            std::time::SystemTime::now(),
        )
        .await
        .with_context(|| format!("cannot look at the apps of rack {}", cfg.rack))?;
    if let Some(a) = app.filter(|a| !readiness.apps.contains_key(*a)) {
        bail!(
            "app {a} not found in rack {}: `convox apps` lists them",
            cfg.rack
        );
    }
    let plugin = check::find_plugin(std::env::var_os("PATH")).await;
    if json {
        let doc = check::json(&cfg.rack, &readiness, &plugin);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", check::table(&cfg.rack, &readiness));
        print!("\n{}", check::plugin_lines(&plugin));
    }
    Ok(match check::outcome(&readiness) {
        check::Outcome::Ready => exit::CONVERGED,
        check::Outcome::NotReady => exit::BLOCKED,
        check::Outcome::Unknown => exit::UNKNOWN,
    })
}
