//! Centrifugo's server HTTP API at `POST /centrifugo/api/{method}`, so that its backend
//! libraries (PyPI `cent`, npm `cent.js`, ...) work with their base URL pointed at
//! `http://<node>/centrifugo/api`. The gateway's own `/api/` stays as it is; this is a second
//! shape for the same node calls.
//!
//! The shape: the key in `X-API-Key` (or `Authorization: apikey <key>`), a JSON body, HTTP 200
//! with `{"result": {...}}` or `{"error": {"code", "message"}}` (Centrifugo's codes); a wrong
//! key is 401 with an empty body; `batch` answers `{"replies": [...]}`.

use super::api::{check_channel, json_body, publish_as_server};
use super::{ApiError, read_body};
use crate::node::Node;
use crate::protocol::ErrorCode;
use crate::protocol::centrifuge::{HistoryRequest, error_code};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use fanout::{CommandReply, HistoryQuery, NodeCommand};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Most commands in one `batch`.
const MAX_BATCH: usize = 1000;

/// Whether the request carries the node's API key (compared in constant time).
fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    let Some(expected) = node.config.api_key.as_deref() else {
        return false;
    };
    let given = match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(key) => key,
        None => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
            .map_or("", |(_, key)| key.trim()),
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A method's failure, in Centrifugo's words.
struct Failure {
    code: u32,
    message: String,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure {
            code: error_code(e.code).0,
            message: e.message,
        }
    }
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code: error_code(code).0,
            message: message.into(),
        }
    }

    fn json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

fn params<T: DeserializeOwned>(body: Value) -> Result<T, Failure> {
    serde_json::from_value(body)
        .map_err(|e| Failure::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}

/// `POST /centrifugo/api/{method}`.
pub async fn call(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(method): Path<String>,
    body: Body,
) -> Response {
    if !authorized(&node, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if method == "batch" {
        return batch(&node, body).await;
    }
    if !METHODS.contains(&method.as_str()) {
        return (StatusCode::NOT_FOUND, "unknown method").into_response();
    }
    let body: Value = match read_body(&node, body).await {
        Err(e) => return e.into_response(),
        Ok(bytes) if bytes.is_empty() => json!({}),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                let f = Failure::new(ErrorCode::BadRequest, format!("bad JSON body: {e}"));
                return Json(json!({ "error": f.json() })).into_response();
            }
        },
    };
    match dispatch(&node, &method, body).await {
        Ok(result) => Json(json!({ "result": result })).into_response(),
        Err(f) => Json(json!({ "error": f.json() })).into_response(),
    }
}

#[derive(Deserialize)]
struct BatchBody {
    commands: Vec<Map<String, Value>>,
}

/// `batch`: each command is `{"<method>": {params}}`; each answer `{"<method>": result}` or
/// `{"error": ...}`, in order.
async fn batch(node: &Node, body: Body) -> Response {
    let body: BatchBody = match json_body(node, body).await {
        Ok(b) => b,
        Err(e) => return Json(json!({ "error": Failure::from(e).json() })).into_response(),
    };
    if body.commands.len() > MAX_BATCH {
        let f = Failure::new(
            ErrorCode::BadRequest,
            format!("more than {MAX_BATCH} commands"),
        );
        return Json(json!({ "error": f.json() })).into_response();
    }
    let mut replies = Vec::with_capacity(body.commands.len());
    for command in body.commands {
        let mut entries = command.into_iter();
        let reply = match (entries.next(), entries.next()) {
            (Some((method, params)), None) if METHODS.contains(&method.as_str()) => {
                match dispatch(node, &method, params).await {
                    Ok(result) => json!({ method: result }),
                    Err(f) => json!({ "error": f.json() }),
                }
            }
            _ => {
                json!({ "error": Failure::new(ErrorCode::BadRequest, "a command names one known method").json() })
            }
        };
        replies.push(reply);
    }
    Json(json!({ "replies": replies })).into_response()
}

/// The methods served (and `batch`).
const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
];

