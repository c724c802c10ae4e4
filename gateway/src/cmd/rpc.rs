//! `rpc`: a call of a backend method over the open connection, served by the rpc proxy
//! (`--proxy-rpc-url`); without one, no method exists (104, `method_not_found`).

use crate::protocol::{Answer, ErrorCode};
use crate::proxy::wire::{RpcRequest, RpcResult};
use crate::proxy::{self, Kind};
use crate::session::{End, Session};
use fanout::Payload;
use serde_json::value::RawValue;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    method: &str,
    data: Option<Payload>,
) -> Option<End> {
    let node = session.reg.node.clone();
    if !node.proxies.has(Kind::Rpc) {
        session.error(id, ErrorCode::MethodNotFound, "method not found");
        return None;
    }
    // Decoded from JSON text (or a JSON value) by the protocol layer.
    let json = match data.as_ref().map(Payload::to_json).transpose() {
        Ok(json) => json,
        Err(e) => {
            session.error(id, ErrorCode::BadRequest, &e.to_string());
            return None;
        }
    };
    let data = match json.as_deref().map(serde_json::from_slice::<&RawValue>) {
        Some(Err(_)) => {
            session.error(id, ErrorCode::BadRequest, "data is not JSON");
            return None;
        }
        Some(Ok(raw)) => Some(raw),
        None => None,
    };
    let client = session.client_id();
    let request = RpcRequest {
        client: session.proxy_client(&client),
        method,
        data,
    };
    let answer = node
        .proxies
        .call::<RpcResult>(Kind::Rpc, &request, session.forwarded())
        .await;
    match answer {
        Ok(proxy::Answer::Result(r)) => match proxy::answer_data(r.data, r.b64data) {
            Ok(data) => {
                let data = data.as_deref().unwrap_or(b"null");
                session.answer(id, &Answer::Rpc { data });
            }
            Err(e) => {
                tracing::warn!(error = %e, "rpc proxy answered unusable data");
                session.error(id, ErrorCode::Unavailable, e.client_message());
            }
        },
        Ok(proxy::Answer::Error(e)) => session.error(id, proxy::error_code(&e), &e.message),
        Ok(proxy::Answer::Disconnect(d)) => {
            return Some(End::Close(proxy::disconnect_reason(&d)));
        }
        Err(e) => session.error(id, ErrorCode::Unavailable, e.client_message()),
    }
    None
}
