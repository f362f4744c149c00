//! `history`: what the rack went through, read from where the controller keeps it (next to
//! the status document: a local file, or the rack's `Settings` bucket).

use super::*;
use rack_reconciler::history::{self, Event};
use rack_reconciler::reconcile::journal::Journal;

pub(crate) async fn show_history(
    cfg: Config,
    since: Option<&str>,
    param: Option<&str>,
    json: bool,
) -> Result<u8> {
    let Some(at) = cfg.history_path() else {
        bail!("no history is kept: `status_file: false` in the config (the history lives next to the status file)");
    };
    let now = std::time::SystemTime::now();
    let since = since
        .map(|t| history::since(t, now))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = store_for(&at, cfg.region.clone(), &cfg.timeouts, &Metrics::new()).await;
    let mut journal = Journal::new(Some(at.clone()), store, cfg.history.retention());
    journal
        .load(now)
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot read the history; check the path, or the controller's S3 access to it")?;
    let events = journal.select(since, param);
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else if events.is_empty() {
        println!("no events in {at}{}", filters(since.is_some(), param));
    } else {
        print!("{}", table(&events));
    }
    Ok(exit::CONVERGED)
}

fn filters(since: bool, param: Option<&str>) -> String {
    match (since, param) {
        (false, None) => String::new(),
        (true, None) => " in that time".into(),
        (false, Some(p)) => format!(" about {p}"),
        (true, Some(p)) => format!(" about {p} in that time"),
    }
}

/// One line per event: time, kind, parameters, who, how long, what.
fn table(events: &[Event]) -> String {
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            [
                e.time.clone(),
                e.kind.to_string(),
                if e.params.is_empty() {
                    "-".into()
                } else {
                    e.params.join(",")
                },
                e.actor.to_string(),
                e.duration_seconds
                    .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                    .unwrap_or_else(|| "-".into()),
                e.message.clone(),
            ]
        })
        .collect();
    let header = ["TIME", "EVENT", "PARAMETERS", "ACTOR", "TOOK", "MESSAGE"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}
