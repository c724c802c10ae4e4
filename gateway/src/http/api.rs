//! The backend API under `/api/`, authenticated with the configured API key.

use super::ApiError;
use super::read_body;
use crate::acl::valid_channel;
use crate::node::Node;
use crate::protocol::{Encoding, ErrorCode, HistoryReply, history_body};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use fanout::{CommandReply, HistoryQuery, NodeCommand, Payload, PublishRequest};
use http::{HeaderMap, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// The API key check, in constant time.
pub(super) fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = node.config.api_key.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the API is disabled: no API key is configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "wrong or missing API key",
        ))
    }
}

/// Reads and parses a JSON body: at most `--max-frame-size` bytes within
/// `--request-timeout-secs`. Handlers call it after the API key check, so an unauthenticated
/// client never gets to hold a socket open with a slow body.
pub(super) async fn json_body<T: DeserializeOwned>(node: &Node, body: Body) -> Result<T, ApiError> {
    let body = read_body(node, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad JSON body: {e}")))
}

pub(super) fn check_channel(channel: &str) -> Result<(), ApiError> {
    if valid_channel(channel) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            "channel must be 1..=128 bytes of [A-Za-z0-9_:.@-]",
        ))
    }
}

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    /// Kept as the JSON text sent: checked by the parse, never turned into a tree.
    data: Box<serde_json::value::RawValue>,
    idem: Option<String>,
}

/// `POST /api/publish`.
pub async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let body: PublishBody = json_body(&node, body).await?;
    let outcome = publish_as_server(&node, body.channel, body.data, body.idem).await?;
    Ok(Json(
        json!({ "offset": outcome.offset, "epoch": &*outcome.epoch }),
    ))
}

/// Publishes `data` (JSON text, checked) to `channel` as the backend (`from` = `server`),
/// after the checks every publish gets: channel name, nesting depth, idempotency key.
pub(super) async fn publish_as_server(
    node: &Node,
    channel: String,
    data: Box<serde_json::value::RawValue>,
    idem: Option<String>,
) -> Result<fanout::PublishOutcome, ApiError> {
    check_channel(&channel)?;
    if crate::protocol::json_text_depth(data.get().as_bytes()) > crate::protocol::MAX_DATA_DEPTH {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "data nests arrays and maps deeper than {} levels",
                crate::protocol::MAX_DATA_DEPTH
            ),
        ));
    }
    if let Some(idem) = &idem
        && (idem.is_empty() || idem.len() > crate::protocol::MAX_IDEM_LEN)
    {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            "idem must be 1..=128 bytes",
        ));
    }
    let outcome = node
        .broker
        .publish(PublishRequest {
            archive: node.acl.archive_enabled(&channel),
            channel: channel.into(),
            from: "server".into(),
            data: Payload::Json(Bytes::from(String::from(Box::<str>::from(data)))),
            idem,
        })
        .await
        .map_err(ApiError::publish)?;
    if !outcome.duplicate {
        node.hub.count_published();
    }
    Ok(outcome)
}

#[derive(Deserialize)]
pub struct PresenceParams {
    limit: Option<u64>,
    cursor: Option<String>,
}

/// `GET /api/presence/{channel}?limit=&cursor=`: a page of members, as the `presence` op.
pub async fn presence(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    params: Result<Query<PresenceParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    check_channel(&channel)?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    crate::protocol::check_presence_page(params.limit, params.cursor.as_deref())
        .map_err(|why| ApiError::new(ErrorCode::BadRequest, why))?;
    let page =
        crate::cmd::presence::page(&*node.presence, &channel, params.limit, params.cursor).await?;
    Ok(Json(page.to_json()))
}

/// `GET /api/presence/{channel}/stats`: users and connections, as `presence_stats`.
pub async fn presence_stats(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    check_channel(&channel)?;
    let stats = node.presence.stats(&channel).await?;
    Ok(Json(json!({ "users": stats.users, "conns": stats.conns })))
}

