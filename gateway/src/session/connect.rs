//! A Centrifugo connection's first phase: the socket is open but nobody is known yet. The
//! SDKs authenticate in their first command (`connect`, with the token), not at the upgrade;
//! until it arrives and verifies, the connection is no one's: not in the hub, not counted
//! against a user, subscribed to nothing. Then it becomes a session like any other.

use super::proxied::{self, Refused};
use super::{FirstFrame, Handoff, ProxyState, Registration, Session, WebSocket, finish};
use crate::auth::Claims;
use crate::conn::Conn;
use crate::metrics::{Metrics, handshake_refused, metrics};
use crate::node::Node;
use crate::protocol::centrifuge::{self, ConnectInfo, Inbound, first_phase};
use crate::protocol::{CommandError, Encoding, ErrorCode, to_message};
use crate::proxy::{self, Kind, wire};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How long an open socket may wait before its `connect` (Centrifugo's default: 15 s), after
/// which it is closed as stale (3502).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// What a Centrifugo connection's task starts from.
pub struct CentrifugeStart {
    /// How the socket comes.
    pub handoff: Handoff,
    /// The node.
    pub node: Arc<Node>,
    /// tungstenite's settings for the socket.
    pub config: WebSocketConfig,
    /// JSON or Protobuf, as the subprotocol chose.
    pub encoding: Encoding,
    /// An HTTP-streaming or SSE connection's ids (`Handoff::Emulated`).
    pub emulation: Option<centrifuge::Emulation>,
    /// What the proxies are told of the connection (when any proxy is configured).
    pub proxy: Option<Box<ProxyState>>,
}

/// Spawns the connection's task: the first phase, then the session. The handle tells an
/// HTTP-streaming or SSE bridge when the session is over.
pub fn spawn(start: Box<CentrifugeStart>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let CentrifugeStart {
            handoff,
            node,
            config,
            encoding,
            emulation,
            proxy,
        } = *start;
        let Some((mut ws, preamble)) = Box::pin(handoff.websocket(config)).await else {
            return;
        };
        // The `101` goes out alone: the connect reply waits for `connect`.
        if !preamble.is_empty() {
            let write = ws.get_mut().write_all(&preamble);
            if !matches!(
                tokio::time::timeout(super::CLOSE_WRITE_TIMEOUT, write).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
        let first = first_phase(&node, &mut ws, encoding, emulation, proxy);
        let Some(mut session) = Box::pin(first).await else {
            return;
        };
        metrics().handshakes_ok[Metrics::protocol(session.reg.conn.encoding)].increment(1);
        let end = session.serve(&mut ws, Vec::new()).await;
        Box::pin(finish(&mut session, &mut ws, end)).await;
    })
}

/// Waits for `connect` and checks it; the session it starts, or `None` once the socket is
/// closed (with the code that says why).
async fn first_phase(
    node: &Arc<Node>,
    ws: &mut WebSocket,
    encoding: Encoding,
    emulation: Option<centrifuge::Emulation>,
    proxy: Option<Box<ProxyState>>,
) -> Option<Session> {
    let frame = match tokio::time::timeout(CONNECT_DEADLINE, first_frame(ws, encoding)).await {
        Err(_) => {
            handshake_refused("stale");
            refuse(ws, first_phase::STALE).await;
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(()))) => {
            handshake_refused("bad_request");
            refuse(ws, first_phase::BAD_REQUEST).await;
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let (connect_id, token, info, rest) = frame;
    let conn_id = node.next_conn_id();
    let (claims, proxy) = match token {
        Some(token) => (verify(node, ws, encoding, connect_id, &token).await?, proxy),
        None if node.proxies.has(Kind::Connect) => {
            let state = proxy.map(|p| *p).unwrap_or_default();
            let client = super::client_id(node, conn_id);
            let asked = ask_backend(node, ws, encoding, connect_id, info, state, &client);
            let (claims, state) = Box::pin(asked).await?;
            (claims, Some(Box::new(state)))
        }
        None => {
            handshake_refused("unauthorized");
            refuse(ws, first_phase::BAD_REQUEST).await;
            return None;
        }
    };
    let limits = &node.config.limits;
    if node.is_draining() || node.hub.connection_count() >= limits.max_connections {
        handshake_refused(if node.is_draining() {
            "draining"
        } else {
            "node_full"
        });
        refuse(ws, first_phase::SHUTDOWN).await;
        return None;
    }
    let conn = Arc::new(Conn::new(
        conn_id,
        claims.sub.as_str().into(),
        encoding,
        limits.outbound_queue,
    ));
    if node
        .hub
        .add_connection(&conn, limits.max_connections_per_user)
        .is_err()
    {
        handshake_refused("user_limit");
        refuse(ws, first_phase::CONNECTION_LIMIT).await;
        return None;
    }
    node.note_route(&claims.sub);
    // A connection the connect proxy let in is refreshed by the server (the refresh proxy),
    // not by the client: the reply says nothing of its expiry.
    let exp = proxy
        .as_ref()
        .is_none_or(|p| !p.refresh)
        .then_some(claims.exp);
    let mut session = Session::new(Registration::new(node.clone(), conn), claims);
    session.set_proxy_state(proxy.map(|p| *p));
    session.first = Some(Box::new(FirstFrame {
        connect_id,
        exp,
        rest,
        emulation,
    }));
    Some(session)
}

/// Verifies a connection token: its claims, or `None` once the socket is closed (with the
/// code that says why).
async fn verify(
    node: &Node,
    ws: &mut WebSocket,
    encoding: Encoding,
    connect_id: i64,
    token: &str,
) -> Option<Claims> {
    match node.verifier.verify(token) {
        Ok(claims) => Some(claims),
        Err(e) if e.is_expired() => {
            // The SDKs answer 109 by fetching a new token and connecting again.
            handshake_refused("unauthorized");
            let reply = centrifuge::error(
                encoding,
                connect_id,
                ErrorCode::TokenExpired,
                "token expired",
            );
            let _ = ws.feed(to_message(encoding, reply)).await;
            refuse(ws, (3005, "connection expired")).await;
            None
        }
        Err(e) => {
            tracing::debug!(reason = %e, "connect refused");
            handshake_refused("unauthorized");
            refuse(ws, first_phase::INVALID_TOKEN).await;
            None
        }
    }
}

/// A `connect` without a token, asked of the connect proxy: the user it names (as claims),
/// or `None` once the socket is closed. The backend's error goes to the client as it is
/// (the SDKs try again after a temporary one and stay away after another); a backend that
/// does not answer in time, or fails, is error 100, temporary: the SDKs try again.
async fn ask_backend(
    node: &Node,
    ws: &mut WebSocket,
    encoding: Encoding,
    connect_id: i64,
    info: Option<Box<ConnectInfo>>,
    mut state: ProxyState,
    client: &str,
) -> Option<(Claims, ProxyState)> {
    let info = info.unwrap_or_default();
    let fields = wire::ConnectFields {
        name: &info.name,
        version: &info.version,
        // JSON text, checked by the decoder.
        data: info
            .data
            .as_deref()
            .and_then(|d| serde_json::from_slice::<&RawValue>(d).ok()),
    };
    let asked = proxied::connect(node, &mut state, client, encoding, fields).await;
    let (result, code, message, close) = match asked {
        Ok(claims) => return Some((claims, state)),
        Err(Refused::Backend(e)) => (
            "unauthorized",
            proxy::error_code(&e),
            e.message,
            first_phase::UNAUTHORIZED,
        ),
        Err(Refused::Disconnect(d)) => {
            handshake_refused("unauthorized");
            let code = u16::try_from(d.code).unwrap_or(3500);
            let close = ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from(d.reason),
            })));
            let _ = tokio::time::timeout(super::CLOSE_WRITE_TIMEOUT, close).await;
            return None;
        }
        Err(Refused::Failed(e)) => (
            "backend_unavailable",
            ErrorCode::Unavailable,
            e.client_message().to_owned(),
            first_phase::BACKEND_FAILED,
        ),
    };
    handshake_refused(result);
    let reply = centrifuge::error(encoding, connect_id, code, &message);
    let _ = ws.feed(to_message(encoding, reply)).await;
    refuse(ws, close).await;
    None
}

