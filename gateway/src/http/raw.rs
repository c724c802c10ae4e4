//! A connection's first request, read by the node: a WebSocket handshake to `/ws` or
//! `/connection/websocket` is answered here; anything else goes to hyper, bytes read and all.
//!
//! Why not hyper for the handshake too: hyper writes the `101` itself, so it could only leave
//! with the session's first frame through a corked socket (three syscalls: the `101`, the
//! frame, the release), and its path to a session (a connection task, header map, router,
//! extractors, the upgrade hand-over to a second task) cost more than the whole handshake
//! needs. Measured on a flood of 10,000 connects, that path was about a fifth of the node's
//! CPU per connect (BENCHMARKS.md). Here the request is parsed by `httparse` (hyper's own
//! parser), checked by the same code as hyper's route (`ws::accept`, `centrifuge::accept`),
//! and the `101` is written with `welcome` in one send by the session.
//!
//! Anything this code is not sure of goes to hyper unchanged: a method other than `GET`, a
//! path other than the two doors, a request that is not a well-formed WebSocket handshake
//! (hyper's route answers it as before), a head too big or with too many headers. An upgrade
//! on a keep-alive connection after other requests reaches hyper's routes, which remain.

use super::{centrifuge, ws};
use crate::node::Node;
use crate::session::{self, Handoff, connect};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The biggest request head read here; a bigger one goes to hyper (which refuses it).
const MAX_HEAD: usize = 8 * 1024;
/// The most headers read here; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// The first read's buffer: a browser's handshake is about 500 bytes.
const FIRST_READ: usize = 1024;

/// Which WebSocket door a handshake is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// `/ws`, protocol v1.
    V1,
    /// `/connection/websocket`, Centrifugo's client protocol.
    Centrifuge,
}

/// A WebSocket handshake read from the socket.
#[derive(Debug)]
struct Handshake {
    door: Door,
    /// `Sec-WebSocket-Key`.
    key: HeaderValue,
    headers: HeaderMap,
    query: Option<String>,
    /// The head's length: bytes after it belong to the WebSocket.
    len: usize,
}

/// What the bytes read so far are.
#[derive(Debug)]
enum Parsed {
    /// Not a whole request head yet.
    Partial,
    /// A request for hyper.
    Hyper,
    /// A WebSocket handshake for this module.
    Handshake(Handshake),
}

/// Reads what `buf` holds. Only a complete, well-formed `GET` handshake to one of the two
/// doors is this module's.
fn parse(buf: &[u8]) -> Parsed {
    let method = b"GET ";
    if !method.starts_with(&buf[..buf.len().min(method.len())]) {
        return Parsed::Hyper;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Hyper,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Parsed::Hyper;
    }
    let target = request.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let door = match path {
        "/ws" => Door::V1,
        "/connection/websocket" => Door::Centrifuge,
        _ => return Parsed::Hyper,
    };
    let mut map = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Hyper;
        };
        map.append(name, value);
    }
    let Ok(key) = super::upgrade::handshake_key(&map).cloned() else {
        return Parsed::Hyper;
    };
    Parsed::Handshake(Handshake {
        door,
        key,
        headers: map,
        query: query.map(str::to_owned),
        len,
    })
}

