//! Operational and client-facing routes: routing, dev tokens, health, readiness, metrics and
//! the demo page.

use super::{ApiError, TokenQuery, request_token};
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::ErrorCode;
use crate::routing::home_node;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The demo page, the admin page and their assets, embedded into the binary (no build step,
/// nothing fetched).
const INDEX_HTML: &str = include_str!("../../../web-demo/index.html");
const ADMIN_HTML: &str = include_str!("../../../web-demo/admin.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/admin.js"),
    ),
    (
        "admin.css",
        "text/css; charset=utf-8",
        include_str!("../../../web-demo/admin.css"),
    ),
    (
        "client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/client.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web-demo/style.css"),
    ),
];

/// `GET /v1/route`: the user's home node.
pub async fn route(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = query.map(|q| q.0).unwrap_or_default();
    let token = request_token(&headers, query)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing token"))?;
    let claims = node
        .verifier
        .verify(&token)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    let mut nodes = node.registry.nodes().await?;
    if nodes.is_empty() && !node.is_draining() {
        nodes.push(node.info());
    }
    let home = home_node(&claims.sub, &nodes)
        .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "no live node"))?;
    Ok(Json(json!({ "node": home.id, "url": home.url })))
}

#[derive(Deserialize)]
struct DevTokenBody {
    user: String,
    name: Option<String>,
    ttl_secs: Option<u64>,
}

/// Longest lifetime of a dev token.
const MAX_DEV_TTL_SECS: u64 = 24 * 3600;

/// `POST /dev/token` (dev mode only): mints a token for any user.
pub async fn dev_token(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.config.dev {
        return Err(
            ApiError::new(ErrorCode::BadRequest, "not found: dev mode is off")
                .with_status(StatusCode::NOT_FOUND),
        );
    }
    let body = super::read_body(&node, body).await?;
    let body: DevTokenBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad JSON body: {e}")))?;
    let user = body.user.trim();
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "user must be 1..=128 bytes with no control characters",
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(3600).clamp(1, MAX_DEV_TTL_SECS);
    let now = fanout::util::unix_secs();
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + ttl,
        name: body.name.filter(|n| !n.trim().is_empty()),
        channels: Vec::new(),
    };
    let token = node.verifier.mint(&claims).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "dev tokens need an HS256 secret (this node verifies with a public key)",
        )
    })?;
    Ok(Json(
        json!({ "token": token, "user": claims.sub, "exp": claims.exp }),
    ))
}

/// `GET /api/openapi.json`: the OpenAPI description of the node's HTTP endpoints (public,
/// like the protocol reference).
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the node takes connections; 503 while draining or while its
/// message backend is unreachable.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !node.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "message backend unavailable",
        )
            .into_response()
    } else {
        "ready".into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    crate::metrics::record_health(node.is_ready(), node.broker.is_healthy());
    crate::metrics::record_node_stats(&node.hub.stats());
    crate::metrics::record_delivery_stats(node.broker.stats());
    if let Some(stats) = node.broker.archive_stats() {
        crate::metrics::record_archive_stats(&stats);
    }
    let body = node
        .prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `GET /`: the demo chat page.
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /admin`: the admin page (it signs in with the API key and reads the `/api/`).
pub async fn admin() -> Html<&'static str> {
    Html(ADMIN_HTML)
}

/// `GET /assets/{file}`: the demo page's scripts and styles.
pub async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => not_found().await.into_response(),
    }
}

/// Anything else: 404 in the API's error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::BadRequest, "not found").with_status(StatusCode::NOT_FOUND)
}
