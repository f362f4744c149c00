//! Log set-up: `RUST_LOG` picks the level, but the AWS SDK and the HTTP stack below it never
//! log beneath `info`, whatever `RUST_LOG` says. At `debug` and `trace` they print request
//! and response bodies, and a task definition's body carries the rack API's environment
//! (its password among them) and secret-bearing labels.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogFormat;

/// Crates (by target prefix) that may log request or response contents below `info`.
pub const CAPPED_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk",
    "aws_sigv4",
    "aws_smithy",
    "aws_types",
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "rustls",
    "tower",
    "tower_http",
];

/// The cap on [`CAPPED_TARGETS`]; everything else is left to `RUST_LOG`.
pub fn caps() -> Targets {
    CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, LevelFilter::INFO)
        })
}

/// `RUST_LOG`, or `info` when it is unset or invalid.
pub fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Standard error, written above the live progress lines when they are drawn.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspended(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set (<https://no-color.org>).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (else `info`) and [`caps`].
pub fn init(format: LogFormat) {
    init_at(format, "info");
}

/// As [`init`], with `default` when `RUST_LOG` is not set (`warn` while live progress shows
/// what the info lines would say).
pub fn init_at(format: LogFormat, default: &str) {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| Stderr)
        .with_ansi(colour());
    let layer = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(env_filter(default)).with_filter(caps()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::Filter;

    #[test]
    fn sdk_targets_are_capped_at_info_and_ours_are_not() {
        let caps = caps();
        for target in [
            "aws_smithy_runtime::client::orchestrator",
            "aws_sdk_ecs::operation",
            "hyper_util::client",
            "h2::codec",
        ] {
            assert!(caps.would_enable(target, &Level::INFO), "{target}");
            assert!(!caps.would_enable(target, &Level::DEBUG), "{target}");
            assert!(!caps.would_enable(target, &Level::TRACE), "{target}");
        }
        assert!(caps.would_enable("rack_reconciler::reconcile", &Level::TRACE));
        // `Filter` is implemented: the cap composes with RUST_LOG per layer.
        fn is_filter<F: Filter<tracing_subscriber::Registry>>(_: &F) {}
        is_filter(&caps);
    }
}
