//! A private `redis-server` per test, on a free port, that the test can pause, kill and
//! restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::TempDir;

/// A running `redis-server` (no persistence unless asked), killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra arguments (they override the defaults).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn().await;
        server
    }

    /// Starts a server that logs every write to its append-only file before answering
    /// (`appendonly yes`, `appendfsync always`): a SIGKILL loses nothing it acknowledged.
    pub async fn start_durable() -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin} (install redis-server): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command (words separated by spaces) through a fresh fred client and
    /// returns its reply as text (see [`reply_text`]): `ERR <why>` when Redis refused it,
    /// empty when the server did not answer within 5 s.
    pub async fn command(&self, line: &str) -> String {
        match tokio::time::timeout(Duration::from_secs(5), query(self.port, line)).await {
            Ok(Ok(value)) => reply_text(value),
            Ok(Err(e))
                if e.kind() == &fred::error::ErrorKind::Unknown
                    || e.kind() == &fred::error::ErrorKind::IO
                    || e.kind() == &fred::error::ErrorKind::Timeout =>
            {
                String::new()
            }
            Ok(Err(e)) => format!("ERR {}", e.details()),
            Err(_) => String::new(),
        }
    }

    /// Waits until every replica of this primary has acknowledged all it was sent
    /// (`INFO replication`: each `slaveN` line's `offset` equals `master_repl_offset`).
    pub async fn wait_replicas_synced(&self, within: Duration) {
        crate::eventually("replicas acknowledged every write", within, async || {
            let info = self.command("INFO replication").await;
            let top = info
                .lines()
                .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
                .map(|o| format!("offset={o}"));
            let replicas: Vec<&str> = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("ip="))
                .collect();
            top.is_some_and(|top| {
                !replicas.is_empty()
                    && replicas
                        .iter()
                        .all(|l| l.trim().split(',').any(|kv| kv == top))
            })
        })
        .await;
    }

    async fn ping(&self) -> bool {
        self.command("PING").await == "PONG"
    }

    /// Sends `signal` to the server; panics when it is not running or the signal fails.
    fn signal(&self, signal: &str) -> u32 {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = child.id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
        pid
    }

    /// Whether the process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
    fn stopped(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let after = stat.rsplit_once(')')?.1;
                after.split_whitespace().next().map(|s| s == "T")
            })
            .unwrap_or(false)
    }

    fn wait_state(pid: u32, stopped: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Self::stopped(pid) != stopped {
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} did not {}",
                if stopped { "stop" } else { "continue" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers. Returns once
    /// the process is seen stopped.
    pub fn pause(&self) {
        let pid = self.signal("STOP");
        Self::wait_state(pid, true);
    }

    /// Thaws a paused server (SIGCONT). Returns once the process is seen running.
    pub fn resume(&self) {
        let pid = self.signal("CONT");
        Self::wait_state(pid, false);
    }

    /// Kills the server with SIGKILL and waits for it to be gone; [`start_again`] brings it
    /// back on the same port and directory.
    ///
    /// [`start_again`]: RedisServer::start_again
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("reaping redis-server");
        }
    }

    /// Starts a killed server again with what its persistence kept.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn().await;
    }

    /// Kills the server with SIGKILL and starts it again on the same port and directory: it
    /// comes back with what its persistence kept (nothing, by default).
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Kills the server (its data is gone) and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever persistence wrote is gone too.
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A real Redis Cluster: `primaries` × (1 + `replicas`) `redis-server --cluster-enabled yes`
/// processes joined by `redis-cli --cluster create` (slots split evenly over the primaries),
/// every one killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    servers: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three primaries without replicas.
    pub async fn start() -> RedisCluster {
        Self::start_with(3, 0).await
    }

    /// Starts `primaries` primaries with `replicas` replicas each and waits until every node
    /// reports `cluster_state:ok`.
    pub async fn start_with(primaries: usize, replicas: usize) -> RedisCluster {
        let mut servers = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let port = free_cluster_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: TempDir::new("redis-cluster"),
                extra: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            };
            server.spawn().await;
            servers.push(server);
        }
        let cluster = RedisCluster { servers };
        let mut args: Vec<String> = vec!["create".into()];
        args.extend(
            cluster
                .servers
                .iter()
                .map(|s| format!("127.0.0.1:{}", s.port)),
        );
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli_cluster(&args).await;
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster
            .wait_replicas(primaries, Duration::from_secs(30))
            .await;
        cluster
    }

    /// Waits until `primaries` live servers are primaries and every other live one is a
    /// replica whose link to its primary is up.
    pub async fn wait_replicas(&self, primaries: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut masters = 0;
            let mut linked = true;
            for s in self.servers.iter().filter(|s| s.child.is_some()) {
                let info = s.command("INFO replication").await;
                if info.contains("role:master") {
                    masters += 1;
                } else {
                    linked &= info.contains("master_link_status:up");
                }
            }
            if masters == primaries && linked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replication not up within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The live primaries.
    pub async fn primaries(&self) -> Vec<&RedisServer> {
        let mut out = Vec::new();
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            if s.command("ROLE").await.contains("master") {
                out.push(s);
            }
        }
        out
    }

    /// Waits until every live node says `cluster_state:ok` and every replica is in sync.
    pub async fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for s in self.servers.iter().filter(|s| s.child.is_some()) {
                ok &= s.command("CLUSTER INFO").await.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster is not ok within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis-cluster://<first>?node=<second>&node=…` (fred's form).
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.servers[0].port);
        for (i, s) in self.servers.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", s.port));
        }
        url
    }

    /// Every server, primaries and replicas.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The live server that is the primary of `slot` now, as the cluster says.
    pub async fn primary_of(&self, slot: u16) -> &RedisServer {
        for s in self.primaries().await {
            let ranges = self.slots_of(s).await;
            if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)) {
                return s;
            }
        }
        panic!("no live primary owns slot {slot}");
    }

    /// Moves `slots` hash slots from primary `from` to primary `to` with `redis-cli --cluster
    /// reshard` (the lowest of `from`'s slots first; their keys migrate while the cluster
    /// serves), then waits until the cluster is ok.
    pub async fn reshard(&self, slots: usize, from: &RedisServer, to: &RedisServer) {
        let from_id = bulk(&from.command("CLUSTER MYID").await).to_owned();
        let to_id = bulk(&to.command("CLUSTER MYID").await).to_owned();
        let node = format!("127.0.0.1:{}", from.port);
        let slots = slots.to_string();
        redis_cli_cluster(&[
            "reshard",
            &node,
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            &slots,
            "--cluster-yes",
        ])
        .await;
        self.wait_ok(Duration::from_secs(30)).await;
    }

    /// Kills the primary of `slot` (SIGKILL) and promotes its replica with `CLUSTER FAILOVER
    /// TAKEOVER` (what the cluster would do by itself after the node timeout, at once);
    /// returns the new primary's port once the cluster is ok again.
    pub async fn kill_primary_and_promote(&mut self, slot: u16) -> u16 {
        let primary = self.primary_of(slot).await;
        let port = primary.port;
        let replica = self.replica_of(primary).await.port;
        let dead = self.servers.iter_mut().find(|s| s.port == port).unwrap();
        if let Some(mut child) = dead.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let new = self.servers.iter().find(|s| s.port == replica).unwrap();
        // A stopped replica (the test may have frozen it) must run to take over.
        new.resume();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = new.command("CLUSTER FAILOVER TAKEOVER").await;
            if reply == "OK" || new.command("ROLE").await.contains("master") {
                break;
            }
            assert!(Instant::now() < deadline, "failover refused: {reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !new.command("ROLE").await.contains("master") {
            assert!(Instant::now() < deadline, "replica not promoted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ok(Duration::from_secs(30)).await;
        replica
    }

    /// A coordinated failover: the replica of the primary of `slot` catches up, then takes
    /// over (`CLUSTER FAILOVER`); the old primary becomes its replica. Returns the new
    /// primary's port.
    pub async fn manual_failover(&self, slot: u16) -> u16 {
        let primary = self.primary_of(slot).await;
        let replica = self.replica_of(primary).await;
        let reply = replica.command("CLUSTER FAILOVER").await;
        assert_eq!(reply, "OK", "CLUSTER FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        // Done when both sides agree: the replica is promoted and the old primary has taken
        // the new configuration (until then it still claims the slots in its own view).
        while !replica.command("ROLE").await.contains("master")
            || primary.command("ROLE").await.contains("master")
        {
            assert!(Instant::now() < deadline, "replica not promoted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ok(Duration::from_secs(30)).await;
        replica.port
    }

    /// The live primary holding a key that matches `pattern` (a `SCAN` pattern), with the
    /// key and its slot.
    pub async fn find_key(&self, pattern: &str) -> Option<(&RedisServer, String, u16)> {
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            if !s.command("ROLE").await.contains("master") {
                continue;
            }
            let reply = s
                .command(&format!("SCAN 0 MATCH {pattern} COUNT 100000"))
                .await;
            // The cursor, then the keys.
            let key = reply.lines().skip(1).find(|l| !l.is_empty());
            if let Some(key) = key {
                let slot = s.command(&format!("CLUSTER KEYSLOT {key}")).await;
                let slot = slot.trim().parse().ok()?;
                return Some((s, key.to_owned(), slot));
            }
        }
        None
    }

    /// The slot ranges `server` serves as a primary.
    pub async fn slots_of(&self, server: &RedisServer) -> Vec<(u16, u16)> {
        let nodes = server.command("CLUSTER NODES").await;
        let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
            return Vec::new();
        };
        me.split(' ')
            .skip(8)
            .filter_map(|range| {
                let mut parts = range.splitn(2, '-');
                let a = parts.next()?.parse().ok()?;
                let b = parts.next().map_or(Some(a), |b| b.parse().ok())?;
                Some((a, b))
            })
            .collect()
    }

    /// The replica of the primary `primary`, as the primary's `CLUSTER NODES` says (the
    /// replica itself may be frozen).
    pub async fn replica_of(&self, primary: &RedisServer) -> &RedisServer {
        let id = bulk(&primary.command("CLUSTER MYID").await).to_owned();
        let nodes = primary.command("CLUSTER NODES").await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() > 3 && fields[3] == id && fields[2].contains("slave") {
                let port = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.split('@').next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(s) = self.servers.iter().find(|s| Some(s.port) == port) {
                    return s;
                }
            }
        }
        panic!("primary {} ({id}) has no replica: {nodes}", primary.port)
    }
}

/// Runs `redis-cli --cluster <args>`, failing the test with its output when it fails.
async fn redis_cli_cluster(args: &[&str]) {
    let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
    let out = tokio::process::Command::new(&cli)
        .arg("--cluster")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {cli} (install redis-tools): {e}"));
    assert!(
        out.status.success(),
        "redis-cli --cluster {} failed: {}{}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text of a one-line bulk string reply (`$40\r\n<text>\r\n`).
fn bulk(reply: &str) -> &str {
    reply.trim()
}

/// Runs one command on the server at `port` with a client of its own (no retries).
async fn query(port: u16, line: &str) -> Result<fred::types::Value, fred::error::Error> {
    use fred::interfaces::ClientLike;
    use fred::prelude::{Builder, Config};
    use fred::types::CustomCommand;
    let config = Config::from_url(&format!("redis://127.0.0.1:{port}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(4))
        .build()?;
    client.init().await?;
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default().to_owned();
    let args: Vec<String> = words.map(str::to_owned).collect();
    let reply = client
        .custom(CustomCommand::new(name, None::<u16>, false), args)
        .await;
    let _ = client.quit().await;
    reply
}

/// A reply as text: strings as they are, numbers in decimal, nil as nothing, arrays and maps
/// one element per line (nested ones flattened).
pub fn reply_text(value: fred::types::Value) -> String {
    use fred::types::Value;
    match value {
        Value::Null | Value::Queued => String::new(),
        Value::Integer(n) => n.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::String(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::Array(items) => items
            .into_iter()
            .map(reply_text)
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [reply_text(k.into()), reply_text(v)])
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The Redis the cross-node tests run on: one `redis-server`, or with `E2E_REDIS_CLUSTER`
/// set, a three-primary Redis Cluster.
#[derive(Debug)]
pub enum Redis {
    /// One server.
    Single(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

/// The variable that makes [`Redis::start`] start a Redis Cluster.
pub const REDIS_CLUSTER_ENV: &str = "E2E_REDIS_CLUSTER";

impl Redis {
    /// One server, or a three-primary cluster with [`REDIS_CLUSTER_ENV`] set.
    pub async fn start() -> Redis {
        if std::env::var_os(REDIS_CLUSTER_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            Redis::Cluster(RedisCluster::start().await)
        } else {
            Redis::Single(RedisServer::start().await)
        }
    }

    /// The URL for `--redis-url`.
    pub fn url(&self) -> String {
        match self {
            Redis::Single(s) => s.url(),
            Redis::Cluster(c) => c.url(),
        }
    }
}

impl Redis {
    /// Sends one command to every server (each primary and replica of a cluster); returns
    /// their replies.
    pub async fn command_all(&self, line: &str) -> Vec<String> {
        match self {
            Redis::Single(s) => vec![s.command(line).await],
            Redis::Cluster(c) => {
                let mut out = Vec::new();
                for s in c.servers() {
                    out.push(s.command(line).await);
                }
                out
            }
        }
    }
}

/// Anything a gateway can be pointed at with `--redis-url`.
pub trait RedisUrl {
    /// The URL.
    fn redis_url(&self) -> String;
}

impl RedisUrl for RedisServer {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisUrl for RedisCluster {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisUrl for Redis {
    fn redis_url(&self) -> String {
        self.url()
    }
}
