//! One function instance: a `bootstrap` process with the environment Lambda gives it and a
//! Runtime API of its own, invoked one event at a time, each with a deadline it is killed at.

use super::runtime_api::{Answer, FunctionError, FunctionIdentity, RuntimeApi};
use anyhow::Context;
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};

/// How to run one function, as its template resource and Lambda's defaults describe it.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub name: String,
    /// The `bootstrap`, e.g. `target/release/worker`.
    pub binary: PathBuf,
    /// The function's environment (the template's `Environment.Variables`, the SDK's endpoint
    /// and credentials), set after Lambda's own variables, so it may override them; only
    /// `AWS_LAMBDA_RUNTIME_API` is always the host's.
    pub env: Vec<(String, String)>,
    /// The function's `Timeout`: each invocation's deadline is this long after it starts.
    pub timeout: Duration,
    /// Lambda gives an on-demand function's init 10 s; past it the instance is stopped.
    pub init_timeout: Duration,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (not enforced: compare the peak RSS with it).
    pub memory_size_mb: u32,
    /// Every instance's stdout and stderr are appended here, with a line from the host at each
    /// start and kill.
    pub log: PathBuf,
}

impl FunctionConfig {
    /// Lambda's defaults: 3 s timeout, 10 s init, 128 MB.
    pub fn new(name: &str, binary: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            binary: binary.into(),
            env: Vec::new(),
            timeout: Duration::from_secs(3),
            init_timeout: Duration::from_secs(10),
            memory_size_mb: 128,
            log: log.into(),
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds variables to the function's environment.
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        variables: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env.extend(
            variables
                .into_iter()
                .map(|(name, value)| (name.into(), value.into())),
        );
        self
    }
}

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// `/invocation/{id}/response`, before the deadline.
    Response(Bytes),
    /// `/invocation/{id}/error`, before the deadline.
    Error(FunctionError),
    /// No answer by the deadline: the host killed the process (SIGKILL), as Lambda does.
    TimedOut,
    /// Killed on purpose, before its deadline (a [`super::KillPlan`] or the caller's signal).
    Killed,
    /// The process exited (crashed) without answering.
    Exited(ExitStatus),
}

impl Ending {
    /// Whether the process is gone after this ending (the next invocation is a cold start).
    pub fn ends_the_instance(&self) -> bool {
        !matches!(self, Self::Response(_) | Self::Error(_))
    }
}

/// One invocation, as the host saw it.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub request_id: String,
    /// When the function took the event.
    pub dispatched: Instant,
    pub deadline: Instant,
    /// The deadline as the function was told it (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    /// When it answered, was killed, or was seen to have exited.
    pub ended: Instant,
    pub ending: Ending,
}

impl Invoked {
    pub fn duration(&self) -> Duration {
        self.ended.saturating_duration_since(self.dispatched)
    }

    /// Whether the function answered (response or error) strictly before its deadline.
    pub fn answered_in_time(&self) -> bool {
        matches!(self.ending, Ending::Response(_) | Ending::Error(_)) && self.ended < self.deadline
    }
}

/// Why an instance never became ready; it is stopped either way.
#[derive(Debug, Clone)]
pub enum InitFailure {
    /// It posted `/init/error` (the Rust runtime does when its handler cannot be built).
    Error(FunctionError),
    /// It had not polled for work within the init timeout.
    TimedOut(Duration),
    /// It exited during init (a missing variable makes the worker's `main` return an error).
    Exited(ExitStatus),
    /// The host could not watch it.
    Host(String),
}

impl std::fmt::Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Error(error) => write!(
                f,
                "init error {}: {}",
                error.error_type.as_deref().unwrap_or("(no type)"),
                error.message()
            ),
            Self::TimedOut(after) => write!(f, "init did not finish within {after:?}"),
            Self::Exited(status) => write!(f, "exited during init ({status})"),
            Self::Host(reason) => write!(f, "host failure during init: {reason}"),
        }
    }
}

