//! Progress of a change as people follow it: one line per parameter and per service (new
//! tasks running of desired, tasks draining, time since the deployment started, phase),
//! updated in place on a terminal, or printed again only when it changes elsewhere.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::status::Status;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lines updated in place (a terminal).
    Live,
    /// A line printed whenever it changes (a pipe, a file, `--no-progress`).
    Plain,
}

/// The progress lines of a status, keyed so each keeps its place: one per parameter, then one
/// per service of it.
pub fn lines(s: &Status, now: SystemTime) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in &s.parameters {
        out.insert(
            p.name.clone(),
            format!(
                "{:<22} {:<11} desired {:<8} {}",
                p.name,
                p.phase.to_string(),
                p.desired.as_deref().unwrap_or("-"),
                p.reason
            ),
        );
        for svc in &p.services {
            let elapsed = svc
                .since
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
                .unwrap_or_else(|| "-".into());
            out.insert(
                format!("{}/{}", p.name, svc.service),
                format!(
                    "  {:<20} {:<11} {}/{} running, {} draining, {} since the deployment",
                    svc.service,
                    format!("{:?}", svc.state),
                    svc.running,
                    svc.desired,
                    svc.draining,
                    elapsed
                ),
            );
        }
    }
    out
}

/// The live view being drawn, so log lines can be written above it instead of through it.
static LIVE: std::sync::Mutex<Option<MultiProgress>> = std::sync::Mutex::new(None);

/// Runs `f` (a write to the terminal) with the live lines, if any, cleared, and draws them
/// again after.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let live = LIVE.lock().ok().and_then(|l| l.clone());
    match live {
        Some(multi) => multi.suspend(f),
        None => f(),
    }
}

/// Shows the status as it changes until `stop` turns true.
pub async fn follow(
    mut status: watch::Receiver<Status>,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
) {
    let mut view = View::new(mode);
    loop {
        view.show(&status.borrow_and_update().clone());
        tokio::select! {
            changed = status.changed() => if changed.is_err() { break },
            // Elapsed times move even when nothing else does.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    view.finish();
}

struct View {
    mode: Mode,
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    shown: BTreeMap<String, String>,
}

impl View {
    fn new(mode: Mode) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        if mode == Mode::Live {
            if let Ok(mut live) = LIVE.lock() {
                *live = Some(multi.clone());
            }
        }
        View {
            mode,
            multi,
            bars: BTreeMap::new(),
            shown: BTreeMap::new(),
        }
    }

    fn show(&mut self, s: &Status) {
        let lines = lines(s, SystemTime::now());
        // A parameter or service gone from the status leaves the screen too.
        let gone: Vec<String> = self
            .shown
            .keys()
            .filter(|k| !lines.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.shown.remove(&key);
            if let Some(bar) = self.bars.remove(&key) {
                self.multi.remove(&bar);
            }
        }
        for (key, line) in lines {
            if self.shown.get(&key) == Some(&line) {
                continue;
            }
            match self.mode {
                Mode::Plain => {
                    // Elapsed times alone do not make a new line.
                    let stable = |l: &str| l.split(", ").take(2).collect::<Vec<_>>().join(", ");
                    if self.shown.get(&key).map(|l| stable(l)) != Some(stable(&line)) {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                    }
                }
                Mode::Live => {
                    let bar = match self.bars.get(&key) {
                        Some(bar) => bar.clone(),
                        None => self.add_bar(&key),
                    };
                    bar.set_message(line.clone());
                    bar.tick();
                }
            }
            self.shown.insert(key, line);
        }
    }

    /// A line for `key` in its place: after the line of the key before it (a service under
    /// its parameter), or first.
    fn add_bar(&mut self, key: &str) -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let before = self.bars.range(..key.to_string()).next_back();
        let bar = match before {
            Some((_, prev)) => self.multi.insert_after(prev, bar),
            None => self.multi.insert(0, bar),
        };
        self.bars.insert(key.to_string(), bar.clone());
        bar
    }

    fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish();
        }
        if let Ok(mut live) = LIVE.lock() {
            *live = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Phase, ServiceProgress, ServiceState};
    use crate::status::ParameterStatus;

    #[test]
    fn a_line_per_parameter_and_per_service() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Status {
            parameters: vec![ParameterStatus {
                name: "ECSExec".into(),
                desired: Some("Yes".into()),
                observed: None,
                phase: Phase::Progressing,
                reason: "Rolling".into(),
                message: String::new(),
                drift: true,
                drift_since: None,
                services: vec![ServiceProgress {
                    service: "ServiceWebApi".into(),
                    state: ServiceState::RollingOut,
                    value: Some("Yes".into()),
                    task_definition: None,
                    running: 1,
                    desired: 2,
                    draining: 2,
                    since: Some(crate::clock::rfc3339(t0)),
                }],
                pending: Vec::new(),
                conditions: Vec::new(),
                last_reconcile: None,
                recorded: None,
                last_change: None,
            }],
            ..Status::default()
        };
        let l = lines(&s, t0 + Duration::from_secs(95));
        assert!(l["ECSExec"].contains("Progressing") && l["ECSExec"].contains("Yes"));
        let web = &l["ECSExec/ServiceWebApi"];
        assert!(
            web.contains("1/2 running, 2 draining, 1m 35s since the deployment"),
            "{web}"
        );
    }
}
