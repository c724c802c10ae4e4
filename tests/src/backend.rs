//! The app's backend the proxy tests run: `tests/backend/backend.mjs`, a real Node `http`
//! server in its own process, which answers the gateway's proxy requests as an app written for
//! Centrifugo's proxies would, and which the test can make slow, failing, down or hostile
//! through its control port (see the script's header).

use crate::http::{HttpResponse, http};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running backend; killed when dropped.
#[derive(Debug)]
pub struct Backend {
    proxy: String,
    control: String,
    _child: Child,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("backend/backend.mjs")
}

impl Backend {
    /// Starts the backend on free ports.
    pub async fn start() -> Backend {
        let mut child = Command::new("node")
            .arg(script())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tests/backend/backend.mjs (install Node.js)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(crate::secs(20), lines.next_line())
            .await
            .expect("the backend prints its ports within 20 s")
            .expect("read the backend's stdout")
            .expect("the backend printed its ports");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("backend"), "{line}");
        let proxy = format!("127.0.0.1:{}", parts.next().expect("proxy port"));
        let control = format!("127.0.0.1:{}", parts.next().expect("control port"));
        Backend {
            proxy,
            control,
            _child: child,
        }
    }

    /// The URL of one proxy endpoint (`connect`, `rpc`, ...).
    pub fn url(&self, endpoint: &str) -> String {
        format!("http://{}/{endpoint}", self.proxy)
    }

    /// The proxy port's address.
    pub fn addr(&self) -> &str {
        &self.proxy
    }

    async fn post(&self, path: &str, body: Value) -> HttpResponse {
        let r = http(&self.control, "POST", path, &[], Some(&body.to_string())).await;
        assert_eq!(r.status, 200, "backend control {path}: {}", r.body);
        r
    }

    /// Sets how the proxy port answers: `normal`, `slow` (with `delay_ms`), `fail` (HTTP 500),
    /// `huge` (10 MB), `hang` (an answer that never ends), `redirect`.
    pub async fn mode(&self, mode: &str, delay_ms: u64) {
        self.post(
            "/mode",
            serde_json::json!({"mode": mode, "delay_ms": delay_ms}),
        )
        .await;
    }

    /// Merges `state` into the app's state (`deny`, `connect_ttl`, `sub_ttl`,
    /// `refresh_expired`).
    pub async fn state(&self, state: Value) {
        self.post("/state", state).await;
    }

    /// Closes the proxy port (connection refused) and every connection on it.
    pub async fn down(&self) {
        self.post("/down", Value::Null).await;
    }

    /// Listens on the proxy port again.
    pub async fn up(&self) {
        self.post("/up", Value::Null).await;
    }

    /// Every request the proxy port got, in order: `{path, headers, body}`.
    pub async fn requests(&self) -> Vec<Value> {
        let r = http(&self.control, "GET", "/requests", &[], None).await;
        match r.json() {
            Value::Array(list) => list,
            other => panic!("backend /requests: {other}"),
        }
    }

    /// The requests to one path.
    pub async fn requests_to(&self, path: &str) -> Vec<Value> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect()
    }

    /// Every webhook batch taken, in order: `{key, verified, body}`.
    pub async fn webhooks(&self) -> Vec<Value> {
        let r = http(&self.control, "GET", "/webhooks", &[], None).await;
        match r.json() {
            Value::Array(list) => list,
            other => panic!("backend /webhooks: {other}"),
        }
    }

    /// Every webhook event taken, in order of arrival.
    pub async fn webhook_events(&self) -> Vec<Value> {
        self.webhooks()
            .await
            .into_iter()
            .flat_map(|b| b["body"]["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Panics if a request reached a redirect's target (`/elsewhere...`): redirects must not
    /// be followed.
    pub async fn assert_no_redirect_followed(&self) {
        for r in self.requests().await {
            let path = r["path"].as_str().unwrap_or_default();
            assert!(
                !path.starts_with("/elsewhere"),
                "a redirect was followed: {r}"
            );
        }
    }

    /// Forgets the requests so far.
    pub async fn clear(&self) {
        self.post("/clear", Value::Null).await;
    }
}
