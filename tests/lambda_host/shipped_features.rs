//! The bootstraps that ship are built without the test and bench hooks: `sam build` runs `cargo
//! lambda build --release --bin <function>` at the workspace root, so cargo selects the
//! workspace's default members and resolves features over them. Those must be exactly the
//! function packages (the set `make bench` and the Lambda host build too), and that set must not
//! turn on the core's `testing` feature (its in-memory fakes and contract suite).

use local_stack::lambda_host::FUNCTION_PACKAGES;
use std::process::Command;

const TESTING_FEATURE: &str = "newsletter feature \"testing\"";

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(local_stack::repository_root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo prints UTF-8")
}

/// Every feature of every crate in the build of `packages` (none: what cargo selects by
/// itself, as under `sam build`), without dev-dependencies, as a build resolves them.
fn features(packages: &[&str]) -> String {
    let mut args = vec![
        "tree",
        "--locked",
        "--offline",
        "--edges",
        "normal,build,features",
        "--prefix",
        "none",
    ];
    args.extend(packages.iter().flat_map(|package| ["-p", *package]));
    cargo(&args)
}

#[test]
fn sam_build_selects_exactly_the_function_packages() {
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--locked",
        "--offline",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let mut default_members: Vec<&str> = metadata["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members (cargo 1.71+)")
        .iter()
        .filter_map(|id| {
            packages
                .iter()
                .find(|package| package["id"] == *id)
                .and_then(|package| package["name"].as_str())
        })
        .collect();
    default_members.sort_unstable();
    assert_eq!(
        default_members, FUNCTION_PACKAGES,
        "the workspace's default-members (what `sam build` builds) must be the function packages"
    );
}

#[test]
fn the_shipped_bootstraps_are_built_without_the_testing_feature() {
    // The check can see the feature: the bench turns it on.
    assert!(
        features(&["bench"]).contains(TESTING_FEATURE),
        "cargo tree no longer shows the bench's `testing` feature: this test would see nothing"
    );
    for build in [&[][..], &FUNCTION_PACKAGES[..], &["accept"], &["worker"]] {
        assert!(
            !features(build).contains(TESTING_FEATURE),
            "a build of {build:?} turns on the core's `testing` feature"
        );
    }
}