#[derive(Deserialize)]
struct PublishParams {
    channel: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastParams {
    channels: Vec<String>,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct ChannelParams {
    channel: String,
}

#[derive(Deserialize)]
struct UserChannelParams {
    user: String,
    channel: String,
}

#[derive(Deserialize)]
struct RefreshParams {
    user: String,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<u64>,
}

#[derive(Deserialize)]
struct DisconnectAdvice {
    code: u32,
}

#[derive(Deserialize)]
struct DisconnectParams {
    user: String,
    disconnect: Option<DisconnectAdvice>,
}

#[derive(Deserialize, Default)]
struct ChannelsParams {
    #[serde(default)]
    pattern: String,
}

async fn dispatch(node: &Node, method: &str, body: Value) -> Result<Value, Failure> {
    match method {
        "publish" => {
            let p: PublishParams = params(body)?;
            let outcome = publish_as_server(node, p.channel, p.data, p.idempotency_key).await?;
            Ok(json!({ "offset": outcome.offset, "epoch": &*outcome.epoch }))
        }
        "broadcast" => {
            let p: BroadcastParams = params(body)?;
            let mut responses = Vec::with_capacity(p.channels.len());
            for channel in p.channels {
                // One idempotency key per channel: the key names the broadcast.
                let idem = p.idempotency_key.clone();
                let response = match publish_as_server(node, channel, p.data.clone(), idem).await {
                    Ok(o) => json!({ "result": { "offset": o.offset, "epoch": &*o.epoch } }),
                    Err(e) => json!({ "error": Failure::from(e).json() }),
                };
                responses.push(response);
            }
            Ok(json!({ "responses": responses }))
        }
        // One user's connections join or leave a channel, on every node.
        "unsubscribe" | "subscribe" => {
            let UserChannelParams { user, channel } = params(body)?;
            check_channel(&channel)?;
            let command = if method == "subscribe" {
                NodeCommand::Subscribe { user, channel }
            } else {
                NodeCommand::Unsubscribe { user, channel }
            };
            node.broker.command(command).await.map_err(ApiError::from)?;
            Ok(json!({}))
        }
        "refresh" => {
            let p: RefreshParams = params(body)?;
            // Centrifugo reads 0 as "not set": the connections no longer expire.
            let expire_at = p.expire_at.filter(|at| *at > 0);
            node.broker
                .command(NodeCommand::Refresh {
                    user: p.user,
                    expire_at,
                    expired: p.expired,
                })
                .await
                .map_err(ApiError::from)?;
            Ok(json!({}))
        }
        "disconnect" => {
            let p: DisconnectParams = params(body)?;
            // Centrifugo's default is a disconnect without reconnect; a code in the ranges
            // its SDKs reconnect after asks them to.
            let reconnect = p
                .disconnect
                .is_some_and(|d| (3000..3500).contains(&d.code) || (4000..4500).contains(&d.code));
            node.broker
                .command(NodeCommand::Disconnect {
                    user: p.user,
                    reconnect,
                })
                .await
                .map_err(ApiError::from)?;
            Ok(json!({}))
        }
        "presence" => {
            let p: ChannelParams = params(body)?;
            check_channel(&p.channel)?;
            let page = crate::cmd::presence::page(&*node.presence, &p.channel, None, None)
                .await
                .map_err(ApiError::from)?;
            let clients: Map<String, Value> = page
                .members
                .iter()
                .map(|m| (m.user.clone(), json!({ "client": m.user, "user": m.user })))
                .collect();
            Ok(json!({ "presence": clients }))
        }
        "presence_stats" => {
            let p: ChannelParams = params(body)?;
            check_channel(&p.channel)?;
            let s = node
                .presence
                .stats(&p.channel)
                .await
                .map_err(ApiError::from)?;
            Ok(json!({ "num_clients": s.conns, "num_users": s.users }))
        }
        "history" => {
            let p: HistoryRequest = params(body)?;
            check_channel(&p.channel)?;
            let query = HistoryQuery {
                since: p.since.as_ref().map(|s| s.offset),
                before: None,
                limit: p.limit() as usize,
            };
            let page = node
                .broker
                .history(&p.channel, query)
                .await
                .map_err(ApiError::from)?;
            if let Some(since) = &p.since
                && !since.epoch.is_empty()
                && since.epoch != *page.epoch
            {
                return Err(Failure::new(
                    ErrorCode::UnrecoverablePosition,
                    "unrecoverable position",
                ));
            }
            let mut publications: Vec<Value> = Vec::with_capacity(page.publications.len());
            for p in &page.publications {
                let data = p.data.to_value().unwrap_or(Value::Null);
                publications.push(json!({
                    "data": data,
                    "offset": p.offset,
                    "info": { "user": &*p.from, "client": "" },
                }));
            }
            if p.reverse {
                publications.reverse();
            }
            Ok(
                json!({ "publications": publications, "epoch": &*page.epoch, "offset": page.offset }),
            )
        }
        "channels" => {
            let p: ChannelsParams = params(body).unwrap_or_default();
            // Centrifugo's pattern is a glob; the nodes filter by substring: `*` is taken out.
            let filter = p.pattern.replace('*', "");
            let list = match node
                .broker
                .command(NodeCommand::Channels { filter })
                .await
                .map_err(ApiError::from)?
            {
                CommandReply::Channels(list) => list,
                _ => Vec::new(),
            };
            let channels: Map<String, Value> = list
                .into_iter()
                .map(|(channel, n)| (channel, json!({ "num_clients": n })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        "info" => {
            let stats = match node
                .broker
                .command(NodeCommand::Stats)
                .await
                .map_err(ApiError::from)?
            {
                CommandReply::Nodes(stats) => stats,
                _ => Vec::new(),
            };
            let nodes: Vec<Value> = stats
                .iter()
                .map(|s| {
                    json!({
                        "uid": s.id,
                        "name": s.id,
                        "version": env!("CARGO_PKG_VERSION"),
                        "num_clients": s.connections,
                        "num_users": s.connections,
                        "num_channels": s.channels,
                        "num_subs": s.subscriptions,
                    })
                })
                .collect();
            Ok(json!({ "nodes": nodes }))
        }
        // History removal has no broker call behind it: history is bounded by size and age,
        // and the archive keeps every message.
        _ => Err(Failure::new(
            ErrorCode::NotAvailable,
            format!("{method} is not available on this server"),
        )),
    }
}
