//! Centrifugo's bidirectional emulation, for networks where WebSockets do not get through:
//! the client opens a stream (`POST /connection/http_stream`, or `GET /connection/sse` with
//! `cf_connect` in the query) that carries the server's replies and pushes, and POSTs its
//! other commands to `/emulation` with the session and node ids the connect reply gave it.
//! centrifuge-js falls back to these by itself (its `transports` list).
//!
//! The session does not know: it runs over an in-memory pipe (`Handoff::Emulated`) whose
//! other end is a WebSocket client here, the bridge. The bridge writes the session's frames
//! to the stream (a JSON line or a Protobuf message per reply; an SSE event per JSON reply),
//! turns its close frame into a `disconnect` push, and writes the commands POSTed for it into
//! the pipe as frames. So limits, pings, recovery and close codes are the WebSocket door's,
//! and a stream nobody reads backs up like a slow socket: the bridge waits on the response,
//! the pipe fills, the session's queue fills, and the node drops it as a slow consumer.
//!
//! A session id is 128 random bits that only the stream's reader learns; `/emulation`
//! refuses an id no node holds (404). A request that names another node is relayed through
//! the broker's node commands (`NodeCommand::Emulate`): every node is asked, the one that
//! holds the session takes it.

use super::centrifuge::{accept, start};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::protocol::centrifuge::{self, Emulation, EmulationRequest};
use crate::session::Handoff;
use crate::session::connect;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use fanout::NodeCommand;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The pipe between a session and its bridge, bytes each way (allocated as they come).
const PIPE: usize = 64 * 1024;
/// Stream chunks the bridge may have handed to the response before it waits.
const STREAM_CHUNKS: usize = 16;
/// Command frames POSTed for a session and not yet written into its pipe.
const COMMANDS: usize = 16;
/// Longest wait for a session to take a POSTed command (its pipe full: it is not reading).
const COMMAND_WAIT: Duration = Duration::from_secs(5);

/// Why `/emulation` could not hand commands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// No such session on the node (never was, or ended).
    NoSession,
    /// The session did not take them within [`COMMAND_WAIT`] (or the broker could not
    /// reach the other nodes).
    Busy,
}

/// How the bridge writes the session's frames to the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    /// HTTP-streaming: JSON lines, or Protobuf messages as framed.
    Http(Encoding),
    /// Server-sent events: one `data:` event per JSON reply.
    Sse,
    /// A listen-only client (`uni_http_stream`, or `uni_sse` with `sse`): pushes only, as
    /// JSON lines or events (see `super::uni`).
    Uni { sse: bool },
}

impl Stream {
    fn encoding(self) -> Encoding {
        match self {
            Stream::Http(encoding) => encoding,
            Stream::Sse | Stream::Uni { .. } => Encoding::CentrifugeJson,
        }
    }

    fn is_sse(self) -> bool {
        matches!(self, Stream::Sse | Stream::Uni { sse: true })
    }

