//! A real `nginx` (Debian's package) in front of gateway nodes, run from the project's own
//! `deploy/nginx.conf` with the test's ports put in.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::TempDir;

/// A running nginx, stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// `deploy/nginx.conf` of this repository.
pub fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf")
}

impl Nginx {
    /// Starts nginx before `upstreams` (`host:port` of each node): the shipped config with
    /// its `server` lines replaced by these and its listen address by a free port.
    pub async fn start(upstreams: &[&str]) -> Nginx {
        Self::start_with(upstreams, true).await
    }

    /// [`Nginx::start`] without the shipped config's stickiness (its `hash` line): requests
    /// go round-robin, each to the next node.
    pub async fn start_round_robin(upstreams: &[&str]) -> Nginx {
        Self::start_with(upstreams, false).await
    }

    async fn start_with(upstreams: &[&str], sticky: bool) -> Nginx {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let shipped = std::fs::read_to_string(config_path()).expect("deploy/nginx.conf");
        let mut config = String::new();
        let mut servers_written = false;
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server 127.0.0.1:") {
                if !servers_written {
                    for u in upstreams {
                        config.push_str(&format!(
                            "        server {u} max_fails=1 fail_timeout=10s;\n"
                        ));
                    }
                    servers_written = true;
                }
                continue;
            }
            if !sticky && trimmed.starts_with("hash ") {
                continue;
            }
            if trimmed.starts_with("listen 127.0.0.1:8080") {
                config.push_str(&format!("        listen 127.0.0.1:{port} backlog=4096;\n"));
                continue;
            }
            config.push_str(line);
            config.push('\n');
        }
        assert!(
            servers_written,
            "deploy/nginx.conf has no upstream server lines"
        );
        let dir = TempDir::new("nginx");
        for sub in ["logs", "temp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let bin = std::env::var("NGINX_BIN").unwrap_or_else(|_| "nginx".into());
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin} (install nginx): {e}"));
        let nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    /// `127.0.0.1:<port>`, where clients connect.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
