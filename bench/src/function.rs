//! A function's `bootstrap` run as Lambda runs it: a fresh process pointed at a runtime API,
//! with the environment Lambda sets.

use crate::runtime_api::RuntimeApi;
use anyhow::{Context, bail};
use bytes::Bytes;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// No step of a benchmarked function may take longer than this; past it the bench fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: &'static str,
    pub binary: PathBuf,
    /// The function's own configuration (what the template sets) and the SDK's local endpoint.
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go (its JSON log lines).
    pub log: PathBuf,
}

/// A running function process and the runtime API it talks to. Dropping it kills the process.
pub struct Running {
    child: Child,
    api: RuntimeApi,
    spawned: Instant,
    /// Whether the function is waiting in `invocation/next` (its poll was already seen).
    polling: bool,
    log: PathBuf,
}

impl Running {
    pub async fn spawn(spec: &FunctionSpec) -> anyhow::Result<Self> {
        let api = RuntimeApi::start().await?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut command = Command::new(&spec.binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", spec.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {} (is it built?)", spec.binary.display()))?;
        Ok(Self {
            child,
            api,
            spawned,
            polling: false,
            log: spec.log.clone(),
        })
    }

    /// Waits for the function to ask for work; the first time, that is the end of its init.
    /// Returns the time since the process was spawned.
    pub async fn ready(&mut self) -> anyhow::Result<Duration> {
        let polled = tokio::select! {
            polled = tokio::time::timeout(STEP_TIMEOUT, self.api.next_poll()) => polled??,
            status = self.child.wait() => bail!(
                "the function exited ({}); see {}", status?, self.log.display()
            ),
        };
        self.polling = true;
        Ok(polled - self.spawned)
    }

    /// One invocation, as Lambda makes it once the function polls: returns its duration and the
    /// function's answer.
    pub async fn invoke(&mut self, event: Bytes) -> anyhow::Result<(Duration, Bytes)> {
        if !self.polling {
            self.ready().await?;
        }
        self.polling = false;
        tokio::time::timeout(STEP_TIMEOUT, self.api.invoke(event))
            .await
            .context("the function did not answer in time")?
            .with_context(|| format!("see {}", self.log.display()))
    }

    /// The process's peak resident set (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the function has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }
}
