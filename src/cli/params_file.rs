//! `validate`, `set`, `get`: the params file.

use super::*;

/// The text of the params document at `at` and its version (ETag); empty when there is none.
pub(crate) async fn read_params(store: &Store, at: &Location) -> Result<(String, Option<String>)> {
    match store.read(at, None).await {
        Ok(Fetch::Text { text, etag }) => Ok((text, etag)),
        Ok(Fetch::Missing | Fetch::Unchanged) => Ok((String::new(), None)),
        // S3 answers AccessDenied for a missing object to a role that may not list the
        // bucket: write it as new (`If-None-Match: *`), which fails if it does exist.
        Err(StoreError::Denied { .. }) => Ok((String::new(), None)),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn validate(store: &Store, at: &Location, declared: Option<&Declarations>) -> u8 {
    let shown = at.to_string();
    let checked = match store.read(at, None).await {
        Ok(Fetch::Text { text, .. }) => params::parse(&shown, &text),
        Ok(_) => Err(params::ParamsError::Missing {
            path: shown.clone(),
        }),
        Err(e) => Err(params::ParamsError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        }),
    }
    .and_then(|d| match declared {
        Some(decl) => d.check(decl).map(|()| d),
        None => Ok(d),
    });
    match checked {
        Ok(d) => {
            let mut names: Vec<String> = d.values.keys().cloned().collect();
            names.extend(d.version.map(|v| format!("Version={v}")));
            println!(
                "{shown}: valid{} ({})",
                if declared.is_some() {
                    ""
                } else {
                    " YAML (not checked against a template)"
                },
                if names.is_empty() {
                    "manages nothing".into()
                } else {
                    names.join(", ")
                }
            );
            exit::CONVERGED
        }
        Err(e) => {
            println!("{e}");
            exit::INVALID_PARAMS
        }
    }
}

/// `set KEY=VALUE ...`: the params file with those values, written only if it is valid
/// against the template (a local file atomically; an S3 object only if nobody changed it
/// since it was read).
pub(crate) async fn set(
    cfg: Config,
    assignments: &[String],
    template: Option<&Path>,
) -> Result<u8> {
    let at = &cfg.params_file;
    let store = store_for(at, cfg.region.clone(), &cfg.timeouts, &Metrics::new()).await;
    let (mut text, etag) = read_params(&store, at)
        .await
        .with_context(|| format!("cannot read {at}"))?;
    for a in assignments {
        let Some((key, value)) = a.split_once('=') else {
            println!("{a}: expected KEY=VALUE, e.g. ECSExec=Yes");
            return Ok(exit::INVALID_PARAMS);
        };
        text = params::set_in_text(&text, key.trim(), value.trim());
    }
    let declared = declarations(&cfg, template).await?;
    let shown = at.to_string();
    if let Err(e) = params::parse(&shown, &text).and_then(|d| d.check(&declared)) {
        println!("{e}\n{shown} is unchanged");
        return Ok(exit::INVALID_PARAMS);
    }
    store
        .write_if_unchanged(at, &text, etag.as_deref())
        .await
        .with_context(|| format!("cannot write {shown}"))?;
    println!("{shown}: set {}", assignments.join(" "));
    Ok(exit::CONVERGED)
}

/// `get [KEY]`: desired, the stack's value and the phase of each managed parameter.
pub(crate) async fn get(cfg: Config, key: Option<&str>) -> Result<u8> {
    let (observed, decisions) = match preview(&cfg).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    println!(
        "{:<28} {:<16} {:<16} PHASE",
        "PARAMETER", "DESIRED", "STACK"
    );
    for d in decisions
        .iter()
        .filter(|d| key.is_none_or(|k| k == d.param))
    {
        let stack = observed
            .stack
            .parameters
            .get(&d.param)
            .map(String::as_str)
            .unwrap_or("(not declared)");
        println!(
            "{:<28} {:<16} {:<16} {} ({})",
            d.param, d.desired, stack, d.phase, d.reason
        );
    }
    if let Some(k) = key.filter(|k| !decisions.iter().any(|d| d.param == *k)) {
        println!(
            "{k} is not in the params file: the rack's value is {}",
            observed
                .stack
                .parameters
                .get(k)
                .map(String::as_str)
                .unwrap_or("(not declared)")
        );
    }
    Ok(exit::CONVERGED)
}