type First = (
    i64,
    Option<String>,
    Option<Box<ConnectInfo>>,
    Vec<Result<Inbound, CommandError>>,
);

/// Reads until the first data frame: `Some(Ok)` when it starts with `connect`, `Some(Err)`
/// when it does not (or is malformed), `None` when the client left.
async fn first_frame(ws: &mut WebSocket, encoding: Encoding) -> Option<Result<First, ()>> {
    loop {
        let message = match ws.next().await? {
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(message) => message,
        };
        let payload: &[u8] = match (&message, encoding.is_text()) {
            (Message::Text(text), true) => text.as_bytes(),
            (Message::Binary(bytes), false) => bytes,
            _ => return Some(Err(())),
        };
        let mut batch = Vec::new();
        if centrifuge::decode_frame(encoding, payload, &mut batch).is_err() {
            return Some(Err(()));
        }
        let mut batch = batch.into_iter();
        return Some(match batch.next() {
            Some(Ok(Inbound::Connect { id, token, info })) => {
                Ok((id, token, info, batch.collect()))
            }
            _ => Err(()),
        });
    }
}

/// Closes a socket that never became a session.
async fn refuse(ws: &mut WebSocket, (code, reason): (u16, &'static str)) {
    let close = ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    })));
    let _ = tokio::time::timeout(super::CLOSE_WRITE_TIMEOUT, close).await;
}
