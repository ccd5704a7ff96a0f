//! AWS's DynamoDB Local, a Java server that serves DynamoDB to the local stack, the integration
//! tests and the bench (moto serves SQS and SES). It is installed by
//! `dev/install-dynamodb-local.sh` (`make tools`) and holds its tables in memory. Unlike moto's
//! DynamoDB it behaves as DynamoDB does where the task store depends on it: condition checks,
//! transactions and their cancellation reasons, table-name rules.
//!
//! A JVM takes ~3 s and ~110 MB to start, so the tests share one per test process
//! ([`shared_endpoint`]) with a table of their own each ([`unique_table_name`]).

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where `make tools` installs it, under the repository root.
const INSTALL_DIR: &str = ".venv/dynamodb-local";
/// How long it may take to answer after it was started (~3 s here).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Fresh ports to try when the one picked was taken before the JVM could bind it.
const START_ATTEMPTS: usize = 3;

/// A DynamoDB Local process, stopped when dropped.
pub struct DynamoDbLocal {
    process: Child,
    port: u16,
}

enum Start {
    Ready(DynamoDbLocal),
    Exited(ExitStatus),
}

impl DynamoDbLocal {
    /// Starts DynamoDB Local on `port` (0 picks a free one) and waits until it answers DynamoDB
    /// requests. Its output goes to `log`, truncated first.
    ///
    /// It listens on every interface of the port (it has no option to bind one address); clients
    /// use 127.0.0.1. Like moto, it is also stopped when the thread that started it exits
    /// (`PR_SET_PDEATHSIG`): start it from a thread that outlives it, not from a blocking pool.
    pub fn start(port: u16, log: &Path) -> anyhow::Result<Self> {
        let attempts = if port == 0 { START_ATTEMPTS } else { 1 };
        let mut attempt = 1;
        loop {
            let port = if port == 0 {
                crate::moto::free_port()?
            } else {
                port
            };
            match Self::start_on(port, log)? {
                Start::Ready(server) => return Ok(server),
                // A port picked free can be taken in the seconds before the JVM binds it (by a
                // moto another test starts, say): it then exits at once, and another port will do.
                Start::Exited(_) if attempt < attempts => attempt += 1,
                Start::Exited(status) => bail!(
                    "DynamoDB Local exited before it was ready ({status}); is port {port} taken? \
                     See {}",
                    log.display()
                ),
            }
        }
    }

