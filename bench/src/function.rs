//! A function's `bootstrap` run as Lambda runs it: a fresh process pointed at a runtime API,
//! with the environment Lambda sets (local-stack's Lambda host).

use anyhow::{Context, bail};
use bytes::Bytes;
use local_stack::lambda_host::{Ending, FunctionConfig, Instance};
use std::path::PathBuf;
use std::time::Duration;

/// The bench's own cap, not a template value: no function's init may take longer, nor may an
/// invocation of the floor or of accept (whose template `Timeout` is shorter; it answers in
/// milliseconds here). The worker's invocations get its template `Timeout` instead
/// ([`FunctionSpec::timeout`]).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: &'static str,
    pub binary: PathBuf,
    /// The function's own configuration (what the template sets) and the SDK's local endpoint.
    pub env: Vec<(String, String)>,
    /// Each invocation's deadline is this long after it starts (the worker plans its sends by
    /// it); past it the function is killed and the bench fails.
    pub timeout: Duration,
    /// Where its stdout and stderr go (its JSON log lines).
    pub log: PathBuf,
}

/// A running function process and the runtime API it talks to. Dropping it kills the process.
pub struct Running {
    instance: Instance,
    log: PathBuf,
}

impl Running {
    pub async fn spawn(spec: &FunctionSpec) -> anyhow::Result<Self> {
        let mut config = FunctionConfig::new(spec.name, &spec.binary, &spec.log)
            .timeout(spec.timeout)
            .env(spec.env.iter().cloned());
        config.init_timeout = STEP_TIMEOUT;
        Ok(Self {
            instance: Instance::spawn(&config, 1).await?,
            log: spec.log.clone(),
        })
    }

    /// Waits for the function to ask for work for the first time: the end of its init.
    /// Returns the time since the process was spawned.
    pub async fn ready(&mut self) -> anyhow::Result<Duration> {
        match self.instance.ready().await {
            Ok(init) => Ok(init),
            Err(failure) => bail!("{failure}; see {}", self.log.display()),
        }
    }

    /// One invocation, as Lambda makes it once the function polls: returns its duration (from
    /// the function taking the event to its answer) and the function's answer.
    pub async fn invoke(&mut self, event: Bytes) -> anyhow::Result<(Duration, Bytes)> {
        self.ready().await?;
        let invoked = self.instance.invoke(event, std::future::pending()).await?;
        let duration = invoked.duration();
        match invoked.ending {
            Ending::Response(body) => Ok((duration, body)),
            Ending::Error(error) => bail!(
                "invocation {} failed: {}; see {}",
                invoked.request_id,
                error.message(),
                self.log.display()
            ),
            other => bail!(
                "invocation {} ended {other:?}; see {}",
                invoked.request_id,
                self.log.display()
            ),
        }
    }

    /// The process's peak resident set (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&mut self) -> anyhow::Result<u64> {
        self.instance
            .sample_peak_rss()
            .context("no VmHWM in /proc/<pid>/status")
    }
}
