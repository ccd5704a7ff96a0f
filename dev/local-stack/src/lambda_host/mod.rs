//! Functions run the way AWS Lambda runs them, for tests and benchmarks that need the real
//! `bootstrap` binaries (deadlines, kills, the dead-letter queue) rather than handlers called
//! in-process:
//!
//! - [`runtime_api`]: the Runtime API a `bootstrap` polls (`invocation/next` with Lambda's
//!   headers, `response`, `error`, `init/error`);
//! - [`Instance`]: one `bootstrap` process with Lambda's environment, killed (SIGKILL) at each
//!   invocation's deadline or whenever the caller says, with its peak RSS;
//! - [`SqsHost`]: Lambda's SQS event source, polling a queue and driving up to
//!   `max_concurrency` instances, with counters and per-invocation records;
//! - [`KillPlan`]: a seeded schedule of kills at arbitrary moments.

pub mod instance;
pub mod kill_plan;
pub mod runtime_api;
pub mod sqs_host;

pub use instance::{Ending, FunctionConfig, InitFailure, Instance, Invoked, ProcessSet};
pub use kill_plan::KillPlan;
pub use sqs_host::{HostOptions, HostStats, InstanceRecord, InvocationRecord, Outcome, SqsHost};

use anyhow::Context;
use std::path::PathBuf;

/// Where cargo puts binaries of `profile` (`debug` or `release`): `$CARGO_TARGET_DIR` or the
/// workspace's `target/`.
pub fn target_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repository_root().join("target"))
        .join(profile)
}

/// The packages that ship as Lambda functions. Their bootstraps are built with these alone,
/// never together with the tests or the bench: cargo unifies features over the packages of one
/// build, and the bench's or the tests' (the core's `testing` feature, tokio's multi-threaded
/// runtime...) would then be compiled into what is measured. `make bench` and `make
/// bench-smoke` build the same set, so their builds and this one share artifacts. SAM builds
/// each function alone; `tests/lambda_host/shipped_features.rs` checks both ways.
pub const FUNCTION_PACKAGES: [&str; 2] = ["accept", "worker"];

/// Builds binary `bin` of the [`FUNCTION_PACKAGES`] with cargo (`--release` for the `release`
/// profile) and returns its path; cheap when it is up to date.
pub fn build_bootstrap(bin: &str, profile: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--quiet", "--locked", "--bin", bin])
        .args(FUNCTION_PACKAGES.iter().flat_map(|package| ["-p", package]))
        .current_dir(crate::repository_root());
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let status = command
        .status()
        .with_context(|| format!("running cargo build --bin {bin}"))?;
    anyhow::ensure!(
        status.success(),
        "cargo build --bin {bin} failed ({status})"
    );
    bootstrap(bin, profile)
}

/// The path of binary `bin` built with `profile`, if it exists.
pub fn bootstrap(bin: &str, profile: &str) -> anyhow::Result<PathBuf> {
    let binary = target_dir(profile).join(bin);
    anyhow::ensure!(
        binary.exists(),
        "{} is not built (cargo build{} -p <its package>)",
        binary.display(),
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    Ok(binary)
}