pub struct Instance {
    id: u64,
    timeout: Duration,
    init_timeout: Duration,
    log: PathBuf,
    child: Child,
    pid: Option<u32>,
    /// A pidfd of the process: signals through it can never reach a recycled pid.
    pidfd: Option<OwnedFd>,
    api: RuntimeApi,
    spawned: Instant,
    init: Option<Duration>,
    peak_rss_kib: Option<u64>,
    alive: bool,
    invocations: u64,
}

impl Instance {
    /// Starts the process (it begins its init at once). `id` names it in the host's lines of
    /// the log and in its log stream name.
    ///
    /// The process gets SIGTERM if the thread that spawns it exits (PR_SET_PDEATHSIG fires on
    /// the spawning thread, not the process): spawn from a thread that outlives the instance,
    /// such as a test's own thread or a Tokio worker thread, not from `spawn_blocking`.
    pub async fn spawn(config: &FunctionConfig, id: u64) -> anyhow::Result<Self> {
        // Absolute, because the process starts in the binary's directory (Lambda's task root).
        let binary = std::fs::canonicalize(&config.binary).with_context(|| {
            format!("no bootstrap at {} (is it built?)", config.binary.display())
        })?;
        let api = RuntimeApi::start(&FunctionIdentity::new(&config.name)).await?;
        if let Some(parent) = config.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&config.log)
            .with_context(|| format!("opening {}", config.log.display()))?;
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .envs(lambda_environment(config, &binary, id))
            .envs(config.env.iter().map(|(name, value)| (name, value)))
            .env("AWS_LAMBDA_RUNTIME_API", api.address().to_string())
            .current_dir(binary.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
        unsafe { command.pre_exec(crate::moto::stop_with_parent) };
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let instance = Self {
            id,
            timeout: config.timeout,
            init_timeout: config.init_timeout,
            log: config.log.clone(),
            pidfd: pid.and_then(pidfd_open),
            pid,
            child,
            api,
            spawned,
            init: None,
            peak_rss_kib: None,
            alive: true,
            invocations: 0,
        };
        instance.note("start", &[("pid", pid.unwrap_or(0).to_string())]);
        Ok(instance)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether the process is running, as far as the host knows (a crash is noticed by the
    /// next invocation or [`Instance::ready`]).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Spawn to first poll, once the instance has been ready.
    pub fn init_duration(&self) -> Option<Duration> {
        self.init
    }

    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// Checks (without waiting) whether the process has exited since the host last looked, as
    /// Lambda notices an execution environment that died between invocations and replaces it.
    pub fn check_alive(&mut self) -> bool {
        if self.alive && !matches!(self.child.try_wait(), Ok(None)) {
            self.alive = false;
        }
        self.alive
    }

    /// Waits for the end of init: the function's first `GET invocation/next`. Returns the time
    /// since spawn (at once, if it was ready before). On failure the process is killed.
    pub async fn ready(&mut self) -> Result<Duration, InitFailure> {
        if let Some(init) = self.init {
            return Ok(init);
        }
        let remaining = self.init_timeout.saturating_sub(self.spawned.elapsed());
        let outcome = tokio::select! {
            biased;
            initialised = self.api.initialised() => match initialised {
                Ok(Ok(at)) => Ok(at),
                Ok(Err(error)) => Err(InitFailure::Error(error)),
                Err(err) => Err(InitFailure::Host(format!("{err:#}"))),
            },
            status = self.child.wait() => {
                self.alive = false;
                Err(match status {
                    Ok(status) => InitFailure::Exited(status),
                    Err(err) => InitFailure::Host(err.to_string()),
                })
            }
            () = tokio::time::sleep(remaining) => Err(InitFailure::TimedOut(self.init_timeout)),
        };
        match outcome {
            Ok(polled) => {
                let init = polled.saturating_duration_since(self.spawned);
                self.init = Some(init);
                Ok(init)
            }
            Err(failure) => {
                self.note("init-failed", &[("reason", failure.to_string())]);
                self.kill_now().await;
                Err(failure)
            }
        }
    }

    /// One invocation: hands `payload` to the function (waiting for its poll if it is still in
    /// init or finishing the last invocation), then waits for its answer until the deadline,
    /// `timeout` after it took the event. At the deadline, or as soon as `kill` completes, the
    /// process is killed with SIGKILL. An `Err` is the host's own failure, not the function's.
    pub async fn invoke(
        &mut self,
        payload: Bytes,
        kill: impl Future<Output = ()>,
    ) -> anyhow::Result<Invoked> {
        anyhow::ensure!(self.alive, "instance {} is not running", self.id);
        self.invocations += 1;
        let mut pending = self.api.submit(payload, self.timeout)?;
        let request_id = pending.request_id.clone();
        tokio::pin!(kill);
        let timeout = self.timeout;
        let gone_before_dispatch = |request_id: &str, ending| {
            let now = Instant::now();
            Invoked {
                request_id: request_id.to_owned(),
                dispatched: now,
                deadline: now + timeout,
                deadline_ms: 0,
                ended: now,
                ending,
            }
        };
        let dispatched = tokio::select! {
            biased;
            dispatched = pending.dispatched() => dispatched?,
            status = self.child.wait() => {
                self.alive = false;
                return Ok(gone_before_dispatch(&request_id, Ending::Exited(status?)));
            }
            () = &mut kill => {
                let invoked = gone_before_dispatch(&request_id, Ending::Killed);
                self.note("kill", &[("reason", "injected".into()), ("request_id", request_id.clone())]);
                self.kill_now().await;
                return Ok(invoked);
            }
        };
        let (ending, ended) = tokio::select! {
            biased;
            answer = pending.answer() => {
                let answer = answer?;
                let at = answer.at();
                if at >= dispatched.deadline {
                    // Lambda would have stopped it before this answer arrived.
                    (Ending::TimedOut, at)
                } else {
                    match answer {
                        Answer::Response { body, .. } => (Ending::Response(body), at),
                        Answer::Error(error) => (Ending::Error(error), at),
                    }
                }
            }
            () = tokio::time::sleep_until(dispatched.deadline.into()) => (Ending::TimedOut, Instant::now()),
            status = self.child.wait() => {
                self.alive = false;
                (Ending::Exited(status?), Instant::now())
            }
            () = &mut kill => (Ending::Killed, Instant::now()),
        };
        match &ending {
            Ending::TimedOut | Ending::Killed => {
                let reason = if matches!(ending, Ending::TimedOut) {
                    "deadline"
                } else {
                    "injected"
                };
                self.note(
                    "kill",
                    &[
                        ("reason", reason.into()),
                        ("request_id", request_id.clone()),
                    ],
                );
                self.kill_now().await;
            }
            Ending::Exited(status) => {
                self.note(
                    "exited",
                    &[
                        ("status", status.to_string()),
                        ("request_id", request_id.clone()),
                    ],
                );
            }
            Ending::Response(_) | Ending::Error(_) => {
                self.sample_peak_rss();
            }
        }
        Ok(Invoked {
            request_id,
            dispatched: dispatched.at,
            deadline: dispatched.deadline,
            deadline_ms: dispatched.deadline_ms,
            ended,
            ending,
        })
    }

    /// Reads the process's peak resident set (`VmHWM`) now and keeps the largest seen; returns
    /// it. A process that has exited can no longer be read: this keeps the last reading.
    pub fn sample_peak_rss(&mut self) -> Option<u64> {
        if self.alive
            && let Some(kib) = self.pid.and_then(peak_rss_kib)
        {
            self.peak_rss_kib = Some(self.peak_rss_kib.map_or(kib, |peak| peak.max(kib)));
        }
        self.peak_rss_kib
    }

    /// The largest `VmHWM` read so far, in KiB (read after each answered invocation and
    /// before every kill).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.peak_rss_kib
    }

    /// Kills the process now (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if self.alive {
            self.note("kill", &[("reason", "host".into())]);
        }
        self.kill_now().await;
    }

    async fn kill_now(&mut self) {
        self.sample_peak_rss();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.alive = false;
    }

    /// A second handle on the process, for [`ProcessSet`].
    fn pidfd_clone(&self) -> Option<OwnedFd> {
        self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok())
    }

    /// A line in the function's log from the host, in the spirit of Lambda's platform events.
    fn note(&self, event: &str, fields: &[(&str, String)]) {
        let mut line = serde_json::json!({
            "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64),
            "type": format!("host.{event}"),
            "instance": self.id,
        });
        for (name, value) in fields {
            line[*name] = value.clone().into();
        }
        if let Ok(mut log) = std::fs::File::options().append(true).open(&self.log) {
            let _ = writeln!(log, "{line}");
        }
    }
}

