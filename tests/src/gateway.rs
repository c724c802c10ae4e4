//! Running the real `gateway` binary as a child process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::jwt::{API_KEY, TEST_SECRET};
use crate::redis::RedisServer;

/// Set (to anything) to run every gateway of the suite in clustered mode on a private Redis.
pub const REDIS_ENV: &str = "E2E_REDIS";

/// How long a gateway may take to print its `listening` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of the `gateway` binary under test: `GATEWAY_BIN`, or the workspace build.
pub fn gateway_bin() -> PathBuf {
    workspace_bin("gateway", "GATEWAY_BIN")
}

/// The path of the `loadgen` binary: `LOADGEN_BIN`, or the workspace build.
pub fn loadgen_bin() -> PathBuf {
    workspace_bin("loadgen", "LOADGEN_BIN")
}

/// A binary of this workspace: `$env` when set; otherwise `name` next to the test binary's
/// profile directory (`target/<profile>/deps/e2e-xxxx` → `target/<profile>/<name>`). Panics
/// when it is missing.
fn workspace_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env}={} does not exist; build it first: cargo build -p {name}",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a parent dir")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{name} binary not found at {}; build it first: cargo build -p {name} \
         (or point {env} at it)",
        bin.display()
    );
    bin
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty, uniquely named directory.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` joined with `name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Builds the command line of a gateway process.
///
/// Defaults: `--listen 127.0.0.1:0 --log-format json --jwt-secret <TEST_SECRET>
/// --api-key <API_KEY>`. A default is left out when the same flag is given with
/// [`arg`](Self::arg) / [`flag`](Self::flag) (clap refuses repeated single-value flags), or when
/// it is removed with [`without`](Self::without).
///
/// The child runs in its own temporary working directory (so anything it writes relative to
/// it is never shared between parallel tests), with every inherited `GATEWAY_*` variable and
/// `RUST_LOG` removed.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    args: Vec<(String, Option<String>)>,
    removed: Vec<String>,
    envs: Vec<(String, String)>,
    embedded: bool,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// A builder with only the defaults.
    pub fn new() -> GatewayBuilder {
        GatewayBuilder {
            args: Vec::new(),
            removed: Vec::new(),
            envs: Vec::new(),
            embedded: false,
        }
    }

    /// Keeps the gateway on the embedded engine even under [`REDIS_ENV`] (for what only the
    /// embedded engine does, such as its SQLite archive).
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self
    }

    /// Adds `name value` (replacing the default for `name`, if any).
    pub fn arg(mut self, name: &str, value: impl ToString) -> Self {
        self.args.push((name.to_string(), Some(value.to_string())));
        self
    }

    /// Adds a flag without a value, such as `--dev`.
    pub fn flag(mut self, name: &str) -> Self {
        self.args.push((name.to_string(), None));
        self
    }

    /// Leaves out the default for `name` (for instance `--jwt-secret`).
    pub fn without(mut self, name: &str) -> Self {
        self.removed.push(name.to_string());
        self
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    fn command_line(&self) -> Vec<String> {
        let defaults: [(&str, &str); 4] = [
            ("--listen", "127.0.0.1:0"),
            ("--log-format", "json"),
            ("--jwt-secret", TEST_SECRET),
            ("--api-key", API_KEY),
        ];
        let mut out = Vec::new();
        for (name, value) in defaults {
            let overridden = self.args.iter().any(|(n, _)| n == name);
            let removed = self.removed.iter().any(|n| n == name);
            if !overridden && !removed {
                out.push(name.to_string());
                out.push(value.to_string());
            }
        }
        for (name, value) in &self.args {
            out.push(name.clone());
            if let Some(v) = value {
                out.push(v.clone());
            }
        }
        out
    }

    fn command(&self, dir: &TempDir) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(self.command_line());
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && (k.starts_with("GATEWAY_") || k == "RUST_LOG")
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.current_dir(dir.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the gateway and waits (up to [`STARTUP_TIMEOUT`]) for its `listening` log line.
    /// With [`REDIS_ENV`] set, a gateway not given `--redis-url` gets a private
    /// `redis-server` and runs in clustered mode (one node on Redis): the same tests then
    /// check the protocol on both engines.
    ///
    /// Panics, showing everything the process printed, when it exits or stays silent.
    pub async fn start(mut self) -> Gateway {
        let mut redis = None;
        if std::env::var_os(REDIS_ENV).is_some()
            && !self.embedded
            && !self.args.iter().any(|(n, _)| n == "--redis-url")
        {
            let server = RedisServer::start().await;
            self = self.arg("--redis-url", server.url());
            redis = Some(server);
        }
        let dir = TempDir::new("gw");
        let mut child = self
            .command(&dir)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", gateway_bin().display()));
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stderr = child.stderr.take().expect("stderr piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let drains = vec![
            spawn_drain(stderr, logs.clone(), tx.clone()),
            spawn_drain(stdout, logs.clone(), tx),
        ];
        let mut gw = Gateway {
            child,
            addr: String::new(),
            logs,
            drains,
            args: self.command_line(),
            _dir: dir,
            _redis: redis,
        };
        let addr = tokio::time::timeout(STARTUP_TIMEOUT, wait_listening(rx)).await;
        match addr {
            Ok(Some(addr)) => gw.addr = addr,
            Ok(None) => {
                let status = gw.wait_exit(Duration::from_secs(2)).await;
                panic!(
                    "gateway {:?} ended its output without a `listening` line (exit: {status:?}); \
                     output:\n{}",
                    gw.args,
                    gw.logs().join("\n")
                );
            }
            Err(_) => panic!(
                "gateway {:?} printed no `listening` line within {STARTUP_TIMEOUT:?}; output:\n{}",
                gw.args,
                gw.logs().join("\n")
            ),
        }
        gw
    }

    /// Runs the gateway expecting it to exit by itself (for instance on bad configuration);
    /// returns its exit status and everything it printed (stdout and stderr).
    ///
    /// Panics when it is still running after `timeout` (it is then killed).
    pub async fn run_to_exit(self, timeout: Duration) -> (ExitStatus, String) {
        let dir = TempDir::new("gw");
        let mut cmd = self.command(&dir);
        let args = self.command_line();
        let child = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn gateway");
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let mut out = String::new();
                    if let Some(mut s) = child.stdout.take() {
                        let _ = s.read_to_string(&mut out);
                    }
                    if let Some(mut s) = child.stderr.take() {
                        let _ = s.read_to_string(&mut out);
                    }
                    return Some((status, out));
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("join");
        drop(dir);
        let (status, out) =
            child.unwrap_or_else(|| panic!("gateway {args:?} still running after {timeout:?}"));
        // The same rule as for a started gateway: a panic fails the test, whatever it checks.
        if let Some(line) = out.lines().find(|l| l.contains("panicked")) {
            panic!("the gateway {args:?} panicked: {line}\n{out}");
        }
        (status, out)
    }
}

/// Asserts the contract for a configuration error: exit code 2 and exactly one line,
/// `gateway: configuration error: ...`, that contains each of `needles` (case-insensitive).
pub fn assert_config_error(status: &ExitStatus, out: &str, needles: &[&str]) {
    assert_eq!(
        status.code(),
        Some(2),
        "exit code 2 for a configuration error: {out}"
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {out}");
    assert!(
        lines[0].starts_with("gateway: configuration error: "),
        "{out}"
    );
    let lower = lines[0].to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "{needle:?} in {out}"
        );
    }
}