    fn start_on(port: u16, log: &Path) -> anyhow::Result<Start> {
        let dir = install_dir();
        let jar = dir.join("DynamoDBLocal.jar");
        if !jar.is_file() {
            bail!(
                "DynamoDB Local is not installed: no {} (run `make tools`)",
                jar.display()
            );
        }
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new("java");
        // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
        unsafe { command.pre_exec(crate::moto::stop_with_parent) };
        let process = command
            .arg(format!(
                "-Djava.library.path={}",
                dir.join("DynamoDBLocal_lib").display()
            ))
            .arg("-jar")
            .arg(&jar)
            // -disableTelemetry always: without it, it sends start-up telemetry to AWS.
            // -sharedDb: one set of tables for every client; without it each access key and
            // region has its own, and a developer's `aws dynamodb scan` would find no table.
            .args(["-inMemory", "-sharedDb", "-disableTelemetry"])
            .args(["-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting DynamoDB Local with `java` (run `make tools` to install Java)")?;
        let mut server = Self { process, port };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = server.process.try_wait()? {
                return Ok(Start::Exited(status));
            }
            if answers_as_dynamodb(address) {
                return Ok(Start::Ready(server));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "DynamoDB Local did not answer on {address} within {START_TIMEOUT:?}; see {}",
            log.display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The installation directory: `DYNAMODB_LOCAL_DIR`, or where `make tools` puts it.
fn install_dir() -> PathBuf {
    std::env::var_os("DYNAMODB_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repository_root().join(INSTALL_DIR))
}

/// Whether the server on `address` answers an unsigned request as DynamoDB does (it rejects it).
/// An open port alone would not do: another server may hold the port this one failed to bind.
fn answers_as_dynamodb(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(16 * 1024).read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).contains("MissingAuthenticationToken")
}

/// The endpoint of one DynamoDB Local for this whole process, started on first use (which blocks
/// the calling thread for the ~3 s it takes). Each user needs tables of its own: see
/// [`unique_table_name`]. Its log is `target/dynamodb-local.log`.
///
/// It is stopped when the process exits: by an `atexit` handler when the process exits normally
/// (so that it is gone before `cargo test` returns), and by `PR_SET_PDEATHSIG` otherwise. That
/// signal follows the *thread* that started the server, so a thread that lives as long as the
/// process starts it: a test's thread would take it down when that test ended.
pub fn shared_endpoint() -> anyhow::Result<String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED
        .get_or_init(start_shared)
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The pid of the shared server, for the `atexit` handler (0: none).
static SHARED_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn stop_shared() {
    let pid = SHARED_PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signals and reaps our own child, whose `Child` is never waited on (it stays in a
        // parked thread), so that pid cannot have been reused. No memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

// Errors as strings: the result is kept for every later caller, and anyhow's error is not Clone.
fn start_shared() -> Result<String, String> {
    let log = crate::repository_root().join("target/dynamodb-local.log");
    // SAFETY: registers a handler that only makes two system calls.
    if unsafe { libc::atexit(stop_shared) } != 0 {
        eprintln!("DynamoDB Local: atexit failed; it will stop on PR_SET_PDEATHSIG only");
    }
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("dynamodb-local".into())
        .spawn(move || match DynamoDbLocal::start(0, &log) {
            Ok(server) => {
                SHARED_PID.store(server.process.id() as i32, Ordering::SeqCst);
                let _ = ready.send(Ok(server.endpoint()));
                // Never returns and never drops `server`: this thread is its parent.
                loop {
                    std::thread::park();
                }
            }
            Err(err) => {
                let _ = ready.send(Err(format!("{err:#}")));
            }
        })
        .map_err(|err| format!("starting the DynamoDB Local thread: {err}"))?;
    started
        .recv()
        .map_err(|_| "the DynamoDB Local thread ended before it reported".to_owned())?
}

/// `base` made unique in this process (`base-1`, `base-2`, ...), for tables in a shared
/// DynamoDB Local. DynamoDB table names are 3 to 255 of `[a-zA-Z0-9_.-]`.
pub fn unique_table_name(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{base}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends DynamoDB Local `rounds` of the kinds of request a task store makes (conditional puts,
/// one refused, updates, consistent reads, transactions), on a scratch table. A JVM answers its
/// first requests slowly while it loads and compiles its code: ~200 ms for the first put here,
/// ~13 ms for the next ten, ~2 ms after a thousand. A benchmark would count that as the
/// functions' own time.
pub async fn warm_up(dynamodb: &aws_sdk_dynamodb::Client, rounds: usize) -> anyhow::Result<()> {
    let table = unique_table_name("warm-up");
    crate::provision::create_tasks_table(dynamodb, &table).await?;
    let one = || AttributeValue::N("1".into());
    for round in 0..rounds {
        let key = AttributeValue::S(format!("task-{round}"));
        let put = || {
            dynamodb
                .put_item()
                .table_name(&table)
                .item("pk", key.clone())
                .item("count", one())
                .condition_expression("attribute_not_exists(pk)")
                .send()
        };
        put().await.context("warming up DynamoDB Local")?;
        if put().await.is_ok() {
            bail!("DynamoDB Local accepted a conditional put it should have refused");
        }
        dynamodb
            .update_item()
            .table_name(&table)
            .key("pk", key.clone())
            .update_expression("ADD #count :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", one())
            .send()
            .await?;
        dynamodb
            .get_item()
            .table_name(&table)
            .key("pk", key.clone())
            .consistent_read(true)
            .send()
            .await?;
        let claim = Put::builder()
            .table_name(&table)
            .item("pk", AttributeValue::S(format!("claim-{round}")))
            .condition_expression("attribute_not_exists(pk)")
            .build()?;
        let count = Update::builder()
            .table_name(&table)
            .key("pk", key)
            .update_expression("ADD #count :one")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", one())
            .build()?;
        dynamodb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(claim).build())
            .transact_items(TransactWriteItem::builder().update(count).build())
            .send()
            .await?;
    }
    dynamodb.delete_table().table_name(&table).send().await?;
    Ok(())
}
