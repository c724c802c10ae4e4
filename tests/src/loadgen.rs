//! Running the real `loadgen` binary against gateway processes.

use crate::gateway::{Gateway, TempDir, loadgen_bin};
use crate::jwt::TEST_SECRET;
use serde_json::Value;
use std::process::Command;

/// Runs loadgen with `args` against `nodes` (connections round-robin) with the first node's
/// process sampled, failing on any error; returns its exit success and JSON report.
pub fn run_loadgen(nodes: &[&Gateway], args: &[&str]) -> (bool, Value) {
    let addrs: Vec<&str> = nodes.iter().map(|g| g.addr()).collect();
    let pid = nodes[0].pid().to_string();
    let mut with_pid = args.to_vec();
    with_pid.extend(["--pid", &pid]);
    run_loadgen_urls(&addrs, &with_pid)
}

/// Runs loadgen with `args` against the nodes at `addrs` (`host:port`, round-robin), failing
/// on any error; returns its exit success and JSON report.
pub fn run_loadgen_urls(addrs: &[&str], args: &[&str]) -> (bool, Value) {
    let dir = TempDir::new("loadgen");
    let report = dir.join("report.json");
    let mut command = Command::new(loadgen_bin());
    command.args(args);
    for addr in addrs {
        command.arg("--url").arg(format!("ws://{addr}/ws"));
    }
    let output = command
        .args([
            "--secret",
            TEST_SECRET,
            "--no-progress",
            "--max-errors",
            "0",
        ])
        .arg("--json")
        .arg(&report)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let json: Value = serde_json::from_str(&text).expect("report is JSON");
    (output.status.success(), json)
}

/// Asserts a loadgen report has no gap, duplicate, reorder, loss or error.
pub fn assert_clean(json: &Value) {
    assert_eq!(json["gaps"], 0, "{json:#}");
    assert_eq!(json["duplicates"], 0, "{json:#}");
    assert_eq!(json["reorders"], 0, "{json:#}");
    assert_eq!(json["lost"], 0, "{json:#}");
    assert!(json["errors"].as_object().unwrap().is_empty(), "{json:#}");
}
