//! `GET /ws`: checks before the upgrade (draining, subprotocol, token, limits), then hands the
//! socket to a session.

use super::upgrade::{Upgrade, UpgradeRejection};
use super::{TokenQuery, request_token};
use crate::conn::Conn;
use crate::metrics::handshake_refused;
use crate::node::Node;
use crate::protocol::Encoding;
use crate::session::{self, Registration, Start};
use crate::tcp::{self, SocketFd};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes of frames gathered before a socket write; a batch of small pushes goes out in one
/// syscall while an idle connection keeps little.
const WRITE_BUFFER_SIZE: usize = 4096;

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECS: &str = "5";

pub(super) fn refuse(status: StatusCode, result: &'static str, message: &'static str) -> Response {
    handshake_refused(result);
    let mut response = (status, message).into_response();
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

/// What both WebSocket doors check first: a real handshake, from an allowed origin, to a
/// node that is not draining.
pub(super) fn precheck(
    node: &Node,
    headers: &HeaderMap,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Result<Upgrade, Box<Response>> {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            handshake_refused("not_websocket");
            return Err(Box::new(rejection.into_response()));
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| node.config.allowed_origins.allows(o, host));
        if !allowed {
            return Err(Box::new(refuse(
                StatusCode::FORBIDDEN,
                "bad_origin",
                "origin not allowed: add it to --allowed-origins",
            )));
        }
    }
    if node.is_draining() {
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining",
        )));
    }
    Ok(upgrade)
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

/// Handles `GET /ws`.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    fd: Option<Extension<SocketFd>>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let upgrade = match precheck(&node, &headers, upgrade) {
        Ok(upgrade) => upgrade,
        Err(response) => return *response,
    };
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(chosen) = Encoding::negotiate(offered) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_subprotocol",
            "unsupported subprotocol: offer v1.json or v1.msgpack",
        );
    };
    let encoding = chosen.unwrap_or(Encoding::Json);
    let query = query.map(|q| q.0).unwrap_or_default();
    let Some(token) = request_token(&headers, query) else {
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "missing token");
    };
    let claims = match node.verifier.verify(&token) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::debug!(reason = %e, "handshake refused");
            handshake_refused("unauthorized");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    let limits = &node.config.limits;
    if node.hub.connection_count() >= limits.max_connections {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "node connection limit reached",
        );
    }
    let conn = Arc::new(Conn::new(
        node.next_conn_id(),
        claims.sub.as_str().into(),
        encoding,
        limits.outbound_queue,
    ));
    if node
        .hub
        .add_connection(&conn, limits.max_connections_per_user)
        .is_err()
    {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            "too many connections for this user",
        );
    }
    let registration = Registration::new(node.clone(), conn);
    node.note_route(&claims.sub);
    let config = socket_config(&node);
    let (response, on_upgrade) = upgrade.accept(chosen.map(Encoding::subprotocol));
    // The `101` waits in the kernel for `welcome`, and both leave in one send (`tcp`).
    let corked = fd.and_then(|Extension(fd)| tcp::set_cork(fd, true).ok().map(|()| fd));
    session::spawn(Box::new(Start {
        on_upgrade,
        registration,
        claims,
        config,
        corked,
    }));
    response
}
