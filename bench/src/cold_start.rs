//! Cold start, first request, warm invocations and peak memory of one function, over several
//! fresh processes.

use crate::function::{FunctionSpec, Running};
use crate::stats::median;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Checks a function's answer, so that a fast failure never passes for a fast success.
pub type Check = fn(&[u8]) -> anyhow::Result<()>;

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Fresh processes to start; init and first-request figures are their medians.
    pub cold_runs: usize,
    /// Warm invocations after the first one, in each process.
    pub warm_invocations: usize,
}

#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Spawn to the first `GET invocation/next`.
    pub init: Duration,
    /// The first invocation, from event handed in to answer.
    pub first: Duration,
    /// Init plus first invocation: what the first caller waits for, beyond Lambda's own work.
    pub cold_caller: Duration,
    pub warm_median: Duration,
    /// Sequential warm invocations per second, as one Lambda instance serves them.
    pub warm_per_second: f64,
    /// The largest peak resident set of any run, in MiB.
    pub peak_rss_mib: f64,
}

/// Runs `plan` for the function in `spec`; `reset` runs before each fresh process, so that each
/// run starts from the same state of the local AWS server. `event` gives each invocation its
/// event, outside the timed part: the worker's must be a delivery of a task recorded afresh, or
/// every invocation after the first would find its chunk sent and send nothing.
pub async fn measure(
    spec: &FunctionSpec,
    event: impl AsyncFn() -> anyhow::Result<Bytes>,
    check: Check,
    plan: Plan,
    reset: impl AsyncFn() -> anyhow::Result<()>,
) -> anyhow::Result<ColdStart> {
    let (mut inits, mut firsts, mut cold_callers, mut warm) = (vec![], vec![], vec![], vec![]);
    let (mut warm_elapsed, mut peak_rss_kib) = (Duration::ZERO, 0);
    for _ in 0..plan.cold_runs {
        reset().await?;
        let first_event = event().await?;
        let mut function = Running::spawn(spec).await?;
        let init = function.ready().await?;
        let (first, answer) = function.invoke(first_event).await?;
        check(&answer)?;
        for _ in 0..plan.warm_invocations {
            let warm_event = event().await?;
            let started = Instant::now();
            let (took, answer) = function.invoke(warm_event).await?;
            check(&answer)?;
            warm_elapsed += started.elapsed();
            warm.push(took);
        }
        peak_rss_kib = peak_rss_kib.max(function.peak_rss_kib()?);
        inits.push(init);
        firsts.push(first);
        cold_callers.push(init + first);
    }
    Ok(ColdStart {
        init: median(&inits),
        first: median(&firsts),
        cold_caller: median(&cold_callers),
        warm_median: median(&warm),
        warm_per_second: warm.len() as f64 / warm_elapsed.as_secs_f64().max(f64::EPSILON),
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
    })
}