    /// The bytes `lines` become on the stream.
    fn lines<'a>(self, lines: impl IntoIterator<Item = &'a str>) -> Bytes {
        let mut out = Vec::new();
        for line in lines {
            if self.is_sse() {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\n\n");
            } else {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        Bytes::from(out)
    }

    /// The bytes a text frame of the session becomes on the stream.
    fn text(self, text: &str) -> Bytes {
        self.lines(text.split('\n'))
    }
}

/// `POST /connection/http_stream`: the body is the connect command (JSON; Protobuf with
/// `Content-Type: application/octet-stream`); the response streams the replies.
pub async fn http_stream(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let protobuf = is_protobuf(&headers);
    let body = match super::read_body(&node, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let encoding = if protobuf {
        Encoding::CentrifugeProtobuf
    } else {
        Encoding::CentrifugeJson
    };
    open(&node, &headers, Stream::Http(encoding), body, None)
}

/// `GET /connection/sse?cf_connect=<the connect command as JSON>`: the response is an
/// event stream of the replies (JSON only).
pub async fn sse(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("cf_connect").filter(|c| !c.is_empty()) {
        Some(connect) => open(
            &node,
            &headers,
            Stream::Sse,
            Bytes::from(connect.clone()),
            None,
        ),
        None => (
            StatusCode::BAD_REQUEST,
            "cf_connect (the connect command, as JSON) is required",
        )
            .into_response(),
    }
}

/// `POST /emulation`: commands for a session held over HTTP-streaming or SSE.
pub async fn emulation(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let origin = match origin(&node, &headers) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    let mut response = emulate(&node, &headers, body).await;
    allow(&mut response, origin);
    response
}

async fn emulate(node: &Arc<Node>, headers: &HeaderMap, body: Body) -> Response {
    let body = match super::read_body(node, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let Some(request) = centrifuge::emulation_request(is_protobuf(headers), &body) else {
        return (
            StatusCode::BAD_REQUEST,
            "not an EmulationRequest: {\"session\", \"node\", \"data\"}",
        )
            .into_response();
    };
    match relay(node, request).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(Undelivered::NoSession) => (StatusCode::NOT_FOUND, "no such session").into_response(),
        Err(Undelivered::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is not taking commands (its stream is not read)",
        )
            .into_response(),
    }
}

/// Hands a request to its session: here, or through the broker on the node that holds it
/// (a load balancer need not send a client's POSTs where its stream is).
async fn relay(node: &Arc<Node>, request: EmulationRequest) -> Result<(), Undelivered> {
    let EmulationRequest {
        node: holder,
        session,
        data,
    } = request;
    if holder != node.config.node_id {
        crate::metrics::metrics().emulation_relayed.increment(1);
        let command = NodeCommand::Emulate { session, data };
        return match node.broker.command(command).await {
            Ok(reply) if reply.count() > 0 => Ok(()),
            Ok(_) => Err(Undelivered::NoSession),
            Err(e) => {
                tracing::debug!(error = %e, "emulation request not relayed");
                Err(Undelivered::Busy)
            }
        };
    }
    let tx = node
        .hub
        .streams
        .sender(&session)
        .ok_or(Undelivered::NoSession)?;
    match tokio::time::timeout(COMMAND_WAIT, tx.send(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Undelivered::NoSession),
        Err(_) => Err(Undelivered::Busy),
    }
}

/// A page's origin that may not use these endpoints.
struct OriginRefused;

impl IntoResponse for OriginRefused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "origin not allowed: add it to --allowed-origins",
        )
            .into_response()
    }
}

/// The request's `Origin` when a page there may use these endpoints (`--allowed-origins`,
/// or the node's own origin).
fn origin(node: &Node, headers: &HeaderMap) -> Result<Option<HeaderValue>, OriginRefused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match origin.to_str() {
        Ok(o) if node.config.allowed_origins.allows(o, host) => Ok(Some(origin.clone())),
        _ => Err(OriginRefused),
    }
}