#[derive(Deserialize)]
pub struct HistoryParams {
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// `GET /api/history/{channel}?since=&before=&limit=`.
pub async fn history(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers)?;
    check_channel(&channel)?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let limit = params
        .limit
        .unwrap_or(crate::protocol::DEFAULT_HISTORY_LIMIT);
    if limit > crate::protocol::MAX_HISTORY_LIMIT {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "limit must be at most 1000",
        ));
    }
    let page = node
        .broker
        .history(
            &channel,
            HistoryQuery {
                since: params.since,
                before: params.before,
                limit: limit as usize,
            },
        )
        .await?;
    let reply = HistoryReply {
        publications: &page.publications,
        offset: page.offset,
        epoch: &page.epoch,
        max_bytes: node.config.limits.max_reply_bytes(),
        keep_newest: params.since.is_none(),
        reverse: false,
    };
    let body = history_body(Encoding::Json, reply);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    reconnect: bool,
}

/// `POST /api/disconnect`.
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let body: DisconnectBody = json_body(&node, body).await?;
    let count = node
        .broker
        .command(NodeCommand::Disconnect {
            user: body.user,
            reconnect: body.reconnect,
        })
        .await?;
    Ok(Json(json!({ "disconnected": count.count() })))
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

/// `POST /api/unsubscribe`: ends `user`'s subscriptions to `channel` on every node; each
/// connection gets an `unsubscribe` push.
pub async fn unsubscribe(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let body: UnsubscribeBody = json_body(&node, body).await?;
    check_channel(&body.channel)?;
    let count = node
        .broker
        .command(NodeCommand::Unsubscribe {
            user: body.user,
            channel: body.channel,
        })
        .await?;
    Ok(Json(json!({ "unsubscribed": count.count() })))
}

/// `GET /api/proxies`: this node's backend endpoints (proxies), each with its calls, failures,
/// circuit breaker state and last failure (the admin page's "Backend" table).
pub async fn proxies(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    Ok(Json(json!({
        "node": node.config.node_id,
        "proxies": node.proxies.health(),
        "webhook": node.webhooks.as_ref().map(|w| w.health()),
    })))
}

/// `GET /api/nodes`: the live nodes (the registry), each with its live counters (asked of
/// every node at once; a node that does not answer in time shows its registry entry only).
pub async fn nodes(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let mut nodes = node.registry.nodes().await?;
    // This node always answers with its current count, even between heartbeats.
    let me = node.info();
    match nodes.iter_mut().find(|n| n.id == me.id) {
        Some(entry) => *entry = me,
        None if !node.is_draining() => nodes.push(me),
        None => {}
    }
    let stats = match node.broker.command(NodeCommand::Stats).await? {
        CommandReply::Nodes(stats) => stats,
        _ => Vec::new(),
    };
    let list: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut entry = json!({
                "id": n.id,
                "url": n.url,
                "connections": n.connections,
                "capacity": n.capacity,
            });
            if let Some(s) = stats.iter().find(|s| s.id == n.id) {
                entry["connections"] = json!(s.connections);
                entry["subscriptions"] = json!(s.subscriptions);
                entry["channels"] = json!(s.channels);
                entry["published"] = json!(s.published);
                entry["delivered"] = json!(s.delivered);
            }
            entry
        })
        .collect();
    Ok(Json(json!({ "nodes": list })))
}

#[derive(Deserialize)]
pub struct ChannelsParams {
    filter: Option<String>,
    limit: Option<u64>,
}

/// Most channels one `GET /api/channels` lists.
const MAX_CHANNELS_LISTED: u64 = 1000;

/// `GET /api/channels?filter=&limit=`: channels with subscribers anywhere in the cluster and
/// their subscriber counts, busiest first (personal channels are not listed).
pub async fn channels(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<ChannelsParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&node, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_CHANNELS_LISTED).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1 to {MAX_CHANNELS_LISTED}"),
        ));
    }
    let filter = params.filter.unwrap_or_default();
    if filter.len() > 128 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "filter must be at most 128 bytes",
        ));
    }
    let list = match node
        .broker
        .command(NodeCommand::Channels { filter })
        .await?
    {
        CommandReply::Channels(list) => list,
        _ => Vec::new(),
    };
    let total = list.len();
    let channels: Vec<_> = list
        .into_iter()
        .take(limit as usize)
        .map(|(channel, subscribers)| json!({ "channel": channel, "subscribers": subscribers }))
        .collect();
    Ok(Json(json!({ "channels": channels, "total": total })))
}
