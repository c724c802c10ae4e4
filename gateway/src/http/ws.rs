//! `GET /ws`: checks before the upgrade (draining, subprotocol, token, limits), then hands the
//! socket to a session. The checks are shared by both ways a handshake arrives: read by the
//! node itself (`raw`, a connection's first request) or served by hyper (`upgrade`, below).

use super::TokenQuery;
use super::request_token;
use super::upgrade::{Upgrade, UpgradeRejection};
use crate::auth::Claims;
use crate::conn::Conn;
use crate::metrics::handshake_refused;
use crate::node::Node;
use crate::protocol::Encoding;
use crate::proxy::{Kind, wire};
use crate::session::proxied::{self, Refused};
use crate::session::{self, Handoff, ProxyState, Registration, Start};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::borrow::Cow;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes of frames gathered before a socket write; a batch of small pushes goes out in one
/// syscall while an idle connection keeps little.
const WRITE_BUFFER_SIZE: usize = 4096;

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECS: &str = "5";

/// A handshake refused: the status and the plain-text reason the client gets.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) message: Cow<'static, str>,
}

impl Refusal {
    /// A refusal, counted under `result` in `gateway_handshakes_total`.
    pub(super) fn new(
        status: StatusCode,
        result: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        handshake_refused(result);
        Self {
            status,
            message: message.into(),
        }
    }

    /// Whether the client is told when to come back (`Retry-After`).
    pub(super) fn retry_after(&self) -> Option<&'static str> {
        matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
        .then_some(RETRY_AFTER_SECS)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let mut response = (self.status, self.message.into_owned()).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        response
    }
}

/// What both WebSocket doors check first, once the request is a real handshake: an allowed
/// origin, and a node that is not draining.
pub(super) fn precheck(node: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| node.config.allowed_origins.allows(o, host));
        if !allowed {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "bad_origin",
                "origin not allowed: add it to --allowed-origins",
            ));
        }
    }
    if node.is_draining() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining",
        ));
    }
    Ok(())
}

/// A handshake hyper's extractor refused (not a WebSocket request), counted.
pub(super) fn not_websocket(rejection: UpgradeRejection) -> Response {
    handshake_refused("not_websocket");
    rejection.into_response()
}

/// tungstenite's settings for a client socket.
pub(super) fn socket_config(node: &Node) -> WebSocketConfig {
    let limits = &node.config.limits;
    let max = limits.max_frame_size;
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(limits.max_write_buffer())
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// A v1 handshake accepted: the subprotocol to answer with, and the session's start without
/// its socket.
pub(super) struct Accepted {
    pub(super) protocol: Option<&'static str>,
    pub(super) registration: Registration,
    pub(super) claims: Claims,
    pub(super) proxy: Option<ProxyState>,
}

impl Accepted {
    /// The session's start, with the socket as `handoff` gives it.
    pub(super) fn start(self, node: &Node, handoff: Handoff) -> Box<Start> {
        Box::new(Start {
            handoff,
            registration: self.registration,
            claims: self.claims,
            config: socket_config(node),
            proxy: self.proxy,
        })
    }
}

/// The v1 door's checks after [`precheck`]: subprotocol, token (the `Authorization` header,
/// else the `token` parameter of `query`; without one, the connect proxy when there is one),
/// the node's and the user's connection limits. The connection is registered in the hub when
/// this returns `Ok`.
pub(super) async fn accept(
    node: &Arc<Node>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Accepted, Refusal> {
    precheck(node, headers)?;
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(chosen) = Encoding::negotiate(offered) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_subprotocol",
            "unsupported subprotocol: offer v1.json or v1.msgpack",
        ));
    };
    let encoding = chosen.unwrap_or(Encoding::Json);
    // As axum's `Query` reads it: a query that does not parse carries no token.
    let query: TokenQuery = query
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let mut proxy = ProxyState::of(node, "websocket", headers);
    let conn_id = node.next_conn_id();
    let claims = match request_token(headers, query) {
        Some(token) => match node.verifier.verify(&token) {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(reason = %e, "handshake refused");
                return Err(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    e.to_string(),
                ));
            }
        },
        None if node.proxies.has(Kind::Connect) => {
            let mut state = proxy.take().unwrap_or_default();
            let claims = Box::pin(ask_backend(node, &mut state, conn_id)).await?;
            proxy = Some(state);
            claims
        }
        None => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing token",
            ));
        }
    };
    let limits = &node.config.limits;
    if node.hub.connection_count() >= limits.max_connections {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "node connection limit reached",
        ));
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
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            "too many connections for this user",
        ));
    }
    let registration = Registration::new(node.clone(), conn);
    node.note_route(&claims.sub);
    Ok(Accepted {
        protocol: chosen.map(Encoding::subprotocol),
        registration,
        claims,
        proxy,
    })
}

/// A handshake without a token, asked of the connect proxy: the user it names, or the
/// refusal (401 or 403 with the backend's message for its error or disconnect, 503 when it
/// did not answer in time or failed).
async fn ask_backend(node: &Node, state: &mut ProxyState, conn_id: u64) -> Result<Claims, Refusal> {
    let client = session::client_id(node, conn_id);
    let fields = wire::ConnectFields::default();
    let refusal = |code: u32, message: String| {
        let status = if matches!(code, 101 | 109) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        Refusal::new(status, "unauthorized", message)
    };
    match proxied::connect(node, state, &client, Encoding::Json, fields).await {
        Ok(claims) => Ok(claims),
        Err(Refused::Backend(e)) => Err(refusal(e.code, e.message)),
        Err(Refused::Disconnect(d)) => Err(refusal(d.code, d.reason)),
        Err(Refused::Failed(e)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            e.client_message(),
        )),
    }
}

/// Handles `GET /ws` when hyper serves it: an upgrade on a connection that carried other
/// requests before (the first request on a connection is read by `raw`).
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_websocket(rejection),
    };
    let accepted = match accept(&node, &headers, query.as_deref()).await {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(),
    };
    let (response, on_upgrade) = upgrade.accept(accepted.protocol);
    session::spawn(accepted.start(&node, Handoff::Hyper(on_upgrade)));
    response
}
