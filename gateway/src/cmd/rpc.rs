//! `rpc`: a call of a backend method over the open connection, served by the rpc proxy
//! (`--proxy-rpc-url`); without one, no method exists (104, `method_not_found`).

use crate::protocol::{Answer, ErrorCode};
use crate::proxy::wire::{RpcFields, RpcResult};
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
    if !session.reg.node.proxies.has(Kind::Rpc) {
        session.error(id, ErrorCode::MethodNotFound, "method not found");
        return None;
    }
    // JSON text (or a JSON value) already: the protocol layer decoded it so.
    let json = data.as_ref().and_then(|d| d.to_json().ok());
    let data = json
        .as_deref()
        .and_then(|j| serde_json::from_slice::<&RawValue>(j).ok());
    let answer = session
        .ask::<RpcResult>(Kind::Rpc, RpcFields { method, data })
        .await;
    let result = match session.backend_result(id, answer) {
        Ok(result) => result,
        Err(end) => return end,
    };
    match proxy::answer_data(result.data, result.b64data) {
        Ok(data) => {
            let data = data.as_deref().unwrap_or(b"null");
            session.answer(id, &Answer::Rpc { data });
        }
        Err(e) => {
            tracing::warn!(error = %e, "rpc proxy answered unusable data");
            session.error(id, ErrorCode::Unavailable, e.client_message());
        }
    }
    None
}