/// Asserts a start-up failure past the configuration: exit code 1 and a last line
/// `gateway: ...` that contains each of `needles` (the structured log may come before it).
pub fn assert_startup_error(status: &ExitStatus, out: &str, needles: &[&str]) {
    assert_eq!(
        status.code(),
        Some(1),
        "exit code 1 for a start-up failure: {out}"
    );
    let last = out
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(last.starts_with("gateway: "), "{out}");
    for needle in needles {
        assert!(last.contains(needle), "{needle:?} in {out}");
    }
}

fn spawn_drain(
    stream: impl Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }
        }
    })
}

async fn wait_listening(mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    while let Some(line) = rx.recv().await {
        if let Some(addr) = listening_addr(&line) {
            return Some(addr);
        }
    }
    None
}

/// Extracts `fields.addr` from a JSON log line whose `fields.message` is `listening`
/// (a flattened event, with `message`/`addr` at the top level, is accepted too).
fn listening_addr(line: &str) -> Option<String> {
    // The human format: `... INFO gateway: listening addr=127.0.0.1:1234 node=...`.
    if let Some(rest) = line.split(" listening ").nth(1)
        && let Some(addr) = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
    {
        return Some(addr.to_string());
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    for obj in [&v["fields"], &v] {
        if obj["message"].as_str() == Some("listening")
            && let Some(addr) = obj["addr"].as_str()
        {
            return Some(addr.to_string());
        }
    }
    None
}

/// A running gateway process, killed on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    addr: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// The threads that read its output, done when it closed both streams.
    drains: Vec<std::thread::JoinHandle<()>>,
    args: Vec<String>,
    _dir: TempDir,
    /// The private Redis of a gateway started in clustered mode by [`REDIS_ENV`].
    _redis: Option<RedisServer>,
}

