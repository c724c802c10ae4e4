//! The accept loop: one hyper HTTP/1 connection per TCP stream, with a header-read timeout
//! (the handshake timeout) and upgrades; drain on SIGTERM or SIGINT.

use crate::metrics::metrics;
use crate::node::Node;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Serves `router` on `listener` until `stop` resolves, then drains the node: every session
/// gets `disconnect` `shutdown` and close 1012, and this returns when they are gone or when
/// the drain deadline passes. The listener keeps answering during the drain so that
/// `/readyz` can say 503; `/ws` refuses new sessions.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()>,
) {
    // The accept loop runs as a task on a worker, not on the thread that called `serve`
    // (`block_on`'s, in main): it then spawns each connection onto the worker it runs on,
    // instead of waking a worker from outside for every accepted socket (a third thread on
    // two cores; under perf it was a sixth of a connect flood's CPU). Aborted on return.
    let accept = AbortOnDrop(tokio::spawn(accept_loop(node.clone(), listener, router)));
    let accept = async move {
        let mut accept = accept;
        let _ = (&mut accept.0).await;
    };
    tokio::pin!(accept);
    tokio::select! {
        _ = &mut accept => {}
        _ = stop => {}
    }
    tracing::info!(sessions = node.session_count(), "draining");
    node.start_drain();
    if let Err(e) = node.registry.deregister(&node.config.node_id).await {
        tracing::warn!(error = %e, "node registry deregister failed");
    }
    let deadline = tokio::time::Instant::now() + node.config.drain_timeout;
    let drained = node.sessions_closed(deadline);
    // Keep accepting (readiness answers 503, /ws refuses) while sessions close.
    tokio::select! {
        _ = &mut accept => {}
        _ = drained => {}
    }
    tracing::info!(left = node.session_count(), "drained");
    // Everything accepted goes to the archive before the process ends (embedded mode: the
    // queue lives in this process). It gets the drain deadline again, at least 5 s.
    let flush_deadline = Instant::now() + node.config.drain_timeout.max(Duration::from_secs(5));
    let pending = node.broker.flush_archive(flush_deadline).await;
    if pending > 0 {
        tracing::error!(pending, "exiting with messages not yet archived");
    }
    node.stop_background(Duration::from_secs(2)).await;
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pending connections the kernel may queue before `accept` (capped by `somaxconn`). The
/// usual 128 drops SYNs under a connect burst, and each drop costs the client a 1 s retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep accept queue.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The answer to a socket accepted past `--max-http-connections`, written without reading
/// its request.
const HTTP_FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Retry-After: 5\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n\r\n\
    node HTTP connection limit hit";

/// Counts one socket in its HTTP phase (until it is upgraded or closed).
struct HttpSlot(Arc<AtomicUsize>);

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(node: Arc<Node>, listener: TcpListener, router: Router) {
    let header_timeout = node.config.limits.handshake_timeout;
    let max_http = node.config.limits.max_http_connections;
    // Sockets in their HTTP phase. A WebSocket session counts against --max-connections
    // instead once upgraded: hyper's connection future ends at the upgrade.
    let http_open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if http_open.fetch_add(1, Ordering::Relaxed) >= max_http {
            http_open.fetch_sub(1, Ordering::Relaxed);
            metrics().http_refused.increment(1);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(HTTP_FULL)).await;
            });
            continue;
        }
        let slot = HttpSlot(http_open.clone());
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves on
/// either. Install them before announcing the node, so that an early signal drains it.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
