//! The contract for callers, fuzzed: schemathesis generates requests from `openapi.yaml`, valid and
//! invalid ones, sends them to the accept function under `cargo lambda watch` on the local stack,
//! and checks every answer against the spec. The worker is not fed: only accept and local AWS take
//! part.

use local_stack::repository_root;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Fixed, so that a run is repeatable: the same seed generates the same requests.
const SEED: &str = "1";
/// Test cases per operation and phase; about 500 requests in all, ~10 s on 2 cores.
const MAX_EXAMPLES: &str = "50";
/// The run ends here whatever it is doing (it takes a fraction of it).
const LIMIT: Duration = Duration::from_secs(240);
/// Every answer: not a 5xx (locally nothing is unavailable, so not even the documented 503s), a
/// documented status with its documented content type, headers and body; methods the spec does not
/// list are 405 with an `Allow` naming the ones it does. Not run: the authentication checks
/// (nothing authenticates locally: the IAM authorizer is API Gateway's) and
/// positive_data_acceptance (a generated Idempotency-Key reused with another newsletter is a
/// documented 422, not a valid request refused).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,unsupported_method,\
                      allow_header_conformance";

#[tokio::test]
async fn every_answer_of_the_accept_function_conforms_to_openapi_yaml() {
    let stack = super::start_stack("contract", 360).await;
    let root = repository_root();
    let newsletters_url = stack.newsletters_url();
    let base_url = newsletters_url
        .strip_suffix(accept::NEWSLETTERS_PATH)
        .expect("the newsletters URL ends with its path");
    // Schemathesis keeps its caches and replay records in its working directory.
    let workdir = root.join("target/e2e/schemathesis");
    std::fs::create_dir_all(&workdir).unwrap();
    let spec = root.join("openapi.yaml");

    let mut command = tokio::process::Command::new(root.join(".venv/bin/schemathesis"));
    command
        .arg("run")
        .arg(&spec)
        .args([
            "--url",
            base_url,
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
        ])
        .args(["--checks", CHECKS])
        // One worker, no example database: the same requests in the same order on every run.
        .args(["--workers", "1", "--generation-database", "none"])
        // No made-up Authorization headers: locally nothing reads them.
        .args([
            "--generation-with-security-parameters",
            "false",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", root.join("tests/e2e"))
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
    unsafe { command.pre_exec(local_stack::moto::stop_with_parent) };
    let started = Instant::now();
    let child = command
        .spawn()
        .expect("schemathesis starts (run `make tools`)");
    // On timeout the child is dropped, and with it killed.
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {LIMIT:?}"))
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let report_path = workdir.join("report.txt");
    std::fs::write(&report_path, report.as_bytes()).unwrap();
    eprintln!(
        "schemathesis: {} in {:.1?} (report: {})",
        report
            .lines()
            .find(|line| line.contains(" generated, "))
            .unwrap_or("no summary")
            .trim(),
        started.elapsed(),
        report_path.display()
    );
    assert!(
        output.status.success(),
        "schemathesis found answers that break openapi.yaml ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains(" passed"),
        "schemathesis ran no test case:\n{report}"
    );
}