impl Drop for Instance {
    /// Kills the process and waits (briefly) until it has exited, so that it is gone when the
    /// drop returns; Tokio reaps it afterwards.
    fn drop(&mut self) {
        if self.alive
            && self.child.start_kill().is_ok()
            && let Some(fd) = &self.pidfd
        {
            pidfd_wait_exit(fd, Duration::from_secs(2));
        }
    }
}

/// The variables Lambda sets in every execution environment of a `provided.al2023` function.
fn lambda_environment(config: &FunctionConfig, binary: &Path, id: u64) -> Vec<(String, String)> {
    let stream = format!(
        "{}/[$LATEST]{:032x}",
        utc_date(SystemTime::now()),
        u128::from(super::kill_plan::SplitMix64::new(id).next_u64())
            | (u128::from(std::process::id()) << 64)
    );
    let task_root = binary
        .parent()
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("LANG", "en_US.UTF-8".into()),
        ("TZ", ":UTC".into()),
        ("_HANDLER", "bootstrap".into()),
        ("LAMBDA_TASK_ROOT", task_root.clone()),
        ("LAMBDA_RUNTIME_DIR", task_root),
        ("AWS_REGION", crate::REGION.into()),
        ("AWS_DEFAULT_REGION", crate::REGION.into()),
        ("AWS_LAMBDA_FUNCTION_NAME", config.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            config.memory_size_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", config.name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// `YYYY/MM/DD` in UTC (Lambda's log stream prefix), by Howard Hinnant's civil-from-days.
fn utc_date(at: SystemTime) -> String {
    let days = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}/{day:02}")
}

/// A process's peak resident set (`VmHWM` in `/proc/<pid>/status`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; the pid
    // is our unreaped child, so it cannot have been recycled.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) on a descriptor we own, no siginfo; a process already gone
    // gives ESRCH, and a pidfd never names another process.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Waits until the process of `fd` has exited (the pidfd turns readable), or `timeout`.
fn pidfd_wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll(2) on one pollfd that lives on this stack frame.
    unsafe { libc::poll(&mut poll, 1, millis) > 0 }
}

