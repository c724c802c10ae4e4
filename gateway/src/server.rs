//! The accept loop: one hyper HTTP/1 connection per TCP stream, with a header-read timeout
//! (the handshake timeout) and upgrades; drain on SIGTERM or SIGINT.

use crate::http::raw;
use crate::metrics::metrics;
use crate::node::Node;
use crate::tcp;
use crate::tls::Tls;
use crate::workers::{self, WorkerId};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Serves `router` on `listeners` until `stop` resolves, then drains the node: every session
/// gets `disconnect` `shutdown` and close 1012, and this returns when they are gone or when
/// the drain deadline passes. The listeners keep answering during the drain so that
/// `/readyz` can say 503; `/ws` refuses new sessions.
///
/// The first listener is served on the calling thread's runtime (worker 0); each other one
/// gets a worker thread of its own with a single-threaded runtime (see [`workers`]), stopped
/// and joined before this returns.
pub async fn serve(
    node: Arc<Node>,
    listeners: Vec<std::net::TcpListener>,
    router: Router,
    tls: Option<Arc<Tls>>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut listeners = listeners.into_iter();
    let first =
        TcpListener::from_std(listeners.next().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no listener")
        })?)?;
    let http_open = Arc::new(AtomicUsize::new(0));
    let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (i, listener) in listeners.enumerate() {
        let index = (i + 1) as WorkerId;
        let (node, router, http_open) = (node.clone(), router.clone(), http_open.clone());
        let tls = tls.clone();
        let mut stop = workers_stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gateway-w{index}"))
            .spawn(move || -> std::io::Result<()> {
                workers::runtime(index)?.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    tokio::select! {
                        _ = accept_loop(node, listener, router, tls, http_open) => {}
                        _ = stop.wait_for(|stop| *stop) => {}
                    }
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    // The accept loop runs as a task, not on `block_on`'s own future (main's): it then
    // spawns each connection as a task of this runtime directly. Aborted on return.
    let accept = AbortOnDrop(tokio::spawn(accept_loop(
        node.clone(),
        first,
        router,
        tls,
        http_open,
    )));
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
    // The other workers end (a session still open past the deadline is dropped with its
    // runtime): joined off this runtime's thread, which still serves what they may wait on.
    let _ = stop_workers.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
                Err(_) => tracing::error!("worker panicked"),
            }
        }
    });
    let _ = joined.await;
    // Everything accepted goes to the archive before the process ends (embedded mode: the
    // queue lives in this process). It gets the drain deadline again, at least 5 s.
    let flush_deadline = Instant::now() + node.config.drain_timeout.max(Duration::from_secs(5));
    let pending = node.broker.flush_archive(flush_deadline).await;
    if pending > 0 {
        tracing::error!(pending, "exiting with messages not yet archived");
    }
    node.stop_background(Duration::from_secs(2)).await;
    Ok(())
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

/// Binds `addr` `count` times (one listener per worker) with `SO_REUSEPORT`, each with a deep
/// accept queue; the kernel spreads new connections over them.
///
/// `SO_REUSEPORT` alone would let a second node run by the same user bind the same port and
/// silently take half its connections: a plain socket is bound first, which fails when
/// anything listens there, and it also picks the port when `addr` asks for any (port 0).
pub fn bind(addr: &str, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let probe = socket_for(addr)?;
    probe.set_reuseaddr(true)?;
    probe.bind(addr)?;
    addr = probe.local_addr()?;
    drop(probe);
    (0..count.max(1))
        .map(|_| {
            let socket = socket_for(addr)?;
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            tcp::defer_accept(&socket)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)?.into_std()
        })
        .collect()
}

fn socket_for(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
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

/// Accepts on `listener` and serves each socket as a task of the calling runtime.
/// `http_open` counts the node's sockets in their HTTP phase (every worker's): a WebSocket
/// session counts against --max-connections instead once upgraded (hyper's connection future
/// ends at the upgrade).
async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    http_open: Arc<AtomicUsize>,
) {
    let header_timeout = node.config.limits.handshake_timeout;
    let stall = node.config.limits.idle_timeout;
    let max_http = node.config.limits.max_http_connections;
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
        let (node, router, tls) = (node.clone(), router.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let deadline = tokio::time::Instant::now() + header_timeout;
            if let Some(tls) = tls {
                // The TLS handshake is part of the handshake deadline. Everything over TLS
                // goes through hyper (WebSocket upgrades on its routes): the node's own
                // reading of a first request saves less than TLS costs.
                let accepted = tokio::time::timeout_at(deadline, tls.acceptor().accept(stream));
                match accepted.await {
                    Ok(Ok(stream)) => serve_http(stream, router, header_timeout, stall).await,
                    Ok(Err(e)) => {
                        metrics().tls_failed.increment(1);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics().tls_failed.increment(1);
                        tracing::debug!("TLS handshake timed out");
                    }
                }
                return;
            }
            // A WebSocket handshake as the first request is answered without hyper.
            let stream = match raw::first_request(&node, stream, deadline).await {
                raw::First::Hyper(stream) => stream,
                raw::First::Session | raw::First::Done => return,
            };
            serve_http(stream, router, header_timeout, stall).await;
        });
    }
}

/// Serves HTTP/1.1 on `stream` with hyper until the connection ends or is upgraded; a
/// write that makes no progress for `stall` fails the connection (see [`Stall`]).
async fn serve_http<S>(stream: S, router: Router, header_timeout: Duration, stall: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = Stall::new(stream, stall);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "http connection ended with an error");
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

/// A connection served by hyper, whose writes fail once one has made no progress for
/// `limit` (`--idle-timeout-secs`): hyper has no write timeout, and a streamed response
/// (HTTP-streaming, SSE) to a client that stopped reading would otherwise keep its socket
/// and buffers for as long as the client keeps the connection open. hyper drops the
/// connection on the error. Writes that go through cost nothing more; a timer is made only
/// when one has to wait.
struct Stall<S> {
    inner: S,
    limit: Duration,
    since: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stall<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            since: None,
        }
    }

    /// What a write that had to wait answers: wait on, or fail once `limit` has passed.
    fn waited<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        use std::task::Poll;
        match result {
            Poll::Ready(result) => {
                self.since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stall<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stall<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.waited(cx, result)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.waited(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.waited(cx, result)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Stall;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Stall::new(server, Duration::from_secs(5));
        // The client never reads: the pipe fills and the write waits, then fails.
        let started = tokio::time::Instant::now();
        let e = server.write_all(&[7; 1024]).await.expect_err("stalled");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_served() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Stall::new(server, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0; 16];
            while got < 1024 {
                // Slower than the limit in total, never stalled that long at once.
                tokio::time::sleep(Duration::from_secs(1)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            got
        });
        server.write_all(&[7; 1024]).await.expect("served");
        assert_eq!(reader.await.unwrap(), 1024);
    }
}
