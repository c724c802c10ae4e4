//! `GET /connection/websocket`: Centrifugo's client protocol (JSON or Protobuf). The upgrade is accepted
//! without a token: the SDKs send it in their first command, `connect` (see
//! `session::connect`).

use super::upgrade::{Upgrade, UpgradeRejection};
use super::ws::{Refusal, not_websocket, precheck, socket_config};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::session::connect::{self, CentrifugeStart};
use crate::session::{Handoff, ProxyState};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use std::sync::Arc;

/// The subprotocol of Centrifugo's Protobuf encoding.
const PROTOBUF: &str = "centrifuge-protobuf";
/// The subprotocol a JSON client may name (the SDKs name none).
const JSON: &str = "centrifuge-json";

/// The door's checks: the subprotocol to answer with (none when none was offered) and the
/// encoding it means.
pub(super) fn accept(
    node: &Node,
    headers: &HeaderMap,
) -> Result<(Option<&'static str>, Encoding), Refusal> {
    precheck(node, headers)?;
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    // The first one offered that this server speaks.
    let chosen = match offered.iter().find(|p| [JSON, PROTOBUF].contains(p)) {
        _ if offered.is_empty() => None,
        Some(&p) if p == PROTOBUF => Some(PROTOBUF),
        Some(_) => Some(JSON),
        None => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_subprotocol",
                "unsupported subprotocol: offer none (JSON), centrifuge-json or centrifuge-protobuf",
            ));
        }
    };
    let encoding = if chosen == Some(PROTOBUF) {
        Encoding::CentrifugeProtobuf
    } else {
        Encoding::CentrifugeJson
    };
    // The node's size is checked again once the client is known; refusing here spares a
    // full node the socket.
    if node.hub.connection_count() >= node.config.limits.max_connections {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            "node connection limit reached",
        ));
    }
    Ok((chosen, encoding))
}

/// The connection's start, with the socket as `handoff` gives it; `headers` are the
/// client's request's (some go with proxy calls).
pub(super) fn start(
    node: &Arc<Node>,
    encoding: Encoding,
    handoff: Handoff,
    headers: &HeaderMap,
) -> Box<CentrifugeStart> {
    Box::new(CentrifugeStart {
        handoff,
        node: node.clone(),
        config: socket_config(node),
        encoding,
        emulation: None,
        proxy: ProxyState::of(node, "websocket", headers).map(Box::new),
    })
}

/// Handles `GET /connection/websocket` when hyper serves it (an upgrade after other requests
/// on the connection; the first request is read by `raw`).
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return not_websocket(rejection),
    };
    let (chosen, encoding) = match accept(&node, &headers) {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(),
    };
    let (response, on_upgrade) = upgrade.accept(chosen);
    drop(connect::spawn(start(
        &node,
        encoding,
        Handoff::Hyper(on_upgrade),
        &headers,
    )));
    response
}