/// Every process of a set of instances, to kill at once and synchronously (in a `Drop`), even
/// while the instances themselves are inside tasks that are being cancelled.
#[derive(Clone, Default)]
pub struct ProcessSet(Arc<Mutex<HashMap<u64, OwnedFd>>>);

impl ProcessSet {
    pub fn track(&self, instance: &Instance) {
        if let Some(fd) = instance.pidfd_clone() {
            self.lock().insert(instance.id(), fd);
        }
    }

    /// Stops tracking an instance (it is gone or about to be dropped).
    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// SIGKILL to every tracked process (those already gone are unaffected), then waits
    /// until they have exited.
    pub fn kill_all(&self) {
        let processes = self.lock();
        for fd in processes.values() {
            pidfd_kill(fd);
        }
        for fd in processes.values() {
            pidfd_wait_exit(fd, Duration::from_secs(2));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OwnedFd>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(utc_date(at(0)), "1970/01/01");
        assert_eq!(utc_date(at(951_782_400)), "2000/02/29");
        assert_eq!(utc_date(at(1_795_000_000)), "2026/11/18");
    }

    #[test]
    fn the_peak_rss_of_this_process_is_readable() {
        let kib = peak_rss_kib(std::process::id()).expect("VmHWM of this process");
        assert!(kib > 0);
    }
}