impl Gateway {
    /// Starts a gateway with the defaults plus `args`, given as `["--flag", "value", ...]`
    /// pairs (use [`GatewayBuilder`] for value-less flags and environment variables).
    pub async fn start(args: &[&str]) -> Gateway {
        assert!(
            args.len().is_multiple_of(2),
            "Gateway::start takes flag/value pairs"
        );
        let mut b = GatewayBuilder::new();
        for pair in args.chunks(2) {
            b = b.arg(pair[0], pair[1]);
        }
        b.start().await
    }

    /// A builder, for flags, removals of defaults and environment variables.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::new()
    }

    /// The address it listens on, such as `127.0.0.1:40123`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command-line arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Every line it printed so far (stderr and stdout, in arrival order).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Stops the process (SIGTERM, a drain) and returns every line it printed, to the last:
    /// its output streams are read to their end. Panics when it does not exit in 30 s.
    pub async fn stop_and_logs(&mut self) -> Vec<String> {
        self.send_signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.is_some(), "the gateway did not exit on SIGTERM");
        let drains = std::mem::take(&mut self.drains);
        tokio::task::spawn_blocking(move || {
            for drain in drains {
                let _ = drain.join();
            }
        })
        .await
        .expect("join the output readers");
        self.logs()
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, ...) with the `kill` command.
    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Every test fails when a gateway panicked, whatever it asserted.
        if !std::thread::panicking() {
            let logs = self.logs();
            if let Some(line) = logs.iter().find(|l| l.contains("panicked")) {
                panic!("the gateway at {} panicked: {line}", self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:4000"},"target":"gateway"}"#;
        assert_eq!(listening_addr(line).as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(listening_addr(r#"{"fields":{"message":"other"}}"#), None);
        assert_eq!(listening_addr("not json"), None);
    }

    #[test]
    fn overridden_defaults_are_left_out() {
        let args = GatewayBuilder::new()
            .arg("--listen", "127.0.0.1:9")
            .without("--api-key")
            .flag("--dev")
            .command_line();
        assert_eq!(args.iter().filter(|a| *a == "--listen").count(), 1);
        assert!(args.contains(&"127.0.0.1:9".to_string()));
        assert!(!args.contains(&"--api-key".to_string()));
        assert!(args.contains(&"--dev".to_string()));
        assert!(args.contains(&"--jwt-secret".to_string()));
    }
}