/// Lets a page of `origin` read the response (CORS).
fn allow(response: &mut Response, origin: Option<HeaderValue>) {
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// `OPTIONS` on the emulation endpoints: the CORS preflight a browser sends before a
/// cross-origin POST with a JSON or Protobuf body.
pub async fn preflight(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let origin = match origin(&node, &headers) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static("content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("300"),
    );
    allow(&mut response, origin);
    response
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

/// Starts a session over a pipe with `connect` as its first frame, and answers with the
/// stream of its frames.
pub(super) fn open(
    node: &Arc<Node>,
    headers: &HeaderMap,
    stream: Stream,
    connect: Bytes,
    uni: Option<super::uni::Listener>,
) -> Response {
    if let Err(refusal) = accept(node, headers) {
        return refusal.into_response();
    }
    // `accept` refused an origin that is not allowed.
    let origin = origin(node, headers).ok().flatten();
    let encoding = stream.encoding();
    let id: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
    let (server, client) = tokio::io::duplex(PIPE);
    let mut begin = start(node, encoding, Handoff::Emulated(server), headers);
    if let Some(proxy) = begin.proxy.as_mut() {
        proxy.transport = match stream {
            Stream::Http(_) => "http_stream",
            Stream::Sse => "sse",
            Stream::Uni { sse: false } => "uni_http_stream",
            Stream::Uni { sse: true } => "uni_sse",
        };
    }
    let (commands_tx, commands) = mpsc::channel(COMMANDS);
    if uni.is_none() {
        // A listen-only client sends nothing after its connect: no session id for it.
        begin.emulation = Some(Emulation {
            session: id.clone(),
            node: node.config.node_id.as_str().into(),
        });
        node.hub.streams.insert(id.clone(), commands_tx);
    }
    let session = connect::spawn(begin);
    let (out_tx, out) = mpsc::channel::<Bytes>(STREAM_CHUNKS);
    let pipe = Pipe {
        stream,
        connect,
        commands,
        out: out_tx,
        session,
        uni,
    };
    tokio::spawn(bridge(node.clone(), id, client, pipe));
    let body = Body::from_stream(futures_util::stream::unfold(out, |mut out| async move {
        out.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), out))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let content_type = match stream {
        Stream::Sse | Stream::Uni { sse: true } => "text/event-stream; charset=utf-8",
        Stream::Http(Encoding::CentrifugeProtobuf) => "application/octet-stream",
        // Newline-delimited JSON: one reply or push per line.
        Stream::Http(_) | Stream::Uni { sse: false } => "application/x-ndjson",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    allow(&mut response, origin);
    response
}

/// What the bridge works with.
struct Pipe {
    stream: Stream,
    /// The connect command, the session's first frame.
    connect: Bytes,
    /// Commands POSTed for the session.
    commands: mpsc::Receiver<Bytes>,
    /// The response body.
    out: mpsc::Sender<Bytes>,
    /// The session's task, done when the session is over.
    session: tokio::task::JoinHandle<()>,
    /// A listen-only client: how its replies become pushes.
    uni: Option<super::uni::Listener>,
}

/// Hands a chunk to the response; false once the client or the session is gone.
async fn send(
    out: &mpsc::Sender<Bytes>,
    session: &mut tokio::task::JoinHandle<()>,
    chunk: Bytes,
) -> bool {
    tokio::select! {
        // What the session said last (its disconnect) still goes out if there is room.
        biased;
        sent = out.send(chunk) => sent.is_ok(),
        _ = session => false,
    }
}

/// Carries frames between the session's pipe and the HTTP client until either ends. A
/// client that stops reading stops the bridge, which stops reading the pipe: the session
/// then sees a socket that does not drain and drops it as a slow consumer, which ends the
/// bridge too (the connection itself is closed when its writes stall; see `server`).
async fn bridge(node: Arc<Node>, id: Arc<str>, client: tokio::io::DuplexStream, pipe: Pipe) {
    let Pipe {
        stream,
        connect,
        mut commands,
        out,
        mut session,
        mut uni,
    } = pipe;
    // Small buffers, like the session's own: tungstenite's defaults (a 128 KiB read buffer)
    // would make each stream cost ten times a WebSocket connection.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await;
    let (mut sink, mut frames) = ws.split();
    let encoding = stream.encoding();
    let frame = |data: Bytes| -> Message {
        if encoding.is_text() {
            match String::from_utf8(data.to_vec()) {
                Ok(text) => Message::text(text),
                // Not UTF-8: the session answers it as the bad request it is.
                Err(e) => Message::binary(e.into_bytes()),
            }
        } else {
            Message::binary(data)
        }
    };
    let mut open = true;
    if stream.is_sse() {
        // The headers go out at once, and EventSource opens.
        open = send(&out, &mut session, Bytes::from_static(b"\r\n")).await;
    }
    // The first frame races the session: one that ends before reading it all (a frame too
    // large) must not leave the bridge waiting on a full pipe.
    open = open
        && tokio::select! {
            sent = sink.send(frame(connect)) => sent.is_ok(),
            _ = &mut session => false,
        };
    // A listen-only client has no commands after its connect (no sender was kept).
    let mut commands_open = true;
    while open {
        tokio::select! {
            command = commands.recv(), if commands_open => match command {
                Some(data) => open = sink.send(frame(data)).await.is_ok(),
                None => commands_open = false,
            },
            message = frames.next() => {
                let chunk = match message {
                    Some(Ok(Message::Text(text))) => match &mut uni {
                        None => stream.text(text.as_str()),
                        Some(uni) => {
                            let pushes = uni.pushes(text.as_str());
                            if pushes.pong {
                                // A listen-only client does not answer pings: the bridge
                                // does, so that the session does not end as idle.
                                open = sink.send(Message::text("{}")).await.is_ok();
                            }
                            open = open && !pushes.end;
                            stream.lines(pushes.lines.iter().map(String::as_str))
                        }
                    },
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(close))) => {
                        let (code, reason) = close
                            .map_or((3000, String::new()), |c| (c.code.into(), c.reason.to_string()));
                        let push = centrifuge::disconnect_push(encoding, code, &reason);
                        open = false;
                        match (encoding.is_text(), &mut uni) {
                            (true, None) => stream.text(&String::from_utf8_lossy(&push)),
                            (true, Some(uni)) => {
                                let pushes = uni.pushes(&String::from_utf8_lossy(&push));
                                stream.lines(pushes.lines.iter().map(String::as_str))
                            }
                            (false, _) => push,
                        }
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                };
                open = send(&out, &mut session, chunk).await && open;
            }
            () = out.closed() => open = false,
        }
    }
    node.hub.streams.remove(&id);
}
