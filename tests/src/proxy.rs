//! A TCP proxy the test controls: put it before a server, then cut it (every connection
//! through it is closed and new ones are refused), make it a black hole (connections stay
//! open and new ones are taken, but no byte goes through either way, as when a network drops
//! packets), and restore it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: String,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    held: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Waits until traffic is not held.
async fn flowing(held: &mut watch::Receiver<bool>) {
    // A closed sender means the proxy is gone: the connection ends with the select below.
    let _ = held.wait_for(|h| !*h).await;
}

/// Copies `from` to `to`, moving nothing while traffic is held (what was read before the
/// hold is delivered after it).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        flowing(&mut held).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        flowing(&mut held).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (held, _) = watch::channel(false);
        let target = target.to_string();
        let task = {
            let cut = cut.clone();
            let generation = generation.clone();
            let held = held.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let target = target.clone();
                    let mut stop = generation.subscribe();
                    let mut hold = held.subscribe();
                    tokio::spawn(async move {
                        // A black hole takes the connection and never dials on.
                        tokio::select! {
                            _ = flowing(&mut hold) => {}
                            _ = stop.changed() => return,
                        }
                        let Ok(upstream) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (upstream_read, upstream_write) = upstream.into_split();
                        tokio::select! {
                            _ = pump(client_read, upstream_write, hold.clone()) => {}
                            _ = pump(upstream_read, client_write, hold) => {}
                            _ = stop.changed() => {}
                        }
                    });
                }
            })
        };
        TcpProxy {
            addr,
            cut,
            generation,
            held,
            task,
        }
    }

    /// The proxy's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Closes every connection through the proxy and refuses new ones until [`restore`].
    ///
    /// [`restore`]: TcpProxy::restore
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Holds every byte, both ways, on open connections and new ones, until [`restore`]: the
    /// server looks alive at the TCP level and never answers (no reset, no close).
    ///
    /// [`restore`]: TcpProxy::restore
    pub fn black_hole(&self) {
        self.held.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.held.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.held.send_replace(false);
        self.task.abort();
    }
}
