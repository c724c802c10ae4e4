//! Running the real `loadgen` binary against gateway processes.

use crate::gateway::{Gateway, TempDir, loadgen_bin};
use crate::jwt::TEST_SECRET;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a loadgen run of the suite may take before it is killed (and the test fails).
pub const LOADGEN_TIMEOUT: Duration = Duration::from_secs(240);

/// How a loadgen run ended.
#[derive(Debug)]
pub struct LoadgenRun {
    /// Exit code (`None` when killed by a signal): 0 clean, 3 thresholds missed, 1 failed.
    pub code: Option<i32>,
    /// The JSON report.
    pub report: Value,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs loadgen with `args` against `nodes` (connections round-robin) with the first node's
/// process sampled, failing on any error; returns its exit success and JSON report.
pub fn run_loadgen(nodes: &[&Gateway], args: &[&str]) -> (bool, Value) {
    let addrs: Vec<&str> = nodes.iter().map(|g| g.addr()).collect();
    let pid = nodes[0].pid().to_string();
    let mut with_pid = args.to_vec();
    with_pid.extend(["--pid", &pid]);
    run_loadgen_urls(&addrs, &with_pid)
}

/// Runs loadgen with `args` against the nodes at `addrs` (`host:port` for their v1 door, or
/// a whole `ws://` URL; round-robin), failing on any error; returns its exit success and JSON
/// report.
pub fn run_loadgen_urls(addrs: &[&str], args: &[&str]) -> (bool, Value) {
    let run = run_loadgen_full(addrs, args);
    (run.code == Some(0), run.report)
}

/// Runs loadgen like [`run_loadgen_urls`] and returns how it ended. Panics when it runs past
/// [`LOADGEN_TIMEOUT`] (it is killed) or writes no report (it crashed).
pub fn run_loadgen_full(addrs: &[&str], args: &[&str]) -> LoadgenRun {
    let dir = TempDir::new("loadgen");
    let report = dir.join("report.json");
    let mut command = Command::new(loadgen_bin());
    command.args(args);
    for addr in addrs {
        let url = if addr.starts_with("ws://") || addr.starts_with("http://") {
            addr.to_string()
        } else {
            format!("ws://{addr}/ws")
        };
        command.arg("--url").arg(url);
    }
    command
        .args([
            "--secret",
            TEST_SECRET,
            "--no-progress",
            "--max-errors",
            "0",
        ])
        .arg("--json")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("loadgen starts");
    // Drain the pipes on threads so that a chatty run cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + LOADGEN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "loadgen {args:?} still running after {LOADGEN_TIMEOUT:?}; killed. stdout:\n{}",
                stdout.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!("no report ({e}), exit {status}; stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    LoadgenRun {
        code: status.code(),
        report,
        stderr,
    }
}

/// Asserts a loadgen report has no gap, duplicate, reorder, loss or error.
pub fn assert_clean(json: &Value) {
    assert_eq!(json["gaps"], 0, "{json:#}");
    assert_eq!(json["duplicates"], 0, "{json:#}");
    assert_eq!(json["reorders"], 0, "{json:#}");
    assert_eq!(json["lost"], 0, "{json:#}");
    assert!(json["errors"].as_object().unwrap().is_empty(), "{json:#}");
}
