//! Both functions under `cargo lambda watch`, in a process group of their own so that stopping it
//! stops every process it started (cargo, the function binaries).

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Receives one readable line per notable event in the functions' logs.
pub type EventSink = std::sync::Arc<dyn Fn(String) + Send + Sync>;

pub struct CargoLambdaWatch {
    process: Child,
    endpoint: String,
}

impl CargoLambdaWatch {
    /// Starts `cargo lambda watch` on 127.0.0.1:`port` with `env` for the functions. Every output
    /// line goes to `log_path`; notable events also go to `events` as readable lines.
    pub fn start(
        port: u16,
        env: &[(String, String)],
        reload_on_change: bool,
        log_path: &Path,
        events: EventSink,
    ) -> anyhow::Result<Self> {
        let root = crate::repository_root();
        // cargo-lambda, and the zig it builds with, live in the project's venv.
        let path = format!(
            "{}:{}",
            root.join(".venv/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("cargo");
        command
            .args([
                "lambda",
                "watch",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .current_dir(&root)
            .env("PATH", path)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
        unsafe { command.pre_exec(crate::moto::stop_with_parent) };
        if !reload_on_change {
            command.arg("--ignore-changes");
        }
        let mut process = command
            .spawn()
            .context("starting `cargo lambda watch` (run `make tools`)")?;
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::sync::Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(
            std::fs::File::create(log_path)?,
        )));
        if let Some(stdout) = process.stdout.take() {
            tokio::spawn(pump(stdout, log.clone(), events.clone()));
        }
        if let Some(stderr) = process.stderr.take() {
            tokio::spawn(pump(stderr, log, events));
        }
        Ok(Self {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Waits until both functions answer (the first start compiles them).
    pub async fn wait_until_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let probes = [
            (
                "worker",
                format!("{}/2015-03-31/functions/worker/invocations", self.endpoint),
                r#"{"Records":[]}"#,
            ),
            (
                "accept",
                format!("{}/lambda-url/accept/", self.endpoint),
                "",
            ),
        ];
        for (function, url, body) in probes {
            loop {
                if let Some(status) = self.process.try_wait()? {
                    bail!("`cargo lambda watch` exited ({status}); see the function log");
                }
                anyhow::ensure!(
                    started.elapsed() < timeout,
                    "{function} did not start within {timeout:?}"
                );
                let answer = client
                    .post(&url)
                    .body(body)
                    .timeout(Duration::from_secs(600))
                    .send()
                    .await;
                // Any HTTP answer from the function itself (the accept probe gets a 404 problem).
                if let Ok(response) = answer
                    && (response.status().is_success() || response.status() == 404)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }
}

impl Drop for CargoLambdaWatch {
    fn drop(&mut self) {
        let Some(pid) = self.process.id() else { return };
        let group = -(pid as i32);
        // SAFETY: kill(2) on a process group this struct created; no memory is involved.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.process.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (a function binary that ignored SIGTERM) goes now.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.process.try_wait();
    }
}

async fn pump(
    stream: impl AsyncRead + Unpin,
    log: std::sync::Arc<tokio::sync::Mutex<tokio::fs::File>>,
    events: EventSink,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(event) = crate::log_events::readable(&line) {
            events(event);
        }
        let mut log = log.lock().await;
        let _ = log.write_all(line.as_bytes()).await;
        let _ = log.write_all(b"\n").await;
    }
}