/// The `101 Switching Protocols` answer to a handshake with `key`.
fn switching(key: &HeaderValue, protocol: Option<&str>) -> Vec<u8> {
    let accept = derive_accept_key(key.as_bytes());
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(protocol) = protocol {
        out.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        out.extend_from_slice(protocol.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A refusal as an HTTP/1.1 response; the node closes the connection after it.
fn refusal_response(refusal: &ws::Refusal) -> Vec<u8> {
    let status = refusal.status;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        refusal.message.len()
    );
    if let Some(secs) = refusal.retry_after() {
        out.push_str("retry-after: ");
        out.push_str(secs);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&refusal.message);
    out.into_bytes()
}

/// How a connection's first request is served.
pub enum First {
    /// A WebSocket session runs on it (its own task).
    Session,
    /// Not a handshake of ours: hyper serves the connection, `read` coming first.
    Hyper(Rewind),
    /// The connection is done: refused, timed out or gone.
    Done,
}

/// Reads a connection's first request head (until `deadline`, the handshake timeout) and
/// serves it when it is a WebSocket handshake to one of the two doors.
pub async fn first_request(
    node: &Arc<Node>,
    mut stream: TcpStream,
    deadline: tokio::time::Instant,
) -> First {
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    let parsed = loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Done,
            Ok(Ok(_)) => {}
        }
        match parse(&buf) {
            Parsed::Partial => continue,
            Parsed::Hyper => return First::Hyper(Rewind::new(buf, stream)),
            Parsed::Handshake(handshake) => break handshake,
        }
    };
    let read = buf.split_off(parsed.len);
    drop(buf);
    let key = &parsed.key;
    let refusal = match parsed.door {
        Door::V1 => match ws::accept(node, &parsed.headers, parsed.query.as_deref()).await {
            Ok(accepted) => {
                let response = switching(key, accepted.protocol);
                let handoff = Handoff::Raw {
                    stream,
                    read,
                    response,
                };
                session::spawn(accepted.start(node, handoff));
                return First::Session;
            }
            Err(refusal) => refusal,
        },
        Door::Centrifuge => match centrifuge::accept(node, &parsed.headers) {
            Ok((protocol, encoding)) => {
                let response = switching(key, protocol);
                let handoff = Handoff::Raw {
                    stream,
                    read,
                    response,
                };
                let start = centrifuge::start(node, encoding, handoff, &parsed.headers);
                drop(connect::spawn(start));
                return First::Session;
            }
            Err(refusal) => refusal,
        },
    };
    let response = refusal_response(&refusal);
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout_at(deadline, write).await;
    First::Done
}

/// A connection with bytes already read from it, given back first: hyper reads the request
/// this module read.
pub struct Rewind {
    read: Option<Bytes>,
    stream: TcpStream,
}

impl Rewind {
    fn new(read: Vec<u8>, stream: TcpStream) -> Self {
        Self {
            read: (!read.is_empty()).then(|| Bytes::from(read)),
            stream,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(read) = &mut this.read {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read.split_to(n));
            if read.is_empty() {
                this.read = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: &str = "GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn only_whole_handshakes_to_the_two_doors_are_read_here() {
        let Parsed::Handshake(h) = parse(HANDSHAKE.as_bytes()) else {
            panic!("a handshake to /ws");
        };
        assert_eq!((h.door, h.query.as_deref()), (Door::V1, Some("token=abc")));
        assert_eq!(h.len, HANDSHAKE.len());
        // Cut anywhere before its end, it is not whole yet.
        for cut in 1..HANDSHAKE.len() {
            assert!(
                matches!(parse(&HANDSHAKE.as_bytes()[..cut]), Parsed::Partial),
                "cut at {cut}"
            );
        }
        let centrifuge = HANDSHAKE.replace("/ws?token=abc", "/connection/websocket");
        assert!(matches!(
            parse(centrifuge.as_bytes()),
            Parsed::Handshake(Handshake {
                door: Door::Centrifuge,
                ..
            })
        ));
        for other in [
            HANDSHAKE.replace("GET /ws", "GET /healthz"),
            HANDSHAKE.replace("GET /ws", "GET /wsx"),
            HANDSHAKE.replace("GET ", "POST "),
            HANDSHAKE.replace("HTTP/1.1", "HTTP/1.0"),
            HANDSHAKE.replace("Upgrade: websocket\r\n", ""),
            HANDSHAKE.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            HANDSHAKE.replace("Connection: Upgrade", "Connection: keep-alive"),
            "PUT /api".into(),
            "garbage\r\n\r\n".into(),
        ] {
            assert!(
                matches!(parse(other.as_bytes()), Parsed::Hyper),
                "{other:?}"
            );
        }
        let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(huge.as_bytes()), Parsed::Hyper));
    }

    #[test]
    fn the_accept_key_is_the_rfcs() {
        // RFC 6455 §1.3's example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let response = String::from_utf8(switching(&key, Some("v1.json"))).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.ends_with("\r\nsec-websocket-protocol: v1.json\r\n\r\n"));
    }
}
