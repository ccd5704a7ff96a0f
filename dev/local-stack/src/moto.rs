//! A moto server process on 127.0.0.1, started through the project's launcher
//! (`dev/moto_server.py`) and stopped when dropped.

use anyhow::{Context, bail};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    process: Child,
    port: u16,
}

impl MotoServer {
    /// Starts moto on `port` (0 picks a free one) and waits until it accepts connections.
    pub fn start(port: u16) -> anyhow::Result<Self> {
        Self::start_with_env(port, &[])
    }

    /// Like [`MotoServer::start`], with extra environment for the server (fault injection).
    pub fn start_with_env(port: u16, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let root = crate::repository_root();
        let python = std::env::var("LOCAL_STACK_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|_| root.join(".venv/bin/python"));
        let mut command = Command::new(&python);
        // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
        unsafe { command.pre_exec(stop_with_parent) };
        let process = command
            .arg(root.join("dev/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting moto with {} (run `make tools` to install it)",
                    python.display()
                )
            })?;
        let mut server = Self { process, port };
        server.wait_until_ready(Duration::from_secs(30))?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_until_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "moto exited before it was ready ({status}); is port {} taken?",
                    self.port
                );
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("moto did not listen on {address} within {timeout:?}")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Asks the kernel to stop this (child) process when the process that started it dies, even by
/// SIGKILL, so that no server outlives the test or `make dev` that started it.
pub fn stop_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A port that was free a moment ago (the OS picks it; the race with other processes is small).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
