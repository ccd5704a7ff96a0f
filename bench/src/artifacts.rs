//! Figures about what gets built and run: binary sizes, the cold build, the criterion results,
//! and the first use of the TLS library's RNG.

use crate::Paths;
use crate::report::{Row, Target};
use crate::stats::median;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// The subcommand that times the RNG's first use in a fresh process (see [`rng_first_use`]).
pub const RNG_PROBE: &str = "rng-probe";

/// Prints the nanoseconds of this process's first and second RNG call.
pub fn rng_probe() -> anyhow::Result<()> {
    let mut seed = [0u8; 32];
    let mut time = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| anyhow::anyhow!("RNG failed"))?;
        Ok(started.elapsed())
    };
    let (first, second) = (time()?, time()?);
    println!("{} {}", first.as_nanos(), second.as_nanos());
    Ok(())
}

/// The first RNG call seeds AWS-LC's DRBG (with CPU jitter entropy unless aws-lc-sys was built
/// with `AWS_LC_SYS_NO_JITTER_ENTROPY=1`); a function's first TLS handshake pays it. Timed in
/// fresh processes of this binary, which links the same aws-lc-sys build as the functions.
pub async fn rng_first_use(smoke: bool) -> anyhow::Result<Vec<Row>> {
    let exe = std::env::current_exe()?;
    let (mut firsts, mut seconds) = (vec![], vec![]);
    for _ in 0..if smoke { 1 } else { 9 } {
        let output = tokio::process::Command::new(&exe)
            .arg(RNG_PROBE)
            .kill_on_drop(true)
            .output()
            .await?;
        let text = String::from_utf8(output.stdout)?;
        let mut nanos = text.split_whitespace().map(str::parse::<u64>);
        let mut next = || -> anyhow::Result<Duration> {
            Ok(Duration::from_nanos(nanos.next().context("probe output")??))
        };
        firsts.push(next()?);
        seconds.push(next()?);
    }
    Ok(vec![
        Row::new(
            "AWS-LC RNG first use (DRBG seeding)",
            "µs",
            micros(median(&firsts)),
        )
        .against("second use", micros(median(&seconds))),
    ])
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Criterion's median for the validation + serialization of one request, against parsing the
/// same body as untyped JSON. `None` until `cargo bench --bench accept_request` has run.
pub fn criterion_figures(target: &Path) -> anyhow::Result<Option<Row>> {
    #[derive(Deserialize)]
    struct Estimates {
        median: Estimate,
    }
    #[derive(Deserialize)]
    struct Estimate {
        point_estimate: f64,
    }
    let median_ns = |bench: &str| -> anyhow::Result<Option<f64>> {
        let file = target.join(format!(
            "criterion/accept_request/{bench}/new/estimates.json"
        ));
        if !file.exists() {
            return Ok(None);
        }
        let estimates: Estimates = serde_json::from_slice(&std::fs::read(&file)?)?;
        Ok(Some(estimates.median.point_estimate))
    };
    let (Some(work), Some(parse)) = (
        median_ns("validate_and_encode")?,
        median_ns("parse_json_value")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(
        Row::new(
            "accept validation + serialization per request (criterion)",
            "µs",
            work / 1e3,
        )
        .against("serde_json::Value parse", parse / 1e3)
        .target(Target::AtMost(100.0)),
    ))
}

/// Decimal megabytes, as Lambda's console and `sam build` report sizes.
fn megabytes(path: &Path) -> anyhow::Result<f64> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("{} (is it built?)", path.display()))?
        .len();
    Ok(bytes as f64 / 1e6)
}

/// Section 4: each bootstrap's size (the release profile strips them) against the floor's, for
/// this machine's build and, when `cargo lambda build --arm64` has run, for what ships to Lambda
/// (the 8 MB target is about that one: x86_64's AWS-LC carries more assembly).
pub fn sizes(binaries: &Path, target: &Path) -> anyhow::Result<Vec<Row>> {
    let floor = megabytes(&binaries.join("hello"))?;
    let mut rows = Vec::new();
    for name in ["accept", "worker"] {
        let host = megabytes(&binaries.join(name))?;
        rows.push(
            Row::new(format!("{name} bootstrap size, this host"), "MB", host)
                .against("floor", floor)
                .target(Target::AtMost(8.0)),
        );
        let shipped = target.join("lambda").join(name).join("bootstrap");
        if shipped.exists() {
            let arm64 = megabytes(&shipped)?;
            rows.push(
                Row::new(
                    format!("{name} bootstrap size, arm64 (cargo lambda)"),
                    "MB",
                    arm64,
                )
                .against("floor, this host", floor)
                .target(Target::AtMost(8.0)),
            );
        }
    }
    Ok(rows)
}

/// A cold build, timed once and kept: it takes minutes and needs no repeating per run.
#[derive(Debug, Serialize, Deserialize)]
struct ColdBuild {
    /// `cargo build --release -p accept -p worker` in an empty target directory.
    functions_seconds: f64,
    /// `cargo build --release -p lambda_runtime`: the floor's dependencies alone.
    floor_seconds: f64,
    /// `CARGO_BUILD_JOBS` during the build (empty: all cores).
    jobs: String,
}

/// Measures the cold build when `measure`, else reads the last measurement, if any.
pub async fn cold_build(paths: &Paths, measure: bool) -> anyhow::Result<Option<Vec<Row>>> {
    let record = paths.out.join("cold-build.json");
    let cold = if measure {
        let cold = ColdBuild {
            functions_seconds: time_cold_build(paths, &["accept", "worker"]).await?,
            floor_seconds: time_cold_build(paths, &["lambda_runtime"]).await?,
            jobs: std::env::var("CARGO_BUILD_JOBS").unwrap_or_default(),
        };
        std::fs::write(&record, serde_json::to_string_pretty(&cold)?)?;
        cold
    } else if record.exists() {
        serde_json::from_slice(&std::fs::read(&record)?)?
    } else {
        return Ok(None);
    };
    let jobs = if cold.jobs.is_empty() {
        "all cores".to_owned()
    } else {
        format!("{} jobs", cold.jobs)
    };
    Ok(Some(vec![
        Row::new(
            format!("cold release build, accept + worker ({jobs})"),
            "s",
            cold.functions_seconds,
        )
        .against("lambda_runtime alone", cold.floor_seconds),
    ]))
}

async fn time_cold_build(paths: &Paths, packages: &[&str]) -> anyhow::Result<f64> {
    let scratch = paths.out.join("cold-build-target");
    let _ = std::fs::remove_dir_all(&scratch);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--quiet"])
        .args(packages.iter().flat_map(|package| ["-p", package]))
        .current_dir(local_stack::repository_root())
        .env("CARGO_TARGET_DIR", &scratch)
        .kill_on_drop(true);
    let started = Instant::now();
    let status = command.status().await?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&scratch)?;
    anyhow::ensure!(status.success(), "the cold build failed ({status})");
    Ok(seconds)
}
