//! The fence a write is made under, checked immediately before every attempt to send it.
//!
//! A controller renews its lease right before a write and gets a [`Fence`]: the fencing
//! counter and the deadline by which the write must have been sent. The write runs inside
//! [`scoped`]; every attempt to send it (the SDK's own retries included, through
//! [`FenceInterceptor`], and the simulated rack's writes through [`check`]) asks whether the
//! deadline has passed, and an attempt past it is refused, counted and logged, never sent.
//!
//! The deadline is kept on two clocks and has passed when either says so: the monotonic clock
//! (which does not count the time a machine is suspended, a VM is frozen or a cgroup is
//! stopped) and the wall clock (which does). A process resumed after such a pause sees the
//! wall clock past the deadline even though its monotonic clock barely moved. A wall clock
//! stepped forward makes the check stricter, never looser; one stepped back is covered by the
//! monotonic clock.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// When a lease renewed at (`mono`, `wall`) runs out for writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Deadline {
    /// `valid` after a renewal sent at `sent` (monotonic) and `sent_wall` (wall clock).
    pub fn after(sent: Instant, sent_wall: SystemTime, valid: Duration) -> Deadline {
        Deadline {
            mono: sent + valid,
            wall: sent_wall + valid,
        }
    }

    /// Whether the deadline has passed at these readings of the two clocks.
    pub fn passed_at(&self, mono: Instant, wall: SystemTime) -> bool {
        mono >= self.mono || wall >= self.wall
    }

    /// Whether the deadline has passed now.
    pub fn passed(&self) -> bool {
        self.passed_at(Instant::now(), SystemTime::now())
    }
}

/// The lease a write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The fencing counter of the lease.
    pub fence: u64,
    pub deadline: Deadline,
}

/// The fence in scope and where a refusal is counted.
#[derive(Clone)]
struct Scope {
    fence: Fence,
    metrics: Metrics,
}

tokio::task_local! {
    static CURRENT: Scope;
}

/// Runs `write` under `fence`: every attempt it makes is checked against the deadline, and a
/// refused one is counted in `metrics`.
pub async fn scoped<F: std::future::Future>(fence: Fence, metrics: Metrics, write: F) -> F::Output {
    CURRENT.scope(Scope { fence, metrics }, write).await
}

/// Why an attempt was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub fence: u64,
    pub operation: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} not sent: the lease (fence {}) it was to be made under ran out before the attempt (the process was paused or the call took too long); a standby may hold the lease now",
            self.operation, self.fence
        )
    }
}

impl std::error::Error for Refused {}

/// Immediately before an attempt of `operation`: refused when a fence is in scope and its
/// deadline has passed. Without a fence in scope (no lease configured) every attempt goes.
pub fn check(operation: &str) -> Result<(), Refused> {
    let refused = CURRENT
        .try_with(|s| s.fence.deadline.passed().then(|| s.clone()))
        .ok()
        .flatten();
    match refused {
        None => Ok(()),
        Some(s) => {
            let fence = s.fence.fence;
            tracing::warn!(
                operation,
                fence,
                "write refused: the lease ran out before this attempt; not sent"
            );
            s.metrics.write_refused(operation);
            Err(Refused {
                fence,
                operation: operation.to_string(),
            })
        }
    }
}

/// Whether the write in scope has run out of lease (after a failed attempt: the failure is
/// the fence's, not AWS's).
pub fn lapsed() -> Option<u64> {
    CURRENT
        .try_with(|s| s.fence.deadline.passed().then_some(s.fence.fence))
        .ok()
        .flatten()
}

/// Checks the fence right before each attempt an SDK client transmits (retries included).
#[derive(Debug, Clone, Copy, Default)]
pub struct FenceInterceptor;

impl Intercept for FenceInterceptor {
    fn name(&self) -> &'static str {
        "FenceInterceptor"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "a request".into());
        check(&operation).map_err(BoxError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_clock_ends_the_lease() {
        let (t0, w0) = (Instant::now(), SystemTime::UNIX_EPOCH);
        let d = Deadline::after(t0, w0, Duration::from_secs(27));
        let s = Duration::from_secs;
        for (mono, wall, passed, case) in [
            (s(10), s(10), false, "both clocks within the lease"),
            (s(27), s(10), true, "the monotonic clock past it"),
            (
                s(1),
                s(3600),
                true,
                "suspended for an hour: only the wall clock moved",
            ),
            (
                s(30),
                s(0),
                true,
                "the wall clock stepped back: the monotonic clock still ends it",
            ),
        ] {
            assert_eq!(d.passed_at(t0 + mono, w0 + wall), passed, "{case}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_past_the_deadline_is_refused_and_counted() {
        assert_eq!(check("UpdateService"), Ok(()), "no lease, no fence");
        let fence = Fence {
            fence: 7,
            deadline: Deadline::after(Instant::now(), SystemTime::now(), Duration::from_secs(5)),
        };
        let metrics = Metrics::new();
        scoped(fence, metrics.clone(), async {
            assert_eq!(check("UpdateService"), Ok(()));
            tokio::time::advance(Duration::from_secs(6)).await;
            let refused = check("UpdateService").expect_err("past the deadline");
            assert!(refused.to_string().contains("fence 7"), "{refused}");
            assert_eq!(lapsed(), Some(7));
        })
        .await;
        assert!(
            metrics
                .render()
                .contains(r#"rack_reconciler_writes_refused_total{operation="UpdateService"} 1"#),
            "{}",
            metrics.render()
        );
    }
}
